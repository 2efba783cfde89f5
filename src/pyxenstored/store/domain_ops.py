"""Domain operations: the requests about domains, and domains going away.

INTRODUCE, RELEASE, RESUME, SET_TARGET, GET_DOMAIN_PATH, IS_DOMAIN_INTRODUCED.
Also what happens when a domain goes away (RELEASE, death reported by the
hypervisor through :meth:`DomainOps.domains_changed`, or a new domain with
its domid found at INTRODUCE by its unique id): its connections
lose their watches and transactions, its nodes leave the tree (``domain.c:domain_tree_remove``)
and ``@releaseDomain`` fires.  The records are :class:`~.domain.Domain`.

State (:class:`~.base.StoreBase`): writes ``domains`` (records made and
deleted), ``_retired_max`` and ``wrl`` (a domain's credit), and node
permissions through ``account_write``; reads ``nodes``, ``conns``,
``config`` and ``domain_hooks``.  Calls of the other groups
(:mod:`.groups`): ``NodeWriteGroup._remove``, ``WatchGroup`` (``_fire``,
``_fire_special``, ``_drop_watches``) and
``TransactionGroup._drop_transactions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire import DOMID_SELF, OK, MsgType, XsError, c_atoi, onearg, parse_domid, split_strings
from . import quota as q
from .base import Event, Result, StoreBase
from .connection import Connection
from .domain import Domain
from .node import INTRODUCE_DOMAIN, RELEASE_DOMAIN, Node, child_path
from .perms import intern_perms
from .transaction import Transaction
from .watch import MATCH_NODEPTH

if TYPE_CHECKING:
    from .groups import NodeWriteGroup, TransactionGroup, WatchGroup

    class _Calls(StoreBase, NodeWriteGroup, TransactionGroup, WatchGroup):
        """StoreBase and the other groups' protocols this group calls (groups.py)."""

else:
    _Calls = StoreBase


