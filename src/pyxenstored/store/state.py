"""Taking a store's state out and putting it back, without any stream format.

The live-update code (``migrate``) turns these plain values into stream
records and back; this module only knows the store.  Everything here works
on a :class:`~.core.Store` from the outside in: iterate committed nodes in the
C daemon's order, import a committed node, a watch, a pending transaction,
and finally rebuild the counters (quota usage) from what was imported so that
``check()`` passes and accounting is the same as before the dump.

Transactions carry no generation numbers in a stream.  A pending node is
exported with what the transaction did to it (read, written, deleted) and
whether the committed node has changed since the transaction first saw it
(``changed``): that is all a commit needs to give the same answer later.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..wire import DOMID_ANY, XsError, canonicalize, implicit_path, parent_of
from . import quota as q
from .core import Store
from .domain import Domain
from .node import (
    INTRODUCE_DOMAIN,
    NO_GENERATION,
    RELEASE_DOMAIN,
    SPECIAL_NODES,
    Node,
    child_path,
)
from .perms import PERM_IGNORE, Perms
from .transaction import Transaction
from .watch import MATCH_EXACT, MATCH_SUBTREE, Watch


class StateError(ValueError):
    """Imported state that does not fit the store (missing parent, unknown connection...)."""


@dataclass(slots=True, frozen=True)
class PendingNode:
    """A node as one open transaction sees it.

    ``node`` is None when the path does not exist for the transaction (it was
    deleted in it, or read while absent).  ``written`` is True for nodes the
    transaction changed (created, modified, deleted); ``changed`` is True
    when the committed node is no longer the one the transaction first saw.
    ``event`` is the watch event the commit fires for this node: None,
    ``MATCH_EXACT`` or ``MATCH_SUBTREE``.
    """

    path: str
    node: Node | None
    read: bool
    written: bool
    changed: bool
    event: int | None = None


@dataclass(slots=True, frozen=True)
class WatchState:
    """One watch as the client registered it (``wpath`` relative if it was)."""

    conn_id: int
    wpath: str
    token: bytes
    depth: int  # -1: registered without a depth


# --- export ----------------------------------------------------------------------------


def effective_perms(store: Store, perms: Perms, gen: int) -> Perms:
    """``perms`` with the stale flag set on entries that are stale now (digest 3.3).

    An entry naming a domain the store does not know, or one younger than
    the node, is ignored by permission checks; a dump writes that as the
    stale flag, since a restore gives every node a new generation.  Returns
    ``perms`` itself when nothing changes.
    """
    if len(perms) < 2:
        return perms
    out = None
    for i, (domid, bits) in enumerate(perms):
        if i and not bits & PERM_IGNORE and domid != DOMID_ANY and store._stale(domid, gen):
            if out is None:
                out = list(perms)
            out[i] = (domid, bits | PERM_IGNORE)
    return perms if out is None else tuple(out)


def committed_nodes(store: Store) -> Iterator[tuple[str, Node]]:
    """The committed tree in C HEAD's dump order (digest 10.5).

    Depth first, pre-order from ``/``, children in their list order (which is
    creation order, and stream order after a restore); then ``@releaseDomain``
    and ``@introduceDomain``.  No recursion: trees may be deep.
    """
    nodes = store.nodes
    root = nodes.get("/")
    if root is not None:
        stack: list[tuple[str, Node]] = [("/", root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            if node.children:
                kids = []
                for name in node.children:
                    cp = child_path(path, name)
                    child = nodes.get(cp)
                    if child is not None:
                        kids.append((cp, child))
                kids.reverse()
                stack.extend(kids)
    for path in SPECIAL_NODES:
        special = nodes.get(path)
        if special is not None:
            yield path, special


def watches_of(store: Store, conn_id: int) -> list[WatchState]:
    """A connection's watches in registration order."""
    conn = store.conns.get(conn_id)
    if conn is None:
        return []
    out = []
    for w in sorted(conn.watches.values(), key=_watch_seq):
        wpath = w.path[w.prefix_len :] if w.prefix_len else w.path
        out.append(WatchState(conn_id, wpath, w.token, w.depth))
    return out


