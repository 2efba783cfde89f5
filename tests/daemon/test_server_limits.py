"""Hostile clients against the real daemon: descriptor exhaustion, many connections."""

from __future__ import annotations

import resource
import socket
from pathlib import Path

from tests.daemon.wireclient import READ, WRITE, call, connect, msg, recv_msg
from tests.launcher import start_pyxenstored


def low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))


def test_out_of_descriptors_pauses_accept_then_recovers(tmp_path: Path) -> None:
    d = start_pyxenstored(tmp_path / "run", preexec=low_fd_limit)
    try:
        held = [connect(d.socket) for _ in range(60)]  # more than the daemon can accept
        # The first ones are served...
        assert call(held[0], WRITE, b"/fd\0ok") == (WRITE, b"OK\0")
        # ...the last ones wait in the listen queue; ask them anyway.
        for sock in held[-5:]:
            sock.sendall(msg(READ, b"/fd\0", req_id=5))
        for sock in held[:30]:
            sock.close()
        for sock in held[-5:]:
            assert recv_msg(sock) == (READ, 5, 0, b"ok")
        assert call(connect(d.socket), READ, b"/fd\0") == (READ, b"ok")
        for sock in held[30:]:
            sock.close()
    finally:
        assert d.stop() == 0
    assert "pausing accept" in d.output()


def test_many_watches_and_transactions_from_one_client(tmp_path: Path) -> None:
    d = start_pyxenstored(tmp_path / "run")
    try:
        sock = connect(d.socket)
        batch = b"".join(msg(4, b"/many/w%d\0tok%d\0" % (i, i), req_id=i) for i in range(2000))
        batch += b"".join(msg(6, b"\0", req_id=10000 + i) for i in range(500))
        sock.sendall(batch)
        replies = []
        while len(replies) < 2500:
            m = recv_msg(sock)
            if m[0] != 15:
                replies.append(m)
        assert all(r[3] == b"OK\0" for r in replies[:2000])
        assert len({int(r[3].rstrip(b"\0")) for r in replies[2000:]}) == 500
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        assert call(connect(d.socket), READ, b"/many\0")[0] in (READ, 16)
    finally:
        assert d.stop() == 0


def test_deep_and_long_paths_are_answered(tmp_path: Path) -> None:
    d = start_pyxenstored(tmp_path / "run")
    try:
        sock = connect(d.socket)
        deep = b"/d" * 1500  # 1500 levels, 3000 bytes
        kind, body = call(sock, WRITE, deep + b"\0v")
        assert (kind, body) in ((WRITE, b"OK\0"), (16, b"EINVAL\0"), (16, b"ENOSPC\0"))
        long_name = b"/" + b"n" * 4000
        assert call(sock, WRITE, long_name + b"\0v")[0] in (WRITE, 16)
        # A payload of exactly 4096 bytes is a valid message.
        assert call(sock, WRITE, b"/max\0" + b"v" * 4091)[0] in (WRITE, 16)
        assert call(sock, READ, b"/\0")[0] == READ
        assert call(connect(d.socket), WRITE, b"/after\0ok") == (WRITE, b"OK\0")
    finally:
        assert d.stop() == 0
