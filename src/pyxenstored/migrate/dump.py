"""Store state -> migration-stream records (live update, C's ``lu.c:lu_dump_state`` order).

The store knows nothing of connections' bytes and file descriptors: the
server hands in one :class:`ConnectionData` per connection (socket fd or ring
spec, pending input and output) and this module adds everything the store
holds: global and per-domain quota, watches, committed nodes, open
transactions with their nodes, domain records.  Records come out one at a
time, in the order C HEAD writes them; open transactions follow the
committed tree (their nodes refer to it).

Only what the spec allows is written.  What an open transaction needs
beyond it (which nodes changed outside it, which events its commit fires,
whether it failed) travels as an implementation-specific quota entry of the
DOMAIN_DATA of the domain its connection acts for (:mod:`..stream.txmarks`),
which other readers skip.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, overload

from ..store import Store
from ..store import quota as q
from ..store.node import Node
from ..store.perms import PERM_IGNORE, PERM_READ, PERM_RW, PERM_WRITE, Perms
from ..store.state import (
    SPECIAL_NODES,
    effective_perms,
    pending_nodes,
    transactions_of,
    watches_of,
)
from ..store.transaction import Transaction
from ..store.watch import MATCH_EXACT, MATCH_SUBTREE
from ..stream.records import (
    ACCESS_READ,
    ACCESS_WRITTEN,
    DEPTH_UNLIMITED,
    PERM_FLAG_STALE,
    CommittedNode,
    ConnectionData,
    DomainData,
    End,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    QuotaValue,
    Record,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
)
from ..stream.txmarks import (
    NODE_CHANGED,
    NODE_EVENT_EXACT,
    NODE_EVENT_SUBTREE,
    TX_FAILED,
    TransactionMarks,
)

_LETTERS = {0: "n", PERM_READ: "r", PERM_WRITE: "w", PERM_RW: "b"}


class DumpError(ValueError):
    """State the stream cannot carry (e.g. a watch token that is not UTF-8)."""


@dataclass(slots=True)
class Preserved:
    """What a restore read but the store has no place for, kept for the next dump.

    Unknown quota names (global ones by group, per-domain ones by domid) and
    records of unknown types.
    """

    domain_quota: tuple[QuotaValue, ...] = ()
    global_quota: tuple[QuotaValue, ...] = ()
    domains: dict[int, tuple[QuotaValue, ...]] = field(default_factory=dict)
    records: list[UnknownRecord] = field(default_factory=list)


_PERM_CACHE: dict[Perms, tuple[NodePerm, ...]] = {}


def stream_perms(perms: Perms) -> tuple[NodePerm, ...]:
    """Store permissions as stream permission specifiers (memoised: few distinct sets)."""
    out = _PERM_CACHE.get(perms)
    if out is None:
        out = tuple(
            NodePerm(_LETTERS[bits & PERM_RW], PERM_FLAG_STALE if bits & PERM_IGNORE else 0, domid)
            for domid, bits in perms
        )
        if len(_PERM_CACHE) < 4096:
            _PERM_CACHE[perms] = out
    return out


#: Committed nodes per run when a dump gives them in runs (``node_runs``).
RUN_SIZE = 2048


def _committed_runs(store: Store, top: str = "/") -> Iterator[list[CommittedNode]]:
    """The committed tree in C's order (see ``store.state.committed_nodes``), in runs.

    Each run is a list of up to :data:`RUN_SIZE` ``(path, perms, value)``
    tuples.  With ``top`` other than ``/``: only that subtree, without the
    special nodes (one domain's home for domain migration).

    The walk is inlined here: this loop is most of a dump.  Permission
    tuples are shared between nodes, so their stream form is memoised by
    identity (the entry holds the tuple: its id stays its own).
    """
    nodes = store.nodes
    by_id: dict[int, tuple[tuple[NodePerm, ...], Perms]] = {}
    get = nodes.get
    root = get(top)
    stack: list[tuple[str, Node]] = [(top, root)] if root is not None else []
    specials = [(p, n) for p in SPECIAL_NODES if (n := get(p)) is not None] if top == "/" else []
    pop = stack.pop
    push = stack.extend
    run: list[CommittedNode] = []
    add = run.append
    while stack:
        path, node = pop()
        perms = node.perms
        if len(perms) > 1:
            perms = effective_perms(store, perms, node.gen)
        hit = by_id.get(id(perms))
        if hit is None:
            hit = by_id[id(perms)] = (stream_perms(perms), perms)
        add((path, hit[0], node.value))
        children = node.children
        if children:
            prefix = "/" if path == "/" else path + "/"
            kids = [(cp, child) for name in children if (child := get(cp := prefix + name))]
            kids.reverse()
            push(kids)
        if len(run) >= RUN_SIZE:
            yield run
            run = []
            add = run.append
    for path, node in specials:
        perms = node.perms
        if len(perms) > 1:
            perms = effective_perms(store, perms, node.gen)
        add((path, stream_perms(perms), node.value))
    if run:
        yield run


def _committed_records(store: Store, top: str = "/") -> Iterator[NodeData]:
    """The committed nodes of :func:`_committed_runs` as NODE_DATA records."""
    for run in _committed_runs(store, top):
        for path, perms, value in run:
            yield NodeData(0, 0, 0, perms, path, value)


def quota_values(table: q.QuotaTable) -> tuple[QuotaValue, ...]:
    """Every existing quota of ``table`` by name, hard then ``soft-``, in table order."""
    out = []
    for i, info in enumerate(q.QUOTAS):
        hard, soft = table.values[i]
        if hard != q.DISABLED:
            out.append(QuotaValue(info.name, hard))
        if soft != q.DISABLED:
            out.append(QuotaValue(q.SOFT_PREFIX + info.name, soft))
    return tuple(out)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise DumpError(f"{what} {raw!r} is not UTF-8: the stream cannot carry it") from None


@overload
def dump_state(
    store: Store,
    connections: Iterable[ConnectionData],
    *,
    global_data: GlobalData | None = ...,
    preserved: Preserved | None = ...,
    transactions: bool = ...,
    subtree: str = ...,
    node_runs: Literal[False] = ...,
) -> Iterator[Record]: ...


@overload
def dump_state(
    store: Store,
    connections: Iterable[ConnectionData],
    *,
    global_data: GlobalData | None = ...,
    preserved: Preserved | None = ...,
    transactions: bool = ...,
    subtree: str = ...,
    node_runs: bool,
) -> Iterator[Record | list[CommittedNode]]: ...


def dump_state(
    store: Store,
    connections: Iterable[ConnectionData],
    *,
    global_data: GlobalData | None = None,
    preserved: Preserved | None = None,
    transactions: bool = True,
    subtree: str = "/",
    node_runs: bool = False,
) -> Iterator[Record | list[CommittedNode]]:
    """All records of a live-update stream for ``store``, END last.

    ``connections`` are in the order to restore them (creation order); each
    is followed by its watches.  With ``transactions`` False open
    transactions are left out (what C does).  ``subtree`` limits the
    committed nodes to that subtree (domain migration: one domain's home).
    With ``node_runs`` the committed nodes come as lists of ``(path, perms,
    value)`` tuples instead of NODE_DATA records, for
    :meth:`~pyxenstored.stream.StreamWriter.write_all` (the same bytes,
    without a record object per node).
    """
    kept = preserved or Preserved()
    conns = list(connections)
    if global_data is not None:
        yield global_data
    yield GlobalQuotaData(quota_values(store.config.quota) + kept.domain_quota, kept.global_quota)
    for cd in conns:
        yield cd
        for w in watches_of(store, cd.conn_id):
            token = _text(w.token, f"token of watch {w.wpath!r}")
            if w.depth < 0:
                yield WatchData(cd.conn_id, w.wpath, token)
            else:
                yield WatchDataExtended(
                    cd.conn_id, w.wpath, token, min(w.depth, DEPTH_UNLIMITED - 1)
                )
    if node_runs:
        yield from _committed_runs(store, subtree)
    else:
        yield from _committed_records(store, subtree)
    marks: dict[int, list[QuotaValue]] = {}  # domid -> transaction marks
    if transactions:
        for cd in conns:
            for tx in transactions_of(store, cd.conn_id):
                yield TransactionData(cd.conn_id, tx.tx_id)
                yield from _pending_records(store, cd.conn_id, tx, marks)
    for domid, dom in store.domains.items():
        quota = quota_values(dom.quota) + tuple(marks.pop(domid, ())) + kept.domains.get(domid, ())
        yield DomainData(domid, dom.features, quota)
    if marks:
        raise DumpError(f"transactions of connections of domains {sorted(marks)} without a record")
    yield from kept.records
    yield End()


_EVENT_MARKS = {None: 0, MATCH_EXACT: NODE_EVENT_EXACT, MATCH_SUBTREE: NODE_EVENT_SUBTREE}


def _pending_records(
    store: Store, conn_id: int, tx: Transaction, marks: dict[int, list[QuotaValue]]
) -> Iterator[NodeData]:
    """The pending nodes of ``tx``; its marks are added to ``marks`` (by domain).

    A node deleted in the transaction has no permissions and access 0, one
    read while it did not exist no permissions and access "read"
    (docs/stream.md).
    """
    node_marks = []
    for p in pending_nodes(store, tx):
        node_marks.append((NODE_CHANGED if p.changed else 0) | _EVENT_MARKS[p.event])
        if p.node is None:
            yield NodeData(conn_id, tx.tx_id, ACCESS_READ if p.read else 0, (), p.path, b"")
        else:
            access = (ACCESS_READ if p.read else 0) | (ACCESS_WRITTEN if p.written else 0)
            yield NodeData(
                conn_id, tx.tx_id, access, stream_perms(p.node.perms), p.path, p.node.value
            )
    entry = TransactionMarks(conn_id, tx.tx_id, tuple(node_marks), TX_FAILED if tx.failed else 0)
    marks.setdefault(store.conns[conn_id].domid, []).append(entry.to_quota())
