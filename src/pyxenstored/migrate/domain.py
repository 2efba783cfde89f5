"""Domain migration: one domain's xenstore state as a stream, and back into another store.

The migration stream's second job (xen.git ``docs/designs/xenstore-migration.md``
and ``docs/designs/non-cooperative-migration.md``; the C daemon has no code for
it, see docs/migration.md): a version-2 stream
holding exactly one domain's state, in this order:

* its ring connection (CONNECTION_DATA; pending data only as whole
  messages, no unique id: that is a live-update matter),
* its watches (WATCH_DATA / WATCH_DATA_EXTENDED),
* the committed nodes of its home ``/local/domain/<domid>`` in tree order,
  with permissions (the home's parent is the target's),
* its open transactions (TRANSACTION_DATA) with their pending nodes,
* its DOMAIN_DATA (features, quota), then END.

:func:`extract_domain` cuts that stream out of any full stream (a
live-update dump, or :func:`~.dump.dump_state` of a running store: see
:func:`save_domain`).  :func:`import_domain` loads it into a store for a
domain that is already introduced there, under a possibly different domid:
the home's paths, permission entries naming the old domid and absolute
watch paths in the home move to the new domid; relative watch paths stay
relative; features and quota follow; usage counters are charged exactly as
the store's own operations would.  Every check is made before anything
changes: a refused import leaves the store as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..store import Store
from ..store import quota as q
from ..store.domain import Domain
from ..store.features import SUPPORTED_FEATURES
from ..store.node import Node
from ..store.state import (
    PendingNode,
    StateError,
    import_transaction,
    import_watch,
    transaction_copies,
)
from ..store.transaction import record_cost
from ..stream.records import (
    DEPTH_UNLIMITED,
    ConnectionData,
    DomainData,
    End,
    NodeData,
    NodePerm,
    Record,
    RingSpec,
    TransactionData,
    WatchData,
    WatchDataExtended,
)
from ..stream.txmarks import TransactionMarks, is_marks_name, parse_marks
from ..wire import (
    HEADER,
    HEADER_SIZE,
    MsgType,
    XsError,
    canonicalize,
    iter_frames,
    pack_message,
    parent_of,
)
from .dump import dump_state
from .restore import marks_of, pending_node, store_perms

_WATCH_EVENT = int(MsgType.WATCH_EVENT)


class DomainMigrationError(ValueError):
    """A domain's state cannot be cut out, or the target cannot take it (nothing changed)."""


def home_path(domid: int) -> str:
    """A domain's home, ``/local/domain/<domid>``."""
    return f"/local/domain/{domid}"


def in_home(path: str, home: str) -> bool:
    """Whether ``path`` is ``home`` or below it."""
    return path == home or path.startswith(home + "/")


def remap_path(path: str, old: int, new: int) -> str:
    """``path`` with the home of ``old`` moved to the home of ``new`` (other paths as they are)."""
    home = home_path(old)
    if in_home(path, home):
        return home_path(new) + path[len(home) :]
    return path


def remap_perms(perms: tuple[NodePerm, ...], old: int, new: int) -> tuple[NodePerm, ...]:
    """Permission specifiers with every entry naming ``old`` naming ``new``."""
    if all(p.domid != old for p in perms):
        return perms
    return tuple(NodePerm(p.perm, p.flags, new) if p.domid == old else p for p in perms)


def whole_messages(data: bytes) -> list[bytes]:
    """``data`` cut into wire messages; a torn last message is a :class:`DomainMigrationError`."""
    out = []
    pos = 0
    for start, _type, _req, _tx, length in iter_frames(data):
        pos = start + HEADER_SIZE + length
        if pos > len(data):
            raise DomainMigrationError(
                f"a partial message ({len(data) - start} of {pos - start} bytes)"
            )
        out.append(data[start:pos])
    if pos < len(data):
        raise DomainMigrationError(f"a partial message header ({len(data) - pos} bytes)")
    return out


