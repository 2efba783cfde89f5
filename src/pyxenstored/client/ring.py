"""The guest side of a xenstore shared ring, on the simulated hypervisor.

The ring page layout is that of ``xenstore-ring.txt`` (xen.git docs/misc): two
1024-byte circular byte queues (requests at 0, responses at 1024) with
free-running u32 consumer/producer offsets at 2048..2063, then the server
feature bitmap (2064), the connection state (2068), the error indicator (2072)
and the event-channel port (2076).  All fields are native byte order.

Simulated hypervisor conventions (those of ``server/hypervisor.py``): the page is
the 4096-byte file ``DIR/ring-dom<domid>`` that both sides map; a guest kicks
the daemon by writing a native u32 port number to the FIFO ``DIR/evtchn``;
the daemon may wake a guest by writing to the FIFO ``DIR/notify-dom<domid>``
when it exists.  A daemon that never notifies (the C reference under its shim)
still works: the guest polls the page, backing off while it is idle.

:func:`map_ring_page` maps the page (a :class:`pyxenstored.ringpage.RingPage`, the
layout both sides share); :class:`RingTransport` is the guest's byte transport.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import stat
import struct
import time
from collections.abc import Callable

from pyxenstored.ringpage import RingPage, queue_used
from pyxenstored.wire import (
    FEATURE_RECONNECTION,
    RING_CONNECTED,
    RING_CONNECTION,
    RING_ERROR_COMM,
    RING_ERROR_NONE,
    RING_ERROR_PROTO,
    RING_ERROR_RINGIDX,
    RING_EVTCHN_PORT,
    RING_INDEX_MASK,
    RING_PAGE_SIZE,
    RING_RECONNECT,
    RING_REQ_CONS,
    RING_REQ_OFFSET,
    RING_REQ_PROD,
    RING_RSP_CONS,
    RING_RSP_OFFSET,
    RING_RSP_PROD,
    RING_SIZE,
)

from .transport import ClientConnectionError

_U32 = struct.Struct("=I")

ERROR_TEXT = {
    RING_ERROR_NONE: "no error",
    RING_ERROR_COMM: "communication problem",
    RING_ERROR_RINGIDX: "inconsistent producer or consumer offset",
    RING_ERROR_PROTO: "protocol violation",
}

# Idle back-off while waiting on the page: a few yields, then sleeps that
# double up to a cap.  The cap is short while the daemon has never sent a
# notification (it may be one that never does), longer once it has shown it
# notifies; polling never stops, so a lost notification costs only a delay.
_SPINS = 64
_FIRST_SLEEP = 20e-6
_POLL_CAP = 1e-3
_NOTIFIED_CAP = 50e-3


def ring_page_path(ring_dir: str, domid: int) -> str:
    return os.path.join(ring_dir, f"ring-dom{domid}")


def evtchn_path(ring_dir: str) -> str:
    return os.path.join(ring_dir, "evtchn")


def notify_path(ring_dir: str, domid: int) -> str:
    return os.path.join(ring_dir, f"notify-dom{domid}")


def create_ring_page(ring_dir: str, domid: int, evtchn_port: int = 0) -> str:
    """Make the guest's page ``DIR/ring-dom<domid>`` as a guest would before INTRODUCE.

    A missing file is created zeroed; an existing one is grown to a page if
    short (never truncated: a daemon may have it mapped).  A non-zero
    ``evtchn_port`` is stored at offset 2076.  Returns the file's path.
    """
    path = ring_page_path(ring_dir, domid)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < RING_PAGE_SIZE:
            os.ftruncate(fd, RING_PAGE_SIZE)
        if evtchn_port:
            os.pwrite(fd, _U32.pack(evtchn_port & RING_INDEX_MASK), RING_EVTCHN_PORT)
    finally:
        os.close(fd)
    return path


def map_ring_page(path: str) -> RingPage:
    """Map an existing page file ``path`` shared with the daemon."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise ClientConnectionError(f"cannot open ring page {path}: {exc}") from exc
    try:
        if os.fstat(fd).st_size < RING_PAGE_SIZE:
            raise ClientConnectionError(f"ring page {path} is shorter than {RING_PAGE_SIZE} bytes")
        return RingPage(mmap.mmap(fd, RING_PAGE_SIZE, mmap.MAP_SHARED))
    finally:
        os.close(fd)


