"""A raw-socket Xenstore client that records what a daemon sends back.

It speaks the wire protocol byte by byte (xs_wire.h ``struct xsd_sockmsg``):
it sends a header and a payload with any ``req_id``, ``tx_id`` or even a
lying ``len``, and sorts the incoming messages into replies and watch
events.  Nothing is interpreted, so the same client drives the C reference
and pyxenstored and the recordings can be compared.

Replies to one connection come back in request order, so :meth:`request`
simply waits for the next non-event message.  Events caused by requests on
*other* connections are collected by :meth:`sync`: it sends a request that
changes nothing and reads until its reply, and every event queued for this
connection before that request was handled arrives first.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field

from pyxenstored.wire import HEADER, HEADER_SIZE, MsgType

DEFAULT_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
SPLIT_PAUSE = 0.002

# GET_DOMAIN_PATH is answered by every daemon version, needs no privilege and
# touches no state (no generation count, no transaction): a harmless barrier.
SYNC_TYPE = int(MsgType.GET_DOMAIN_PATH)
SYNC_PAYLOAD = b"0\0"
SYNC_REQ_ID = 0x5EC0DE


class ConnectionClosed(Exception):
    """The daemon closed the connection (or it broke) while we waited."""


class ReplyTimeout(Exception):
    """No complete message arrived within the timeout."""


@dataclass(slots=True, frozen=True)
class Message:
    """One message as received: the raw header fields and the payload."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes


@dataclass(slots=True)
class RawClient:
    """One unix-socket connection to a xenstored."""

    path: str
    timeout: float = DEFAULT_TIMEOUT
    sock: socket.socket = field(init=False)
    events: list[Message] = field(default_factory=list)
    closed: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _next_req: int = 1

    def __post_init__(self) -> None:
        # C listens with a backlog of 1: a burst of connects is refused until
        # the daemon has accepted the earlier ones, so retry for a while.
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(self.path)
                return
            except (ConnectionRefusedError, BlockingIOError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)

    # --- sending --------------------------------------------------------------

    def send(
        self,
        msg_type: int,
        payload: bytes,
        *,
        tx_id: int = 0,
        req_id: int | None = None,
        length: int | None = None,
        chunk: int = 0,
    ) -> int:
        """Send one message; ``length`` overrides the header's ``len`` field.

        ``chunk`` > 0 sends the bytes in pieces of that size with short
        pauses, so the daemon sees the message split across many reads.
        """
        if req_id is None:
            req_id = self._next_req
            self._next_req += 1
        hdr_len = len(payload) if length is None else length
        data = HEADER.pack(msg_type, req_id, tx_id, hdr_len) + payload
        try:
            if chunk <= 0:
                self.sock.sendall(data)
            for pos in range(0, len(data) if chunk > 0 else 0, max(chunk, 1)):
                self.sock.sendall(data[pos : pos + chunk])
                time.sleep(SPLIT_PAUSE)
        except OSError as exc:
            self.closed = True
            raise ConnectionClosed(str(exc)) from exc
        return req_id

    def send_bytes(self, data: bytes) -> None:
        """Send raw bytes (several messages at once, for pipelining)."""
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.closed = True
            raise ConnectionClosed(str(exc)) from exc

    # --- receiving ------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReplyTimeout("no reply within timeout")
        ready, _, _ = select.select([self.sock], [], [], remaining)
        if not ready:
            raise ReplyTimeout("no reply within timeout")
        try:
            chunk = self.sock.recv(65536)
        except OSError as exc:
            self.closed = True
            raise ConnectionClosed(str(exc)) from exc
        if not chunk:
            self.closed = True
            raise ConnectionClosed("connection closed by daemon")
        self._buf += chunk

    def _next_message(self, deadline: float) -> Message:
        while len(self._buf) < HEADER_SIZE:
            self._fill(deadline)
        msg_type, req_id, tx_id, length = HEADER.unpack_from(self._buf)
        while len(self._buf) < HEADER_SIZE + length:
            self._fill(deadline)
        payload = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])
        del self._buf[: HEADER_SIZE + length]
        return Message(msg_type, req_id, tx_id, payload)

    def read_reply(self, timeout: float | None = None) -> Message:
        """The next reply; watch events met on the way go to :attr:`events`."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self._next_message(deadline)
            if msg.type == MsgType.WATCH_EVENT:
                self.events.append(msg)
            else:
                return msg

    def request(
        self,
        msg_type: int,
        payload: bytes,
        *,
        tx_id: int = 0,
        req_id: int | None = None,
        length: int | None = None,
        timeout: float | None = None,
    ) -> Message:
        self.send(msg_type, payload, tx_id=tx_id, req_id=req_id, length=length)
        return self.read_reply(timeout)

    def sync(self, timeout: float | None = None) -> list[Message]:
        """Collect every event queued for us so far; returns and clears them."""
        if not self.closed:
            reply = self.request(SYNC_TYPE, SYNC_PAYLOAD, req_id=SYNC_REQ_ID, timeout=timeout)
            if reply.req_id != SYNC_REQ_ID:
                raise AssertionError(f"out-of-order reply while syncing: {reply}")
        events, self.events = self.events, []
        return events

    def is_closed_by_peer(self, timeout: float = 1.0) -> bool:
        """Whether the daemon closes the connection within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except ConnectionClosed:
            return True
        except ReplyTimeout:
            return False

    def close(self) -> None:
        self.closed = True
        self.sock.close()


