"""Domain migration end to end: two pyxenstored daemons, a guest on a ring, ``pyxenstored migrate``.

The guest (domain 5 on daemon A) has nodes, a relative watch, an absolute
watch with a depth, an open transaction, its own quota and features.  It
moves to daemon B as domain 9; the guest then talks to B over B's ring
(in a real migration its page moves with its memory; here the guest simply
attaches to B's page for domain 9).  Both daemons run on the simulated
hypervisor, or both on the Xen backend under the C reference's shim.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from tests.client.daemons import EXISTING_DOMAINS, run_daemon
from tests.launcher import Launched

from pyxenstored.client import (
    Client,
    Perm,
    Transaction,
    WatchEvent,
    XsClientError,
    create_ring_page,
)
from pyxenstored.server.hypervisor import VIRQ_DOM_EXC_PORT

EVENT_WAIT = 10.0
A_PORT, B_PORT = 7, 11
_U32 = struct.Struct("=I")


@pytest.fixture(params=["pyxenstored", "pyxenstored-xen"])
def daemons(request: pytest.FixtureRequest) -> Iterator[tuple[Launched, Launched]]:
    """A and B, both on the simulated hypervisor or both on the Xen backend (shim)."""
    kind = request.param
    gen_a = run_daemon(kind, ring=True)
    # The domain the guest becomes on B: the shim's list is fixed at start.
    on_b = (*EXISTING_DOMAINS, 9) if kind == "pyxenstored-xen" else EXISTING_DOMAINS
    gen_b = run_daemon(kind, ring=True, domains=on_b)
    a = next(gen_a)
    try:
        b = next(gen_b)
        try:
            assert b.ring_dir is not None
            if kind == "pyxenstored":
                with open(os.path.join(b.ring_dir, "domains"), "a") as f:
                    f.write("9\n")  # domain 9 is created on B's host
                kick(b.ring_dir, VIRQ_DOM_EXC_PORT)  # B learns that domain 9 exists
            with b.connect() as b0:
                assert wait_for(lambda: _exists(b0, 9)), "B never saw domain 9"
            yield a, b
        finally:
            gen_b.close()
    finally:
        gen_a.close()


def kick(ring_dir: str, port: int) -> None:
    """Write a port number to the daemon's event channel FIFO."""
    fd = os.open(os.path.join(ring_dir, "evtchn"), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, _U32.pack(port))
    finally:
        os.close(fd)


def wait_for(predicate: Callable[[], bool], timeout: float = EVENT_WAIT) -> bool:
    """Poll until true; False after ``timeout`` (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _exists(dom0: Client, domid: int) -> bool:
    try:
        dom0.get_quota("nodes", domid)
    except XsClientError:
        return False
    return True


def run_migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyxenstored", "migrate", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def introduce(dom0: Client, ring_dir: str, domid: int, port: int, features: int | None) -> None:
    """The toolstack's part: page, home, per-domain settings, then INTRODUCE."""
    create_ring_page(ring_dir, domid)
    home = f"/local/domain/{domid}"
    dom0.mkdir(home)
    dom0.set_perms(home, [Perm("n", domid)])
    if features is not None:
        dom0.set_feature(domid, features)
    dom0.introduce(domid, 1, port)


def usage(dom0: Client, domid: int) -> list[str]:
    """Current usage lines of CONTROL ``quota <domid>`` (without the maxima)."""
    lines = dom0.control("quota", str(domid)).splitlines()[1:]
    return [line.split("(max")[0].rstrip() for line in lines]


def events(guest: Client, count: int) -> list[WatchEvent]:
    out = []
    for _ in range(count):
        ev = guest.next_event(EVENT_WAIT)
        assert ev is not None, f"only {len(out)} of {count} events: {out}"
        out.append(ev)
    return out


