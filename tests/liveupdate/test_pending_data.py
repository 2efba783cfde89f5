"""Pending bytes of a connection across dump and restore, in one process.

A connection whose peer does not read has a partly sent reply and more
queued behind it, and has sent one complete request plus half of another.
The dump carries exactly that (``out-resp-len`` = the unsent rest of the
first message); a second server restored from the dump (on duplicated
descriptors) sends the rest of the output first, then answers the complete
request, and keeps the half request waiting for its end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import replace
from pathlib import Path

from pyxenstored.server.connection import Connection
from pyxenstored.server.control_hooks import ServerControlHooks
from pyxenstored.server.liveupdate import LiveUpdate, write_state
from pyxenstored.server.log import Tracer
from pyxenstored.server.loop import Server, ServerConfig
from pyxenstored.server.socket_transport import SocketTransport
from pyxenstored.store import Store
from pyxenstored.stream import ConnectionData, GlobalData, SocketSpec
from pyxenstored.wire import MsgType

HDR = struct.Struct("<IIII")


def message(type_: int, req_id: int, payload: bytes) -> bytes:
    return HDR.pack(type_, req_id, 0, len(payload)) + payload


def make_server(tmp: Path, name: str) -> tuple[Server, Store, LiveUpdate]:
    hooks = ServerControlHooks(Tracer())
    store = Store(hooks=hooks)
    server = Server(store, ServerConfig(), Tracer())
    lu = LiveUpdate(server, store, rundir=str(tmp), sock_path=str(tmp / name), argv=[])
    lu.install(hooks)
    return server, store, lu


def pump(server: Server, sock: socket.socket, size: int) -> bytes:
    """Run ``server`` while reading ``size`` bytes from the client end ``sock``."""
    sock.setblocking(False)
    out = b""
    for _ in range(1000):
        server.run_once(0.005)
        with contextlib.suppress(BlockingIOError):
            out += sock.recv(size - len(out))
        if len(out) >= size:
            return out
    raise AssertionError(f"got {len(out)} of {size} bytes")


def test_partial_output_and_input_survive(tmp_path: Path) -> None:
    server, store, lu = make_server(tmp_path, "socket")
    server.listen(str(tmp_path / "socket"))
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn: Connection = server.add_connection(SocketTransport(ours), 0)
    # Queue far more output than the socket takes, then send what fits.
    queued = b""
    for i in range(40):
        payload = b"%04d" % i + b"x" * 1500
        conn.queue_reply(MsgType.READ, i, 0, payload)
        queued += message(MsgType.READ, i, payload)
    conn.flush()
    sent = len(queued) - conn.out_bytes
    assert 0 < sent < len(queued)
    # One complete request and half of the next one arrived but are not processed.
    store.handle(conn.conn_id, MsgType.WRITE, 0, b"/p\0value")
    complete = message(MsgType.READ, 77, b"/p\0")
    half = message(MsgType.READ, 78, b"/p\0")[:10]
    conn.reader.feed(complete + half)
    server.stall(conn)  # as if held back by a live update

    lazy, target, version, lost = lu.build_records(None)
    records = list(lazy)
    assert (target, version, lost) == ("spec", 2, [])
    (cd,) = [r for r in records if isinstance(r, ConnectionData)]
    assert cd.in_data == complete + half
    assert cd.out_data == queued[sent:]
    first_len = len(message(MsgType.READ, 0, b"0000" + b"x" * 1500))
    assert sent % first_len, "the first unsent message is partly sent"
    assert cd.out_resp_len == first_len - sent % first_len

    # The new server gets duplicated descriptors, as an exec would keep them.
    new_fd = os.dup(ours.fileno())
    listener_fd = os.dup(next(iter(server._listeners))[0].fileno())
    records = [
        replace(r, spec=SocketSpec(new_fd))
        if isinstance(r, ConnectionData)
        else GlobalData(listener_fd, -1)
        if isinstance(r, GlobalData)
        else r
        for r in records
    ]
    dump = tmp_path / "state_dump"
    write_state(str(dump), records, 2, "spec")
    assert dump.stat().st_mode & 0o777 == 0o600
    server.stop()  # the old server serves no more (an exec would end it)

    server2, store2, lu2 = make_server(tmp_path, "socket")
    lu2.restore(str(dump))
    assert not dump.exists()
    assert store2.check() == []
    got = pump(server2, peer, len(queued) + 16 + 5)
    assert got[: len(queued)] == queued  # the partly sent reply went on where it stopped
    assert got[len(queued) :] == message(MsgType.READ, 77, b"value")
    # The half request waits for its end, then is answered.
    peer.sendall(message(MsgType.READ, 78, b"/p\0")[10:])
    assert pump(server2, peer, 16 + 5) == message(MsgType.READ, 78, b"value")
    server2.close()
    server.close()
    peer.close()


def test_collector_resumes_after_the_first_turn(tmp_path: Path) -> None:
    """The restore pauses the cyclic collector; the loop's second tick resumes it."""
    import gc

    from pyxenstored.stream import End, NodeData, NodePerm, write_stream

    state = tmp_path / "state_dump"
    state.write_bytes(write_stream([NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/", b""), End()]))
    server, _store, lu = make_server(tmp_path, "socket")
    try:
        assert gc.isenabled()
        lu.restore(str(state))
        assert not gc.isenabled()
        lu.tick(None)  # before the first turn (replies restored as pending go out in it)
        assert not gc.isenabled()
        lu.tick(None)  # after it
        assert gc.isenabled()
        lu.tick(None)
        assert gc.isenabled()
    finally:
        gc.enable()
        server.close()


def test_collector_back_on_after_a_failed_restore(tmp_path: Path) -> None:
    import gc

    import pytest

    from pyxenstored.migrate import RestoreError

    state = tmp_path / "state_dump"
    state.write_bytes(b"not a stream at all")
    server, _store, lu = make_server(tmp_path, "socket")
    try:
        with pytest.raises(RestoreError):
            lu.restore(str(state))
        assert gc.isenabled()
    finally:
        gc.enable()
        server.close()
