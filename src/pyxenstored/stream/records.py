"""Record types of the Xenstore migration stream.

One immutable class per record type of ``docs/designs/xenstore-migration.md``
(version 2).  Field names are the spec's, hyphens turned into underscores.
Paths, tokens and quota names are ``str`` (the stream stores them
NUL-terminated; the NUL is not part of the value); node values and pending
connection data are raw ``bytes``.

These classes only hold values; the constants of the format are here too.
Byte layouts live in :mod:`.layout`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: The 8 ident bytes that open every stream (``0x78656e73746f7265``).
STREAM_IDENT = b"xenstore"
#: Stream versions this library reads and writes.
VERSION_1 = 1
VERSION_2 = 2
SUPPORTED_VERSIONS = (VERSION_1, VERSION_2)
#: ``flags`` bit 0: payload is big-endian.
FLAG_BIG_ENDIAN = 0x1
#: ``flags`` bits 1-31 are reserved.
FLAGS_RESERVED = 0xFFFFFFFE

#: ``conn-type`` values.
CONN_TYPE_RING = 0
CONN_TYPE_SOCKET = 1
#: ``fields`` bit: ``unique-id`` present after the pending data.
CONN_FIELD_UNIQUE_ID = 0x0001
#: ``depth`` value meaning "unlimited" in WATCH_DATA_EXTENDED.
DEPTH_UNLIMITED = 0xFFFF
#: NODE_DATA ``access`` bits (pending-transaction nodes).
ACCESS_READ = 0x0001
ACCESS_WRITTEN = 0x0002
#: Permission specifier ``flags`` bit: stale, ignore when checking.
PERM_FLAG_STALE = 0x01
#: Permission letters allowed by the spec (as for SET_PERMS).
PERM_LETTERS = frozenset("nrwb")

#: Quota names the C daemon knows (domain.c ``quota_adm``, with ``soft-memory``),
#: and 4.17's ``permissions``.  The spec allows others, implementation specific:
#: a reader ignores the names it does not know.
KNOWN_QUOTA_NAMES = frozenset(
    {
        "nodes",
        "watches",
        "outstanding",
        "memory",
        "soft-memory",
        "transactions",
        "transaction-nodes",
        "node-permissions",
        "permissions",
        "path-max",
        "node-size",
    }
)


class RecordType(enum.IntEnum):
    """Record ``type`` numbers (9..0xFFFFFFFF are reserved)."""

    END = 0
    GLOBAL_DATA = 1
    CONNECTION_DATA = 2
    WATCH_DATA = 3
    TRANSACTION_DATA = 4
    NODE_DATA = 5
    GLOBAL_QUOTA_DATA = 6
    DOMAIN_DATA = 7
    WATCH_DATA_EXTENDED = 8


@dataclass(slots=True, frozen=True)
class StreamHeader:
    """The 16-byte preamble after the ident: ``version`` and ``flags``."""

    version: int
    flags: int

    @property
    def big_endian(self) -> bool:
        """True when the records are in big-endian byte order (flags bit 0)."""
        return bool(self.flags & FLAG_BIG_ENDIAN)

    @property
    def reserved_flags(self) -> int:
        """Flag bits 1-31, which must be zero."""
        return self.flags & FLAGS_RESERVED


@dataclass(slots=True, frozen=True)
class End:
    """END: marks the end of the stream; empty body."""


@dataclass(slots=True, frozen=True)
class GlobalData:
    """GLOBAL_DATA: live-update only; ``rw-socket-fd`` (-1 if none), ``evtchn-fd``."""

    socket_fd: int
    evtchn_fd: int


@dataclass(slots=True, frozen=True)
class RingSpec:
    """``conn-spec`` of a shared-ring connection (``conn-type`` 0)."""

    domid: int
    tdomid: int
    evtchn: int


@dataclass(slots=True, frozen=True)
class SocketSpec:
    """``conn-spec`` of a socket connection (``conn-type`` 1)."""

    socket_fd: int


@dataclass(slots=True, frozen=True)
class OpaqueSpec:
    """``conn-spec`` of a reserved ``conn-type`` (2..0xFFFF): its 8 raw bytes."""

    raw: bytes


ConnSpec = RingSpec | SocketSpec | OpaqueSpec


@dataclass(slots=True, frozen=True)
class ConnectionData:
    """CONNECTION_DATA: one connection and the bytes pending on it.

    ``in_data`` is read-but-unprocessed input, ``out_data`` the unwritten
    output (its first ``out_resp_len`` bytes being a partial response).
    ``unique_id`` is present exactly when ``fields`` has bit 0 set.
    """

    conn_id: int
    conn_type: int
    fields: int
    spec: ConnSpec
    in_data: bytes = b""
    out_data: bytes = b""
    out_resp_len: int = 0
    unique_id: int | None = None

    @property
    def is_ring(self) -> bool:
        return self.conn_type == CONN_TYPE_RING

    @property
    def is_socket(self) -> bool:
        return self.conn_type == CONN_TYPE_SOCKET


@dataclass(slots=True, frozen=True)
class WatchData:
    """WATCH_DATA: a watch of connection ``conn_id``."""

    conn_id: int
    wpath: str
    token: str


@dataclass(slots=True, frozen=True)
class WatchDataExtended:
    """WATCH_DATA_EXTENDED (version 2): a watch with a ``depth`` (0xFFFF = unlimited)."""

    conn_id: int
    wpath: str
    token: str
    depth: int = DEPTH_UNLIMITED

    @property
    def unlimited(self) -> bool:
        return self.depth == DEPTH_UNLIMITED


@dataclass(slots=True, frozen=True)
class TransactionData:
    """TRANSACTION_DATA: a transaction pending on connection ``conn_id``."""

    conn_id: int
    tx_id: int


@dataclass(slots=True, frozen=True)
class NodePerm:
    """A node permission specifier: letter ``perm``, ``flags``, ``domid``."""

    perm: str
    flags: int
    domid: int

    @property
    def stale(self) -> bool:
        """The stale flag (0x01): ignore this entry when checking permissions."""
        return bool(self.flags & PERM_FLAG_STALE)

    def __str__(self) -> str:
        """The SET_PERMS form, e.g. ``r5``."""
        return f"{self.perm}{self.domid}"


@dataclass(slots=True, frozen=True)
class NodeData:
    """NODE_DATA: a committed node (``conn_id`` 0) or a pending-transaction node.

    ``perms[0]`` is the owner and default permission.  A node deleted in a
    transaction has no permissions, ``access`` 0 and an empty value.
    """

    conn_id: int
    tx_id: int
    access: int
    perms: tuple[NodePerm, ...]
    path: str
    value: bytes

    @property
    def committed(self) -> bool:
        return self.conn_id == 0

    @property
    def deleted(self) -> bool:
        """True for a pending-transaction node that the transaction deleted."""
        return self.conn_id != 0 and not self.perms

    @property
    def owner(self) -> int | None:
        return self.perms[0].domid if self.perms else None


@dataclass(slots=True, frozen=True)
class QuotaValue:
    """One named quota value (0 = unlimited)."""

    name: str
    value: int


@dataclass(slots=True, frozen=True)
class GlobalQuotaData:
    """GLOBAL_QUOTA_DATA: per-domain default quota and global-only quota."""

    domain_quota: tuple[QuotaValue, ...]
    global_quota: tuple[QuotaValue, ...] = ()


@dataclass(slots=True, frozen=True)
class DomainData:
    """DOMAIN_DATA: a domain's ``features`` (version 2) and its quota."""

    domid: int
    features: int = 0
    quota: tuple[QuotaValue, ...] = ()


