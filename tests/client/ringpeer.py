"""A stand-in for the daemon's side of a shared ring, for daemon-free client tests.

It maps the same page file as the client and works the queues the other way
round: it consumes the request queue and produces into the response queue,
honouring the free-running offsets, and it owns the reading end of the
``evtchn`` FIFO so the client's kicks can be counted.  The field offsets are
written out here from ``reference/xenstore-ring.txt`` on purpose, not taken
from the client module under test.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Callable

RING = 1024
REQ, RSP = 0, 1024
REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD = 2048, 2052, 2056, 2060
FEATURES, CONNECTION, ERROR = 2064, 2068, 2072
MASK = 0xFFFFFFFF
HDR = struct.Struct("=IIII")

Handler = Callable[[int, int, int, bytes], bytes]


class RingPeer:
    """The server end of ``DIR/ring-dom<domid>`` plus the ``DIR/evtchn`` FIFO."""

    def __init__(self, ring_dir: str, domid: int) -> None:
        path = os.path.join(ring_dir, f"ring-dom{domid}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, 4096)
        self.mem = mmap.mmap(fd, 4096, mmap.MAP_SHARED)
        os.close(fd)
        self.words = memoryview(self.mem)[2048:4096].cast("I")
        fifo = os.path.join(ring_dir, "evtchn")
        os.mkfifo(fifo, 0o600)
        self.evtchn = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.kicks: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, off: int) -> int:
        value: int = self.words[(off - 2048) // 4]
        return value

    def set(self, off: int, value: int) -> None:
        self.words[(off - 2048) // 4] = value & MASK

    def set_offsets(self, req: int, rsp: int) -> None:
        """Start both queues empty at the given free-running offsets."""
        for off, value in ((REQ_CONS, req), (REQ_PROD, req), (RSP_CONS, rsp), (RSP_PROD, rsp)):
            self.set(off, value)

    def read_kicks(self) -> list[int]:
        try:
            data = os.read(self.evtchn, 4096)
        except BlockingIOError:
            data = b""
        ports = [p for (p,) in struct.iter_unpack("=I", data[: len(data) // 4 * 4])]
        self.kicks += ports
        return ports

    def take_requests(self) -> bytes:
        """Consume whatever is in the request queue."""
        cons, prod = self.get(REQ_CONS), self.get(REQ_PROD)
        n = (prod - cons) & MASK
        out = bytes(self.mem[REQ + (cons + i) % RING] for i in range(n))
        self.set(REQ_CONS, cons + n)
        return out

    def put_responses(self, data: bytes) -> int:
        """Produce as much of ``data`` as fits; returns the count written."""
        cons, prod = self.get(RSP_CONS), self.get(RSP_PROD)
        n = min(RING - ((prod - cons) & MASK), len(data))
        for i in range(n):
            self.mem[RSP + (prod + i) % RING] = data[i]
        self.set(RSP_PROD, prod + n)
        return n

    def serve(self, handler: Handler) -> None:
        """Answer requests in a thread: ``handler(type, req_id, tx_id, payload)`` gives the bytes to send."""

        def run() -> None:
            inbuf = b""
            outbuf = b""
            while not self._stop.is_set():
                self.read_kicks()
                # Back-pressure: no new requests while replies wait for room.
                if not outbuf:
                    inbuf += self.take_requests()
                while len(inbuf) >= 16:
                    t, rid, tx, n = HDR.unpack_from(inbuf)
                    if len(inbuf) < 16 + n:
                        break
                    outbuf += handler(t, rid, tx, inbuf[16 : 16 + n])
                    inbuf = inbuf[16 + n :]
                if outbuf:
                    outbuf = outbuf[self.put_responses(outbuf) :]
                time.sleep(0.0002)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.words.release()
        self.mem.close()
        os.close(self.evtchn)


def reply(t: int, rid: int, tx: int, payload: bytes) -> bytes:
    return HDR.pack(t, rid, tx, len(payload)) + payload
