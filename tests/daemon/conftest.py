"""Fixtures: the real daemon as a subprocess, and the server in-process on a fake store."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.daemon.fake_store import FakeStore

from pyxenstored.server.loop import Server, ServerConfig

START_TIMEOUT = 20.0


@dataclass
class Daemon:
    """A running ``python -m pyxenstored`` and how clients reach it."""

    proc: subprocess.Popen[str]
    rundir: Path
    socket: str
    env: dict[str, str] = field(default_factory=dict)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""


def client_env(sock: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XENSTORED_RUNDIR", None)
    env["XENSTORED_PATH"] = sock
    return env


def start_daemon(
    rundir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> Daemon:
    """Start the daemon and wait for its ``XENSTORED_PATH=`` line."""
    sock = str(rundir / "socket")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyxenstored", "-N", "--rundir", str(rundir), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=preexec,
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(START_TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    if line != f"XENSTORED_PATH={sock}\n":
        proc.kill()
        _out, err = proc.communicate()
        pytest.fail(f"daemon did not start (got {line!r}); stderr:\n{err}")
    return Daemon(proc, rundir, sock, client_env(sock))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path / "run")
    yield d
    status = d.stop()
    assert status == 0, d.stderr()


@dataclass
class InProcessServer:
    server: Server
    store: FakeStore
    socket: str


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[InProcessServer]:
    """The event loop in a background thread, on a :class:`FakeStore`."""
    store = FakeStore()
    server = Server(store, ServerConfig(max_output_bytes=64 * 1024, watch_event_timeout=0.5))
    path = str(tmp_path / "socket")
    server.listen(path)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.run_once(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield InProcessServer(server, store, path)
    finally:
        stop.set()
        thread.join(10)
        server.close()
