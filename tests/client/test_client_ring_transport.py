"""The guest ring transport against a fake server end (tests/client/ringpeer.py).

Expected byte positions are computed from xenstore-ring.txt: byte k of a
stream lives at ``k mod 1024`` of its queue, offsets are free-running u32.
"""

from __future__ import annotations

import os
import select
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.client.ringpeer import (
    CONNECTION,
    ERROR,
    FEATURES,
    REQ_CONS,
    REQ_PROD,
    RSP_CONS,
    RSP_PROD,
    RingPeer,
    reply,
)

from pyxenstored.client import Client, ClientConnectionError, RingTransport

DOMID, PORT = 5, 42


@pytest.fixture
def ring_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="xsring-") as d:
        yield d


@pytest.fixture
def peer(ring_dir: str) -> Iterator[RingPeer]:
    p = RingPeer(ring_dir, DOMID)
    yield p
    p.close()


def test_send_wraps_offsets_and_queue(ring_dir: str, peer: RingPeer) -> None:
    peer.set_offsets(req=0xFFFFFF00, rsp=0)
    tr = RingTransport(ring_dir, DOMID, PORT)
    data = bytes(range(256)) * 2 + b"x" * 88  # 600 bytes
    tr.send(data)
    assert peer.get(REQ_PROD) == (0xFFFFFF00 + 600) & 0xFFFFFFFF == 0x158
    assert peer.get(REQ_CONS) == 0xFFFFFF00
    assert peer.mem[768:1024] == data[:256]  # 0xFFFFFF00 mod 1024 = 768
    assert peer.mem[0:344] == data[256:]
    assert peer.read_kicks() == [PORT]
    tr.close()


def test_receive_wraps_offsets_and_queue(ring_dir: str, peer: RingPeer) -> None:
    peer.set_offsets(req=0, rsp=0xFFFFFFF0)
    tr = RingTransport(ring_dir, DOMID, PORT)
    data = bytes(range(100))
    assert peer.put_responses(data) == 100
    assert peer.mem[1024 + 1008 : 2048] == data[:16]
    assert tr.receive(0) == data
    assert peer.get(RSP_CONS) == peer.get(RSP_PROD) == (0xFFFFFFF0 + 100) & 0xFFFFFFFF
    assert tr.receive(0) == b""
    tr.close()


@settings(max_examples=40, deadline=None)
@given(start=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(1, 1024), max_size=6))
def test_roundtrip_any_offset(start: int, sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="xsring-") as d:
        p = RingPeer(d, DOMID)
        p.set_offsets(req=start, rsp=start)
        tr = RingTransport(d, DOMID, PORT, notify=False)
        try:
            for i, size in enumerate(sizes):
                data = bytes((i + k) % 251 for k in range(size))
                tr.send(data)
                assert p.take_requests() == data
                assert p.put_responses(data) == size
                assert tr.receive(0) == data
        finally:
            tr.close()
            p.close()


def test_message_larger_than_queue_goes_in_several_kicks(ring_dir: str, peer: RingPeer) -> None:
    value = bytes(range(256)) * 12  # 3072 bytes each way: three queues' worth

    def handler(t: int, rid: int, tx: int, payload: bytes) -> bytes:
        if t == 11:  # WRITE: echo the value's length
            path, _, v = payload.partition(b"\0")
            return (
                reply(t, rid, tx, b"%d\0" % len(v)) if v == value else reply(16, rid, tx, b"EIO\0")
            )
        return reply(t, rid, tx, value)

    peer.set_offsets(req=0xFFFFFC00, rsp=0xFFFFFE00)
    peer.serve(handler)
    xs = Client.connect_ring(ring_dir, DOMID, PORT, timeout=10)
    assert xs.request(11, b"/big\0" + value) == b"3072\0"
    assert xs.read("/big") == value
    xs.close()
    assert len(peer.kicks) >= 3