class DomainOps(_Calls):
    """Introducing, releasing and destroying domains."""

    # --- domain requests -----------------------------------------------------

    def op_get_domain_path(
        self, conn: Connection, tx: Transaction | None, payload: bytes
    ) -> Result:
        domid = parse_domid(onearg(payload))
        return Result(MsgType.GET_DOMAIN_PATH, b"/local/domain/%d\0" % domid)

    def op_is_domain_introduced(
        self, conn: Connection, tx: Transaction | None, payload: bytes
    ) -> Result:
        domid = parse_domid(onearg(payload))
        if domid == DOMID_SELF:
            return Result(MsgType.IS_DOMAIN_INTRODUCED, b"T\0")
        dom = self.domains.get(domid)
        introduced = dom is not None and dom.introduced
        return Result(MsgType.IS_DOMAIN_INTRODUCED, b"T\0" if introduced else b"F\0")

    def _connected_domain(self, domid: int) -> Domain:
        dom = self.domains.get(domid)
        if dom is None or not dom.introduced:
            raise XsError("ENOENT", f"domain {domid} not introduced")
        return dom

    def _onearg_domain(self, payload: bytes) -> Domain:
        domid = parse_domid(onearg(payload))
        if domid in (self.config.store_domid, self.config.priv_domid):
            raise XsError("EINVAL", "not for the store or privileged domain")
        return self._connected_domain(domid)

    def _reset_domain_connections(self, domid: int) -> None:
        for conn in self.conns.values():
            if conn.domid == domid and not conn.is_socket:
                self._drop_watches(conn)
                self._drop_transactions(conn)

    def op_introduce(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if len(parts) < 3:
            raise XsError("EINVAL", "INTRODUCE needs domid, gfn, evtchn")
        domid = parse_domid(parts[0])
        evtchn = c_atoi(parts[2])
        if evtchn <= 0:
            raise XsError("EINVAL", "bad event channel")
        events: list[Event] = []
        facts = self.domain_info(domid)
        if facts is not None and self._replaced(domid, facts.unique_id):
            # The domain the record is about died and this is a new one with
            # its domid, before VIRQ_DOM_EXC said so: the old one goes first
            # (C notices only at its next check, and then drops the new one).
            self.destroy_domain(domid, events)
            if self.domain_hooks is not None:
                self.domain_hooks.release(domid)
        if self.domain_hooks is not None:
            self.domain_hooks.introduce(domid, c_atoi(parts[1]), evtchn)
        dom = self.ensure_domain(domid) if facts is None else self._known_domain(domid, facts)
        if not dom.introduced:
            self.mark_introduced(domid)
            if domid != self.config.priv_domid:
                self._fire_special(INTRODUCE_DOMAIN, domid, events)
        self._reset_domain_connections(domid)
        return Result(MsgType.INTRODUCE, OK, events, bool(events))

    def _replaced(self, domid: int, unique_id: int) -> bool:
        """Whether the record of ``domid`` is about another domain than ``unique_id``."""
        dom = self.domains.get(domid)
        return (
            dom is not None
            and bool(dom.unique_id and unique_id)
            and dom.unique_id != unique_id
            and domid not in (self.config.priv_domid, self.config.store_domid)
        )

    def op_release(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        dom = self._onearg_domain(payload)
        events: list[Event] = []
        self.destroy_domain(dom.domid, events)
        if self.domain_hooks is not None:
            self.domain_hooks.release(dom.domid)
        return Result(MsgType.RELEASE, OK, events, bool(events))

    def op_resume(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        self._onearg_domain(payload).shutdown = False
        return Result(MsgType.RESUME, OK)

    def op_set_target(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if len(parts) < 2:
            raise XsError("EINVAL", "SET_TARGET needs two domids")
        domid = parse_domid(parts[0])
        tdomid = parse_domid(parts[1])
        dom = self._connected_domain(domid)
        self._connected_domain(tdomid)
        dom.target = tdomid
        return Result(MsgType.SET_TARGET, OK)

    # --- domains going away --------------------------------------------------

    def destroy_domain(self, domid: int, events: list[Event]) -> None:
        """A domain is gone (RELEASE or death): clean the tree, fire @releaseDomain."""
        dom = self.domains.get(domid)
        if dom is None:
            return
        # Its own watches go first, so its node removals do not notify it.
        self._reset_domain_connections(domid)
        self._remove_domain_from_tree(domid, events)
        for i in range(q.QUOTA_COUNT):
            self._retired_max[i] = max(self._retired_max[i], dom.maxima[i])
        del self.domains[domid]
        self.wrl.remove_domain(domid)
        if dom.introduced:
            self._fire_special(RELEASE_DOMAIN, domid, events)
        # Connections that remain (the server closes them) get a fresh record.
        for conn in self.conns.values():
            if conn.domid == domid and not conn.is_socket:
                conn.attach(self.ensure_domain(domid))

    def _remove_domain_from_tree(self, domid: int, events: list[Event]) -> None:
        """Owned nodes go (or to priv_domid with -K), entries go (domain.c:domain_tree_remove).

        Walks the tree depth first from ``/`` like C, then the special nodes.
        """
        stack = ["/"]
        while stack:
            path = stack.pop()
            node = self.nodes.get(path)
            if node is None:
                continue
            if self._orphan_node(domid, path, node, events):
                stack.extend(child_path(path, name) for name in reversed(node.children))
        for path in (RELEASE_DOMAIN, INTRODUCE_DOMAIN):
            node = self.nodes.get(path)
            if node is not None:
                self._orphan_node(domid, path, node, events, removable=False)

    def _orphan_node(
        self, domid: int, path: str, node: Node, events: list[Event], removable: bool = True
    ) -> bool:
        """Clean one node of a dead domain; False when it was removed with its subtree."""
        perms = node.perms
        if perms[0][0] == domid:
            if removable and path != "/" and not self.config.keep_orphans:
                self._remove(None, None, path, node, events)
                return False
            perms = ((self.config.priv_domid, perms[0][1]),) + perms[1:]
        stripped = (perms[0],) + tuple(e for e in perms[1:] if e[0] != domid)
        if stripped != node.perms:
            before = (node.perms[0][0], node.memory(path))
            node.perms = intern_perms(stripped)
            self.account_write(path, node, before)
        return True

    def domains_changed(self, shutdown: set[int], dead: set[int]) -> list[Event]:
        """What the hypervisor reported (C's ``domain.c:do_check_domains``).

        A newly shut-down introduced domain fires ``@releaseDomain/<domid>`` at
        once (once per shutdown until RESUME); a dead one is destroyed (its
        nodes and entries leave the tree even if it was never introduced, as
        C's ``destroy_domain`` does for every record); one plain
        ``@releaseDomain`` follows when any domain newly shut down.
        """
        events: list[Event] = []
        notify = False
        for domid in sorted(shutdown | dead):
            dom = self.domains.get(domid)
            if dom is None:
                continue
            if not dom.introduced:
                if domid in dead:
                    self.destroy_domain(domid, events)
                continue
            if domid in shutdown and not dom.shutdown:
                dom.shutdown = True
                self._fire_special(RELEASE_DOMAIN, domid, events, nodomid=False)
                notify = True
            if domid in dead:
                self.destroy_domain(domid, events)
                notify = False  # destroying fired the plain event already
        if notify:
            node = self.nodes.get(RELEASE_DOMAIN)
            if node is not None:
                self._fire(RELEASE_DOMAIN, MATCH_NODEPTH, node, None, events)
        return events
