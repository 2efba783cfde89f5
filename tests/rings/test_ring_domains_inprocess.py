"""RingDomains in one process on a fake hypervisor: the interface is pluggable.

:class:`FakeHypervisor` implements :class:`pyxenstored.server.hypervisor.Hypervisor`
with anonymous pages and a socket pair for the event channel, the way a real
implementation (libxenevtchn, libxengnttab) would slot in.  Its pages are
anonymous ``mmap`` objects or, as the Xen backend hands them out, byte
``memoryview`` objects of ``ctypes`` memory (``page`` parameter).  The test plays
dom0 on a socket pair and the guest on the page, and turns the loop itself
(``run_once``), so nothing here depends on timing.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import socket
import struct
from collections.abc import Iterator

import pytest

from pyxenstored.server.hypervisor import DomainInfo, RingMemory
from pyxenstored.server.loop import Server
from pyxenstored.server.ring_domains import RingDomains
from pyxenstored.server.socket_transport import SocketTransport
from pyxenstored.store import Store, StoreConfig
from pyxenstored.store import quota as q
from pyxenstored.wire import HEADER, MsgType

M = MsgType
U32 = struct.Struct("=I")
VIRQ = 99


class FakeHypervisor:
    """Pages in memory, kicks through a socket pair, a domain list set by the test."""

    def __init__(self, page_kind: str = "mmap") -> None:
        self.guest_end, self.daemon_end = socket.socketpair()
        self.daemon_end.setblocking(False)
        self.page_kind = page_kind
        self.pages: dict[int, RingMemory] = {}
        self.bound: dict[int, int] = {}  # local port -> domid
        self.notified: list[int] = []
        self.existing: dict[int, DomainInfo] = {0: DomainInfo(0), 5: DomainInfo(5, 50)}
        self.closed = False

    @property
    def virq_port(self) -> int:
        return VIRQ

    def fileno(self) -> int:
        return self.daemon_end.fileno()

    def pending_ports(self) -> list[int]:
        try:
            data = self.daemon_end.recv(4096)
        except BlockingIOError:
            return []
        return [p for (p,) in U32.iter_unpack(data)]

    def bind_interdomain(self, domid: int, remote_port: int) -> int:
        local = 1000 + remote_port  # a real local port differs from the guest's
        self.bound[local] = domid
        return local

    def unbind(self, local_port: int) -> None:
        self.bound.pop(local_port, None)

    def notify(self, local_port: int) -> None:
        self.notified.append(local_port)

    def map_ring(self, domid: int, gfn: int) -> RingMemory:
        if domid not in self.existing:
            raise OSError("no such domain")
        if domid not in self.pages:
            if self.page_kind == "mmap":
                self.pages[domid] = mmap.mmap(-1, 4096)
            else:
                self.pages[domid] = memoryview((ctypes.c_char * 4096)()).cast("B")
        return self.pages[domid]

    def unmap_ring(self, domid: int, page: RingMemory) -> None:
        pass  # the test keeps looking at it

    def domains(self) -> dict[int, DomainInfo]:
        return dict(self.existing)

    def domain_info(self, domid: int) -> DomainInfo | None:
        return self.existing.get(domid)

    def store_port(self) -> int:
        return 0

    def preset_port(self, domid: int) -> int:
        return 0

    def inheritable_fds(self) -> dict[str, int]:
        return {}

    def adopt_evtchn(self, fd: int, virq_port: int | None = None) -> None:
        pass

    def restored_port(self, domid: int, local_port: int) -> int:
        self.bound[local_port] = domid
        return local_port

    def prepare_exec(self) -> None:
        pass

    def exec_failed(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.guest_end.close()
        self.daemon_end.close()

    def kick(self, port: int) -> None:
        self.guest_end.send(U32.pack(port))


class World:
    def __init__(self, page_kind: str = "mmap") -> None:
        self.store = Store(StoreConfig())
        self.server = Server(self.store)
        self.hv = FakeHypervisor(page_kind)
        self.rings = RingDomains(self.server, self.store, self.hv)
        self.rings.start(auto_introduce=False)
        ours, self.dom0 = socket.socketpair()
        self.server.add_connection(SocketTransport(ours), 0)
        self.dom0.settimeout(0)
        self.dom0_in = b""

    def turn(self, times: int = 3) -> None:
        for _ in range(times):
            self.server.run_once(0)

    def dom0_call(self, type_: int, payload: bytes) -> tuple[int, bytes]:
        self.dom0.sendall(HEADER.pack(type_, 1, 0, len(payload)) + payload)
        while True:
            self.turn(1)
            msg = self._dom0_message(skip_events=True)
            if msg is not None:
                return msg

    def dom0_event(self) -> bytes | None:
        self.turn()
        msg = self._dom0_message(skip_events=False)
        return msg[1] if msg is not None else None

    def _dom0_message(self, skip_events: bool) -> tuple[int, bytes] | None:
        while True:
            with contextlib.suppress(BlockingIOError):
                self.dom0_in += self.dom0.recv(65536)
            if len(self.dom0_in) < 16:
                return None
            type_, _rid, _tx, length = HEADER.unpack_from(self.dom0_in)
            if len(self.dom0_in) < 16 + length:
                return None
            body = self.dom0_in[16 : 16 + length]
            self.dom0_in = self.dom0_in[16 + length :]
            if skip_events and type_ == M.WATCH_EVENT:
                continue
            return type_, body

    # --- the guest on its page ------------------------------------------------

    def page(self, domid: int = 5) -> RingMemory:
        return self.hv.pages[domid]

    def guest_send(self, data: bytes, port: int = 7) -> None:
        mem = self.page()
        prod = U32.unpack_from(mem, 2052)[0]
        for i, byte in enumerate(data):
            mem[(prod + i) % 1024] = byte
        U32.pack_into(mem, 2052, prod + len(data))
        self.hv.kick(port)

    def guest_take(self) -> bytes:
        mem = self.page()
        cons, prod = U32.unpack_from(mem, 2056)[0], U32.unpack_from(mem, 2060)[0]
        out = bytes(mem[1024 + (cons + i) % 1024] for i in range((prod - cons) & 0xFFFFFFFF))
        U32.pack_into(mem, 2056, prod)
        return out

    def guest_call(self, type_: int, payload: bytes) -> tuple[int, bytes]:
        self.guest_send(HEADER.pack(type_, 9, 0, len(payload)) + payload)
        self.turn()
        out = self.guest_take()
        type_, _rid, _tx, length = HEADER.unpack_from(out)
        return type_, out[16 : 16 + length]


@pytest.fixture(params=["mmap", "ctypes"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    w = World(request.param)
    yield w
    w.rings.close()
    w.server.close()
    w.dom0.close()


def test_introduce_maps_binds_and_serves(world: World) -> None:
    world.dom0_call(M.MKDIR, b"/local/domain/5\0")
    world.dom0_call(M.SET_PERMS, b"/local/domain/5\0n5\0")
    assert world.dom0_call(M.INTRODUCE, b"5\0" + b"1\0" + b"7\0") == (M.INTRODUCE, b"OK\0")
    mem = world.page()
    assert U32.unpack_from(mem, 2064)[0] == 15  # C HEAD's 14 + ring reconnection
    assert world.hv.bound == {1007: 5}
    assert world.guest_call(M.WRITE, b"x\0v") == (M.WRITE, b"OK\0")
    assert world.dom0_call(M.READ, b"/local/domain/5/x\0") == (M.READ, b"v")
    assert 1007 in world.hv.notified  # notified on its local port
    assert world.store.domains[5].unique_id == 50


def test_unmappable_domain_is_refused(world: World) -> None:
    assert world.dom0_call(M.INTRODUCE, b"8\0" + b"1\0" + b"7\0")[0] == M.ERROR


def test_death_on_virq(world: World) -> None:
    world.dom0_call(M.INTRODUCE, b"5\0" + b"1\0" + b"7\0")
    world.dom0_call(M.WATCH, b"@releaseDomain\0r\0")
    assert world.dom0_event() == b"@releaseDomain\0r\0"
    del world.hv.existing[5]
    world.hv.kick(VIRQ)
    assert world.dom0_event() == b"@releaseDomain\0r\0"
    assert world.dom0_call(M.IS_DOMAIN_INTRODUCED, b"5\0") == (M.IS_DOMAIN_INTRODUCED, b"F\0")
    assert world.hv.bound == {}
    assert world.rings.ring(5) is None


def test_a_dying_domain_is_dead(world: World) -> None:
    world.dom0_call(M.INTRODUCE, b"5\0" + b"1\0" + b"7\0")
    world.hv.existing[5] = DomainInfo(5, 50, dying=True)
    world.hv.kick(VIRQ)
    world.turn()
    assert world.dom0_call(M.IS_DOMAIN_INTRODUCED, b"5\0") == (M.IS_DOMAIN_INTRODUCED, b"F\0")
    assert world.rings.ring(5) is None


def test_the_store_asks_the_backend_without_a_kick(world: World) -> None:
    assert world.dom0_call(M.GET_FEATURE, b"9\0") == (M.ERROR, b"ENOENT\0")
    world.hv.existing[9] = DomainInfo(9, 90)  # created: no VIRQ_DOM_EXC
    world.dom0_call(M.MKDIR, b"/local/domain/9\0")
    assert world.dom0_call(M.SET_PERMS, b"/local/domain/9\0n9\0") == (M.SET_PERMS, b"OK\0")
    assert world.store.domains[9].unique_id == 90


def test_a_replaced_domain_found_at_introduce_is_not_killed_by_the_next_virq(
    world: World,
) -> None:
    world.dom0_call(M.INTRODUCE, b"5\0" + b"1\0" + b"7\0")
    world.dom0_call(M.WATCH, b"@releaseDomain\0r\0")
    assert world.dom0_event() == b"@releaseDomain\0r\0"
    world.hv.existing[5] = DomainInfo(5, 51)  # domain 5 died, a new 5 was made
    introduce = b"5\0" + b"1\0" + b"8\0"
    world.dom0.sendall(HEADER.pack(M.INTRODUCE, 1, 0, len(introduce)) + introduce)
    assert world.dom0_event() == b"@releaseDomain\0r\0"  # the old one went
    assert world.dom0_event() == b"OK\0"  # then the reply
    assert world.store.domains[5].unique_id == 51
    world.hv.kick(VIRQ)  # the VIRQ of the death comes late
    assert world.dom0_event() is None
    assert world.dom0_call(M.IS_DOMAIN_INTRODUCED, b"5\0") == (M.IS_DOMAIN_INTRODUCED, b"T\0")
    world.dom0_call(M.MKDIR, b"/local/domain/5\0")
    world.dom0_call(M.SET_PERMS, b"/local/domain/5\0n5\0")
    assert world.guest_call(M.WRITE, b"x\0v") == (M.WRITE, b"OK\0")


def test_reconnection_resets_the_connection(world: World) -> None:
    world.dom0_call(M.INTRODUCE, b"5\0" + b"1\0" + b"7\0")
    assert world.guest_call(M.WATCH, b"w\0t\0") == (M.WATCH, b"OK\0")
    world.guest_take()  # the initial event
    mem = world.page()
    world.guest_send(HEADER.pack(M.WRITE, 1, 0, 40)[:9])  # half a request
    U32.pack_into(mem, 2068, 1)
    world.hv.kick(7)
    world.turn()
    assert U32.unpack_from(mem, 2068)[0] == 0
    assert [U32.unpack_from(mem, o)[0] for o in (2048, 2052, 2056, 2060)] == [0, 0, 0, 0]
    assert world.guest_call(M.UNWATCH, b"w\0t\0") == (M.ERROR, b"ENOENT\0")


def test_oversized_request_cuts_the_guest_off(world: World) -> None:
    world.dom0_call(M.INTRODUCE, b"5\0" + b"1\0" + b"7\0")
    world.guest_send(HEADER.pack(M.WRITE, 1, 0, 4097))
    world.turn()
    assert U32.unpack_from(world.page(), 2072)[0] == 3
    # dom0 is served as before; the domain stays introduced.
    assert world.dom0_call(M.IS_DOMAIN_INTRODUCED, b"5\0") == (M.IS_DOMAIN_INTRODUCED, b"T\0")
    assert world.dom0_call(M.RELEASE, b"5\0") == (M.RELEASE, b"OK\0")
    assert world.rings.ring(5) is None


def test_close_releases_the_hypervisor(world: World) -> None:
    world.dom0_call(M.INTRODUCE, b"5\0" + b"1\0" + b"7\0")
    world.rings.close()
    assert world.hv.closed
    assert world.rings.rings() == []


def test_a_guest_at_its_memory_quota_is_not_read(world: World) -> None:
    world.dom0_call(M.MKDIR, b"/local/domain/5\0")
    world.dom0_call(M.SET_PERMS, b"/local/domain/5\0n5\0")
    world.dom0_call(M.INTRODUCE, b"5\0" + b"1\0" + b"7\0")
    assert world.guest_call(M.WRITE, b"x\0" + b"v" * 100) == (M.WRITE, b"OK\0")
    used = world.store.domains[5].usage[q.MEMORY]
    assert world.dom0_call(M.SET_QUOTA, b"5\0memory\0%d\0" % used)[0] == M.SET_QUOTA
    mem = world.page()
    world.guest_send(HEADER.pack(M.READ, 3, 0, 2) + b"x\0")
    world.turn()
    assert U32.unpack_from(mem, 2048)[0] != U32.unpack_from(mem, 2052)[0]  # left in the ring
    assert world.guest_take() == b""
    # Raising the quota is enough: the ring is looked at again after that turn.
    assert world.dom0_call(M.SET_QUOTA, b"5\0memory\0%d\0" % (used * 2))[0] == M.SET_QUOTA
    world.turn()
    reply = world.guest_take()
    assert HEADER.unpack_from(reply)[:2] == (M.READ, 3)
    assert reply[16:] == b"v" * 100
