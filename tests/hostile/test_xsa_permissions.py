"""Hostile guests against permissions: XSA-115, 322, 352, 353, 417.

* XSA-115 (C and oxenstored): watch events told a guest about nodes it could
  not read (a watch on ``/`` recorded every change of the host); the special
  watches ``@introduceDomain``/``@releaseDomain`` told any guest about the
  others; IS_DOMAIN_INTRODUCED answered anyone; WATCH/UNWATCH checked a
  transaction id they should ignore; removing a subtree fired a watch more
  than once; a guest could not remove its own node below a parent over the
  node-size quota (written by dom0).
* XSA-322 (C and oxenstored): permission entries naming a domain outlived
  it, so a new domain given the same domid inherited the old one's rights
  (``@`` nodes included, ``0751a75e39``).
* XSA-352 (oxenstored): a guest could give its node away (SET_PERMS with
  another owner), moving quota to another domain or to dom0.
* XSA-353 (oxenstored): the root node escaped permission checks (SET_PERMS,
  RM, DIRECTORY, GET_PERMS of ``/`` by a guest).
* XSA-417 (C): entries naming a domain that had no record yet were taken
  as valid, so the rights of an old domain passed to a new one with the
  same domid; entries for domains that do not exist must be ignored, while
  the toolstack must still be able to prepare a new domain's nodes before
  INTRODUCE.

Domain death and domid reuse are played on pyxenstored's simulated
hypervisor (``DIR/domains``); the C reference's shim has a fixed list.
"""

from __future__ import annotations

import re
import time

from tests.client.daemons import introduce_guest
from tests.hostile.harness import (
    ATTACKER,
    ATTACKER_PORT,
    BYSTANDER,
    KIB,
    MIB,
    Arena,
    call,
    error_of,
    quota_text,
    wait_until,
)

from pyxenstored.client import Client, Perm, WatchEvent
from pyxenstored.wire import MsgType

M = MsgType
ERROR_ONLY = re.compile(rb"E[A-Z0-9]+\0")


