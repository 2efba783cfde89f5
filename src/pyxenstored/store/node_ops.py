"""Node operations: the requests that read and change nodes.

READ, DIRECTORY, DIRECTORY_PART, GET_PERMS, WRITE, MKDIR, RM and SET_PERMS;
the changes themselves are :mod:`.node_write`'s.  READ, DIRECTORY and
GET_PERMS are the hottest requests: a privileged caller outside a
transaction finds the node through :meth:`~.base.StoreBase._quick_node`,
and the reply types are plain ints.

State (:class:`~.base.StoreBase`): reads ``conns`` (the quick path),
``domains`` (SET_PERMS naming a domain) and ``watches.count``; the tree
changes only through the node writes and, for SET_PERMS, through
``StoreBase.account_write``.  Calls of the other groups (:mod:`.groups`):
``NodeWriteGroup`` (``_create``, ``_modify``, ``_remove``,
``_tx_written``) and ``WatchGroup._fire``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from zlib import crc32

from ..wire import (
    DOMID_ANY,
    FEATURE_DOMID_ANY,
    OK,
    PAYLOAD_MAX,
    MsgType,
    XsError,
    c_atoi,
    onearg,
    parent_of,
    split_strings,
)
from . import quota as q
from .base import Event, Result, StoreBase
from .connection import Connection
from .perms import (
    PERM_IGNORE,
    PERM_OWNER,
    PERM_READ,
    PERM_WRITE,
    Perms,
    intern_perms,
    parse_perm,
    perms_payload,
)
from .transaction import Transaction
from .watch import MATCH_SUBTREE

# Reply types of the hottest operations as plain ints: an enum member costs
# an attribute lookup through the enum class on every request.
_READ = int(MsgType.READ)
_DIRECTORY = int(MsgType.DIRECTORY)
_GET_PERMS = int(MsgType.GET_PERMS)
_WRITE = int(MsgType.WRITE)
_WRITE_OK = Result(_WRITE, OK)  # a write that raised no event (the usual one)


if TYPE_CHECKING:
    from .groups import NodeWriteGroup, WatchGroup

    class _Calls(StoreBase, NodeWriteGroup, WatchGroup):
        """StoreBase and the other groups' protocols this group calls (groups.py)."""

else:
    _Calls = StoreBase


