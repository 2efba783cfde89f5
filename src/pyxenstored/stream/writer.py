"""Writer of Xenstore migration streams.

Writes version 1 or 2, either byte order, with zero padding and every ``len``
rounded up to a multiple of 8 (the padding counted in ``len``, as the C daemon
expects, ``utils.c:dump_state_align``, ``lu.c:lu_read_state``).  A canonical
stream read by :mod:`.reader` and written
again comes out byte-identical.

``target`` chooses the reader the stream is meant for:

* ``spec`` (default): the design document's layouts;
* ``c-head``: what the current C daemon restores correctly — depth watches in
  its reader's layout (path at offset 10), no TRANSACTION_DATA, no
  pending-transaction nodes, DOMAIN_DATA only for domains it can find;
* ``c-4.17``: version 1, and nothing the 4.17 reader would skip or misread
  (no records of types 4, 6, 7, 8 or unknown types, no transaction nodes, no
  ``unique-id``).

The writer refuses (:class:`StreamWriteError`) anything the version or target
does not allow; :func:`adapt_for_target` converts a record list beforehand and
says what it had to drop.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import IO, Any, Union

from pyxenstored.wire import DOMID_INVALID

from . import layout as L
from .records import (
    CONN_FIELD_UNIQUE_ID,
    CONN_TYPE_RING,
    CONN_TYPE_SOCKET,
    DEPTH_UNLIMITED,
    FLAG_BIG_ENDIAN,
    STREAM_IDENT,
    SUPPORTED_VERSIONS,
    VERSION_1,
    VERSION_2,
    CommittedNode,
    ConnectionData,
    DomainData,
    End,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    OpaqueSpec,
    QuotaValue,
    Record,
    RecordType,
    RingSpec,
    SocketSpec,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
)
from .txmarks import is_marks_name

TARGET_SPEC = "spec"
TARGET_C_HEAD = "c-head"
TARGET_C_417 = "c-4.17"
TARGETS = (TARGET_SPEC, TARGET_C_HEAD, TARGET_C_417)

_ZEROS = tuple(b"\0" * n for n in range(8))
_NODE = int(RecordType.NODE_DATA)
_WATCH_EXT = int(RecordType.WATCH_DATA_EXTENDED)
#: A NODE_DATA body without its permissions, path and value: the fixed part and the path's NUL.
_NODE_FIXED = L.NODE_DATA_SIZE + 1

Dest = Union[str, "os.PathLike[str]", IO[bytes]]


class StreamWriteError(ValueError):
    """A record the chosen version or target cannot carry, or a field out of range."""


def default_version(target: str) -> int:
    """The stream version a target gets when none is asked for."""
    return VERSION_1 if target == TARGET_C_417 else VERSION_2


def _check_target(version: int, target: str) -> None:
    if target not in TARGETS:
        raise StreamWriteError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    if version not in SUPPORTED_VERSIONS:
        raise StreamWriteError(f"unsupported stream version {version} (choose 1 or 2)")
    if target == TARGET_C_417 and version != VERSION_1:
        raise StreamWriteError("target c-4.17 reads only version 1 streams")


def encode_preamble(version: int, big_endian: bool) -> bytes:
    """The 16-byte preamble: ident, version and flags, both big-endian."""
    return L.PREAMBLE.pack(STREAM_IDENT, version, FLAG_BIG_ENDIAN if big_endian else 0)


def _text(value: str, what: str) -> bytes:
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise StreamWriteError(f"{what} {value!r} cannot be encoded as UTF-8") from None


class _Encoder:
    """Precompiled structs and record encoders for one byte order."""

    def __init__(self, big_endian: bool) -> None:
        lay = L.layout_for(big_endian)
        self.layout = lay
        # Each record's header and fixed part in one struct.
        h = L.RECORD_HEADER
        self.header = lay.header
        self.global_ = lay.struct(h, L.GLOBAL_DATA)
        self.conn = lay.struct(h, L.CONNECTION_HEAD)
        self.conn_tail = lay.struct(L.CONNECTION_LENGTHS)
        self.ring = lay.ring_spec
        self.socket = lay.socket_spec
        self.u64 = lay.unique_id
        self.watch = lay.struct(h, L.WATCH_DATA)
        self.watch_ext = lay.struct(h, L.WATCH_DATA_EXTENDED)
        # C HEAD's reader layout: no pad (see layout.WATCH_EXT_C_READER).
        self.watch_ext_c = lay.struct(h, L.WATCH_DATA, "H")
        self.ta = lay.struct(h, L.TRANSACTION_DATA)
        self.node = lay.struct(h, L.NODE_DATA)
        self.perm = lay.perm
        self.gquota = lay.struct(h, L.GLOBAL_QUOTA_DATA)
        self.domain = lay.struct(h, L.DOMAIN_DATA)
        self._perms: dict[tuple[NodePerm, ...], bytes] = {}
        self.committed = lay.struct(L.COMMITTED_NODE_RECORD)

    def encode(self, record: Record, version: int, target: str) -> bytes:
        """One record: header, body and zero padding; ``len`` a multiple of 8."""
        cls = type(record)
        try:
            if cls is NodeData:  # the bulk of every stream: skip the table lookup
                return self.node_data(record, target)  # type: ignore[arg-type]
            method = _ENCODERS.get(cls)
            if method is None:
                raise StreamWriteError(f"not a stream record: {record!r}")
            return method(self, record, version, target)
        except struct.error as exc:
            raise StreamWriteError(
                f"{cls.__name__}: field out of range ({exc}): {record!r}"
            ) from None

    def node_data(self, r: NodeData, target: str) -> bytes:
        if r.conn_id and target != TARGET_SPEC:
            raise StreamWriteError(
                f"target {target} cannot carry pending-transaction node {r.path!r} "
                f"(conn-id {r.conn_id}, tx-id {r.tx_id}): C installs it as a committed node"
            )
        perms = r.perms
        raw_perms = self._perms.get(perms)
        if raw_perms is None:
            raw_perms = self._encode_perms(perms)
        path = _text(r.path, "path")
        value = r.value
        plen = len(path) + 1
        size = _NODE_FIXED + len(raw_perms) + len(path) + len(value)
        padded = (size + 7) & ~7
        return b"".join(
            (
                self.node.pack(
                    _NODE, padded, r.conn_id, r.tx_id, plen, len(value), r.access, len(perms)
                ),
                raw_perms,
                path,
                b"\0",
                value,
                _ZEROS[padded - size],
            )
        )

    def committed_nodes(self, run: Iterable[CommittedNode]) -> bytes:
        """NODE_DATA records of committed nodes, ``(path, perms, value)`` each.

        The same bytes as :meth:`node_data` gives for each node, in one loop
        (a dump's bulk).  Permission tuples repeat: their encoding is looked
        up by identity (the cache holds the tuple, so its id stays its own).
        """
        pack = self.committed.pack
        by_id: dict[int, tuple[bytes, int, tuple[NodePerm, ...]]] = {}
        parts: list[bytes] = []
        add = parts.extend
        zeros = _ZEROS
        fixed = _NODE_FIXED
        node_type = _NODE
        for path, perms, value in run:
            hit = by_id.get(id(perms))
            if hit is None:
                raw = self._perms.get(perms)
                if raw is None:
                    raw = self._encode_perms(perms)
                hit = by_id[id(perms)] = (raw, len(perms), perms)
            try:
                raw_path = path.encode()
            except UnicodeEncodeError:
                raise StreamWriteError(f"path {path!r} cannot be encoded as UTF-8") from None
            vlen = len(value)
            size = fixed + len(hit[0]) + len(raw_path) + vlen
            padded = (size + 7) & ~7
            add(
                (
                    pack(node_type, padded, len(raw_path) + 1, vlen, hit[1]),
                    hit[0],
                    raw_path,
                    b"\0",
                    value,
                    zeros[padded - size],
                )
            )
        return b"".join(parts)

    def _encode_perms(self, perms: tuple[NodePerm, ...]) -> bytes:
        parts = []
        for p in perms:
            if len(p.perm) != 1 or not p.perm.isascii():
                raise StreamWriteError(f"permission letter must be one ASCII character: {p!r}")
            parts.append(self.perm.pack(ord(p.perm), p.flags, p.domid))
        raw = b"".join(parts)
        if len(self._perms) > 4096:  # bounded cache: permission sets repeat a lot
            self._perms.clear()
        self._perms[perms] = raw
        return raw

    def end(self, r: End, version: int, target: str) -> bytes:
        return self.header.pack(RecordType.END, 0)

    def global_data(self, r: GlobalData, version: int, target: str) -> bytes:
        return self.global_.pack(
            RecordType.GLOBAL_DATA, L.GLOBAL_DATA_SIZE, r.socket_fd, r.evtchn_fd
        )

    def connection_data(self, r: ConnectionData, version: int, target: str) -> bytes:
        spec = r.spec
        if r.conn_type == CONN_TYPE_RING:
            if not isinstance(spec, RingSpec):
                raise StreamWriteError(f"conn-type 0 (ring) needs a RingSpec: {r!r}")
            raw_spec = self.ring.pack(spec.domid, spec.tdomid, spec.evtchn)
        elif r.conn_type == CONN_TYPE_SOCKET:
            if not isinstance(spec, SocketSpec):
                raise StreamWriteError(f"conn-type 1 (socket) needs a SocketSpec: {r!r}")
            raw_spec = self.socket.pack(spec.socket_fd, 0)
        else:
            if not isinstance(spec, OpaqueSpec) or len(spec.raw) != 8:
                raise StreamWriteError(
                    f"reserved conn-type {r.conn_type} needs an 8-byte OpaqueSpec"
                )
            raw_spec = spec.raw
        has_uid = bool(r.fields & CONN_FIELD_UNIQUE_ID)
        if has_uid != (r.unique_id is not None):
            raise StreamWriteError(
                f"connection {r.conn_id}: fields bit 0 says unique-id "
                f"{'present' if has_uid else 'absent'}, but unique_id is {r.unique_id!r}"
            )
        if target == TARGET_C_417 and has_uid:
            raise StreamWriteError(
                f"target c-4.17 does not restore unique-id (connection {r.conn_id})"
            )
        size = L.CONNECTION_DATA_OFFSET + len(r.in_data) + len(r.out_data)
        padded = (size + 7) & ~7
        parts = [
            self.conn.pack(
                RecordType.CONNECTION_DATA,
                padded + (L.UNIQUE_ID_SIZE if has_uid else 0),
                r.conn_id,
                r.conn_type,
                r.fields,
            ),
            raw_spec,
            self.conn_tail.pack(len(r.in_data), r.out_resp_len, len(r.out_data)),
            r.in_data,
            r.out_data,
            _ZEROS[padded - size],
        ]
        if r.unique_id is not None:
            parts.append(self.u64.pack(r.unique_id))
        return b"".join(parts)

    def watch_data(self, r: WatchData, version: int, target: str) -> bytes:
        path = _text(r.wpath, "wpath")
        token = _text(r.token, "token")
        size = L.WATCH_DATA_SIZE + len(path) + len(token) + 2  # two NULs
        padded = (size + 7) & ~7
        return b"".join(
            (
                self.watch.pack(
                    RecordType.WATCH_DATA, padded, r.conn_id, len(path) + 1, len(token) + 1
                ),
                path,
                b"\0",
                token,
                b"\0",
                _ZEROS[padded - size],
            )
        )

    def watch_data_extended(self, r: WatchDataExtended, version: int, target: str) -> bytes:
        if version < VERSION_2:
            raise StreamWriteError(
                f"WATCH_DATA_EXTENDED is not valid in version {version} "
                f"(watch {r.wpath!r} token {r.token!r} depth {r.depth})"
            )
        if target == TARGET_C_417:
            raise StreamWriteError("target c-4.17 skips WATCH_DATA_EXTENDED")
        path = _text(r.wpath, "wpath")
        token = _text(r.token, "token")
        plen, tlen = len(path) + 1, len(token) + 1
        if target == TARGET_C_HEAD:
            # C HEAD's reader takes the path from offset 10 (no pad field).
            size = L.WATCH_EXT_PATH_AT[L.WATCH_EXT_C_READER] + plen + tlen
            padded = (size + 7) & ~7
            head = self.watch_ext_c.pack(_WATCH_EXT, padded, r.conn_id, plen, tlen, r.depth)
        else:
            size = L.WATCH_DATA_EXTENDED_SIZE + plen + tlen
            padded = (size + 7) & ~7
            head = self.watch_ext.pack(_WATCH_EXT, padded, r.conn_id, plen, tlen, r.depth, 0)
        return b"".join((head, path, b"\0", token, b"\0", _ZEROS[padded - size]))

    def transaction_data(self, r: TransactionData, version: int, target: str) -> bytes:
        if target != TARGET_SPEC:
            raise StreamWriteError(
                f"target {target} ignores TRANSACTION_DATA (conn-id {r.conn_id}, tx-id {r.tx_id})"
            )
        return self.ta.pack(
            RecordType.TRANSACTION_DATA, L.TRANSACTION_DATA_SIZE, r.conn_id, r.tx_id
        )

    def _quota_parts(self, quota: Iterable[QuotaValue]) -> tuple[bytes, bytes, int]:
        values = []
        names = []
        for q in quota:
            name = _text(q.name, "quota name")
            if b"\0" in name:
                raise StreamWriteError(f"quota name {q.name!r} contains NUL")
            values.append(q.value)
            names.append(name)
            names.append(b"\0")
        raw_names = b"".join(names)
        return self.layout.quota_values(len(values)).pack(*values), raw_names, len(values)

    def global_quota_data(self, r: GlobalQuotaData, version: int, target: str) -> bytes:
        if target == TARGET_C_417:
            raise StreamWriteError("target c-4.17 skips GLOBAL_QUOTA_DATA")
        raw_values, raw_names, _ = self._quota_parts(r.domain_quota + r.global_quota)
        size = L.GLOBAL_QUOTA_DATA_SIZE + len(raw_values) + len(raw_names)
        padded = (size + 7) & ~7
        return b"".join(
            (
                self.gquota.pack(
                    RecordType.GLOBAL_QUOTA_DATA,
                    padded,
                    len(r.domain_quota),
                    len(r.global_quota),
                ),
                raw_values,
                raw_names,
                _ZEROS[padded - size],
            )
        )

    def domain_data(self, r: DomainData, version: int, target: str) -> bytes:
        if target == TARGET_C_417:
            raise StreamWriteError(f"target c-4.17 skips DOMAIN_DATA (domain {r.domid})")
        if version < VERSION_2 and r.features:
            raise StreamWriteError(
                f"DOMAIN_DATA features are not valid in version {version} "
                f"(domain {r.domid} has features {r.features:#x})"
            )
        raw_values, raw_names, n = self._quota_parts(r.quota)
        size = L.DOMAIN_DATA_SIZE + len(raw_values) + len(raw_names)
        padded = (size + 7) & ~7
        return b"".join(
            (
                self.domain.pack(RecordType.DOMAIN_DATA, padded, r.domid, n, r.features),
                raw_values,
                raw_names,
                _ZEROS[padded - size],
            )
        )

    def unknown_record(self, r: UnknownRecord, version: int, target: str) -> bytes:
        if target == TARGET_C_417:
            raise StreamWriteError(f"target c-4.17 skips records of unknown type {r.type}")
        size = len(r.body)
        padded = (size + 7) & ~7
        return b"".join((self.header.pack(r.type, padded), r.body, _ZEROS[padded - size]))


_ENCODERS: dict[type, Callable[[_Encoder, Any, int, str], bytes]] = {
    End: _Encoder.end,
    GlobalData: _Encoder.global_data,
    ConnectionData: _Encoder.connection_data,
    WatchData: _Encoder.watch_data,
    WatchDataExtended: _Encoder.watch_data_extended,
    TransactionData: _Encoder.transaction_data,
    GlobalQuotaData: _Encoder.global_quota_data,
    DomainData: _Encoder.domain_data,
    UnknownRecord: _Encoder.unknown_record,
}

_ENCODER_BY_ORDER = {False: _Encoder(False), True: _Encoder(True)}


def encode_record(
    record: Record,
    *,
    version: int = VERSION_2,
    big_endian: bool = False,
    target: str = TARGET_SPEC,
) -> bytes:
    """The bytes of one record (header, body, zero padding) for a stream of ``version``."""
    _check_target(version, target)
    return _ENCODER_BY_ORDER[big_endian].encode(record, version, target)


class DomainTracker:
    """Which domains the C HEAD reader knows at each point of the stream (lu.c:lu_read_state)."""

    def __init__(self) -> None:
        self.known: set[int] = set()

    def see(self, record: Record) -> None:
        if isinstance(record, ConnectionData) and isinstance(record.spec, RingSpec):
            self.known.add(record.spec.domid)
            if record.spec.tdomid != DOMID_INVALID:
                self.known.add(record.spec.tdomid)
        elif isinstance(record, NodeData) and record.perms:
            self.known.add(record.perms[0].domid)


class StreamWriter:
    """Writes a stream record by record to a path or a binary file object.

    The preamble is written at construction.  Nothing is written implicitly:
    callers write :class:`End` themselves.  ``version`` defaults to 2 (1 for
    target ``c-4.17``).  A file object passed in is not closed by
    :meth:`close`, only flushed.
    """

    def __init__(
        self,
        dest: Dest,
        *,
        version: int | None = None,
        big_endian: bool = False,
        target: str = TARGET_SPEC,
    ) -> None:
        self.version = default_version(target) if version is None else version
        _check_target(self.version, target)
        self.big_endian = big_endian
        self.target = target
        self._encoder = _ENCODER_BY_ORDER[big_endian]
        self._domains = DomainTracker() if target == TARGET_C_HEAD else None
        self._owns = False
        if isinstance(dest, (str, os.PathLike)):
            self._file: IO[bytes] = open(dest, "wb")  # noqa: SIM115 - closed by close()
            self._owns = True
        else:
            self._file = dest
        self._write = self._file.write
        self._write(encode_preamble(self.version, big_endian))

    def write(self, record: Record) -> None:
        """Encode and write one record."""
        if self._domains is not None:
            if isinstance(record, DomainData) and record.domid not in self._domains.known:
                raise StreamWriteError(
                    f"target c-head aborts on DOMAIN_DATA for domain {record.domid}: "
                    "no earlier ring connection or node owner makes it known"
                )
            self._domains.see(record)
        self._write(self._encoder.encode(record, self.version, self.target))

    def write_all(self, records: Iterable[Record | list[CommittedNode]]) -> None:
        """Write every record of ``records`` in order.

        A list among them is a run of committed nodes (see
        :meth:`write_node_run`), as :func:`pyxenstored.migrate.dump_state`
        gives them with ``node_runs``.
        """
        for record in records:
            if record.__class__ is list:
                assert isinstance(record, list)
                self.write_node_run(record)
            else:
                assert not isinstance(record, list)
                self.write(record)

    def write_node_run(self, run: list[CommittedNode]) -> None:
        """Write committed nodes ``(path, perms, value)`` as NODE_DATA records."""
        if self._domains is not None:
            for _path, perms, _value in run:
                if perms:
                    self._domains.known.add(perms[0].domid)
        try:
            data = self._encoder.committed_nodes(run)
        except struct.error as exc:
            raise StreamWriteError(f"NodeData: field out of range ({exc})") from None
        self._write(data)

    def close(self) -> None:
        """Flush, and close the file if the writer opened it."""
        self._file.flush()
        if self._owns:
            self._file.close()

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_stream(
    records: Iterable[Record],
    *,
    version: int | None = None,
    big_endian: bool = False,
    target: str = TARGET_SPEC,
) -> bytes:
    """A whole stream as bytes: preamble then ``records`` (END only if given)."""
    version = default_version(target) if version is None else version
    _check_target(version, target)
    encode = _ENCODER_BY_ORDER[big_endian].encode
    tracker = DomainTracker() if target == TARGET_C_HEAD else None
    parts = [encode_preamble(version, big_endian)]
    for record in records:
        if tracker is not None:
            if isinstance(record, DomainData) and record.domid not in tracker.known:
                raise StreamWriteError(
                    f"target c-head aborts on DOMAIN_DATA for domain {record.domid}: "
                    "no earlier ring connection or node owner makes it known"
                )
            tracker.see(record)
        parts.append(encode(record, version, target))
    return b"".join(parts)


def _describe_watch(w: WatchData | WatchDataExtended) -> str:
    return f"connection {w.conn_id} watch {w.wpath!r} token {w.token!r}"


def _order_like_c(records: list[Record]) -> list[Record]:
    """Stable reorder into the C writer's order (``lu.c:lu_dump_state``).

    GLOBAL_DATA, GLOBAL_QUOTA_DATA, each connection followed by its watches,
    the nodes and other records in their given order, DOMAIN_DATA, END.
    """
    first: list[Record] = []
    quota: list[Record] = []
    conns: list[ConnectionData] = []
    watches: dict[int, list[Record]] = {}
    orphans: list[Record] = []
    middle: list[Record] = []
    domains: list[Record] = []
    ends: list[Record] = []
    for r in records:
        if isinstance(r, GlobalData):
            first.append(r)
        elif isinstance(r, GlobalQuotaData):
            quota.append(r)
        elif isinstance(r, ConnectionData):
            conns.append(r)
        elif isinstance(r, (WatchData, WatchDataExtended)):
            watches.setdefault(r.conn_id, []).append(r)
        elif isinstance(r, DomainData):
            domains.append(r)
        elif isinstance(r, End):
            ends.append(r)
        else:
            middle.append(r)
    out: list[Record] = first + quota
    for c in conns:
        out.append(c)
        out.extend(watches.pop(c.conn_id, ()))
    for rest in watches.values():
        orphans.extend(rest)
    return out + orphans + middle + domains + ends[:1]


def adapt_record(r: Record, version: int, target: str, dropped: list[str]) -> Record | None:
    """One record as a stream of ``version`` for ``target`` can carry it (None: dropped).

    Appends a description of each piece of lost information to ``dropped``.
    The record-by-record part of :func:`adapt_for_target` (which adds the C
    order and the c-head domain rule); the caller checks that ``version``
    and ``target`` go together (as :class:`StreamWriter` does).
    """
    if isinstance(r, WatchDataExtended) and (version < VERSION_2 or target == TARGET_C_417):
        if r.depth != DEPTH_UNLIMITED:
            dropped.append(f"depth {r.depth} of {_describe_watch(r)}")
        return WatchData(r.conn_id, r.wpath, r.token)
    if target == TARGET_SPEC:
        if isinstance(r, DomainData) and version < VERSION_2 and r.features:
            dropped.append(f"features {r.features:#x} of domain {r.domid}")
            r = replace(r, features=0)
        return r
    # Both C targets from here on.
    if isinstance(r, TransactionData):
        dropped.append(f"transaction {r.tx_id} of connection {r.conn_id}")
        return None
    if isinstance(r, NodeData) and r.conn_id:
        dropped.append(f"node {r.path!r} of transaction {r.tx_id} of connection {r.conn_id}")
        return None
    if isinstance(r, DomainData) and any(is_marks_name(v.name) for v in r.quota):
        # pyxenstored's transaction marks go with the transactions (reported above).
        r = replace(r, quota=tuple(v for v in r.quota if not is_marks_name(v.name)))
    if target == TARGET_C_417:
        if isinstance(r, GlobalQuotaData):
            dropped.append("global quota settings (GLOBAL_QUOTA_DATA)")
            return None
        if isinstance(r, DomainData):
            dropped.append(f"quota and features of domain {r.domid} (DOMAIN_DATA)")
            return None
        if isinstance(r, UnknownRecord):
            dropped.append(f"record of unknown type {r.type}")
            return None
        if isinstance(r, ConnectionData) and r.unique_id is not None:
            dropped.append(f"unique-id {r.unique_id:#x} of connection {r.conn_id}")
            r = replace(r, fields=r.fields & ~CONN_FIELD_UNIQUE_ID, unique_id=None)
    elif isinstance(r, DomainData) and version < VERSION_2 and r.features:
        dropped.append(f"features {r.features:#x} of domain {r.domid}")
        r = replace(r, features=0)
    return r


def c_head_domain_loss(r: Record, tracker: DomainTracker) -> str | None:
    """Why target c-head must drop ``r`` at this point of the output, or None.

    Call it for each record in output order; it updates ``tracker``.
    """
    if isinstance(r, DomainData) and r.domid not in tracker.known:
        return f"DOMAIN_DATA of domain {r.domid} (C HEAD cannot find that domain)"
    tracker.see(r)
    return None


def lossy_refusal(version: int, target: str, first: list[str], total: int) -> StreamWriteError:
    """The error for a conversion that would lose ``total`` things, ``first`` of them named."""
    shown = "; ".join(first[:5])
    more = f" (and {total - 5} more)" if total > 5 else ""
    return StreamWriteError(
        f"writing version {version} for target {target} would lose: {shown}{more}"
    )


def adapt_for_target(
    records: Iterable[Record], version: int, target: str, lossy: bool
) -> tuple[list[Record], list[str]]:
    """Convert ``records`` so that a stream of ``version`` for ``target`` can carry them.

    Returns the converted records and a description of each piece of
    information that had to be dropped.  With ``lossy`` False, any such loss
    raises :class:`StreamWriteError` naming it instead.  Lossless changes are
    made silently: an unlimited-depth WATCH_DATA_EXTENDED becomes WATCH_DATA
    in version 1, and for the C targets records are put in the C writer's
    order (``lu.c:lu_dump_state``).  (:mod:`.convert_bounded` does the same
    in bounded memory.)
    """
    _check_target(version, target)
    dropped: list[str] = []
    out: list[Record] = []
    for r in records:
        got = adapt_record(r, version, target, dropped)
        if got is not None:
            out.append(got)
    if target != TARGET_SPEC:
        out = _order_like_c(out)
    if target == TARGET_C_HEAD:
        tracker = DomainTracker()
        kept: list[Record] = []
        for r in out:
            loss = c_head_domain_loss(r, tracker)
            if loss is not None:
                dropped.append(loss)
                continue
            kept.append(r)
        out = kept
    if dropped and not lossy:
        raise lossy_refusal(version, target, dropped, len(dropped))
    return out, dropped


__all__ = [
    "TARGETS",
    "DomainTracker",
    "TARGET_C_417",
    "TARGET_C_HEAD",
    "TARGET_SPEC",
    "StreamWriteError",
    "StreamWriter",
    "adapt_for_target",
    "adapt_record",
    "c_head_domain_loss",
    "default_version",
    "encode_preamble",
    "encode_record",
    "lossy_refusal",
    "write_stream",
]
