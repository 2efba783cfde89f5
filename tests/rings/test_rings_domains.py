"""Domains coming and going, guests introduced and released (mostly pyxenstored only).

The C reference's shim fixes the existing domains at start
(``XS_SHIM_DOMAINS``) and has no unique ids, so death, shutdown and domid
reuse can only be played against pyxenstored on its simulated hypervisor: a
line leaves (or changes in) ``DIR/domains`` and the test kicks the
``VIRQ_DOM_EXC`` port (1).  The rest runs on both pyxenstored backends.
Expected behaviour is C HEAD's: ``domain.c:domain_tree_remove``,
``fire_special_watches``, ``introduce_domain``, ``do_release``,
``do_check_domains``, ``find_or_alloc_existing_domain`` and ``alloc_domain``
(docs/compat.md S11, S14, S20-S22).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator

import pytest
from tests.client.daemons import introduce_guest, set_domains, start
from tests.launcher import Launched
from tests.rings.conftest import (
    EVENT_WAIT,
    SHIM_FIXED_DOMAINS,
    RawGuest,
    client_error,
    err,
    kick,
    ok,
    sim_only,
)
from tests.rings.test_rings_scenarios import page_word

from pyxenstored.client import Client, Perm, WatchEvent, create_ring_page
from pyxenstored.server.hypervisor import VIRQ_DOM_EXC_PORT
from pyxenstored.wire import MsgType

M = MsgType


@pytest.fixture
def pdom0(py_daemon: Launched) -> Iterator[Client]:
    with py_daemon.connect() as client:
        yield client


def ring_dir_of(daemon: Launched) -> str:
    assert daemon.ring_dir is not None
    return daemon.ring_dir


def guest_on(daemon: Launched, dom0: Client, domid: int, port: int) -> Client:
    introduce_guest(dom0, ring_dir_of(daemon), domid, port)
    return Client.connect_ring(ring_dir_of(daemon), domid, port, timeout=EVENT_WAIT)


@sim_only(SHIM_FIXED_DOMAINS)
def test_death_fires_release_and_cleans_the_tree(py_daemon: Launched, pdom0: Client) -> None:
    five = guest_on(py_daemon, pdom0, 5, 7)
    six = guest_on(py_daemon, pdom0, 6, 8)
    six.write("mine", b"x")
    pdom0.write("/shared", b"")
    pdom0.set_perms("/shared", [Perm("n", 0), Perm("r", 6), Perm("w", 5)])
    pdom0.watch("@releaseDomain", "plain")
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain", "plain")
    five.watch("@releaseDomain", "deep", depth=1)
    assert five.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain", "deep")
    set_domains(py_daemon, "0\n5\n")
    kick(ring_dir_of(py_daemon), VIRQ_DOM_EXC_PORT)
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain", "plain")
    assert five.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain/6", "deep")
    assert not pdom0.is_domain_introduced(6)
    assert not pdom0.exists("/local/domain/6")  # owned by 6: deleted (no -K)
    assert pdom0.get_perms("/shared") == [Perm("n", 0), Perm("w", 5)]  # HEAD drops entries
    assert client_error(pdom0.get_feature, 6) == "ENOENT"  # no such domain any more
    six.close()
    five.write("alive", b"yes")  # the survivors go on
    assert pdom0.read("/local/domain/5/alive") == b"yes"
    five.close()


@sim_only(SHIM_FIXED_DOMAINS)
def test_shutdown_fires_once_until_resume(py_daemon: Launched, pdom0: Client) -> None:
    six = guest_on(py_daemon, pdom0, 6, 8)
    pdom0.watch("@releaseDomain/6", "six")
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain/6", "six")
    set_domains(py_daemon, "0\n5\n6 shutdown\n")
    kick(ring_dir_of(py_daemon), VIRQ_DOM_EXC_PORT)
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain/6", "six")
    pdom0.watch("/local/domain/6/marker", "m")
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("/local/domain/6/marker", "m")
    kick(ring_dir_of(py_daemon), VIRQ_DOM_EXC_PORT)
    # The guest's kick follows the VIRQ kick in the event channel, so its
    # write's event comes after anything the second scan would fire.
    six.write("marker", b"")
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("/local/domain/6/marker", "m")
    assert pdom0.is_domain_introduced(6)  # shut down is not dead
    pdom0.resume(6)
    kick(ring_dir_of(py_daemon), VIRQ_DOM_EXC_PORT)
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain/6", "six")
    six.close()


@sim_only(SHIM_FIXED_DOMAINS)
def test_a_reused_domid_inherits_nothing(py_daemon: Launched, pdom0: Client) -> None:
    set_domains(py_daemon, "0\n5\n6 100\n")
    kick(ring_dir_of(py_daemon), VIRQ_DOM_EXC_PORT)
    pdom0.set_quota("watches", 3, 6)
    six = guest_on(py_daemon, pdom0, 6, 8)
    pdom0.write("/granted", b"")
    pdom0.set_perms("/granted", [Perm("n", 0), Perm("r", 6)])
    pdom0.watch("@releaseDomain", "r")
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain", "r")
    # Domain 6 died and a new domain got domid 6 before we looked.
    set_domains(py_daemon, "0\n5\n6 101\n")
    kick(ring_dir_of(py_daemon), VIRQ_DOM_EXC_PORT)
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain", "r")
    assert not pdom0.is_domain_introduced(6)
    assert pdom0.get_quota("watches", 6) == 128  # the old per-domain quota is gone
    assert pdom0.get_perms("/granted") == [Perm("n", 0)]
    six.close()


@sim_only(SHIM_FIXED_DOMAINS)
def test_a_unique_id_learnt_after_introduce_detects_the_next_reuse(
    py_daemon: Launched, pdom0: Client
) -> None:
    """Domain 6 is introduced while the hypervisor gives no unique id; a scan learns 100.

    As ``domain.c:do_check_domain``: a record with no unique id takes the one
    reported, so when 101 replaces 100 the old domain is dead and its rights
    and quota go with it (the regression: the record stayed at "unknown"
    and the reuse went unnoticed).
    """
    pdom0.set_quota("watches", 3, 6)
    six = guest_on(py_daemon, pdom0, 6, 8)
    pdom0.write("/granted", b"")
    pdom0.set_perms("/granted", [Perm("n", 0), Perm("r", 6)])
    pdom0.watch("@releaseDomain", "r")
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain", "r")
    set_domains(py_daemon, "0\n5\n6 100\n")  # the same domain, its unique id now known
    kick(ring_dir_of(py_daemon), VIRQ_DOM_EXC_PORT)
    assert six.read("/granted") == b""  # still alive, still served
    assert pdom0.pending_events() == []
    set_domains(py_daemon, "0\n5\n6 101\n")  # died; a new domain got domid 6
    kick(ring_dir_of(py_daemon), VIRQ_DOM_EXC_PORT)
    assert pdom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain", "r")
    assert not pdom0.is_domain_introduced(6)
    assert pdom0.get_quota("watches", 6) == 128
    assert pdom0.get_perms("/granted") == [Perm("n", 0)]
    six.close()


def test_features_and_quota_set_before_introduce_are_kept(
    py_daemon: Launched, pdom0: Client
) -> None:
    pdom0.set_feature(6, 2)  # ERROR only: no watch depth, no DOMID_ANY
    pdom0.set_quota("watches", 3, 6)
    six = guest_on(py_daemon, pdom0, 6, 8)
    assert page_word(ring_dir_of(py_daemon), 6, 2064) == 2 | 1  # + ring reconnection
    assert six.get_feature() == 2
    assert client_error(pdom0.set_feature, 6, 14) == "EBUSY"  # introduced now
    assert client_error(six.watch, "a", "t", 1) == "EINVAL"  # no WATCHDEPTH
    six.watch("a", "t")
    six.watch("b", "t")
    assert client_error(six.watch, "c", "t") == "ENOSPC"  # quota 3: 2 usable (HEAD)
    six.close()


def test_release_then_introduce_again(py_daemon: Launched, pdom0: Client) -> None:
    six = guest_on(py_daemon, pdom0, 6, 8)
    six.write("first", b"1")
    six.close()
    pdom0.release(6)
    assert not pdom0.exists("/local/domain/6")
    # The next domain 6 gets its own feature word, not the old one's.
    pdom0.set_feature(6, 4)
    six = guest_on(py_daemon, pdom0, 6, 9)  # new page state, another port
    assert page_word(ring_dir_of(py_daemon), 6, 2064) == 4 | 1
    six.write("second", b"2")
    assert pdom0.read("/local/domain/6/second") == b"2"
    six.close()


def test_a_cut_off_guest_comes_back_by_reconnecting(py_daemon: Launched, pdom0: Client) -> None:
    five = guest_on(py_daemon, pdom0, 5, 7)
    five.send_raw(b"\x02\0\0\0" + b"\0" * 8 + (5000).to_bytes(4, "little"))
    with pytest.raises(Exception, match="error indicator 3"):
        five.read("x")
    five.close()
    again = Client.connect_ring(ring_dir_of(py_daemon), 5, 7, timeout=EVENT_WAIT)
    again.reconnect()  # offered on the page; clears the error
    again.write("back", b"1")
    assert pdom0.read("/local/domain/5/back") == b"1"
    again.close()


def test_kicks_on_an_unknown_port_still_serve(py_daemon: Launched, pdom0: Client) -> None:
    introduce_guest(pdom0, ring_dir_of(py_daemon), 5, 7)
    raw = RawGuest(ring_dir_of(py_daemon), 5, 0)  # ring_guest.py's default port 0
    ok(raw, M.WRITE, b"k\0v")
    assert ok(raw, M.READ, b"k\0") == b"v"
    assert err(raw, M.READ, b"/tool\0") == "EACCES"
    raw.close()


def test_a_flooding_guest_does_not_starve_others(py_daemon: Launched, pdom0: Client) -> None:
    flooder = guest_on(py_daemon, pdom0, 5, 7)
    other = guest_on(py_daemon, pdom0, 6, 8)
    flooder.write("f", b"x" * 500)
    stop = threading.Event()
    done = [0]
    failure: list[BaseException] = []

    def flood() -> None:
        try:
            while not stop.is_set():
                ids = [flooder.submit(M.READ, b"f\0") for _ in range(30)]
                for rid in ids:
                    flooder.collect(rid, EVENT_WAIT)
                done[0] += 30
        except BaseException as exc:  # reported below
            failure.append(exc)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        for i in range(100):
            other.write(f"n{i % 5}", b"%d" % i)
            pdom0.write("/local/domain/6/s", b"%d" % i)
        assert other.read("n4") == b"99"
        assert pdom0.read("/local/domain/6/s") == b"99"
    finally:
        stop.set()
        thread.join(EVENT_WAIT * 3)
    assert not failure, failure
    assert done[0] > 0  # the flooder was served too
    flooder.close()
    other.close()


@pytest.mark.parametrize("kind", ["reference", "pyxenstored", "pyxenstored-xen"])
def test_domains_with_a_preset_port_are_served_from_the_start(kind: str) -> None:
    """HEAD introduces existing domains whose page names their port (2076) at start."""
    rundir = tempfile.mkdtemp(prefix="xsp-", dir="/tmp")
    try:
        create_ring_page(rundir, 5, evtchn_port=7)  # what Xen does for dom0less guests
        daemon = start(kind, rundir, True)
        try:
            with daemon.connect() as dom0:
                if kind == "reference":
                    assert not dom0.is_domain_introduced(5)  # 4.17 does not
                    return
                assert dom0.is_domain_introduced(5)
                dom0.mkdir("/local/domain/5")
                dom0.set_perms("/local/domain/5", [Perm("n", 5)])
                guest = Client.connect_ring(rundir, 5, 7, timeout=EVENT_WAIT)
                guest.write("early", b"1")
                assert dom0.read("/local/domain/5/early") == b"1"
                assert not dom0.is_domain_introduced(6)  # no port on its page
                guest.close()
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