# --- a guest domain on a shared ring ---------------------------------------------------

RING_SIZE = 1024
PAGE_SIZE = 4096
_REQ_CONS, _REQ_PROD, _RSP_CONS, _RSP_PROD = 2048, 2052, 2056, 2060
_U32 = struct.Struct("=I")
POLL_PAUSE = 0.0002


def create_ring_page(ring_dir: str, domid: int) -> None:
    """The zeroed page ``DIR/ring-dom<domid>`` a guest has before INTRODUCE."""
    path = os.path.join(ring_dir, f"ring-dom{domid}")
    with open(path, "wb") as f:
        f.write(bytes(PAGE_SIZE))


class RingClient(RawClient):
    """A guest domain talking through its ring page (xenstore-ring.txt).

    Both daemons follow the test shim's conventions: the page is the file
    ``DIR/ring-dom<domid>`` and a guest wakes the daemon by writing its port
    number to the FIFO ``DIR/evtchn``.  Notifications towards the guest are
    not delivered, so the guest polls its response ring.
    """

    def __init__(self, ring_dir: str, domid: int, port: int, timeout: float = DEFAULT_TIMEOUT):
        # RawClient's fields, without a socket
        self.path = ring_dir
        self.timeout = timeout
        self.events = []
        self.closed = False
        self._buf = bytearray()
        self._next_req = 1
        self._fd = os.open(os.path.join(ring_dir, f"ring-dom{domid}"), os.O_RDWR)
        self._page = mmap.mmap(self._fd, PAGE_SIZE, mmap.MAP_SHARED)
        self._evtchn = os.open(os.path.join(ring_dir, "evtchn"), os.O_WRONLY | os.O_NONBLOCK)
        self._port = port

    def _word(self, offset: int) -> int:
        value: int = _U32.unpack_from(self._page, offset)[0]
        return value

    def _set_word(self, offset: int, value: int) -> None:
        _U32.pack_into(self._page, offset, value & 0xFFFFFFFF)

    def _kick(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._evtchn, _U32.pack(self._port))

    def send_bytes(self, data: bytes) -> None:
        deadline = time.monotonic() + self.timeout
        view = memoryview(data)
        while view:
            cons, prod = self._word(_REQ_CONS), self._word(_REQ_PROD)
            space = RING_SIZE - ((prod - cons) & 0xFFFFFFFF)
            if space <= 0:
                self._kick()
                if time.monotonic() > deadline:
                    raise ReplyTimeout("request ring stays full")
                time.sleep(POLL_PAUSE)
                continue
            idx = prod % RING_SIZE
            n = min(space, RING_SIZE - idx, len(view))
            self._page[idx : idx + n] = view[:n]
            self._set_word(_REQ_PROD, prod + n)
            view = view[n:]
        self._kick()

    def send(
        self,
        msg_type: int,
        payload: bytes,
        *,
        tx_id: int = 0,
        req_id: int | None = None,
        length: int | None = None,
        chunk: int = 0,
    ) -> int:
        if req_id is None:
            req_id = self._next_req
            self._next_req += 1
        hdr_len = len(payload) if length is None else length
        data = HEADER.pack(msg_type, req_id, tx_id, hdr_len) + payload
        step = chunk if chunk > 0 else len(data)
        for pos in range(0, len(data), max(step, 1)):
            self.send_bytes(data[pos : pos + step])
            if chunk > 0:
                time.sleep(SPLIT_PAUSE)
        return req_id

    def _fill(self, deadline: float) -> None:
        while True:
            cons, prod = self._word(_RSP_CONS), self._word(_RSP_PROD)
            avail = (prod - cons) & 0xFFFFFFFF
            if avail:
                idx = cons % RING_SIZE
                n = min(avail, RING_SIZE - idx)
                self._buf += self._page[RING_SIZE + idx : RING_SIZE + idx + n]
                self._set_word(_RSP_CONS, cons + n)
                self._kick()  # the daemon may be waiting for room
                return
            if time.monotonic() > deadline:
                raise ReplyTimeout("no reply within timeout")
            time.sleep(POLL_PAUSE)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._page.close()
            os.close(self._fd)
            os.close(self._evtchn)
