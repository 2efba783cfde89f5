"""Fixtures for domain migration: sans-I/O stores with a guest domain on a connection.

A :class:`Side` is one store with dom0 (connection 1) and guests introduced
the way a toolstack does it (home made by dom0, given to the guest, then
INTRODUCE); each guest gets a ring-type store connection.  Requests are
raw payloads fed to ``Store.handle``.
"""

from __future__ import annotations

from pyxenstored.store import Result, Store, StoreConfig
from pyxenstored.wire import MsgType

DOM0 = 1


class Side:
    """One store and its connections (conn id 1: dom0 over a socket)."""

    def __init__(self, domids: tuple[int, ...]) -> None:
        self.store = Store(StoreConfig(existing_domids=frozenset(domids)))
        self.store.connect(DOM0, 0, is_socket=True)
        self.conns: dict[int, int] = {}

    def req(self, conn: int, t: MsgType, *args: bytes | str, tx: int = 0) -> Result:
        raw = [a.encode() if isinstance(a, str) else a for a in args]
        if t == MsgType.WRITE:
            # WRITE's value is raw bytes after the NUL-terminated path.
            payload = raw[0] + b"\0" + b"".join(raw[1:])
        else:
            payload = b"".join(a + b"\0" for a in raw)
        return self.store.handle(conn, t, tx, payload)

    def ok(self, conn: int, t: MsgType, *args: bytes | str, tx: int = 0) -> bytes:
        r = self.req(conn, t, *args, tx=tx)
        assert r.reply_type == t, (t, args, r.payload)
        return r.payload

    def err(self, conn: int, t: MsgType, *args: bytes | str, tx: int = 0) -> str:
        r = self.req(conn, t, *args, tx=tx)
        assert r.reply_type == MsgType.ERROR, (t, args, r.payload)
        return r.payload.rstrip(b"\0").decode()

    def introduce(self, domid: int, conn_id: int, *, home: bool = True) -> int:
        """A guest the toolstack's way; returns its connection id."""
        if home:
            self.ok(DOM0, MsgType.MKDIR, f"/local/domain/{domid}")
            self.ok(DOM0, MsgType.SET_PERMS, f"/local/domain/{domid}", f"n{domid}")
        self.ok(DOM0, MsgType.INTRODUCE, str(domid), "1", "7")
        self.store.connect(conn_id, domid, is_socket=False)
        self.conns[domid] = conn_id
        return conn_id

    def guest(self, domid: int) -> int:
        return self.conns[domid]

    def quota_report(self, domid: int) -> str:
        """CONTROL ``quota <domid>``: usage and maxima."""
        return self.ok(DOM0, MsgType.CONTROL, "quota", str(domid)).decode()

    def usage_lines(self, domid: int) -> list[str]:
        """The current-usage part of ``quota <domid>`` (maxima may differ after a move)."""
        return [line.split("(max")[0].rstrip() for line in self.quota_report(domid).splitlines()]

    def snapshot(self) -> tuple[object, ...]:
        """Everything a refused import must leave alone."""
        s = self.store
        nodes = {p: (n.value, n.perms, tuple(n.children), n.gen) for p, n in s.nodes.items()}
        doms = {
            d: (r.features, tuple(map(tuple, r.quota.values)), tuple(r.usage), r.introduced)
            for d, r in s.domains.items()
        }
        conns = {
            c: (tuple(sorted(k for k in x.watches)), tuple(sorted(x.transactions)))
            for c, x in s.conns.items()
        }
        return nodes, doms, conns, s.generation
