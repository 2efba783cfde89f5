"""The loop's quick path answers exactly as the general path does.

Two servers in this process, each with a real store and three socket-pair
clients, get the same random requests.  On one the quick path is off (an
``io`` trace forces every request through the general path); byte for byte,
every client must read the same.  Requests come one at a time (the quick
path's case), two in one write and split across writes (the general path's),
with watches, transactions and errors mixed in.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyxenstored.server.log import Tracer
from pyxenstored.server.loop import Server
from pyxenstored.server.socket_transport import SocketTransport
from pyxenstored.store import Store, StoreConfig

HDR = struct.Struct("=IIII")
CONNS = 3
# DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH, TX_START, TX_END, WRITE, MKDIR,
# RM, SET_PERMS, RESET_WATCHES, DIRECTORY_PART, and an unknown type.
TYPES = (1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 21, 24, 99)
PATHS = (b"/q", b"/q/a", b"/q/a/b", b"/q/c", b"q/rel", b"/q//bad", b"@releaseDomain", b"")


def payload_for(type_: int, path: bytes, value: bytes, n: int) -> bytes:
    if type_ == 11:
        return path + b"\0" + value
    if type_ == 14:
        return path + b"\0" + (b"n0\0r%d\0" % n if n % 3 else b"w5\0")
    if type_ in (4, 5):
        return path + b"\0tok%d\0" % (n % 2)
    if type_ == 7:
        return b"T\0" if n % 2 else b"F\0"
    if type_ == 24:
        return path + b"\0%d\0" % (n % 3)
    if type_ == 6:
        return b"\0"
    return path + b"\0" if n % 5 else path  # sometimes without its NUL


request = st.tuples(
    st.integers(0, CONNS - 1),
    st.sampled_from(TYPES),
    st.sampled_from(PATHS),
    st.binary(max_size=6),
    st.integers(0, 30),
    st.sampled_from(("one", "one", "one", "pair", "split")),
)


class Rig:
    def __init__(self, trace: Path | None) -> None:
        self.store = Store(StoreConfig())
        self.server = Server(self.store, tracer=Tracer(str(trace) if trace else None))
        self.clients: list[socket.socket] = []
        for _ in range(CONNS):
            mine, theirs = socket.socketpair()
            mine.setblocking(False)
            self.server.add_connection(SocketTransport(theirs), 0)
            self.clients.append(mine)

    def send(self, conn: int, data: bytes) -> None:
        self.clients[conn].sendall(data)
        for _ in range(4):
            self.server.run_once(0)

    def drain(self) -> list[bytes]:
        out = []
        for sock in self.clients:
            got = b""
            try:
                while chunk := sock.recv(65536):
                    got += chunk
            except BlockingIOError:
                pass
            out.append(got)
        return out

    def close(self) -> None:
        self.server.close()
        for sock in self.clients:
            sock.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(request, min_size=1, max_size=40))
def test_quick_and_general_paths_answer_alike(
    tmp_path: Path, steps: list[tuple[int, int, bytes, bytes, int, str]]
) -> None:
    quick = Rig(None)
    general = Rig(tmp_path / "trace")
    assert not quick.server.tracer.io_on and general.server.tracer.io_on
    try:
        for i, (conn, type_, path, value, n, shape) in enumerate(steps):
            tx_id = n % 3 if type_ not in (6,) and n > 20 else 0
            body = payload_for(type_, path, value, n)
            msg = HDR.pack(type_, i, tx_id, len(body)) + body
            if shape == "pair":
                msg += HDR.pack(2, 1000 + i, 0, 3) + b"/q\0"
            for rig in (quick, general):
                if shape == "split":
                    rig.send(conn, msg[:7])
                    rig.send(conn, msg[7:])
                else:
                    rig.send(conn, msg)
            assert quick.drain() == general.drain(), f"step {i}: {steps[i]}"
        assert quick.store.check() == general.store.check() == []
    finally:
        quick.close()
        general.close()
