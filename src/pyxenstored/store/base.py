"""The store's shared state and the helpers every operation group uses.

:class:`StoreBase` holds the database (nodes, domain records, connections,
the watch index, the generation counter) and what all operations build on:
validating request paths, finding a node as a request sees it (committed
tree or a :class:`~.transaction.Transaction` overlay), permission checks,
generations, and the accounting of the committed tree against the quota.
The protocol operations live in mixins over this class (``*_ops.py``,
``node_write.py``); :class:`~.core.Store` puts them together.

Also here: what a request produces (:class:`Result`, :class:`Event`) and
the store's start-up settings (:class:`StoreConfig`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from ..wire import (
    DOMID_ANY,
    XsError,
    canonicalize,
    onearg,
    parent_of,
    relative_length,
)
from . import control as ctl
from . import quota as q
from .connection import Connection
from .domain import EXISTS, Domain, DomainFacts, DomainHooks, DomainOracle
from .node import INTRODUCE_DOMAIN, RELEASE_DOMAIN, Node
from .perms import (
    PERM_ALL,
    PERM_IGNORE,
    PERM_NONE,
    PERM_READ,
    PERM_RW,
    Perms,
    intern_perms,
)
from .transaction import Transaction
from .watch import WatchIndex
from .wrl import WriteRateLimit

log = logging.getLogger("pyxenstored.store")

PATH_CACHE_SIZE = 8192
# Longer paths are not remembered: a client could otherwise fill the four
# path caches with paths of up to 3 KB (about 100 MB, measured); with this
# cap they hold at most about 10 MB, shared by all.  Real paths are shorter.
PATH_CACHE_LONGEST = 128
# Seconds between two memory quota messages about one domain, but the first
# crossing of its hard quota (C's MEM_WARN_MINTIME_SEC).
MEMORY_WARN_INTERVAL = 10.0
ANY_GENERATION = -2  # permission check without the domain-generation test


@dataclass(slots=True, frozen=True)
class Event:
    """A watch event for connection ``conn_id``."""

    conn_id: int
    path: bytes
    token: bytes

    @property
    def payload(self) -> bytes:
        return self.path + b"\0" + self.token + b"\0"


class Result(NamedTuple):
    """A reply (type and payload) plus the watch events it caused.

    Immutable like the agreed frozen dataclass, but a ``NamedTuple``: it is
    built for every request and a tuple is several times cheaper to make.
    ``events_before_reply``: C queues events for the *requesting*
    connection before its own reply (WRITE, MKDIR, RM, SET_PERMS,
    commit...), except the initial event of WATCH, which follows the OK.
    """

    reply_type: int
    payload: bytes
    events: Sequence[Event] = ()
    events_before_reply: bool = False


_new_tuple = tuple.__new__


def plain_result(reply_type: int, payload: bytes) -> Result:
    """``Result(reply_type, payload)``: no events, in half the time.

    The NamedTuple's generated ``__new__`` is a Python function (0.29 us
    here); building the tuple directly is 0.14 us, and replies made per
    request (TRANSACTION_START, errors) are on the hot path.
    """
    return _new_tuple(Result, (reply_type, payload, (), False))


@dataclass(slots=True)
class StoreConfig:
    """Start-up settings of a store."""

    priv_domid: int = 0
    store_domid: int = 0
    keep_orphans: bool = False
    quota: q.QuotaTable = field(default_factory=q.QuotaTable)
    # Asked whether a domain exists when a request needs to know (see
    # StoreBase.domain_info); None: no hypervisor, the domains that exist
    # are priv_domid, store_domid and existing_domids.
    hypervisor: DomainOracle | None = None
    existing_domids: frozenset[int] = frozenset()
    # Read when a connection opens its first transaction (no I/O: a clock).
    clock: Callable[[], float] = time.monotonic


_K = TypeVar("_K")


def _remember(cache: dict[_K, str], key: _K, path: str) -> None:
    """Add to one of the path caches, emptied when full (the working set refills it)."""
    if len(path) > PATH_CACHE_LONGEST:
        return
    if len(cache) >= PATH_CACHE_SIZE:
        cache.clear()
    cache[key] = path


class StoreBase:
    """The database and the node-access and accounting helpers of all operations."""

    def __init__(
        self,
        config: StoreConfig | None = None,
        hooks: ctl.ControlHooks | None = None,
        domain_hooks: DomainHooks | None = None,
    ) -> None:
        self.config = config if config is not None else StoreConfig()
        self.hooks: ctl.ControlHooks = hooks if hooks is not None else ctl.DefaultControlHooks()
        self.domain_hooks = domain_hooks
        self.nodes: dict[str, Node] = {}
        self.generation = 0
        # Lazy generations (memory: one int shared by a run of writes instead of
        # one per node).  A write bumps the counter only if somebody captured a
        # generation since the last write; ``_gen_last`` is the node written
        # last while nobody looked (None once somebody did).  See observe_generation.
        self._gen_last: Node | None = None
        self.domains: dict[int, Domain] = {}
        self.conns: dict[int, Connection] = {}
        self.watches = WatchIndex()
        self._conn_seq = 0
        self._watch_seq = 0
        self._retired_max = [0] * q.QUOTA_COUNT  # maxima of destroyed domains
        self._path_cache: dict[bytes, str] = {}
        # Relative paths (not "@" ones) by the domid they resolve under.
        self._rel_path_cache: dict[tuple[int, bytes], str] = {}
        # Whole one-argument payloads (path and its NUL) that were valid, to
        # their canonical form: the reads' quick path.  Absolute ones by
        # payload, relative ones by (domid, payload).
        self._arg_cache: dict[bytes, str] = {}
        self._rel_arg_cache: dict[tuple[int, bytes], str] = {}
        # Write-rate limiting: credits of introduced domains; open
        # transactions everywhere (None: count them again, e.g. after a
        # restore added some); committed nodes written or deleted so far.
        self.wrl = WriteRateLimit()
        self._open_tx: int | None = 0
        self._node_writes = 0
        self._setup_tree()

    # --- set-up and domain records -------------------------------------------

    def _setup_tree(self) -> None:
        """The initial tree of C HEAD's ``core.c:setup_structure``."""
        priv = self.config.priv_domid
        # C HEAD introduces the privileged domain (and the store domain) at start.
        self.mark_introduced(priv)
        self.mark_introduced(self.config.store_domid)
        base: Perms = ((priv, PERM_NONE),)
        layout: list[tuple[str, Perms, tuple[str, ...]]] = [
            ("/", base, ("tool",)),
            ("/tool", base, ("xenstored",)),
            ("/tool/xenstored", base, ()),
            (RELEASE_DOMAIN, ((priv, PERM_NONE), (DOMID_ANY, PERM_READ)), ()),
            (INTRODUCE_DOMAIN, base, ()),
        ]
        for path, perms, children in layout:
            node = Node(b"", perms, 0)
            for name in children:
                node.add_child(name)
            self.account_write(path, node, None)

    def mark_introduced(self, domid: int) -> Domain:
        """``domid`` is introduced (its record made if need be); it gets write-rate credits."""
        dom = self.ensure_domain(domid)
        dom.introduced = True
        self.wrl.add_domain(domid, self._now_ms())
        return dom

    def domain_info(self, domid: int) -> DomainFacts | None:
        """What the hypervisor says about ``domid`` now (None: no such domain).

        Asked at the moment of the request, as C asks libxenmanage: a
        domain's creation is announced to nobody, so no earlier answer may
        stand in for this one.  Without a hypervisor the privileged and
        store domains exist, and the domids listed in the config, like the
        C daemon under the test shim (``XS_SHIM_DOMAINS``, default "0").
        Callers look at the domain records first, as C does.
        """
        oracle = self.config.hypervisor
        if oracle is not None:
            return oracle.domain_info(domid)
        config = self.config
        if domid in config.existing_domids or domid in (config.priv_domid, config.store_domid):
            return EXISTS
        return None

    def domain_exists(self, domid: int) -> bool:
        """Whether the hypervisor knows ``domid`` now (see :meth:`domain_info`)."""
        return self.domain_info(domid) is not None

    def next_watch_seq(self) -> int:
        """The creation number of a new watch (a dump lists each connection's in this order)."""
        self._watch_seq += 1
        return self._watch_seq

    def ensure_domain(self, domid: int) -> Domain:
        """The record of ``domid``, created (with the global quota) if missing."""
        dom = self.domains.get(domid)
        if dom is None:
            self.observe_generation()
            dom = Domain(domid, self.config.quota.copy(), self.generation)
            self.domains[domid] = dom
        return dom

    def _known_domain(self, domid: int, facts: DomainFacts) -> Domain:
        """The record of a domain the hypervisor reports, made if missing, with its unique id."""
        dom = self.ensure_domain(domid)
        if facts.unique_id:
            dom.unique_id = facts.unique_id
        return dom

    def _existing_domain(self, domid: int) -> Domain:
        """C's ``find_or_alloc_existing_domain``: ENOENT for unknown domids.

        A record whose unique id is known is taken as it is; otherwise the
        hypervisor is asked (a record it does not know is still returned,
        as in C: only ``VIRQ_DOM_EXC`` removes records).
        """
        dom = self.domains.get(domid)
        if dom is not None and dom.unique_id:
            return dom
        facts = self.domain_info(domid)
        if facts is not None:
            return self._known_domain(domid, facts)
        if dom is None:
            raise XsError("ENOENT", f"domain {domid} does not exist")
        return dom

    # --- node access ---------------------------------------------------------

    def _canon(self, conn: Connection, raw: bytes, allow_special: bool = False) -> str:
        """Validate and absolutise a request path (C's ``core.c:canonicalize``)."""
        path = self._path_cache.get(raw)
        if path is None:
            first = raw[:1]
            if first == b"/":
                # Absolute paths canonicalise the same for everybody: remember them.
                path = canonicalize(raw, conn.domid, allow_special)
                _remember(self._path_cache, raw, path)
            elif first == b"@":
                # Special paths are valid for some requests only: never remembered.
                path = canonicalize(raw, conn.domid, allow_special)
            else:
                # Relative ones (guests use them all the time) per domain.
                key = (conn.domid, raw)
                path = self._rel_path_cache.get(key)
                if path is None:
                    path = canonicalize(raw, conn.domid, allow_special)
                    _remember(self._rel_path_cache, key, path)
        dom = conn.limited
        if dom is not None:
            # Only unprivileged domains are length checked (core.c:canonicalize).
            length = relative_length(path)
            if q.exceeds(dom.quota.hard(q.PATH_MAX), length):
                raise XsError("EINVAL", "path too long")
            dom.note_max(q.PATH_MAX, length)
        return path

    def _canon_arg(self, conn: Connection, payload: bytes, allow_special: bool = False) -> str:
        """:meth:`_canon` of a one-argument payload (EINVAL unless exactly one)."""
        path = self._canon(conn, onearg(payload), allow_special)
        first = payload[:1]
        if first == b"/":
            _remember(self._arg_cache, payload, path)
        elif first != b"@":
            _remember(self._rel_arg_cache, (conn.domid, payload), path)
        return path

    def _cached_arg(self, conn: Connection, payload: bytes) -> str | None:
        """The path of a one-argument payload seen valid before, or None."""
        path = self._arg_cache.get(payload)
        if path is None:
            return self._rel_arg_cache.get((conn.domid, payload))
        return path

    def _quick_node(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Node | None:
        """The node a read request names, found without the general checks.

        Only where those checks cannot fail: a privileged caller outside a
        transaction, a payload seen before as a valid path (absolute, or
        relative for the caller's domain), an existing node.  None means
        "take the general path", not ENOENT.
        """
        if tx is None and conn.privileged:
            path = self._cached_arg(conn, payload)
            if path is not None:
                return self.nodes.get(path)
        return None

    def _read(self, conn: Connection, tx: Transaction | None, path: str) -> Node | None:
        """The node as this request sees it (a transaction records the access)."""
        if tx is None:
            return self.nodes.get(path)
        nodes = tx.nodes
        if path in nodes:
            return nodes[path]
        dom = conn.limited
        if dom is not None:
            count = len(nodes) + 1
            if q.exceeds(dom.quota.hard(q.TRANSACTION_NODES), count):
                tx.failed = True
                raise XsError("ENOSPC", "transaction-nodes quota")
            dom.note_max(q.TRANSACTION_NODES, count)
        if self._gen_last is not None:
            self.observe_generation()
        committed = self.nodes.get(path)
        # The copy (or the record of an absent path) is charged like a write.
        # C charges copies unchecked, and then reads nothing more from a guest
        # over its quota: with the memory held by its own transactions, never
        # again.  A refusal lets it abort.
        mem = len(path) if committed is None else committed.memory(path)
        if dom is not None:
            self._check_memory(conn, conn.domid, mem, tx)
        node = tx.first_access(path, committed)
        tx.memory += mem  # tx_charge, inlined: every first access in a transaction
        if conn.domain is not None:
            conn.domain.add(q.MEMORY, mem)
        return node

    def observe_generation(self) -> None:
        """Call before capturing the counter or a node's generation for later comparison.

        Writes nobody has looked at since may share one generation value (C
        gives each its own).  Comparisons still come out as in C because every
        write after a capture bumps the counter first, and a capture first
        gives the last unobserved write a value of its own, above the run it
        shared (C's "domain younger than the node" test tells exactly that
        write apart from the earlier ones).  Nobody holds the value replaced.
        """
        last = self._gen_last
        if last is not None:
            self.generation += 1
            last.gen = self.generation
            self._gen_last = None

    def unobserved_run_ends_with(self, node: Node) -> None:
        """``node`` was written last, with the counter's current value (a bulk restore)."""
        self._gen_last = node

    def is_stale(self, domid: int, gen: int) -> bool:
        """An entry for a domain unknown, or younger than the node (C's ``chk_domain_generation``).

        ``gen`` is the node's generation; see ``NodeOps.op_set_perms`` for
        how records and writes take generations, with a worked example.
        """
        if gen == ANY_GENERATION:
            return False
        dom = self.domains.get(domid)
        return dom is None or dom.generation > gen

    def _perm(self, conn: Connection, perms: Perms, gen: int) -> int:
        """C's ``perm_for_conn``: the rights ``conn`` has on a node."""
        if conn.privileged:
            return PERM_ALL
        domid = conn.domid
        target = conn.domain.target if conn.domain is not None else None
        owner = perms[0][0]
        if owner in (domid, DOMID_ANY) or (target is not None and owner == target):
            return PERM_ALL
        for entry, bits in perms[1:]:
            if bits & PERM_IGNORE:
                continue
            if entry in (domid, DOMID_ANY) or (target is not None and entry == target):
                if entry != DOMID_ANY and self.is_stale(entry, gen):
                    continue
                return bits & PERM_RW
        return perms[0][1] & PERM_RW

    def _parent_perm(self, conn: Connection, tx: Transaction | None, path: str) -> int:
        """Rights on the nearest existing ancestor (C's ``ask_parents``)."""
        if conn.privileged and tx is None:
            return PERM_ALL
        while path != "/":
            path = parent_of(path)
            node = self._read(conn, tx, path)
            if node is not None:
                return self._perm(conn, node.perms, node.gen)
        return PERM_NONE

    def _lookup(self, conn: Connection, tx: Transaction | None, path: str, perm: int) -> Node:
        """An existing node the caller has ``perm`` on, else ENOENT/EACCES.

        Which of the two: C's ``core.c:errno_from_parents``.
        """
        node = self._lookup_or_none(conn, tx, path, perm)
        if node is None:
            raise XsError("ENOENT", path)
        return node

    def _lookup_or_none(
        self, conn: Connection, tx: Transaction | None, path: str, perm: int
    ) -> Node | None:
        """:meth:`_lookup`, with None where it would answer ENOENT.

        For the requests that go on when the node is missing (WRITE and
        MKDIR create it, RM may succeed): an exception costs more than the
        rest of such a request.
        """
        node = self._read(conn, tx, path)
        if node is not None:
            if conn.privileged or (self._perm(conn, node.perms, node.gen) & perm) == perm:
                return node
            if tx is not None:
                # C asks the parents before it answers EACCES too (the answer
                # stays EACCES): inside a transaction that is an access the
                # commit checks (transaction.c), so a later change there is EAGAIN.
                self._parent_perm(conn, tx, path)
            raise XsError("EACCES", path)
        if self._parent_perm(conn, tx, path) & perm:
            return None
        raise XsError("EACCES", path)

    # --- accounting of the committed tree ------------------------------------

    def _persist_stale(self, node: Node) -> None:
        """Flag entries of unknown or younger domains stale before a write."""
        perms = node.perms
        if len(perms) < 2:
            return
        changed = False
        out = [perms[0]]
        for entry, bits in perms[1:]:
            if not bits & PERM_IGNORE and entry != DOMID_ANY and self.is_stale(entry, node.gen):
                bits |= PERM_IGNORE
                changed = True
            out.append((entry, bits))
        if changed:
            node.perms = intern_perms(tuple(out))

    def _stamp(self, node: Node) -> None:
        """Give a written node its generation (a run of unobserved writes shares one)."""
        self._node_writes += 1
        if self._gen_last is None:
            self.generation += 1
        node.gen = self.generation
        self._gen_last = node

    def account_write(self, path: str, node: Node, before: tuple[int, int] | None) -> None:
        """Install ``node`` at ``path`` in the committed tree with a fresh generation.

        ``before`` is (owner, memory) of the node this replaces, None for a
        new node; counters of the owning domains follow.
        """
        self._stamp(node)
        self.nodes[path] = node
        owner = node.perms[0][0]
        mem = node.memory(path)
        if before is None:
            dom = self.ensure_domain(owner)
            dom.add(q.NODES, 1)
            dom.add(q.MEMORY, mem)
            return
        old_owner, old_mem = before
        if old_owner == owner:
            if mem != old_mem:
                self.ensure_domain(owner).add(q.MEMORY, mem - old_mem)
            return
        old = self.ensure_domain(old_owner)
        old.add(q.NODES, -1)
        old.add(q.MEMORY, -old_mem)
        dom = self.ensure_domain(owner)
        dom.add(q.NODES, 1)
        dom.add(q.MEMORY, mem)

    def _account_resize(self, node: Node, delta: int) -> None:
        """A committed node changed in place by ``delta`` bytes: a fresh generation, its owner charged.

        For changes that keep its path, owner and number of permissions
        (a new value, a child added or removed): the memory it is charged
        for changes by exactly the length that changed, no need to measure
        it before and after.
        """
        self._stamp(node)
        if delta:
            self.ensure_domain(node.perms[0][0]).add(q.MEMORY, delta)

    def _account_delete(self, path: str, node: Node) -> None:
        self._node_writes += 1
        del self.nodes[path]
        dom = self.ensure_domain(node.perms[0][0])
        dom.add(q.NODES, -1)
        dom.add(q.MEMORY, -node.memory(path))

    def tx_charge(self, conn: Connection, tx: Transaction, delta: int) -> None:
        """The copies ``tx`` holds grew by ``delta`` bytes (may be negative).

        Charged to the domain of the transaction's connection whoever owns
        the nodes (C's ``get_acc_domid``), until the transaction ends.  No
        check here: whoever grows a copy checks first (:meth:`_check_memory`
        with the transaction).
        """
        tx.memory += delta
        dom = conn.domain
        if dom is not None:
            dom.add(q.MEMORY, delta)

    def _memory_over(self, dom: Domain, value: int) -> bool:
        """Whether ``value`` bytes reach ``dom``'s hard memory quota; logs as C.

        C's ``domain_chk_quota``: crossing the hard quota is logged at once
        (the ring is then not read until the usage drops, see
        ``server/ring_domains.py``); the other messages (below the hard
        quota again, over or below the soft quota) at most once per
        :data:`MEMORY_WARN_INTERVAL` seconds per domain.
        """
        if q.exceeds(dom.quota.hard(q.MEMORY), value):
            if not dom.hard_warned:
                dom.hard_warned = True
                dom.mem_warned_at = self.config.clock()
                log.error(
                    "Domain %d exceeds hard memory quota, Xenstore interface to domain stalled",
                    dom.domid,
                )
            return True
        soft = dom.quota.get(q.MEMORY, q.SOFT)
        over_soft = soft not in (0, q.DISABLED) and value >= soft
        if not dom.hard_warned and over_soft is dom.soft_warned:
            return False  # nothing to say: the usual case, without the clock
        now = self.config.clock()
        if now - dom.mem_warned_at < MEMORY_WARN_INTERVAL:
            return False
        if dom.hard_warned:
            dom.hard_warned = False
            dom.mem_warned_at = now
            log.info("Domain %d below hard memory quota again", dom.domid)
        if over_soft and not dom.soft_warned:
            dom.soft_warned = True
            dom.mem_warned_at = now
            log.warning("Domain %d exceeds soft memory quota", dom.domid)
        elif not over_soft and dom.soft_warned:
            dom.soft_warned = False
            dom.mem_warned_at = now
            log.info("Domain %d below soft memory quota again", dom.domid)
        return False

    def _check_memory(
        self, conn: Connection, owner: int, delta: int, tx: Transaction | None = None
    ) -> None:
        """Memory quota of an unprivileged writer (C's ``domain_memory_add``).

        ``delta`` bytes are about to be charged to ``owner``; inside a
        transaction they go to the transaction's copies, charged to the
        writer's own domain whoever ``owner`` is.  A refusal there fails
        the transaction (its commit answers ENOMEM), as C's ``write_node``
        does.
        """
        dom = conn.limited
        if dom is None or delta <= 0:
            return
        if tx is not None:
            owner = conn.domid
        charged = self.domains.get(owner)
        value = (charged.usage[q.MEMORY] if charged is not None else 0) + delta
        if self._memory_over(dom, value):
            if tx is not None:
                tx.failed = True
            raise XsError("ENOMEM", "memory quota")

    def _check_node_size(self, conn: Connection, size: int, tx: Transaction | None = None) -> None:
        """The ``node-size`` quota of an unprivileged writer; in a transaction a refusal fails it."""
        dom = conn.limited
        if dom is None:
            return
        if q.exceeds(dom.quota.hard(q.NODE_SIZE), size):
            if tx is not None:
                tx.failed = True  # C's write_node fails the transaction
            raise XsError("ENOSPC", "node-size quota")
        dom.note_max(q.NODE_SIZE, size)

    # --- write-rate limiting (domain.c wrl_*, store/wrl.py) ---------------------------

    def _now_ms(self) -> int:
        return int(self.config.clock() * 1000)

    def open_transactions(self) -> int:
        """Transactions open on every connection."""
        if self._open_tx is None:
            self._open_tx = sum(len(c.transactions) for c in self.conns.values())
        return self._open_tx

    def transactions_restored(self) -> None:
        """Transactions were added behind the store's back (a restore): count again."""
        self._open_tx = None

    def _debit_writes(self, conn: Connection, count: int) -> None:
        """Charge the nodes an unprivileged domain's request wrote, while others may conflict."""
        if count and self.open_transactions():
            self.wrl.debit(conn.domid, self._now_ms(), count)

    def read_delay(self, domid: int) -> float:
        """Seconds before ``domid``'s requests may be read again (0.0: now)."""
        delay = self.wrl.delay_ms(domid, self._now_ms())
        return delay / 1000 if delay else 0.0

    def log_write_rate(self) -> None:
        """Once per loop turn, as C: say when rate limiting has not been in force for a while."""
        self.wrl.periodic(self._now_ms())
