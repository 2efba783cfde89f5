"""Fixtures for the store tests: sans-I/O clients that feed bytes to Store.handle."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import count

import pytest

from pyxenstored.store import Result, Store, StoreConfig
from pyxenstored.wire import MsgType


class Client:
    """One connection to a Store: requests are raw payload bytes."""

    def __init__(self, store: Store, conn_id: int) -> None:
        self.store = store
        self.conn_id = conn_id

    def req(self, msg_type: MsgType, payload: bytes, tx: int = 0) -> Result:
        return self.store.handle(self.conn_id, msg_type, tx, payload)

    def ok(self, msg_type: MsgType, payload: bytes, tx: int = 0) -> bytes:
        """Payload of a successful reply (fails the test on an ERROR reply)."""
        r = self.req(msg_type, payload, tx)
        assert r.reply_type == msg_type, (msg_type, payload, r.payload)
        return r.payload

    def err(self, msg_type: MsgType, payload: bytes, tx: int = 0) -> str:
        """Error name of an ERROR reply (fails the test on success)."""
        r = self.req(msg_type, payload, tx)
        assert r.reply_type == MsgType.ERROR, (msg_type, payload, r.payload)
        assert r.payload.endswith(b"\0")
        return r.payload[:-1].decode()

    # Shorthands for the common operations.
    def write(self, path: str, value: bytes = b"", tx: int = 0) -> None:
        assert self.ok(MsgType.WRITE, path.encode() + b"\0" + value, tx) == b"OK\0"

    def read(self, path: str, tx: int = 0) -> bytes:
        return self.ok(MsgType.READ, path.encode() + b"\0", tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        assert self.ok(MsgType.MKDIR, path.encode() + b"\0", tx) == b"OK\0"

    def rm(self, path: str, tx: int = 0) -> None:
        assert self.ok(MsgType.RM, path.encode() + b"\0", tx) == b"OK\0"

    def ls(self, path: str, tx: int = 0) -> list[str]:
        return [
            n.decode()
            for n in self.ok(MsgType.DIRECTORY, path.encode() + b"\0", tx).split(b"\0")[:-1]
        ]

    def set_perms(self, path: str, *perms: str, tx: int = 0) -> None:
        payload = path.encode() + b"\0" + b"".join(p.encode() + b"\0" for p in perms)
        assert self.ok(MsgType.SET_PERMS, payload, tx) == b"OK\0"

    def get_perms(self, path: str) -> list[str]:
        return [
            p.decode() for p in self.ok(MsgType.GET_PERMS, path.encode() + b"\0").split(b"\0")[:-1]
        ]

    def watch(self, path: str, token: str, depth: int | None = None) -> Result:
        payload = path.encode() + b"\0" + token.encode() + b"\0"
        if depth is not None:
            payload += str(depth).encode() + b"\0"
        r = self.req(MsgType.WATCH, payload)
        assert r.reply_type == MsgType.WATCH, r.payload
        return r

    def start(self) -> int:
        return int(self.ok(MsgType.TRANSACTION_START, b"\0")[:-1])

    def end(self, tx: int, commit: bool = True) -> Result:
        return self.req(MsgType.TRANSACTION_END, b"T\0" if commit else b"F\0", tx)


def events_of(result: Result) -> list[tuple[int, bytes, bytes]]:
    return [(e.conn_id, e.path, e.token) for e in result.events]


ClientFactory = Callable[..., Client]


# Domains the fake hypervisor knows in most tests (C under the shim: XS_SHIM_DOMAINS).
EXISTING = frozenset(range(1, 64))


@pytest.fixture
def store() -> Store:
    return Store(StoreConfig(existing_domids=EXISTING))


@pytest.fixture
def connect(store: Store) -> Iterator[ClientFactory]:
    """``connect()`` -> privileged socket client; ``connect(domid=5)`` -> guest of domain 5."""
    ids = count(1)

    def make(domid: int | None = None) -> Client:
        conn_id = next(ids)
        if domid is None:
            store.connect(conn_id, 0, is_socket=True)
        else:
            store.connect(conn_id, domid, is_socket=False)
        return Client(store, conn_id)

    yield make


@pytest.fixture
def dom0(connect: ClientFactory) -> Client:
    return connect()


def assert_consistent(store: Store) -> None:
    assert store.check() == []
