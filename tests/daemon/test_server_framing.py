"""Framing and fairness against the real daemon (subprocess, real store)."""

from __future__ import annotations

import socket
import time

from tests.daemon.wireclient import (
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
    recv_reply,
)
from tests.launcher import Launched


def test_request_split_byte_by_byte(daemon: Launched) -> None:
    sock = connect(daemon.socket)
    data = msg(WRITE, b"/split/node\0value", req_id=7, tx_id=0) + msg(
        READ, b"/split/node\0", req_id=8
    )
    for i in range(len(data)):
        sock.send(data[i : i + 1])
        time.sleep(0.0005)
    assert recv_msg(sock) == (WRITE, 7, 0, b"OK\0")
    assert recv_msg(sock) == (READ, 8, 0, b"value")


def test_many_requests_in_one_send_answered_in_order(daemon: Launched) -> None:
    sock = connect(daemon.socket)
    batch = b"".join(msg(WRITE, b"/many/%d\0%d" % (i, i), req_id=i) for i in range(200))
    batch += b"".join(msg(READ, b"/many/%d\0" % i, req_id=1000 + i) for i in range(200))
    batch += msg(READ, b"/many/none\0", req_id=5000, tx_id=0)
    sock.sendall(batch)
    for i in range(200):
        assert recv_msg(sock) == (WRITE, i, 0, b"OK\0")
    for i in range(200):
        assert recv_msg(sock) == (READ, 1000 + i, 0, b"%d" % i)
    assert recv_msg(sock) == (ERROR, 5000, 0, b"ENOENT\0")


def test_oversized_len_closes_the_connection(daemon: Launched) -> None:
    bad = connect(daemon.socket, timeout=5)
    bad.sendall(HDR.pack(WRITE, 1, 0, 4097) + b"/x\0y")
    assert is_closed(bad)
    good = connect(daemon.socket)
    assert call(good, READ, b"/x\0") == (ERROR, b"ENOENT\0")


def test_garbage_header_closes_without_harm(daemon: Launched) -> None:
    bad = connect(daemon.socket, timeout=5)
    bad.sendall(b"\xff" * 64)
    assert is_closed(bad)
    assert call(connect(daemon.socket), WRITE, b"/ok\0y") == (WRITE, b"OK\0")


def test_disconnect_mid_message_costs_nothing(daemon: Launched) -> None:
    full = msg(WRITE, b"/mid/node\0value")
    for cut in (1, 15, 16, 20):
        sock = connect(daemon.socket)
        sock.sendall(full[:cut])
        sock.close()
    other = connect(daemon.socket)
    assert call(other, READ, b"/mid/node\0") == (ERROR, b"ENOENT\0")


def test_transactions_vanish_with_their_connection(daemon: Launched) -> None:
    sock = connect(daemon.socket)
    kind, body = call(sock, 6, b"\0")
    tx = int(body.rstrip(b"\0"))
    assert call(sock, WRITE, b"/txgone\0v", tx_id=tx) == (WRITE, b"OK\0")
    sock.close()
    assert call(connect(daemon.socket), READ, b"/txgone\0") == (ERROR, b"ENOENT\0")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_non_reading_client_does_not_block_others(daemon: Launched) -> None:
    rss_before = rss_kib(daemon.pid)
    lazy = connect(daemon.socket)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert call(lazy, WATCH, b"/flood\0" + b"t" * 500 + b"\0") == (WATCH, b"OK\0")
    writer = connect(daemon.socket)
    # Thousands of distinct events (no de-duplication) for a client that
    # never reads: far more than fits in the socket buffers.
    for start in range(0, 6000, 500):
        writer.sendall(
            b"".join(msg(WRITE, b"/flood/%d\0x" % i, req_id=i) for i in range(start, start + 500))
        )
        for i in range(start, start + 500):
            assert recv_reply(writer) == (WRITE, i, 0, b"OK\0")
    # 6000 queued events of ~530 bytes would be 3 MB more; the queue bound
    # keeps the daemon well below that.
    assert rss_kib(daemon.pid) - rss_before < 64 * 1024
    # A third client is served at once as well.
    third = connect(daemon.socket)
    assert call(third, READ, b"/flood/5999\0") == (READ, b"x")
    # And the lazy client still works: its events come first, then its reply.
    lazy.sendall(msg(READ, b"/flood/0\0", req_id=99))
    seen_events = 0
    while True:
        m = recv_msg(lazy)
        if m[0] != WATCH_EVENT:
            break
        seen_events += 1
    assert m == (READ, 99, 0, b"x")
    assert seen_events >= 1


def test_client_that_never_reads_replies(daemon: Launched) -> None:
    flood = connect(daemon.socket)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    call(flood, WRITE, b"/big\0" + b"v" * 4000)
    flood.setblocking(False)
    request = msg(READ, b"/big\0")
    try:
        for _ in range(200000):
            flood.send(request)
    except BlockingIOError:
        pass  # the daemon stopped reading us: back pressure works
    else:
        raise AssertionError("the daemon kept reading a client that never reads its replies")
    assert call(connect(daemon.socket), READ, b"/big\0") == (READ, b"v" * 4000)
