"""What one guest on its ring can make the server hold: bounded and charged.

In one process on the fake hypervisor of ``test_ring_domains_inprocess``
(the test turns the loop; nothing depends on timing).  For each resource
the guest pushes past its limit, and the test checks the bound, what is
charged to the guest's ``memory`` quota, and that dom0 is still served:

* watch events queued for a guest that takes nothing from its ring: C's
  ``send_event`` charges each to the receiver and drops it when that
  would reach the quota;
* replies to a guest that sends requests but takes no replies: C's
  ``domain_can_read`` stops reading the ring at the ``outstanding`` quota,
  the requests stay on the guest's own page;
* partial input: C's ``handle_input`` holds one message at most.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.rings.test_ring_domains_inprocess import U32, World

from pyxenstored.server.connection import Connection
from pyxenstored.store import quota as q
from pyxenstored.wire import HEADER, HEADER_SIZE, PAYLOAD_MAX, MsgType

M = MsgType
QUOTA = 64 * 1024


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    assert w.dom0_call(M.MKDIR, b"/local/domain/5\0")[0] == M.MKDIR
    assert w.dom0_call(M.SET_PERMS, b"/local/domain/5\0n5\0")[0] == M.SET_PERMS
    assert w.dom0_call(M.INTRODUCE, b"5\0" + b"1\0" + b"7\0")[0] == M.INTRODUCE
    yield w
    w.rings.close()
    w.server.close()
    w.dom0.close()


def guest_conn(world: World) -> Connection:
    ring = world.rings.ring(5)
    assert ring is not None and ring.conn is not None
    return ring.conn


def memory(world: World) -> int:
    return world.store.domains[5].usage[q.MEMORY]


def drain(world: World) -> bytes:
    """Everything the guest receives until the server has nothing more for it."""
    got = b""
    while True:
        world.turn()
        chunk = world.guest_take()
        if not chunk:
            world.hv.kick(7)  # the guest says it took replies
            world.turn()
            chunk = world.guest_take()
            if not chunk:
                return got
        got += chunk


def messages(stream: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    while stream:
        type_, req_id, _tx, length = HEADER.unpack_from(stream)
        out.append((type_, req_id, stream[HEADER_SIZE : HEADER_SIZE + length]))
        stream = stream[HEADER_SIZE + length :]
    return out


def test_events_for_a_guest_that_takes_nothing_stop_at_its_memory_quota(world: World) -> None:
    assert world.dom0_call(M.SET_QUOTA, b"5\0memory\0%d\0" % QUOTA)[0] == M.SET_QUOTA
    assert world.dom0_call(M.WRITE, b"/ev\0")[0] == M.WRITE
    assert world.dom0_call(M.SET_PERMS, b"/ev\0n0\0r5\0")[0] == M.SET_PERMS
    token = b"t" * 900  # a request must fit the 1024-byte queue
    assert world.guest_call(M.WATCH, b"/ev\0" + token + b"\0") == (M.WATCH, b"OK\0")
    drain(world)  # the initial event
    before = memory(world)
    # From now on the guest takes nothing; 200 events of 900 bytes are about three times its quota.
    for i in range(200):
        assert world.dom0_call(M.WRITE, b"/ev/%d\0x" % i) == (M.WRITE, b"OK\0")
    conn = guest_conn(world)
    assert conn.out_bytes < QUOTA
    assert memory(world) < QUOTA
    # Every queued event is charged until it is all on the page.
    assert 0 <= memory(world) - before - conn.out_bytes < HEADER_SIZE + PAYLOAD_MAX
    events = [m for m in messages(drain(world)) if m[0] == M.WATCH_EVENT]
    assert 0 < len(events) < 200  # the rest were dropped, as C drops them
    assert memory(world) == before  # nothing left charged once sent
    assert world.store.check() == []


def test_replies_for_a_guest_that_takes_nothing_stop_at_the_outstanding_quota(
    world: World,
) -> None:
    big = b"b" * (PAYLOAD_MAX - 5)  # the WRITE request is at the limit
    assert world.dom0_call(M.WRITE, b"/big\0" + big)[0] == M.WRITE
    assert world.dom0_call(M.SET_PERMS, b"/big\0n0\0r5\0")[0] == M.SET_PERMS
    before = memory(world)
    request = HEADER.pack(M.READ, 0, 0, 5) + b"/big\0"
    count = 1024 // len(request)  # as many as the request queue holds
    world.guest_send(b"".join(HEADER.pack(M.READ, i, 0, 5) + b"/big\0" for i in range(count)))
    world.turn(10)
    conn = guest_conn(world)
    limit = world.store.domains[5].quota.hard(q.OUTSTANDING)
    assert conn.outstanding <= limit
    # One reply may be on the page already; the others wait in the queue, charged.
    assert conn.out_bytes <= limit * (HEADER_SIZE + PAYLOAD_MAX)
    assert 0 <= memory(world) - before - conn.out_bytes < HEADER_SIZE + PAYLOAD_MAX
    assert conn.reader.buffered() == 0  # the requests not taken stay on the guest's page
    mem = world.page()
    assert U32.unpack_from(mem, 2048)[0] != U32.unpack_from(mem, 2052)[0]
    assert world.dom0_call(M.READ, b"/big\0") == (M.READ, big)  # dom0 still served
    replies = messages(drain(world))
    assert [(t, rid) for t, rid, _ in replies] == [(M.READ, i) for i in range(count)]
    assert all(body == big for _, _, body in replies)
    assert memory(world) == before
    assert world.store.check() == []


def test_partial_input_is_one_message_at_most(world: World) -> None:
    # 3.5 KB: a path of 1500 bytes and a value of 2000 (within node-size).
    payload = b"p" * 1500 + b"\0" + b"v" * 2000
    message = HEADER.pack(M.WRITE, 4, 0, len(payload)) + payload
    sent = 0
    conn = guest_conn(world)
    while sent < len(message):  # through the 1024-byte queue, a piece per kick
        world.guest_send(message[sent : sent + 1000])
        sent += 1000
        world.turn()
        assert conn.reader.buffered() <= HEADER_SIZE + PAYLOAD_MAX
    assert messages(drain(world)) == [(M.WRITE, 4, b"OK\0")]
    assert conn.reader.buffered() == 0
    # A header announcing more than the protocol allows cuts the guest off at once.
    world.guest_send(HEADER.pack(M.WRITE, 5, 0, PAYLOAD_MAX + 1))
    world.turn()
    assert conn.closed
    assert (
        world.dom0_call(M.READ, b"/local/domain/5/" + b"p" * 1500 + b"\0")[0] == M.READ
    )  # dom0 still served
