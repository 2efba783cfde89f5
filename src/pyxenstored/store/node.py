"""Nodes of the database and their accounted size.

The committed tree is a plain ``dict`` from absolute path to :class:`Node`;
a node keeps the names of its children in creation order (an insertion
ordered ``dict`` used as a set, so removal is O(1)).  Special nodes
(``@introduceDomain``, ``@releaseDomain``) live in the same dict but are
nobody's children.
"""

from __future__ import annotations

from .perms import Perms

NO_GENERATION = -1  # C's ~0: "the node did not exist" in a transaction record


class Node:
    """One node: value, permissions, children, generation.

    ``clen`` is the length of the child-name list as C stores it
    (every name NUL-terminated), kept up to date so size checks are O(1).
    """

    __slots__ = ("value", "perms", "children", "clen", "gen")

    def __init__(
        self,
        value: bytes,
        perms: Perms,
        gen: int,
        children: dict[str, None] | None = None,
        clen: int = 0,
    ) -> None:
        self.value = value
        self.perms = perms
        self.gen = gen
        self.children: dict[str, None] = {} if children is None else children
        self.clen = clen

    @property
    def owner(self) -> int:
        return self.perms[0][0]

    def copy(self) -> Node:
        return Node(self.value, self.perms, self.gen, dict(self.children), self.clen)

    # Both tolerate a child list that disagrees: inside a transaction a parent
    # copied after its child was copied may already reflect an outside change
    # of that child; such a transaction always fails its commit (EAGAIN).
    def add_child(self, name: str) -> None:
        if name not in self.children:
            self.children[name] = None
            self.clen += len(name) + 1

    def remove_child(self, name: str) -> None:
        if self.children.pop(name, 0) is None:
            self.clen -= len(name) + 1

    def children_payload(self) -> bytes:
        """DIRECTORY reply: names NUL-terminated, in creation order."""
        if not self.children:
            return b""
        return ("\0".join(self.children) + "\0").encode("ascii")

    def size(self) -> int:
        """What the ``node-size`` quota measures (digest 8.3)."""
        return 16 + 8 * len(self.perms) + len(self.value) + self.clen

    def memory(self, path: str) -> int:
        """Bytes of memory charged to the owner for this node."""
        return 16 + 8 * len(self.perms) + len(self.value) + self.clen + len(path)


def child_path(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else parent + "/" + name
