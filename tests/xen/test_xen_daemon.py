"""pyxenstored on its Xen backend, as a daemon, with the C reference's shim in LD_PRELOAD.

The shim (``xsshim.c`` in the directory ``PYXENSTORED_PEERS`` names, see tests/util.py) answers the Xen libraries' calls
the way it answers them for the C daemon: ``xengnttab_map_grant_ref`` maps
``DIR/ring-dom<N>``, the event channel is the FIFO ``DIR/evtchn`` it opens,
``/proc/xen/xsd_port`` and ``xsd_kva`` are its own files, the domains are
``XS_SHIM_DOMAINS``; with ``XS_SHIM_DEBUG`` it logs each call.  These tests
show that the daemon's traffic with a guest goes through those calls (the
shim's lines in the log, the FIFO the shim opened as the daemon's event
channel, the page file it mapped), that without the shim and without
``/dev/xen`` the daemon does not start and says why in one line.  Live
update with guests on rings (pyxenstored -> pyxenstored, C -> pyxenstored
-> C) is tested in tests/rings/test_rings_liveupdate.py, on both backends,
as is the rest of the guest-on-ring suite (tests/rings).

What the shim cannot show: notifications to guests (it drops them; guests
poll), domain death and shutdown (its domain list is fixed at start), unique
ids (4.17 has none), foreign mapping (its grant mapping never fails).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.client.daemons import introduce_guest, run_daemon
from tests.launcher import Launched, pyxenstored_command
from tests.rings.conftest import err, kick, make_guest, ok
from tests.util import require

from pyxenstored.wire import MsgType

M = MsgType
HOME = "/local/domain/5"


@pytest.fixture
def xen_daemon() -> Iterator[Launched]:
    """pyxenstored-xen in its own dir (domains 0, 5, 6 exist for the shim)."""
    yield from run_daemon("pyxenstored-xen", ring=True)


def log_text(daemon: Launched) -> str:
    with open(daemon.log, errors="replace") as f:
        return f.read()


def fd_target(pid: int, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def shim_evtchn_fd(log: str) -> int:
    """The descriptor ``xenevtchn_open`` gave the daemon, from the shim's line."""
    lines = [line for line in log.splitlines() if "[xsshim] xenevtchn_open -> fd" in line]
    assert lines, log
    return int(lines[-1].rsplit(" ", 1)[1])


@pytest.mark.parametrize("driver", ["client", "ring_guest"])
def test_a_guest_is_served_through_the_libraries(xen_daemon: Launched, driver: str) -> None:
    ring_dir = xen_daemon.ring_dir
    assert ring_dir is not None
    with xen_daemon.connect() as dom0:
        introduce_guest(dom0, ring_dir, 5, 7)
        guest = make_guest(driver, ring_dir, 5, 7)
        try:
            assert ok(guest, M.WRITE, b"data/a\0hello") == b"OK\0"
            assert dom0.read(f"{HOME}/data/a") == b"hello"
            assert ok(guest, M.READ, b"data/a\0") == b"hello"
            assert err(guest, M.READ, b"/local/domain/0/nope\0") in ("ENOENT", "EACCES")
            ok(guest, M.WATCH, b"data\0w\0")
            assert guest.next_event(10) == b"data\0w\0"
            dom0.write(f"{HOME}/data/b", b"x")
            assert guest.next_event(10) == b"data/b\0w\0"
        finally:
            guest.close()
        log = log_text(xen_daemon)
        # The calls went to the libraries, answered by the shim...
        assert "[xsshim] bind_virq 3 -> " in log  # VIRQ_DOM_EXC
        assert "[xsshim] map_grant_ref dom 5" in log
        assert "[xsshim] bind_interdomain dom 5 port 7 -> " in log
        assert "[xsshim] xc_domain_getinfo(" in log
        # ...whose FIFO is the daemon's event channel and whose file its page.
        fd = shim_evtchn_fd(log)
        assert fd_target(xen_daemon.pid, fd) == os.path.join(ring_dir, "evtchn")
        with open(f"/proc/{xen_daemon.pid}/maps") as f:
            assert os.path.join(ring_dir, "ring-dom5") in f.read()
        # The simulated hypervisor's domain list is not there: the shim's is used.
        assert not os.path.exists(os.path.join(ring_dir, "domains"))
        dom0.release(5)
        assert not dom0.is_domain_introduced(5)


def test_the_store_domain_ring_comes_from_proc_xen(xen_daemon: Launched) -> None:
    ring_dir = xen_daemon.ring_dir
    assert ring_dir is not None
    with xen_daemon.connect() as dom0:
        dom0.write("/tool/x", b"from the socket")
    # The shim's /proc/xen/xsd_port says 1; xsd_kva is its ring-dom0 file.
    guest = make_guest("client", ring_dir, 0, 1)
    try:
        assert ok(guest, M.READ, b"/tool/x\0") == b"from the socket"
        assert ok(guest, M.WRITE, b"/tool/y\0from dom0's ring") == b"OK\0"
    finally:
        guest.close()
    with xen_daemon.connect() as dom0:
        assert dom0.read("/tool/y") == b"from dom0's ring"
    log = log_text(xen_daemon)
    assert "[xsshim] open /proc/xen/xsd_port -> '1'" in log
    assert "[xsshim] open /proc/xen/xsd_kva -> dom0 ring page" in log
    assert "[xsshim] bind_interdomain dom 0 port 1 -> " in log


def test_a_virq_kick_rescans_the_domains_and_serving_goes_on(xen_daemon: Launched) -> None:
    ring_dir = xen_daemon.ring_dir
    assert ring_dir is not None
    with xen_daemon.connect() as dom0:
        introduce_guest(dom0, ring_dir, 5, 7)
        guest = make_guest("client", ring_dir, 5, 7)
        try:
            before = log_text(xen_daemon).count("xc_domain_getinfo(")
            kick(ring_dir, 1)  # the shim's first port: VIRQ_DOM_EXC
            assert ok(guest, M.WRITE, b"after\0kick") == b"OK\0"
            assert log_text(xen_daemon).count("xc_domain_getinfo(") > before
            assert dom0.is_domain_introduced(5)  # the shim still lists it
        finally:
            guest.close()


def test_without_the_libraries_answers_start_fails_in_one_line(tmp_path: Path) -> None:
    """No shim and no /dev/xen: the libraries themselves say no; one line, status 1."""
    require(not os.path.exists("/dev/xen/evtchn"), "a host without /dev/xen/evtchn")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_PRELOAD", "XS_SHIM"))}
    run = tmp_path / "run"
    out = subprocess.run(
        pyxenstored_command(run, hypervisor="xen"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "pyxenstored: cannot use Xen: cannot open the event channel device /dev/xen/evtchn:"
        " No such file or directory (not a Xen host, or the kernel module xen_evtchn"
        " is not loaded)"
    ]
    assert not (run / "socket").exists()