def test_pipelined_requests_with_a_server_that_waits_for_reads(
    ring_dir: str, peer: RingPeer
) -> None:
    # The peer stops taking requests while it has replies it cannot write
    # (like the outstanding quota): the sender must drain replies meanwhile.
    peer.serve(lambda t, rid, tx, payload: reply(t, rid, tx, b"r" * 40 + payload))
    xs = Client.connect_ring(ring_dir, DOMID, PORT, timeout=10)
    ids = [xs.submit(2, b"/node/%03d\0" % i) for i in range(200)]
    for i, rid in reversed(list(enumerate(ids))):
        assert xs.collect(rid) == b"r" * 40 + b"/node/%03d\0" % i
    xs.close()


def test_error_indicator_cuts_the_client_off(ring_dir: str, peer: RingPeer) -> None:
    tr = RingTransport(ring_dir, DOMID, PORT)
    peer.set(ERROR, 3)
    with pytest.raises(ClientConnectionError, match="error indicator 3 .protocol violation"):
        tr.receive(0.01)
    with pytest.raises(ClientConnectionError, match="error indicator 3"):
        tr.send(b"x")
    tr.close()


def test_inconsistent_offsets_are_an_error(ring_dir: str, peer: RingPeer) -> None:
    tr = RingTransport(ring_dir, DOMID, PORT)
    peer.set(RSP_PROD, peer.get(RSP_CONS) + 2000)
    with pytest.raises(ClientConnectionError, match="inconsistent"):
        tr.receive(0)
    peer.set(REQ_PROD, peer.get(REQ_CONS) + 1025)
    with pytest.raises(ClientConnectionError, match="inconsistent"):
        tr.send(b"x")
    tr.close()


def test_reconnect_through_connection_state(ring_dir: str, peer: RingPeer) -> None:
    tr = RingTransport(ring_dir, DOMID, PORT)
    with pytest.raises(ClientConnectionError, match="does not offer"):
        tr.reconnect(1)
    peer.set(FEATURES, 1)
    peer.set_offsets(req=77, rsp=99)
    seen: list[int] = []

    def server() -> None:
        deadline = time.monotonic() + 5
        while peer.get(CONNECTION) != 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        seen.append(peer.get(CONNECTION))
        peer.set_offsets(req=0, rsp=0)
        peer.set(CONNECTION, 0)

    thread = threading.Thread(target=server)
    thread.start()
    tr.reconnect(5)
    thread.join()
    assert seen == [1]
    assert peer.get(CONNECTION) == 0
    tr.send(b"abc")
    assert peer.take_requests() == b"abc"
    tr.close()


def test_no_queue_access_while_reconnecting(ring_dir: str, peer: RingPeer) -> None:
    tr = RingTransport(ring_dir, DOMID, PORT)
    peer.put_responses(b"stale")
    peer.set(CONNECTION, 1)
    assert tr.receive(0.01) == b""
    peer.set(CONNECTION, 0)
    assert tr.receive(0) == b"stale"
    tr.close()


def test_notify_fifo_is_created_and_wakes_the_guest(ring_dir: str, peer: RingPeer) -> None:
    tr = RingTransport(ring_dir, DOMID, PORT)
    path = os.path.join(ring_dir, f"notify-dom{DOMID}")
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    for message in (b"hello", b"again"):  # a daemon that opens the FIFO per notification
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        peer.put_responses(message)
        os.write(fd, struct.pack("=I", PORT))
        os.close(fd)
        assert tr.receive(5) == message
    # With no writer left the FIFO must not read as end-of-file: waiting
    # for nothing sleeps instead of finding the FIFO readable for ever.
    assert tr._notify is not None
    tr._drain_notify()
    assert select.select([tr._notify], [], [], 0) == ([], [], [])
    tr.close()


def test_missing_page_or_daemon_is_a_clear_error(ring_dir: str) -> None:
    with pytest.raises(ClientConnectionError, match="cannot open ring page"):
        RingTransport(ring_dir, 9, PORT)
    with open(os.path.join(ring_dir, "ring-dom9"), "wb") as f:
        f.write(bytes(4096))
    os.mkfifo(os.path.join(ring_dir, "evtchn"))
    with pytest.raises(ClientConnectionError, match="no daemon has it open"):
        RingTransport(ring_dir, 9, PORT)
