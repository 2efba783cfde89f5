"""The arena of the hostile-guest suite: a daemon, dom0, an attacking guest, a bystander.

Every hostile test plays one attack of a Xen security advisory class from an
unprivileged guest (domain 5 on its shared ring, the *attacker*) and then
checks what every such test checks:

(a) the daemon still answers dom0 (and CONTROL ``check`` finds its counters
    and tree consistent);
(b) another guest (domain 6 on its own ring, the *bystander*) is still served;
(c) the daemon's memory growth -- its peak resident set (``VmHWM`` in
    ``/proc/<pid>/status``, reset through ``clear_refs`` when the arena is
    ready) above its resident set at that moment -- stays under the bound the
    test states;

and then the class's own property (d), in the test.

The same arena serves ``bench/guest_memory.py``, which runs the memory
attacks against pyxenstored and the C reference and prints their figures.
The daemons come from :mod:`tests.client.daemons` (domains 0, 5 and 6 exist).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

from tests.client.daemons import REQUEST_TIMEOUT, introduce_guest, run_daemon, set_domains
from tests.launcher import Launched
from tests.rings.conftest import kick

from pyxenstored.client import Client
from pyxenstored.client.ring import RingTransport
from pyxenstored.ringpage import queue_used
from pyxenstored.server.hypervisor import VIRQ_DOM_EXC_PORT
from pyxenstored.wire import (
    HEADER,
    HEADER_SIZE,
    RING_REQ_CONS,
    RING_REQ_OFFSET,
    RING_REQ_PROD,
    RING_RSP_CONS,
    RING_RSP_OFFSET,
    RING_RSP_PROD,
    RING_SIZE,
    MsgType,
)

ATTACKER, ATTACKER_PORT = 5, 7
BYSTANDER, BYSTANDER_PORT = 6, 8
HOME = f"/local/domain/{ATTACKER}"
KIB = 1024
MIB = 1024 * KIB
# The default ``memory`` quota (hard) of a domain: 2.5 MiB.
MEMORY_QUOTA = 2 * MIB + 512 * KIB


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Start a new peak: ``VmHWM`` becomes ``VmRSS`` (``proc(5)``, ``clear_refs`` 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def message(type_: int, payload: bytes = b"", req_id: int = 0, tx_id: int = 0) -> bytes:
    return HEADER.pack(type_, req_id, tx_id, len(payload)) + payload


def parse_messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split whole messages (type, req_id, tx_id, payload); a partial tail is ignored."""
    out = []
    pos = 0
    while len(data) - pos >= HEADER_SIZE:
        type_, req_id, tx_id, length = HEADER.unpack_from(data, pos)
        if len(data) - pos - HEADER_SIZE < length:
            break
        out.append((type_, req_id, tx_id, data[pos + HEADER_SIZE : pos + HEADER_SIZE + length]))
        pos += HEADER_SIZE + length
    return out


