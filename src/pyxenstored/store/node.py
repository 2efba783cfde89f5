"""Nodes of the database and their accounted size.

The committed tree is a plain ``dict`` from absolute path to :class:`Node`;
a node keeps the names of its children in creation order (an insertion
ordered ``dict`` used as a set, so removal is O(1)).  Special nodes
(``@introduceDomain``, ``@releaseDomain``) live in the same dict but are
nobody's children.

Memory matters here (one ``Node`` per node of every guest): a leaf shares
the empty tuple :data:`NO_CHILDREN` instead of owning an empty dict, the
child-name length lives in the :class:`Children` mapping (so a ``Node`` has
four slots, 64 bytes with its GC header), and child names are interned, as
the same few names ("state", "backend", "0") recur under many parents.
"""

from __future__ import annotations

from sys import intern

from .perms import Perms

NO_GENERATION = -1  # C's ~0: "the node did not exist" in a transaction record

# The special nodes: in the tree's dict, nobody's children (core.c:setup_structure).
RELEASE_DOMAIN = "@releaseDomain"
INTRODUCE_DOMAIN = "@introduceDomain"
SPECIAL_NODES = (RELEASE_DOMAIN, INTRODUCE_DOMAIN)


class Children(dict[str, None]):
    """Child names of a node in creation order, with C's list length.

    ``clen`` is the length of the child-name list as C stores it (every name
    NUL-terminated), kept up to date so size checks are O(1).  ``listing``
    is the DIRECTORY reply once built, until the names change: whoever adds
    or removes a name resets it to None (:meth:`Node.add_child`,
    :meth:`Node.remove_child`, the bulk restore).
    """

    __slots__ = ("clen", "listing")

    def __init__(self) -> None:
        super().__init__()
        self.clen = 0
        self.listing: bytes | None = None


# Shared by every node without children: iterable, falsy, ``in`` works, and
# being immutable it cannot be filled by mistake.
NO_CHILDREN: tuple[()] = ()


class Node:
    """One node: value, permissions, children, generation."""

    __slots__ = ("value", "perms", "children", "gen")

    def __init__(self, value: bytes, perms: Perms, gen: int) -> None:
        self.value = value
        self.perms = perms
        self.gen = gen
        self.children: Children | tuple[()] = NO_CHILDREN

    @property
    def owner(self) -> int:
        return self.perms[0][0]

    @property
    def clen(self) -> int:
        """Length of the child-name list as C stores it (names NUL-terminated)."""
        children = self.children
        return children.clen if children else 0

    def copy(self) -> Node:
        node = Node(self.value, self.perms, self.gen)
        children = self.children
        if children:
            kids = Children()
            kids.update(children)
            kids.clen = children.clen
            kids.listing = children.listing
            node.children = kids
        return node

    # Both tolerate a child list that disagrees: inside a transaction a parent
    # copied after its child was copied may already reflect an outside change
    # of that child; such a transaction always fails its commit (EAGAIN).
    def add_child(self, name: str) -> None:
        children = self.children
        if not children:
            children = self.children = Children()
        elif name in children:
            return
        children[intern(name)] = None
        children.clen += len(name) + 1
        children.listing = None

    def remove_child(self, name: str) -> None:
        children = self.children
        if children and children.pop(name, 0) is None:
            if children:
                children.clen -= len(name) + 1
                children.listing = None
            else:
                self.children = NO_CHILDREN

    def children_payload(self) -> bytes:
        """DIRECTORY reply: names NUL-terminated, in creation order."""
        children = self.children
        if not children:
            return b""
        listing = children.listing
        if listing is None:
            # Built once per change of the names: listings are read far
            # more often than they change.
            listing = children.listing = ("\0".join(children) + "\0").encode("ascii")
        return listing

    def size(self) -> int:
        """What the ``node-size`` quota measures (C's ``core.c:write_node_raw``)."""
        children = self.children
        return 16 + 8 * len(self.perms) + len(self.value) + (children.clen if children else 0)

    def memory(self, path: str) -> int:
        """Bytes of memory charged to the owner for this node."""
        children = self.children
        return (
            16
            + 8 * len(self.perms)
            + len(self.value)
            + (children.clen if children else 0)
            + len(path)
        )


def child_path(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else parent + "/" + name
