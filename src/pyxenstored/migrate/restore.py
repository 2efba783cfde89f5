"""Migration-stream records -> store state (the new daemon's side of live update).

:func:`restore_state` reads records one at a time into a fresh
:class:`~pyxenstored.store.Store`.  Connections are the server's business:
each CONNECTION_DATA goes to a :class:`ConnectionSink`, which must register
the connection with the store (``store.connect``) before its watches arrive.
Open transactions are put back once the committed tree is complete, then
the counters are rebuilt and the store checks itself.

Any problem is a :class:`RestoreError` naming the record (number, type) and
its byte offset when known; the store is then unusable.

Accepted: what pyxenstored writes, and what the C daemon writes (4.17 and
HEAD, digest 10.5/10.9): ``@`` nodes before or after the tree, DOMAIN_DATA
for domains nothing else names, WATCH_DATA_EXTENDED in any layout the
reader recognises.  Unknown quota names and unknown record types are kept in
:class:`~.dump.Preserved` for the next dump.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from sys import intern
from typing import BinaryIO, Protocol

from ..store import Store
from ..store import quota as q
from ..store.features import SUPPORTED_FEATURES
from ..store.node import NO_CHILDREN, Children, Node
from ..store.perms import PERM_IGNORE, PERM_NONE, PERM_READ, PERM_RW, PERM_WRITE, Perms
from ..store.state import (
    PendingNode,
    StateError,
    clear_tree,
    domain_record,
    ensure_base_tree,
    import_node,
    import_transaction,
    import_watch,
    rebuild_counters,
)
from ..store.watch import MATCH_EXACT, MATCH_SUBTREE
from ..stream.reader import CommittedNode, StreamError, StreamReader
from ..stream.records import (
    ACCESS_READ,
    ACCESS_WRITTEN,
    DEPTH_UNLIMITED,
    PERM_FLAG_STALE,
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
    record_type,
    type_name,
)
from .dump import (
    ACCESS_CHANGED,
    ACCESS_EVENT_EXACT,
    ACCESS_EVENT_SUBTREE,
    ACCESS_FAILED,
    Preserved,
)

#: Stands for the record being restored while a run of committed nodes is.
_NODE_RUN = NodeData(0, 0, 0, (), "/", b"")

# Node paths the protocol can name (xenstore.txt): "/", absolute paths without
# empty components, or special "@" paths.
_NODE_PATH = re.compile(r"/|(?:/[A-Za-z0-9_@\-]+)+|@[A-Za-z0-9_@/\-]+").fullmatch
# One component of such a path.
_NODE_NAME = re.compile(r"[A-Za-z0-9_@\-]+").fullmatch
_BITS = {"n": PERM_NONE, "r": PERM_READ, "w": PERM_WRITE, "b": PERM_RW}


class RestoreError(Exception):
    """The state cannot be restored: what, in which record, at which offset."""

    def __init__(
        self,
        message: str,
        index: int | None = None,
        rtype: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.message = message
        self.index = index
        self.rtype = rtype
        self.offset = offset
        where = []
        if index is not None:
            what = f"record {index}"
            if rtype is not None:
                what += f" ({type_name(rtype)})"
            where.append(what)
        if offset is not None:
            where.append(f"offset {offset:#x}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ConnectionSink(Protocol):
    """Who recreates connections: registers each with the store (same conn-id)."""

    def restore_connection(self, record: ConnectionData) -> None: ...


class StoreOnlySink:
    """A sink without a server (``--check-state``, tests): store connections only."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.records: list[ConnectionData] = []

    def restore_connection(self, record: ConnectionData) -> None:
        spec = record.spec
        domid = getattr(spec, "domid", 0)
        self.store.connect(record.conn_id, domid, is_socket=record.is_socket)
        self.records.append(record)