class RingTransport:
    """The guest end of a shared ring: requests out, replies and events in."""

    def __init__(self, ring_dir: str, domid: int, port: int, notify: bool = True) -> None:
        self.ring_dir = ring_dir
        self.domid = domid
        self.port = port
        self.page = map_ring_page(ring_page_path(ring_dir, domid))
        self._kick_word = _U32.pack(port & RING_INDEX_MASK)
        try:
            self._evtchn = os.open(evtchn_path(ring_dir), os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            self.page.close()
            reason = "no daemon has it open" if exc.errno == errno.ENXIO else str(exc)
            raise ClientConnectionError(
                f"cannot open event channel {evtchn_path(ring_dir)}: {reason}"
            ) from exc
        self._notify: int | None = self._open_notify() if notify else None
        self._notified = False
        self._rx = bytearray()  # responses taken while a send was blocked

    # --- event channel ----------------------------------------------------

    def _open_notify(self) -> int | None:
        """Read end of ``notify-dom<domid>``, created if absent; None if impossible."""
        path = notify_path(self.ring_dir, self.domid)
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            if not stat.S_ISFIFO(os.stat(path).st_mode):
                return None
        except OSError:
            return None
        try:
            # Read-write (Linux): holding a writer ourselves means the FIFO
            # never reports end-of-file after a daemon closes its end, which
            # would make every select() return at once.
            return os.open(path, os.O_RDWR | os.O_NONBLOCK)
        except OSError:
            return None

    def kick(self) -> None:
        """Signal the daemon's event channel."""
        try:
            os.write(self._evtchn, self._kick_word)
        except BlockingIOError:
            # FIFO full: the daemon has kicks pending already and will scan
            # the ring when it reads them.
            pass
        except OSError as exc:
            raise ClientConnectionError(f"event channel write failed: {exc}") from exc

    def _drain_notify(self) -> None:
        assert self._notify is not None
        try:
            while os.read(self._notify, 4096):
                self._notified = True
        except BlockingIOError:
            pass  # drained

    def _wait(
        self, ready: Callable[[], bool], deadline: float | None, check_error: bool = True
    ) -> bool:
        """Wait until ``ready()``; False when ``deadline`` (monotonic) passes first."""
        spins = 0
        delay = 0.0
        while not ready():
            if check_error:
                self.check_error()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if spins < _SPINS:
                spins += 1
                os.sched_yield()
                continue
            cap = _NOTIFIED_CAP if self._notified else _POLL_CAP
            delay = min(max(delay * 2, _FIRST_SLEEP), cap)
            if remaining is not None:
                delay = min(delay, remaining)
            if self._notify is not None:
                readable, _, _ = select.select([self._notify], [], [], delay)
                if readable:
                    self._drain_notify()
            else:
                time.sleep(delay)
        return True

    # --- state fields -------------------------------------------------------

    @property
    def server_features(self) -> int:
        return self.page.features

    def check_error(self) -> None:
        """Raise if the daemon has set the ring's error indicator."""
        err = self.page.error
        if err != RING_ERROR_NONE:
            text = ERROR_TEXT.get(err, "unknown error")
            raise ClientConnectionError(
                f"xenstored cut off the ring of domain {self.domid}: error indicator {err} ({text})"
            )

    def _connected(self) -> bool:
        # While a reconnection is in progress the guest must not touch the
        # queues (xenstore-ring.txt).
        return self.page.connection == RING_CONNECTED

    def reconnect(self, timeout: float | None = 10.0, force: bool = False) -> None:
        """Ask the daemon to reset the ring (connection state 1) and wait for 0.

        Only valid when the daemon advertises feature bit 0; ``force`` tries
        anyway.  Afterwards the queues are empty and the connection has no
        watches or transactions.
        """
        if not force and not self.server_features & FEATURE_RECONNECTION:
            raise ClientConnectionError("xenstored does not offer ring reconnection")
        self.page.set_word(RING_CONNECTION, RING_RECONNECT)
        self.kick()
        deadline = None if timeout is None else time.monotonic() + timeout
        # Meanwhile only the connection state counts (xenstore-ring.txt):
        # a ring cut off with an error may be revived this way.
        if not self._wait(self._connected, deadline, check_error=False):
            raise TimeoutError("xenstored did not finish the ring reconnection")
        self._rx.clear()

    # --- queues ---------------------------------------------------------------

    def _request_space(self) -> bool:
        if not self._connected():
            return False
        return queue_used(self.page.word(RING_REQ_CONS), self.page.word(RING_REQ_PROD)) < RING_SIZE

    def _response_ready(self) -> bool:
        if not self._connected():
            return False
        return self.page.word(RING_RSP_CONS) != self.page.word(RING_RSP_PROD)

    def _space_or_response(self) -> bool:
        return self._request_space() or self._response_ready()

    def send(self, data: bytes, timeout: float | None = None) -> None:
        """Copy ``data`` into the request queue, as many kicks as it takes."""
        view = memoryview(data)
        total = len(view)
        pos = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        mem = self.page.mem
        while pos < total:
            self.check_error()
            cons = self.page.word(RING_REQ_CONS)
            prod = self.page.word(RING_REQ_PROD)
            used = queue_used(cons, prod)
            if used > RING_SIZE:
                raise ClientConnectionError(
                    f"request queue offsets inconsistent (cons {cons}, prod {prod})"
                )
            space = RING_SIZE - used
            if space == 0 or not self._connected():
                # Full: let the daemon consume, then continue the message.
                # Meanwhile take its replies, so a daemon that stops reading
                # until they are consumed (outstanding quota) cannot deadlock.
                self.kick()
                if not self._wait(self._space_or_response, deadline):
                    raise TimeoutError("xenstored did not consume the request queue")
                if self._response_ready():
                    self._rx += self._take_responses()
                continue
            start = prod % RING_SIZE
            n = min(space, RING_SIZE - start, total - pos)
            mem[RING_REQ_OFFSET + start : RING_REQ_OFFSET + start + n] = view[pos : pos + n]
            # Data first, then the producer offset that publishes it.
            self.page.set_word(RING_REQ_PROD, prod + n)
            pos += n
        self.kick()

    def receive(self, timeout: float | None) -> bytes:
        """Everything in the response queue now (waiting up to ``timeout`` for some)."""
        if self._rx:
            data = bytes(self._rx)
            self._rx.clear()
            if self._response_ready():
                data += self._take_responses()
            return data
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._response_ready() and (
            timeout == 0 or not self._wait(self._response_ready, deadline)
        ):
            self.check_error()
            return b""
        return self._take_responses()

    def _take_responses(self) -> bytes:
        cons = self.page.word(RING_RSP_CONS)
        prod = self.page.word(RING_RSP_PROD)
        avail = queue_used(cons, prod)
        if avail > RING_SIZE:
            raise ClientConnectionError(
                f"response queue offsets inconsistent (cons {cons}, prod {prod})"
            )
        mem = self.page.mem
        start = cons % RING_SIZE
        first = min(avail, RING_SIZE - start)
        chunk = mem[RING_RSP_OFFSET + start : RING_RSP_OFFSET + start + first]
        data = chunk.tobytes() if isinstance(chunk, memoryview) else chunk
        if avail > first:  # the bytes wrapped round to the queue's start
            data += mem[RING_RSP_OFFSET : RING_RSP_OFFSET + avail - first]
        self.page.set_word(RING_RSP_CONS, cons + avail)
        if self._notified:
            # A daemon that notifies would otherwise fill the FIFO while
            # replies are always ready and we never get to wait on it.
            self._drain_notify()
        # xenstore-ring.txt: every update of the page is signalled.  (Linux
        # only signals when the queue was full; a daemon that writes whole
        # messages only would then wait for ever on a nearly full queue.)
        self.kick()
        return data

    def close(self) -> None:
        os.close(self._evtchn)
        if self._notify is not None:
            os.close(self._notify)
        self.page.close()
