"""Byte layouts of the migration stream: the one home of where each field sits.

The reader, the writer and the checker all take their structs from here.
Each record's fixed part is a ``struct`` format in the field order of the
tables of ``xenstore-migration.md``, without a byte order; a
:class:`Layout` (one per byte order, see :func:`layout_for`) compiles them
with ``<`` or ``>`` as the stream's ``flags`` bit 0 says.  Formats are plain
strings so that a codec can join a record header and a fixed part into one
struct where it reads or writes both at once.

Also here: the three WATCH_DATA_EXTENDED layouts found in the wild and how
to tell them apart from the bytes (:func:`watch_ext_fits`).
"""

from __future__ import annotations

from struct import Struct

#: The preamble: ident, version, flags -- big-endian whatever the records' order.
PREAMBLE = Struct(">8sII")
PREAMBLE_SIZE = 16

#: Record header: ``type``, ``len``.
RECORD_HEADER = "II"
RECORD_HEADER_SIZE = 8
#: Records start 8-aligned: ``len`` is followed by padding to a multiple of 8.
ALIGNMENT = 8

#: GLOBAL_DATA: ``rw-socket-fd``, ``evtchn-fd``.
GLOBAL_DATA = "ii"
GLOBAL_DATA_SIZE = 8

#: CONNECTION_DATA up to ``conn-spec``: ``conn-id``, ``conn-type``, ``fields``.
CONNECTION_HEAD = "IHH"
#: ``conn-spec`` of a shared ring: ``domid``, ``tdomid``, ``evtchn``.
RING_SPEC = "HHI"
#: ``conn-spec`` of a socket: ``socket-fd``, ``pad``.
SOCKET_SPEC = "iI"
CONN_SPEC_OFFSET = 8
CONN_SPEC_SIZE = 8
#: CONNECTION_DATA after ``conn-spec``: ``in-data-len``, ``out-resp-len``, ``out-data-len``.
CONNECTION_LENGTHS = "HHI"
#: Offset of the pending ``data`` (the fixed part's size).
CONNECTION_DATA_OFFSET = 24
#: ``unique-id``, 8-aligned after the pending data when ``fields`` bit 0 is set.
UNIQUE_ID = "Q"
UNIQUE_ID_SIZE = 8

#: WATCH_DATA: ``conn-id``, ``wpath-len``, ``token-len``; then wpath and token.
WATCH_DATA = "IHH"
WATCH_DATA_SIZE = 8
#: WATCH_DATA_EXTENDED: as WATCH_DATA, then ``depth`` and ``pad``; then wpath and token.
WATCH_DATA_EXTENDED = "IHHHH"
WATCH_DEPTH_OFFSET = 8
WATCH_PAD_OFFSET = 10
WATCH_DATA_EXTENDED_SIZE = 12

#: TRANSACTION_DATA: ``conn-id``, ``tx-id``.
TRANSACTION_DATA = "II"
TRANSACTION_DATA_SIZE = 8

#: NODE_DATA: ``conn-id``, ``tx-id``, ``path-len``, ``value-len``, ``access``,
#: ``perm-count``; then the permissions, the path and the value.
NODE_DATA = "IIHHHH"
NODE_DATA_SIZE = 16
#: Offset of ``perm-count`` (errors about the permission list point there).
NODE_PERM_COUNT_OFFSET = 14
#: A permission specifier: ``perm`` (letter), ``flags``, ``domid``.
NODE_PERM = "BBH"
NODE_PERM_SIZE = 4

#: GLOBAL_QUOTA_DATA: ``n-dom-quota``, ``n-glob-quota``; then values and names.
GLOBAL_QUOTA_DATA = "HH"
GLOBAL_QUOTA_DATA_SIZE = 4
#: DOMAIN_DATA: ``domain-id``, ``n-quota``, ``features``; then values and names.
DOMAIN_DATA = "HHI"
DOMAIN_DATA_SIZE = 8
#: One ``quota-val``.
QUOTA_VALUE = "I"
QUOTA_VALUE_SIZE = 4

# Views of the same bytes for the bulk paths (one unpack or pack per node):
#: A NODE_DATA record with its header, ``conn-id`` and ``tx-id`` as one u64
#: (0 for a committed node), ``access`` skipped, and the first permission
#: specifier as one u32 (compared whole: permission sets repeat).
NODE_RECORD_BULK = RECORD_HEADER + "QHH2xHI"
#: A committed NODE_DATA's header and fixed part (``conn-id``, ``tx-id`` and
#: ``access`` zero).
COMMITTED_NODE_RECORD = RECORD_HEADER + "8xHH2xH"


def padding(size: int) -> int:
    """Zero bytes that follow ``size`` bytes to reach the next multiple of 8."""
    return -size & (ALIGNMENT - 1)


