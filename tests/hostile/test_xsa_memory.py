"""Hostile guests against the daemon's memory: XSA-326, XSA-416, XSA-330.

XSA-326 (CVE-2022-42311..42318, "guests can let run xenstored out of
memory") lists the ways a guest makes xenstored hold memory: requests whose
replies it never reads, watch events it never reads (caused by itself, by
other guests or by the toolstack), nodes of the largest size and path, the
same inside as many transactions as allowed, and many nodes accessed in a
transaction.  C's answer was the ``memory`` quota (2.5 MiB per domain,
charged for nodes, watches and queued output), the ``outstanding`` quota
(20 requests, the ring is not read beyond), the ``transaction-nodes`` quota
and a 20-second timeout on unread watch events.  XSA-416: temporary memory
of a request must not live until the guest reads the reply.  XSA-330
(oxenstored only): RESET_WATCHES left the watches in a second index, so a
guest looping "set watches, reset" leaked memory; the attack applies to any
daemon.

Parts that do not apply: XSA-326's OCaml GC tuning (``4a8bacff20``) and the
oxenstored request-queue changes are about OCaml's runtime; what they bound
is measured here as the daemon's peak resident set.  Each test states its
bound; ``docs/performance.md`` ("Memory one guest can make the daemon hold")
has the figures of both daemons.
"""

from __future__ import annotations

import time

import pytest
from tests.hostile import attacks
from tests.hostile.harness import (
    ATTACKER,
    HOME,
    KIB,
    MEMORY_QUOTA,
    MIB,
    Arena,
    call,
    error_of,
    message,
    quota_text,
    wait_until,
)

from pyxenstored.client import Perm
from pyxenstored.wire import MsgType

M = MsgType


