"""Incremental message framing: bytes in, complete Xenstore messages out.

Sans-I/O in the manner of h11: a transport hands whatever bytes it read to
:meth:`MessageReader.feed` (any split of messages across reads, many
messages per read), and :meth:`MessageReader.next_message` returns one
complete ``(type, req_id, tx_id, payload)`` at a time, or ``None`` when more
bytes are needed.  The caller may stop taking messages at any point (back
pressure); the unconsumed bytes stay buffered and are what a live update
dumps as the connection's pending input.

Copying stays linear: the buffer is compacted at most once per ``feed``, and
what is moved then is only the unconsumed tail.
"""

from __future__ import annotations

from pyxenstored.wire import HEADER, HEADER_SIZE, PAYLOAD_MAX

Message = tuple[int, int, int, bytes]
"""``(type, req_id, tx_id, payload)`` of one complete message."""

_unpack_header = HEADER.unpack_from


class OversizedMessage(Exception):
    """A header announced a payload longer than the protocol allows."""

    def __init__(self, length: int) -> None:
        super().__init__(f"message payload length {length} exceeds {PAYLOAD_MAX}")
        self.length = length


class MessageReader:
    """Reassembles messages from a byte stream."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer."""
        if self._pos:
            # Drop what was consumed before growing: moves only the tail.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_message(self) -> Message | None:
        """The next complete message, or ``None`` if it is not all here yet.

        Raises :class:`OversizedMessage` as soon as a header with a too large
        ``len`` is complete; the reader is unusable afterwards (the stream is
        out of sync and the connection must be closed).
        """
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < HEADER_SIZE:
            return None
        type_, req_id, tx_id, length = _unpack_header(buf, pos)
        if length > PAYLOAD_MAX:
            raise OversizedMessage(length)
        end = pos + HEADER_SIZE + length
        if end > len(buf):
            return None
        payload = bytes(buf[pos + HEADER_SIZE : end])
        self._pos = end
        return type_, req_id, tx_id, payload

    def buffered(self) -> int:
        """Number of bytes received but not yet returned as messages."""
        return len(self._buf) - self._pos

    def pending(self) -> bytes:
        """The unconsumed bytes (a partial message, or held-back messages)."""
        return bytes(self._buf[self._pos :])