def _watch_seq(w: Watch) -> int:
    return w.seq


def transactions_of(store: Store, conn_id: int) -> list[Transaction]:
    """Open transactions of a connection, oldest first."""
    conn = store.conns.get(conn_id)
    if conn is None:
        return []
    return sorted(conn.transactions.values(), key=lambda t: t.gen)


def pending_nodes(store: Store, tx: Transaction) -> list[PendingNode]:
    """What ``tx`` has seen and done, node by node, in first-access order."""
    committed = store.nodes
    out = []
    for path, node in tx.nodes.items():
        now = committed.get(path)
        seen = tx.gens.get(path, NO_GENERATION)
        changed = (now.gen if now is not None else NO_GENERATION) != seen
        written = path in tx.modified
        out.append(
            PendingNode(
                path,
                node,
                read=not written or node is not None,
                written=written,
                changed=changed,
                event=tx.events.get(path),
            )
        )
    return out


# --- import ----------------------------------------------------------------------------


def clear_tree(store: Store) -> None:
    """Forget every node (restore starts from an empty database)."""
    store.observe_generation()  # the node written last is gone: forget it
    store.nodes.clear()


def import_node(store: Store, path: str, value: bytes, perms: Perms) -> None:
    """Install a committed node; its parent must be there already (not for ``@`` nodes).

    A node that exists already (``/`` or a special node) is replaced, keeping
    its children.  Child order is import order.
    """
    if not perms:
        raise StateError(f"node {path!r} has no permissions")
    old = store.nodes.get(path)
    if old is not None:
        old.value = value
        old.perms = perms
        return
    if not path.startswith("@") and path != "/":
        parent = store.nodes.get(parent_of(path))
        if parent is None:
            raise StateError(f"node {path!r}: parent {parent_of(path)!r} missing")
        parent.add_child(path[path.rfind("/") + 1 :])
    store.observe_generation()
    store.generation += 1
    store.nodes[path] = Node(value, perms, store.generation)


def ensure_base_tree(store: Store) -> bool:
    """Create ``/`` and the special nodes if the imported state lacked them (True if any)."""
    priv = store.config.priv_domid
    from .perms import PERM_NONE, PERM_READ  # local: keeps the import list short

    missing = not all(p in store.nodes for p in ("/", *SPECIAL_NODES))
    if "/" not in store.nodes:
        import_node(store, "/", b"", ((priv, PERM_NONE),))
    if RELEASE_DOMAIN not in store.nodes:
        from ..wire import DOMID_ANY

        import_node(store, RELEASE_DOMAIN, b"", ((priv, PERM_NONE), (DOMID_ANY, PERM_READ)))
    if INTRODUCE_DOMAIN not in store.nodes:
        import_node(store, INTRODUCE_DOMAIN, b"", ((priv, PERM_NONE),))
    return missing


def domain_record(store: Store, domid: int) -> Domain:
    """The domain record of ``domid``, created with the global quota if missing.

    A record made while restoring is older than every restored node (the
    domain existed when they were dumped): generation 0, so that permission
    entries naming it are not taken for stale (digest 3.3).
    """
    dom = store.domains.get(domid)
    if dom is None:
        dom = store._domain(domid)
        dom.generation = 0
    return dom


