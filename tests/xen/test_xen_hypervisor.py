"""XenHypervisor's own logic, in process, on a library that records its calls.

:class:`FakeLib` stands where :class:`pyxenstored.server.xenlib.XenLib` does:
the same function tables (``lib.evtchn["xenevtchn_pending"]`` ...), Python
functions that behave as the C ones are documented to (``xenevtchn.h``,
``xengnttab.h``, ``xenforeignmemory.h``, ``xenctrl.h``, ``xenmanage.h``):
handles are non-zero integers, failures return 0/NULL or -1 with errno set.
The event channel is a pipe: a port is four native bytes in it, as the
Linux driver hands ports out.  With ``masking`` set the fake also masks as
Xen does (``xenevtchn.h``, ``xenevtchn_pending``): a port handed out stays
masked until ``xenevtchn_unmask``, and kicks meanwhile are held and handed
out once on the unmask; without it every kick is handed out, as under the
C reference's test shim.  Grant and foreign mappings are ``ctypes``
buffers whose addresses the fake returns.  What goes through the real
libraries (and the shim) is in ``test_xen_daemon.py``.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyxenstored.server import xen
from pyxenstored.server.hypervisor import DomainInfo
from pyxenstored.server.xen import HypervisorUnavailable, XenHypervisor
from pyxenstored.server.xenlib import (
    DOMID_FIRST_RESERVED,
    GNTTAB_RESERVED_XENSTORE,
    PROT_READ_WRITE,
    VIRQ_DOM_EXC,
    XC_DOMINFO_LAYOUTS,
    XENEVTCHN_NO_CLOEXEC,
    XM_STATE_DEAD,
    XM_STATE_DYING,
    XM_STATE_EXIST,
    XM_STATE_SHUTDOWN,
)

PORT = struct.Struct("=I")
DYING, SHUTDOWN = 1 << 0, 1 << 2  # xc_dominfo_t bit-fields (xenctrl.h 4.17)


class FakeLib:
    """The Xen libraries as the backend calls them, recording every call."""

    def __init__(self, *, manage: bool = False, foreign: bool = True) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.err = 0
        self.pipes: dict[int, tuple[int, int]] = {}  # handle -> (read fd, write fd)
        self.next_handle = 10
        self.next_port = 40
        self.next_virq = 700
        self.grantable: set[int] = {5, 6}
        self.pages: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.xc_domains: dict[int, int] = {0: 0}  # domid -> bit-field word
        self.xm_domains: dict[int, tuple[int, int]] = {}  # domid -> (state, unique id)
        self.xm_changes: list[int] = []
        self.fail: set[str] = set()
        self.fail_after: dict[str, int] = {}  # name -> calls that succeed before it fails
        self.masking = False
        self.masked: set[int] = set()  # handed out, not unmasked yet
        self.held: set[int] = set()  # kicked while masked
        self.on_unmask: Callable[[int], None] | None = None
        self.loaded = ["fake"]
        self.dominfo_layout = XC_DOMINFO_LAYOUTS["4.17"]
        self.evtchn = self._table(
            "xenevtchn",
            "open fdopen close fd notify bind_interdomain bind_virq unbind pending unmask",
        )
        self.gnttab = self._table("xengnttab", "open close set_max_grants map_grant_ref unmap")
        self.foreignmemory = (
            self._table("xenforeignmemory", "open close map unmap") if foreign else None
        )
        self.ctrl = (
            None
            if manage
            else self._table(
                "xc", "interface_open interface_close domain_getinfo map_foreign_range"
            )
        )
        self.manage = (
            self._table("xenmanage", "open close get_domain_info poll_changed_domain")
            if manage
            else None
        )
        self.munmap = self._record("munmap", lambda addr, size: 0)

    # --- plumbing ---------------------------------------------------------------------

    def errno(self) -> int:
        return self.err

    def logger_ref(self) -> str:
        return "logger"

    def _record(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            self.calls.append((name, *args))
            if name in self.fail_after:
                self.fail_after[name] -= 1
                if self.fail_after[name] < 0:
                    self.fail.add(name)
            if name in self.fail:
                self.err = errno.ENOENT
                return 0 if name.endswith(("open", "map", "map_grant_ref", "range")) else -1
            return fn(*args)

        return call

    def _table(self, prefix: str, names: str) -> dict[str, Callable[..., Any]]:
        sep = "_"
        return {
            f"{prefix}{sep}{n}": self._record(f"{prefix}{sep}{n}", getattr(self, f"_{prefix}_{n}"))
            for n in names.split()
        }

    def _handle(self) -> int:
        self.next_handle += 1
        return self.next_handle

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == name]

    def kick(self, handle: int, *ports: int) -> None:
        for port in ports:
            if self.masking and port in self.masked:
                self.held.add(port)
                continue
            if self.masking:
                self.masked.add(port)
            os.write(self.pipes[handle][1], PORT.pack(port))

    # --- libxenevtchn ----------------------------------------------------------------------

    def _xenevtchn_open(self, logger: object, flags: int) -> int:
        h = self._handle()
        r, w = os.pipe()
        os.set_blocking(r, False)  # a test that reads too far fails, never hangs
        self.pipes[h] = (r, w)
        return h

    def _xenevtchn_fdopen(self, logger: object, fd: int, flags: int) -> int:
        h = self._handle()
        self.pipes[h] = (fd, os.dup(fd))
        return h

    def _xenevtchn_close(self, h: int) -> int:
        for fd in self.pipes.pop(h):
            os.close(fd)
        return 0

    def _xenevtchn_fd(self, h: int) -> int:
        return self.pipes[h][0]

    def _xenevtchn_notify(self, h: int, port: int) -> int:
        return 0

    def _xenevtchn_bind_interdomain(self, h: int, domid: int, remote: int) -> int:
        self.next_port += 1
        return self.next_port

    def _xenevtchn_bind_virq(self, h: int, virq: int) -> int:
        self.next_virq += 1
        return self.next_virq

    def _xenevtchn_unbind(self, h: int, port: int) -> int:
        return 0

    def _xenevtchn_pending(self, h: int) -> int:
        try:
            data = os.read(self.pipes[h][0], 4)
        except BlockingIOError:
            self.err = errno.EAGAIN
            return -1
        port: int = PORT.unpack(data)[0]
        return port

    def _xenevtchn_unmask(self, h: int, port: int) -> int:
        self.masked.discard(port)
        if port in self.held:
            self.held.discard(port)
            self.kick(h, port)
        if self.on_unmask is not None:
            self.on_unmask(port)
        return 0

    # --- libxengnttab, libxenforeignmemory, libxenctrl's mapping ---------------------------

    def _xengnttab_open(self, logger: object, flags: int) -> int:
        return self._handle()

    def _xengnttab_close(self, h: int) -> int:
        return 0

    def _xengnttab_set_max_grants(self, h: int, n: int) -> int:
        return 0

    def _page(self) -> int:
        page = (ctypes.c_char * 4096)()
        addr = ctypes.addressof(page)
        self.pages[addr] = page
        return addr

    def _xengnttab_map_grant_ref(self, h: int, domid: int, ref: int, prot: int) -> int:
        if domid not in self.grantable:
            self.err = errno.EINVAL
            return 0
        return self._page()

    def _xengnttab_unmap(self, h: int, addr: int, count: int) -> int:
        return 0

    def _xenforeignmemory_open(self, logger: object, flags: int) -> int:
        return self._handle()

    def _xenforeignmemory_close(self, h: int) -> int:
        return 0

    def _xenforeignmemory_map(
        self, h: int, domid: int, prot: int, pages: int, frames: Any, errs: Any
    ) -> int:
        self.calls.append(("frames", list(frames)))
        return self._page()

    def _xenforeignmemory_unmap(self, h: int, addr: int, pages: int) -> int:
        return 0

    def _xc_map_foreign_range(self, h: int, domid: int, size: int, prot: int, mfn: int) -> int:
        return self._page()

    # --- domain information ----------------------------------------------------------------

    def _xc_interface_open(self, logger: object, dombuild: object, flags: int) -> int:
        return self._handle()

    def _xc_interface_close(self, h: int) -> int:
        return 0

    def _xc_domain_getinfo(self, h: int, first: int, count: int, buf: Any) -> int:
        """Like Xen: the first domain from ``first`` on, as an xc_dominfo_t."""
        assert count == 1
        found = [d for d in sorted(self.xc_domains) if d >= first]
        if not found:
            return 0
        raw = struct.pack("<IIII", found[0], 0, self.xc_domains[found[0]], 0)
        ctypes.memmove(buf, raw, len(raw))
        return 1

    def _xenmanage_open(self, logger: object, flags: int) -> int:
        return self._handle()

    def _xenmanage_close(self, h: int) -> int:
        return 0

    def _xenmanage_get_domain_info(
        self, h: int, domid: int, state: Any, caps: Any, uid: Any
    ) -> int:
        if domid not in self.xm_domains:
            self.err = errno.ENOENT
            return -1
        st, unique = self.xm_domains[domid]
        ctypes.cast(state, ctypes.POINTER(ctypes.c_uint))[0] = st
        ctypes.cast(caps, ctypes.POINTER(ctypes.c_uint))[0] = 0
        ctypes.cast(uid, ctypes.POINTER(ctypes.c_uint64))[0] = unique
        return 0

    def _xenmanage_poll_changed_domain(
        self, h: int, domid: Any, state: Any, caps: Any, uid: Any
    ) -> int:
        if not self.xm_changes:
            self.err = errno.ENOENT
            return -1
        changed = self.xm_changes.pop(0)
        st, unique = self.xm_domains.get(changed, (XM_STATE_DEAD, 0))
        ctypes.cast(domid, ctypes.POINTER(ctypes.c_uint))[0] = changed
        ctypes.cast(state, ctypes.POINTER(ctypes.c_uint))[0] = st
        ctypes.cast(uid, ctypes.POINTER(ctypes.c_uint64))[0] = unique
        return 0


@pytest.fixture
def lib() -> FakeLib:
    return FakeLib()


@pytest.fixture
def hv(lib: FakeLib) -> Iterator[XenHypervisor]:
    h = XenHypervisor.open(lib=lib)  # type: ignore[arg-type]
    yield h
    h.close()


# --- opening -------------------------------------------------------------------------------


def test_open_binds_the_virq_on_a_handle_kept_across_exec(lib: FakeLib, hv: XenHypervisor) -> None:
    (xce_flags,) = [c[1] for c in lib.named("xenevtchn_open")]
    assert xce_flags == XENEVTCHN_NO_CLOEXEC
    assert lib.named("xengnttab_set_max_grants")[0][1] == DOMID_FIRST_RESERVED
    assert lib.named("xenevtchn_bind_virq")[0][1] == VIRQ_DOM_EXC
    assert hv.virq_port == 701
    assert hv.fileno() == lib.pipes[lib.named("xenevtchn_fd")[0][0]][0]


def test_no_event_channel_device_is_one_clear_line(lib: FakeLib) -> None:
    lib.fail.add("xenevtchn_open")
    with pytest.raises(HypervisorUnavailable) as info:
        XenHypervisor.open(lib=lib)  # type: ignore[arg-type]
    assert str(info.value) == (
        "cannot open the event channel device /dev/xen/evtchn: No such file or directory"
        " (not a Xen host, or the kernel module xen_evtchn is not loaded)"
    )
    assert not lib.named("xengnttab_open")


def test_a_failure_later_closes_what_was_opened(lib: FakeLib) -> None:
    lib.fail.add("xc_interface_open")
    with pytest.raises(HypervisorUnavailable, match="/dev/xen/privcmd"):
        XenHypervisor.open(lib=lib)  # type: ignore[arg-type]
    assert lib.named("xenevtchn_close") and lib.named("xengnttab_close")
    assert lib.pipes == {}


# --- event channels ---------------------------------------------------------------------------


def test_pending_ports_are_unmasked_once_each_and_bounded(lib: FakeLib, hv: XenHypervisor) -> None:
    handle = lib.named("xenevtchn_fd")[0][0]
    lib.kick(handle, 5, 9, 5)
    assert hv.pending_ports() == [5, 9, 5]
    assert [c[1] for c in lib.named("xenevtchn_unmask")] == [5, 9]
    assert hv.pending_ports() == []  # nothing there: EAGAIN ends it
    lib.kick(handle, *range(1, 101))
    first = hv.pending_ports()
    assert first == list(range(1, 65))
    assert hv.pending_ports() == list(range(65, 101))


def test_a_kick_right_after_an_unmask_is_not_lost(lib: FakeLib, hv: XenHypervisor) -> None:
    """Each port read is unmasked once, even when the guest kicks it again meanwhile."""
    handle = lib.named("xenevtchn_fd")[0][0]
    lib.masking = True
    again: list[int] = []

    def guest_kicks_again(port: int) -> None:
        if port == 5 and not again:
            again.append(port)
            lib.kick(handle, 5)

    lib.on_unmask = guest_kicks_again
    lib.kick(handle, 5, 9)
    seen = hv.pending_ports()
    seen += hv.pending_ports()  # whatever the first drain left
    assert sorted(seen) == [5, 5, 9]
    assert lib.masked == set()  # nothing left masked: later kicks get through
    lib.kick(handle, 5)
    assert hv.pending_ports() == [5]
    assert lib.masked == set()


def test_a_failed_read_still_unmasks_what_was_read(lib: FakeLib, hv: XenHypervisor) -> None:
    handle = lib.named("xenevtchn_fd")[0][0]
    lib.masking = True
    lib.kick(handle, 5, 9)
    lib.fail_after["xenevtchn_pending"] = 1  # ENOENT: not one a drain ends on
    with pytest.raises(OSError, match="reading the event channel"):
        hv.pending_ports()
    assert [c[1] for c in lib.named("xenevtchn_unmask")] == [5]
    assert lib.masked == {9}  # queued, never read


def test_bind_failure_is_an_oserror(lib: FakeLib, hv: XenHypervisor) -> None:
    assert hv.bind_interdomain(5, 7) == 41
    lib.fail.add("xenevtchn_bind_interdomain")
    with pytest.raises(OSError):
        hv.bind_interdomain(5, 7)


# --- ring pages ---------------------------------------------------------------------------


def test_grant_mapping_is_unmapped_when_its_last_view_goes(lib: FakeLib, hv: XenHypervisor) -> None:
    page = hv.map_ring(5, 0x1234)
    assert isinstance(page, memoryview) and len(page) == 4096 and page.format == "B"
    assert lib.named("xengnttab_map_grant_ref")[0][1:] == (
        5,
        GNTTAB_RESERVED_XENSTORE,
        PROT_READ_WRITE,
    )
    (addr,) = lib.pages
    page[2048:2052] = b"\x01\x02\x03\x04"
    assert lib.pages[addr].raw[2048:2052] == b"\x01\x02\x03\x04"
    words = memoryview(page).cast("I")  # as a RingPage holds it
    hv.unmap_ring(5, page)
    gc.collect()
    assert not lib.named("xengnttab_unmap")  # a view is left: still mapped
    words.release()
    handle = lib.named("xengnttab_set_max_grants")[0][0]
    assert lib.named("xengnttab_unmap") == [(handle, addr, 1)]


def test_foreign_mapping_when_the_grant_fails(lib: FakeLib, hv: XenHypervisor) -> None:
    page = hv.map_ring(8, 0xABC)
    assert ("frames", [0xABC]) in lib.calls
    assert lib.named("xenforeignmemory_map")[0][1:4] == (8, PROT_READ_WRITE, 1)
    hv.unmap_ring(8, page)
    assert len(lib.named("xenforeignmemory_unmap")) == 1
    # Without a frame (after a live update) there is nothing to fall back on.
    with pytest.raises(OSError):
        hv.map_ring(8, 0)


def test_libxenctrl_foreign_range_without_libxenforeignmemory() -> None:
    lib = FakeLib(foreign=False)
    hv = XenHypervisor.open(lib=lib)  # type: ignore[arg-type]
    try:
        page = hv.map_ring(8, 0xABC)
        call = lib.named("xc_map_foreign_range")[0]
        assert call[1:] == (8, os.sysconf("SC_PAGESIZE"), PROT_READ_WRITE, 0xABC)
        hv.unmap_ring(8, page)
        assert len(lib.named("munmap")) == 1
    finally:
        hv.close()


def test_preset_port_is_read_from_the_page_and_unmapped(lib: FakeLib, hv: XenHypervisor) -> None:
    original = lib._xengnttab_map_grant_ref

    def map_with_port(h: int, domid: int, ref: int, prot: int) -> int:
        addr = original(h, domid, ref, prot)
        if addr:
            struct.pack_into("=I", lib.pages[addr], 2076, 33)
        return addr

    lib.gnttab["xengnttab_map_grant_ref"] = map_with_port
    assert hv.preset_port(5) == 33
    assert len(lib.named("xengnttab_unmap")) == 1
    assert hv.preset_port(9) == 0  # nothing granted: not a dom0less domain
    assert hv.preset_port(0) == 0  # the store domain's port is xsd_port


def test_store_domain_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hv: XenHypervisor
) -> None:
    (tmp_path / "xsd_port").write_text("0x11\n")
    (tmp_path / "xsd_kva").write_bytes(b"\0" * 4096)
    monkeypatch.setattr(xen, "XSD_PORT", str(tmp_path / "xsd_port"))
    monkeypatch.setattr(xen, "XSD_KVA", str(tmp_path / "xsd_kva"))
    assert hv.store_port() == 17  # strtoul(..., 0), as C
    page = hv.map_ring(0, 1)
    page[0:2] = b"ok"
    hv.unmap_ring(0, page)
    assert (tmp_path / "xsd_kva").read_bytes()[:2] == b"ok"
    monkeypatch.setattr(xen, "XSD_PORT", str(tmp_path / "missing"))
    assert hv.store_port() == 0


# --- domains ------------------------------------------------------------------------------


def test_xenctrl_domains_leave_dying_ones_out(lib: FakeLib, hv: XenHypervisor) -> None:
    lib.xc_domains = {0: 0, 5: DYING, 6: SHUTDOWN, 300: 0}
    assert hv.domains() == {0: DomainInfo(0), 6: DomainInfo(6, shutdown=True), 300: DomainInfo(300)}
    assert hv.domain_info(5) == DomainInfo(5, dying=True)
    assert hv.domain_info(7) is None  # the next one is 300: not it
    assert hv.domain_info(DOMID_FIRST_RESERVED) is None


def test_xenmanage_domains_sweep_then_changes() -> None:
    lib = FakeLib(manage=True)
    lib.xm_domains = {0: (XM_STATE_EXIST, 100), 5: (XM_STATE_EXIST, 555)}
    hv = XenHypervisor.open(lib=lib)  # type: ignore[arg-type]
    try:
        assert hv.domains() == {0: DomainInfo(0, 100), 5: DomainInfo(5, 555)}
        sweep = len(lib.named("xenmanage_get_domain_info"))
        assert sweep == DOMID_FIRST_RESERVED
        # 5 dies and comes back as a new domain; 6 appears; 0 shuts down.
        lib.xm_domains = {
            0: (XM_STATE_EXIST | XM_STATE_SHUTDOWN, 100),
            5: (XM_STATE_EXIST, 556),
            6: (XM_STATE_EXIST | XM_STATE_DYING, 666),
        }
        lib.xm_changes = [5, 6, 0]
        assert hv.domains() == {0: DomainInfo(0, 100, shutdown=True), 5: DomainInfo(5, 556)}
        assert len(lib.named("xenmanage_get_domain_info")) == sweep  # no second sweep
        assert hv.domain_info(6) == DomainInfo(6, 666, dying=True)
        del lib.xm_domains[5]
        lib.xm_changes = [5]
        assert 5 not in hv.domains()
        assert hv.domain_info(5) is None
    finally:
        hv.close()


# --- live update ---------------------------------------------------------------------------


def test_adopting_the_inherited_descriptor(lib: FakeLib, hv: XenHypervisor) -> None:
    old_handle = lib.named("xenevtchn_fd")[0][0]
    old_virq = hv.virq_port
    r, w = os.pipe()
    os.set_blocking(r, False)
    hv.adopt_evtchn(r)
    assert lib.named("xenevtchn_fdopen")[0][1:] == (r, 0)
    assert (old_handle, old_virq) in lib.named("xenevtchn_unbind")
    assert old_handle not in lib.pipes  # closed
    assert hv.fileno() == r
    assert hv.virq_port != old_virq
    assert hv.restored_port(5, 3) == 3
    assert not lib.named("xenevtchn_bind_interdomain")
    os.write(w, PORT.pack(3))
    assert hv.pending_ports() == [3]
    os.close(w)


def test_prepare_exec_leaves_the_virq_and_failure_takes_it_back(
    lib: FakeLib, hv: XenHypervisor
) -> None:
    virq = hv.virq_port
    hv.prepare_exec()
    assert lib.named("xenevtchn_unbind")[-1][1] == virq
    assert os.get_inheritable(hv.fileno())
    hv.exec_failed()
    assert hv.virq_port != virq
    assert len(lib.named("xenevtchn_bind_virq")) == 2
    assert hv.inheritable_fds() == {"evtchn": hv.fileno()}


def test_close_leaves_later_view_releases_alone(lib: FakeLib, hv: XenHypervisor) -> None:
    page = hv.map_ring(5, 0)
    hv.close()
    assert lib.named("xengnttab_close") and lib.named("xenevtchn_close")
    page.release()  # its finalizer runs now: the closed handle is not used
    assert not lib.named("xengnttab_unmap")
