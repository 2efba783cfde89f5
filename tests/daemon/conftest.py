"""Fixtures: the real daemon as a subprocess, and the server in-process on a fake store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.daemon.fake_store import FakeStore
from tests.launcher import Launched, start_pyxenstored

from pyxenstored.server.loop import Server, ServerConfig


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Launched]:
    """pyxenstored on ``tmp_path/run/socket`` with its pipes (tests/launcher.py)."""
    d = start_pyxenstored(tmp_path / "run")
    yield d
    status = d.stop()
    assert status == 0, d.output()


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
