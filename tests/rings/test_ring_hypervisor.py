"""The simulated hypervisor: files of a ring dir as the reference's shim lays them out."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from pyxenstored.server.hypervisor import (
    VIRQ_DOM_EXC_PORT,
    DomainInfo,
    SimulatedHypervisor,
    parse_domains,
)

U32 = struct.Struct("=I")


def test_parse_domains_lines_ids_and_shutdown() -> None:
    text = "0\n5 0x10\n6 7 shutdown\n# comment\n\nbad line\n9 # trailing comment\n"
    assert parse_domains(text) == {
        0: DomainInfo(0),
        5: DomainInfo(5, 16),
        6: DomainInfo(6, 7, True),
        9: DomainInfo(9),
    }
    assert parse_domains("0,5,6") == {d: DomainInfo(d) for d in (0, 5, 6)}
    assert parse_domains("40000\n") == {}  # not an ordinary domid


def test_evtchn_fifo_is_created_and_kicks_are_read_as_native_u32(tmp_path: Path) -> None:
    hv = SimulatedHypervisor(str(tmp_path))
    try:
        path = tmp_path / "evtchn"
        assert stat.S_ISFIFO(path.stat().st_mode)
        assert hv.pending_ports() == []
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, U32.pack(7) + U32.pack(VIRQ_DOM_EXC_PORT) + b"\x08\x00")
        assert hv.pending_ports() == [7, VIRQ_DOM_EXC_PORT]
        os.write(fd, b"\x00\x00")  # the rest of a u32 split between writes
        assert hv.pending_ports() == [8]
        os.close(fd)
        assert hv.pending_ports() == []  # the last writer went: no end-of-file spin
    finally:
        hv.close()


def test_a_non_fifo_evtchn_is_refused(tmp_path: Path) -> None:
    (tmp_path / "evtchn").write_text("not a fifo")
    with pytest.raises(OSError, match="not a FIFO"):
        SimulatedHypervisor(str(tmp_path))


def test_map_ring_shares_the_page_file(tmp_path: Path) -> None:
    hv = SimulatedHypervisor(str(tmp_path))
    try:
        mem = hv.map_ring(5, 1)
        assert (tmp_path / "ring-dom5").stat().st_size == 4096  # created like the shim
        mem[2064:2068] = U32.pack(14)
        assert (tmp_path / "ring-dom5").read_bytes()[2064:2068] == U32.pack(14)
        hv.unmap_ring(5, mem)
    finally:
        hv.close()


def test_notify_writes_the_port_when_the_guest_holds_its_fifo(tmp_path: Path) -> None:
    hv = SimulatedHypervisor(str(tmp_path))
    try:
        port = hv.bind_interdomain(5, 9)
        assert port == 9  # local port = the port the guest was introduced with
        hv.notify(port)  # no notify-dom5: nothing happens, no error
        fifo = tmp_path / "notify-dom5"
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        try:
            # The daemon retries a missing FIFO after a short back-off.
            hv._notify[5] = (None, 0.0)
            hv.notify(port)
            assert os.read(reader, 64) == U32.pack(9)
            hv.unbind(port)
            hv.notify(port)  # unbound: nobody to notify
            with pytest.raises(BlockingIOError):
                os.read(reader, 64)
        finally:
            os.close(reader)
    finally:
        hv.close()


def test_domains_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XS_SHIM_DOMAINS", raising=False)
    hv = SimulatedHypervisor(str(tmp_path))
    try:
        assert hv.domains() == {0: DomainInfo(0)}  # no file: only dom0, like the shim
        monkeypatch.setenv("XS_SHIM_DOMAINS", "0,5")
        assert hv.domains() == {0: DomainInfo(0), 5: DomainInfo(5)}  # the shim's variable
        (tmp_path / "domains").write_text("0\n5 77\n")
        assert hv.domains() == {0: DomainInfo(0), 5: DomainInfo(5, 77)}
        assert hv.domain_info(5) == DomainInfo(5, 77)
        assert hv.domain_info(6) is None
        # Read again at every question: a domain's creation is announced to nobody.
        (tmp_path / "domains").write_text("0\n5 77 shutdown\n6 0x66 dying\n")
        assert hv.domain_info(6) == DomainInfo(6, 0x66, dying=True)
        assert hv.domain_info(5) == DomainInfo(5, 77, shutdown=True)
        (tmp_path / "domains").write_text("0\n")
        assert hv.domain_info(6) is None
    finally:
        hv.close()


def test_inherited_evtchn_descriptor_is_used_as_is(tmp_path: Path) -> None:
    first = SimulatedHypervisor(str(tmp_path))
    fd = os.dup(first.inheritable_fds()["evtchn"])
    first.close()
    second = SimulatedHypervisor(str(tmp_path), evtchn_fd=fd)
    try:
        writer = os.open(tmp_path / "evtchn", os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, U32.pack(3))
        os.close(writer)
        assert second.pending_ports() == [3]
    finally:
        second.close()