def setup_guest(a: Launched, a0: Client) -> tuple[Client, int]:
    """Domain 5 on A with its state; returns its client and open transaction id."""
    assert a.ring_dir is not None
    a0.write("/local/domain/6/other", "bystander")
    introduce(a0, a.ring_dir, 5, A_PORT, features=4 | 2)  # watch depth, error; no DOMID_ANY
    a0.set_quota("nodes", 40, 5)
    a0.set_quota("watches", 9, 5)
    a0.write("/local/domain/5/name", "guest")
    a0.set_perms("/local/domain/5/name", [Perm("n", 0), Perm("r", 5)])
    g = Client.connect_ring(a.ring_dir, 5, A_PORT, timeout=EVENT_WAIT)
    g.write("data/a", "1")
    g.set_perms("data/a", [Perm("n", 5), Perm("r", 0)])
    g.write("device/vif/0/state", "4")
    g.watch("data", "rel")
    g.watch("/local/domain/5/device", "abs", depth=1)
    assert {(e.path, e.token) for e in events(g, 2)} == {
        ("data", "rel"),
        ("/local/domain/5/device", "abs"),
    }
    tx = g.start_transaction()
    tx.write("data/b", "2")
    assert tx.read("name") == b"guest"
    return g, tx.tx_id


def test_guest_moves_from_a_dom5_to_b_dom9(daemons: tuple[Launched, Launched]) -> None:
    a, b = daemons
    assert b.ring_dir is not None
    with a.connect() as a0, b.connect() as b0:
        g5, tx_id = setup_guest(a, a0)
        b0.write("/local/domain/6/mine", "stays")
        introduce(b0, b.ring_dir, 9, B_PORT, features=None)
        before = usage(a0, 5)

        out = run_migrate("--from", a.socket, "--to", b.socket, "--domid", "5", "--new-domid", "9")
        assert out.returncode == 0, out.stderr
        assert "released domain 5" in out.stdout

        # A no longer has it.
        assert not a0.is_domain_introduced(5)
        assert not a0.exists("/local/domain/5")
        assert a0.read("/local/domain/6/other") == b"bystander"
        # Nothing of other domains moved; quota, features, usage followed.
        assert not b0.exists("/local/domain/6/other")
        assert b0.read("/local/domain/6/mine") == b"stays"
        assert b0.get_quota("nodes", 9) == 40
        assert b0.get_quota("watches", 9) == 9
        assert b0.get_feature(9) == 6
        assert usage(b0, 9) == before
        assert b0.control("check") == "OK"
        assert b0.read("/local/domain/9/name") == b"guest"
        assert [str(p) for p in b0.get_perms("/local/domain/9/data/a")] == ["n9", "r0"]
        assert [str(p) for p in b0.get_perms("/local/domain/9/name")] == ["n0", "r9"]

        g5.close()
        with Client.connect_ring(b.ring_dir, 9, B_PORT, timeout=EVENT_WAIT) as g9:
            with open(os.path.join(b.ring_dir, "ring-dom9"), "rb") as page:
                page.seek(2064)
                assert _U32.unpack(page.read(4))[0] & 0xE == 6, "feature word of the page"
            assert g9.get_feature() == 6
            # The transaction carries on under its id and commits.
            tx = Transaction(g9, tx_id)
            assert tx.read("data/b") == b"2"
            tx.commit()
            assert g9.read("data/b") == b"2"
            assert [(e.path, e.token) for e in events(g9, 1)] == [("data/b", "rel")]
            # Watches fire with the new paths; the depth still holds.
            b0.write("/local/domain/9/device/new", "x")
            b0.write("/local/domain/9/device/new/1/deep", "x")
            b0.write("/local/domain/9/data/x", "y")
            got = [(e.path, e.token) for e in events(g9, 2)]
            assert got == [("/local/domain/9/device/new", "abs"), ("data/x", "rel")]
            assert g9.next_event(0.3) is None
            assert [str(p) for p in g9.get_perms("data/b")] == ["n9"]
        with open(b.log, errors="replace") as f:
            log = f.read()
        assert "check:" not in log, log[-2000:]


