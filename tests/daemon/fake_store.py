"""A tiny store for testing the server alone (framing, queues, back pressure).

It implements just enough of the protocol to produce replies of chosen sizes
and watch events: READ, WRITE, DIRECTORY, WATCH (prefix match), and ENOSYS
for anything else.  ``quotas`` lets a test give a connection an
``outstanding`` or ``memory`` limit as the real store does for guests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyxenstored.wire import MsgType, split_strings


@dataclass(slots=True, frozen=True)
class FakeEvent:
    conn_id: int
    path: bytes
    token: bytes

    @property
    def payload(self) -> bytes:
        return self.path + b"\0" + self.token + b"\0"


@dataclass(slots=True, frozen=True)
class FakeResult:
    reply_type: int
    payload: bytes
    events: list[FakeEvent] = field(default_factory=list)
    events_before_reply: bool = False


def _error(name: str) -> FakeResult:
    return FakeResult(int(MsgType.ERROR), name.encode() + b"\0")


class FakeStore:
    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}
        self.watches: list[tuple[int, bytes, bytes]] = []
        self.connected: dict[int, int] = {}
        self.disconnected: list[int] = []
        self.quotas: dict[str, int] = {}
        self.conn_quotas: dict[tuple[int, str], int] = {}
        self.handled = 0
        self.charges: dict[tuple[int, str], int] = {}

    def connect(self, conn_id: int, domid: int, *, is_socket: bool) -> None:
        self.connected[conn_id] = domid

    def disconnect(self, conn_id: int) -> None:
        self.connected.pop(conn_id, None)
        self.disconnected.append(conn_id)
        self.watches = [w for w in self.watches if w[0] != conn_id]

    def quota_for_conn(self, conn_id: int, name: str) -> int | None:
        return self.conn_quotas.get((conn_id, name), self.quotas.get(name))

    def charge(self, conn_id: int, name: str, delta: int, *, check: bool = False) -> bool:
        key = (conn_id, name)
        value = self.charges.get(key, 0) + delta
        limit = self.quota_for_conn(conn_id, name)
        if check and delta > 0 and limit is not None and value >= limit:
            return False
        self.charges[key] = value
        return True

    def quick_read(self, conn_id: int, msg_type: int, payload: bytes) -> bytes | None:
        return None  # every request goes through handle (and is counted)

    def handle(self, conn_id: int, msg_type: int, tx_id: int, payload: bytes) -> FakeResult:
        self.handled += 1
        args = split_strings(payload)
        if msg_type == MsgType.READ:
            path = payload.rstrip(b"\0")
            if path not in self.nodes:
                return _error("ENOENT")
            return FakeResult(msg_type, self.nodes[path])
        if msg_type == MsgType.WRITE:
            path, _, value = payload.partition(b"\0")
            self.nodes[path] = value
            events = [
                FakeEvent(cid, path, token)
                for cid, wpath, token in self.watches
                if path == wpath or path.startswith(wpath + b"/")
            ]
            return FakeResult(msg_type, b"OK\0", events)
        if msg_type == MsgType.DIRECTORY:
            return FakeResult(msg_type, b"x" * int(payload.rstrip(b"\0") or b"0"))
        if msg_type == MsgType.WATCH and len(args) == 2:
            self.watches.append((conn_id, args[0], args[1]))
            return FakeResult(msg_type, b"OK\0", [FakeEvent(conn_id, args[0], args[1])])
        return _error("ENOSYS")
