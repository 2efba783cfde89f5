"""Transaction operations: TRANSACTION_START, TRANSACTION_END and the commit.

The overlay itself is :class:`~.transaction.Transaction`; here a
connection opens one (with its quota), ends it, and a commit checks the
quota and the conflicts, installs the modified nodes in the committed tree
and fires the queued watch events (``transaction.c:finalize_transaction``).

State (:class:`~.base.StoreBase`): writes ``generation`` (a new
transaction's), ``_open_tx``, ``wrl`` (a commit's debit) and, at commit,
the committed tree through ``account_write`` and ``_account_delete``;
reads ``nodes``, ``watches.count`` and ``config.clock``; also each
connection's own transaction table.  Calls of the other groups
(:mod:`.groups`): ``WatchGroup._fire``.  Offers them ``TransactionGroup``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire import OK, MsgType, XsError
from . import quota as q
from .base import Event, Result, StoreBase, plain_result
from .connection import Connection
from .transaction import Transaction

_START = int(MsgType.TRANSACTION_START)
_END = int(MsgType.TRANSACTION_END)
_END_OK = Result(_END, OK)  # an abort, or a commit without events


if TYPE_CHECKING:
    from .groups import WatchGroup

    class _Calls(StoreBase, WatchGroup):
        """StoreBase and the other groups' protocols this group calls (groups.py)."""

else:
    _Calls = StoreBase


class TransactionOps(_Calls):
    """Opening, ending and committing transactions."""

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
        if self._open_tx is not None:
            self._open_tx += 1
        if dom is not None:
            dom.add(q.TRANSACTIONS, 1)
        return plain_result(_START, b"%d\0" % tx_id)

    def op_transaction_end(
        self, conn: Connection, tx: Transaction | None, payload: bytes
    ) -> Result:
        # Exactly one argument, T or F: the whole payload is one of two.
        if payload != b"T\0" and payload != b"F\0":
            raise XsError("EINVAL", "TRANSACTION_END takes T or F")
        if tx is None:
            raise XsError("ENOENT", "no transaction")
        del conn.transactions[tx.tx_id]
        if self._open_tx is not None:
            self._open_tx -= 1
        dom = conn.domain
        if dom is not None:
            # The copies go whatever the outcome; a commit charges the nodes'
            # owners for what it installs (C deletes the per-transaction nodes
            # before it writes the committed ones, without a quota check).
            dom.add(q.TRANSACTIONS, -1)
            dom.add(q.MEMORY, -tx.memory)
        tx.memory = 0
        if payload == b"F\0":
            return _END_OK
        events = self._commit(conn, tx)
        if conn.limited is not None and self.open_transactions():
            # C charges a commit that others' open transactions may conflict with.
            self.wrl.debit(conn.domid, self._now_ms())
        return Result(_END, OK, events, True) if events else _END_OK

    def _commit(self, conn: Connection, tx: Transaction) -> list[Event]:
        """Finalize a transaction (C's ``transaction.c:finalize_transaction``)."""
        if tx.failed:
            raise XsError("ENOMEM", "transaction failed earlier")
        if conn.limited is not None:
            for domid, delta in tx.node_delta.items():
                if delta > 0:
                    dom = self.ensure_domain(domid)
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
            self.account_write(path, node, before)
        events: list[Event] = []
        if self.watches.count:
            for path in tx.nodes:
                mode = tx.events.get(path)
                if mode is not None:
                    # C checks the watcher against the permissions the node had
                    # when the transaction first saw it, or re-reads the node.
                    self._fire(path, mode, None, tx.first_perms.get(path), events)
        return events

    def _drop_transactions(self, conn: Connection) -> None:
        """Forget a connection's open transactions, with what they were charged."""
        for tx in conn.transactions.values():
            self.tx_charge(conn, tx, -tx.memory)
        if conn.domain is not None and conn.transactions:
            conn.domain.add(q.TRANSACTIONS, -len(conn.transactions))
        if self._open_tx is not None:
            self._open_tx -= len(conn.transactions)
        conn.transactions.clear()