@dataclass(slots=True, frozen=True)
class UnknownRecord:
    """A record of a reserved type, kept raw so it survives a round trip."""

    type: int
    body: bytes


Record = (
    End
    | GlobalData
    | ConnectionData
    | WatchData
    | WatchDataExtended
    | TransactionData
    | NodeData
    | GlobalQuotaData
    | DomainData
    | UnknownRecord
)

#: A committed node (NODE_DATA with ``conn_id``, ``tx_id`` and ``access`` 0) as
#: bulk producers and consumers pass it: ``(path, perms, value)``.  See
#: :meth:`.reader.StreamReader.iter_node_runs` and
#: :meth:`.writer.StreamWriter.write_all`.
CommittedNode = tuple[str, tuple[NodePerm, ...], bytes]

#: Record class -> type number (UnknownRecord carries its own).
RECORD_TYPES: dict[type, RecordType] = {
    End: RecordType.END,
    GlobalData: RecordType.GLOBAL_DATA,
    ConnectionData: RecordType.CONNECTION_DATA,
    WatchData: RecordType.WATCH_DATA,
    TransactionData: RecordType.TRANSACTION_DATA,
    NodeData: RecordType.NODE_DATA,
    GlobalQuotaData: RecordType.GLOBAL_QUOTA_DATA,
    DomainData: RecordType.DOMAIN_DATA,
    WatchDataExtended: RecordType.WATCH_DATA_EXTENDED,
}


def record_type(record: Record) -> int:
    """The stream type number of ``record``."""
    if isinstance(record, UnknownRecord):
        return record.type
    return RECORD_TYPES[type(record)]


def type_name(rtype: int) -> str:
    """The spec's name of a type number, or ``UNKNOWN(n)`` (the one spelling everywhere)."""
    try:
        return RecordType(rtype).name
    except ValueError:
        return f"UNKNOWN({rtype})"