class RawRing:
    """The attacker's own hands on its page: bytes in, and nothing read unless asked.

    The project's client takes the replies whenever it waits for room; an
    attacker that never reads them needs to write the request queue itself.
    """

    def __init__(self, ring_dir: str, domid: int, port: int) -> None:
        self.transport = RingTransport(ring_dir, domid, port, notify=False)
        self.page = self.transport.page

    def push(self, data: bytes) -> int:
        """Copy as much of ``data`` as fits in the request queue now, kick; bytes taken."""
        page = self.page
        cons, prod = page.word(RING_REQ_CONS), page.word(RING_REQ_PROD)
        room = RING_SIZE - queue_used(cons, prod)
        count = min(room, len(data))
        start = prod % RING_SIZE
        first = min(count, RING_SIZE - start)
        mem = page.mem
        mem[RING_REQ_OFFSET + start : RING_REQ_OFFSET + start + first] = data[:first]
        mem[RING_REQ_OFFSET : RING_REQ_OFFSET + count - first] = data[first:count]
        if count:
            page.set_word(RING_REQ_PROD, prod + count)
        self.transport.kick()
        return count

    def push_all(self, data: bytes, settle: float = 0.5) -> int:
        """Push ``data``; stop when the daemon has taken nothing for ``settle`` seconds.

        Returns the bytes written to the queue (the daemon may not have
        consumed them all).
        """
        done = 0
        idle_since = time.monotonic()
        while done < len(data):
            n = self.push(data[done:])
            if n:
                done += n
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > settle:
                break
            else:
                time.sleep(0.002)
        return done

    def wait_error(self, timeout: float = REQUEST_TIMEOUT) -> int:
        """The ring's error indicator, once the daemon sets one (0 if it does not)."""
        wait_until(lambda: self.page.error != 0, timeout)
        return self.page.error

    def pending_requests(self) -> int:
        """Request bytes the daemon has not consumed."""
        return self.page.request_bytes()

    def receive(self, timeout: float = 0.0) -> bytes:
        """What the response queue holds (waiting up to ``timeout`` for some).

        Read even from a ring the daemon has cut off (the client would raise).
        """
        page = self.page
        deadline = time.monotonic() + timeout
        while True:
            cons, prod = page.word(RING_RSP_CONS), page.word(RING_RSP_PROD)
            avail = min(queue_used(cons, prod), RING_SIZE)
            if avail or time.monotonic() >= deadline:
                break
            time.sleep(0.001)
        start = cons % RING_SIZE
        first = min(avail, RING_SIZE - start)
        mem = page.mem
        data = mem[RING_RSP_OFFSET + start : RING_RSP_OFFSET + start + first]
        data += mem[RING_RSP_OFFSET : RING_RSP_OFFSET + avail - first]
        if avail:
            page.set_word(RING_RSP_CONS, cons + avail)
            self.transport.kick()
        return data

    def drain(self, quiet: float = 0.3, limit: float = REQUEST_TIMEOUT) -> bytes:
        """Read responses until none came for ``quiet`` seconds (at most ``limit``)."""
        out = bytearray()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            data = self.receive(quiet)
            if not data:
                break
            out += data
        return bytes(out)

    def close(self) -> None:
        self.transport.close()


