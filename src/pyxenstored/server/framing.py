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
        # Immutable ``bytes`` as long as a read holds whole messages (no
        # copy at all); a ``bytearray`` while a partial message accumulates.
        self._buf: bytes | bytearray = b""
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer."""
        buf = self._buf
        pos = self._pos
        if pos == len(buf):
            self._buf = bytes(data)
        elif isinstance(buf, bytearray):
            if pos:
                # Drop what was consumed before growing: moves only the tail.
                del buf[:pos]
            buf += data
        else:
            grown = bytearray(buf[pos:])
            grown += data
            self._buf = grown
        if pos:
            self._pos = 0

    def next_message(self) -> Message | None:
        """The next complete message, or ``None`` if it is not all here yet.

        Raises :class:`OversizedMessage` as soon as a header with a too large
        ``len`` is complete; the reader is unusable afterwards (the stream is
        out of sync and the connection must be closed).
        """
        batch = self.take(1)
        return batch[0] if batch else None

    def take(self, limit: int) -> list[Message]:
        """Up to ``limit`` complete messages (fewer if not all here yet).

        Messages before an oversized header are returned first; the next
        call raises :class:`OversizedMessage`.
        """
        buf = self._buf
        pos = self._pos
        end = len(buf)
        out: list[Message] = []
        append = out.append
        # wire.iter_frames' walk, written out: this is the request path, and a
        # generator per call costs about 0.9 us per message here (measured with
        # next_message, which takes one message per call).
        while limit and end - pos >= HEADER_SIZE:
            type_, req_id, tx_id, length = _unpack_header(buf, pos)
            if length > PAYLOAD_MAX:
                if out:
                    break
                self._pos = pos
                raise OversizedMessage(length)
            start = pos + HEADER_SIZE
            stop = start + length
            if stop > end:
                break
            payload = buf[start:stop]
            append(
                (type_, req_id, tx_id, payload if isinstance(payload, bytes) else bytes(payload))
            )
            pos = stop
            limit -= 1
        self._pos = pos
        return out

    def buffered(self) -> int:
        """Number of bytes received but not yet returned as messages."""
        return len(self._buf) - self._pos

    def pending(self) -> bytes:
        """The unconsumed bytes (a partial message, or held-back messages)."""
        return bytes(self._buf[self._pos :])