def padded(size: int) -> int:
    """``size`` rounded up to a multiple of 8."""
    return (size + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


class Layout:
    """The structs of one byte order, compiled once (see :func:`layout_for`).

    Attributes are the fixed parts above; :meth:`struct` joins formats,
    :meth:`quota_values` and :meth:`perms` give the variable-count parts.
    """

    def __init__(self, big_endian: bool) -> None:
        self.big_endian = big_endian
        self.order = ">" if big_endian else "<"
        self._structs: dict[str, Struct] = {}
        s = self.struct
        self.header = s(RECORD_HEADER)
        self.global_data = s(GLOBAL_DATA)
        # conn-spec read as a ring's (a socket's is read again when it is one).
        self.connection = s(CONNECTION_HEAD, RING_SPEC, CONNECTION_LENGTHS)
        self.ring_spec = s(RING_SPEC)
        self.socket_spec = s(SOCKET_SPEC)
        self.unique_id = s(UNIQUE_ID)
        self.watch = s(WATCH_DATA)
        self.watch_ext = s(WATCH_DATA_EXTENDED)
        self.u16 = s("H")
        self.transaction = s(TRANSACTION_DATA)
        self.node = s(NODE_DATA)
        self.perm = s(NODE_PERM)
        self.global_quota = s(GLOBAL_QUOTA_DATA)
        self.domain = s(DOMAIN_DATA)

    def struct(self, *parts: str) -> Struct:
        """The fields of ``parts`` one after the other, in this byte order (cached)."""
        fmt = "".join(parts)
        s = self._structs.get(fmt)
        if s is None:
            s = Struct(self.order + fmt)
            if len(self._structs) < 1024:  # counts come from streams: keep it bounded
                self._structs[fmt] = s
        return s

    def quota_values(self, n: int) -> Struct:
        """``n`` quota values."""
        return self.struct(QUOTA_VALUE * n)

    def perms(self, n: int) -> Struct:
        """``n`` permission specifiers, as flat (letter, flags, domid) triples."""
        return self.struct(NODE_PERM * n)


_LAYOUTS = {False: Layout(False), True: Layout(True)}


def layout_for(big_endian: bool) -> Layout:
    """The shared :class:`Layout` of one byte order."""
    return _LAYOUTS[big_endian]


# --- WATCH_DATA_EXTENDED ------------------------------------------------------
#
# Three layouts exist.  The spec's: depth at 8, pad at 10, the strings at 12.
# The one the C daemon's reader expects (watch.c:read_state_watch_ext): depth
# at 8, the strings at 10, no pad.  The one its writer emits
# (watch.c:dump_state_watches): the non-extended fixed part only, so no depth,
# the strings at 8, and ``len`` counted for the spec layout -- up to 8 bytes
# more than it wrote, so the next record starts earlier than ``len`` says.
# docs/stream.md has the details.

WATCH_EXT_SPEC = "spec"
WATCH_EXT_C_READER = "c-reader"
WATCH_EXT_C_HEAD_WRITER = "c-head-writer"
#: Layout -> offset of wpath in the body, in the order a reader tries them.
WATCH_EXT_PATH_AT = {WATCH_EXT_SPEC: 12, WATCH_EXT_C_READER: 10, WATCH_EXT_C_HEAD_WRITER: 8}

# Bytes a watch path may start with: '/', '@' or a path character (xenstore.txt).
_PATH_START = frozenset(b"/@-_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def watch_ext_fits(buf: bytes, start: int, end: int, plen: int, tlen: int) -> list[str]:
    """Every WATCH_DATA_EXTENDED layout the body ``buf[start:end]`` fits, best first.

    ``plen`` and ``tlen`` are its ``wpath-len`` and ``token-len``.  A layout
    fits when wpath and token end with their NUL exactly where the lengths
    say, everything lies inside the record, and wpath has no other NUL and
    starts like a path -- so it has at least one character: xenstore.txt
    forbids the empty path, and a one-byte wpath (its NUL alone) fits no
    layout.  The spec layout also needs its pad to be zero.  More than one
    entry means the bytes are ambiguous; readers take the first.
    """
    if plen < 2 or tlen < 1:
        return []
    fits = []
    for name, off in WATCH_EXT_PATH_AT.items():
        data = start + off
        stop = data + plen + tlen
        if stop > end:
            continue
        if name == WATCH_EXT_SPEC and (buf[start + 10] or buf[start + 11]):
            continue
        if buf[data + plen - 1] != 0 or buf[stop - 1] != 0:
            continue
        if buf[data] not in _PATH_START or buf.find(0, data, data + plen - 1) >= 0:
            continue
        fits.append(name)
    return fits


def c_head_writer_extent(plen: int, tlen: int) -> int:
    """Bytes the C writer really wrote for a WATCH_DATA_EXTENDED body (padding included)."""
    return padded(WATCH_DATA_SIZE + plen + tlen)
