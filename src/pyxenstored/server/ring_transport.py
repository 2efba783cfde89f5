"""The server end of a xenstore shared ring (``xenstore-ring.txt``).

The page holds two 1024-byte circular queues -- requests (guest to server) at
offset 0, responses and events (server to guest) at 1024 -- with free-running
u32 consumer/producer offsets at 2048..2063 (byte ``k`` of a stream lives at
``k mod 1024``), the server feature bitmap at 2064, the connection state at
2068 and the error indicator at 2072.  All words are native byte order and are
read and written as whole aligned u32 through a typed view.

:class:`RingTransport` is a :class:`~pyxenstored.server.transport.Transport`:
``read`` takes what the guest produced, ``write`` fills the response queue;
every change of the offsets is signalled to the guest, as the spec asks
(consumed requests by the next write or at the end of the turn,
:meth:`RingTransport.flush_notify`, so that one notification covers both).  It has no file descriptor of its own (``fileno()`` is -1): the
guests' kicks arrive on the hypervisor's event channel and
:mod:`.ring_domains` drives the transport from there.

A guest that breaks the protocol is cut off, not the daemon: offsets that
claim more than 1024 bytes in a queue (error 2, "inconsistent producer or
consumer offset") and a message header announcing more than 4096 payload
bytes (error 3, "protocol violation") doom the transport; its owner then
closes the connection, which sets the error indicator when the domain has
the ERROR feature (as C does, ``domain.c:ignore_connection``).  To see the
header, the transport follows message boundaries in the request stream
(a 16-byte header, then ``len`` payload bytes).
"""

from __future__ import annotations

import mmap
import struct
import sys
from collections.abc import Callable, Sequence

from pyxenstored.ringpage import (
    W_CONNECTION,
    W_REQ_CONS,
    W_REQ_PROD,
    W_RSP_CONS,
    W_RSP_PROD,
    RingPage,
)
from pyxenstored.stream.records import RingSpec
from pyxenstored.wire import (
    HEADER_SIZE,
    PAYLOAD_MAX,
    RING_CONNECTED,
    RING_ERROR,
    RING_ERROR_NONE,
    RING_ERROR_PROTO,
    RING_ERROR_RINGIDX,
    RING_INDEX_MASK,
    RING_REQ_OFFSET,
    RING_RSP_OFFSET,
    RING_SIZE,
)

_LEN_OFFSET = 12  # of the header's ``len`` word
_LEN = struct.Struct("=I")


