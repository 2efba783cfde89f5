"""The shared ring page as both ends see it: its two queues and control words.

Sans-I/O: a :class:`RingPage` wraps any writable 4096-byte buffer: an
``mmap`` of the page file, or a byte ``memoryview`` of memory a Xen library
mapped.  The layout is in :mod:`wire` (``RING_*``).  The guest client and
the daemon's ring transport both use this class, so the page's layout is
read and written in one place.
"""

from __future__ import annotations

import mmap

from pyxenstored.wire import (
    RING_CONNECTION,
    RING_ERROR,
    RING_INDEX_MASK,
    RING_PAGE_SIZE,
    RING_REQ_CONS,
    RING_REQ_PROD,
    RING_RSP_CONS,
    RING_RSP_PROD,
    RING_SERVER_FEATURES,
)

# Word indexes in the u32 view of the page.
W_REQ_CONS = RING_REQ_CONS // 4
W_REQ_PROD = RING_REQ_PROD // 4
W_RSP_CONS = RING_RSP_CONS // 4
W_RSP_PROD = RING_RSP_PROD // 4
W_FEATURES = RING_SERVER_FEATURES // 4
W_CONNECTION = RING_CONNECTION // 4
W_ERROR = RING_ERROR // 4


def queue_used(cons: int, prod: int) -> int:
    """Bytes in a queue given its free-running offsets (mod 2**32)."""
    return (prod - cons) & RING_INDEX_MASK


class RingPage:
    """A mapped 4096-byte ring page.

    The control words are read and written as whole aligned native u32
    through a typed view: one load or store each, so the other side never
    sees a half-written offset (``struct``'s ``"=I"`` stores byte by byte).
    """

    __slots__ = ("mem", "words")

    def __init__(self, mem: mmap.mmap | memoryview) -> None:
        if len(mem) < RING_PAGE_SIZE:
            raise ValueError(f"a ring page is {RING_PAGE_SIZE} bytes, not {len(mem)}")
        self.mem = mem
        self.words = memoryview(mem)[:RING_PAGE_SIZE].cast("I")

    def word(self, offset: int) -> int:
        """The u32 control word at byte ``offset``."""
        value: int = self.words[offset // 4]
        return value

    def set_word(self, offset: int, value: int) -> None:
        self.words[offset // 4] = value & RING_INDEX_MASK

    @property
    def connection(self) -> int:
        return self.word(RING_CONNECTION)

    @property
    def error(self) -> int:
        return self.word(RING_ERROR)

    @property
    def features(self) -> int:
        return self.word(RING_SERVER_FEATURES)

    def advertise(self, features: int) -> None:
        """Set feature bits (the spec lets a server add bits, never clear them)."""
        self.words[W_FEATURES] = (self.words[W_FEATURES] | features) & RING_INDEX_MASK

    def reset_queues(self) -> None:
        """Zero the four offsets: both queues empty (INTRODUCE, reconnection)."""
        words = self.words
        words[W_REQ_CONS] = 0
        words[W_REQ_PROD] = 0
        words[W_RSP_CONS] = 0
        words[W_RSP_PROD] = 0

    def request_bytes(self) -> int:
        """Bytes waiting in the request queue (may exceed 1024 on a broken ring)."""
        words = self.words
        return queue_used(words[W_REQ_CONS], words[W_REQ_PROD])

    def release(self) -> None:
        """Drop the typed view (the caller closes the mapping)."""
        self.words.release()

    def close(self) -> None:
        """Drop the typed view and unmap the page."""
        self.words.release()
        if isinstance(self.mem, memoryview):
            self.mem.release()
        else:
            self.mem.close()