def remap_events(data: bytes, old: int, new: int) -> bytes:
    """Queued output with the paths of WATCH_EVENT messages in the old home moved.

    Replies are carried as they are (they answer requests already made).
    Relative watches report relative paths, which do not change.
    """
    out = []
    for msg in whole_messages(data):
        type_, req_id, tx_id, _len = HEADER.unpack_from(msg)
        if type_ == _WATCH_EVENT:
            payload = msg[HEADER_SIZE:]
            nul = payload.find(b"\0")
            if nul > 0 and payload[:1] == b"/":
                path = payload[:nul].decode("ascii", "surrogateescape")
                moved = remap_path(path, old, new).encode("ascii", "surrogateescape")
                payload = moved + payload[nul:]
                msg = pack_message(type_, req_id, tx_id, payload)
        out.append(msg)
    return b"".join(out)


# --- cutting one domain out of a stream ---------------------------------------------


@dataclass(slots=True)
class DomainRecords:
    """One domain's records, grouped (what a migration stream holds)."""

    connection: ConnectionData
    watches: list[WatchData | WatchDataExtended] = field(default_factory=list)
    nodes: list[NodeData] = field(default_factory=list)
    transactions: list[tuple[TransactionData, list[NodeData]]] = field(default_factory=list)
    domain: DomainData | None = None

    @property
    def domid(self) -> int:
        spec = self.connection.spec
        assert isinstance(spec, RingSpec)
        return spec.domid

    def records(self) -> list[Record]:
        """The records in stream order, END last."""
        out: list[Record] = [self.connection, *self.watches, *self.nodes]
        for tx, pending in self.transactions:
            out.append(tx)
            out.extend(pending)
        if self.domain is not None:
            out.append(self.domain)
        out.append(End())
        return out


def _clean_connection(cd: ConnectionData, domid: int) -> ConnectionData:
    """The connection as a migration stream carries it: whole messages, no unique id."""
    if cd.out_resp_len:
        raise DomainMigrationError(
            f"domain {domid}: a partial reply ({cd.out_resp_len} bytes) is being written "
            "to its ring; retry when the guest has read it"
        )
    try:
        whole_messages(cd.in_data)
    except DomainMigrationError as exc:
        raise DomainMigrationError(
            f"domain {domid}: its pending input ends in {exc}; retry when the guest is idle"
        ) from None
    try:
        whole_messages(cd.out_data)
    except DomainMigrationError as exc:
        raise DomainMigrationError(f"domain {domid}: its pending output ends in {exc}") from None
    return ConnectionData(cd.conn_id, cd.conn_type, 0, cd.spec, cd.in_data, cd.out_data, 0, None)


def group_domain(records: Iterable[Record], domid: int) -> DomainRecords:
    """Pick ``domid``'s records out of a full stream (see :func:`extract_domain`)."""
    home = home_path(domid)
    conn: ConnectionData | None = None
    watches: list[WatchData | WatchDataExtended] = []
    nodes: list[NodeData] = []
    txs: list[TransactionData] = []
    pending: dict[tuple[int, int], list[NodeData]] = {}
    domain: DomainData | None = None
    seen: set[str] = set()
    for r in records:
        if isinstance(r, ConnectionData):
            if r.is_ring and isinstance(r.spec, RingSpec) and r.spec.domid == domid:
                if conn is not None:
                    raise DomainMigrationError(f"domain {domid} has two ring connections")
                conn = r
        elif isinstance(r, (WatchData, WatchDataExtended)):
            watches.append(r)
        elif isinstance(r, TransactionData):
            txs.append(r)
            pending.setdefault((r.conn_id, r.tx_id), [])
        elif isinstance(r, NodeData):
            if r.conn_id:
                pending.setdefault((r.conn_id, r.tx_id), []).append(r)
            elif in_home(r.path, home):
                if r.path != home and parent_of(r.path) not in seen:
                    raise DomainMigrationError(
                        f"node {r.path!r} comes before its parent: the stream is not in tree order"
                    )
                if r.path in seen:
                    raise DomainMigrationError(f"node {r.path!r} twice")
                seen.add(r.path)
                nodes.append(r)
        elif isinstance(r, DomainData):
            if r.domid == domid:
                domain = r
        elif isinstance(r, End):
            break
    if conn is None:
        raise DomainMigrationError(f"domain {domid} has no ring connection in the stream")
    cid = conn.conn_id
    state = DomainRecords(_clean_connection(conn, domid), domain=domain, nodes=nodes)
    state.watches = [w for w in watches if w.conn_id == cid]
    state.transactions = [(t, pending[(t.conn_id, t.tx_id)]) for t in txs if t.conn_id == cid]
    return state