class NodeOps(_Calls):
    """The operations on nodes, values and permissions."""

    # --- READ / DIRECTORY / GET_PERMS ----------------------------------------

    def quick_read(self, conn_id: int, msg_type: int, payload: bytes) -> bytes | None:
        """The reply payload of a READ, DIRECTORY or GET_PERMS outside a transaction.

        The event loop's short cut for the most frequent requests, without a
        :class:`Result`: only where :meth:`handle` could not fail, raise
        events or charge anything (the cases of :meth:`_quick_node`), and
        then with the payload :meth:`handle` would reply, under the request's
        own type.  None: ask :meth:`handle`.
        """
        conn = self.conns.get(conn_id)
        node = None if conn is None else self._quick_node(conn, None, payload)
        if node is None:
            return None
        if msg_type == _READ:
            return node.value
        if msg_type == _DIRECTORY:
            return node.children_payload()
        if msg_type == _GET_PERMS:
            return perms_payload(node.perms)
        return None

    def op_read(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        node = self._quick_node(conn, tx, payload)
        if node is None:
            node = self._lookup(conn, tx, self._canon_arg(conn, payload), PERM_READ)
        return Result(_READ, node.value)

    def op_directory(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        node = self._quick_node(conn, tx, payload)
        if node is None:
            node = self._lookup(conn, tx, self._canon_arg(conn, payload), PERM_READ)
        return Result(_DIRECTORY, node.children_payload())

    def op_directory_part(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        if payload.count(b"\0") != 2:
            raise XsError("EINVAL", "DIRECTORY_PART needs path and offset")
        raw, offset_raw, _ = payload.split(b"\0")
        path = self._canon(conn, raw)
        node = self._lookup(conn, tx, path, PERM_READ)
        offset = c_atoi(offset_raw) & 0xFFFFFFFF  # C keeps it in an unsigned int
        self.observe_generation()
        # The client compares this token between the parts of one listing of one
        # node.  C's generation is unique per write; ours is shared by a run of
        # unobserved writes, so the path is mixed in to keep the tokens of two
        # nodes apart as C's are; the node's generation still changes it.
        gen = b"%d\0" % ((node.gen & 0xFFFFFFFF) << 32 | crc32(path.encode()))
        children = node.children_payload()
        if offset >= len(children):
            return Result(MsgType.DIRECTORY_PART, gen + b"\0")
        maxlen = PAYLOAD_MAX - len(gen) - 1
        total = len(children)
        length = 0
        # Whole names only, as long as they fit (C's send_directory_part).
        while True:
            start = offset + length
            name_len = children.find(b"\0", start) - start
            if length + name_len >= maxlen:
                break
            length += name_len + 1
            if offset + length == total:
                break
        end = offset + length
        out = gen + children[offset:end]
        if end == total:
            out += b"\0"
        return Result(MsgType.DIRECTORY_PART, out)

    def op_get_perms(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        node = self._quick_node(conn, tx, payload)
        if node is None:
            path = self._canon_arg(conn, payload, allow_special=True)
            node = self._lookup(conn, tx, path, PERM_READ)
        return Result(_GET_PERMS, perms_payload(node.perms))

    # --- WRITE / MKDIR / RM / SET_PERMS --------------------------------------

    def op_write(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        nul = payload.find(b"\0")
        if nul < 0:
            raise XsError("EINVAL", "WRITE without path")
        path = self._canon(conn, payload[:nul])
        value = payload[nul + 1 :]
        node = self._lookup_or_none(conn, tx, path, PERM_WRITE)
        if node is None:
            self._create(conn, tx, path, value)
        else:
            self._modify(conn, tx, path, node, value)
        if tx is not None:
            tx.queue_event(path, MATCH_SUBTREE)
        elif self.watches.count:
            events: list[Event] = []
            self._fire(path, MATCH_SUBTREE, node, None, events)
            if events:
                return Result(_WRITE, OK, events, True)
        return _WRITE_OK

    def op_mkdir(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        path = self._canon(conn, onearg(payload))
        events: list[Event] = []
        if self._lookup_or_none(conn, tx, path, PERM_WRITE) is None:
            self._create(conn, tx, path, b"")
            if tx is not None:
                tx.queue_event(path, MATCH_SUBTREE)
            else:
                self._fire(path, MATCH_SUBTREE, None, None, events)
        return Result(MsgType.MKDIR, OK, events, bool(events))

    def op_rm(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        path = self._canon(conn, onearg(payload))
        node = self._lookup_or_none(conn, tx, path, PERM_WRITE)
        if node is None:
            # Removing what is not there is fine when its parent exists.
            if self._read(conn, tx, parent_of(path)) is not None:
                return Result(MsgType.RM, OK)
            raise XsError("ENOENT", path)
        if path == "/":
            raise XsError("EINVAL", "cannot remove /")
        events: list[Event] = []
        self._remove(conn, tx, path, node, events)
        return Result(MsgType.RM, OK, events, bool(events))

    def _parse_perms(self, conn: Connection, strings: list[bytes]) -> Perms:
        """Parse SET_PERMS entries and flag stale ones (C's ``domain_alloc_permrefs``).

        A domain without a record is asked about now: one that exists gets
        its record (so its entry holds, see the generation rule in
        :meth:`op_set_perms`), one that does not gets a stale entry.
        """
        out: list[tuple[int, int]] = []
        for raw in strings:
            out.append(parse_perm(raw))
        features = conn.features
        for i, (domid, bits) in enumerate(out):
            if domid == DOMID_ANY:
                if not features & FEATURE_DOMID_ANY:
                    out[i] = (domid, bits | PERM_IGNORE)
            elif domid not in self.domains:
                facts = self.domain_info(domid)
                if facts is not None:
                    self._known_domain(domid, facts)
                else:
                    out[i] = (domid, bits | PERM_IGNORE)
        return intern_perms(tuple(out))

    def op_set_perms(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        count = payload.count(b"\0")
        if count < 2:
            raise XsError("EINVAL", "SET_PERMS needs a permission")
        nperms = count - 1
        dom = conn.limited
        if dom is not None:
            if q.exceeds(dom.quota.hard(q.NODE_PERMISSIONS), nperms):
                raise XsError("ENOSPC", "node-permissions quota")
            dom.note_max(q.NODE_PERMISSIONS, nperms)
        strings = split_strings(payload)
        perms = self._parse_perms(conn, strings[1 : 1 + nperms])
        if perms[0][1] & PERM_IGNORE:
            raise XsError("ENOENT", "owner does not exist")
        path = self._canon(conn, strings[0], allow_special=True)
        node = self._lookup(conn, tx, path, PERM_WRITE | PERM_OWNER)
        if not conn.privileged and perms[0][0] != node.perms[0][0]:
            raise XsError("EPERM", "only privileged callers change the owner")
        grow = 8 * (len(perms) - len(node.perms))
        if dom is not None:
            self._check_node_size(conn, node.size() + grow, tx)
            self._check_memory(conn, perms[0][0], grow, tx)
        # The generation rule (C's transaction.c comment block: access_node,
        # then domain_adjust_node_perms in write_node_raw).  A domain record
        # takes the counter as it is; a write first advances it, then takes
        # it; an entry is stale when its domain has no record or a record
        # younger (greater) than the node.  So new entries are judged
        # against the generation of the write that sets them, never the
        # node's old one.  Worked example, with C's numbers (one per write):
        #   /vm/pre written at 5, /vm/other at 6: the counter is 6;
        #   SET_PERMS /vm/pre n0 r3, domain 3 exists but has no record:
        #     _parse_perms makes record 3 with generation 6;
        #     the write takes 7; record 3 (6) is not younger: r3 holds,
        #     and guest 3 reads /vm/pre after INTRODUCE 3.
        #   Judged against the node's old 5, record 3 would be younger and
        #   r3 stale for good: guest 3 would get EACCES.
        #   Domain 3 dies: its record and its entries go
        #   (domain.c:domain_tree_remove).  A new domain 3 gets a record
        #   at, say, 9: an r3 left on a node written at 7 is stale (9 > 7)
        #   until a SET_PERMS names it again.
        # Entries of domains that do not exist were flagged by _parse_perms
        # and every other record is older than this write, so nothing is
        # flagged here (in a transaction, the commit judges against the
        # generation of the write in the transaction).  In-place rewrites
        # (_modify) do flag against the old generation first: C's read.
        old_perms = node.perms
        events: list[Event] = []
        if tx is not None:
            old_owner, new_owner = old_perms[0][0], perms[0][0]
            if old_owner != new_owner:
                tx.node_delta[old_owner] = tx.node_delta.get(old_owner, 0) - 1
                tx.node_delta[new_owner] = tx.node_delta.get(new_owner, 0) + 1
            node.perms = perms
            self._tx_written(tx, path, node)
            self.tx_charge(conn, tx, grow)
            tx.queue_event(path, MATCH_SUBTREE)
        else:
            before = (old_perms[0][0], node.memory(path))
            node.perms = perms
            self.account_write(path, node, before)
            self._fire(path, MATCH_SUBTREE, node, old_perms, events)
        return Result(MsgType.SET_PERMS, OK, events, bool(events))
