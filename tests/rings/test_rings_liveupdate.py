"""Live update keeps guests on rings: pyxenstored -> pyxenstored, C -> pyxenstored -> C.

A guest on its ring leaves half a request in the request queue and has an
unread watch event waiting; after ``xenstore-control live-update`` the new
daemon maps the ring again and the guest carries on without reconnecting:
it finishes its request and gets the answer, and the event.  The daemon is
started through the live-update tests' successor script.

Both pyxenstored backends: ``sim`` (the simulated hypervisor) and ``xen``
(Xen's libraries under the C reference's shim, whose event channel
descriptor each successor takes over with ``xenevtchn_fdopen``, as C's
``lu_daemon.c`` arranges).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.client.daemons import introduce_guest
from tests.launcher import start_reference
from tests.liveupdate.conftest import LuDaemon, start_on_rings, write_successor
from tests.rings.conftest import kick
from tests.util import XEN_BIN, require, require_peer

from pyxenstored.client import Client, WatchEvent
from pyxenstored.wire import HEADER, MsgType

HOME = "/local/domain/5"
BACKENDS = ["sim", "xen"]
PYXENSTORED = [sys.executable, "-m", "pyxenstored"]
# How C execs pyxenstored on the Xen backend: C passes its own arguments, so
# the backend comes from the environment.
XEN_LAUNCHER = ["env", "PYXENSTORED_HYPERVISOR=xen", *PYXENSTORED]
FDOPEN = "[xsshim] xenevtchn_fdopen fd "


def fd_target(pid: int, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


@pytest.fixture(params=BACKENDS)
def ring_lu(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[LuDaemon, Path, str]:
    d, ring_dir = start_on_rings(tmp_path, request.param, "0\n5 1234\n6\n")
    return d, ring_dir, request.param


def test_guests_carry_on_across_live_updates(ring_lu: tuple[LuDaemon, Path, str]) -> None:
    d, ring_dir, backend = ring_lu
    try:
        with Client.connect_socket(d.socket, timeout=20) as dom0:
            introduce_guest(dom0, str(ring_dir), 5, 7)
            guest = Client.connect_ring(str(ring_dir), 5, 7, timeout=20)
            guest.write("data/a", b"before")
            guest.watch("data", "w")
            assert guest.next_event(10) == WatchEvent("data", "w")
            dom0.write(f"{HOME}/data/b", b"unread")  # its event waits for the guest
            payload = b"data/a\0"
            request = HEADER.pack(MsgType.READ, 4242, 0, len(payload)) + payload
            guest.send_raw(request[:11])  # half a header in the ring
            for round_ in range(2):
                done = d.live_update("-t", "10")
                assert done.returncode == 0, (done.stdout, done.stderr, d.output())
                assert d.alive()
                if round_ == 0:
                    guest.send_raw(request[11:])  # the rest, to the new daemon
                    assert guest.collect(4242, 20) == b"before"
                    assert guest.next_event(10) == WatchEvent("data/b", "w")
                # Same ring, same watches, no reconnection.
                dom0.write(f"{HOME}/data/c{round_}", b"x")
                assert guest.next_event(10) == WatchEvent(f"data/c{round_}", "w")
                guest.write(f"after{round_}", b"ok")
                assert dom0.read(f"{HOME}/after{round_}") == b"ok"
                assert dom0.is_domain_introduced(5)
            if backend == "sim":
                # The unique id travelled: replacing domain 5 is still noticed.
                # (The shim's domains are fixed at start and have no unique ids.)
                dom0.watch("@releaseDomain", "r")
                assert dom0.next_event(10) == WatchEvent("@releaseDomain", "r")
                (ring_dir / "domains").write_text("0\n5 999\n6\n")
                kick(str(ring_dir), 1)
                assert dom0.next_event(10) == WatchEvent("@releaseDomain", "r")
                assert not dom0.is_domain_introduced(5)
            guest.close()
        if backend == "xen":
            log = d.output()
            # Each successor took the handed-over descriptor and bound the virq on it.
            assert log.count(FDOPEN) == 2
            assert log.count("[xsshim] bind_virq 3 -> 100") == 2
            fd = int(log.rsplit(FDOPEN, 1)[1].split()[0])
            assert fd_target(d.proc.pid, fd) == str(ring_dir / "evtchn")
    finally:
        d.stop()


@pytest.mark.reference
@pytest.mark.parametrize("backend", BACKENDS)
def test_guest_on_a_ring_goes_from_c_to_pyxenstored_and_back(tmp_path: Path, backend: str) -> None:
    """C 4.17 execs pyxenstored (its arguments, its shim environment): the ring carries on."""
    require_peer()
    require((XEN_BIN / "xenstore-control").exists(), "xen-utils-4.17 xenstore-control")
    run = tmp_path / "ref"
    env = dict(os.environ, XS_SHIM_RINGDIR=str(run), XS_SHIM_DOMAINS="0,5", XS_SHIM_DEBUG="1")
    env.pop("XENSTORED_RUNDIR", None)
    env.pop("XENSTORED_PATH", None)
    run.mkdir(mode=0o700)
    ref = start_reference(run, env=env, optional=True)
    pid = ref.pid
    # sim: pyxenstored's default (auto) finds the shim's ring dir in the environment.
    launcher = XEN_LAUNCHER if backend == "xen" else PYXENSTORED
    successor = write_successor(
        tmp_path / "pyxenstored-successor", run, tmp_path / "dumps", launcher
    )
    control_env = dict(env, XENSTORED_PATH=str(run / "socket"))
    control_env.pop("LD_PRELOAD", None)
    try:
        with Client.connect_socket(str(run / "socket"), timeout=30) as dom0:
            introduce_guest(dom0, str(run), 5, 7)
            guest = Client.connect_ring(str(run), 5, 7, timeout=30)
            guest.write("data/a", b"from-c")
            guest.watch("data", "w")
            assert guest.next_event(10) == WatchEvent("data", "w")
            dom0.write(f"{HOME}/data/b", b"unread")
            payload = b"data/a\0"
            request = HEADER.pack(MsgType.READ, 77, 0, len(payload)) + payload
            guest.send_raw(request[:5])
            stages = [("py", str(successor)), ("c", str(XEN_BIN / "xenstored"))]
            for n, (expect, program) in enumerate(stages):
                done = subprocess.run(
                    [str(XEN_BIN / "xenstore-control"), "live-update", "-t", "10", program],
                    env=control_env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                log = (run / "xenstored.out").read_text(errors="replace")
                assert done.returncode == 0, (done.stdout, done.stderr, log)
                exe = os.readlink(f"/proc/{pid}/exe")
                assert exe.endswith("xenstored") == (expect == "c"), log
                if n == 0:
                    guest.send_raw(request[5:])
                    assert guest.collect(77, 20) == b"from-c"
                    assert guest.next_event(10) == WatchEvent("data/b", "w")
                dom0.write(f"{HOME}/data/s{n}", b"x")
                assert guest.next_event(10) == WatchEvent(f"data/s{n}", "w")
                guest.write(f"stage{n}", expect)
                assert dom0.read(f"{HOME}/stage{n}") == expect.encode()
            guest.close()
        log = (run / "xenstored.out").read_text(errors="replace")
        # The Xen backend, then C, took the descriptor over through the library;
        # on the simulated backend only C's return did.
        assert log.count(FDOPEN) == (2 if backend == "xen" else 1), log
    finally:
        ref.stop()