def extract_domain(records: Iterable[Record], domid: int) -> list[Record]:
    """The version-2 migration stream of ``domid`` cut out of a full stream (END last).

    Raises :class:`DomainMigrationError` when the stream has no (or two)
    ring connections for ``domid``, when its pending data is not whole
    messages, or when its home is not in tree order.
    """
    return group_domain(records, domid).records()


def find_connection(store: Store, domid: int) -> int:
    """The id of ``domid``'s one ring connection in ``store``."""
    ids = [c.conn_id for c in store.conns.values() if c.domid == domid and not c.is_socket]
    if not ids:
        raise DomainMigrationError(f"domain {domid} has no ring connection")
    if len(ids) > 1:
        raise DomainMigrationError(f"domain {domid} has {len(ids)} ring connections")
    return ids[0]


def save_domain(store: Store, domid: int, connection: ConnectionData) -> list[Record]:
    """The migration stream of ``domid`` from a running store.

    ``connection`` is the domain's connection as the server describes it
    (ring spec, pending data).  The store is only read.
    """
    check_saveable(store, domid)
    return extract_domain(dump_state(store, [connection], subtree=home_path(domid)), domid)


def check_saveable(store: Store, domid: int) -> None:
    """Refuse the privileged and store domains and domains not introduced."""
    if domid in (store.config.priv_domid, store.config.store_domid):
        raise DomainMigrationError(f"domain {domid} is the privileged or the store domain")
    dom = store.domains.get(domid)
    if dom is None or not dom.introduced:
        raise DomainMigrationError(f"domain {domid} is not introduced")


# --- loading it into another store ----------------------------------------------------


@dataclass(slots=True)
class ImportedDomain:
    """What :func:`import_domain` did; the server queues ``out_data`` and feeds ``in_data``."""

    old_domid: int
    new_domid: int
    conn_id: int
    in_data: bytes
    out_data: bytes
    nodes: int
    watches: int
    transactions: int
    features: int


@dataclass(slots=True)
class _NewNode:
    path: str
    node: Node


def _parse(records: Iterable[Record]) -> DomainRecords:
    """A migration stream's records grouped, with its structure checked."""
    conn: ConnectionData | None = None
    state: DomainRecords | None = None
    current: list[NodeData] | None = None
    current_key: tuple[int, int] | None = None
    saw_end = False
    for r in records:
        if saw_end:
            break
        if isinstance(r, ConnectionData):
            if conn is not None:
                raise DomainMigrationError("the stream holds more than one connection")
            if not r.is_ring or not isinstance(r.spec, RingSpec):
                raise DomainMigrationError("the stream's connection is not a shared ring")
            conn = r
            state = DomainRecords(_clean_connection(r, r.spec.domid))
            continue
        if isinstance(r, End):
            saw_end = True
            continue
        if state is None:
            raise DomainMigrationError(f"{type(r).__name__} before the connection record")
        if isinstance(r, (WatchData, WatchDataExtended)):
            if r.conn_id != state.connection.conn_id:
                raise DomainMigrationError(f"watch {r.wpath!r} of another connection")
            state.watches.append(r)
        elif isinstance(r, TransactionData):
            if r.conn_id != state.connection.conn_id:
                raise DomainMigrationError(f"transaction {r.tx_id} of another connection")
            if any(t.tx_id == r.tx_id for t, _ in state.transactions):
                raise DomainMigrationError(f"transaction {r.tx_id} twice")
            current = []
            current_key = (r.conn_id, r.tx_id)
            state.transactions.append((r, current))
        elif isinstance(r, NodeData):
            if not r.conn_id:
                if state.transactions:
                    raise DomainMigrationError(f"committed node {r.path!r} after a transaction")
                state.nodes.append(r)
            elif current is None or current_key != (r.conn_id, r.tx_id):
                raise DomainMigrationError(
                    f"pending node {r.path!r} not right after its TRANSACTION_DATA"
                )
            else:
                current.append(r)
        elif isinstance(r, DomainData):
            if r.domid != state.domid:
                raise DomainMigrationError(f"DOMAIN_DATA of domain {r.domid}, not {state.domid}")
            state.domain = r
        else:
            raise DomainMigrationError(f"{type(r).__name__} has no place in a migration stream")
    if state is None:
        raise DomainMigrationError("the stream holds no connection record")
    if not saw_end:
        raise DomainMigrationError("the stream ends without an END record")
    return state


