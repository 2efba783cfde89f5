"""What each group of store operations offers the other groups.

:class:`~.core.Store` is composed side by side: one class per group of
operations, each over :class:`~.base.StoreBase` (the shared state, node
access and accounting) and over nothing else, and ``Store`` lists them all,
so its MRO is flat (``Store`` → the groups → ``StoreBase``).  The groups
share state only through ``StoreBase``; a group calls another group only
through the methods that group's protocol below names.  A group that does
so inherits those protocols for the type checker only (under
``TYPE_CHECKING``, its ``_Calls`` base), so mypy checks each call against
the protocol, and ``core.py`` checks that each group provides its protocol.
``tests/store/test_groups.py`` checks the rest: every group's bases, no
method in two groups, and no call between groups outside these protocols.

Who calls what (each group module's docstring says its state too):

* :class:`NodeWriteGroup` (``node_write.NodeWrites``): all four by the node
  ops, ``_remove`` by the domain ops (a dead domain's nodes);
* :class:`WatchGroup` (``watch_ops.WatchOps``): ``_fire`` by the node
  writes, node ops, transaction ops and domain ops; ``_fire_special`` and
  ``_drop_watches`` by the domain ops; ``_drop_watches`` by ``Store``
  (disconnect, RESET_WATCHES);
* :class:`TransactionGroup` (``transaction_ops.TransactionOps``):
  ``_drop_transactions`` by the domain ops and by ``Store``;
* :class:`NodeGroup`, :class:`DomainGroup`, :class:`FeatureQuotaGroup`,
  :class:`ControlGroup` (``node_ops``, ``domain_ops``,
  ``feature_quota_ops``, ``control_ops``): empty, no other group calls
  them.

The ``op_*`` methods of every group are reached only through ``Store``'s
dispatch table (:mod:`.messages`), and the public ones (``quick_read``,
``domains_changed``, ``check``, ...) only from outside the groups, so they
are in no protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .base import Event
    from .connection import Connection
    from .node import Node
    from .perms import Perms
    from .transaction import Transaction


class NodeGroup(Protocol):
    """The node requests (:mod:`.node_ops`): the other groups call nothing of them."""


class NodeWriteGroup(Protocol):
    """Changes to the tree (:mod:`.node_write`), committed or in a transaction."""

    def _tx_written(self, tx: Transaction, path: str, node: Node) -> None: ...

    def _modify(
        self, conn: Connection, tx: Transaction | None, path: str, node: Node, value: bytes
    ) -> None: ...

    def _create(
        self, conn: Connection, tx: Transaction | None, path: str, value: bytes
    ) -> None: ...

    def _remove(
        self,
        conn: Connection | None,
        tx: Transaction | None,
        path: str,
        node: Node,
        events: list[Event],
    ) -> None: ...


class WatchGroup(Protocol):
    """Watch events (:mod:`.watch_ops`), and forgetting a connection's watches."""

    def _fire(
        self,
        path: str,
        mode: int,
        node: Node | None,
        old_perms: Perms | None,
        events: list[Event],
        *,
        perm_path: str | None = None,
    ) -> None: ...

    def _fire_special(
        self,
        name: str,
        domid: int,
        events: list[Event],
        *,
        nodomid: bool = True,
        withdomid: bool = True,
    ) -> None: ...

    def _drop_watches(self, conn: Connection) -> None: ...


class TransactionGroup(Protocol):
    """Transactions (:mod:`.transaction_ops`): forgetting a connection's open ones."""

    def _drop_transactions(self, conn: Connection) -> None: ...


class DomainGroup(Protocol):
    """The domain requests (:mod:`.domain_ops`): the other groups call nothing of them."""


class FeatureQuotaGroup(Protocol):
    """Features and quota (:mod:`.feature_quota_ops`): the other groups call nothing of them."""


class ControlGroup(Protocol):
    """CONTROL (:mod:`.control_ops`): the other groups call nothing of them."""
