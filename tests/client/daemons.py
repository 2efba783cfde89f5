"""Starting daemons for the client tests: the C reference (``PYXENSTORED_PEERS``) and pyxenstored.

Each daemon runs in its own short temp dir (unix socket paths are limited to
108 bytes).  For ring tests the same dir is the ring dir: the C reference's
shim maps ``ring-dom<N>`` there and reads kicks from ``evtchn``; pyxenstored
gets ``--ring-dir`` and a ``domains`` file listing the domains that exist.

``pyxenstored-xen`` is pyxenstored on its Xen backend (``XenHypervisor``,
through the Xen libraries) under the same shim as the C reference, with the
same ring dir conventions: the shim maps the pages and owns the FIFO.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from tests.util import REFERENCE_RUNNER, XEN_BIN, require_peer, require_shim, require_tool

from pyxenstored.client import Client, Perm, create_ring_page

GUEST = 5  # the domain that plays a guest on a ring
SPARE = 6  # a second existing domain, for introduce/release events
GUEST_PORT = 7
EXISTING_DOMAINS = (0, GUEST, SPARE)
START_TIMEOUT = 15.0
REQUEST_TIMEOUT = 10.0


@dataclass
class Daemon:
    kind: str
    rundir: str
    socket: str
    ring_dir: str | None
    stop: Callable[[], None] = field(repr=False)
    log: str = ""
    pid: int = 0

    def connect(self) -> Client:
        return Client.connect_socket(self.socket, timeout=REQUEST_TIMEOUT)


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def _wait_for_socket(path: str, alive: Callable[[], bool], what: str, log: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    # The file appears at bind(), before listen(): wait until it accepts.
    while not (os.path.exists(path) and _accepts(path)):
        if not alive():
            pytest.fail(f"{what} exited at start; log {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not listen on {path}; log {log}:\n{_tail(log)}")
        time.sleep(0.02)


def _tail(path: str) -> str:
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        return f.read()[-2000:]
    return ""


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start_reference(
    rundir: str, ring: bool, args: Sequence[str] = (), domains: Sequence[int] = EXISTING_DOMAINS
) -> Daemon:
    runner = str(require_peer(REFERENCE_RUNNER))
    require_tool(str(XEN_BIN / "xenstored"))
    env = dict(os.environ)
    env.pop("XENSTORED_PATH", None)
    if ring:
        env["XS_SHIM_RINGDIR"] = rundir
        env["XS_SHIM_DOMAINS"] = ",".join(map(str, domains))
    out = subprocess.run(
        [runner, "start", rundir, *args], env=env, capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        pytest.fail(
            f"reference xenstored did not start: {out.stderr}{_tail(rundir + '/xenstored.out')}"
        )
    pid = int(out.stdout.split()[-1])

    def stop() -> None:
        subprocess.run([runner, "stop", rundir], capture_output=True, timeout=30)
        deadline = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _pid_alive(pid):
            os.kill(pid, 9)

    return Daemon(
        "reference", rundir, os.path.join(rundir, "socket"), rundir if ring else None, stop, pid=pid
    )


@functools.cache
def pyxenstored_help() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pyxenstored", "--help"], capture_output=True, text=True, timeout=60
    )
    return out.stdout + out.stderr


def xen_environment(ring_dir: str, domains: str = "") -> dict[str, str]:
    """The shim's environment for pyxenstored's Xen backend (its debug lines in the log)."""
    return {
        "LD_PRELOAD": str(require_shim()),
        "XS_SHIM_RINGDIR": ring_dir,
        "XS_SHIM_DOMAINS": domains or ",".join(map(str, EXISTING_DOMAINS)),
        "XS_SHIM_DEBUG": "1",
    }


def start_pyxenstored(
    rundir: str,
    ring: bool,
    backend: str = "sim",
    extra: Sequence[str] = (),
    domains: Sequence[int] = EXISTING_DOMAINS,
) -> Daemon:
    """pyxenstored on the simulated hypervisor (``sim``) or its Xen backend under the shim.

    ``domains``: the domains that exist at start (``DIR/domains`` for ``sim``,
    ``XS_SHIM_DOMAINS`` for ``xen``, whose list stays fixed).
    """
    env = dict(os.environ)
    env.pop("XENSTORED_PATH", None)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("XS_SHIM_RINGDIR", None)
    if backend == "xen":
        # The shim's ring dir is the run dir; without ``ring`` it is unused.
        args = [
            sys.executable,
            "-m",
            "pyxenstored",
            "-N",
            "--hypervisor",
            "xen",
            "--rundir",
            rundir,
            *extra,
        ]
        env.update(xen_environment(rundir, ",".join(map(str, domains))))
    else:
        args = [sys.executable, "-m", "pyxenstored", "-N", "--rundir", rundir, *extra]
    if ring and backend != "xen":
        if "--ring-dir" not in pyxenstored_help():
            pytest.skip("pyxenstored has no --ring-dir yet (issue 6, simulated hypervisor)")
        with open(os.path.join(rundir, "domains"), "w") as f:
            f.write("".join(f"{d}\n" for d in domains))
        args += ["--ring-dir", rundir]
    log = os.path.join(rundir, "pyxenstored.log")
    with open(log, "wb") as logf:
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env=env)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    sock = os.path.join(rundir, "socket")
    try:
        _wait_for_socket(sock, lambda: proc.poll() is None, "pyxenstored", log)
    except BaseException:
        stop()
        raise
    kind = "pyxenstored" if backend == "sim" else f"pyxenstored-{backend}"
    return Daemon(kind, rundir, sock, rundir if ring else None, stop, log, proc.pid)


def run_daemon(
    kind: str, ring: bool, args: Sequence[str] = (), domains: Sequence[int] = EXISTING_DOMAINS
) -> Iterator[Daemon]:
    """Start ``kind`` in a fresh short temp dir, yield it, stop it and clean up.

    Kinds: ``reference`` (C, shim), ``pyxenstored`` (simulated hypervisor),
    ``pyxenstored-xen`` (Xen backend, shim).  ``args``: extra daemon arguments
    (the reference runner passes them on); ``domains``: those that exist at
    start (for the shim, all there will ever be).
    """
    rundir = tempfile.mkdtemp(prefix="xsc-", dir="/tmp")
    try:
        if kind == "reference":
            daemon = start_reference(rundir, ring, args, domains)
        elif kind == "pyxenstored-xen":
            daemon = start_pyxenstored(rundir, ring, "xen", args, domains)
        else:
            daemon = start_pyxenstored(rundir, ring, "sim", args, domains)
        try:
            yield daemon
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def introduce_guest(dom0: Client, ring_dir: str, domid: int, port: int) -> None:
    """What a toolstack does: the guest's page exists, its home is made, then INTRODUCE."""
    create_ring_page(ring_dir, domid)
    home = f"/local/domain/{domid}"
    dom0.mkdir(home)
    dom0.set_perms(home, [Perm("n", domid)])
    dom0.introduce(domid, 1, port)


def set_domains(daemon: Daemon, text: str) -> None:
    """Replace pyxenstored's ``DIR/domains``: the domains its simulated hypervisor knows."""
    assert daemon.ring_dir is not None
    path = os.path.join(daemon.ring_dir, "domains")
    with open(path + ".new", "w") as f:
        f.write(text)
    os.replace(path + ".new", path)