def _pending_of(
    store: Store, rec: NodeData, mark: int, old: int, new: int, new_home: str, tx_id: int
) -> PendingNode:
    """A pending node moved to the new domid; outside the home only what was read."""
    path = remap_path(rec.path, old, new)
    perms = store_perms(remap_perms(rec.perms, old, new)) if rec.perms else ()
    pending = pending_node(path, perms, rec.value, rec.access, mark)
    if in_home(path, new_home):
        return pending
    if pending.written:
        raise DomainMigrationError(
            f"transaction {tx_id} changes {rec.path!r} outside the domain's home: "
            "the target cannot carry it"
        )
    # The target's node is not the one the source read unless it looks the
    # same: if not, the commit must fail (EAGAIN) as after any conflict.
    now = store.nodes.get(path)
    node = pending.node
    if (now is None) != (node is None) or (
        now is not None and node is not None and (now.value, now.perms) != (node.value, node.perms)
    ):
        pending = replace(pending, changed=True)
    return pending


def _transactions(
    store: Store, state: DomainRecords, old: int, new: int, new_home: str
) -> list[tuple[int, list[PendingNode], bool, bool]]:
    """The stream's transactions, moved: (tx id, pending nodes, events known, failed)."""
    marks: dict[tuple[int, int], TransactionMarks] = {}
    for v in state.domain.quota if state.domain is not None else ():
        if is_marks_name(v.name):
            try:
                entry = parse_marks(v)
            except ValueError as exc:
                raise DomainMigrationError(str(exc)) from None
            marks[(entry.conn_id, entry.tx_id)] = entry
    out = []
    for t, records in state.transactions:
        if t.tx_id == 0:
            raise DomainMigrationError("transaction id 0")
        m = marks.get((t.conn_id, t.tx_id))
        try:
            node_marks, known = marks_of(records, m, t.conn_id, t.tx_id)
        except StateError as exc:
            raise DomainMigrationError(str(exc)) from None
        pending = [
            _pending_of(store, r, mark, old, new, new_home, t.tx_id)
            for r, mark in zip(records, node_marks, strict=True)
        ]
        out.append((t.tx_id, pending, known, m is not None and m.failed))
    return out


def import_domain(
    store: Store, records: Iterable[Record], new_domid: int, *, version: int = 2
) -> ImportedDomain:
    """Load a migration stream into ``store`` for the introduced domain ``new_domid``.

    Refused (:class:`DomainMigrationError`, nothing changed) when the
    domain is not introduced, is privileged, has more or less than one
    ring connection, already has watches or transactions or nodes below
    its home (an empty home made by the toolstack is replaced), when a node
    of the stream exists already or its home's parent is missing, when a
    transaction changes nodes outside the home, or when the domain's quota
    (the stream's) would be exceeded.
    """
    state = _parse(records)
    old = state.domid
    new = new_domid
    dom, conn_id = _target(store, new)
    new_home = home_path(new)
    planned, old_home_node = _plan_nodes(store, state, old, new)
    quota, features = _moved_quota(dom, state, version)
    watches = _moved_watches(state, old, new)
    txs = _transactions(store, state, old, new, new_home)
    out_data = remap_events(state.connection.out_data, old, new)
    if not store.conns[conn_id].privileged:
        usage = _usage_delta(store, new, planned, old_home_node, watches, out_data)
        # The transactions' copies are charged to the domain too (as they
        # arrive in C; all at once here, after the nodes).
        usage[1] += _transactions_memory(store, planned, old_home_node, txs)
        _check_quota(dom, quota, new, usage, len(watches), len(txs))

    # --- nothing has changed so far; from here on nothing fails -----------------
    dom.features = features
    dom.quota = quota
    if planned:
        _install_nodes(store, planned, old_home_node)
    for wpath, token, depth, mem in watches:
        import_watch(store, conn_id, wpath, token, depth)
        dom.add(q.WATCHES, 1)
        dom.add(q.MEMORY, mem)
    for tx_id, pending, known, failed in txs:
        import_transaction(store, conn_id, tx_id, pending, events_known=known, failed=failed)
        dom.add(q.TRANSACTIONS, 1)
    return ImportedDomain(
        old,
        new,
        conn_id,
        state.connection.in_data,
        out_data,
        len(planned),
        len(watches),
        len(txs),
        features,
    )


