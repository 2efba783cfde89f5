"""Guest domains on shared rings: INTRODUCE/RELEASE, kicks, death, reconnection.

:class:`RingDomains` is the store's :class:`~pyxenstored.store.DomainHooks`
and the owner of every ring connection of a :class:`~.loop.Server`.  It

* maps a domain's page and binds its event channel at INTRODUCE, zeroes the
  four queue offsets and resets the connection (every INTRODUCE, as C
  does), writes the feature word at the first one (digest 6.3);
* reads the hypervisor's event channel and serves the rings that were kicked:
  each kicked ring gets one turn (at most one queue's worth of requests)
  before the loop goes back to the selector, so a flooding guest cannot
  starve other guests or socket clients; a kick on an unknown port makes it
  look at every ring (as C, which polls them all);
* applies C's back-pressure: a ring is not read while its connection has
  ``outstanding`` requests up to the quota (the requests stay in the ring)
  or while its domain uses its whole ``memory`` quota (looked at again
  after every loop turn, as C does on every pass of its main loop);
* handles a guest's reconnection request (connection state 1): the
  connection is dropped with its watches and transactions, the queues are
  emptied, a new connection is made, the state goes back to 0 and the guest
  is notified;
* cuts off a guest that broke the protocol (see :mod:`.ring_transport`): its
  connection goes, the error indicator is set, the domain stays introduced
  (RELEASE and death still fire ``@releaseDomain``), kicks are ignored until
  a reconnection or a new INTRODUCE;
* is the store's hypervisor (``StoreConfig.hypervisor``): the store asks it
  about a domain at the moment a request needs to know (a domain's creation
  is announced to nobody);
* on ``VIRQ_DOM_EXC`` compares the hypervisor's domain list with the domain
  records: vanished and dying domains and domains whose unique id changed
  are dead, the store cleans up after them and fires ``@releaseDomain``;
  shut-down domains fire ``@releaseDomain/<domid>``;
* gives live update what it needs to carry rings over an exec: each ring
  transport describes itself (``migration_spec``: domid, target, port,
  unique id; the connection holds the pending bytes), and
  :meth:`RingDomains.restore_transport` maps a dumped ring again.

Beyond C HEAD, the page advertises ring reconnection (feature bit 0).
"""

from __future__ import annotations

import contextlib
import logging
import os

from pyxenstored.ringpage import RingPage
from pyxenstored.server.connection import Connection
from pyxenstored.server.hypervisor import DomainInfo, Hypervisor, RingMemory
from pyxenstored.server.loop import Server
from pyxenstored.server.poller import EVENT_READ, EVENT_WRITE
from pyxenstored.server.ring_transport import RingTransport
from pyxenstored.server.transport import Transport
from pyxenstored.store import Store
from pyxenstored.store import quota as q
from pyxenstored.store.features import SUPPORTED_FEATURES
from pyxenstored.stream.records import ConnectionData, RingSpec
from pyxenstored.wire import (
    DOMID_INVALID,
    FEATURE_ERROR,
    FEATURE_RECONNECTION,
    RING_CONNECTED,
    RING_CONNECTION,
    RING_ERROR,
    RING_ERROR_NONE,
    RING_RECONNECT,
    RING_SERVER_FEATURES,
    XsError,
)

log = logging.getLogger("pyxenstored.rings")

# What the daemon offers on a page on top of the domain's feature mask.
RING_FEATURES = FEATURE_RECONNECTION


class Ring:
    """One introduced domain's ring: page, channel, current connection."""

    __slots__ = (
        "domid",
        "remote_port",
        "local_port",
        "unique_id",
        "mem",
        "page",
        "conn",
        "adopting",
    )

    def __init__(
        self, domid: int, remote_port: int, local_port: int, unique_id: int, mem: RingMemory
    ) -> None:
        self.domid = domid
        self.remote_port = remote_port
        self.local_port = local_port
        self.unique_id = unique_id
        self.mem = mem
        self.page = RingPage(mem)
        self.conn: Connection | None = None
        # Restored by live update: (conn_id, transport) whose connection the
        # live-update code creates right after; adopted on first sight.
        self.adopting: tuple[int, RingTransport] | None = None

    @property
    def transport(self) -> RingTransport | None:
        if self.conn is None:
            return self.adopting[1] if self.adopting is not None else None
        transport = self.conn.transport
        return transport if isinstance(transport, RingTransport) else None