class Arena:
    """A daemon serving dom0 (socket), the attacker and the bystander (rings)."""

    def __init__(self, daemon: Launched) -> None:
        assert daemon.ring_dir is not None and daemon.pid
        self.daemon = daemon
        self.ring_dir = daemon.ring_dir
        self.dom0 = daemon.connect()
        self.bystander = self.guest(BYSTANDER, BYSTANDER_PORT)
        self.attacker = self.guest(ATTACKER, ATTACKER_PORT)
        self.base_kib = 0
        # (growth, bound) in KiB of the last survived() check.
        self.measured: tuple[int, int] | None = None
        self._raw: list[RawRing] = []
        self._extra: list[Client] = []
        self.ready()

    @property
    def kind(self) -> str:
        return self.daemon.kind

    @property
    def pid(self) -> int:
        return self.daemon.pid

    def guest(self, domid: int, port: int) -> Client:
        """Introduce ``domid`` (home owned by it) and connect as it on its ring."""
        introduce_guest(self.dom0, self.ring_dir, domid, port)
        return Client.connect_ring(self.ring_dir, domid, port, timeout=REQUEST_TIMEOUT)

    def raw_attacker(self) -> RawRing:
        raw = RawRing(self.ring_dir, ATTACKER, ATTACKER_PORT)
        self._raw.append(raw)
        return raw

    def ready(self) -> None:
        """Warm up, then take the memory baseline and start a new peak."""
        for i in range(20):
            self.bystander.write("warm", b"%d" % i)
            self.attacker.write("warm", b"%d" % i)
            self.dom0.read(f"{HOME}/warm")
        self.base_kib = status_kib(self.pid, "VmRSS")
        reset_peak(self.pid)

    def rss_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def growth_kib(self) -> int:
        """Peak resident set since :meth:`ready`, above the resident set then."""
        return max(status_kib(self.pid, "VmHWM"), self.rss_kib()) - self.base_kib

    def serves_dom0(self) -> None:
        """(a): dom0 writes and reads back; CONTROL ``check`` is clean (pyxenstored)."""
        stamp = b"%d" % time.monotonic_ns()
        self.dom0.write("/hostile-probe", stamp)
        assert self.dom0.read("/hostile-probe") == stamp
        if self.kind == "pyxenstored":
            assert self.dom0.control("check") == "OK"

    def serves_bystander(self) -> None:
        """(b): the bystander writes and reads back, and dom0 sees its write."""
        stamp = b"%d" % time.monotonic_ns()
        self.bystander.write("probe", stamp)
        assert self.bystander.read("probe") == stamp
        assert self.dom0.read(f"/local/domain/{BYSTANDER}/probe") == stamp

    def survived(self, bound_kib: int) -> int:
        """(a), (b) and (c) with ``bound_kib``; returns the growth in KiB."""
        self.serves_bystander()
        self.serves_dom0()
        growth = self.growth_kib()
        self.measured = (growth, bound_kib)
        assert growth <= bound_kib, (
            f"daemon grew by {growth} KiB, bound {bound_kib} KiB "
            f"(RSS {self.base_kib} KiB at the start)"
        )
        return growth

    def hypervisor_says(self, *domains: str) -> None:
        """The domains that exist now (``domid [unique-id] [shutdown]``); VIRQ_DOM_EXC fires.

        pyxenstored's simulated hypervisor only (the C shim's list is fixed).
        """
        set_domains(self.daemon, "".join(line + "\n" for line in domains))
        kick(self.ring_dir, VIRQ_DOM_EXC_PORT)
        # The bystander's kick follows in the same event channel: once it is
        # answered, the daemon has looked at the new list.
        self.bystander.read("warm")

    def release_attacker(self) -> None:
        """What a toolstack does to a misbehaving guest: RELEASE it."""
        self.dom0.release(ATTACKER)

    def close(self) -> None:
        for raw in self._raw:
            with contextlib.suppress(Exception):  # some are closed already
                raw.close()
        for client in (self.attacker, self.bystander, *self._extra):
            with contextlib.suppress(Exception):
                client.close()
        self.dom0.close()


@contextlib.contextmanager
def arena(kind: str = "pyxenstored", args: Sequence[str] = ()) -> Iterator[Arena]:
    """A fresh daemon of ``kind`` with its arena; everything stopped afterwards."""
    gen = run_daemon(kind, ring=True, args=args)
    daemon = next(gen)
    try:
        a = Arena(daemon)
        try:
            yield a
        finally:
            a.close()
    finally:
        gen.close()


def quota_text(dom0: Client, domid: int) -> dict[str, int]:
    """CONTROL ``quota <domid>``: current usage by quota name (pyxenstored / HEAD form)."""
    usage = {}
    for line in dom0.control("quota", str(domid)).splitlines()[1:]:
        name, _, rest = line.partition(":")
        usage[name.strip()] = int(rest.split()[0])
    return usage


def call(client: Client, type_: int, payload: bytes = b"", tx_id: int = 0) -> tuple[int, bytes]:
    """One request, its reply as (type, payload), errors included."""
    return client.collect_message(client.submit(type_, payload, tx_id), REQUEST_TIMEOUT)


def error_of(client: Client, type_: int, payload: bytes = b"", tx_id: int = 0) -> str:
    """The error name a request gets; fails if it succeeds."""
    rt, data = call(client, type_, payload, tx_id)
    assert rt == MsgType.ERROR, f"{MsgType(type_).name} {payload[:60]!r} did not fail: {data!r}"
    return data.rstrip(b"\0").decode()


def wait_until(predicate: object, timeout: float = REQUEST_TIMEOUT) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
