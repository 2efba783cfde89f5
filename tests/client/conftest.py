"""Fixtures for the client tests: daemons on a socket or serving rings, and clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.client.daemons import GUEST, GUEST_PORT, REQUEST_TIMEOUT, introduce_guest, run_daemon
from tests.launcher import Launched

from pyxenstored.client import Client

DAEMONS = ["reference", "pyxenstored"]
# Guests on rings also against pyxenstored's Xen backend under the shim.
RING_DAEMONS = [*DAEMONS, "pyxenstored-xen"]


@pytest.fixture(params=DAEMONS)
def daemon(request: pytest.FixtureRequest) -> Iterator[Launched]:
    """A daemon on a unix socket."""
    yield from run_daemon(request.param, ring=False)


@pytest.fixture
def xs(daemon: Launched) -> Iterator[Client]:
    with daemon.connect() as client:
        yield client


@pytest.fixture
def other(daemon: Launched) -> Iterator[Client]:
    """A second socket connection to the same daemon."""
    with daemon.connect() as client:
        yield client


@pytest.fixture(params=RING_DAEMONS)
def ring_daemon(request: pytest.FixtureRequest) -> Iterator[Launched]:
    """A daemon serving guests on rings in its run dir (domains 0, 5, 6 exist)."""
    yield from run_daemon(request.param, ring=True)


@pytest.fixture
def dom0(ring_daemon: Launched) -> Iterator[Client]:
    with ring_daemon.connect() as client:
        yield client


@pytest.fixture
def guest(ring_daemon: Launched, dom0: Client) -> Iterator[Client]:
    """Domain 5 talking over its ring page."""
    assert ring_daemon.ring_dir is not None
    introduce_guest(dom0, ring_daemon.ring_dir, GUEST, GUEST_PORT)
    client = Client.connect_ring(ring_daemon.ring_dir, GUEST, GUEST_PORT, timeout=REQUEST_TIMEOUT)
    yield client
    client.close()
