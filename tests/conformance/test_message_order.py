"""Order of a request's own watch events and its reply, on one connection.

C queues the watch events a request raises while it works and its reply when
it is done, so a client watching what it changes reads the event *before*
the reply -- except for WATCH's initial event, which follows the ``OK``.
Both daemons must give the same order of (type, req_id) on the wire.
"""

from __future__ import annotations

import socket
import struct

import pytest
from tests.conformance.conftest import DaemonPool
from tests.conformance.daemons import KINDS

HDR = struct.Struct("=IIII")
WATCH, TX_START, TX_END, WRITE, MKDIR, RM, SET_PERMS, WATCH_EVENT = 4, 6, 7, 11, 12, 13, 14, 15


def _sequence(path: str, requests: list[tuple[int, bytes, bool]]) -> list[tuple[int, int]]:
    """Send each request (waiting for its reply) and list what arrives, in order.

    A request whose flag is set runs in a transaction started just before it
    and committed just after.
    """
    seen: list[tuple[int, int]] = []
    buf = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)

        def read_message() -> tuple[int, int, bytes]:
            nonlocal buf
            while len(buf) < 16 or len(buf) < 16 + HDR.unpack_from(buf)[3]:
                data = sock.recv(65536)
                assert data, "daemon closed the connection"
                buf += data
            kind, rid, _tx, length = HDR.unpack_from(buf)
            body, buf = buf[16 : 16 + length], buf[16 + length :]
            seen.append((kind, rid))
            return kind, rid, body

        def call(type_: int, req_id: int, payload: bytes, tx_id: int = 0) -> bytes:
            sock.sendall(HDR.pack(type_, req_id, tx_id, len(payload)) + payload)
            while True:
                kind, rid, body = read_message()
                if kind != WATCH_EVENT and rid == req_id:
                    return body

        req_id = 1
        for type_, payload, in_tx in requests:
            if in_tx:
                tx = int(call(TX_START, req_id, b"\0").rstrip(b"\0"))
                call(type_, req_id + 1, payload, tx)
                call(TX_END, req_id + 2, b"T\0", tx)
                req_id += 3
            else:
                call(type_, req_id, payload)
                if type_ == WATCH:
                    # Wait for the initial event: one still queued would
                    # swallow an identical later one (C's de-duplication),
                    # and whether it is still queued is a matter of timing.
                    while read_message()[0] != WATCH_EVENT:
                        pass
                req_id += 1
    return seen


REQUESTS = [
    (WATCH, b"/order\0tok\0", False),
    (WRITE, b"/order\0v", False),
    (MKDIR, b"/order/kid\0", False),
    (SET_PERMS, b"/order/kid\0n0\0", False),
    (RM, b"/order/kid\0", False),
    (WRITE, b"/order\0w", True),
    (WATCH, b"/elsewhere\0tok\0", False),
]


@pytest.fixture(scope="module")
def sequences(daemons: DaemonPool) -> dict[str, list[tuple[int, int]]]:
    return {kind: _sequence(daemons.get(kind).socket, REQUESTS) for kind in KINDS}


def test_events_of_a_change_precede_its_reply(
    sequences: dict[str, list[tuple[int, int]]],
) -> None:
    ev = (WATCH_EVENT, 0)
    assert sequences["pyxenstored"] == [
        (WATCH, 1), ev,  # the initial event follows the OK
        ev, (WRITE, 2),
        ev, (MKDIR, 3),
        ev, (SET_PERMS, 4),
        ev, (RM, 5),
        (TX_START, 6), (WRITE, 7), ev, (TX_END, 8),  # the commit raises the event
        (WATCH, 9), ev,
    ]  # fmt: skip


def test_order_matches_the_reference(sequences: dict[str, list[tuple[int, int]]]) -> None:
    assert sequences["pyxenstored"] == sequences["reference"]
