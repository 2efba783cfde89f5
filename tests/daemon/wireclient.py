"""Raw-socket helpers for the daemon tests: build, send and read messages."""

from __future__ import annotations

import socket
import struct

HDR = struct.Struct("=IIII")  # type, req_id, tx_id, len: xs_wire.h struct xsd_sockmsg, native order

READ, WRITE, DIRECTORY, WATCH, ERROR, WATCH_EVENT = 2, 11, 1, 4, 16, 15
TRANSACTION_START, TRANSACTION_END, GET_PERMS, CONTROL = 6, 7, 3, 0


def msg(type_: int, payload: bytes, req_id: int = 0, tx_id: int = 0) -> bytes:
    return HDR.pack(type_, req_id, tx_id, len(payload)) + payload


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise EOFError("connection closed by the daemon")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_msg(sock: socket.socket) -> tuple[int, int, int, bytes]:
    type_, req_id, tx_id, length = HDR.unpack(recv_exact(sock, HDR.size))
    return type_, req_id, tx_id, recv_exact(sock, length)


def recv_reply(sock: socket.socket) -> tuple[int, int, int, bytes]:
    """The next message that is not a watch event."""
    while True:
        m = recv_msg(sock)
        if m[0] != WATCH_EVENT:
            return m


def call(sock: socket.socket, type_: int, payload: bytes, tx_id: int = 0) -> tuple[int, bytes]:
    sock.sendall(msg(type_, payload, 0, tx_id))
    type_, _req, _tx, body = recv_reply(sock)
    return type_, body


def is_closed(sock: socket.socket) -> bool:
    """True once the daemon has closed its end (reads end of file)."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
