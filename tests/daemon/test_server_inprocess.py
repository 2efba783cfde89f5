"""The event loop against a fake store: framing, ordering, back pressure, bounds."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.daemon.conftest import InProcessServer
from tests.daemon.wireclient import (
    DIRECTORY,
    ERROR,
    HDR,
    READ,
    WATCH,
    WATCH_EVENT,
    WRITE,
    call,
    connect,
    is_closed,
    msg,
    recv_msg,
)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_byte_by_byte_and_many_per_send(fake_server: InProcessServer) -> None:
    sock = connect(fake_server.socket)
    stream = b"".join(msg(WRITE, b"/k%d\0v%d" % (i, i), req_id=i) for i in range(5))
    for byte in stream:
        sock.send(bytes([byte]))
    batch = b"".join(msg(READ, b"/k%d\0" % (i % 5), req_id=100 + i, tx_id=i) for i in range(300))
    sock.sendall(batch)
    replies = [recv_msg(sock) for _ in range(305)]
    assert [r[1] for r in replies] == list(range(5)) + list(range(100, 400))
    assert all(r[0] == WRITE and r[3] == b"OK\0" for r in replies[:5])
    # req_id and tx_id are echoed; replies come in request order.
    for i, (type_, req_id, tx_id, body) in enumerate(replies[5:]):
        assert (type_, req_id, tx_id, body) == (READ, 100 + i, i, b"v%d" % (i % 5))


def test_oversized_length_closes_only_that_connection(fake_server: InProcessServer) -> None:
    bad = connect(fake_server.socket, timeout=5)
    good = connect(fake_server.socket)
    bad.sendall(HDR.pack(READ, 0, 0, 4097))
    assert is_closed(bad)
    assert call(good, WRITE, b"/a\0b") == (WRITE, b"OK\0")
    # 4096 itself is allowed.
    good.sendall(msg(WRITE, b"/big\0" + b"x" * 4091))
    assert recv_msg(good)[3] == b"OK\0"


def test_reply_longer_than_payload_max_becomes_e2big(fake_server: InProcessServer) -> None:
    sock = connect(fake_server.socket)
    assert call(sock, DIRECTORY, b"4096\0") == (DIRECTORY, b"x" * 4096)
    assert call(sock, DIRECTORY, b"4097\0") == (ERROR, b"E2BIG\0")


def test_disconnect_mid_message_is_harmless(fake_server: InProcessServer) -> None:
    for cut in (3, 16, 20):
        sock = connect(fake_server.socket)
        sock.sendall(msg(WRITE, b"/half\0value")[:cut])
        sock.close()
    wait_for(lambda: len(fake_server.store.disconnected) == 3, "disconnects")
    assert b"/half" not in fake_server.store.nodes
    assert not list(fake_server.server.connections)


def test_non_reading_watcher_is_bounded_and_blocks_nobody(fake_server: InProcessServer) -> None:
    lazy = connect(fake_server.socket)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert call(lazy, WATCH, b"/w\0tok\0") == (WATCH, b"OK\0")
    writer = connect(fake_server.socket)
    n = 3000
    for chunk in range(0, n, 500):
        writer.sendall(b"".join(msg(WRITE, b"/w/%d\0x" % i) for i in range(chunk, chunk + 500)))
        for _ in range(500):
            assert recv_msg(writer)[0] == WRITE
    conn = next(c for c in fake_server.server.connections if c.conn_id == 1)
    limit = conn.out_limit
    assert conn.out_bytes <= limit
    # The lazy client still gets what was queued, in order, then the daemon
    # serves it normally again.
    first = recv_msg(lazy)
    assert first[0] == WATCH_EVENT


def test_client_flooding_requests_without_reading(fake_server: InProcessServer) -> None:
    flood = connect(fake_server.socket)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flood.setblocking(False)
    request = msg(DIRECTORY, b"4000\0")
    sent = 0
    try:
        for _ in range(20000):
            sent += flood.send(request)
    except BlockingIOError:
        pass
    other = connect(fake_server.socket)
    assert call(other, WRITE, b"/still\0serving") == (WRITE, b"OK\0")
    flood_conn = next(c for c in fake_server.server.connections if c.conn_id == 1)
    assert flood_conn.out_bytes <= flood_conn.out_limit + 4200
    # The flood's socket filled up: the daemon stopped reading it.
    assert sent < 20000 * len(request)


def test_outstanding_limit_stalls_then_resumes(fake_server: InProcessServer) -> None:
    fake_server.store.quotas["outstanding"] = 2
    sock = connect(fake_server.socket)
    sock.sendall(b"".join(msg(WRITE, b"/o%d\0v" % i, req_id=i) for i in range(40)))
    assert [recv_msg(sock)[1] for _ in range(40)] == list(range(40))


def test_unread_events_of_unprivileged_receiver_time_out(fake_server: InProcessServer) -> None:
    # A quota makes connection 1 "unprivileged" (the writer stays privileged).
    fake_server.store.conn_quotas[1, "outstanding"] = 100
    lazy = connect(fake_server.socket)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    call(lazy, WATCH, b"/t\0" + b"k" * 200 + b"\0")
    writer = connect(fake_server.socket)
    for start in range(0, 4000, 500):
        writer.sendall(b"".join(msg(WRITE, b"/t/%04d\0v" % i) for i in range(start, start + 500)))
        for _ in range(500):
            assert recv_msg(writer)[0] == WRITE
    conn = next(c for c in fake_server.server.connections if c.conn_id == 1)
    assert conn.out_bytes > 10000  # queued: the lazy client does not read
    # The watch-event timeout is 0.5 s in this fixture; an event whose
    # transmission has begun is spared.
    wait_for(lambda: conn.out_bytes <= 16 + 209, "unsent events to expire")


def test_connection_state_can_move_to_a_new_server(tmp_path: Path) -> None:
    """What a live update needs: pending input/output, inheritable fds, adoption."""
    from tests.daemon.fake_store import FakeStore

    from pyxenstored.server.loop import Server
    from pyxenstored.server.socket_transport import SocketTransport

    old = Server(FakeStore())
    listener_path = str(tmp_path / "lu.sock")
    old.listen(listener_path)
    client, server_end = socket.socketpair()
    conn = old.add_connection(SocketTransport(server_end), 0)
    conn.reader.feed(msg(WRITE, b"/lu\0v", req_id=3)[:10])  # half a request
    conn.restore_output(msg(READ, b"old reply", req_id=2))
    fds = old.inherit_fds()
    assert os.get_inheritable(fds[f"conn:{conn.conn_id}"])
    assert os.get_inheritable(fds[f"listener:{listener_path}"])
    pending_in, pending_out = conn.pending_input(), conn.pending_output()

    new_store = FakeStore()
    new = Server(new_store)
    sock = socket.socket(fileno=os.dup(fds[f"conn:{conn.conn_id}"]))
    moved = new.add_connection(SocketTransport(sock), 0, conn_id=conn.conn_id)
    moved.restore_output(pending_out)
    moved.reader.feed(pending_in)
    client.settimeout(5)
    client.sendall(msg(WRITE, b"/lu\0v", req_id=3)[10:])
    while new_store.handled == 0:
        new.run_once(0.05)
    new.run_once(0)
    assert recv_msg(client) == (READ, 2, 0, b"old reply")
    assert recv_msg(client) == (WRITE, 3, 0, b"OK\0")
    new.close()
    old.close()


def test_domain_charges_balance_for_unprivileged_connections(fake_server: InProcessServer) -> None:
    store = fake_server.store
    store.conn_quotas[1, "outstanding"] = 50  # connection 1 is "unprivileged"
    guest = connect(fake_server.socket)
    assert call(guest, WATCH, b"/g\0t\0") == (WATCH, b"OK\0")
    assert recv_msg(guest)[0] == WATCH_EVENT
    writer = connect(fake_server.socket)
    for i in range(20):
        call(writer, WRITE, b"/g/%d\0v" % i)
    for _ in range(20):
        assert recv_msg(guest)[0] == WATCH_EVENT
    guest.sendall(b"".join(msg(READ, b"/g/1\0") for _ in range(10)))
    for _ in range(10):
        assert recv_msg(guest)[0] == READ
    wait_for(lambda: store.charges.get((1, "memory")) == 0, "memory charges undone")
    assert store.charges[1, "outstanding"] == 0
    assert (2, "memory") not in store.charges  # privileged connections are not charged
    # Closing with output still queued undoes the charges too.
    guest.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    guest.sendall(b"".join(msg(READ, b"/g/1\0") for _ in range(3000)))
    wait_for(lambda: store.charges[1, "memory"] > 0, "queued output")
    guest.close()
    wait_for(lambda: 1 in store.disconnected, "disconnect")
    assert store.charges[1, "memory"] == 0
    assert store.charges[1, "outstanding"] == 0


def test_store_exception_becomes_eio_and_server_goes_on(fake_server: InProcessServer) -> None:
    store = fake_server.store
    original = store.handle

    def broken(conn_id: int, msg_type: int, tx_id: int, payload: bytes) -> object:
        if payload == b"/boom\0":
            raise RuntimeError("store bug")
        return original(conn_id, msg_type, tx_id, payload)

    store.handle = broken  # type: ignore[method-assign,assignment]
    sock = connect(fake_server.socket)
    assert call(sock, READ, b"/boom\0") == (ERROR, b"EIO\0")
    assert call(sock, WRITE, b"/fine\0x") == (WRITE, b"OK\0")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=8))
def test_random_bytes_never_hurt_other_clients(
    fake_server: InProcessServer, garbage: list[bytes]
) -> None:
    hostile = connect(fake_server.socket, timeout=2)
    for chunk in garbage:
        try:
            hostile.sendall(chunk)
        except OSError:
            break  # the daemon may already have closed it (oversized header)
    hostile.close()
    good = connect(fake_server.socket)
    assert call(good, WRITE, b"/alive\0yes") == (WRITE, b"OK\0")
    good.close()
