"""Watches and the index that finds them from an event path.

Watches are indexed by their canonical watched path; an event on path E
looks up E and each of its ancestors (and nothing else), so firing costs
O(depth of E), never O(number of watches).  Matches are returned in C's
delivery order: by connection (oldest first), then by registration order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

MATCH_EXACT = 0
MATCH_SUBTREE = 1
MATCH_NODEPTH = 2  # special-watch pass without domid: exact path, no depth given
MATCH_DEPTH = 3  # special-watch pass with domid: exact path, or parent watch with depth > 0


@dataclass(slots=True, frozen=True)
class Watch:
    """One registered watch (identity: connection, canonical path, token)."""

    conn_id: int
    conn_seq: int
    seq: int
    path: str
    token: bytes
    depth: int  # -1: no depth given
    prefix_len: int  # > 0 when registered relative: strip this from event paths

    def event_path(self, path: str) -> bytes:
        """The path as this watch reports it (relative if registered relative)."""
        return (path[self.prefix_len :] if self.prefix_len else path).encode("ascii")


def ancestors(path: str) -> Iterator[str]:
    """``path`` itself, then each ancestor up to ``/`` (special paths: up to ``@x``)."""
    yield path
    while True:
        idx = path.rfind("/")
        if idx < 0:
            return
        path = "/" if idx == 0 else path[:idx]
        yield path
        if path == "/":
            return


def depth_below(path: str, base: str) -> int:
    """How many levels ``path`` lies below its ancestor ``base``."""
    if path == base:
        return 0
    rest = path[1:] if base == "/" else path[len(base) + 1 :]
    return rest.count("/") + 1


class WatchIndex:
    """All watches, by watched path."""

    __slots__ = ("by_path", "count")

    def __init__(self) -> None:
        self.by_path: dict[str, list[Watch]] = {}
        self.count = 0

    def add(self, watch: Watch) -> None:
        self.by_path.setdefault(watch.path, []).append(watch)
        self.count += 1

    def remove(self, watch: Watch) -> None:
        lst = self.by_path[watch.path]
        lst.remove(watch)
        if not lst:
            del self.by_path[watch.path]
        self.count -= 1

    def matches(self, path: str, mode: int) -> list[Watch]:
        """Watches an event on ``path`` fires, in delivery order."""
        by_path = self.by_path
        found: list[Watch] = []
        if mode == MATCH_EXACT:
            found.extend(by_path.get(path, ()))
        elif mode == MATCH_SUBTREE:
            for base in ancestors(path):
                lst = by_path.get(base)
                if lst:
                    if base == path:
                        found.extend(lst)
                    else:
                        levels = depth_below(path, base)
                        found.extend(w for w in lst if w.depth < 0 or levels <= w.depth)
        elif mode == MATCH_NODEPTH:
            found.extend(w for w in by_path.get(path, ()) if w.depth < 0)
        else:  # MATCH_DEPTH: path is "S/<domid>"
            found.extend(by_path.get(path, ()))
            base = path[: path.rfind("/")]
            found.extend(w for w in by_path.get(base, ()) if w.depth > 0)
        if len(found) > 1:
            found.sort(key=_delivery_order)
        return found


def _delivery_order(w: Watch) -> tuple[int, int]:
    return (w.conn_seq, w.seq)
