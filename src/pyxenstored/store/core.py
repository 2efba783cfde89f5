"""The Store: one entry point from (connection, type, tx id, payload) to a reply.

Pure logic, no I/O.  :meth:`Store.handle` dispatches like C's
``core.c:process_message`` to one method per operation; every
operation raises ``wire.XsError`` for a protocol error, and ``handle``
turns it into an ERROR reply.  Watch events come back in the
:class:`Result`, addressed to connection ids.

The operations come from one class per group, side by side, each over
:class:`~.base.StoreBase` (the shared state, node access and accounting)
alone; a group calls another only through the protocols in :mod:`.groups`:

* :mod:`.node_ops` — READ, WRITE, MKDIR, RM, DIRECTORY, DIRECTORY_PART,
  GET_PERMS, SET_PERMS;
* :mod:`.node_write` — creating, changing and removing nodes, for the
  node and domain operations;
* :mod:`.watch_ops` — WATCH, UNWATCH, firing watch events;
* :mod:`.transaction_ops` — TRANSACTION_START, TRANSACTION_END, commit;
* :mod:`.domain_ops` — INTRODUCE, RELEASE, RESUME, SET_TARGET,
  GET_DOMAIN_PATH, IS_DOMAIN_INTRODUCED, domains going away;
* :mod:`.feature_quota_ops` — GET/SET_FEATURE, GET/SET_QUOTA;
* :mod:`.control_ops` — CONTROL and the consistency check.

Here: the dispatch (each type's handler and flags come from the table in
:mod:`.messages`), the connections' life cycle and RESET_WATCHES.
Node operations work either on the committed tree (``tx is None``) or on a
:class:`~.transaction.Transaction` overlay; the same code path serves both
through :meth:`~.base.StoreBase._read` and :mod:`.node_write`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..wire import OK, PAYLOAD_MAX, MsgType, XsError
from . import control as ctl
from . import quota as q
from .base import Event, Result, StoreConfig, plain_result
from .connection import Connection
from .control_ops import ControlOps
from .domain import DomainHooks
from .domain_ops import DomainOps
from .feature_quota_ops import FeatureQuotaOps
from .messages import HANDLERS, PRIVILEGED_TYPES, TX_IGNORED_TYPES, WRL_WRITE_TYPES
from .node_ops import NodeOps
from .node_write import NodeWrites
from .transaction import Transaction
from .transaction_ops import TransactionOps
from .watch_ops import WatchOps

__all__ = ["Connection", "Event", "Result", "Store", "StoreConfig"]

ERROR = MsgType.ERROR

_NO_CONNECTION = Result(ERROR, b"EINVAL\0")

if TYPE_CHECKING:
    # Each group provides what its protocol promises the others (groups.py).
    from .groups import (
        ControlGroup,
        DomainGroup,
        FeatureQuotaGroup,
        NodeGroup,
        NodeWriteGroup,
        TransactionGroup,
        WatchGroup,
    )

    _PROVIDES: tuple[
        type[NodeGroup],
        type[NodeWriteGroup],
        type[WatchGroup],
        type[TransactionGroup],
        type[DomainGroup],
        type[FeatureQuotaGroup],
        type[ControlGroup],
    ] = (NodeOps, NodeWrites, WatchOps, TransactionOps, DomainOps, FeatureQuotaOps, ControlOps)

Handler = Callable[[Connection, "Transaction | None", bytes], Result]


class Store(NodeOps, NodeWrites, DomainOps, TransactionOps, WatchOps, FeatureQuotaOps, ControlOps):
    """The Xenstore database and its protocol operations: the groups side by side."""

    def __init__(
        self,
        config: StoreConfig | None = None,
        hooks: ctl.ControlHooks | None = None,
        domain_hooks: DomainHooks | None = None,
    ) -> None:
        super().__init__(config, hooks, domain_hooks)
        # Bound once: the table names each type's method (store/messages.py).
        self._handlers: dict[int, Handler] = {
            msg_type: getattr(self, name) for msg_type, name in HANDLERS.items()
        }

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
            conn.attach(self.ensure_domain(domid))
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
            if not privileged and msg_type in PRIVILEGED_TYPES:
                raise XsError("EACCES", "privileged operation")
            tx = None
            if tx_id and msg_type not in TX_IGNORED_TYPES:
                tx = conn.transactions.get(tx_id)
                if tx is None:
                    raise XsError("ENOENT", f"no transaction {tx_id}")
            if privileged:
                result = handler(conn, tx, payload)
            else:
                written = self._node_writes
                result = handler(conn, tx, payload)
                if tx is None and msg_type in WRL_WRITE_TYPES and conn.domain:
                    self._debit_writes(conn, self._node_writes - written)
        except XsError as err:
            return plain_result(ERROR, err.payload)
        if len(result.payload) > PAYLOAD_MAX:
            return Result(ERROR, b"E2BIG\0", result.events, result.events_before_reply)
        return result