@dataclass(slots=True)
class Restored:
    """What a restore found besides the store's state."""

    version: int = 0
    global_data: GlobalData | None = None
    preserved: Preserved = field(default_factory=Preserved)
    records: int = 0
    connections: int = 0
    nodes: int = 0
    transactions: int = 0
    problems: list[str] = field(default_factory=list)


_PERMS_CACHE: dict[tuple[NodePerm, ...], Perms] = {}


def store_perms(perms: tuple[NodePerm, ...]) -> Perms:
    """Stream permission specifiers as store permissions (unknown letters are ``n``, as C)."""
    out = _PERMS_CACHE.get(perms)
    if out is None:
        out = tuple(
            (
                p.domid,
                _BITS.get(p.perm, PERM_NONE) | (PERM_IGNORE if p.flags & PERM_FLAG_STALE else 0),
            )
            for p in perms
        )
        if len(_PERMS_CACHE) < 4096:
            _PERMS_CACHE[perms] = out
    return out


def _set_quota(table: q.QuotaTable, values: Iterable[QuotaValue]) -> tuple[QuotaValue, ...]:
    """Apply known names to ``table``; return the unknown ones."""
    unknown = []
    for v in values:
        try:
            index, kind = q.parse_quota_name(table, v.name)
        except Exception:
            unknown.append(v)
            continue
        table.set(index, kind, v.value)
    return tuple(unknown)


def _record_offset(source: str | bytes | BinaryIO, index: int) -> int | None:
    """Byte offset of record ``index`` of a stream (located again after an error).

    None for an open file: a pipe cannot be read a second time.
    """
    if not isinstance(source, str | bytes):
        return None
    try:
        with StreamReader(source) as reader:
            for raw in reader.iter_raw():
                if raw.index == index:
                    return raw.offset
    except StreamError:
        return None
    return None


def restore_stream(
    source: str | bytes | BinaryIO, store: Store, sink: ConnectionSink, *, verify: bool = True
) -> Restored:
    """Restore from a stream file (path), buffer or open file; see :func:`restore_state`.

    Errors name the record and its byte offset.
    """
    try:
        reader = StreamReader(source)
    except StreamError as exc:
        raise RestoreError(f"not a readable stream: {exc}", offset=exc.offset) from None
    with reader:
        version = reader.header.version
        try:
            restored = restore_state(reader, store, sink, version, verify=verify)
        except RestoreError as exc:
            if exc.offset is None and exc.index is not None:
                exc = RestoreError(
                    exc.message, exc.index, exc.rtype, _record_offset(source, exc.index)
                )
            raise exc from None
        restored.version = version
        return restored


def restore_state(
    records: Iterable[Record],
    store: Store,
    sink: ConnectionSink,
    version: int = 2,
    *,
    verify: bool = True,
) -> Restored:
    """Put the state of ``records`` into ``store`` (fresh, as the daemon built it).

    The store's start-up tree is replaced by the stream's.  Errors name the
    record by number (:func:`restore_stream` adds its offset).  With
    ``verify`` the store runs its consistency check afterwards (the whole
    tree once more); a problem is a :class:`RestoreError`.
    """
    # The cyclic collector would scan the growing tree again and again while
    # it is built (a third of a large restore); nothing here makes garbage
    # cycles, so it is paused until the store is complete.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _restore_records(records, store, sink, version, verify=verify)
    finally:
        if collecting:
            gc.enable()


