"""The semantic difference of two streams (``xenstore-stream diff``).

:func:`state_of` reduces a stream to what it means -- nodes, pending nodes,
watches, connections, transactions, global data, quota, domains, unknown
records; pyxenstored's transaction marks with the transactions, not the
quota -- independent of record order and byte order; :func:`diff_states`
describes how one such state differs from another, one line per
difference: ``-`` only in the first, ``+`` only in the second, ``~``
changed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator

from .byteorder import swap_pending
from .records import (
    DEPTH_UNLIMITED,
    ConnectionData,
    DomainData,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    Record,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    type_name,
)
from .text import quote
from .txmarks import is_marks_name_valid, parse_marks_name

PermKey = tuple[tuple[str, int, int], ...]
PendingKey = tuple[int, bytes, PermKey]


@dataclasses.dataclass(slots=True)
class StreamState:
    """The semantic content of a stream, for :func:`diff_states`."""

    nodes: dict[str, tuple[bytes, PermKey]] = dataclasses.field(default_factory=dict)
    pending: dict[tuple[int, int, str], PendingKey] = dataclasses.field(default_factory=dict)
    watches: Counter[tuple[int, str, str, int | None]] = dataclasses.field(default_factory=Counter)
    conns: dict[int, tuple[object, ...]] = dataclasses.field(default_factory=dict)
    transactions: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    # pyxenstored's transaction marks (stream.txmarks), out of the domains' quota.
    marks: dict[tuple[int, int], tuple[tuple[int, ...], int]] = dataclasses.field(
        default_factory=dict
    )
    global_data: tuple[int, int] | None = None
    global_quota: dict[str, int] | None = None
    global_only_quota: dict[str, int] | None = None
    domains: dict[int, tuple[int, dict[str, int]]] = dataclasses.field(default_factory=dict)
    unknown: Counter[tuple[int, bytes]] = dataclasses.field(default_factory=Counter)

    def add(self, r: Record) -> None:
        """Take one record in."""
        if isinstance(r, NodeData):
            if r.conn_id:
                self.pending[(r.conn_id, r.tx_id, r.path)] = (r.access, r.value, _perm_key(r.perms))
            else:
                self.nodes[r.path] = (r.value, _perm_key(r.perms))
        elif isinstance(r, WatchDataExtended):
            depth = None if r.depth == DEPTH_UNLIMITED else r.depth
            self.watches[(r.conn_id, r.wpath, r.token, depth)] += 1
        elif isinstance(r, WatchData):
            self.watches[(r.conn_id, r.wpath, r.token, None)] += 1
        elif isinstance(r, ConnectionData):
            self.conns[r.conn_id] = (
                r.conn_type,
                r.spec,
                r.unique_id,
                r.in_data,
                r.out_data,
                r.out_resp_len,
            )
        elif isinstance(r, TransactionData):
            self.transactions.add((r.conn_id, r.tx_id))
        elif isinstance(r, GlobalData):
            self.global_data = (r.socket_fd, r.evtchn_fd)
        elif isinstance(r, GlobalQuotaData):
            self.global_quota = {q.name: q.value for q in r.domain_quota}
            self.global_only_quota = {q.name: q.value for q in r.global_quota}
        elif isinstance(r, DomainData):
            quota = {}
            for q in r.quota:
                if is_marks_name_valid(q.name):
                    conn_id, tx_id, nodes = parse_marks_name(q.name)
                    self.marks[(conn_id, tx_id)] = (nodes, q.value)
                else:
                    quota[q.name] = q.value
            self.domains[r.domid] = (r.features, quota)
        elif isinstance(r, UnknownRecord):
            self.unknown[(r.type, r.body)] += 1


def _perm_key(perms: tuple[NodePerm, ...]) -> PermKey:
    return tuple((p.perm, p.flags, p.domid) for p in perms)


def state_of(records: Iterable[Record], big_endian: bool) -> StreamState:
    """The semantic content of a stream's records (``big_endian``: the stream's byte order)."""
    st = StreamState()
    for r in records:
        if big_endian:
            # compare pending wire messages in one byte order
            r = swap_pending(r, True)
        st.add(r)
    return st


def _node_text(value: bytes, perms: PermKey) -> str:
    return f"{quote(value)} ({','.join(f'{p}{d}' + ('!' if f & 1 else '') for p, f, d in perms)})"


def _pending_text(p: PendingKey) -> str:
    access, value, perms = p
    if not perms:
        return "deleted"
    rights = "".join(c for bit, c in ((1, "r"), (2, "w")) if access & bit) or "-"
    return f"{_node_text(value, perms)} access={rights}"


def _conn_text(c: tuple[object, ...]) -> str:
    ctype, spec, unique_id, in_data, out_data, resp = c
    text = f"type {ctype} {spec}"
    if unique_id is not None:
        text += f" unique-id {unique_id:#x}"
    assert isinstance(in_data, bytes) and isinstance(out_data, bytes)
    text += f" in {quote(in_data)} out {quote(out_data)} out-resp-len {resp}"
    return text


def diff_states(a: StreamState, b: StreamState) -> Iterator[str]:
    """Lines describing how ``b`` differs from ``a`` (``-`` only in a, ``+`` only in b, ``~`` changed)."""
    yield from _diff_nodes(a, b)
    yield from _diff_pending(a, b)
    for w in sorted((a.watches | b.watches).keys(), key=repr):
        if a.watches[w] != b.watches[w]:
            depth = "" if w[3] is None else f" depth {w[3]}"
            sign = "+" if b.watches[w] > a.watches[w] else "-"
            yield f"{sign} watch conn {w[0]} {w[1]!r} token {w[2]!r}{depth}"
    yield from _diff_connections(a, b)
    for t in sorted(a.transactions ^ b.transactions):
        yield f"{'+' if t in b.transactions else '-'} transaction {t[1]} of conn {t[0]}"
    yield from _diff_marks(a, b)
    if a.global_data != b.global_data:
        yield f"~ global data {a.global_data} -> {b.global_data}"
    if a.global_quota != b.global_quota:
        yield f"~ global quota {a.global_quota} -> {b.global_quota}"
    if a.global_only_quota != b.global_only_quota:
        yield f"~ global-only quota {a.global_only_quota} -> {b.global_only_quota}"
    yield from _diff_domains(a, b)
    for u in sorted((a.unknown | b.unknown).keys()):
        if a.unknown[u] != b.unknown[u]:
            sign = "+" if b.unknown[u] > a.unknown[u] else "-"
            yield f"{sign} record {type_name(u[0])} {quote(u[1])}"


def _diff_nodes(a: StreamState, b: StreamState) -> Iterator[str]:
    for path in sorted(a.nodes.keys() | b.nodes.keys()):
        na, nb = a.nodes.get(path), b.nodes.get(path)
        if na == nb:
            continue
        if na is None:
            assert nb is not None
            yield f"+ node {path} = {_node_text(*nb)}"
        elif nb is None:
            yield f"- node {path} = {_node_text(*na)}"
        else:
            parts = []
            if na[0] != nb[0]:
                parts.append(f"value {quote(na[0])} -> {quote(nb[0])}")
            if na[1] != nb[1]:
                parts.append(f"perms {_node_text(b'', na[1])[3:]} -> {_node_text(b'', nb[1])[3:]}")
            yield f"~ node {path}: " + "; ".join(parts)


def _diff_pending(a: StreamState, b: StreamState) -> Iterator[str]:
    for key in sorted(a.pending.keys() | b.pending.keys()):
        pa, pb = a.pending.get(key), b.pending.get(key)
        if pa != pb:
            label = f"pending node {key[2]} (conn {key[0]} tx {key[1]})"
            if pa and pb:
                yield f"~ {label}: {_pending_text(pa)} -> {_pending_text(pb)}"
            else:
                got = pb or pa
                assert got is not None
                yield f"{'+' if pb else '-'} {label}: {_pending_text(got)}"


def _diff_connections(a: StreamState, b: StreamState) -> Iterator[str]:
    for cid in sorted(a.conns.keys() | b.conns.keys()):
        ca, cb = a.conns.get(cid), b.conns.get(cid)
        if ca != cb:
            if ca is None:
                assert cb is not None
                yield f"+ connection {cid}: {_conn_text(cb)}"
            elif cb is None:
                yield f"- connection {cid}: {_conn_text(ca)}"
            else:
                yield f"~ connection {cid}: {_conn_text(ca)} -> {_conn_text(cb)}"


def _marks_text(m: tuple[tuple[int, ...], int]) -> str:
    return f"marks {''.join(str(n) for n in m[0]) or '-'} flags {m[1]:#x}"


def _diff_marks(a: StreamState, b: StreamState) -> Iterator[str]:
    for key in sorted(a.marks.keys() | b.marks.keys()):
        ma, mb = a.marks.get(key), b.marks.get(key)
        if ma == mb:
            continue
        label = f"transaction {key[1]} of conn {key[0]}"
        if ma is not None and mb is not None:
            yield f"~ {label} {_marks_text(ma)} -> {_marks_text(mb)}"
        else:
            got = mb or ma
            assert got is not None
            yield f"{'+' if mb else '-'} {label} {_marks_text(got)}"


def _diff_domains(a: StreamState, b: StreamState) -> Iterator[str]:
    for d in sorted(a.domains.keys() | b.domains.keys()):
        da, db = a.domains.get(d), b.domains.get(d)
        if da == db:
            continue
        if da is None or db is None:
            dom = da or db
            assert dom is not None
            yield f"{'+' if db else '-'} domain {d}: features {dom[0]:#x} quota {dom[1]}"
            continue
        if da[0] != db[0]:
            yield f"~ domain {d} features {da[0]:#x} -> {db[0]:#x}"
        if da[1] != db[1]:
            yield f"~ domain {d} quota {da[1]} -> {db[1]}"
