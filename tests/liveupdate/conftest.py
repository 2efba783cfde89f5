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
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.client.daemons import xen_environment
from tests.util import XEN_BIN, require

START_TIMEOUT = 20.0


def write_successor(
    path: Path, rundir: Path, dumps: Path, launcher: list[str] | None = None
) -> Path:
    """A pyxenstored launcher that copies ``state_dump`` when started with -U.

    ``launcher``: the command that runs the daemon (default ``python -m
    pyxenstored``; the Xen backend's tests give theirs).
    """
    command = " ".join(f'"{word}"' for word in launcher or [sys.executable, "-m", "pyxenstored"])
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


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"no daemon on {path}")


@dataclass
class LuDaemon:
    """A pyxenstored (or C) daemon that live-updates itself in place (same pid)."""

    proc: subprocess.Popen[bytes]
    rundir: Path
    program: Path
    dumps: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def socket(self) -> str:
        return str(self.rundir / "socket")

    def client_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("XENSTORED_RUNDIR", None)
        env.pop("LD_PRELOAD", None)
        env["XENSTORED_PATH"] = self.socket
        return env

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
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_pyxenstored(
    tmp: Path,
    *args: str,
    env: dict[str, str] | None = None,
    rundir_option: bool = True,
    launcher: list[str] | None = None,
) -> LuDaemon:
    """Start pyxenstored through its successor script (``--rundir`` unless told not to)."""
    rundir = tmp / "run"
    rundir.mkdir(parents=True, exist_ok=True)
    rundir.chmod(0o700)
    program = write_successor(tmp / "pyxenstored-successor", rundir, tmp / "dumps", launcher)
    log = tmp / "daemon.log"
    argv = [str(program), "-N", *(["--rundir", str(rundir)] if rundir_option else []), *args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for_socket(rundir / "socket", proc, START_TIMEOUT)
    except AssertionError:
        proc.kill()
        proc.wait()
        pytest.fail(f"pyxenstored did not start:\n{log.read_text(errors='replace')}")
    return LuDaemon(proc, rundir, program, tmp / "dumps", log, env or {})


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
        (ring_dir / "domains").write_text(domains)
        return start_pyxenstored(tmp, "--ring-dir", str(ring_dir)), ring_dir
    domids = ",".join(line.split()[0] for line in domains.splitlines() if line.strip())
    env = dict(os.environ, **xen_environment(str(ring_dir), domids))
    env.pop("XENSTORED_PATH", None)
    launcher = [sys.executable, "-m", "pyxenstored", "--hypervisor", "xen"]
    return start_pyxenstored(tmp, env=env, launcher=launcher), ring_dir


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
    d = start_pyxenstored(tmp_path)
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