def _restore_node_slowly(
    store: Store,
    usage: dict[int, list[int]],
    path: str,
    raw_perms: tuple[NodePerm, ...],
    value: bytes,
    gen: int,
) -> tuple[int, Node | None]:
    """One committed node, checked step by step (the bulk path's exceptions).

    Returns the generation to go on with and the new node, or None when
    :func:`import_node` installed it (an existing node replaced; then the
    usage counted while importing is no longer exact).
    """
    if _NODE_PATH(path) is None:
        raise StateError(f"node path {path!r} is not valid")
    perms = store_perms(raw_perms)
    if path in store.nodes or not perms:
        store.generation = gen
        import_node(store, path, value, perms)
        return store.generation, None
    if path[0] != "@" and path != "/":
        cut = path.rfind("/")
        parent_path = path[:cut] or "/"
        parent = store.nodes.get(parent_path)
        if parent is None:
            raise StateError(f"node {path!r}: parent {parent_path!r} missing")
        name = path[cut + 1 :]
        parent.add_child(name)
        usage.setdefault(parent.perms[0][0], [0, 0])[1] += len(name) + 1
    node = Node(value, perms, gen)
    store.nodes[path] = node
    u = usage.setdefault(perms[0][0], [0, 0])
    u[0] += 1
    u[1] += node.memory(path)
    return gen, node


