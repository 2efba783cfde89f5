"""Hostile guests against the protocol: XSA-38, 72, 324, 418, 420, 481.

* XSA-38 (oxenstored): the ring's free-running offsets are guest data;
  values that claim more than a queue holds made the reader go out of its
  buffers.  Also ``eeddfad1b3``: a request queue exactly full (1024 bytes)
  must be served, not ignored.
* XSA-72 (oxenstored by default, C too): a reply longer than 4096 bytes is
  replaced by ``E2BIG``.
* XSA-324 (C): a watch with a long token made events longer than 4096 bytes;
  they are dropped.
* XSA-418 (C): deep trees exhausted the stack of recursive tree walks
  (removal, check, live-update dump).  Python has a recursion limit of
  1000 frames: a tree deeper than that must not reach one.
* XSA-420 (oxenstored, 32-bit builds): a message length between 1 GiB and
  2 GiB became negative and the ring was read again and again.  The
  integer trap does not apply to Python; the attack (absurd lengths) does.
* XSA-481 (C): ``/local/domain/`` made ``canonicalize`` fail with errno 0,
  which tripped ``assert(conn->in == NULL)`` in ``consider_message``; 4.17
  trips the same assertion on ``READ "a\\0b\\0"`` from a connection that has
  a watch (docs/compat.md).  Malformed paths get ``EINVAL``.

Not applicable: XSA-38's note on compilers reading the offsets twice (we
read each offset once into a local; Python cannot re-read behind our back).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.hostile.harness import (
    ATTACKER,
    ATTACKER_PORT,
    HOME,
    KIB,
    MIB,
    Arena,
    call,
    error_of,
    message,
    parse_messages,
)
from tests.util import XEN_BIN, require

from pyxenstored.client import Client, Perm, WatchEvent
from pyxenstored.wire import (
    RING_ERROR_PROTO,
    RING_ERROR_RINGIDX,
    RING_REQ_CONS,
    RING_REQ_PROD,
    RING_RSP_CONS,
    RING_RSP_PROD,
    MsgType,
)

M = MsgType


def reintroduce(a: Arena) -> Client:
    """The toolstack resets the attacker's ring (INTRODUCE again); a fresh client on it."""
    a.attacker.close()
    a.dom0.introduce(ATTACKER, 1, ATTACKER_PORT)
    a.attacker = Client.connect_ring(a.ring_dir, ATTACKER, ATTACKER_PORT, timeout=10)
    a.attacker.write("back", b"1")
    return a.attacker