class RingTransport:
    """One guest's ring as a byte transport for a server connection."""

    __slots__ = (
        "page",
        "domid",
        "_notify",
        "_words",
        "_mem",
        "_mmap",
        "_hdr",
        "_body_left",
        "doomed",
        "report_errors",
        "on_interest",
        "allowance",
        "describe",
        "_consumed",
    )

    def __init__(
        self,
        page: RingPage,
        domid: int,
        notify: Callable[[], None],
        *,
        report_errors: bool = True,
        on_interest: Callable[[RingTransport, int], None] | None = None,
    ) -> None:
        self.page = page
        self.domid = domid
        self._notify = notify
        # Whether the domain has the RING_ERROR feature: only then is the error
        # indicator written when the ring is cut off (``domain.c:ignore_connection``).
        self.report_errors = report_errors
        # Called with the selector mask the connection waits for (see
        # Server._update_mask): the owner schedules the ring when it can act.
        self.on_interest = on_interest
        # How many requests the connection may take now (Connection.allowance):
        # requests beyond it stay in the ring, as in C, so that the outstanding
        # quota holds the guest back on its own page.
        self.allowance: Callable[[], int] | None = None
        # For live update: (conn-spec, unique id) of this ring's connection.
        self.describe: Callable[[], tuple[RingSpec, int | None]] | None = None
        # Requests consumed since the guest was last notified: one
        # notification per turn covers them and the replies written.
        self._consumed = False
        self._words = page.words
        self._mem = page.mem
        # The page as an mmap (its slices are bytes already), or None.
        self._mmap = page.mem if isinstance(page.mem, mmap.mmap) else None
        # Request framing: header bytes seen of the current message, and
        # payload bytes still to come.
        self._hdr = bytearray()
        self._body_left = 0
        # The error indicator value this ring is to be cut off with (0: fine).
        self.doomed = RING_ERROR_NONE

    # --- Transport -------------------------------------------------------------

    @property
    def is_socket(self) -> bool:
        return False

    def fileno(self) -> int:
        return -1

    def migration_spec(self) -> tuple[RingSpec, int | None]:
        """CONNECTION_DATA's ring ``conn-spec`` and unique id (live update dumps)."""
        if self.describe is None:
            raise OSError(f"the ring of domain {self.domid} has no owner to describe it")
        return self.describe()

    def interest(self, want: int) -> None:
        if self.on_interest is not None:
            self.on_interest(self, want)

    def has_output_space(self) -> bool:
        words = self._words
        return ((words[W_RSP_PROD] - words[W_RSP_CONS]) & RING_INDEX_MASK) < RING_SIZE

    def has_input(self) -> bool:
        """Whether the guest has produced bytes we have not taken."""
        return not self.doomed and self.page.request_bytes() != 0

    def read(self) -> bytes | None:
        """The request bytes in the queue now; ``None`` if none; ``b""`` once doomed."""
        if self.doomed:
            return b""
        words = self._words
        if words[W_CONNECTION] != RING_CONNECTED:
            return None  # a reconnection is pending: the owner resets first
        cons = words[W_REQ_CONS]
        prod = words[W_REQ_PROD]
        used = (prod - cons) & RING_INDEX_MASK
        if not used:
            return None
        if used > RING_SIZE:
            self.doomed = RING_ERROR_RINGIDX
            return b""
        start = cons % RING_SIZE
        first = min(used, RING_SIZE - start)
        mem = self._mem
        mm = self._mmap
        if mm is not None:
            data = mm[RING_REQ_OFFSET + start : RING_REQ_OFFSET + start + first]
        else:
            # A memoryview page (memory a Xen library mapped) slices to
            # views: copy out, as an mmap's slice does.
            data = bytes(mem[RING_REQ_OFFSET + start : RING_REQ_OFFSET + start + first])
        if used > first:  # wrapped round to the queue's start
            data += mem[RING_REQ_OFFSET : RING_REQ_OFFSET + used - first]
        budget = self.allowance() if self.allowance is not None else -1
        if budget == 0:
            return None
        keep = self._check_framing(data, budget)
        if keep < len(data):
            # Stop at a bad header (the messages before it are served) or
            # after the requests the connection may take now (the rest stay
            # in the ring).
            data = data[:keep]
            used = keep
        words[W_REQ_CONS] = (cons + used) & RING_INDEX_MASK
        self._consumed = True  # signalled by flush_notify() or the next write
        return data if data else (b"" if self.doomed else None)

    def _check_framing(self, data: bytes, budget: int = -1) -> int:
        """Follow message boundaries; returns how many bytes to take.

        Stops before a header announcing too much (dooming the ring) and
        after ``budget`` complete messages (-1: no limit).  Not
        ``wire.iter_frames``: a header or payload may be split between two
        reads of the ring, so the walk carries its place from one call to the
        next (``_hdr``, ``_body_left``).
        """
        pos = 0
        size = len(data)
        hdr = self._hdr
        while pos < size:
            if not self._body_left and not hdr and size - pos >= HEADER_SIZE:
                # A whole header at hand (the common case): no copying.
                length: int = _LEN.unpack_from(data, pos + _LEN_OFFSET)[0]
                if length > PAYLOAD_MAX:
                    self.doomed = RING_ERROR_PROTO
                    return pos
                end = pos + HEADER_SIZE + length
                if end > size:
                    self._body_left = end - size
                    return size
                pos = end
                budget -= 1
                if budget == 0:
                    return pos
                continue
            if self._body_left:
                step = min(self._body_left, size - pos)
                self._body_left -= step
                pos += step
                if not self._body_left:
                    budget -= 1
                    if budget == 0:
                        return pos
                continue
            need = HEADER_SIZE - len(hdr)
            step = min(need, size - pos)
            hdr += data[pos : pos + step]
            pos += step
            if len(hdr) == HEADER_SIZE:
                length = int.from_bytes(hdr[_LEN_OFFSET:], sys.byteorder)
                if length > PAYLOAD_MAX:
                    self.doomed = RING_ERROR_PROTO
                    return pos - HEADER_SIZE if pos >= HEADER_SIZE else 0
                hdr.clear()
                self._body_left = length
                if not length:
                    budget -= 1
                    if budget == 0:
                        return pos
        return size

    def write(self, buffers: Sequence[bytes | memoryview]) -> int:
        """Copy as much of ``buffers`` as fits in the response queue; bytes taken.

        A ring doomed by what the guest wrote in its request queue still
        takes the replies to the requests before the bad part (they go out
        as the connection closes, before the error indicator): C answered
        each of them before it read further.  Broken response offsets are
        refused below.
        """
        words = self._words
        if words[W_CONNECTION] != RING_CONNECTED:
            return 0
        cons = words[W_RSP_CONS]
        prod = words[W_RSP_PROD]
        used = (prod - cons) & RING_INDEX_MASK
        if used > RING_SIZE:
            self.doomed = RING_ERROR_RINGIDX
            raise OSError("inconsistent response queue offsets")
        space = RING_SIZE - used
        mem = self._mem
        written = 0
        for buf in buffers:
            if not space:
                break
            view = memoryview(buf)
            length = len(view)
            pos = 0
            while pos < length and space:
                start = (prod + written) % RING_SIZE
                step = min(space, RING_SIZE - start, length - pos)
                mem[RING_RSP_OFFSET + start : RING_RSP_OFFSET + start + step] = view[
                    pos : pos + step
                ]
                pos += step
                written += step
                space -= step
            if pos < length:
                break
        if written:
            # Data first, then the producer offset that publishes it.
            words[W_RSP_PROD] = (prod + written) & RING_INDEX_MASK
            self._consumed = False
            self._notify()
        return written

    def flush_notify(self) -> None:
        """Signal request bytes consumed and not yet signalled (end of a turn)."""
        if self._consumed:
            self._consumed = False
            self._notify()

    def sync_framing(self, data: bytes) -> None:
        """Account for request bytes taken from the ring by someone else (live update)."""
        self._check_framing(data)

    def reset_framing(self) -> None:
        self._hdr.clear()
        self._body_left = 0

    def close(self) -> None:
        """Set the error indicator if the ring is doomed; the page itself stays mapped.

        The page belongs to the domain's ring record (it outlives connections:
        reconnection and INTRODUCE make a new one on the same page).
        """
        if self.doomed and self.report_errors and self.page.error == RING_ERROR_NONE:
            self.page.set_word(RING_ERROR, self.doomed)
            self._notify()
