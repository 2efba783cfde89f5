"""oxenstored's state dump to migration-stream records and back.

:func:`dump_to_records` turns an :class:`.OxDump` into the records of a
migration stream (version 1 or 2: the records are the same, the writer
picks the version) and :func:`records_to_dump` does the reverse.  The
mapping is in docs/oxenstored-format.md; in short:

* ``global`` and ``evtchn-dev`` -> GLOBAL_DATA (listening socket and
  event-channel descriptors);
* ``dom`` -> CONNECTION_DATA of a ring (domid, oxenstored's port as
  ``evtchn``), ``socket`` -> CONNECTION_DATA of a socket;
* ``watch`` -> WATCH_DATA of that connection;
* ``store`` -> committed NODE_DATA (``/@introduceDomain`` and
  ``/@releaseDomain`` are the special nodes ``@introduceDomain`` and
  ``@releaseDomain``);
* oxenstored's quota settings (from its configuration, not the dump) ->
  GLOBAL_QUOTA_DATA (:mod:`.oxenstored_quota`).

Three facts of a dump have no field in the stream: the ring page frame
(mfn) and the guest's event-channel port of each domain, and the DOM_EXC
VIRQ port.  The C family finds them elsewhere (the ring through the
reserved grant entry); oxenstored needs them in its dump.  They travel
beside the records as :class:`OxenstoredExtras`: returned by
:func:`dump_to_records` and needed by :func:`records_to_dump` for guest
domains.  They are not counted as dropped.

Anything else one side cannot carry is *dropped*: without ``lossy`` the
conversion raises :class:`OxenstoredConversionError` naming every item;
with ``lossy`` it goes on and returns the items.  A dump with errors (see
:mod:`.oxenstored_check`) converts only with ``lossy``, as oxenstored would
load it: the lines it skips are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..wire import DOMID_INVALID
from .oxenstored_check import analyse_dump, node_components
from .oxenstored_format import (
    DomLine,
    DumpLine,
    EvtchnDevLine,
    GlobalLine,
    OxDump,
    OxPerm,
    SocketLine,
    StoreLine,
    WatchLine,
)
from .oxenstored_quota import OxenstoredQuota, quota_from_c, quota_to_c
from .records import (
    CONN_TYPE_RING,
    CONN_TYPE_SOCKET,
    DEPTH_UNLIMITED,
    ConnectionData,
    DomainData,
    End,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    Record,
    RingSpec,
    SocketSpec,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
)
from .text import quote

#: The special nodes, as oxenstored stores them (children of the root).
SPECIAL_PATHS = {"/@introduceDomain": "@introduceDomain", "/@releaseDomain": "@releaseDomain"}
_DOMID_MAX = 0xFFFF
_PORT_MAX = 0xFFFFFFFF
_SHOWN = 8


class OxenstoredConversionError(ValueError):
    """A conversion would drop something and ``lossy`` was not given.

    ``dropped`` lists every item, readable.
    """

    def __init__(self, direction: str, dropped: list[str]) -> None:
        shown = "; ".join(dropped[:_SHOWN])
        more = f" (and {len(dropped) - _SHOWN} more)" if len(dropped) > _SHOWN else ""
        super().__init__(f"{direction} would drop: {shown}{more}")
        self.dropped = tuple(dropped)


@dataclass(slots=True, frozen=True)
class DomainRing:
    """Where a domain's ring is, as oxenstored's ``dom`` line says: frame and guest port."""

    domid: int
    mfn: int
    remote_port: int


@dataclass(slots=True, frozen=True)
class OxenstoredExtras:
    """What oxenstored's dump holds and the stream has no field for.

    ``domexc_port`` is the DOM_EXC VIRQ port bound on the event-channel
    device (None: unknown); ``rings`` the ring of each domain.
    """

    domexc_port: int | None = None
    rings: tuple[DomainRing, ...] = ()

    def ring(self, domid: int) -> DomainRing | None:
        """The ring of ``domid``, None when not known."""
        for ring in self.rings:
            if ring.domid == domid:
                return ring
        return None


@dataclass(slots=True, frozen=True)
class StreamConversion:
    """Result of :func:`dump_to_records`: records (END last), extras, dropped items."""

    records: tuple[Record, ...]
    extras: OxenstoredExtras
    dropped: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class DumpConversion:
    """Result of :func:`records_to_dump`.

    ``quota`` holds the oxenstored settings for the stream's GLOBAL_QUOTA_DATA
    (None when it had none); oxenstored reads them from its configuration
    file, see :func:`.oxenstored_quota.format_config`.
    """

    dump: OxDump
    quota: OxenstoredQuota | None
    dropped: tuple[str, ...] = ()


def stream_path(path: bytes) -> str | None:
    """The stream's path for an oxenstored node path, None if oxenstored rejects it."""
    parts = node_components(path)
    if parts is None:
        return None
    text = "/" + b"/".join(parts).decode("ascii")
    return SPECIAL_PATHS.get(text, text)


