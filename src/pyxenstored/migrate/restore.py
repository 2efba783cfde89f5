"""Migration-stream records -> store state (the new daemon's side of live update).

:func:`restore_state` reads records one at a time into a fresh
:class:`~pyxenstored.store.Store`.  Connections are the server's business:
each CONNECTION_DATA goes to a :class:`ConnectionSink`, which must register
the connection with the store (``store.connect``) before its watches arrive.
Open transactions are put back once the committed tree is complete, then
the counters are rebuilt and the store checks itself.

Any problem is a :class:`RestoreError` naming the record (number, type) and
its byte offset when known; the store is then unusable.

Accepted: what pyxenstored writes, and what the C daemon writes (4.17's
``xenstored_control.c:lu_dump_state``, HEAD's ``lu.c:lu_dump_state``; see
docs/stream.md): ``@`` nodes before or after the tree, DOMAIN_DATA
for domains nothing else names, WATCH_DATA_EXTENDED in any layout the
reader recognises.  Unknown quota names and unknown record types are kept in
:class:`~.dump.Preserved` for the next dump; pyxenstored's own transaction
marks (:mod:`..stream.txmarks`) are read back into the transactions.

As C's ``lu_read_state``, one function per record type (:class:`_Restore`);
committed nodes, the bulk of every stream, come in runs from the reader
and take an inlined path.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from sys import intern
from typing import Any, BinaryIO, Protocol

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
from ..stream.txmarks import (
    NODE_CHANGED,
    NODE_EVENT_EXACT,
    NODE_EVENT_SUBTREE,
    TransactionMarks,
    is_marks_name,
    parse_marks,
)
from .dump import Preserved

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
        return _Restore(store, sink, version).run(records, verify)
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


def pending_node(path: str, perms: Perms, value: bytes, access: int, mark: int = 0) -> PendingNode:
    """A pending NODE_DATA as the store takes it back.

    No permissions: deleted in the transaction (access 0), or read while it
    did not exist (access read).  ``mark`` is the node's transaction mark
    (:mod:`..stream.txmarks`), 0 when the stream has none.
    """
    if perms:
        node: Node | None = Node(value, perms, 0)
        written = bool(access & ACCESS_WRITTEN)
    else:
        node = None
        written = not access & (ACCESS_READ | ACCESS_WRITTEN)
    event = (
        MATCH_SUBTREE
        if mark & NODE_EVENT_SUBTREE
        else MATCH_EXACT
        if mark & NODE_EVENT_EXACT
        else None
    )
    return PendingNode(
        path,
        node,
        read=bool(access & ACCESS_READ),
        written=written,
        changed=bool(mark & NODE_CHANGED),
        event=event,
    )


def marks_of(
    records: list[NodeData], marks: TransactionMarks | None, conn_id: int, tx_id: int
) -> tuple[list[int], bool]:
    """The node marks of a transaction's pending records, and whether its events are known.

    Without marks (a stream from another implementation) the store works the
    events out itself, unless the transaction wrote nothing.
    """
    if marks is None:
        written = any(
            r.access & ACCESS_WRITTEN or not r.perms and not r.access & ACCESS_READ for r in records
        )
        return [0] * len(records), not written
    if len(marks.nodes) != len(records):
        raise StateError(
            f"transaction {tx_id} of connection {conn_id}: {len(marks.nodes)} node marks "
            f"for {len(records)} pending nodes"
        )
    return list(marks.nodes), True


class _Restore:
    """One restore: the store being filled, what waits for END, the bulk path's caches."""

    def __init__(self, store: Store, sink: ConnectionSink, version: int) -> None:
        self.store = store
        self.nodes = store.nodes
        self.sink = sink
        self.version = version
        self.out = Restored()
        self.kept = self.out.preserved
        # Pending transactions: their records and marks, put back after END.
        self.pending: dict[tuple[int, int], list[NodeData]] = {}
        self.marks: dict[tuple[int, int], TransactionMarks] = {}
        self.conn_ids: set[int] = set()
        # The record being restored and its number (for errors).
        self.index = -1
        self.record: Record | None = None
        self.saw_end = False
        # Quota usage of the committed tree, counted while importing:
        # owner -> [nodes, memory].  C's node memory: 16 + 8 per permission +
        # value + path + the child-name list (charged to the parent's owner).
        self.usage: dict[int, list[int]] = {}
        self.exact_usage = True
        self.gen = 0
        self.last_restored: Node | None = None
        self.node_count = 0
        # The bulk path's caches, kept from one run to the next (see _node_run).
        self.perms_by_id: dict[int, tuple[Perms, list[int], int, tuple[NodePerm, ...]]] = {}
        self.last_parent_path: str | None = None
        self.kids = Children()
        self.parent_usage: list[int] = [0, 0]
        self.last_raw: tuple[NodePerm, ...] | None = None
        self.perms: Perms = ()
        self.owner_usage: list[int] = [0, 0]
        self.fixed = 0
        self.names: dict[str, str] = {}
        self.handlers: dict[type, Callable[[Any], None]] = {
            GlobalData: self.global_data,
            ConnectionData: self.connection_data,
            WatchData: self.watch_data,
            WatchDataExtended: self.watch_data,
            TransactionData: self.transaction_data,
            NodeData: self.node_data,
            GlobalQuotaData: self.global_quota_data,
            DomainData: self.domain_data,
            UnknownRecord: self.unknown_record,
            End: self.end,
        }

    def run(self, records: Iterable[Record], verify: bool) -> Restored:
        store = self.store
        clear_tree(store)
        # Restored nodes are a run of writes nobody has observed yet: they share
        # one generation (no int per node), see Store.observe_generation.
        store.observe_generation()
        self.gen = store.generation + 1
        try:
            self._records(records)
            self._finish()
        except StreamError as exc:
            raise RestoreError(
                exc.expected, exc.record_index, exc.record_type, exc.offset
            ) from None
        except RestoreError as exc:
            if exc.index is not None or self.record is None:
                raise
            # A sink's error: say which record it came from.
            raise RestoreError(exc.message, self.index, record_type(self.record)) from None
        except (StateError, ValueError, OSError) as exc:
            record = self.record
            rtype = record_type(record) if record is not None else None
            raise RestoreError(
                str(exc), self.index if record is not None else None, rtype
            ) from None
        out = self.out
        out.problems = store.check() if verify else []
        if out.problems:
            shown = "; ".join(out.problems[:5])
            raise RestoreError(f"restored store fails its check: {shown}")
        return out

    def _records(self, records: Iterable[Record]) -> None:
        source: Iterable[Record | list[CommittedNode]] = (
            records.iter_node_runs() if isinstance(records, StreamReader) else records
        )
        store = self.store
        handlers = self.handlers
        for item in source:
            cls = item.__class__
            if cls is list:
                # A run of committed nodes straight from the reader.
                assert isinstance(item, list)
                self.record = _NODE_RUN
                self._node_run(item, self.index + 1)
                continue
            assert not isinstance(item, list)
            self.index += 1
            self.record = item
            if cls is WatchData:
                # Many, each after its connection: first after the node runs.
                assert isinstance(item, WatchData)
                import_watch(store, item.conn_id, item.wpath, item.token.encode(), -1)
                continue
            handler = handlers.get(cls)
            if handler is None:
                raise StateError(f"not a stream record: {item!r}")
            handler(item)
            if self.saw_end:
                break

    def _finish(self) -> None:
        """After END: generations, base tree, transactions, counters."""
        store = self.store
        out = self.out
        store.generation = self.gen
        if self.last_restored is not None:
            store.unobserved_run_ends_with(self.last_restored)
        out.records = self.index + 1
        out.nodes = self.node_count
        self.record = None
        if not self.saw_end:
            raise StateError("the stream ends without an END record")
        if ensure_base_tree(store):
            self.exact_usage = False
        for (conn_id, tx_id), records in self.pending.items():
            marks = self.marks.pop((conn_id, tx_id), None)
            node_marks, events_known = marks_of(records, marks, conn_id, tx_id)
            pending = [
                pending_node(r.path, store_perms(r.perms), r.value, r.access, m)
                for r, m in zip(records, node_marks, strict=True)
            ]
            import_transaction(
                store,
                conn_id,
                tx_id,
                pending,
                events_known=events_known,
                failed=marks is not None and marks.failed,
            )
            out.transactions += 1
        if self.marks:
            conn_id, tx_id = next(iter(self.marks))
            raise StateError(
                f"transaction marks for transaction {tx_id} of connection {conn_id}, "
                "which the stream does not hold"
            )
        rebuild_counters(store, self.usage if self.exact_usage else None)

    # --- one function per record type ---------------------------------------------

    def global_data(self, r: GlobalData) -> None:
        self.out.global_data = r

    def connection_data(self, r: ConnectionData) -> None:
        if r.conn_id in self.conn_ids:
            raise StateError(f"connection {r.conn_id} twice")
        self.sink.restore_connection(r)
        self.conn_ids.add(r.conn_id)
        self.out.connections += 1

    def watch_data(self, r: WatchData | WatchDataExtended) -> None:
        depth = -1
        if isinstance(r, WatchDataExtended) and r.depth != DEPTH_UNLIMITED:
            depth = r.depth
        import_watch(self.store, r.conn_id, r.wpath, r.token.encode(), depth)

    def transaction_data(self, r: TransactionData) -> None:
        if r.conn_id not in self.conn_ids:
            raise StateError(f"transaction of unknown connection {r.conn_id}")
        key = (r.conn_id, r.tx_id)
        if key in self.pending:
            raise StateError(f"transaction {r.tx_id} of connection {r.conn_id} twice")
        self.pending[key] = []

    def node_data(self, r: NodeData) -> None:
        if r.conn_id == 0:
            self._node_run([(r.path, r.perms, r.value)], self.index)
            return
        key = (r.conn_id, r.tx_id)
        if _NODE_PATH(r.path) is None:
            raise StateError(f"node path {r.path!r} is not valid")
        records = self.pending.get(key)
        if records is None:
            raise StateError(
                f"node {r.path!r} of transaction {r.tx_id} of connection "
                f"{r.conn_id} without an earlier TRANSACTION_DATA"
            )
        records.append(r)

    def global_quota_data(self, r: GlobalQuotaData) -> None:
        table = self.store.config.quota
        self.kept.domain_quota = _set_quota(table, r.domain_quota)
        self.kept.global_quota = _set_quota(table, r.global_quota)
        # Domain records made so far (start-up) take the new defaults.
        for dom in self.store.domains.values():
            dom.quota = table.copy()

    def domain_data(self, r: DomainData) -> None:
        dom = domain_record(self.store, r.domid)
        if self.version >= 2:
            dom.features = r.features & SUPPORTED_FEATURES
        quota = []
        for v in r.quota:
            if is_marks_name(v.name):
                marks = parse_marks(v)
                key = (marks.conn_id, marks.tx_id)
                if key in self.marks:
                    raise StateError(
                        f"transaction marks for transaction {marks.tx_id} of connection "
                        f"{marks.conn_id} twice"
                    )
                self.marks[key] = marks
            else:
                quota.append(v)
        unknown = _set_quota(dom.quota, quota)
        if unknown:
            self.kept.domains[r.domid] = unknown

    def unknown_record(self, r: UnknownRecord) -> None:
        self.kept.records.append(r)

    def end(self, r: End) -> None:
        self.saw_end = True

    # --- committed nodes in bulk ----------------------------------------------------

    def _node_run(self, run: list[CommittedNode], first: int) -> None:
        """Committed nodes ``(path, perms, value)``; ``first`` is the first one's record number.

        Inline for the bulk of the stream (see store.state.import_node): a
        node whose parent is known, under a valid name, with permissions,
        not there yet.  Anything else (``/``, ``@`` nodes, errors) goes
        through :func:`_restore_node_slowly`, record by record.

        One piece, with its state in locals: this loop is most of a
        restore's time (a function call per node would add about a tenth).
        The caches it keeps from one run to the next live on ``self``.
        """
        nodes = self.nodes
        usage = self.usage
        names = self.names
        names_get = names.get
        perms_by_id = self.perms_by_id
        new_node = Node.__new__
        gen = self.gen
        last_restored = self.last_restored
        # The permissions of the last node, their store form (() for none: the
        # slow path refuses them), their owner's usage, the fixed part of a
        # node's memory, and the nodes and memory counted for them not yet added.
        last_raw = self.last_raw
        perms = self.perms
        owner_usage = self.owner_usage
        fixed = self.fixed
        counted = memory = 0
        # Siblings follow each other: their parent is looked up once per run of
        # them, by its path ("" for "/"; None: no parent known, equal to none).
        last_parent_path = self.last_parent_path
        kids = self.kids
        parent_usage = self.parent_usage
        grown = 0  # length of the child names added to ``kids`` and not yet counted
        self.index = first + len(run) - 1
        self.node_count += len(run)
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
                        # Permission tuples are shared between records (the reader
                        # memoises them): the entry keeps the tuple alive, so its
                        # id cannot be reused meanwhile.
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
            # Node names seen valid, interned (one lookup validates and interns).
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
            self.index = first + pos
            gen, last_restored = _restore_node_slowly(
                self.store, usage, path, raw_perms, value, gen
            )
            if last_restored is None:
                self.exact_usage = False
            self.index = first + len(run) - 1
        kids.clen += grown
        parent_usage[1] += grown
        owner_usage[0] += counted
        owner_usage[1] += memory
        self.gen = gen
        self.last_restored = last_restored
        self.last_raw = last_raw
        self.perms = perms
        self.owner_usage = owner_usage
        self.fixed = fixed
        self.last_parent_path = last_parent_path
        self.kids = kids
        self.parent_usage = parent_usage
