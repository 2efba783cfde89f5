"""Start and stop the two daemons under comparison, each in its own run dir.

* the C reference (Xen 4.17) through ``reference-xenstored`` in the directory
  ``PYXENSTORED_PEERS`` names (``tests/util.py``);
* pyxenstored through ``python -m pyxenstored --rundir DIR``;
* ``pyxenstored-xen``: the same on its Xen backend under the C reference's
  shim (guests on rings only: the comparison with the simulated backend).

Both listen on ``DIR/socket``.  :class:`Daemon` is a plain context manager so
that the test fixtures and ``bench/compare.py`` share it; ``cpus`` pins the
daemon with ``taskset`` for fair benchmarks.  Starting and stopping are
``tests/launcher.py``'s.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.conformance.rawclient import create_ring_page
from tests.launcher import KINDS as LAUNCHABLE
from tests.launcher import Launched, start_daemon
from tests.util import REFERENCE_RUNNER, peer_missing, shim_library

REFERENCE_BINARY = Path("/usr/lib/xen-4.17/bin/xenstored")

REFERENCE = "reference"
PYXENSTORED = "pyxenstored"
PYXENSTORED_XEN = "pyxenstored-xen"
KINDS = (REFERENCE, PYXENSTORED)


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


@dataclass(slots=True)
class Daemon:
    """One daemon of ``kind`` in a temp run dir of its own; ``socket`` is where clients connect.

    ``guests``: domains (besides 0) whose ring pages are made in the run dir,
    which is the ring dir.  Started and stopped by tests/launcher.py; a
    failed start raises :class:`tests.launcher.LaunchError`.
    """

    kind: str
    cpus: str | None = None
    extra_args: tuple[str, ...] = ()
    guests: tuple[int, ...] = ()
    rundir: Path = field(init=False)
    running: Launched | None = None

    @property
    def socket(self) -> str:
        return str(self.rundir / "socket")

    @property
    def pid(self) -> int:
        return self.running.pid if self.running is not None else 0

    def start(self) -> Daemon:
        if self.kind not in LAUNCHABLE:
            raise ValueError(f"unknown daemon kind {self.kind!r}")
        self.rundir = Path(tempfile.mkdtemp(prefix=f"xs-{self.kind}-"))
        for domid in self.guests:
            create_ring_page(str(self.rundir), domid)
        # the shim's ring mode, or the simulated hypervisor's ring dir
        ring_dir = self.rundir if self.guests else None
        domains = (0, *self.guests)
        try:
            self.running = start_daemon(
                self.kind,
                self.rundir,
                *self.extra_args,
                ring_dir=ring_dir,
                domains=domains,
                cpus=self.cpus,
                log=self.rundir / "pyxenstored.out",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def alive(self) -> bool:
        return self.running is not None and self.running.alive()

    def rss_kib(self) -> int:
        """Resident set size of the daemon process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise LookupError(f"no VmRSS for pid {self.pid}")

    def output(self) -> str:
        return self.running.output() if self.running is not None else ""

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None
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
