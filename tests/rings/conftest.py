"""Fixtures for guests on rings: both daemons, the project's client and ring_guest.py.

The daemons come from ``tests/client/daemons.py`` (run dir = ring dir; domains
0, 5 and 6 exist): the C reference under its shim, pyxenstored on its
simulated hypervisor, and pyxenstored on its Xen backend under the same shim
(``pyxenstored-xen``).  The same guests must see the same replies from both
pyxenstored backends.  What the shim cannot do is played on the simulated
backend only: a test marked ``sim_only(reason=...)`` is generated for the
simulated backend alone (its other daemon cases are deselected at
collection, and the reason is printed in the run's summary).  A guest is
driven either by the project's client
(:class:`pyxenstored.client.Client` over a ring) or by
``ring_guest.py`` of ``PYXENSTORED_PEERS`` (the harness the peers provide for the C
reference), wrapped here in the same small interface so that one scenario
runs with both drivers against both daemons.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Protocol

import pytest
from tests.client.daemons import REQUEST_TIMEOUT, introduce_guest, run_daemon
from tests.launcher import Launched
from tests.util import RING_GUEST, require_peer

from pyxenstored.client import Client, XsClientError
from pyxenstored.wire import HEADER, MsgType

DAEMONS = ["reference", "pyxenstored", "pyxenstored-xen"]
PY_DAEMONS = ["pyxenstored", "pyxenstored-xen"]
DRIVERS = ["client", "ring_guest"]
EVENT_WAIT = 10.0
_U32 = struct.Struct("=I")


class Guest(Protocol):
    """One guest domain on its ring, whatever drives it."""

    domid: int
    ring_dir: str

    def call(self, type_: int, payload: bytes = b"") -> tuple[int, bytes]:
        """Send a request, wait for its reply: (reply type, payload)."""
        ...

    def next_event(self, timeout: float) -> bytes | None:
        """The next watch event's payload (``path NUL token NUL``), or None."""
        ...

    def close(self) -> None: ...


class ClientGuest:
    """The project's client on a ring."""

    def __init__(self, ring_dir: str, domid: int, port: int) -> None:
        self.domid = domid
        self.ring_dir = ring_dir
        self.client = Client.connect_ring(ring_dir, domid, port, timeout=REQUEST_TIMEOUT)

    def call(self, type_: int, payload: bytes = b"") -> tuple[int, bytes]:
        rid = self.client.submit(type_, payload)
        return self.client.collect_message(rid, REQUEST_TIMEOUT)

    def next_event(self, timeout: float) -> bytes | None:
        event = self.client.next_event(timeout)
        if event is None:
            return None
        return event.path.encode() + b"\0" + event.token.encode() + b"\0"

    def close(self) -> None:
        self.client.close()


