"""Transactions: lazy overlays on the committed tree (as C's ``transaction.c``).

A transaction copies a node the first time it touches it (read, write or
delete) and remembers the generation it saw (``NO_GENERATION`` when the
node did not exist).  Later accesses see the copy.  Commit succeeds only if
every remembered generation is still current; then the modified copies
replace the committed nodes.  Nothing is copied up front.

Every access a transaction records is memory the daemon keeps for the
client: a copy of the node (charged :meth:`~.node.Node.memory`), or for a
path absent in the transaction (never there, or deleted in it) the record
of its path (charged the path's length).  ``memory`` is what they are
charged, to the domain of the transaction's connection, from the moment
they are made until the transaction ends (C's ``get_acc_domid`` charges its
per-transaction nodes so; C leaves the records of absent paths uncharged).
"""

from __future__ import annotations

from .node import NO_GENERATION, Node
from .perms import Perms


class Transaction:
    """One open transaction of one connection."""

    __slots__ = (
        "tx_id",
        "conn_id",
        "gen",
        "nodes",
        "gens",
        "modified",
        "events",
        "failed",
        "node_delta",
        "first_perms",
        "memory",
    )

    def __init__(self, tx_id: int, conn_id: int, gen: int) -> None:
        self.tx_id = tx_id
        self.conn_id = conn_id
        self.gen = gen
        # path -> private copy (None: absent in this transaction); insertion
        # order is the order of first access, which is the event order.
        self.nodes: dict[str, Node | None] = {}
        self.gens: dict[str, int] = {}  # path -> generation seen at first access
        self.modified: set[str] = set()
        self.events: dict[str, int] = {}  # path -> watch match mode (subtree wins)
        self.failed = False
        self.node_delta: dict[int, int] = {}  # domid -> net nodes created here
        # Permissions of nodes that existed at first access: at commit they
        # decide, besides the committed node, who is told about the change.
        self.first_perms: dict[str, Perms] = {}
        # Bytes charged for what ``nodes`` holds (see the module docstring);
        # kept by the store as it changes.
        self.memory = 0

    def first_access(self, path: str, committed: Node | None) -> Node | None:
        """Record the first access of ``path`` and return the private copy."""
        if committed is None:
            self.gens[path] = NO_GENERATION
            self.nodes[path] = None
            return None
        self.gens[path] = committed.gen
        self.first_perms[path] = committed.perms
        copy = committed.copy()
        self.nodes[path] = copy
        return copy

    def queue_event(self, path: str, mode: int) -> None:
        if self.events.get(path, -1) < mode:
            self.events[path] = mode

    def conflicts(self, committed: dict[str, Node]) -> bool:
        """Whether any node seen by this transaction changed since."""
        for path, gen in self.gens.items():
            node = committed.get(path)
            if (node.gen if node is not None else NO_GENERATION) != gen:
                return True
        return False

    def held_memory(self) -> int:
        """What ``nodes`` is charged, counted again (``memory`` should equal it)."""
        return sum(record_cost(path, node) for path, node in self.nodes.items())


def record_cost(path: str, node: Node | None) -> int:
    """What one access record of a transaction is charged: its copy, or its path."""
    return len(path) if node is None else node.memory(path)