def _target(store: Store, new: int) -> tuple[Domain, int]:
    """The target domain's record and its one ring connection, which must hold no state yet."""
    cfg = store.config
    if new in (cfg.priv_domid, cfg.store_domid):
        raise DomainMigrationError(f"domain {new} is the privileged or the store domain")
    dom = store.domains.get(new)
    if dom is None or not dom.introduced:
        raise DomainMigrationError(f"domain {new} is not introduced on the target")
    conn_id = find_connection(store, new)
    conn = store.conns[conn_id]
    if conn.watches or conn.transactions:
        raise DomainMigrationError(
            f"domain {new} already has state on the target ({len(conn.watches)} watches, "
            f"{len(conn.transactions)} transactions)"
        )
    return dom, conn_id


def _plan_nodes(
    store: Store, state: DomainRecords, old: int, new: int
) -> tuple[list[_NewNode], Node | None]:
    """The committed nodes, moved: all in the home, the home first, none already there.

    Returns them with their children filled in, and the target's node at the
    home (an empty home the toolstack made, which they replace) if any.
    """
    old_home, new_home = home_path(old), home_path(new)
    planned: list[_NewNode] = []
    children: dict[str, list[str]] = {}
    for rec in state.nodes:
        if not in_home(rec.path, old_home):
            raise DomainMigrationError(f"node {rec.path!r} is outside the home of domain {old}")
        if not rec.perms:
            raise DomainMigrationError(f"node {rec.path!r} has no permissions")
        path = remap_path(rec.path, old, new)
        if path in children:
            raise DomainMigrationError(f"node {rec.path!r} twice")
        if path != new_home:
            parent = parent_of(path)
            if parent not in children:
                raise DomainMigrationError(f"node {rec.path!r} comes before its parent")
            children[parent].append(path[len(parent) + 1 :])
        children[path] = []
        planned.append(
            _NewNode(path, Node(rec.value, store_perms(remap_perms(rec.perms, old, new)), 0))
        )
    if planned and planned[0].path != new_home:
        raise DomainMigrationError(f"the stream's first node is not the home {old_home!r}")
    old_home_node = store.nodes.get(new_home)
    if not planned:
        if old_home_node is not None and old_home_node.children:
            raise DomainMigrationError(f"{new_home!r} exists on the target with children")
        return planned, old_home_node
    if parent_of(new_home) not in store.nodes:
        raise DomainMigrationError(f"{parent_of(new_home)!r} does not exist on the target")
    if old_home_node is not None and old_home_node.children:
        raise DomainMigrationError(
            f"{new_home!r} exists on the target with children "
            f"({', '.join(list(old_home_node.children)[:3])}...)"
        )
    for item in planned[1:]:
        if item.path in store.nodes:
            raise DomainMigrationError(f"node {item.path!r} already exists on the target")
    for item in planned:
        for name in children[item.path]:
            item.node.add_child(name)
    return planned, old_home_node


def _moved_quota(dom: Domain, state: DomainRecords, version: int) -> tuple[q.QuotaTable, int]:
    """Quota and features follow the domain: the target's table with the stream's values."""
    quota = dom.quota.copy()
    features = dom.features
    if state.domain is not None:
        for v in state.domain.quota:
            try:
                index, kind = q.parse_quota_name(quota, v.name)
            except XsError:
                continue  # a name this store does not know: no effect (spec)
            quota.set(index, kind, v.value)
        if version >= 2:
            features = state.domain.features & SUPPORTED_FEATURES
    return quota, features


def _moved_watches(state: DomainRecords, old: int, new: int) -> list[tuple[str, bytes, int, int]]:
    """Watches as ``(wpath, token, depth, charged memory)``.

    Absolute paths in the home move, relative ones stay relative.
    """
    watches: list[tuple[str, bytes, int, int]] = []
    keys: set[tuple[str, bytes]] = set()
    for w in state.watches:
        wpath = remap_path(w.wpath, old, new) if w.wpath.startswith("/") else w.wpath
        try:
            abs_path = canonicalize(wpath.encode("ascii"), new, allow_special=True)
        except (XsError, UnicodeEncodeError):
            raise DomainMigrationError(f"watch path {w.wpath!r} is not valid here") from None
        token = w.token.encode()
        if (abs_path, token) in keys:
            raise DomainMigrationError(f"watch {w.wpath!r} token {w.token!r} twice")
        keys.add((abs_path, token))
        depth = -1
        if isinstance(w, WatchDataExtended) and w.depth != DEPTH_UNLIMITED:
            depth = w.depth
        watches.append((wpath, token, depth, len(abs_path) + len(token)))
    return watches


