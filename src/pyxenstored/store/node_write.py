"""Node writes: create, modify and remove nodes, committed or in a transaction.

:class:`NodeWrites` changes the tree for the node operations and for the
removal of a dead domain's nodes: missing ancestors are created with their
quota checks (C's ``create_node``), a subtree is removed with its watch
events (``core.c:delnode_sub``).  Outside a transaction a change is accounted at once;
inside one it goes to the transaction's copies, which are charged to the
writer's domain as they change (:meth:`~.base.StoreBase.tx_charge`), and
is accounted to the nodes' owners at commit.

State (:class:`~.base.StoreBase`): reads ``nodes`` and
``config.priv_domid``; writes the committed tree only through the base's
accounting (``account_write``, ``_account_resize``, ``_account_delete``,
``_persist_stale``) and a transaction's copies with ``tx_charge``.  Calls
of the other groups (:mod:`.groups`): ``WatchGroup._fire``.  Offers them
``NodeWriteGroup``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire import XsError, basename, parent_of
from . import quota as q
from .base import Event, StoreBase
from .connection import Connection
from .node import Node, child_path
from .perms import intern_perms
from .transaction import Transaction
from .watch import MATCH_EXACT, MATCH_SUBTREE

if TYPE_CHECKING:
    from .groups import WatchGroup

    class _Calls(StoreBase, WatchGroup):
        """StoreBase and the other groups' protocols this group calls (groups.py)."""

else:
    _Calls = StoreBase


class NodeWrites(_Calls):
    """Changes to the tree shared by the node and domain operations."""

    def _tx_written(self, tx: Transaction, path: str, node: Node) -> None:
        """A node copy changed inside a transaction: it gets a fresh generation, as in C."""
        tx.modified.add(path)
        self._stamp(node)

    def _modify(
        self, conn: Connection, tx: Transaction | None, path: str, node: Node, value: bytes
    ) -> None:
        """Give an existing node a new value."""
        grow = len(value) - len(node.value)
        if conn.limited is not None:
            self._check_node_size(conn, node.size() + grow, tx)
            self._check_memory(conn, node.owner, grow, tx)
        if tx is not None:
            node.value = value
            self._tx_written(tx, path, node)
            self.tx_charge(conn, tx, grow)
            return
        node.value = value
        if len(node.perms) > 1:  # an owner alone is never stale
            self._persist_stale(node)
        self._account_resize(node, grow)

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
            self._check_node_size(conn, fixed + len(value), tx)
            for child in missing[:-1]:
                self._check_node_size(conn, fixed + len(basename(child)) + 1, tx)
            top = basename(missing[-1])
            self._check_node_size(conn, parent.size() + len(top) + 1, tx)
            new_mem = sum(fixed + len(p) for p in missing) + len(value)
            new_mem += sum(len(basename(p)) + 1 for p in missing[:-1])
            if tx is not None:
                # All of it goes to the transaction's copies, in place of the
                # records of the absent paths: one charge.
                recorded = sum(len(p) for p in missing if p in tx.nodes)
                self._check_memory(conn, conn.domid, new_mem + len(top) + 1 - recorded, tx)
            else:
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
            held = 0
            for p, node in created:
                if p in tx.nodes:
                    held -= len(p)  # the record of the absent path it replaces
                tx.nodes[p] = node
                self._tx_written(tx, p, node)
                held += node.memory(p)
            clen = parent.clen
            parent.add_child(child_name)
            self._tx_written(tx, parent_path, parent)
            self.tx_charge(conn, tx, held + parent.clen - clen)
            owner = perms[0][0]
            tx.node_delta[owner] = tx.node_delta.get(owner, 0) + count
            return
        for p, node in created:
            self.account_write(p, node, None)
        clen = parent.clen
        parent.add_child(child_name)
        self._persist_stale(parent)  # flags entries; owner and count stay
        self._account_resize(parent, parent.clen - clen)

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
        """Delete ``path`` with its subtree; events as C's ``core.c:delnode_sub``."""
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
        released = 0
        for p, n in subtree:
            mode = MATCH_SUBTREE if p == path else MATCH_EXACT
            if tx is not None:
                tx.nodes[p] = None
                released += n.memory(p) - len(p)  # the path's record stays
                tx.modified.add(p)
                owner = n.perms[0][0]
                tx.node_delta[owner] = tx.node_delta.get(owner, 0) - 1
                tx.queue_event(p, mode)
            else:
                self._account_delete(p, n)
                self._fire(p, mode, n, None, events)
        name = basename(path)
        if tx is not None:
            assert conn is not None  # a domain's removal is never inside a transaction
            self.tx_charge(conn, tx, -released)
            if name not in parent.children:
                # The transaction's copy of the parent predates the child (created
                # outside since): C's delete_child fails so.  The commit is doomed.
                raise XsError("EIO", "child missing from the transaction's parent copy")
            clen = parent.clen
            parent.remove_child(name)
            self._tx_written(tx, parent_path, parent)
            self.tx_charge(conn, tx, parent.clen - clen)
            return
        clen = parent.clen
        parent.remove_child(name)
        self._account_resize(parent, parent.clen - clen)

    def _system_conn(self) -> Connection:
        return Connection(-1, self.config.priv_domid, True, True, 0)
