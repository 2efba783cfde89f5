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

from ..wire import (
    DOMID_SELF,
    OK,
    PAYLOAD_MAX,
    TYPE_COUNT,
    MsgType,
    XsError,
    c_atoi,
    onearg,
    parse_domid,
    split_strings,
)
from . import control as ctl
from . import quota as q
from .base import (
    INTRODUCE_DOMAIN,
    RELEASE_DOMAIN,
    Event,
    Result,
    StoreConfig,
)
from .connection import Connection
from .domain import Domain, DomainHooks
from .features import feature_reply, parse_feature_value
from .node import Node, child_path
from .node_ops import NodeOps
from .perms import (
    intern_perms,
)
from .transaction import Transaction
from .watch import MATCH_NODEPTH

__all__ = ["Connection", "Event", "Result", "Store", "StoreConfig"]

ERROR = MsgType.ERROR

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


class Store(NodeOps):
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

    # --- watches -------------------------------------------------------------------

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