def test_xsa326_transaction_writes_are_charged_to_the_memory_quota(hostile: Arena) -> None:
    """XSA-326: 9 transactions, 1800-byte values written until refused.

    C charges node data written in a transaction to the domain's ``memory``
    quota as it arrives: 4.17 refuses after about 1 400 writes (EIO, 3 MiB
    of RSS growth).  Bound: 2 x the memory quota.
    """
    count, error = attacks.transactions(hostile)
    assert error in ("ENOMEM", "EIO"), (count, error)  # D01: ENOMEM for C's EIO
    assert count * 1800 <= 2 * MEMORY_QUOTA
    assert quota_text(hostile.dom0, 5)["memory"] < MEMORY_QUOTA
    hostile.survived(2 * MEMORY_QUOTA // KIB)
    hostile.release_attacker()  # its transactions go with it
    hostile.serves_dom0()  # counters exact


def test_xsa326_transaction_accesses_are_bounded(hostile: Arena) -> None:
    """XSA-326 (CVE-2022-42314): as many nodes accessed as 9 transactions allow.

    ``transaction-nodes`` (1024: 1023 usable) bounds each transaction; the
    access past it fails with ENOSPC and fails the transaction (its commit
    answers ENOMEM).  Short paths here (long ones are the path-cache test
    below).  Bound: 16 MiB for 9 x 1023 remembered accesses.
    """
    count, error = attacks.transaction_accesses(hostile)
    # 1023 accesses each: the home (looked at once, to tell ENOENT from
    # EACCES) and 1022 absent nodes.
    assert (count, error) == (9 * 1022, "ENOSPC")
    usage = quota_text(hostile.dom0, 5)
    assert usage["transactions"] == 9 and usage["transaction-nodes"] == 0
    hostile.survived(16 * MIB // KIB)
    for tx_id in range(1, 10):  # ids start at 1; each failed, its commit answers ENOMEM
        assert error_of(hostile.attacker, M.TRANSACTION_END, b"T\0", tx_id) == "ENOMEM"
    assert quota_text(hostile.dom0, 5)["transactions"] == 0
    hostile.serves_dom0()


def test_xsa326_requests_for_many_paths_leave_nothing_behind(hostile: Arena) -> None:
    """XSA-326 class: reads of distinct long paths (every reply ENOENT or EINVAL).

    Nothing of a request is charged once its reply is sent, so nothing
    may stay: 3 000 reads of 4 000-byte paths are 12 MB of requests; the
    C reference grows by nothing.  Bound: 4 MiB.
    """
    assert attacks.many_paths(hostile) == [b"EINVAL\0"]  # longer than path-max
    hostile.survived(4 * MIB // KIB)


def test_xsa326_xsa416_unread_replies_stop_the_ring(hostile: Arena) -> None:
    """XSA-326 (CVE-2022-42312) / XSA-416: large replies the guest never reads.

    The ``outstanding`` quota (20) stops the daemon reading the ring: the
    rest of the requests stay in the guest's own page, and only 20 replies
    of 2 KiB are held.  XSA-416's point, that a request's temporary memory
    must not wait for its reply to be read, is (c) here.  Bound: 1 MiB.
    """
    raw = attacks.unread_replies(hostile)
    assert raw.pending_requests() > 0  # the daemon stopped reading the ring
    assert quota_text(hostile.dom0, 5)["outstanding"] == 20
    hostile.survived(1 * MIB // KIB)
    # Reading the replies lets the daemon go on: every one arrives, in order.
    replies = attacks.replies(raw)
    assert len(replies) >= 20
    assert [r[1] for r in replies] == list(range(1, len(replies) + 1))
    assert all(r[0] == M.READ and r[3] == b"r" * 2000 for r in replies)
    assert wait_until(lambda: quota_text(hostile.dom0, 5)["outstanding"] == 0)


def test_xsa326_own_watch_events_bounded_by_the_memory_quota(hostile: Arena) -> None:
    """XSA-326 (CVE-2022-42315): 127 watches with 3 000-byte tokens, then writes, never read.

    Each write fires 127 events of 3 KiB: the output queue is charged to
    the attacker's ``memory`` quota and events beyond it are dropped (C's
    rule); its requests stay outstanding while their events wait.
    Bound: 2 x the memory quota.
    """
    attacks.own_events(hostile)
    # Replies of up to 16 bytes are charged unchecked, as in C (core.c:
    # send_reply): at most 20 outstanding "OK" replies past the quota.
    assert quota_text(hostile.dom0, 5)["memory"] <= MEMORY_QUOTA + 20 * 32
    hostile.survived(2 * MEMORY_QUOTA // KIB)
    hostile.release_attacker()  # what the toolstack does with such a guest
    hostile.serves_dom0()  # counters exact once its queue is gone


def test_xsa326_events_caused_by_the_toolstack_are_bounded(hostile: Arena) -> None:
    """XSA-326 (CVE-2022-42315): the toolstack's writes fire the attacker's watches.

    dom0 is not held back by anyone's quota, so only the attacker's
    ``memory`` quota bounds what is queued for it (300 writes x 127
    watches x 3 KiB would be 114 MB).  Bound: 2 x the memory quota.
    """
    dom0 = hostile.dom0
    dom0.write("/shared", b"")
    dom0.set_perms("/shared", [Perm("n", 0), Perm("r", 5)])  # nodes below are dom0's
    g = hostile.attacker
    for i in range(127):
        g.watch("/shared", b"t%03d" % i + b"x" * 3000)
    assert len(g.pending_events()) <= 127
    g.close()  # the page stays; nobody reads it any more
    for i in range(300):
        dom0.write(f"/shared/tool{i}", b"")
    assert quota_text(dom0, 5)["memory"] <= MEMORY_QUOTA
    hostile.survived(2 * MEMORY_QUOTA // KIB)
    hostile.release_attacker()
    hostile.serves_dom0()


@pytest.mark.daemon_args("-w", "watch-event=1")
def test_xsa326_unread_events_time_out_for_the_writer(hostile: Arena) -> None:
    """XSA-326 (CVE-2022-42311): a guest that never reads holds back whoever fires its watches.

    An event keeps the request that caused it outstanding until it is sent,
    so the bystander, whose writes the attacker watches, would be stuck at
    its 20 outstanding requests for ever; unread events time out (``-w
    watch-event=1`` here, 20 s by default) and it goes on.  Bound: 1 MiB.
    """
    a = hostile
    home6 = "/local/domain/6"
    a.bystander.write("shared", b"")
    a.bystander.set_perms("shared", [Perm("n", 6), Perm("r", 5)])
    a.attacker.watch(f"{home6}/shared", "spy")
    assert a.attacker.next_event(5.0) is not None  # the initial event
    a.attacker.close()  # never reads again
    for i in range(30):
        a.bystander.write("shared", b"%d" % i)  # each reply within the client's timeout
    assert a.dom0.read(f"{home6}/shared") == b"29"
    a.survived(1 * MIB // KIB)


def test_xsa326_nodes_bounded_by_the_memory_quota(hostile: Arena) -> None:
    """XSA-326 (CVE-2022-42315): nodes with 1 900-byte paths and values until refused.

    ``memory`` (2.5 MiB) stops it before ``nodes`` (1000) does: C 4.17 after
    about 450 such nodes (EIO, 2.7 MiB of growth), pyxenstored with ENOMEM
    (docs/compat.md D01).  Bound: 2 x the memory quota.
    """
    count, error = attacks.nodes(hostile)
    assert error == "ENOMEM"
    assert count * 3800 <= MEMORY_QUOTA
    assert quota_text(hostile.dom0, 5)["memory"] <= MEMORY_QUOTA
    hostile.survived(2 * MEMORY_QUOTA // KIB)
    hostile.release_attacker()
    assert not hostile.dom0.exists(HOME)  # the nodes went with their owner
    hostile.serves_dom0()


def test_xsa326_watches_bounded(hostile: Arena) -> None:
    """XSA-326: watches with the longest path and token a message carries.

    ``watches`` (128: 127 usable, ENOSPC) and the memory each one is charged
    (path + token).  Bound: 2 MiB.
    """
    count, error = attacks.watches(hostile)
    assert (count, error) == (127, "ENOSPC")
    usage = quota_text(hostile.dom0, 5)
    assert usage["watches"] == 127 and usage["memory"] >= 127 * 4084
    hostile.survived(2 * MIB // KIB)


def test_xsa326_partial_input_is_held_within_one_message(hostile: Arena) -> None:
    """XSA-326 class: a message announced whole and sent in part, then silence.

    A guest's input is its ring: a daemon holds at most one unfinished
    message (4 112 bytes) for it.  The rest of the message completes it.
    Bound: 1 MiB.
    """
    raw = attacks.partial_input(hostile)
    assert wait_until(lambda: raw.pending_requests() == 0)
    hostile.survived(1 * MIB // KIB)
    whole = message(M.WRITE, b"big\0" + b"v" * 4092, req_id=77)
    assert raw.push_all(whole[3000:]) == len(whole) - 3000
    replies = attacks.replies(raw)
    assert replies == [(M.ERROR, 77, 0, b"ENOSPC\0")]  # node-size: a clear answer


def test_xsa330_reset_watches_releases_every_watch(hostile: Arena) -> None:
    """XSA-330: set 127 watches, RESET_WATCHES, again, 40 times over.

    Every reset frees what the watches held: the counters go back to zero
    each round and none of the old watches fires.  Bound: 2 MiB.
    """
    g = hostile.attacker
    base = quota_text(hostile.dom0, 5)["memory"]
    for round_ in range(40):
        for i in range(127):
            # The same paths every round (new ones would fill the daemon's
            # path caches, see the test above), new tokens.
            call(g, M.WATCH, b"r%d/" % i + b"p" * 200 + b"\0tok%d\0" % round_)
        g.reset_watches()
        usage = quota_text(hostile.dom0, 5)
        assert (usage["watches"], usage["memory"]) == (0, base)
    g.pending_events()  # the initial events
    g.write(b"r0/" + b"p" * 200, b"")
    time.sleep(0.2)
    assert g.pending_events() == []
    hostile.survived(2 * MIB // KIB)


@pytest.mark.daemon_args("-Q", "memory=65536")
def test_xsa326_replies_past_the_memory_quota_are_sent_and_bounded(hostile: Arena) -> None:
    """XSA-326 (CVE-2022-42315, ``f6d0013364``): replies are charged; what passes the quota is bounded.

    Our rule (``docs/compat.md`` D15), not C's: a guest at its ``memory``
    quota (64 KiB here) that reads a 2000-byte node gets the node, where C
    answers ENOMEM to any reply longer than 16 bytes that would pass the
    quota (``core.c:send_reply``).  The reply is charged; a domain at or
    over its quota is not read any more (``domain_can_read``, as in C)
    until it takes its replies, so what it holds past the quota is at most
    its ``outstanding`` quota (20) of replies.  Bound: 1 MiB.
    """
    g = hostile.attacker
    g.write("big", b"r" * 2000)
    for i in range(100):
        if call(g, M.WRITE, b"f%d\0" % i + b"v" * 1500)[0] == M.ERROR:
            break
    else:
        raise AssertionError("the memory quota never refused a write")
    full = quota_text(hostile.dom0, ATTACKER)["memory"]
    assert full <= 65536
    assert call(g, M.READ, b"big\0") == (M.READ, b"r" * 2000)  # C 4.17: ENOMEM
    raw = attacks.unread_replies(hostile, count=60, prepare=False)
    assert raw.pending_requests() > 0  # the daemon stopped reading the ring
    usage = quota_text(hostile.dom0, ATTACKER)
    assert usage["memory"] > 65536  # replies queued past the quota...
    assert usage["memory"] - full <= usage["outstanding"] * (2000 + 16)  # ...at most 20
    assert usage["outstanding"] <= 20
    hostile.survived(1 * MIB // KIB)
    # Taking the replies lets it go on: every request is answered, in order.
    replies: list[tuple[int, int, int, bytes]] = []

    def all_answered() -> bool:
        replies.extend(attacks.replies(raw))
        return len(replies) >= 60

    assert wait_until(all_answered)
    assert [r[1] for r in replies] == list(range(1, 61))
    assert all(r[0] == M.READ and r[3] == b"r" * 2000 for r in replies)
    assert wait_until(lambda: quota_text(hostile.dom0, ATTACKER)["memory"] == full)