def test_xsa115_watches_see_only_readable_nodes(hostile: Arena) -> None:
    """XSA-115: watches on ``/``, ``/local/domain/6``, ``/tool`` and the special nodes.

    dom0 and the bystander change private nodes, introduce and release a
    domain: the attacker hears only of nodes it may read; errors carry only
    an error name.  Bound: 1 MiB.
    """
    g, dom0 = hostile.attacker, hostile.dom0
    watched = ["/", "/local", "/local/domain/6", "/tool", "@introduceDomain", "@releaseDomain"]
    for path in watched:
        g.watch(path, "spy")
        assert g.next_event(5.0) == WatchEvent(path, "spy")  # the initial event
    dom0.write("/open", b"")
    dom0.set_perms("/open", [Perm("n", 0), Perm("r", ATTACKER)])
    hostile.bystander.write("secret", b"s")
    dom0.write("/tool/secret-name", b"s")
    dom0.write("/local/domain/0/private-name", b"s")
    dom0.write("/open/visible", b"v")  # inherits r5
    dom0.rm("/tool/secret-name")
    hostile.hypervisor_says("0", "5", "6", "7")
    introduce_guest(dom0, hostile.ring_dir, 7, 9)
    dom0.release(7)
    dom0.write("/open/last", b"")
    seen: list[WatchEvent] = []

    def heard_the_last() -> bool:
        seen.extend(g.pending_events())
        return any(e.path == "/open/last" for e in seen)

    assert wait_until(heard_the_last)
    paths = [e.path for e in seen]
    # HEAD gives everyone read on @releaseDomain (docs/compat.md C09); its
    # plain watch names no domain.
    assert all(p.startswith("/open") or p == "@releaseDomain" for p in paths), paths
    for type_, payload in [
        (M.READ, b"/tool/secret-name\0"),
        (M.READ, b"/local/domain/6/secret\0"),
        (M.DIRECTORY, b"/local/domain/6\0"),
        (M.GET_PERMS, b"/local/domain/0/private-name\0"),
        (M.WRITE, b"/tool/x\0v"),
        (M.IS_DOMAIN_INTRODUCED, b"6\0"),
    ]:
        rt, data = call(g, type_, payload)
        assert rt == M.ERROR and ERROR_ONLY.fullmatch(data), (type_, payload, data)
    hostile.survived(1 * MIB // KIB)


def test_xsa115_subtree_removal_fires_each_watch_once(hostile: Arena) -> None:
    """XSA-115 (``1e5815697f``): removing a subtree fires a watch once, not once per node."""
    g = hostile.attacker
    for i in range(50):
        g.write(f"tree/n{i}/leaf", b"")
    g.watch("tree", "top")
    g.watch("tree/n7/leaf", "leaf")
    assert {e.token for e in (g.next_event(5.0), g.next_event(5.0))} == {"top", "leaf"}
    g.rm("tree")
    time.sleep(0.2)
    events = g.pending_events()
    assert sorted(events, key=lambda e: e.token) == [
        WatchEvent("tree/n7/leaf", "leaf"),
        WatchEvent("tree", "top"),
    ]
    hostile.survived(1 * MIB // KIB)


def test_xsa115_transaction_id_ignored_by_watch_and_unwatch(hostile: Arena) -> None:
    """XSA-115 (``09a4146bdc``): WATCH and UNWATCH with any transaction id work."""
    g = hostile.attacker
    assert call(g, M.WATCH, b"w\0t\0", tx_id=12345) == (M.WATCH, b"OK\0")
    assert g.next_event(5.0) == WatchEvent("w", "t")
    assert call(g, M.UNWATCH, b"w\0t\0", tx_id=999) == (M.UNWATCH, b"OK\0")
    assert quota_text(hostile.dom0, ATTACKER)["watches"] == 0
    hostile.survived(1 * MIB // KIB)


def test_xsa115_own_node_below_an_oversized_parent_can_be_removed(hostile: Arena) -> None:
    """XSA-115 (``705c7d8956``): the parent is dom0's and over node-size; the child is the guest's."""
    dom0 = hostile.dom0
    dom0.write("/fat", b"f" * 3000)
    dom0.write("/fat/mine", b"")
    dom0.set_perms("/fat/mine", [Perm("n", ATTACKER)])
    assert quota_text(dom0, ATTACKER)["nodes"] == 3  # home, warm-up node, /fat/mine
    hostile.attacker.rm("/fat/mine")
    assert dom0.directory("/fat") == []
    assert quota_text(dom0, ATTACKER)["nodes"] == 2
    hostile.survived(1 * MIB // KIB)


def test_xsa322_a_new_domain_with_the_same_domid_inherits_nothing(hostile: Arena) -> None:
    """XSA-322: domain 5 dies and a new domain 5 is born before anyone looked.

    The old 5 had read and write rights on a node of dom0's and read on the
    special node ``@introduceDomain``; the new 5 has none of them.  Bound: 1 MiB.
    """
    dom0 = hostile.dom0
    hostile.hypervisor_says("0", "5 100", "6", "7")  # the first one's unique id
    dom0.write("/granted", b"old")
    dom0.set_perms("/granted", [Perm("n", 0), Perm("b", ATTACKER)])
    dom0.set_perms("@introduceDomain", [Perm("n", 0), Perm("r", ATTACKER)])
    assert hostile.attacker.read("/granted") == b"old"
    dom0.watch("@releaseDomain", "r")
    assert dom0.next_event(5.0) == WatchEvent("@releaseDomain", "r")
    hostile.hypervisor_says("0", "5 101", "6", "7")  # dead, and its domid reused
    assert dom0.next_event(5.0) == WatchEvent("@releaseDomain", "r")
    hostile.attacker.close()
    hostile.attacker = g = hostile.guest(ATTACKER, ATTACKER_PORT)
    assert error_of(g, M.READ, b"/granted\0") == "EACCES"
    assert error_of(g, M.WRITE, b"/granted\0mine") == "EACCES"
    assert dom0.get_perms("/granted") == [Perm("n", 0)]
    assert dom0.get_perms("@introduceDomain") == [Perm("n", 0)]
    g.watch("@introduceDomain", "i")
    assert g.next_event(5.0) == WatchEvent("@introduceDomain", "i")  # the initial one
    introduce_guest(dom0, hostile.ring_dir, 7, 9)
    g.write("sync", b"")  # the introduction's events are queued by now
    assert g.pending_events() == []
    hostile.survived(1 * MIB // KIB)


def test_xsa352_a_guest_cannot_give_its_node_away(hostile: Arena) -> None:
    """XSA-352: SET_PERMS naming another owner (dom0, the bystander) is refused, in and out of a transaction."""
    g, dom0 = hostile.attacker, hostile.dom0
    g.write("gift", b"x" * 1000)
    before = quota_text(dom0, ATTACKER)
    for owner in (0, BYSTANDER):
        assert error_of(g, M.SET_PERMS, b"gift\0n%d\0" % owner) == "EPERM"
        tx = g.start_transaction()
        assert error_of(g, M.SET_PERMS, b"gift\0n%d\0" % owner, tx.tx_id) == "EPERM"
        tx.commit()
    assert g.get_perms("gift") == [Perm("n", ATTACKER)]
    assert quota_text(dom0, ATTACKER) == before
    assert quota_text(dom0, BYSTANDER)["nodes"] == 2
    hostile.survived(1 * MIB // KIB)


def test_xsa353_the_root_node_is_checked_like_any_other(hostile: Arena) -> None:
    """XSA-353: SET_PERMS, RM, WRITE, MKDIR, DIRECTORY, GET_PERMS of ``/`` from a guest."""
    g, dom0 = hostile.attacker, hostile.dom0
    before = (dom0.directory("/"), dom0.get_perms("/"))
    attempts = [
        (M.SET_PERMS, b"/\0b5\0"),
        (M.WRITE, b"/\0mine"),
        (M.MKDIR, b"/\0"),
        (M.DIRECTORY, b"/\0"),
        (M.GET_PERMS, b"/\0"),
        (M.WRITE, b"/guest-at-the-top\0v"),
        (M.RM, b"/local\0"),
        (M.RM, b"/tool\0"),
    ]
    for type_, payload in attempts:
        assert error_of(g, type_, payload) == "EACCES", (type_, payload)
    assert error_of(g, M.RM, b"/\0") in ("EINVAL", "EACCES")
    tx = g.start_transaction()
    for type_, payload in attempts:
        assert error_of(g, type_, payload, tx.tx_id) == "EACCES", (type_, payload)
    tx.commit()
    assert (dom0.directory("/"), dom0.get_perms("/")) == before
    hostile.survived(1 * MIB // KIB)


def test_xsa417_rights_for_a_domain_that_does_not_exist_are_ignored(hostile: Arena) -> None:
    """XSA-417: entries naming domain 7 before it exists give the later domain 7 nothing."""
    dom0 = hostile.dom0
    dom0.write("/before-7", b"stale")
    dom0.set_perms("/before-7", [Perm("n", 0), Perm("b", 7)])  # 7 does not exist
    hostile.hypervisor_says("0", "5", "6", "7")
    introduce_guest(dom0, hostile.ring_dir, 7, 9)
    seven = Client.connect_ring(hostile.ring_dir, 7, 9, timeout=10)
    try:
        assert error_of(seven, M.READ, b"/before-7\0") == "EACCES"
        assert error_of(seven, M.WRITE, b"/before-7\0x") == "EACCES"
        seven.write("home-node", b"ok")  # its home, made before INTRODUCE
        assert dom0.read("/local/domain/7/home-node") == b"ok"
    finally:
        seven.close()
    hostile.survived(1 * MIB // KIB)


def test_xsa417_rights_prepared_before_introduce_count(hostile: Arena) -> None:
    """XSA-417, the other half: rights the toolstack gives an existing domain before INTRODUCE.

    C allocates domain 7's record at that SET_PERMS and writes the node
    with a newer generation (``transaction.c:access_node`` before
    ``write_node_raw``), so the entry is valid for the domain introduced
    next.
    """
    dom0 = hostile.dom0
    hostile.hypervisor_says("0", "5", "6", "7")
    dom0.write("/for-7", b"fresh")
    dom0.set_perms("/for-7", [Perm("n", 0), Perm("r", 7)])  # 7 exists, has no record yet
    introduce_guest(dom0, hostile.ring_dir, 7, 9)
    seven = Client.connect_ring(hostile.ring_dir, 7, 9, timeout=10)
    try:
        assert seven.read("/for-7") == b"fresh"
    finally:
        seven.close()
