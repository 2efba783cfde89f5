"""Watch operations: WATCH and UNWATCH, and firing watch events.

:class:`WatchOps` registers a connection's watches in the store's
:class:`~.watch.WatchIndex` (with their quota) and turns a change of a path
into the :class:`~.base.Event` s of the watches it reaches, permission
checked as in C's ``watch.c``.

State (:class:`~.base.StoreBase`): owns ``watches`` (adds and removes);
reads ``nodes`` and ``conns``; also writes each connection's own watch
table and its domain's ``watches`` and ``memory`` usage.  Calls nothing of
the other groups; offers them ``WatchGroup`` (:mod:`.groups`).
"""

from __future__ import annotations

from ..wire import (
    FEATURE_WATCHDEPTH,
    OK,
    PAYLOAD_MAX,
    MsgType,
    XsError,
    c_atoi,
    parent_of,
    split_strings,
)
from . import quota as q
from .base import ANY_GENERATION, Event, Result, StoreBase
from .connection import Connection
from .node import Node
from .perms import PERM_READ, Perms
from .transaction import Transaction
from .watch import MATCH_DEPTH, MATCH_NODEPTH, Watch


class WatchOps(StoreBase):
    """Watch registration and event firing."""

    # --- watch events --------------------------------------------------------

    def _watch_permitted(
        self, conn: Connection, path: str, node: Node | None, old_perms: Perms | None
    ) -> bool:
        """C's ``watch.c:watch_permitted``.

        Privileged watchers pass whenever the node can be found; a node gone
        by the time of firing (removed in a committed transaction) reaches
        nobody, as in C.
        """
        if conn.privileged and (node is not None or old_perms is not None or path in self.nodes):
            return True
        if old_perms is not None:
            gen = node.gen if node is not None else ANY_GENERATION
            if self._perm(conn, old_perms, gen) & PERM_READ:
                return True
        if node is None:
            node = self.nodes.get(path)
            if node is None:
                return False
        if self._perm(conn, node.perms, node.gen) & PERM_READ:
            return True
        parent = self.nodes.get(parent_of(path))
        return parent is not None and bool(self._perm(conn, parent.perms, parent.gen) & PERM_READ)

    def _fire(
        self,
        path: str,
        mode: int,
        node: Node | None,
        old_perms: Perms | None,
        events: list[Event],
        *,
        perm_path: str | None = None,
    ) -> None:
        """Add the events an change of ``path`` causes to ``events``."""
        if not self.watches.count:
            return
        matches = self.watches.matches(path, mode)
        if not matches:
            return
        permitted: dict[int, bool] = {}
        check_path = path if perm_path is None else perm_path
        limit = PAYLOAD_MAX - 2
        for w in matches:
            ok = permitted.get(w.conn_id)
            if ok is None:
                wc = self.conns[w.conn_id]
                # Even privileged watchers miss nodes gone by the time of firing (C).
                ok = self._watch_permitted(wc, check_path, node, old_perms)
                permitted[w.conn_id] = ok
            if ok:
                epath = w.event_path(path)
                if len(epath) + len(w.token) <= limit:  # longer events are dropped, as in C
                    events.append(Event(w.conn_id, epath, w.token))

    def _fire_special(
        self,
        name: str,
        domid: int,
        events: list[Event],
        *,
        nodomid: bool = True,
        withdomid: bool = True,
    ) -> None:
        """Events of special node ``name`` about ``domid`` (``domain.c:fire_special_watches``)."""
        node = self.nodes.get(name)
        if node is None:
            return
        if nodomid:
            self._fire(name, MATCH_NODEPTH, node, None, events)
        if withdomid:
            self._fire(f"{name}/{domid}", MATCH_DEPTH, node, None, events, perm_path=name)

    # --- WATCH / UNWATCH -----------------------------------------------------

    def op_watch(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        depth = -1
        if len(parts) == 3 and conn.features & FEATURE_WATCHDEPTH:
            depth = c_atoi(parts[2])
            if depth < 0:
                raise XsError("EINVAL", "negative watch depth")
        elif len(parts) != 2:
            raise XsError("EINVAL", "WATCH needs path and token")
        raw, token = parts[0], parts[1]
        relative = not raw.startswith((b"/", b"@"))
        path = self._canon(conn, raw, allow_special=True)
        if (path, token) in conn.watches:
            raise XsError("EEXIST", "watch exists")
        dom = conn.domain
        if dom is not None:
            if conn.limited is not None and q.exceeds(
                dom.quota.hard(q.WATCHES), dom.usage[q.WATCHES] + 1
            ):
                raise XsError("ENOSPC", "watches quota")
            self._check_memory(conn, conn.domid, len(path) + len(token))
        prefix = len(f"/local/domain/{conn.domid}/") if relative else 0
        watch = Watch(conn.conn_id, conn.seq, self.next_watch_seq(), path, token, depth, prefix)
        conn.watches[(path, token)] = watch
        self.watches.add(watch)
        if dom is not None:
            dom.add(q.WATCHES, 1)
            dom.add(q.MEMORY, len(path) + len(token))
        # The initial event follows the OK and is not permission checked.
        return Result(MsgType.WATCH, OK, [Event(conn.conn_id, watch.event_path(path), token)])

    def _unregister_watch(self, conn: Connection, watch: Watch) -> None:
        del conn.watches[(watch.path, watch.token)]
        self.watches.remove(watch)
        if conn.domain is not None:
            conn.domain.add(q.WATCHES, -1)
            conn.domain.add(q.MEMORY, -(len(watch.path) + len(watch.token)))

    def op_unwatch(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if len(parts) != 2:
            raise XsError("EINVAL", "UNWATCH needs path and token")
        path = self._canon(conn, parts[0], allow_special=True)
        watch = conn.watches.get((path, parts[1]))
        if watch is None:
            raise XsError("ENOENT", "no such watch")
        self._unregister_watch(conn, watch)
        return Result(MsgType.UNWATCH, OK)

    def _drop_watches(self, conn: Connection) -> None:
        for watch in list(conn.watches.values()):
            self._unregister_watch(conn, watch)