def test_refused_migrations_leave_the_source_unchanged(daemons: tuple[Launched, Launched]) -> None:
    a, b = daemons
    assert b.ring_dir is not None
    with a.connect() as a0, b.connect() as b0:
        g5, _ = setup_guest(a, a0)
        before = (usage(a0, 5), sorted(a0.directory("/local/domain/5")))

        def unchanged() -> None:
            assert a0.is_domain_introduced(5)
            assert (usage(a0, 5), sorted(a0.directory("/local/domain/5"))) == before

        out = run_migrate("--from", a.socket, "--to", b.socket, "--domid", "5", "--new-domid", "9")
        assert out.returncode == 1
        assert "target: domain 9 is not introduced" in out.stderr
        unchanged()

        introduce(b0, b.ring_dir, 9, B_PORT, features=None)
        b0.write("/local/domain/9/data/a", "already here")
        out = run_migrate("--from", a.socket, "--to", b.socket, "--domid", "5", "--new-domid", "9")
        assert out.returncode == 1
        assert "target refused" in out.stderr and "stays on the source" in out.stderr
        assert b0.read("/local/domain/9/data/a") == b"already here"
        unchanged()
        # The guest still works on A.
        g5.write("data/c", "3")
        assert [(e.path, e.token) for e in events(g5, 1)] == [("data/c", "rel")]

        b0.rm("/local/domain/9/data")
        b0.set_quota("nodes", 3, 9)  # irrelevant: the domain's own quota (40) follows it
        out = run_migrate("--from", a.socket, "--to", b.socket, "--domid", "5", "--new-domid", "9")
        assert out.returncode == 0, out.stderr
        g5.close()


def test_control_commands_answer_with_reasons(daemons: tuple[Launched, Launched]) -> None:
    a, _ = daemons
    with a.connect() as a0:
        assert "domain-state-save" in a0.control("help")
        reply = a0.control("domain-state-save", "5", "x.xss")
        assert reply.startswith("domain-state-save: domain 5 is not introduced"), reply
        reply = a0.control("domain-state-restore", "/nonexistent/x.xss", "5")
        assert reply.startswith("domain-state-restore: /nonexistent/x.xss:"), reply
        with pytest.raises(Exception, match="EINVAL"):
            a0.control("domain-state-save", "5")


def test_events_queued_on_the_source_arrive_on_the_target(
    daemons: tuple[Launched, Launched],
) -> None:
    """Events the source could not put into the full ring move with the domain, paths moved."""
    a, b = daemons
    assert a.ring_dir is not None and b.ring_dir is not None
    with a.connect() as a0, b.connect() as b0:
        introduce(a0, a.ring_dir, 5, A_PORT, features=None)
        g5 = Client.connect_ring(a.ring_dir, 5, A_PORT, timeout=EVENT_WAIT)
        g5.watch("/local/domain/5/data", "abs")
        assert [e.path for e in events(g5, 1)] == ["/local/domain/5/data"]
        # The guest stops reading: the ring fills, the rest waits in the daemon.
        # Each event is 64 bytes (16 header + 43 path + NUL + "abs" + NUL), so
        # the 1024-byte ring takes exactly 16 and no message is cut in two.
        for i in range(60):
            a0.write(f"/local/domain/5/data/k{i:02d}{'x' * 19}", "v")
        introduce(b0, b.ring_dir, 9, B_PORT, features=None)
        out = run_migrate("--from", a.socket, "--to", b.socket, "--domid", "5", "--new-domid", "9")
        assert out.returncode == 0, out.stderr
        g5.close()
        with Client.connect_ring(b.ring_dir, 9, B_PORT, timeout=EVENT_WAIT) as g9:
            got = []
            while (ev := g9.next_event(1.0)) is not None:
                got.append(ev.path)
            # What was still in A's page stays there (a real page moves with the
            # guest's memory); what A held back comes from B, in order, moved.
            names = [p.rsplit("/", 1)[1][:3] for p in got]
            assert names == [f"k{i:02d}" for i in range(16, 60)], got
            assert all(p.startswith("/local/domain/9/data/k") for p in got), got
            assert b0.control("check") == "OK"