def ring_guest_module() -> ModuleType:
    path = require_peer(RING_GUEST)
    spec = importlib.util.spec_from_file_location("peers_ring_guest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RawGuest:
    """``ring_guest.py`` of ``PYXENSTORED_PEERS``'s RingClient (it polls; it never waits on a FIFO)."""

    def __init__(self, ring_dir: str, domid: int, port: int) -> None:
        self.domid = domid
        self.ring_dir = ring_dir
        self.rc = ring_guest_module().RingClient(ring_dir, domid, port)

    def call(self, type_: int, payload: bytes = b"") -> tuple[int, bytes]:
        rt, data = self.rc.call(type_, payload)
        return int(rt), bytes(data)

    def next_event(self, timeout: float) -> bytes | None:
        if self.rc.events:
            return bytes(self.rc.events.pop(0))
        try:
            head = self.rc.recv_raw(16, timeout)
        except TimeoutError:
            return None
        rt, _rid, _tx, length = HEADER.unpack(head)
        data = self.rc.recv_raw(length) if length else b""
        assert rt == MsgType.WATCH_EVENT, f"unexpected message type {rt} outside a call"
        return bytes(data)

    def close(self) -> None:
        self.rc.m.close()
        os.close(self.rc.fd)
        os.close(self.rc.evt)


def make_guest(driver: str, ring_dir: str, domid: int, port: int) -> Guest:
    if driver == "client":
        return ClientGuest(ring_dir, domid, port)
    return RawGuest(ring_dir, domid, port)


def ok(guest: Guest, type_: int, payload: bytes = b"") -> bytes:
    rt, data = guest.call(type_, payload)
    assert rt == type_, f"{MsgType(type_).name} failed: {data!r}"
    return data


def err(guest: Guest, type_: int, payload: bytes = b"") -> str:
    rt, data = guest.call(type_, payload)
    assert rt == MsgType.ERROR, f"{MsgType(type_).name} did not fail: {data!r}"
    return data.rstrip(b"\0").decode()


def kick(ring_dir: str, port: int) -> None:
    """Write a port number to the daemon's event channel FIFO."""
    fd = os.open(os.path.join(ring_dir, "evtchn"), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, _U32.pack(port))
    finally:
        os.close(fd)


def wait_for(predicate: object, timeout: float = EVENT_WAIT) -> bool:
    """Poll ``predicate()`` until true; False after ``timeout`` (a liveness bound only)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def client_error(fn: object, *args: object) -> str:
    assert callable(fn)
    with pytest.raises(XsClientError) as info:
        fn(*args)
    return info.value.name


# What the shim ($PYXENSTORED_PEERS/xsshim.c) cannot play, for ``sim_only`` reasons.
SHIM_FIXED_DOMAINS = (
    "the shim's domain list is fixed at start (XS_SHIM_DOMAINS): no domain appears,"
    " dies, shuts down or is replaced later"
)
SHIM_NO_NOTIFY = (
    "the shim drops the daemon's notifications to guests (xenevtchn_notify): they poll their pages"
)


def sim_only(reason: str) -> pytest.MarkDecorator:
    """Mark a test that only the simulated backend can play; ``reason``: what the shim lacks."""
    return pytest.mark.sim_only(reason=reason)


def _shim_cannot_play(item: pytest.Item) -> str | None:
    """The ``sim_only`` reason when ``item`` is a case for a daemon under the shim."""
    marker = item.get_closest_marker("sim_only")
    callspec = getattr(item, "callspec", None)
    if marker is None or callspec is None:
        return None
    kinds = {v for v in callspec.params.values() if isinstance(v, str) and v in DAEMONS}
    return str(marker.kwargs["reason"]) if kinds - {"pyxenstored"} else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the cases of ``sim_only`` tests that the shim cannot play."""
    keep, drop = [], []
    for item in items:
        (drop if _shim_cannot_play(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        reasons = sorted({str(_shim_cannot_play(item)) for item in drop})
        config.stash[_SIM_ONLY] = f"{len(drop)} ring cases for the shim left out: " + "; ".join(
            reasons
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    line = terminalreporter.config.stash.get(_SIM_ONLY, None)
    if line:
        terminalreporter.write_line(f"sim_only: {line}")


_SIM_ONLY = pytest.StashKey[str]()


@pytest.fixture(params=DAEMONS)
def ring_daemon(request: pytest.FixtureRequest) -> Iterator[Launched]:
    """A daemon serving rings in its run dir (domains 0, 5, 6 exist)."""
    yield from run_daemon(request.param, ring=True)


@pytest.fixture(params=PY_DAEMONS)
def py_daemon(request: pytest.FixtureRequest) -> Iterator[Launched]:
    """pyxenstored on both backends, for what pyxenstored does beyond C 4.17."""
    yield from run_daemon(request.param, ring=True)


@pytest.fixture
def dom0(ring_daemon: Launched) -> Iterator[Client]:
    with ring_daemon.connect() as client:
        yield client


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def guest(ring_daemon: Launched, dom0: Client, driver: str) -> Iterator[Guest]:
    """Domain 5 on its ring, port 7, home /local/domain/5 owned by it."""
    assert ring_daemon.ring_dir is not None
    introduce_guest(dom0, ring_daemon.ring_dir, 5, 7)
    g = make_guest(driver, ring_daemon.ring_dir, 5, 7)
    yield g
    g.close()
