"""Which committed paths a stream has shown so far: exact in tree order, bounded in memory.

The checker's parent and duplicate rules for NODE_DATA need to know, for
each committed node, whether its parent and the node itself came before.
:class:`PathTracker` answers that for files of any size (see its docstring
and docs/stream.md).
"""

from __future__ import annotations

from typing import Any


class BloomFilter:
    """Fixed-size Bloom filter over 64-bit hashes (two probes)."""

    __slots__ = ("bits", "mask")

    def __init__(self, log2_bits: int = 27) -> None:
        self.bits = bytearray(1 << (log2_bits - 3))
        self.mask = (1 << log2_bits) - 1

    def add(self, h: int) -> None:
        m = self.mask
        bits = self.bits
        a = h & m
        b = (h >> 32) & m
        bits[a >> 3] |= 1 << (a & 7)
        bits[b >> 3] |= 1 << (b & 7)

    def __contains__(self, h: int) -> bool:
        m = self.mask
        bits = self.bits
        a = h & m
        b = (h >> 32) & m
        return bool(bits[a >> 3] & (1 << (a & 7))) and bool(bits[b >> 3] & (1 << (b & 7)))


class PathTracker:
    """Which committed paths came before: exact in tree order, bounded in memory.

    C writes nodes depth-first, so the parent of each node is on the current
    chain of ancestors.  The tracker keeps that chain with, for each open
    node, the hashes of the children seen so far: parent and duplicate
    checks are exact for such streams and cost memory only for one branch.
    A node whose parent is not on the chain (legal, just not tree order) is
    looked up in a global record of all paths: an exact set of path hashes
    while there are fewer than ``exact_limit`` nodes, then a fixed-size
    Bloom filter (a miss there is certain, a hit is not: such duplicates are
    only reported as ``node-maybe-duplicate``).
    """

    __slots__ = ("stack", "exact", "bloom", "exact_limit", "root_seen", "orphans")

    def __init__(self, exact_limit: int = 200_000) -> None:
        # each entry: [path + "/", path, hashes of the children seen or None]
        self.stack: list[list[Any]] = [[b"/", b"/", None]]
        self.exact: set[int] | None = set()
        self.bloom: BloomFilter | None = None
        self.exact_limit = exact_limit
        self.root_seen = False
        # Set once a node came before its parent, or a path came twice: the
        # children set of a node opened (again) then misses earlier children,
        # so from then on new children are also looked up globally.
        self.orphans = False

    def remember(self, h: int) -> None:
        exact = self.exact
        if exact is not None:
            exact.add(h)
            if len(exact) > self.exact_limit:
                bloom = BloomFilter()
                for old in exact:
                    bloom.add(old)
                self.bloom = bloom
                self.exact = None
        else:
            assert self.bloom is not None
            self.bloom.add(h)

    def known(self, h: int) -> bool | None:
        """True/False when certain, None when the Bloom filter says 'maybe'."""
        if self.exact is not None:
            return h in self.exact
        assert self.bloom is not None
        return None if h in self.bloom else False

    def add_in_order(self, path: bytes, cut: int) -> bool:
        """Record ``path`` if it is a new child of the innermost open node.

        The common case of a depth-first stream, with :meth:`add`'s work cut
        down to it.  ``cut`` is the index of the path's last ``/``.  False,
        with nothing recorded, when the node is anything else (a duplicate,
        out of order, after an orphan): then :meth:`add` decides.
        """
        if self.orphans:
            return False
        stack = self.stack
        top = stack[-1]
        while not path.startswith(top[0]):
            stack.pop()
            top = stack[-1]
        if top[1] != (path[:cut] or b"/"):
            return False
        h = hash(path)
        kids = top[2]
        if kids is None:
            top[2] = {h}
        elif h in kids:
            return False
        else:
            kids.add(h)
        exact = self.exact
        if exact is not None and len(exact) < self.exact_limit:
            exact.add(h)
        else:
            self.remember(h)
        stack.append([path + b"/", path, None])
        return True

    def add(self, path: bytes) -> tuple[bool, bool | None]:
        """Record a committed node; returns (parent_ok, duplicate: True/False/None=maybe)."""
        if path == b"/":
            root_dup = self.root_seen
            self.root_seen = True
            return True, root_dup
        stack = self.stack
        top = stack[-1]
        while not path.startswith(top[0]):
            stack.pop()
            top = stack[-1]
        cut = path.rfind(b"/")
        h = hash(path)
        dup: bool | None
        if top[1] == (path[:cut] if cut > 0 else b"/"):
            parent_ok = True
            kids = top[2]
            if kids is None:
                top[2] = {h}
                dup = False
            elif h in kids:
                dup = True
            else:
                kids.add(h)
                dup = False
            if not dup and self.orphans:
                dup = self.known(h)
        else:
            parent_ok = self.known(hash(path[:cut] if cut > 0 else b"/")) is not False
            dup = self.known(h)
        if not parent_ok or dup is True:
            self.orphans = True
        if not dup:
            exact = self.exact
            if exact is not None and len(exact) < self.exact_limit:
                exact.add(h)
            else:
                self.remember(h)
        stack.append([path + b"/", path, None])
        return parent_ok, dup