class RingDomains:
    """Serves guest domains on shared rings for one server and store."""

    def __init__(self, server: Server, store: Store, hypervisor: Hypervisor) -> None:
        self.server = server
        self.store = store
        self.hv = hypervisor
        # Before anything else (a live update's restore included) asks.
        store.config.hypervisor = hypervisor
        self._rings: dict[int, Ring] = {}
        self._by_port: dict[int, list[Ring]] = {}
        self._ready: dict[int, Ring] = {}  # rings to serve on the next turn
        self._held: dict[int, Ring] = {}  # rings not read: memory quota used up
        self._doorbell_rung = False
        self._doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._started = False

    # --- set-up ------------------------------------------------------------------

    def start(self, auto_introduce: bool = True) -> None:
        """Hook into the store and the server's loop; learn which domains exist.

        ``auto_introduce`` (a fresh start, not a live update): serve the
        store domain's ring and those of domains whose page already names
        their port, as C HEAD does at start (digest 6.2).
        """
        self.store.domain_hooks = self
        self.server.watch_fd(self.hv.fileno(), self._kicked)
        self.server.watch_fd(self._doorbell, self._rung)
        self.server.after_turn.append(self._recheck_held)
        self.server.before_exec.append(self.hv.prepare_exec)
        self.server.exec_failed.append(self.hv.exec_failed)
        self._started = True
        if auto_introduce:
            self._introduce_existing()
        # Rings restored by a live update belong to introduced domains (C
        # re-introduces them as it reads their connections), with the
        # unique id the dump carried.
        for ring in self._rings.values():
            self._adopt(ring)
            record = self.store.domains.get(ring.domid)
            if record is not None:
                self.store.mark_introduced(ring.domid)
                if ring.unique_id:
                    record.unique_id = ring.unique_id
        # Their domains may have died or been replaced meanwhile (C
        # re-checks every domain after an update).
        self.check_domains()

    def _introduce_existing(self) -> None:
        store_domid = self.store.config.store_domid
        found: list[tuple[int, int]] = []
        port = self.hv.store_port()
        if port:
            found.append((store_domid, port))
        for domid in sorted(self.hv.domains()):
            if domid != store_domid and domid not in self._rings:
                port = self.hv.preset_port(domid)
                if port:
                    found.append((domid, port))
        for domid, port in found:
            try:
                self.introduce(domid, 1, port)
            except XsError as exc:
                log.warning("cannot serve the ring of domain %d at start: %s", domid, exc)
                continue
            if domid in self.store.domains:
                self.store.mark_introduced(domid)  # nobody watches yet: no event to fire

    def adopt_inherited_evtchn(self, fd: int) -> None:
        """The event channel descriptor a live update handed over (GLOBAL_DATA).

        Called after the restore, before :meth:`start`: the channels the
        restored rings use are bound on it (see :meth:`restore_transport`).
        """
        if fd >= 0:
            self.hv.adopt_evtchn(fd)

    @property
    def evtchn_fd(self) -> int:
        """The descriptor to hand over to a live update's successor (inheritable)."""
        return self.hv.inheritable_fds().get("evtchn", -1)

    def close(self) -> None:
        """Drop every ring connection (daemon stopping); pages are unmapped."""
        for ring in list(self._rings.values()):
            self._drop(ring, "daemon stopping")
        if self._started:
            self.server.unwatch_fd(self.hv.fileno())
            self.server.unwatch_fd(self._doorbell)
            for hooks, hook in (
                (self.server.after_turn, self._recheck_held),
                (self.server.before_exec, self.hv.prepare_exec),
                (self.server.exec_failed, self.hv.exec_failed),
            ):
                with contextlib.suppress(ValueError):
                    hooks.remove(hook)
            self._started = False
        with contextlib.suppress(OSError):
            os.close(self._doorbell)
        self.hv.close()

    def rings(self) -> list[Ring]:
        return list(self._rings.values())

    def ring(self, domid: int) -> Ring | None:
        return self._rings.get(domid)

    # --- DomainHooks (called by the store inside INTRODUCE / RELEASE) --------------

    def introduce(self, domid: int, gfn: int, evtchn: int) -> None:
        ring = self._rings.get(domid)
        first = ring is None
        info = self.hv.domain_info(domid)
        if ring is None:
            try:
                mem = self.hv.map_ring(domid, gfn)
            except (OSError, ValueError) as exc:
                raise XsError("EINVAL", f"cannot map the ring of domain {domid}: {exc}") from exc
            try:
                local = self.hv.bind_interdomain(domid, evtchn)
            except OSError as exc:
                self.hv.unmap_ring(domid, mem)
                raise XsError(
                    "EINVAL", f"cannot bind domain {domid}'s port {evtchn}: {exc}"
                ) from exc
            ring = Ring(domid, evtchn, local, info.unique_id if info else 0, mem)
            self._rings[domid] = ring
        else:
            # Repeated INTRODUCE only binds the event channel again (digest 6.3).
            self._unbind(ring)
            ring.remote_port = evtchn
            try:
                ring.local_port = self.hv.bind_interdomain(domid, evtchn)
            except OSError as exc:
                # As C: the domain stays introduced without a channel.
                log.warning("cannot bind domain %d's port %d again: %s", domid, evtchn, exc)
                ring.local_port = 0
        if ring.local_port:
            self._by_port.setdefault(ring.local_port, []).append(ring)
        if first:
            record = self.store.domains.get(domid)
            features = record.features if record is not None else SUPPORTED_FEATURES
            # The domain's mask, as C assigns it (a previous user of the
            # page may have left other bits).
            ring.page.set_word(RING_SERVER_FEATURES, features | RING_FEATURES)
        # Both cases reset the connection: no watches, transactions or
        # queued output, all four offsets zero, a pending reconnection done.
        # (The store records the unique id itself.)
        self._reset(ring, "introduced")

    def release(self, domid: int) -> None:
        ring = self._rings.get(domid)
        if ring is not None:
            self._drop(ring, "released")

    # --- connections ---------------------------------------------------------------

    def _new_transport(self, ring: Ring) -> RingTransport:
        record = self.store.domains.get(ring.domid)
        features = record.features if record is not None else SUPPORTED_FEATURES
        port = ring.local_port
        notify = self.hv.notify

        def kick_guest() -> None:
            notify(port)

        def describe() -> tuple[RingSpec, int | None]:
            dom = self.store.domains.get(ring.domid)
            target = dom.target if dom is not None and dom.target is not None else None
            # Our local port, as C dumps it: the channel stays bound on the
            # event channel descriptor the successor inherits.
            spec = RingSpec(
                ring.domid, DOMID_INVALID if target is None else target, ring.local_port
            )
            return spec, ring.unique_id or None

        transport = RingTransport(
            ring.page,
            ring.domid,
            kick_guest,
            report_errors=bool(features & FEATURE_ERROR),
            on_interest=self._interest,
        )
        transport.describe = describe
        return transport

    def _new_connection(self, ring: Ring, conn_id: int | None = None) -> Connection:
        transport = self._new_transport(ring)
        conn = self.server.add_connection(transport, ring.domid, conn_id)
        transport.allowance = conn.allowance
        ring.conn = conn
        return conn

    def _adopt(self, ring: Ring) -> None:
        """Take over a connection live update made on a restored transport."""
        if ring.adopting is None:
            return
        conn_id, transport = ring.adopting
        conn = self.server.connection(conn_id)
        if conn is None or conn.transport is not transport:
            return
        ring.adopting = None
        ring.conn = conn
        transport.allowance = conn.allowance

    def _close_connection(self, ring: Ring, reason: str) -> None:
        conn = ring.conn
        ring.conn = None
        if conn is not None and not conn.closed:
            self.server.close_connection(conn, reason)

    def _reset(self, ring: Ring, reason: str) -> None:
        """A fresh connection on empty queues (INTRODUCE, reconnection)."""
        self._close_connection(ring, reason)
        page = ring.page
        page.reset_queues()
        page.set_word(RING_ERROR, RING_ERROR_NONE)
        self._new_connection(ring)
        if page.connection != RING_CONNECTED:
            page.set_word(RING_CONNECTION, RING_CONNECTED)
        self.hv.notify(ring.local_port)

    def _unbind(self, ring: Ring) -> None:
        peers = self._by_port.get(ring.local_port)
        if peers is not None:
            with contextlib.suppress(ValueError):
                peers.remove(ring)
            if not peers:
                del self._by_port[ring.local_port]
                self.hv.unbind(ring.local_port)

    def _drop(self, ring: Ring, reason: str) -> None:
        """The domain is gone (RELEASE, death, shutdown of the daemon)."""
        self._close_connection(ring, reason)
        self._rings.pop(ring.domid, None)
        self._ready.pop(ring.domid, None)
        self._held.pop(ring.domid, None)
        self._unbind(ring)
        ring.page.release()
        self.hv.unmap_ring(ring.domid, ring.mem)
        # The store gave the closing connection a fresh record when it
        # destroyed the domain; nothing refers to it any more.
        record = self.store.domains.get(ring.domid)
        if (
            reason != "daemon stopping"
            and record is not None
            and not record.introduced
            and not any(record.usage)
            and ring.domid not in (self.store.config.priv_domid, self.store.config.store_domid)
        ):
            del self.store.domains[ring.domid]

    # --- event channel ---------------------------------------------------------------

    def _kicked(self, _mask: int) -> None:
        ports = self.hv.pending_ports()
        if not ports:
            return
        virq = False
        unknown = False
        ready = self._ready
        for port in set(ports):
            if port == self.hv.virq_port:
                virq = True
            peers = self._by_port.get(port)
            if peers:
                for ring in peers:
                    ready[ring.domid] = ring
            else:
                unknown = True
        if unknown:
            # Like C, which looks at every ring after any event (VIRQ_DOM_EXC
            # included: under a test shim a guest's kick may carry its number).
            for ring in self._rings.values():
                ready[ring.domid] = ring
        if virq:
            self.check_domains()
        self._serve_ready()

    def _rung(self, _mask: int) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.eventfd_read(self._doorbell)
        self._doorbell_rung = False
        self._serve_ready()

    def _serve_ready(self) -> None:
        """One turn for each ring ready now; rings that stay ready wait for the next."""
        if not self._ready:
            return
        batch = list(self._ready.values())
        self._ready.clear()
        for ring in batch:
            if self._rings.get(ring.domid) is ring:
                self._serve(ring)
        if self._ready:
            self._ring_doorbell()

    def _ring_doorbell(self) -> None:
        if not self._doorbell_rung:
            self._doorbell_rung = True
            os.eventfd_write(self._doorbell, 1)

    def _interest(self, transport: RingTransport, want: int) -> None:
        """The loop says what the connection waits for: schedule it if it can act now."""
        ring = self._rings.get(transport.domid)
        if ring is None or ring.transport is not transport:
            return
        if ring.conn is None:
            self._adopt(ring)
        if (
            (want & EVENT_READ and transport.has_input())
            or (want & EVENT_WRITE and transport.has_output_space())
            or transport.doomed
        ):
            self._ready[ring.domid] = ring
            self._ring_doorbell()

    def _serve(self, ring: Ring) -> None:
        page = ring.page
        if page.connection == RING_RECONNECT:
            log.debug("domain %d asks for a ring reconnection", ring.domid)
            self._reset(ring, "ring reconnection")
            return
        if ring.conn is None:
            self._adopt(ring)
        conn = ring.conn
        if conn is None or conn.closed:
            return  # cut off: ignored until a reconnection or INTRODUCE
        transport = conn.transport
        assert isinstance(transport, RingTransport)
        # Guests kick after taking replies too: most such kicks find nothing
        # to do, and cost no more than these looks at the page.
        readable = transport.has_input() or transport.doomed
        if readable and not transport.doomed and self._held_back(ring, conn):
            # C does not read a domain at its memory quota or out of write
            # credits; it looks again after every loop turn (see _recheck_held).
            readable = False
            self._held[ring.domid] = ring
        mask = (EVENT_READ if readable and conn.can_process() else 0) | (
            EVENT_WRITE if conn.has_output else 0
        )
        if mask:
            self.server.service(conn, mask)
        transport.flush_notify()
        if transport.doomed:
            self._cut_off(ring, transport)

    def _memory_full(self, ring: Ring, conn: Connection) -> bool:
        """Whether an unprivileged domain uses its whole ``memory`` quota (digest 6.6)."""
        limit = self.store.quota_for_conn(conn.conn_id, "memory")
        if limit is None:
            return False
        record = self.store.domains.get(ring.domid)
        return record is not None and record.usage[q.MEMORY] >= limit

    def _held_back(self, ring: Ring, conn: Connection) -> bool:
        """Whether a domain's requests must wait: memory quota full, or write credits spent."""
        if self._memory_full(ring, conn):
            return True
        if conn.charge is None:
            return False  # privileged: never rate limited
        delay = self.store.read_delay(ring.domid)
        if delay:
            self.server.wake_in(delay)  # when the credit is back
            return True
        return False

    def _recheck_held(self) -> None:
        """After each loop turn: serve rings held back that may go on now."""
        self.store.log_write_rate()
        if not self._held:
            return
        for domid, ring in list(self._held.items()):
            conn = ring.conn
            if self._rings.get(domid) is not ring or conn is None or conn.closed:
                del self._held[domid]
            elif not self._held_back(ring, conn):
                del self._held[domid]
                self._ready[domid] = ring
        self._serve_ready()

    def _cut_off(self, ring: Ring, transport: RingTransport) -> None:
        log.warning(
            "domain %d broke the ring protocol (error %d): connection dropped",
            ring.domid,
            transport.doomed,
        )
        conn = ring.conn
        if conn is not None and not conn.closed:
            self.server.close_connection(conn, "ring protocol error")
        # The transport sets the error indicator as it closes; the record is
        # kept (without a connection) for RELEASE and death.

    # --- domain state changes ------------------------------------------------------------

    def check_domains(self) -> None:
        """Compare the hypervisor's domain list with what the daemon knows (``VIRQ_DOM_EXC``).

        C's ``check_domains``: a domain with a record or a ring is dead when
        the hypervisor no longer has it, says it is dying, or has another
        domain (unique id) under its domid.  A record whose unique id is
        still unknown (0: made while the hypervisor gave none) takes the one
        the hypervisor reports now, as ``domain.c:do_check_domain`` does, so
        that the next reuse of the domid is noticed.
        """
        now = self.hv.domains()
        self._learn_unique_ids(now)
        config = self.store.config
        known = {domid: dom.unique_id for domid, dom in self.store.domains.items()}
        for domid, serving in self._rings.items():
            if not known.get(domid):
                known[domid] = serving.unique_id
        dead: set[int] = set()
        for domid, unique_id in known.items():
            after = now.get(domid)
            if (
                after is None
                or after.dying
                or bool(unique_id and after.unique_id and unique_id != after.unique_id)
            ):
                dead.add(domid)
        dead -= {config.priv_domid, config.store_domid}
        shutdown = {domid for domid, info in now.items() if info.shutdown and domid not in dead}
        if not dead and not shutdown:
            return
        events = self.store.domains_changed(shutdown, dead)
        for domid in sorted(dead):
            ring = self._rings.get(domid)
            if ring is not None:
                self._drop(ring, "domain died")
        self.server.deliver_events(events)

    def _learn_unique_ids(self, now: dict[int, DomainInfo]) -> None:
        """Records and rings with no unique id yet take the hypervisor's (see check_domains)."""
        for domid, info in now.items():
            if not info.unique_id or info.dying:
                continue
            record = self.store.domains.get(domid)
            ring = self._rings.get(domid)
            if (record is not None and record.unique_id) or (ring is not None and ring.unique_id):
                continue  # known: compared, not replaced
            if record is not None:
                record.unique_id = info.unique_id
            if ring is not None:
                ring.unique_id = info.unique_id

    # --- live update ----------------------------------------------------------------------

    def restore_transport(self, record: ConnectionData) -> Transport | None:
        """Live update's ring restorer: map the ring of a dumped connection again.

        The page is not reset and its feature word is left alone (C does not
        write it on restore); bytes the guest produced meanwhile are still
        in the request queue.  The caller creates the connection with the
        record's conn id and pending data right after; it is adopted then.
        Returns None when the ring cannot be mapped (the record stays dormant).
        """
        spec = record.spec
        if not isinstance(spec, RingSpec):
            return None
        try:
            mem = self.hv.map_ring(spec.domid, 0)  # the frame is not in the record
        except OSError as exc:
            log.error("live update: cannot map the ring of domain %d: %s", spec.domid, exc)
            return None
        # The record holds the predecessor's local port, still bound on the
        # event channel descriptor it handed over: nothing to bind (as C's
        # domain.c:new_domain on restore, where posix.c:evtchn_rebind is a no-op).
        local = self.hv.restored_port(spec.domid, spec.evtchn)
        ring = Ring(spec.domid, spec.evtchn, local, record.unique_id or 0, mem)
        self._rings[spec.domid] = ring
        self._by_port.setdefault(local, []).append(ring)
        transport = self._new_transport(ring)
        # The framing check continues where the dumped input stops.
        transport.sync_framing(record.in_data)
        ring.adopting = (record.conn_id, transport)
        self._ready[spec.domid] = ring
        self._ring_doorbell()
        return transport