def oxenstored_path(path: str) -> bytes:
    """oxenstored's node path for a stream path (``@name`` is the root's child)."""
    return ("/" + path if path.startswith("@") else path).encode()


def _text(raw: bytes) -> str | None:
    """``raw`` as the stream's NUL-terminated UTF-8 string, None if it cannot be."""
    if b"\0" in raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


class _ToStream:
    """State of one :func:`dump_to_records` pass."""

    def __init__(self, dump: OxDump, quota: OxenstoredQuota | None) -> None:
        self.dump = dump
        self.analysis = analyse_dump(dump, quota)
        # Every error of the dump is something a lossless conversion cannot
        # vouch for; the lines oxenstored skips are named by their reason.
        dropped = self.analysis.dropped
        found = [(n, why) for n, why in dropped.items()]
        found += [(d.line, f"{d.rule}: {d.message}") for d in self.analysis.errors]
        self.dropped = [f"line {n}: {why}" for n, why in sorted(set(found))]
        self.last_duplicate: dict[int, int] = {}
        for later, first in self.analysis.duplicates.items():
            self.last_duplicate[first] = max(later, self.last_duplicate.get(first, 0))
        self.body: list[Record] = []
        self.conn_ids: dict[int, int] = {}
        self.rings: list[DomainRing] = []
        self.socket_fd = self.evtchn_fd = -1
        self.domexc: int | None = None
        self.has_global = False
        self.skipped_nodes: set[str] = set()

    def line(self, n: int, line: DumpLine) -> None:
        if n in self.analysis.dropped or n in self.analysis.duplicates:
            return
        match line:
            case StoreLine():
                self.store(n, line)
            case WatchLine():
                self.watch(n, line)
            case DomLine():
                self.dom(n, line)
            case SocketLine():
                self.conn_ids[-line.fd] = cid = len(self.conn_ids) + 1
                self.body.append(ConnectionData(cid, CONN_TYPE_SOCKET, 0, SocketSpec(line.fd)))
            case GlobalLine():
                self.has_global = True
                self.socket_fd = line.socket_fd
                if line.extra:
                    self.dropped.append(
                        f"line {n}: fields after the global socket: {quote(b','.join(line.extra))}"
                    )
            case EvtchnDevLine():
                self.has_global = True
                self.evtchn_fd, self.domexc = line.fd, line.domexc_port

    def dom(self, n: int, line: DomLine) -> None:
        if line.local_port is None:
            self.dropped.append(
                f"line {n}: domain {line.domid} has no local port (pre-4.17 dump): evtchn 0"
            )
        if line.extra:
            self.dropped.append(f"line {n}: fields after domain {line.domid}'s local port")
        local = line.local_port or 0
        if not 0 <= local <= _PORT_MAX:
            self.dropped.append(f"line {n}: domain {line.domid}'s local port {local}: evtchn 0")
            local = 0
        self.conn_ids[line.domid] = cid = len(self.conn_ids) + 1
        spec = RingSpec(line.domid, DOMID_INVALID, local)
        self.body.append(ConnectionData(cid, CONN_TYPE_RING, 0, spec))
        self.rings.append(DomainRing(line.domid, line.mfn, line.remote_port))

    def watch(self, n: int, line: WatchLine) -> None:
        path, token = _text(line.path), _text(line.token)
        if path is None or token is None:
            self.dropped.append(
                f"line {n}: watch {quote(line.path)} {quote(line.token)}: not a NUL-free UTF-8 string"
            )
            return
        self.body.append(WatchData(self.conn_ids[line.conn], path, token))

    def store(self, n: int, line: StoreLine) -> None:
        last = self.last_duplicate.get(n)
        if last is not None:
            final = self.dump.lines[last - 2]
            assert isinstance(final, StoreLine)
            line = final
        path = stream_path(line.path)
        assert path is not None  # the analysis dropped invalid paths
        parent = path.rpartition("/")[0] or "/"
        why = ""
        if parent in self.skipped_nodes:
            why = "its parent is left out"
        elif any(p.domid > _DOMID_MAX for p in line.perms):
            why = "a permission domid over 16 bits"
        if why:
            self.skipped_nodes.add(path)
            self.dropped.append(f"line {n}: node {path}: {why}")
            return
        perms = tuple(NodePerm(p.letter, 0, p.domid) for p in line.perms)
        self.body.append(NodeData(0, 0, 0, perms, path, line.value))

    def result(self, quota: OxenstoredQuota | None) -> StreamConversion:
        records: list[Record] = []
        if self.has_global:
            records.append(GlobalData(self.socket_fd, self.evtchn_fd))
        if quota is not None:
            values, lost = quota_to_c(quota)
            self.dropped += lost
            records.append(GlobalQuotaData(values))
        records += self.body
        records.append(End())
        extras = OxenstoredExtras(self.domexc, tuple(self.rings))
        return StreamConversion(tuple(records), extras, tuple(self.dropped))