def import_watch(store: Store, conn_id: int, wpath: str, token: bytes, depth: int) -> None:
    """Register a watch for a restored connection (relative paths stay relative)."""
    conn = store.conns.get(conn_id)
    if conn is None:
        raise StateError(f"watch {wpath!r} of unknown connection {conn_id}")
    prefix = 0
    if _ABSOLUTE_PATH(wpath) is not None:
        path = wpath  # what canonicalize gives an absolute path, without its round trip
    else:
        try:
            path = canonicalize(wpath.encode("ascii"), conn.domid, allow_special=True)
        except (XsError, UnicodeEncodeError):
            raise StateError(f"watch path {wpath!r} is not valid") from None
        if not wpath.startswith(("/", "@")):  # relative: reported relative
            prefix = len(implicit_path(conn.domid)) + 1
    key = (path, token)
    watches = conn.watches
    if key in watches:
        raise StateError(f"watch {wpath!r} token {token!r} of connection {conn_id} twice")
    seq = store._watch_seq = store._watch_seq + 1
    watch = Watch(conn_id, conn.seq, seq, path, token, depth, prefix)
    watches[key] = watch
    store.watches.add(watch)


# The absolute paths wire.canonicalize accepts (ASCII only: the ranges are).
_ABSOLUTE_PATH = re.compile(r"/|(?:/[A-Za-z0-9\-_@]+)+").fullmatch


def import_transaction(
    store: Store,
    conn_id: int,
    tx_id: int,
    pending: Sequence[PendingNode],
    *,
    events_known: bool = True,
    failed: bool = False,
) -> None:
    """Re-open a transaction of a restored connection over the restored tree.

    Nodes read and not changed since see the committed node (same
    generation); ``changed`` ones get a generation that can never match, so
    the commit fails with EAGAIN exactly as it would have.  A written node's
    children are the committed ones adjusted by the transaction's own
    creations and deletions.  Queued events are those recorded (``event``);
    when ``events_known`` is False (a stream from elsewhere) they are
    rebuilt: a node whose value or permissions the transaction changed, or
    that it created or deleted, fires at commit (subtree match for the top of
    a deleted subtree).  ``failed`` marks a transaction that failed earlier
    (its commit answers ENOMEM).
    """
    conn = store.conns.get(conn_id)
    if conn is None:
        raise StateError(f"transaction {tx_id} of unknown connection {conn_id}")
    if tx_id == 0 or tx_id in conn.transactions:
        raise StateError(f"transaction {tx_id} of connection {conn_id} twice or zero")
    store.observe_generation()
    store.generation += 1
    tx = Transaction(tx_id, conn_id, store.generation)
    tx.failed = failed
    committed = store.nodes
    for p in pending:
        now = committed.get(p.path)
        gen = now.gen if now is not None else NO_GENERATION
        tx.gens[p.path] = -2 if p.changed else gen  # -2: matches nothing
        if now is not None and not p.changed:
            # Unchanged since first access: the committed node is what it saw.
            tx.first_perms[p.path] = now.perms
        if p.written:
            tx.modified.add(p.path)
    tx.nodes.update(transaction_copies(committed.get, pending, tx.gen))
    # The queued events.
    deleted = {p.path for p in pending if p.written and p.node is None}
    for p in pending:
        if not p.written:
            continue
        now = committed.get(p.path)
        if events_known:
            pass
        elif p.node is None:
            if now is not None or p.changed:
                mode = MATCH_EXACT if parent_of(p.path) in deleted else MATCH_SUBTREE
                tx.queue_event(p.path, mode)
        elif now is None or now.value != p.node.value or now.perms != p.node.perms:
            tx.queue_event(p.path, MATCH_SUBTREE)
        before = now.owner if now is not None else None
        after = p.node.owner if p.node is not None else None
        if before != after:
            if before is not None:
                tx.node_delta[before] = tx.node_delta.get(before, 0) - 1
            if after is not None:
                tx.node_delta[after] = tx.node_delta.get(after, 0) + 1
    if events_known:
        for p in pending:
            if p.event is not None:
                tx.queue_event(p.path, p.event)
    conn.transactions[tx_id] = tx
    conn.next_tx_id = max(conn.next_tx_id, (tx_id + 1) & 0xFFFFFFFF)
    # Its copies are charged to the connection's domain as they were before
    # the dump (rebuild_counters counts them again after a whole restore).
    store._tx_charge(conn, tx, tx.held_memory())
    store.transactions_restored()


