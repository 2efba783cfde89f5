"""Hostile guests around domains' lives and the toolstack: XSA-206, 233, 325, 425.

* XSA-206 (C and oxenstored): a guest writing the nodes a toolstack
  transaction reads, as fast as it can, made every commit of the toolstack
  fail with EAGAIN for ever; C added write-rate limiting of guests while
  transactions are open (``domain.c``, the ``wrl_*`` functions; docs/compat.md D05).
* XSA-233 (C): a guest and its device-model stub domain (SET_TARGET) dying
  together freed the stub's connection twice.
* XSA-325 (C): a guest cut off for breaking the ring protocol had its
  domain record freed with the connection, so ``@releaseDomain`` fired while
  it still ran and never when it died: watchers (backends) kept its
  resources for ever.  The record must stay until RELEASE or death.
* XSA-425 (C): RELEASE (a guest's kexec / soft reset makes the toolstack
  release and introduce it again) freed a connection while the main loop
  was walking the connection list: a double free.

Domain death is played on pyxenstored's simulated hypervisor.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tests.client.daemons import introduce_guest
from tests.hostile.harness import (
    ATTACKER,
    ATTACKER_PORT,
    HOME,
    KIB,
    MIB,
    Arena,
    message,
    quota_text,
    wait_until,
)

from pyxenstored.client import Client, WatchEvent, XsClientError
from pyxenstored.wire import RING_ERROR_PROTO, MsgType

M = MsgType
STUBDOM, STUBDOM_PORT = 7, 9


def test_xsa206_a_hammering_guest_does_not_starve_the_toolstack(hostile: Arena) -> None:
    """XSA-206: the guest rewrites a node as fast as it can; dom0's transaction reads it.

    The toolstack's transaction commits (it may retry on EAGAIN; the
    retries are bounded by a liveness limit only) and the daemon rate
    limits the guest while transactions are open.  Bound: 2 MiB.
    """
    g, dom0 = hostile.attacker, hostile.dom0
    g.write("state", b"0")
    stop = threading.Event()
    failures: list[BaseException] = []

    def hammer() -> None:
        i = 0
        try:
            while not stop.is_set():
                i += 1
                g.write("state", b"%d" % i)
        except BaseException as exc:  # reported below
            failures.append(exc)

    log = Path(hostile.daemon.log)
    affected = f"write rate limit: domain {ATTACKER} is affected"
    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    committed = False
    try:
        # An open transaction puts the limit in force; wait until it bites.
        tx = dom0.start_transaction()
        assert wait_until(lambda: affected in log.read_text(errors="replace"))
        for _attempt in range(2000):
            seen = tx.read(f"{HOME}/state")
            tx.write("/tool/seen", seen)
            try:
                tx.commit()
            except XsClientError as exc:
                assert exc.name == "EAGAIN"
                tx = dom0.start_transaction()
                continue
            committed = True
            break
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures
    assert committed
    hostile.survived(2 * MIB // KIB)


def test_xsa233_a_guest_and_its_stub_domain_die_together(hostile: Arena) -> None:
    """XSA-233: domain 7 is domain 5's device model (SET_TARGET 7 5); both die at once.

    Both records go, ``@releaseDomain`` fires, nothing is freed twice: the
    counters are exact and everyone else is served.  Bound: 1 MiB.
    """
    dom0 = hostile.dom0
    hostile.hypervisor_says("0", "5", "6", str(STUBDOM))
    introduce_guest(dom0, hostile.ring_dir, STUBDOM, STUBDOM_PORT)
    dom0.set_target(STUBDOM, ATTACKER)
    stub = Client.connect_ring(hostile.ring_dir, STUBDOM, STUBDOM_PORT, timeout=10)
    try:
        stub.write(f"{HOME}/from-stub", b"dm")  # acts for domain 5
        stub.watch(HOME, "dm")
        hostile.attacker.watch("w", "t")
        dom0.watch("@releaseDomain", "r")
        assert dom0.next_event(5.0) == WatchEvent("@releaseDomain", "r")
        hostile.hypervisor_says("0", "6")  # 5 and 7 are gone in one go
        assert dom0.next_event(5.0) == WatchEvent("@releaseDomain", "r")
    finally:
        stub.close()
    assert not dom0.is_domain_introduced(ATTACKER)
    assert not dom0.is_domain_introduced(STUBDOM)
    assert not dom0.exists(HOME)
    hostile.survived(1 * MIB // KIB)


def test_xsa325_a_cut_off_guest_keeps_its_domain_until_it_dies(hostile: Arena) -> None:
    """XSA-325: a bad header cuts the guest off; ``@releaseDomain`` waits for its death.

    Meanwhile the domain stays introduced and its nodes stay; the watcher
    hears of it once, when it dies.  Bound: 1 MiB.
    """
    dom0 = hostile.dom0
    dom0.watch("@releaseDomain", "r")
    assert dom0.next_event(5.0) == WatchEvent("@releaseDomain", "r")
    raw = hostile.raw_attacker()
    raw.push(message(M.WRITE, b"x\0y")[:12] + (0xFFFFFF).to_bytes(4, "little"))
    assert raw.wait_error() == RING_ERROR_PROTO
    hostile.serves_bystander()  # its kick comes after the bad one: the cut-off happened
    assert dom0.next_event(0.5) is None
    assert dom0.is_domain_introduced(ATTACKER)
    assert dom0.read(f"{HOME}/warm") == b"19"
    assert quota_text(dom0, ATTACKER)["nodes"] == 2
    hostile.hypervisor_says("0", "6")  # now it dies
    assert dom0.next_event(5.0) == WatchEvent("@releaseDomain", "r")
    assert not dom0.is_domain_introduced(ATTACKER)
    assert dom0.next_event(0.5) is None  # once
    hostile.survived(1 * MIB // KIB)


def test_xsa425_release_and_reintroduce_while_the_guest_is_busy(hostile: Arena) -> None:
    """XSA-425: 30 soft resets (RELEASE, INTRODUCE) with the guest's requests in flight.

    Each time the guest has unread replies and requests waiting in its ring
    and a watch event queued; the toolstack releases it and introduces it
    again; the bystander is served meanwhile.  Bound: 2 MiB.
    """
    dom0 = hostile.dom0
    for round_ in range(30):
        g = hostile.attacker
        g.watch("w", f"t{round_}")
        raw = hostile.raw_attacker()
        raw.push(b"".join(message(M.READ, b"warm\0", req_id=i) for i in range(60)))
        dom0.write(f"{HOME}/w", b"%d" % round_)  # an event for it, unread
        hostile.serves_bystander()
        dom0.release(ATTACKER)
        g.close()
        raw.close()
        hostile.attacker = hostile.guest(ATTACKER, ATTACKER_PORT)
        hostile.attacker.write("warm", b"%d" % round_)
        usage = quota_text(dom0, ATTACKER)
        assert (usage["watches"], usage["outstanding"], usage["nodes"]) == (0, 0, 2)
    hostile.survived(2 * MIB // KIB)
