"""Fixtures for live-update tests: daemons that replace themselves, and their dumps.

A daemon is started through a small *successor* script that also serves as
the ``-f`` program of every live update: it keeps a copy of each state dump
(``dumps/dump.<n>``) before exec'ing ``python -m pyxenstored`` with the
arguments it was given, so consecutive dumps can be compared.  The script
names pyxenstored, so the old daemon recognises it and runs its
``--check-state`` first.
"""

from __future__ import annotations

import gc
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.launcher import (
    PYXENSTORED,
    Launched,
    clean_env,
    domids,
    shim_environment,
    start_pyxenstored,
)
from tests.util import XEN_BIN, require


def write_successor(
    path: Path, rundir: Path, dumps: Path, launcher: list[str] | None = None
) -> Path:
    """A pyxenstored launcher that copies ``state_dump`` when started with -U.

    ``launcher``: the command that runs the daemon (default ``python -m
    pyxenstored``; the Xen backend's tests give theirs).
    """
    command = " ".join(f'"{word}"' for word in launcher or PYXENSTORED)
    dumps.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        "# launches pyxenstored; keeps a copy of each live-update state dump\n"
        'for a in "$@"; do\n'
        '  if [ "$a" = -U ]; then\n'
        f'    n=$(ls "{dumps}" | wc -l)\n'
        f'    cp "{rundir}/state_dump" "{dumps}/dump.$n"\n'
        "  fi\n"
        "done\n"
        f'exec {command} "$@"\n'
    )
    path.chmod(0o755)
    return path


@dataclass
class LuDaemon:
    """A pyxenstored (or C) daemon that live-updates itself in place (same pid).

    ``daemon``: as started (tests/launcher.py); ``program``: its successor
    script, which keeps each state dump in ``dumps``.
    """

    daemon: Launched
    program: Path
    dumps: Path

    @property
    def proc(self) -> subprocess.Popen[str]:
        assert self.daemon.proc is not None
        return self.daemon.proc

    @property
    def rundir(self) -> Path:
        return self.daemon.rundir

    @property
    def socket(self) -> str:
        return self.daemon.socket

    def client_env(self) -> dict[str, str]:
        return dict(self.daemon.env)

    def live_update(
        self, *opts: str, program: str | Path | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run Debian's ``xenstore-control live-update [opts] <program>``."""
        control = XEN_BIN / "xenstore-control"
        return subprocess.run(
            [str(control), "live-update", *opts, str(program or self.program)],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def dump_files(self) -> list[Path]:
        return sorted(self.dumps.iterdir(), key=lambda p: int(p.name.split(".")[1]))

    def alive(self) -> bool:
        return self.daemon.alive()

    def output(self) -> str:
        return self.daemon.output()

    def stop(self) -> int | None:
        return self.daemon.stop()


def start_lu_daemon(
    tmp: Path,
    *args: str,
    env: dict[str, str] | None = None,
    rundir_option: bool = True,
    launcher: list[str] | None = None,
    ring_dir: Path | None = None,
    domains: str | None = None,
) -> LuDaemon:
    """Start pyxenstored through its successor script (``--rundir`` unless told not to).

    ``ring_dir``, ``domains``: guests on rings of the simulated hypervisor
    (tests/launcher.py).
    """
    rundir = tmp / "run"
    rundir.mkdir(parents=True, exist_ok=True)
    rundir.chmod(0o700)
    program = write_successor(tmp / "pyxenstored-successor", rundir, tmp / "dumps", launcher)
    daemon = start_pyxenstored(
        rundir,
        *args,
        ring_dir=ring_dir,
        domains=domains,
        env=env,
        log=tmp / "daemon.log",
        program=[str(program)],
        rundir_option=rundir_option,
        new_session=True,
    )
    return LuDaemon(daemon, program, tmp / "dumps")


def start_on_rings(tmp: Path, backend: str, domains: str) -> tuple[LuDaemon, Path]:
    """pyxenstored serving guests on rings in ``tmp/ring``: (daemon, ring dir).

    ``backend``: ``sim`` (the simulated hypervisor, ``domains`` its
    ``DIR/domains`` file) or ``xen`` (Xen's libraries under the C reference's
    shim, which takes the domids of ``domains`` as its fixed list and
    ignores the unique ids).
    """
    require((XEN_BIN / "xenstore-control").exists(), "xen-utils-4.17 xenstore-control")
    ring_dir = tmp / "ring"
    ring_dir.mkdir(mode=0o700)
    if backend == "sim":
        return start_lu_daemon(tmp, ring_dir=ring_dir, domains=domains), ring_dir
    # The backend is in the successor script: C, updated to, gets no such option.
    env = clean_env(("XENSTORED_PATH",), add=shim_environment(ring_dir, domids(domains)))
    launcher = [*PYXENSTORED, "--hypervisor", "xen"]
    return start_lu_daemon(tmp, env=env, launcher=launcher), ring_dir


@pytest.fixture(autouse=True)
def _collector_back_on() -> Iterator[None]:
    """An in-process restore pauses the cyclic collector until its loop turns (see
    LiveUpdate.restore); tests that drive the loop by hand leave it to this."""
    was = gc.isenabled()
    yield
    if was:
        gc.enable()


@pytest.fixture
def lu_daemon(tmp_path: Path) -> Iterator[LuDaemon]:
    require((XEN_BIN / "xenstore-control").exists(), "xen-utils-4.17 xenstore-control")
    d = start_lu_daemon(tmp_path)
    yield d
    d.stop()


class LineReader:
    """Collects the stdout lines of a subprocess in a thread (e.g. xenstore-watch)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if line == text:
                return
        raise AssertionError(f"{text!r} not seen; got {seen}")
