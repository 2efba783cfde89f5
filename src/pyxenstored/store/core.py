"""The Store: one entry point from (connection, type, tx id, payload) to a reply.

Pure logic, no I/O.  :meth:`Store.handle` dispatches like C's
``process_message`` (digest 2.6) to one method per operation; every
operation raises ``wire.XsError`` for a protocol error, and ``handle``
turns it into an ERROR reply.  Watch events come back in the
:class:`Result`, addressed to connection ids.

Node operations work either on the committed tree (``tx is None``) or on a
:class:`~.transaction.Transaction` overlay; the same code path serves both
through :meth:`Store._read` and the ``_write_*`` helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from zlib import crc32

from ..wire import (
    DOMID_ANY,
    DOMID_SELF,
    FEATURE_DOMID_ANY,
    FEATURE_WATCHDEPTH,
    OK,
    PAYLOAD_MAX,
    TYPE_COUNT,
    MsgType,
    XsError,
    basename,
    c_atoi,
    onearg,
    parent_of,
    parse_domid,
    split_strings,
)
from . import control as ctl
from . import quota as q
from .base import (
    ANY_GENERATION,
    INTRODUCE_DOMAIN,
    RELEASE_DOMAIN,
    Event,
    Result,
    StoreBase,
    StoreConfig,
)
from .connection import Connection
from .domain import Domain, DomainHooks
from .features import feature_reply, parse_feature_value
from .node import Node, child_path
from .perms import (
    PERM_IGNORE,
    PERM_OWNER,
    PERM_READ,
    PERM_WRITE,
    Perms,
    intern_perms,
    parse_perm,
    perms_payload,
)
from .transaction import Transaction
from .watch import MATCH_DEPTH, MATCH_EXACT, MATCH_NODEPTH, MATCH_SUBTREE, Watch

__all__ = ["Connection", "Event", "Result", "Store", "StoreConfig"]

ERROR = MsgType.ERROR
# Reply types of the hottest operations as plain ints: an enum member costs
# an attribute lookup through the enum class on every request.
_READ = int(MsgType.READ)
_DIRECTORY = int(MsgType.DIRECTORY)
_GET_PERMS = int(MsgType.GET_PERMS)
_WRITE = int(MsgType.WRITE)

# Types only a privileged connection may send (digest 2.2).
PRIVILEGED_TYPES = frozenset(
    {
        MsgType.CONTROL,
        MsgType.INTRODUCE,
        MsgType.RELEASE,
        MsgType.IS_DOMAIN_INTRODUCED,
        MsgType.RESUME,
        MsgType.SET_TARGET,
        MsgType.SET_FEATURE,
        MsgType.GET_QUOTA,
        MsgType.SET_QUOTA,
    }
)
_TX_IGNORED = frozenset({MsgType.WATCH, MsgType.UNWATCH})


Handler = Callable[[Connection, "Transaction | None", bytes], Result]


class Store(StoreBase):
    """The Xenstore database and its protocol operations."""

    def __init__(
        self,
        config: StoreConfig | None = None,
        hooks: ctl.ControlHooks | None = None,
        domain_hooks: DomainHooks | None = None,
    ) -> None:
        super().__init__(config, hooks, domain_hooks)
        self._handlers: list[Handler | None] = [None] * TYPE_COUNT
        for msg_type, handler in (
            (MsgType.CONTROL, self.op_control),
            (MsgType.DIRECTORY, self.op_directory),
            (MsgType.READ, self.op_read),
            (MsgType.GET_PERMS, self.op_get_perms),
            (MsgType.WATCH, self.op_watch),
            (MsgType.UNWATCH, self.op_unwatch),
            (MsgType.TRANSACTION_START, self.op_transaction_start),
            (MsgType.TRANSACTION_END, self.op_transaction_end),
            (MsgType.INTRODUCE, self.op_introduce),
            (MsgType.RELEASE, self.op_release),
            (MsgType.GET_DOMAIN_PATH, self.op_get_domain_path),
            (MsgType.WRITE, self.op_write),
            (MsgType.MKDIR, self.op_mkdir),
            (MsgType.RM, self.op_rm),
            (MsgType.SET_PERMS, self.op_set_perms),
            (MsgType.IS_DOMAIN_INTRODUCED, self.op_is_domain_introduced),
            (MsgType.RESUME, self.op_resume),
            (MsgType.SET_TARGET, self.op_set_target),
            (MsgType.RESET_WATCHES, self.op_reset_watches),
            (MsgType.DIRECTORY_PART, self.op_directory_part),
            (MsgType.GET_FEATURE, self.op_get_feature),
            (MsgType.SET_FEATURE, self.op_set_feature),
            (MsgType.GET_QUOTA, self.op_get_quota),
            (MsgType.SET_QUOTA, self.op_set_quota),
        ):
            self._handlers[msg_type] = handler

    # --- connections -------------------------------------------------------------

    def connect(self, conn_id: int, domid: int, *, is_socket: bool) -> None:
        """Register a connection; socket ones act as ``store_domid`` (digest 6.1)."""
        if conn_id in self.conns:
            raise ValueError(f"connection {conn_id} already registered")
        if is_socket:
            domid = self.config.store_domid
        self._conn_seq += 1
        conn = Connection(
            conn_id, domid, is_socket, domid == self.config.priv_domid, self._conn_seq
        )
        if not is_socket:
            conn.domain = self._domain(domid)
        self.conns[conn_id] = conn

    def disconnect(self, conn_id: int) -> None:
        """Forget a connection with its watches and transactions."""
        conn = self.conns.pop(conn_id, None)
        if conn is None:
            return
        self._drop_watches(conn)
        self._drop_transactions(conn)

    def quota_for_conn(self, conn_id: int, name: str) -> int | None:
        """A connection's hard quota ``name`` (None: unlimited, as for privileged/socket)."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.limited is None:
            return None
        value = conn.limited.quota.hard(q.quota_index(name))
        return value or None

    def charge(self, conn_id: int, name: str, delta: int, *, check: bool = False) -> bool:
        """Server-side accounting of ``outstanding`` or ``memory`` (queued output).

        Adds ``delta`` to the connection's domain counter.  With ``check``, a
        positive charge that would reach the hard quota of an unprivileged
        domain is refused (returns False, nothing charged): C then drops the
        watch event or answers ENOMEM.  Socket connections are not charged.
        """
        index = q.quota_index(name)
        if index not in (q.OUTSTANDING, q.MEMORY):
            raise ValueError(f"the server does not charge {name!r}")
        conn = self.conns.get(conn_id)
        if conn is None or conn.domain is None:
            return True
        dom = conn.domain
        if (
            check
            and delta > 0
            and conn.limited is not None
            and q.exceeds(dom.quota.hard(index), dom.usage[index] + delta)
        ):
            return False
        dom.add(index, delta)
        dom.io_usage[index] += delta
        return True

    def domains_changed(self, shutdown: set[int], dead: set[int]) -> list[Event]:
        """What the hypervisor reported (C's ``do_check_domains``, digest 6.4).

        A newly shut-down introduced domain fires ``@releaseDomain/<domid>`` at
        once (once per shutdown until RESUME); a dead one is destroyed; one
        plain ``@releaseDomain`` follows when any domain newly shut down.
        """
        events: list[Event] = []
        notify = False
        for domid in sorted(shutdown | dead):
            dom = self.domains.get(domid)
            if dom is None:
                continue
            if not dom.introduced:
                if domid in dead:
                    del self.domains[domid]
                continue
            if domid in shutdown and not dom.shutdown:
                dom.shutdown = True
                self._fire_special(RELEASE_DOMAIN, domid, events, nodomid=False)
                notify = True
            if domid in dead:
                self.destroy_domain(domid, events)
                notify = False  # destroying fired the plain event already
        if notify:
            node = self.nodes.get(RELEASE_DOMAIN)
            if node is not None:
                self._fire(RELEASE_DOMAIN, MATCH_NODEPTH, node, None, events)
        return events

    # --- entry point -------------------------------------------------------------

    def handle(self, conn_id: int, msg_type: int, tx_id: int, payload: bytes) -> Result:
        """Process one request; never raises for bad input."""
        conn = self.conns.get(conn_id)
        if conn is None:
            return Result(ERROR, b"EINVAL\0")
        try:
            handler = self._handlers[msg_type] if 0 <= msg_type < TYPE_COUNT else None
            if handler is None:
                raise XsError("ENOSYS", f"type {msg_type}")
            if not conn.privileged and msg_type in PRIVILEGED_TYPES:
                raise XsError("EACCES", "privileged operation")
            tx = None
            if tx_id and msg_type not in _TX_IGNORED:
                tx = conn.transactions.get(tx_id)
                if tx is None:
                    raise XsError("ENOENT", f"no transaction {tx_id}")
            result = handler(conn, tx, payload)
        except XsError as err:
            return Result(ERROR, err.payload)
        if len(result.payload) > PAYLOAD_MAX:
            return Result(ERROR, b"E2BIG\0", result.events, result.events_before_reply)
        return result

    # --- node writes (committed or in a transaction) -----------------------------

    def _tx_written(self, tx: Transaction, path: str, node: Node) -> None:
        """A node copy changed inside a transaction: it gets a fresh generation, as in C."""
        tx.modified.add(path)
        self._stamp(node)

    def _modify(
        self, conn: Connection, tx: Transaction | None, path: str, node: Node, value: bytes
    ) -> None:
        """Give an existing node a new value."""
        if conn.limited is not None:
            self._check_node_size(conn, node.size() - len(node.value) + len(value))
            self._check_memory(conn, node.owner, len(value) - len(node.value))
        if tx is not None:
            node.value = value
            self._tx_written(tx, path, node)
            return
        # Same node, same owner, same permission count: only the value's
        # length changes what the owner is charged.
        grow = len(value) - len(node.value)
        node.value = value
        self._persist_stale(node)
        self._stamp(node)
        if grow:
            self._domain(node.perms[0][0]).add(q.MEMORY, grow)

    def _create(self, conn: Connection, tx: Transaction | None, path: str, value: bytes) -> None:
        """Create ``path`` and its missing ancestors (C's ``create_node``)."""
        missing = [path]
        parent_path = parent_of(path)
        parent = self._read(conn, tx, parent_path)
        while parent is None:
            missing.append(parent_path)
            parent_path = parent_of(parent_path)
            parent = self._read(conn, tx, parent_path)
        perms = parent.perms
        if not conn.privileged:
            perms = intern_perms(((conn.domid, perms[0][1]),) + perms[1:])
        count = len(missing)
        dom = conn.limited
        if dom is not None:
            # C checks each new node against the committed count only (not
            # what this request or transaction adds): the commit re-checks.
            if q.exceeds(dom.quota.hard(q.NODES), dom.usage[q.NODES] + 1):
                raise XsError("ENOSPC", "nodes quota")
            fixed = 16 + 8 * len(perms)
            self._check_node_size(conn, fixed + len(value))
            for child in missing[:-1]:
                self._check_node_size(conn, fixed + len(basename(child)) + 1)
            top = basename(missing[-1])
            self._check_node_size(conn, parent.size() + len(top) + 1)
            new_mem = sum(fixed + len(p) for p in missing) + len(value)
            new_mem += sum(len(basename(p)) + 1 for p in missing[:-1])
            self._check_memory(conn, conn.domid, new_mem)
            self._check_memory(conn, parent.owner, len(top) + 1)
        # Build bottom-up like C: the leaf first, the existing parent last.
        created: list[tuple[str, Node]] = []
        child_name: str | None = None
        for p in missing:
            node = Node(value if p == path else b"", perms, 0)
            if child_name is not None:
                node.add_child(child_name)
            created.append((p, node))
            child_name = basename(p)
        assert child_name is not None
        if tx is not None:
            for p, node in created:
                tx.nodes[p] = node
                self._tx_written(tx, p, node)
            parent.add_child(child_name)
            self._tx_written(tx, parent_path, parent)
            owner = perms[0][0]
            tx.node_delta[owner] = tx.node_delta.get(owner, 0) + count
            return
        for p, node in created:
            self._account_write(p, node, None)
        before = (parent.perms[0][0], parent.memory(parent_path))
        parent.add_child(child_name)
        self._persist_stale(parent)
        self._account_write(parent_path, parent, before)

    def _subtree_postorder(
        self, conn: Connection, tx: Transaction | None, path: str, node: Node
    ) -> list[tuple[str, Node]]:
        """``path`` and its descendants, children before parents, siblings in order."""
        out: list[tuple[str, Node]] = []
        stack: list[tuple[str, Node, list[str]]] = [(path, node, list(node.children))]
        while stack:
            p, n, pending = stack[-1]
            if pending:
                name = pending.pop(0)
                cp = child_path(p, name)
                cn = self._read(conn, tx, cp)
                if cn is not None:
                    stack.append((cp, cn, list(cn.children)))
            else:
                stack.pop()
                out.append((p, n))
        return out

    def _remove(
        self,
        conn: Connection | None,
        tx: Transaction | None,
        path: str,
        node: Node,
        events: list[Event],
    ) -> None:
        """Delete ``path`` with its subtree; events as in digest 4.2."""
        parent_path = parent_of(path)
        if conn is None:
            parent = self.nodes[parent_path]
            subtree = self._subtree_postorder(self._system_conn(), None, path, node)
        else:
            maybe_parent = self._read(conn, tx, parent_path)
            if maybe_parent is None:
                raise XsError("EINVAL", "parent missing")
            parent = maybe_parent
            subtree = self._subtree_postorder(conn, tx, path, node)
        for p, n in subtree:
            mode = MATCH_SUBTREE if p == path else MATCH_EXACT
            if tx is not None:
                tx.nodes[p] = None
                tx.modified.add(p)
                owner = n.perms[0][0]
                tx.node_delta[owner] = tx.node_delta.get(owner, 0) - 1
                tx.queue_event(p, mode)
            else:
                self._account_delete(p, n)
                self._fire(p, mode, n, None, events)
        name = basename(path)
        if tx is not None:
            if name not in parent.children:
                # The transaction's copy of the parent predates the child (created
                # outside since): C's delete_child fails so.  The commit is doomed.
                raise XsError("EIO", "child missing from the transaction's parent copy")
            parent.remove_child(name)
            self._tx_written(tx, parent_path, parent)
            return
        before = (parent.perms[0][0], parent.memory(parent_path))
        parent.remove_child(name)
        self._account_write(parent_path, parent, before)

    def _system_conn(self) -> Connection:
        return Connection(-1, self.config.priv_domid, True, True, 0)

    # --- watch events ---------------------------------------------------------------

    def _watch_permitted(
        self, conn: Connection, path: str, node: Node | None, old_perms: Perms | None
    ) -> bool:
        """C's ``watch_permitted`` (digest 4.4).

        Privileged watchers pass whenever the node can be found; a node gone
        by the time of firing (removed in a committed transaction) reaches
        nobody, as in C.
        """
        if conn.privileged and (node is not None or old_perms is not None or path in self.nodes):
            return True
        if old_perms is not None:
            gen = node.gen if node is not None else ANY_GENERATION
            if self._perm(conn, old_perms, gen) & PERM_READ:
                return True
        if node is None:
            node = self.nodes.get(path)
            if node is None:
                return False
        if self._perm(conn, node.perms, node.gen) & PERM_READ:
            return True
        parent = self.nodes.get(parent_of(path))
        return parent is not None and bool(self._perm(conn, parent.perms, parent.gen) & PERM_READ)

    def _fire(
        self,
        path: str,
        mode: int,
        node: Node | None,
        old_perms: Perms | None,
        events: list[Event],
        *,
        perm_path: str | None = None,
    ) -> None:
        """Add the events an change of ``path`` causes to ``events``."""
        if not self.watches.count:
            return
        matches = self.watches.matches(path, mode)
        if not matches:
            return
        permitted: dict[int, bool] = {}
        check_path = path if perm_path is None else perm_path
        limit = PAYLOAD_MAX - 2
        for w in matches:
            ok = permitted.get(w.conn_id)
            if ok is None:
                wc = self.conns[w.conn_id]
                # Even privileged watchers miss nodes gone by the time of firing (C).
                ok = self._watch_permitted(wc, check_path, node, old_perms)
                permitted[w.conn_id] = ok
            if ok:
                epath = w.event_path(path)
                if len(epath) + len(w.token) <= limit:  # longer events are dropped, as in C
                    events.append(Event(w.conn_id, epath, w.token))

    def _fire_special(
        self,
        name: str,
        domid: int,
        events: list[Event],
        *,
        nodomid: bool = True,
        withdomid: bool = True,
    ) -> None:
        """Events of special node ``name`` about ``domid`` (digest 4.3)."""
        node = self.nodes.get(name)
        if node is None:
            return
        if nodomid:
            self._fire(name, MATCH_NODEPTH, node, None, events)
        if withdomid:
            self._fire(f"{name}/{domid}", MATCH_DEPTH, node, None, events, perm_path=name)

    # --- READ / DIRECTORY / GET_PERMS ----------------------------------------------

    def op_read(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        node = self._quick_node(conn, tx, payload)
        if node is None:
            node = self._lookup(conn, tx, self._canon_arg(conn, payload), PERM_READ)
        return Result(_READ, node.value)

    def op_directory(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        node = self._quick_node(conn, tx, payload)
        if node is None:
            node = self._lookup(conn, tx, self._canon_arg(conn, payload), PERM_READ)
        return Result(_DIRECTORY, node.children_payload())

    def op_directory_part(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        if payload.count(b"\0") != 2:
            raise XsError("EINVAL", "DIRECTORY_PART needs path and offset")
        raw, offset_raw, _ = payload.split(b"\0")
        path = self._canon(conn, raw)
        node = self._lookup(conn, tx, path, PERM_READ)
        offset = c_atoi(offset_raw) & 0xFFFFFFFF  # C keeps it in an unsigned int
        self.observe_generation()
        # The client compares this token between the parts of one listing of one
        # node.  C's generation is unique per write; ours is shared by a run of
        # unobserved writes, so the path is mixed in to keep the tokens of two
        # nodes apart as C's are; the node's generation still changes it.
        gen = b"%d\0" % ((node.gen & 0xFFFFFFFF) << 32 | crc32(path.encode()))
        children = node.children_payload()
        if offset >= len(children):
            return Result(MsgType.DIRECTORY_PART, gen + b"\0")
        maxlen = PAYLOAD_MAX - len(gen) - 1
        total = len(children)
        length = 0
        # Whole names only, as long as they fit (C's send_directory_part).
        while True:
            start = offset + length
            name_len = children.find(b"\0", start) - start
            if length + name_len >= maxlen:
                break
            length += name_len + 1
            if offset + length == total:
                break
        end = offset + length
        out = gen + children[offset:end]
        if end == total:
            out += b"\0"
        return Result(MsgType.DIRECTORY_PART, out)

    def op_get_perms(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        node = self._quick_node(conn, tx, payload)
        if node is None:
            path = self._canon_arg(conn, payload, allow_special=True)
            node = self._lookup(conn, tx, path, PERM_READ)
        return Result(_GET_PERMS, perms_payload(node.perms))

    # --- WRITE / MKDIR / RM / SET_PERMS ---------------------------------------------

    def op_write(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        nul = payload.find(b"\0")
        if nul < 0:
            raise XsError("EINVAL", "WRITE without path")
        path = self._canon(conn, payload[:nul])
        value = payload[nul + 1 :]
        node: Node | None
        try:
            node = self._lookup(conn, tx, path, PERM_WRITE)
        except XsError as err:
            if err.name != "ENOENT":
                raise
            self._create(conn, tx, path, value)
            node = None
        else:
            self._modify(conn, tx, path, node, value)
        events: list[Event] = []
        if tx is not None:
            tx.queue_event(path, MATCH_SUBTREE)
        elif self.watches.count:
            self._fire(path, MATCH_SUBTREE, node, None, events)
        return Result(_WRITE, OK, events, bool(events))

    def op_mkdir(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        path = self._canon(conn, onearg(payload))
        events: list[Event] = []
        try:
            self._lookup(conn, tx, path, PERM_WRITE)
        except XsError as err:
            if err.name != "ENOENT":
                raise
            self._create(conn, tx, path, b"")
            if tx is not None:
                tx.queue_event(path, MATCH_SUBTREE)
            else:
                self._fire(path, MATCH_SUBTREE, None, None, events)
        return Result(MsgType.MKDIR, OK, events, bool(events))

    def op_rm(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        path = self._canon(conn, onearg(payload))
        try:
            node = self._lookup(conn, tx, path, PERM_WRITE)
        except XsError as err:
            if err.name != "ENOENT":
                raise
            # Removing what is not there is fine when its parent exists.
            if self._read(conn, tx, parent_of(path)) is not None:
                return Result(MsgType.RM, OK)
            raise
        if path == "/":
            raise XsError("EINVAL", "cannot remove /")
        events: list[Event] = []
        self._remove(conn, tx, path, node, events)
        return Result(MsgType.RM, OK, events, bool(events))

    def _parse_perms(self, conn: Connection, strings: list[bytes]) -> Perms:
        """Parse SET_PERMS entries and flag stale ones (C's ``domain_alloc_permrefs``)."""
        out: list[tuple[int, int]] = []
        for raw in strings:
            out.append(parse_perm(raw))
        features = conn.features
        for i, (domid, bits) in enumerate(out):
            if domid == DOMID_ANY:
                if not features & FEATURE_DOMID_ANY:
                    out[i] = (domid, bits | PERM_IGNORE)
            elif domid not in self.domains:
                if self.domain_exists(domid):
                    self._domain(domid)
                else:
                    out[i] = (domid, bits | PERM_IGNORE)
        return intern_perms(tuple(out))

    def op_set_perms(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        count = payload.count(b"\0")
        if count < 2:
            raise XsError("EINVAL", "SET_PERMS needs a permission")
        nperms = count - 1
        dom = conn.limited
        if dom is not None:
            if q.exceeds(dom.quota.hard(q.NODE_PERMISSIONS), nperms):
                raise XsError("ENOSPC", "node-permissions quota")
            dom.note_max(q.NODE_PERMISSIONS, nperms)
        strings = split_strings(payload)
        perms = self._parse_perms(conn, strings[1 : 1 + nperms])
        if perms[0][1] & PERM_IGNORE:
            raise XsError("ENOENT", "owner does not exist")
        path = self._canon(conn, strings[0], allow_special=True)
        node = self._lookup(conn, tx, path, PERM_WRITE | PERM_OWNER)
        if not conn.privileged and perms[0][0] != node.perms[0][0]:
            raise XsError("EPERM", "only privileged callers change the owner")
        if dom is not None:
            new_size = node.size() + 8 * (len(perms) - len(node.perms))
            self._check_node_size(conn, new_size)
            self._check_memory(conn, perms[0][0], 8 * (len(perms) - len(node.perms)))
        old_perms = node.perms
        events: list[Event] = []
        if tx is not None:
            old_owner, new_owner = old_perms[0][0], perms[0][0]
            if old_owner != new_owner:
                tx.node_delta[old_owner] = tx.node_delta.get(old_owner, 0) - 1
                tx.node_delta[new_owner] = tx.node_delta.get(new_owner, 0) + 1
            node.perms = perms
            self._tx_written(tx, path, node)
            tx.queue_event(path, MATCH_SUBTREE)
        else:
            before = (old_perms[0][0], node.memory(path))
            node.perms = perms
            self._persist_stale(node)
            self._account_write(path, node, before)
            self._fire(path, MATCH_SUBTREE, node, old_perms, events)
        return Result(MsgType.SET_PERMS, OK, events, bool(events))

    # --- watches -------------------------------------------------------------------

    def op_watch(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        depth = -1
        if len(parts) == 3 and conn.features & FEATURE_WATCHDEPTH:
            depth = c_atoi(parts[2])
            if depth < 0:
                raise XsError("EINVAL", "negative watch depth")
        elif len(parts) != 2:
            raise XsError("EINVAL", "WATCH needs path and token")
        raw, token = parts[0], parts[1]
        relative = not raw.startswith((b"/", b"@"))
        path = self._canon(conn, raw, allow_special=True)
        if (path, token) in conn.watches:
            raise XsError("EEXIST", "watch exists")
        dom = conn.domain
        if dom is not None:
            if conn.limited is not None and q.exceeds(
                dom.quota.hard(q.WATCHES), dom.usage[q.WATCHES] + 1
            ):
                raise XsError("ENOSPC", "watches quota")
            self._check_memory(conn, conn.domid, len(path) + len(token))
        self._watch_seq += 1
        prefix = len(f"/local/domain/{conn.domid}/") if relative else 0
        watch = Watch(conn.conn_id, conn.seq, self._watch_seq, path, token, depth, prefix)
        conn.watches[(path, token)] = watch
        self.watches.add(watch)
        if dom is not None:
            dom.add(q.WATCHES, 1)
            dom.add(q.MEMORY, len(path) + len(token))
        # The initial event follows the OK and is not permission checked.
        return Result(MsgType.WATCH, OK, [Event(conn.conn_id, watch.event_path(path), token)])

    def _unregister_watch(self, conn: Connection, watch: Watch) -> None:
        del conn.watches[(watch.path, watch.token)]
        self.watches.remove(watch)
        if conn.domain is not None:
            conn.domain.add(q.WATCHES, -1)
            conn.domain.add(q.MEMORY, -(len(watch.path) + len(watch.token)))

    def op_unwatch(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if len(parts) != 2:
            raise XsError("EINVAL", "UNWATCH needs path and token")
        path = self._canon(conn, parts[0], allow_special=True)
        watch = conn.watches.get((path, parts[1]))
        if watch is None:
            raise XsError("ENOENT", "no such watch")
        self._unregister_watch(conn, watch)
        return Result(MsgType.UNWATCH, OK)

    def _drop_watches(self, conn: Connection) -> None:
        for watch in list(conn.watches.values()):
            self._unregister_watch(conn, watch)

    def _drop_transactions(self, conn: Connection) -> None:
        if conn.domain is not None and conn.transactions:
            conn.domain.add(q.TRANSACTIONS, -len(conn.transactions))
        conn.transactions.clear()

    def op_reset_watches(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        self._drop_watches(conn)
        self._drop_transactions(conn)
        return Result(MsgType.RESET_WATCHES, OK)

    # --- transactions ----------------------------------------------------------------

    def op_transaction_start(
        self, conn: Connection, tx: Transaction | None, payload: bytes
    ) -> Result:
        if tx is not None:
            raise XsError("EBUSY", "no nested transactions")
        dom = conn.domain
        if (
            conn.limited is not None
            and dom is not None
            and q.exceeds(dom.quota.hard(q.TRANSACTIONS), dom.usage[q.TRANSACTIONS] + 1)
        ):
            raise XsError("ENOSPC", "transactions quota")
        tx_id = conn.next_tx_id
        while tx_id == 0 or tx_id in conn.transactions:
            tx_id = (tx_id + 1) & 0xFFFFFFFF
        conn.next_tx_id = (tx_id + 1) & 0xFFFFFFFF
        if not conn.transactions:
            conn.busy_since = self.config.clock()
        self.observe_generation()
        self.generation += 1
        conn.transactions[tx_id] = Transaction(tx_id, conn.conn_id, self.generation)
        if dom is not None:
            dom.add(q.TRANSACTIONS, 1)
        return Result(MsgType.TRANSACTION_START, b"%d\0" % tx_id)

    def op_transaction_end(
        self, conn: Connection, tx: Transaction | None, payload: bytes
    ) -> Result:
        arg = onearg(payload)
        if arg not in (b"T", b"F"):
            raise XsError("EINVAL", "TRANSACTION_END takes T or F")
        if tx is None:
            raise XsError("ENOENT", "no transaction")
        del conn.transactions[tx.tx_id]
        if conn.domain is not None:
            conn.domain.add(q.TRANSACTIONS, -1)
        if arg == b"F":
            return Result(MsgType.TRANSACTION_END, OK)
        events = self._commit(conn, tx)
        return Result(MsgType.TRANSACTION_END, OK, events, bool(events))

    def _commit(self, conn: Connection, tx: Transaction) -> list[Event]:
        """Finalize a transaction (digest 5.2)."""
        if tx.failed:
            raise XsError("ENOMEM", "transaction failed earlier")
        if conn.limited is not None:
            for domid, delta in tx.node_delta.items():
                if delta > 0:
                    dom = self._domain(domid)
                    if q.exceeds(dom.quota.hard(q.NODES), dom.usage[q.NODES] + delta):
                        raise XsError("ENOSPC", "nodes quota at commit")
        if tx.conflicts(self.nodes):
            raise XsError("EAGAIN", "transaction conflict")
        committed = self.nodes
        for path, node in tx.nodes.items():
            if path not in tx.modified:
                continue
            old = committed.get(path)
            if node is None:
                if old is not None:
                    self._account_delete(path, old)
                continue
            before = None if old is None else (old.perms[0][0], old.memory(path))
            self._persist_stale(node)
            self._account_write(path, node, before)
        events: list[Event] = []
        if self.watches.count:
            for path in tx.nodes:
                mode = tx.events.get(path)
                if mode is not None:
                    # C checks the watcher against the permissions the node had
                    # when the transaction first saw it, or re-reads the node.
                    self._fire(path, mode, None, tx.first_perms.get(path), events)
        return events

    # --- domains ----------------------------------------------------------------------

    def op_get_domain_path(
        self, conn: Connection, tx: Transaction | None, payload: bytes
    ) -> Result:
        domid = parse_domid(onearg(payload))
        return Result(MsgType.GET_DOMAIN_PATH, b"/local/domain/%d\0" % domid)

    def op_is_domain_introduced(
        self, conn: Connection, tx: Transaction | None, payload: bytes
    ) -> Result:
        domid = parse_domid(onearg(payload))
        if domid == DOMID_SELF:
            return Result(MsgType.IS_DOMAIN_INTRODUCED, b"T\0")
        dom = self.domains.get(domid)
        introduced = dom is not None and dom.introduced
        return Result(MsgType.IS_DOMAIN_INTRODUCED, b"T\0" if introduced else b"F\0")

    def _connected_domain(self, domid: int) -> Domain:
        dom = self.domains.get(domid)
        if dom is None or not dom.introduced:
            raise XsError("ENOENT", f"domain {domid} not introduced")
        return dom

    def _onearg_domain(self, payload: bytes) -> Domain:
        domid = parse_domid(onearg(payload))
        if domid in (self.config.store_domid, self.config.priv_domid):
            raise XsError("EINVAL", "not for the store or privileged domain")
        return self._connected_domain(domid)

    def _reset_domain_connections(self, domid: int) -> None:
        for conn in self.conns.values():
            if conn.domid == domid and not conn.is_socket:
                self._drop_watches(conn)
                self._drop_transactions(conn)

    def op_introduce(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if len(parts) < 3:
            raise XsError("EINVAL", "INTRODUCE needs domid, gfn, evtchn")
        domid = parse_domid(parts[0])
        evtchn = c_atoi(parts[2])
        if evtchn <= 0:
            raise XsError("EINVAL", "bad event channel")
        if self.domain_hooks is not None:
            self.domain_hooks.introduce(domid, c_atoi(parts[1]), evtchn)
        dom = self._domain(domid)
        events: list[Event] = []
        if not dom.introduced:
            dom.introduced = True
            if domid != self.config.priv_domid:
                self._fire_special(INTRODUCE_DOMAIN, domid, events)
        self._reset_domain_connections(domid)
        return Result(MsgType.INTRODUCE, OK, events, bool(events))

    def op_release(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        dom = self._onearg_domain(payload)
        events: list[Event] = []
        self.destroy_domain(dom.domid, events)
        if self.domain_hooks is not None:
            self.domain_hooks.release(dom.domid)
        return Result(MsgType.RELEASE, OK, events, bool(events))

    def destroy_domain(self, domid: int, events: list[Event]) -> None:
        """A domain is gone (RELEASE or death): clean the tree, fire @releaseDomain."""
        dom = self.domains.get(domid)
        if dom is None:
            return
        # Its own watches go first, so its node removals do not notify it.
        self._reset_domain_connections(domid)
        self._remove_domain_from_tree(domid, events)
        for i in range(q.QUOTA_COUNT):
            self._retired_max[i] = max(self._retired_max[i], dom.maxima[i])
        del self.domains[domid]
        if dom.introduced:
            self._fire_special(RELEASE_DOMAIN, domid, events)
        # Connections that remain (the server closes them) get a fresh record.
        for conn in self.conns.values():
            if conn.domid == domid and not conn.is_socket:
                conn.domain = self._domain(domid)

    def _remove_domain_from_tree(self, domid: int, events: list[Event]) -> None:
        """Digest 3.4: owned nodes go (or go to priv_domid with -K), entries go.

        Walks the tree depth first from ``/`` like C, then the special nodes.
        """
        stack = ["/"]
        while stack:
            path = stack.pop()
            node = self.nodes.get(path)
            if node is None:
                continue
            if self._orphan_node(domid, path, node, events):
                stack.extend(child_path(path, name) for name in reversed(node.children))
        for path in (RELEASE_DOMAIN, INTRODUCE_DOMAIN):
            node = self.nodes.get(path)
            if node is not None:
                self._orphan_node(domid, path, node, events, removable=False)

    def _orphan_node(
        self, domid: int, path: str, node: Node, events: list[Event], removable: bool = True
    ) -> bool:
        """Clean one node of a dead domain; False when it was removed with its subtree."""
        perms = node.perms
        if perms[0][0] == domid:
            if removable and path != "/" and not self.config.keep_orphans:
                self._remove(None, None, path, node, events)
                return False
            perms = ((self.config.priv_domid, perms[0][1]),) + perms[1:]
        stripped = (perms[0],) + tuple(e for e in perms[1:] if e[0] != domid)
        if stripped != node.perms:
            before = (node.perms[0][0], node.memory(path))
            node.perms = intern_perms(stripped)
            self._account_write(path, node, before)
        return True

    def op_resume(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        self._onearg_domain(payload).shutdown = False
        return Result(MsgType.RESUME, OK)

    def op_set_target(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if len(parts) < 2:
            raise XsError("EINVAL", "SET_TARGET needs two domids")
        domid = parse_domid(parts[0])
        tdomid = parse_domid(parts[1])
        dom = self._connected_domain(domid)
        self._connected_domain(tdomid)
        dom.target = tdomid
        return Result(MsgType.SET_TARGET, OK)

    # --- features ------------------------------------------------------------------

    def op_get_feature(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if not parts:
            return Result(MsgType.GET_FEATURE, feature_reply(conn.features))
        if not conn.privileged:
            raise XsError("EACCES", "GET_FEATURE with domid")
        if len(parts) > 1:
            raise XsError("EINVAL", "GET_FEATURE takes one domid")
        dom = self._existing_domain(parse_domid(parts[0]))
        return Result(MsgType.GET_FEATURE, feature_reply(dom.features))

    def op_set_feature(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if len(parts) != 2:
            raise XsError("EINVAL", "SET_FEATURE needs domid and value")
        domid = parse_domid(parts[0])
        dom = self._existing_domain(domid)
        if dom.introduced:
            raise XsError("EBUSY", "domain already introduced")
        dom.features = parse_feature_value(parts[1])
        return Result(MsgType.SET_FEATURE, OK)

    # --- quota -----------------------------------------------------------------------

    def op_get_quota(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if len(parts) > 2:
            raise XsError("EINVAL", "GET_QUOTA takes at most two arguments")
        if not parts:
            return Result(
                MsgType.GET_QUOTA, " ".join(self.config.quota.names()).encode("ascii") + b"\0"
            )
        table = self.config.quota
        if len(parts) == 2:
            table = self._existing_domain(parse_domid(parts[0])).quota
        index, kind = q.parse_quota_name(table, parts[-1].decode("latin-1"))
        return Result(MsgType.GET_QUOTA, b"%d\0" % table.get(index, kind))

    def op_set_quota(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if not 2 <= len(parts) <= 3:
            raise XsError("EINVAL", "SET_QUOTA takes two or three arguments")
        table = self.config.quota
        if len(parts) == 3:
            table = self._existing_domain(parse_domid(parts[0])).quota
        index, kind = q.parse_quota_name(table, parts[-2].decode("latin-1"))
        value = c_atoi(parts[-1]) & 0xFFFFFFFF
        if value == q.DISABLED:
            raise XsError("EINVAL", "quota value out of range")
        table.set(index, kind, value)
        return Result(MsgType.SET_QUOTA, OK)

    # --- CONTROL ---------------------------------------------------------------------

    def op_control(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        command, args = ctl.split_control(payload)
        return Result(MsgType.CONTROL, ctl.run_control(self, command, args))

    def global_maxima(self) -> list[int]:
        """Per-quota maximum seen over unprivileged domains (``quota max``)."""
        out = list(self._retired_max)
        for dom in self.domains.values():
            if dom.domid == self.config.priv_domid:
                continue
            for i, value in enumerate(dom.maxima):
                if value > out[i]:
                    out[i] = value
        return out

    def _reset_maxima(self) -> None:
        self._retired_max = [0] * q.QUOTA_COUNT
        for dom in self.domains.values():
            dom.maxima = list(dom.usage)

    # --- consistency check -------------------------------------------------------

    def recount(self) -> dict[int, list[int]]:
        """Usage counters recomputed from scratch (see ``control.recount``)."""
        return ctl.recount(self)

    def check(self) -> list[str]:
        """Check the tree and the counters; returns the problems found (empty: fine)."""
        return ctl.check_store(self)
