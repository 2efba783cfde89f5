"""One client connection: input reassembly, output queue, back pressure.

The connection is transport-agnostic: the transport only reads and writes
bytes.  Here live the rules the C daemon applies to every connection
(digest 2.1, 4.5, 8):

* replies are queued in request order; watch events after them;
* a watch event identical (path and token) to one still queued -- even if its
  transmission has started -- is dropped (not for ``@`` paths);
* the output queue is bounded: a connection whose queue holds ``out_limit``
  bytes or more is not read (its requests wait in the socket), and events
  that would push it past the limit are dropped, as C drops events that
  exceed the receiver's memory quota;
* a connection with an ``outstanding`` quota is not read while that many of
  its requests are unanswered -- a request whose watch events are still
  queued somewhere stays outstanding until they are sent;
* unprivileged receivers drop events not started within the watch-event
  timeout.

Everything pending (unparsed input, queued output from the first unsent
byte) can be read back for a live update dump.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from pyxenstored.server.framing import MessageReader
from pyxenstored.server.transport import Transport
from pyxenstored.wire import HEADER, HEADER_SIZE, PAYLOAD_MAX, MsgType

log = logging.getLogger("pyxenstored.server")

_pack_header = HEADER.pack
_WATCH_EVENT = int(MsgType.WATCH_EVENT)
_ERROR = int(MsgType.ERROR)
# Buffers handed to one transport write: enough to batch pipelined replies.
_WRITE_BATCH = 64
# Requests taken from the input in one go (their replies are sent before the
# next batch is taken: small enough for a pipelining client to overlap with
# us, large enough to save system calls), and the largest message.
_BATCH = 16
_MAX_MESSAGE = HEADER_SIZE + PAYLOAD_MAX


class PendingRequest:
    """A request that stays outstanding until its reply and events are sent."""

    __slots__ = ("conn", "refs")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.refs = 1  # the reply itself

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.conn.request_done()


Charge = Callable[[str, int, bool], bool]
"""``charge(quota_name, delta, check)``: False when a checked charge is refused."""

# Output queue entry: (message bytes, event payload for de-duplication or
# None for replies, request kept outstanding by it, deadline or 0.0).
_Entry = tuple[bytes, bytes | memoryview | None, PendingRequest | None, float]
# Event payloads up to this length are their own de-duplication key (see queue_event).
_KEY_COPY_MAX = 256


class Connection:
    """State of one client, independent of how its bytes travel."""

    __slots__ = (
        "conn_id",
        "domid",
        "transport",
        "reader",
        "out_limit",
        "outstanding_limit",
        "event_timeout",
        "outstanding",
        "closed",
        "wake",
        "charge",
        "_out",
        "_out_offset",
        "out_bytes",
        "_event_keys",
        "_timed_events",
        "_dropped_events",
    )

    def __init__(
        self,
        conn_id: int,
        domid: int,
        transport: Transport,
        *,
        out_limit: int,
        outstanding_limit: int | None = None,
        event_timeout: float = 0.0,
        wake: Callable[[Connection], None] | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.domid = domid
        self.transport = transport
        self.reader = MessageReader()
        self.out_limit = out_limit
        self.outstanding_limit = outstanding_limit
        # Seconds an event may wait before transmission (0 = forever).
        self.event_timeout = event_timeout
        self.outstanding = 0
        self.closed = False
        # Called when a blocked connection may proceed again.
        self.wake: Callable[[Connection], None] = wake or _no_wake
        # Domain accounting in the store (``outstanding``/``memory``) for
        # connections of unprivileged domains; None for the others.
        self.charge: Charge | None = None
        self._out: deque[_Entry] = deque()
        self._out_offset = 0  # bytes of _out[0] already written
        # Bytes queued for output, including any already partly written.
        self.out_bytes = 0
        self._event_keys: dict[bytes | memoryview, int] = {}
        self._timed_events = 0
        self._dropped_events = 0

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} domid={self.domid}>"

    # --- state -------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def can_process(self) -> bool:
        """Whether the next request may be taken (back pressure rules)."""
        if self.closed or self.out_bytes >= self.out_limit:
            return False
        limit = self.outstanding_limit
        return limit is None or self.outstanding < limit

    def allowance(self) -> int:
        """How many requests may be taken now without passing the limits.

        As many as their largest possible replies fit in the room left
        (at most a batch), but at least one while below the limit -- C too
        goes over by one message.  Never more than the outstanding quota.
        """
        if self.closed:
            return 0
        room = self.out_limit - self.out_bytes
        if room <= 0:
            return 0
        count = room // _MAX_MESSAGE
        count = 1 if count == 0 else min(count, _BATCH)
        limit = self.outstanding_limit
        if limit is not None:
            count = max(0, min(count, limit - self.outstanding))
        return count

    # --- queueing ----------------------------------------------------------

    def open_request(self) -> PendingRequest | None:
        """Count a request outstanding until its reply and events are sent.

        None when nothing is counted on this connection.
        """
        charge = self.charge
        if self.outstanding_limit is None and charge is None:
            return None
        self.outstanding += 1
        if charge is not None:
            charge("outstanding", 1, False)
        return PendingRequest(self)

    def queue_reply(
        self,
        type_: int,
        req_id: int,
        tx_id: int,
        payload: bytes,
        token: PendingRequest | None = None,
        *,
        opened: bool = False,
    ) -> PendingRequest | None:
        """Queue a reply; returns the request token when outstanding is counted.

        ``opened``: :meth:`open_request` was already called and gave ``token``
        (events of the request were queued before its reply).
        """
        length = len(payload)
        if length > PAYLOAD_MAX:
            # C replaces an over-long reply by E2BIG (core.c:send_reply).
            type_, payload, length = _ERROR, b"E2BIG\0", 6
        data = _pack_header(type_, req_id, tx_id, length) + payload
        if not opened:
            token = self.open_request()
        if self.charge is not None:
            self.charge("memory", length + HEADER_SIZE, False)
        self._out.append((data, None, token, 0.0))
        self.out_bytes += length + HEADER_SIZE
        return token

    def queue_event(self, payload: bytes, origin: PendingRequest | None, now: float) -> bool:
        """Queue a watch event; False if it was dropped."""
        length = len(payload)
        if length > PAYLOAD_MAX:
            return False  # C silently drops over-long events
        dedup = payload[:1] != b"@"
        if dedup and payload in self._event_keys:
            return False
        if self.out_bytes + length + HEADER_SIZE > self.out_limit:
            self._dropped_events += 1
            if self._dropped_events == 1 or self._dropped_events % 1000 == 0:
                log.warning(
                    "connection %d (domid %d) is not reading: %d watch event(s) dropped",
                    self.conn_id,
                    self.domid,
                    self._dropped_events,
                )
            return False
        charge = self.charge
        if charge is not None and not charge("memory", length + HEADER_SIZE, True):
            return False  # over the receiver's memory quota: C drops the event
        data = _pack_header(_WATCH_EVENT, 0, 0, length) + payload
        deadline = 0.0
        if self.event_timeout > 0:
            deadline = now + self.event_timeout
            self._timed_events += 1
        if origin is not None:
            origin.refs += 1
        # The de-duplication key of a long event is a view of the queued
        # message: keeping the payload too would hold it twice, and only the
        # message is charged (a view equals and hashes as the bytes).  A
        # short payload is cheaper to keep than a view (about 180 bytes).
        key: bytes | memoryview | None = None
        if dedup:
            key = payload if length <= _KEY_COPY_MAX else memoryview(data)[HEADER_SIZE:]
        self._out.append((data, key, origin, deadline))
        self.out_bytes += len(data)
        if key is not None:
            self._event_keys[key] = 1
        return True

    def request_done(self) -> None:
        """A request of this connection is no longer outstanding."""
        self.outstanding -= 1
        if self.closed:
            return  # the charges were undone when it closed (see close_accounting)
        if self.charge is not None:
            self.charge("outstanding", -1, False)
        limit = self.outstanding_limit
        if limit is not None and self.outstanding == limit - 1:
            self.wake(self)

    def close_accounting(self) -> None:
        """Undo this connection's charges at close (its queue is discarded next)."""
        if self.charge is not None and self.outstanding > 0:
            self.charge("outstanding", -self.outstanding, False)

    # --- output ------------------------------------------------------------

    def flush(self) -> bool:
        """Write queued output until done or the transport is full.

        Returns True when the queue is empty.  Raises ``OSError`` when the
        transport is broken.
        """
        out = self._out
        write = self.transport.write
        if len(out) == 1 and not self._out_offset:
            # The common case of one reply: no batching, no partial state.
            entry = out[0]
            data = entry[0]
            sent = write((data,))
            if sent == len(data):
                out.popleft()
                was_full = self.out_bytes >= self.out_limit
                self.out_bytes -= sent
                if (
                    entry[1] is not None
                    or entry[2] is not None
                    or entry[3]
                    or self.charge is not None
                ):
                    self._retire(entry)
                if was_full and self.out_bytes < self.out_limit and not self.closed:
                    self.wake(self)
                return True
            if sent <= 0:
                return False
            self._consume(sent)
        while out:
            offset = self._out_offset
            bufs: list[bytes | memoryview]
            if len(out) == 1:
                bufs = [out[0][0]]
            else:
                bufs = [entry[0] for _, entry in zip(range(_WRITE_BATCH), out, strict=False)]
            if offset:
                bufs[0] = memoryview(bufs[0])[offset:]
            sent = write(bufs)
            if sent <= 0:
                return False
            self._consume(sent)
        return True

    def consume_sent(self, sent: int) -> None:
        """``sent`` bytes of the queue's head went out outside :meth:`flush`."""
        if sent > 0:
            self._consume(sent)

    def _consume(self, sent: int) -> None:
        """Drop ``sent`` written bytes from the head of the queue."""
        out = self._out
        was_full = self.out_bytes >= self.out_limit
        self.out_bytes -= sent
        offset = self._out_offset + sent
        while out:
            head = out[0]
            size = len(head[0])
            if offset < size:
                break
            offset -= size
            out.popleft()
            if head[1] is not None or head[2] is not None or head[3] or self.charge is not None:
                self._retire(head)
        self._out_offset = offset
        if was_full and self.out_bytes < self.out_limit and not self.closed:
            self.wake(self)

    def _retire(self, entry: _Entry) -> None:
        """Bookkeeping for an entry leaving the queue (sent or discarded)."""
        data, key, token, deadline = entry
        if self.charge is not None:
            self.charge("memory", -len(data), False)
        if key is not None:
            del self._event_keys[key]
        if deadline:
            self._timed_events -= 1
        if token is not None:
            token.release()

    def expire_events(self, now: float) -> int:
        """Drop queued events whose deadline passed before transmission began."""
        first = self.next_deadline()
        if not first or first > now:
            return 0  # the common case costs no scan of the queue
        keep: deque[_Entry] = deque()
        dropped = 0
        for index, entry in enumerate(self._out):
            deadline = entry[3]
            # The head may be partly written: it must go out whole.
            started = index == 0 and self._out_offset > 0
            if deadline and deadline <= now and not started:
                self.out_bytes -= len(entry[0])
                self._retire(entry)
                dropped += 1
            else:
                keep.append(entry)
        self._out = keep
        if dropped:
            log.debug("connection %d: %d watch event(s) timed out", self.conn_id, dropped)
        return dropped

    def next_deadline(self) -> float:
        """Earliest event deadline in the queue, or 0.0 when none.

        Deadlines grow along the queue (each is its queueing time plus the
        same timeout), so the first one found is the earliest.
        """
        if not self._timed_events:
            return 0.0
        for index, entry in enumerate(self._out):
            if entry[3] and not (index == 0 and self._out_offset > 0):
                return entry[3]
        return 0.0

    # --- live update / teardown ---------------------------------------------

    def pending_input(self) -> bytes:
        """Input received but not yet processed (for a state dump)."""
        return self.reader.pending()

    def pending_output(self) -> bytes:
        """Output not yet written, from the first unsent byte (for a state dump)."""
        data = b"".join(entry[0] for entry in self._out)
        return data[self._out_offset :]

    def restore_output(self, data: bytes) -> None:
        """Queue raw bytes dumped by a live update (they go out first, as they are)."""
        if data:
            if self.charge is not None:
                self.charge("memory", len(data), False)
            self._out.append((data, None, None, 0.0))
            self.out_bytes += len(data)

    def discard_output(self) -> None:
        """Forget queued output, releasing what it holds."""
        out = self._out
        while out:
            self._retire(out.popleft())
        self._out_offset = 0
        self.out_bytes = 0


def _no_wake(conn: Connection) -> None:
    return None