def _restore_records(
    records: Iterable[Record], store: Store, sink: ConnectionSink, version: int, *, verify: bool
) -> Restored:
    out = Restored()
    kept = out.preserved
    clear_tree(store)
    pending: dict[tuple[int, int], list[PendingNode]] = {}
    failed: set[tuple[int, int]] = set()
    conn_ids: set[int] = set()
    index = -1
    record: Record | None = None
    saw_end = False
    nodes = store.nodes
    # Quota usage of the committed tree, counted while importing:
    # owner -> [nodes, memory].  C's node memory: 16 + 8 per permission +
    # value + path + the child-name list (charged to the parent's owner).
    usage: dict[int, list[int]] = {}
    exact_usage = True
    # Restored nodes are a run of writes nobody has observed yet: they share
    # one generation (no int per node), see Store.observe_generation.
    store.observe_generation()
    gen = store.generation + 1
    last_restored: Node | None = None
    # Permission tuples are shared between records (the reader memoises
    # them): their store form, their owner's usage counters and the fixed
    # part of a node's memory, by identity (the entry keeps the tuple alive,
    # so its id cannot be reused meanwhile).
    perms_by_id: dict[int, tuple[Perms, list[int], int, tuple[NodePerm, ...]]] = {}
    # Siblings follow each other: their parent is looked up once per run of
    # them, by its path ("" for "/"; None: no parent known, equal to none).
    last_parent_path: str | None = None
    kids = Children()
    parent_usage: list[int] = [0, 0]
    # Length of the child names added to ``kids`` and not yet counted.
    grown = 0
    # The permissions of the last node, their store form (() for none: the
    # slow path refuses them), their owner's usage, the fixed part of a
    # node's memory, and the nodes and memory counted for them not yet added.
    last_raw: tuple[NodePerm, ...] | None = None
    perms: Perms = ()
    owner_usage: list[int] = [0, 0]
    fixed = counted = memory = 0
    # Node names seen valid, interned (one lookup validates and interns).
    names: dict[str, str] = {}
    names_get = names.get
    new_node = Node.__new__
    node_count = 0
    try:
        source: Iterable[Record | list[CommittedNode]] = (
            records.iter_node_runs() if isinstance(records, StreamReader) else records
        )
        for item in source:
            cls = item.__class__
            if cls is list:
                # A run of committed nodes straight from the reader.
                assert isinstance(item, list)
                run: list[CommittedNode] = item
                record = _NODE_RUN
            elif cls is WatchData:
                # Many, each after its connection: first after the node runs.
                assert isinstance(item, WatchData)
                record = item
                index += 1
                import_watch(store, item.conn_id, item.wpath, item.token.encode(), -1)
                continue
            elif cls is NodeData and item.conn_id == 0:  # type: ignore[union-attr]
                assert isinstance(item, NodeData)
                run = [(item.path, item.perms, item.value)]
                record = item
            else:
                assert not isinstance(item, list)
                record = item
                index += 1
                run = []
            # Inline for the bulk of the stream (see store.state.import_node):
            # a node whose parent is known, under a valid name, with
            # permissions, not there yet.  Anything else (``/``, ``@`` nodes,
            # errors) goes through _restore_node_slowly, record by record.
            first = index + 1
            index += len(run)
            node_count += len(run)
            scan_from = 0
            for path, raw_perms, value in run:
                if raw_perms is not last_raw:  # neighbours mostly share them
                    # The nodes counted for the previous permissions' owner.
                    owner_usage[0] += counted
                    owner_usage[1] += memory
                    counted = memory = 0
                    last_raw = raw_perms
                    hit = perms_by_id.get(id(raw_perms))
                    if hit is None:
                        converted = store_perms(raw_perms)
                        if converted:
                            hit = perms_by_id[id(raw_perms)] = (
                                converted,
                                usage.setdefault(converted[0][0], [0, 0]),
                                16 + 8 * len(converted),
                                raw_perms,
                            )
                    if hit is not None:
                        perms, owner_usage, fixed = hit[0], hit[1], hit[2]
                    else:
                        perms = ()
                parent_path, slash, name = path.rpartition("/")
                if parent_path != last_parent_path:
                    # The child names counted for the previous parent.
                    kids.clen += grown
                    parent_usage[1] += grown
                    grown = 0
                    # "" for "/", else a node's path (a node, hence valid;
                    # "/" itself would make an empty component).
                    parent = None
                    if not parent_path:
                        parent = nodes.get("/")
                    elif parent_path[0] == "/" and parent_path != "/":
                        parent = nodes.get(parent_path)
                    if parent is not None:
                        last_parent_path = parent_path
                        children = parent.children
                        if not children:
                            children = parent.children = Children()
                        assert isinstance(children, Children)
                        children.listing = None  # names are added below
                        kids = children
                        parent_usage = usage.setdefault(parent.perms[0][0], [0, 0])
                    else:
                        last_parent_path = None
                iname = names_get(name)
                if iname is None and _NODE_NAME(name) is not None:
                    iname = names[name] = intern(name)
                if (
                    perms
                    and iname is not None
                    and slash  # (a path without "/" has the parent path "" of "/x")
                    and last_parent_path is not None
                ):
                    node = new_node(Node)
                    node.value = value
                    node.perms = perms
                    node.gen = gen
                    node.children = NO_CHILDREN
                    if nodes.setdefault(path, node) is node:
                        last_restored = node
                        kids[iname] = None
                        grown += len(iname) + 1
                        counted += 1
                        memory += fixed + len(value) + len(path)
                        continue
                # The record by record way, with its precise errors.
                pos = scan_from
                while run[pos][0] is not path:
                    pos += 1
                scan_from = pos + 1
                index = first + pos
                gen, slow_node = _restore_node_slowly(store, usage, path, raw_perms, value, gen)
                last_restored = slow_node
                if slow_node is None:
                    exact_usage = False
                index = first + len(run) - 1
            kids.clen += grown
            parent_usage[1] += grown
            grown = 0
            owner_usage[0] += counted
            owner_usage[1] += memory
            counted = memory = 0
            if record is _NODE_RUN or run:
                continue
            if cls is NodeData:
                assert isinstance(record, NodeData)
                key = (record.conn_id, record.tx_id)
                if _NODE_PATH(record.path) is None:
                    raise StateError(f"node path {record.path!r} is not valid")
                if key not in pending:
                    raise StateError(
                        f"node {record.path!r} of transaction {record.tx_id} of connection "
                        f"{record.conn_id} without an earlier TRANSACTION_DATA"
                    )
                access = record.access
                if access & ACCESS_FAILED:
                    failed.add(key)
                if record.perms:
                    pnode: Node | None = Node(record.value, store_perms(record.perms), 0)
                    written = bool(access & ACCESS_WRITTEN)
                else:
                    # Deleted in the transaction (access 0), or read while absent.
                    pnode = None
                    written = not access & (ACCESS_READ | ACCESS_WRITTEN)
                pending[key].append(
                    PendingNode(
                        record.path,
                        pnode,
                        read=bool(access & ACCESS_READ),
                        written=written,
                        changed=bool(access & ACCESS_CHANGED),
                        event=(
                            MATCH_SUBTREE
                            if access & ACCESS_EVENT_SUBTREE
                            else MATCH_EXACT
                            if access & ACCESS_EVENT_EXACT
                            else None
                        ),
                    )
                )
            elif cls is ConnectionData:
                assert isinstance(record, ConnectionData)
                if record.conn_id in conn_ids:
                    raise StateError(f"connection {record.conn_id} twice")
                sink.restore_connection(record)
                conn_ids.add(record.conn_id)
                out.connections += 1
            elif cls is WatchData or cls is WatchDataExtended:
                assert isinstance(record, (WatchData, WatchDataExtended))
                depth = -1
                if isinstance(record, WatchDataExtended) and record.depth != DEPTH_UNLIMITED:
                    depth = record.depth
                import_watch(store, record.conn_id, record.wpath, record.token.encode(), depth)
            elif cls is TransactionData:
                assert isinstance(record, TransactionData)
                if record.conn_id not in conn_ids:
                    raise StateError(f"transaction of unknown connection {record.conn_id}")
                key = (record.conn_id, record.tx_id)
                if key in pending:
                    raise StateError(
                        f"transaction {record.tx_id} of connection {record.conn_id} twice"
                    )
                pending[key] = []
            elif cls is GlobalData:
                assert isinstance(record, GlobalData)
                out.global_data = record
            elif cls is GlobalQuotaData:
                assert isinstance(record, GlobalQuotaData)
                table = store.config.quota
                kept.domain_quota = _set_quota(table, record.domain_quota)
                kept.global_quota = _set_quota(table, record.global_quota)
                # Domain records made so far (start-up) take the new defaults.
                for dom in store.domains.values():
                    dom.quota = table.copy()
            elif cls is DomainData:
                assert isinstance(record, DomainData)
                dom = domain_record(store, record.domid)
                if version >= 2:
                    dom.features = record.features & SUPPORTED_FEATURES
                unknown = _set_quota(dom.quota, record.quota)
                if unknown:
                    kept.domains[record.domid] = unknown
            elif cls is UnknownRecord:
                assert isinstance(record, UnknownRecord)
                kept.records.append(record)
            elif cls is End:
                saw_end = True
                break
        store.generation = gen
        if last_restored is not None:
            store.unobserved_run_ends_with(last_restored)
        out.records = index + 1
        out.nodes = node_count
        record = None
        if not saw_end:
            raise StateError("the stream ends without an END record")
        if ensure_base_tree(store):
            exact_usage = False
        for (conn_id, tx_id), nodes_of_tx in pending.items():
            # Streams from pyxenstored say which nodes fire at commit; a
            # transaction that wrote something always fires for something.
            known = any(p.event is not None for p in nodes_of_tx) or not any(
                p.written for p in nodes_of_tx
            )
            import_transaction(
                store,
                conn_id,
                tx_id,
                nodes_of_tx,
                events_known=known,
                failed=(conn_id, tx_id) in failed,
            )
            out.transactions += 1
        rebuild_counters(store, usage if exact_usage else None)
    except StreamError as exc:
        raise RestoreError(exc.expected, exc.record_index, exc.record_type, exc.offset) from None
    except RestoreError as exc:
        if exc.index is not None or record is None:
            raise
        # A sink's error: say which record it came from.
        raise RestoreError(exc.message, index, record_type(record)) from None
    except (StateError, ValueError, OSError) as exc:
        rtype = record_type(record) if record is not None else None
        raise RestoreError(str(exc), index if record is not None else None, rtype) from None
    out.problems = store.check() if verify else []
    if out.problems:
        shown = "; ".join(out.problems[:5])
        raise RestoreError(f"restored store fails its check: {shown}")
    return out
