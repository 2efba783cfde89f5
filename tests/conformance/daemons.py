"""Start and stop the two daemons under comparison, each in its own run dir.

* the C reference (Xen 4.17) through ``reference-xenstored`` in the directory
  ``PYXENSTORED_PEERS`` names (``tests/util.py``);
* pyxenstored through ``python -m pyxenstored --rundir DIR``;
* ``pyxenstored-xen``: the same on its Xen backend under the C reference's
  shim (guests on rings only: the comparison with the simulated backend).

Both listen on ``DIR/socket``.  :class:`Daemon` is a plain context manager so
that the test fixtures and ``bench/compare.py`` share it; ``cpus`` pins the
daemon with ``taskset`` for fair benchmarks.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.conformance.rawclient import create_ring_page
from tests.util import REFERENCE_RUNNER, peer_missing, shim_library

REPO = Path(__file__).resolve().parents[2]
REFERENCE_BINARY = Path("/usr/lib/xen-4.17/bin/xenstored")

REFERENCE = "reference"
PYXENSTORED = "pyxenstored"
PYXENSTORED_XEN = "pyxenstored-xen"
KINDS = (REFERENCE, PYXENSTORED)

START_TIMEOUT = 15.0


class DaemonError(Exception):
    """A daemon did not start (the message says where its output is)."""


def reference_available() -> tuple[bool, str]:
    if not REFERENCE_RUNNER.exists():
        return False, peer_missing(REFERENCE_RUNNER)
    if not REFERENCE_BINARY.exists():
        return False, f"{REFERENCE_BINARY} missing (reference-xenstored install)"
    return True, ""


def pyxenstored_available() -> tuple[bool, str]:
    try:
        spec = importlib.util.find_spec("pyxenstored.__main__")
    except ImportError:
        spec = None
    if spec is None:
        return False, "pyxenstored has no daemon entry point (python -m pyxenstored) yet"
    return True, ""


def shim_available() -> tuple[bool, str]:
    if not shim_library().exists():
        return False, f"the xsshim library {shim_library()} (built by {REFERENCE_RUNNER} install)"
    return pyxenstored_available()


def available(kind: str) -> tuple[bool, str]:
    if kind == REFERENCE:
        return reference_available()
    return shim_available() if kind == PYXENSTORED_XEN else pyxenstored_available()


def _taskset(cpus: str | None) -> list[str]:
    if cpus is None:
        return []
    tool = shutil.which("taskset")
    if tool is None:
        raise DaemonError("taskset not installed")
    return [tool, "-c", cpus]


@dataclass(slots=True)
class Daemon:
    """One running daemon; ``socket`` is where clients connect."""

    kind: str
    cpus: str | None = None
    extra_args: tuple[str, ...] = ()
    guests: tuple[int, ...] = ()
    rundir: Path = field(init=False)
    pid: int = 0
    _proc: subprocess.Popen[bytes] | None = None
    _own_dir: bool = True

    @property
    def socket(self) -> str:
        return str(self.rundir / "socket")

    def start(self) -> Daemon:
        self.rundir = Path(tempfile.mkdtemp(prefix=f"xs-{self.kind}-"))
        for domid in self.guests:
            create_ring_page(str(self.rundir), domid)
        if self.kind == REFERENCE:
            self._start_reference()
        elif self.kind in (PYXENSTORED, PYXENSTORED_XEN):
            self._start_pyxenstored()
        else:
            raise ValueError(f"unknown daemon kind {self.kind!r}")
        return self

    def _start_reference(self) -> None:
        cmd = [*_taskset(self.cpus), str(REFERENCE_RUNNER), "start", str(self.rundir)]
        env = dict(os.environ)
        env.pop("XENSTORED_PATH", None)
        if self.guests:
            # the shim's ring mode: pages and event channel FIFO in the run dir
            env["XS_SHIM_RINGDIR"] = str(self.rundir)
            env["XS_SHIM_DOMAINS"] = ",".join(str(d) for d in (0, *self.guests))
        out = subprocess.run(cmd + list(self.extra_args), capture_output=True, timeout=300, env=env)
        if out.returncode != 0:
            raise DaemonError(f"reference start failed: {out.stderr.decode(errors='replace')}")
        self.pid = int(out.stdout.split()[-1])

    def _start_pyxenstored(self) -> None:
        log = open(self.rundir / "pyxenstored.out", "wb")  # noqa: SIM115 - lives with the process
        env = dict(os.environ)
        env.pop("XENSTORED_PATH", None)
        src = str(REPO / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [
            *_taskset(self.cpus),
            sys.executable,
            "-m",
            "pyxenstored",
            "-N",
            "--rundir",
            str(self.rundir),
            *self.extra_args,
        ]
        if self.kind == PYXENSTORED_XEN:
            # Xen's libraries, answered by the shim as for the C reference
            env["LD_PRELOAD"] = str(shim_library())
            env["XS_SHIM_RINGDIR"] = str(self.rundir)
            env["XS_SHIM_DOMAINS"] = ",".join(str(d) for d in (0, *self.guests))
            cmd += ["--hypervisor", "xen"]
        elif self.guests:
            # the simulated hypervisor (server/hypervisor.py) uses the shim's files
            with open(self.rundir / "domains", "w") as f:
                f.write("".join(f"{d}\n" for d in (0, *self.guests)))
            cmd += ["--ring-dir", str(self.rundir)]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        self.pid = self._proc.pid
        deadline = time.monotonic() + START_TIMEOUT
        sock = Path(self.socket)
        while not sock.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                text = (self.rundir / "pyxenstored.out").read_text(errors="replace")
                self.stop()
                raise DaemonError(f"pyxenstored did not start:\n{text[-2000:]}")
            time.sleep(0.02)

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        # The reference is not our child: once dead it may linger as a zombie
        # that nobody reaps, so look at its state rather than kill(pid, 0).
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return False
        return "\nState:\tZ" not in status and "\nState:\tX" not in status

    def rss_kib(self) -> int:
        """Resident set size of the daemon process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise DaemonError("no VmRSS")

    def output(self) -> str:
        name = "xenstored.out" if self.kind == REFERENCE else "pyxenstored.out"
        path = self.rundir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.kind == REFERENCE and self.pid:
            subprocess.run([str(REFERENCE_RUNNER), "stop", str(self.rundir)], capture_output=True)
            _wait_gone(self.pid)
        elif self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        self.pid = 0
        if self._own_dir:
            shutil.rmtree(self.rundir, ignore_errors=True)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.02)