def dump_to_records(
    dump: OxDump, *, quota: OxenstoredQuota | None = None, lossy: bool = False
) -> StreamConversion:
    """The migration-stream records for oxenstored's ``dump``.

    ``quota`` is the daemon's quota settings (from its configuration file);
    when given, a GLOBAL_QUOTA_DATA record carries them.  Connection ids are
    given in line order from 1.  Raises :class:`OxenstoredConversionError`
    when something would be dropped and ``lossy`` is False.
    """
    state = _ToStream(dump, quota)
    for n, line in dump.numbered():
        state.line(n, line)
    out = state.result(quota)
    if out.dropped and not lossy:
        raise OxenstoredConversionError("converting the oxenstored dump", list(out.dropped))
    return out


class _ToDump:
    """State of one :func:`records_to_dump` pass."""

    def __init__(self, extras: OxenstoredExtras) -> None:
        self.extras = extras
        self.head: list[DumpLine] = []
        self.body: list[DumpLine] = []
        self.dropped: list[str] = []
        self.conns: dict[int, int | None] = {}  # conn-id -> oxenstored conn, None = left out
        self.quota: OxenstoredQuota | None = None
        self.default_quota: dict[str, int] = {}

    def record(self, r: Record) -> None:
        match r:
            case NodeData():
                self.node(r)
            case WatchData() | WatchDataExtended():
                self.watch(r)
            case ConnectionData():
                self.connection(r)
            case GlobalData():
                self.global_data(r)
            case GlobalQuotaData():
                self.quota, lost = quota_from_c(r.domain_quota)
                self.default_quota = {v.name: v.value for v in r.domain_quota}
                self.dropped += lost
                self.dropped += [f"global-only quota {v.name} {v.value}" for v in r.global_quota]
            case DomainData():
                self.domain(r)
            case TransactionData():
                self.dropped.append(f"transaction {r.tx_id} of connection {r.conn_id}")
            case UnknownRecord():
                self.dropped.append(f"record of unknown type {r.type}")

    def global_data(self, r: GlobalData) -> None:
        self.head.append(GlobalLine(max(r.socket_fd, -1)))  # any negative: no socket
        if r.evtchn_fd < 0:
            return
        if self.extras.domexc_port is None:
            self.dropped.append(
                f"event-channel descriptor {r.evtchn_fd}: its DOM_EXC port is not known, "
                "so no evtchn-dev line (oxenstored opens a new handle)"
            )
            return
        self.head.append(EvtchnDevLine(r.evtchn_fd, self.extras.domexc_port))

    def connection(self, r: ConnectionData) -> None:
        cid = r.conn_id
        if cid in self.conns:
            self.dropped.append(f"connection {cid} given twice")
            return
        self.conns[cid] = None
        if r.in_data or r.out_data:
            self.dropped.append(
                f"connection {cid}: {len(r.in_data)} bytes of pending input and "
                f"{len(r.out_data)} of pending output"
            )
        if r.unique_id is not None:
            self.dropped.append(f"connection {cid}: unique-id {r.unique_id:#x}")
        spec = r.spec
        if isinstance(spec, SocketSpec):
            self.socket(cid, spec.socket_fd)
        elif isinstance(spec, RingSpec) and r.conn_type == CONN_TYPE_RING:
            self.ring(cid, spec)
        else:
            self.dropped.append(f"connection {cid} of type {r.conn_type}")

    def socket(self, cid: int, fd: int) -> None:
        if fd <= 0 or -fd in self.conns.values():
            self.dropped.append(f"connection {cid}: socket descriptor {fd} unusable or reused")
            return
        self.conns[cid] = -fd
        self.body.append(SocketLine(fd))

    def ring(self, cid: int, spec: RingSpec) -> None:
        d = spec.domid
        if d in self.conns.values():
            self.dropped.append(f"connection {cid}: a second ring of domain {d}")
            return
        if spec.tdomid != DOMID_INVALID:
            self.dropped.append(f"domain {d} acting for domain {spec.tdomid} (SET_TARGET)")
        ring = self.extras.ring(d)
        if ring is None and d != 0:
            self.dropped.append(
                f"domain {d}'s ring connection: its ring frame and port are not known"
            )
            return
        # dom0's ring and port come from xenstored-kva and xenstored-port.
        mfn, remote = (ring.mfn, ring.remote_port) if ring else (0, 0)
        local = spec.evtchn or None
        if local is None:
            self.dropped.append(f"domain {d}: no local event-channel port (oxenstored binds anew)")
        self.conns[cid] = d
        self.body.append(DomLine(d, mfn, remote, local))

    def watch(self, r: WatchData | WatchDataExtended) -> None:
        conn = self.conns.get(r.conn_id)
        what = f"watch {quote(r.wpath)} token {quote(r.token)} of connection {r.conn_id}"
        if conn is None:
            self.dropped.append(f"{what}: its connection is left out or unknown")
            return
        if isinstance(r, WatchDataExtended) and r.depth != DEPTH_UNLIMITED:
            self.dropped.append(f"depth {r.depth} of {what}")
        self.body.append(WatchLine(conn, r.wpath.encode(), r.token.encode()))

    def node(self, r: NodeData) -> None:
        if r.conn_id:
            self.dropped.append(f"node {r.path} of transaction {r.tx_id} of connection {r.conn_id}")
            return
        if not r.perms:
            self.dropped.append(f"node {r.path}: no permissions")
            return
        if any(p.stale for p in r.perms):
            self.dropped.append(f"stale flag of permissions of node {r.path}")
        perms = tuple(OxPerm(p.perm, p.domid) for p in r.perms)
        self.body.append(StoreLine(oxenstored_path(r.path), perms, r.value))

    def domain(self, r: DomainData) -> None:
        if r.features:
            self.dropped.append(f"features {r.features:#x} of domain {r.domid}")
        for v in r.quota:
            if self.default_quota.get(v.name) != v.value:
                self.dropped.append(f"quota {v.name} {v.value} of domain {r.domid}")


def records_to_dump(
    records: Iterable[Record],
    *,
    extras: OxenstoredExtras | None = None,
    lossy: bool = False,
) -> DumpConversion:
    """oxenstored's dump for migration-stream ``records`` (up to END).

    ``extras`` gives what the stream lacks (see :class:`OxenstoredExtras`);
    a guest domain without its ring there cannot be written.  Raises
    :class:`OxenstoredConversionError` when something would be dropped and
    ``lossy`` is False.
    """
    state = _ToDump(extras or OxenstoredExtras())
    for r in records:
        if isinstance(r, End):
            break
        state.record(r)
    dump = OxDump(tuple(state.head + state.body))
    if state.dropped and not lossy:
        raise OxenstoredConversionError("converting to an oxenstored dump", state.dropped)
    return DumpConversion(dump, state.quota, tuple(state.dropped))


__all__ = [
    "SPECIAL_PATHS",
    "DomainRing",
    "DumpConversion",
    "OxenstoredConversionError",
    "OxenstoredExtras",
    "StreamConversion",
    "dump_to_records",
    "oxenstored_path",
    "records_to_dump",
    "stream_path",
]