def _copy(node: Node | None) -> Node | None:
    return node.copy() if node is not None else None


def transaction_copies(
    committed: Callable[[str], Node | None], pending: Sequence[PendingNode], gen: int
) -> dict[str, Node | None]:
    """The node copies a re-opened transaction holds (see :func:`import_transaction`).

    ``committed``: the committed node at a path (None: absent); ``gen``: the
    transaction's generation.  Read nodes are the committed node when it has
    not changed since, else what the stream says; a written node's children
    are the committed ones adjusted by the transaction's own creations and
    deletions.  Pure: an importer may price the copies before it changes
    anything (their :func:`~.transaction.record_cost` is what they are
    charged).
    """
    nodes: dict[str, Node | None] = {}
    for p in pending:
        now = committed(p.path)
        if not p.written:
            nodes[p.path] = now.copy() if now is not None and not p.changed else _copy(p.node)
        elif p.node is None:
            nodes[p.path] = None
        else:
            # The transaction's generation: no domain record is younger (all
            # are made by now), so the stale flags the dump wrote stay the
            # only ones, as before the dump.  Generation 0 would make stale
            # every entry of a domain whose record came back with a connection.
            node = Node(p.node.value, p.node.perms, gen)
            if now is not None:
                for name in now.children:
                    node.add_child(name)
            nodes[p.path] = node
    # Children created or deleted in the transaction.
    for p in pending:
        if p.written and p.path != "/" and not p.path.startswith("@"):
            parent = nodes.get(parent_of(p.path))
            name = p.path[p.path.rfind("/") + 1 :]
            if parent is not None:
                if p.node is None:
                    parent.remove_child(name)
                else:
                    parent.add_child(name)
    return nodes


def rebuild_counters(store: Store, tree_usage: dict[int, list[int]] | None = None) -> None:
    """Quota usage from the imported tree, watches and transactions (with their copies).

    ``tree_usage`` (owner -> [nodes, memory] of the committed tree) may be
    given when the importer counted it already; else the tree is walked.
    Node owners get domain records (as C allocates them while restoring);
    the maxima are at least the usage.  The server's own part (queued
    output) stays as it charged it.
    """
    if tree_usage is None:
        tree_usage = {}
        for path, node in store.nodes.items():
            u = tree_usage.setdefault(node.perms[0][0], [0, 0])
            u[0] += 1
            u[1] += node.memory(path)
    for owner in tree_usage:
        domain_record(store, owner)
    conn_usage: dict[int, list[int]] = {}
    for conn in store.conns.values():
        if conn.domain is None:
            continue
        c = conn_usage.setdefault(conn.domid, [0, 0, 0])
        c[0] += len(conn.watches)
        c[1] += sum(len(w.path) + len(w.token) for w in conn.watches.values())
        c[1] += sum(tx.memory for tx in conn.transactions.values())
        c[2] += len(conn.transactions)
    for domid, dom in store.domains.items():
        nodes_n, mem = tree_usage.get(domid, (0, 0))
        watches_n, watch_mem, txs = conn_usage.get(domid, (0, 0, 0))
        dom.usage[q.NODES] = nodes_n
        dom.usage[q.WATCHES] = watches_n
        dom.usage[q.MEMORY] = mem + watch_mem + dom.io_usage[q.MEMORY]
        dom.usage[q.TRANSACTIONS] = txs
        for i, value in enumerate(dom.usage):
            if value > dom.maxima[i]:
                dom.maxima[i] = value


__all__ = [
    "PendingNode",
    "SPECIAL_NODES",
    "StateError",
    "WatchState",
    "clear_tree",
    "committed_nodes",
    "domain_record",
    "effective_perms",
    "ensure_base_tree",
    "import_node",
    "import_transaction",
    "import_watch",
    "pending_nodes",
    "rebuild_counters",
    "transaction_copies",
    "transactions_of",
    "watches_of",
]
