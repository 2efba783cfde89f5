"""Live update keeps guests on rings: pyxenstored -> pyxenstored, mid-request.

A guest on its ring leaves half a request in the request queue and has an
unread watch event waiting; after ``xenstore-control live-update`` the new
daemon maps the ring again and the guest carries on without reconnecting:
it finishes its request and gets the answer, and the event.  The daemon is
started through the live-update tests' successor script.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.client.daemons import introduce_guest
from tests.liveupdate.conftest import LuDaemon, start_pyxenstored
from tests.rings.conftest import kick
from tests.util import XEN_BIN, require

from pyxenstored.client import Client, WatchEvent
from pyxenstored.wire import HEADER, MsgType

HOME = "/local/domain/5"


@pytest.fixture
def ring_lu(tmp_path: Path) -> tuple[LuDaemon, Path]:
    require((XEN_BIN / "xenstore-control").exists(), "xen-utils-4.17 xenstore-control")
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir(mode=0o700)
    (ring_dir / "domains").write_text("0\n5 1234\n6\n")
    return start_pyxenstored(tmp_path, "--ring-dir", str(ring_dir)), ring_dir


def test_guests_carry_on_across_live_updates(ring_lu: tuple[LuDaemon, Path]) -> None:
    d, ring_dir = ring_lu
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
            # The unique id travelled: replacing domain 5 is still noticed.
            dom0.watch("@releaseDomain", "r")
            assert dom0.next_event(10) == WatchEvent("@releaseDomain", "r")
            (ring_dir / "domains").write_text("0\n5 999\n6\n")
            kick(str(ring_dir), 1)
            assert dom0.next_event(10) == WatchEvent("@releaseDomain", "r")
            assert not dom0.is_domain_introduced(5)
            guest.close()
    finally:
        d.stop()