def _usage_delta(
    store: Store,
    new: int,
    planned: list[_NewNode],
    old_home_node: Node | None,
    watches: list[tuple[str, bytes, int, int]],
    out_data: bytes,
) -> list[int]:
    """What the import adds to domain ``new``'s nodes and memory, exactly as accounted."""
    delta: dict[int, list[int]] = {}

    def charge(owner: int, nodes: int, mem: int) -> None:
        d = delta.setdefault(owner, [0, 0])
        d[0] += nodes
        d[1] += mem

    new_home = home_path(new)
    if planned:
        if old_home_node is not None:
            charge(old_home_node.owner, -1, -old_home_node.memory(new_home))
        else:
            above = store.nodes[parent_of(new_home)]
            charge(above.owner, 0, len(new_home) - len(parent_of(new_home)))
        for item in planned:
            charge(item.node.owner, 1, item.node.memory(item.path))
    watch_mem = sum(w[3] for w in watches)
    charge(new, 0, watch_mem + len(out_data))
    return delta.get(new, [0, 0])


def _transactions_memory(
    store: Store,
    planned: list[_NewNode],
    old_home_node: Node | None,
    txs: list[tuple[int, list[PendingNode], bool, bool]],
) -> int:
    """What the imported transactions' copies will be charged, priced before anything changes.

    Their copies are made over the tree as it is once the planned nodes are
    in (:func:`_install_nodes`): the moved home and its subtree, and the
    home's parent with the home among its children.
    """
    if not txs:
        return 0
    after = {item.path: item.node for item in planned}
    if planned and old_home_node is None:
        home = planned[0].path
        parent_path = parent_of(home)
        parent = store.nodes[parent_path].copy()
        parent.add_child(home[len(parent_path) + 1 :])
        after[parent_path] = parent

    def committed(path: str) -> Node | None:
        node = after.get(path)
        return node if node is not None else store.nodes.get(path)

    total = 0
    for _tx_id, pending, _known, _failed in txs:
        copies = transaction_copies(committed, pending, 0)
        total += sum(record_cost(path, node) for path, node in copies.items())
    return total


def _check_quota(
    dom: Domain, quota: q.QuotaTable, new: int, usage: list[int], watches: int, txs: int
) -> None:
    """Refuse an import that takes the domain over its quota (the stream's)."""
    checks = (
        (q.NODES, usage[0], dom.usage[q.NODES] + usage[0]),
        (q.WATCHES, watches, dom.usage[q.WATCHES] + watches),
        (q.TRANSACTIONS, txs, dom.usage[q.TRANSACTIONS] + txs),
        (q.MEMORY, usage[1], dom.usage[q.MEMORY] + usage[1]),
    )
    for index, added, value in checks:
        limit = quota.hard(index)
        # Only what the import adds is checked (C checks at each addition).
        if added > 0 and q.exceeds(limit, value):
            raise DomainMigrationError(
                f"domain {new} would exceed its {q.QUOTAS[index].name} quota on the "
                f"target ({value} >= {limit})"
            )


def _install_nodes(store: Store, planned: list[_NewNode], old_home: Node | None) -> None:
    """Put the checked nodes into the committed tree, counters as the store keeps them."""
    home = planned[0]
    if old_home is not None:
        before = (old_home.owner, old_home.memory(home.path))
        store.account_write(home.path, home.node, before)
    else:
        parent_path = parent_of(home.path)
        parent = store.nodes[parent_path]
        before = (parent.owner, parent.memory(parent_path))
        parent.add_child(home.path[len(parent_path) + 1 :])
        store.account_write(parent_path, parent, before)
        store.account_write(home.path, home.node, None)
    for item in planned[1:]:
        store.account_write(item.path, item.node, None)


__all__ = [
    "DomainMigrationError",
    "DomainRecords",
    "ImportedDomain",
    "check_saveable",
    "extract_domain",
    "find_connection",
    "group_domain",
    "home_path",
    "import_domain",
    "in_home",
    "remap_events",
    "remap_path",
    "remap_perms",
    "save_domain",
    "whole_messages",
]
