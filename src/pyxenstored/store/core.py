"""The Store: one entry point from (connection, type, tx id, payload) to a reply.

Pure logic, no I/O.  :meth:`Store.handle` dispatches like C's
``core.c:process_message`` to one method per operation; every
operation raises ``wire.XsError`` for a protocol error, and ``handle``
turns it into an ERROR reply.  Watch events come back in the
:class:`Result`, addressed to connection ids.

The operations come from one mixin per group over
:class:`~.base.StoreBase` (the shared state, node access and accounting):

* :mod:`.node_ops` (with :mod:`.node_write`) — READ, WRITE, MKDIR, RM,
  DIRECTORY, DIRECTORY_PART, GET_PERMS, SET_PERMS;
* :mod:`.watch_ops` — WATCH, UNWATCH, firing watch events;
* :mod:`.transaction_ops` — TRANSACTION_START, TRANSACTION_END, commit;
* :mod:`.domain_ops` — INTRODUCE, RELEASE, RESUME, SET_TARGET,
  GET_DOMAIN_PATH, IS_DOMAIN_INTRODUCED, domains going away;
* :mod:`.feature_quota_ops` — GET/SET_FEATURE, GET/SET_QUOTA;
* :mod:`.control_ops` — CONTROL and the consistency check.

Here: the dispatch table, the connections' life cycle and RESET_WATCHES.
Node operations work either on the committed tree (``tx is None``) or on a
:class:`~.transaction.Transaction` overlay; the same code path serves both
through :meth:`~.base.StoreBase._read` and :mod:`.node_write`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..wire import OK, PAYLOAD_MAX, MsgType, XsError
from . import control as ctl
from . import quota as q
from .base import Event, Result, StoreConfig, plain_result
from .connection import Connection
from .control_ops import ControlOps
from .domain import DomainHooks
from .domain_ops import DomainOps
from .feature_quota_ops import FeatureQuotaOps
from .node_ops import NodeOps
from .transaction import Transaction
from .transaction_ops import TransactionOps
from .watch_ops import WatchOps

__all__ = ["Connection", "Event", "Result", "Store", "StoreConfig"]

ERROR = MsgType.ERROR

# Types only a privileged connection may send (core.c wire_funcs, XS_FLAG_PRIV).
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
# Plain ints, not enum members: these are looked up with every request's type.
_PRIVILEGED = frozenset(int(t) for t in PRIVILEGED_TYPES)
_TX_IGNORED = frozenset(int(t) for t in (MsgType.WATCH, MsgType.UNWATCH))
# Requests whose node writes cost write-rate credits (domain.c:wrl_apply_debit_direct).
_WRL_WRITES = frozenset(
    int(t) for t in (MsgType.WRITE, MsgType.MKDIR, MsgType.RM, MsgType.SET_PERMS)
)
_NO_CONNECTION = Result(ERROR, b"EINVAL\0")

Handler = Callable[[Connection, "Transaction | None", bytes], Result]


class Store(NodeOps, DomainOps, TransactionOps, WatchOps, FeatureQuotaOps, ControlOps):
    """The Xenstore database and its protocol operations."""

    def __init__(
        self,
        config: StoreConfig | None = None,
        hooks: ctl.ControlHooks | None = None,
        domain_hooks: DomainHooks | None = None,
    ) -> None:
        super().__init__(config, hooks, domain_hooks)
        self._handlers: dict[int, Handler] = {}
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
            self._handlers[int(msg_type)] = handler

    # --- connections ---------------------------------------------------------

    def connect(self, conn_id: int, domid: int, *, is_socket: bool) -> None:
        """Register a connection; socket ones act as ``store_domid`` (posix.c:accept_connection)."""
        if conn_id in self.conns:
            raise ValueError(f"connection {conn_id} already registered")
        if is_socket:
            domid = self.config.store_domid
        self._conn_seq += 1
        conn = Connection(
            conn_id, domid, is_socket, domid == self.config.priv_domid, self._conn_seq
        )
        if not is_socket:
            conn.attach(self._domain(domid))
        self.conns[conn_id] = conn

    def disconnect(self, conn_id: int) -> None:
        """Forget a connection with its watches and transactions."""
        conn = self.conns.pop(conn_id, None)
        if conn is None:
            return
        self._drop_watches(conn)
        self._drop_transactions(conn)

    def op_reset_watches(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        """RESET_WATCHES: what a disconnect drops, the connection stays (C's do_reset_watches)."""
        self._drop_watches(conn)
        self._drop_transactions(conn)
        return Result(MsgType.RESET_WATCHES, OK)

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

    # --- entry point ---------------------------------------------------------

    def handle(self, conn_id: int, msg_type: int, tx_id: int, payload: bytes) -> Result:
        """Process one request; never raises for bad input."""
        conn = self.conns.get(conn_id)
        if conn is None:
            return _NO_CONNECTION
        handler = self._handlers.get(msg_type)
        try:
            if handler is None:
                raise XsError("ENOSYS", f"type {msg_type}")
            privileged = conn.privileged
            if not privileged and msg_type in _PRIVILEGED:
                raise XsError("EACCES", "privileged operation")
            tx = None
            if tx_id and msg_type not in _TX_IGNORED:
                tx = conn.transactions.get(tx_id)
                if tx is None:
                    raise XsError("ENOENT", f"no transaction {tx_id}")
            if privileged:
                result = handler(conn, tx, payload)
            else:
                written = self._node_writes
                result = handler(conn, tx, payload)
                if tx is None and msg_type in _WRL_WRITES and conn.domain:
                    self._debit_writes(conn, self._node_writes - written)
        except XsError as err:
            return plain_result(ERROR, err.payload)
        if len(result.payload) > PAYLOAD_MAX:
            return Result(ERROR, b"E2BIG\0", result.events, result.events_before_reply)
        return result