def test_xsa38_ring_offsets_out_of_range(hostile: Arena) -> None:
    """XSA-38: offsets that claim more than a queue holds cut the guest off (error 2).

    Request producer far ahead of the consumer, behind it, and a response
    consumer ahead of the producer: each time the ring gets the error
    indicator, nobody else notices, and the toolstack's INTRODUCE brings the
    guest back.  Bound: 1 MiB.
    """
    words = [
        (RING_REQ_PROD, lambda p: p.word(RING_REQ_CONS) + 5000),
        (RING_REQ_PROD, lambda p: p.word(RING_REQ_CONS) - 1),
        (RING_REQ_PROD, lambda p: p.word(RING_REQ_CONS) + 0x80000000),
    ]
    for offset, value in words:
        raw = hostile.raw_attacker()
        raw.page.set_word(offset, value(raw.page))
        raw.transport.kick()
        assert raw.wait_error() == RING_ERROR_RINGIDX, offset
        hostile.serves_bystander()
        reintroduce(hostile)
    # The response consumer: the daemon finds it when it writes a reply.
    raw = hostile.raw_attacker()
    raw.page.set_word(RING_RSP_CONS, raw.page.word(RING_RSP_PROD) + 3000)
    raw.push(message(M.READ, b"back\0"))
    assert raw.wait_error() == RING_ERROR_RINGIDX
    reintroduce(hostile)
    hostile.survived(1 * MIB // KIB)


def test_xsa38_a_full_request_queue_is_served(hostile: Arena) -> None:
    """XSA-38's follow-up (``eeddfad1b3``): exactly 1024 bytes of requests are read, not ignored."""
    raw = hostile.raw_attacker()
    # 32 READs of a 15-byte name: 32 bytes each, 1024 in all.
    name = b"n" * 15
    hostile.attacker.write(name.decode(), b"v")
    batch = b"".join(message(M.READ, name + b"\0", req_id=i + 1) for i in range(32))
    assert len(batch) == 1024
    assert raw.push(batch) == 1024
    replies = parse_messages(raw.drain())
    assert [(r[0], r[1], r[3]) for r in replies] == [(M.READ, i + 1, b"v") for i in range(32)]
    hostile.survived(1 * MIB // KIB)


def test_xsa420_absurd_message_lengths(hostile: Arena) -> None:
    """XSA-420: lengths past 4096, up to 4 GiB - 1: the ring is cut off (error 3), once.

    The requests before the bad header in the same kick are still answered
    (docs/compat.md D22).  Bound: 1 MiB.
    """
    for length in (4097, 0x40000000, 0x80000000, 0xFFFFFFFF):
        raw = hostile.raw_attacker()
        good = message(M.READ, b"back\0" if length != 4097 else b"warm\0", req_id=1)
        bad = good[:12] + length.to_bytes(4, sys.byteorder)
        raw.push(good + bad + b"x" * 100)
        assert raw.wait_error() == RING_ERROR_PROTO, length
        data = raw.drain(quiet=0.1)
        assert [r[:2] for r in parse_messages(data)] == [(M.READ, 1)], (length, data)
        hostile.serves_bystander()
        reintroduce(hostile)
    hostile.survived(1 * MIB // KIB)


def test_xsa72_replies_longer_than_a_message_are_e2big(hostile: Arena) -> None:
    """XSA-72: a directory listing of 8 KiB (the toolstack's node, readable by the guest).

    DIRECTORY answers ``E2BIG`` (C too); DIRECTORY_PART gives the listing
    in pieces.  Bound: 1 MiB.
    """
    dom0 = hostile.dom0
    dom0.write("/big", b"")
    dom0.set_perms("/big", [Perm("n", 0), Perm("r", ATTACKER)])
    names = [f"child-with-a-long-name-{i:04d}" for i in range(300)]
    for name in names:
        dom0.write(f"/big/{name}", b"")
    g = hostile.attacker
    assert error_of(g, M.DIRECTORY, b"/big\0") == "E2BIG"
    # The client falls back to DIRECTORY_PART (as libxenstore) and fails on
    # any message longer than 4096 bytes.
    listing = g.directory("/big")
    assert sorted(listing) == names
    hostile.survived(1 * MIB // KIB)


def test_xsa324_events_longer_than_a_message_are_dropped(hostile: Arena) -> None:
    """XSA-324: a watch with a 4000-byte token on the guest's home, then a long path.

    The event would be 4300 bytes: it is dropped, the write is answered,
    shorter events of the same watch still come.  Bound: 1 MiB.
    """
    g = hostile.attacker
    token = "T" * 4000
    g.watch(HOME, token)
    assert g.next_event(5.0) == WatchEvent(HOME, token)
    g.write("p" * 300, b"x")  # event: 16 + 301 + 4001 bytes
    g.write("s", b"x")
    assert g.next_event(5.0) == WatchEvent(f"{HOME}/s", token)
    assert g.pending_events() == []
    hostile.survived(1 * MIB // KIB)


def test_xsa481_malformed_paths_with_a_watch_held(hostile: Arena) -> None:
    """XSA-481: ``/local/domain/`` and friends get EINVAL from a connection with a watch.

    C HEAD before the fix asserted; 4.17 asserts on ``READ "a\\0b\\0"`` in the
    same situation (docs/compat.md).  The guest and everyone else go on.
    Bound: 1 MiB.
    """
    g = hostile.attacker
    g.watch("w", "t")
    assert g.next_event(5.0) == WatchEvent("w", "t")
    bad = [b"/local/domain/", b"a\0b", b"", b"//", b"a/", b"/a//b", b"a\x01b", b"@", b"@bogus"]
    for path in bad:
        # (WRITE "a\0b" writes "b" to "a"; WATCH "a\0b\0tok" has depth
        # "tok", i.e. 0; any "@..." is a special watch path, as in C.)
        types = (M.READ, M.MKDIR, M.RM, M.GET_PERMS, M.DIRECTORY)
        for type_ in types if b"\0" in path else (*types, M.WRITE):
            assert error_of(g, type_, path + b"\0") in ("EINVAL", "EACCES"), (type_, path)
        if b"\0" not in path and not path.startswith(b"@"):
            assert error_of(g, M.WATCH, path + b"\0tok\0") == "EINVAL", path
    assert error_of(g, M.READ, b"a\0b\0") == "EINVAL"  # 4.17 aborts here
    g.write("w", b"after")
    assert g.next_event(5.0) == WatchEvent("w", "t")
    hostile.survived(1 * MIB // KIB)


def test_xsa418_trees_deeper_than_the_recursion_limit(hostile: Arena, tmp_path: Path) -> None:
    """XSA-418: 1 023 levels from the guest, 1 536 from the toolstack, walked every way.

    The guest builds the deepest tree its path limit allows, watches it,
    removes it in a transaction and outside; the toolstack builds a deeper
    one the guest may read; CONTROL ``check``, a live update (dump and restore
    of the whole tree) and the guest's RELEASE walk them all.  Bound: 16 MiB.
    """
    require((XEN_BIN / "xenstore-control").exists(), "xen-utils-4.17 xenstore-control")
    g = hostile.attacker
    chain = b"/".join([b"a"] * 1023)  # 2045 bytes: the longest relative path
    assert call(g, M.WRITE, chain + b"\0v") == (M.WRITE, b"OK\0")
    g.watch("a", "top")
    assert g.next_event(5.0) == WatchEvent("a", "top")
    tx = g.start_transaction()
    # 1024 nodes to remove: one more than a transaction may touch.
    assert error_of(g, M.RM, b"a\0", tx.tx_id) == "ENOSPC"
    assert error_of(g, M.TRANSACTION_END, b"T\0", tx.tx_id) == "ENOMEM"
    g.rm("a")
    assert g.next_event(5.0) == WatchEvent("a", "top")
    g.write(chain.decode(), b"again")
    # The toolstack's deeper tree is its own, readable by the guest (in the
    # guest's home it would be the guest's, and far over its memory quota).
    hostile.dom0.write("/t", b"")
    hostile.dom0.set_perms("/t", [Perm("n", 0), Perm("r", ATTACKER)])
    deeper = "/t" + "/b" * 1535
    hostile.dom0.write(deeper, b"deep")
    hostile.survived(16 * MIB // KIB)  # before the exec starts a new process image
    successor = tmp_path / "successor"
    successor.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pyxenstored "$@"\n')
    successor.chmod(0o755)
    env = dict(os.environ, XENSTORED_PATH=hostile.daemon.socket)
    done = subprocess.run(
        [str(XEN_BIN / "xenstore-control"), "live-update", "-t", "20", str(successor)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert g.read(chain.decode()) == b"again"
    assert hostile.dom0.read(deeper) == b"deep"  # 3072 bytes: too long for a guest
    hostile.serves_bystander()
    hostile.release_attacker()
    assert not hostile.dom0.exists(HOME)
    hostile.serves_dom0()
