"""Incremental reader of Xenstore migration streams.

Reads a stream from a path, a binary file object or an in-memory buffer,
record by record, in bounded chunks (never the whole file).  Accepts both
byte orders and versions 1 and 2, and everything the C daemon writes
(digest §10.1, §10.10):

* ``len`` that counts the padding (C) or not (a ``len`` that is not a
  multiple of 8 is followed by padding up to the next 8-aligned offset);
* padding bytes that are not zero (kept, so a checker can report them);
* the three WATCH_DATA_EXTENDED layouts: the design document's, the C HEAD
  reader's (path at offset 10) and the C HEAD writer's broken one (no depth,
  ``len`` overstated by up to 8 bytes, digest §10.3.4).

Every length is checked against the bytes that remain, so a truncated or
lying stream raises one :class:`StreamError`, never a low-level exception.

Layers: :meth:`StreamReader.iter_raw` does the framing and yields
:class:`RawRecord`; :func:`decode_record` / :func:`inspect_record` turn one
body into a record; iterating a :class:`StreamReader` does both.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Union

from .records import (
    CONN_FIELD_UNIQUE_ID,
    CONN_TYPE_RING,
    CONN_TYPE_SOCKET,
    DEPTH_UNLIMITED,
    PREAMBLE_SIZE,
    STREAM_IDENT,
    SUPPORTED_VERSIONS,
    VERSION_1,
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
    StreamHeader,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    type_name,
)

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

#: Bytes read from a file at a time.
CHUNK_SIZE = 1 << 20

#: RawRecord.quirk values for WATCH_DATA_EXTENDED records not in the spec layout.
QUIRK_WATCH_EXT_C_READER = "watch-ext-c-reader-layout"
QUIRK_WATCH_EXT_C_HEAD_WRITER = "watch-ext-c-head-writer"

#: WATCH_DATA_EXTENDED layouts: name -> offset of the path in the body.
LAYOUT_SPEC = "spec"
LAYOUT_C_READER = "c-reader"
LAYOUT_C_HEAD_WRITER = "c-head-writer"
_LAYOUT_START = {LAYOUT_SPEC: 12, LAYOUT_C_READER: 10, LAYOUT_C_HEAD_WRITER: 8}
_LAYOUT_QUIRK = {
    LAYOUT_SPEC: None,
    LAYOUT_C_READER: QUIRK_WATCH_EXT_C_READER,
    LAYOUT_C_HEAD_WRITER: QUIRK_WATCH_EXT_C_HEAD_WRITER,
}

_PREAMBLE = struct.Struct(">8sII")


class StreamError(Exception):
    """A stream that cannot be read: where, in which record, what was expected.

    ``offset`` is the byte offset of the problem in the stream, ``record_index``
    the 0-based record number (None for the preamble), ``record_type`` the
    record's type number, ``expected`` what the reader needed, ``code`` a short
    stable name of the kind of problem (``truncated``, ``bad-ident``,
    ``bad-version``, ``missing-end``, ``missing-nul``, ``overrun``,
    ``bad-string``, ``io``).
    """

    def __init__(
        self,
        expected: str,
        *,
        offset: int | None = None,
        record_index: int | None = None,
        record_type: int | None = None,
        code: str = "invalid",
    ) -> None:
        self.expected = expected
        self.offset = offset
        self.record_index = record_index
        self.record_type = record_type
        self.code = code
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.offset is not None:
            where.append(f"offset {self.offset:#x}")
        if self.record_index is not None:
            what = f"record {self.record_index}"
            if self.record_type is not None:
                what += f" ({type_name(self.record_type)})"
            where.append(what)
        prefix = ", ".join(where)
        return f"{prefix}: {self.expected}" if prefix else self.expected

    def __str__(self) -> str:
        return self._text()


@dataclass(slots=True, frozen=True)
class RawRecord:
    """One framed record, not decoded.

    ``offset`` is the offset of its 8-byte header; ``length`` the ``len`` field
    as written; ``body`` the body bytes (``length`` bytes, except for a C HEAD
    writer WATCH_DATA_EXTENDED whose ``len`` overstates it: then the bytes
    really belonging to the record); ``padding`` the bytes skipped after the
    body to reach 8-byte alignment when ``length`` is not a multiple of 8;
    ``quirk`` names a recognised non-spec layout (``QUIRK_*``) or is None.
    """

    index: int
    offset: int
    type: int
    length: int
    body: bytes
    padding: bytes = b""
    quirk: str | None = None

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    @property
    def end_offset(self) -> int:
        """Offset just after this record (header of the next one)."""
        return self.offset + 8 + len(self.body) + len(self.padding)


@dataclass(slots=True, frozen=True)
class DecodeInfo:
    """A decoded record plus what the decoding noticed, for the checker.

    ``content_length``: bytes of the body used by the record's fields;
    ``slack``: the body bytes after them (padding counted in ``len``; must be
    zero); ``reserved``: names of reserved fields or inner padding found
    non-zero, or of fields the version says to ignore that were not zero;
    ``quirk``: as :attr:`RawRecord.quirk`.
    """

    record: Record
    content_length: int
    slack: bytes
    reserved: tuple[str, ...]
    quirk: str | None


class _BodyError(Exception):
    """Raised inside body decoders; turned into StreamError with the record's position."""

    def __init__(self, field_offset: int, expected: str, code: str) -> None:
        super().__init__(expected)
        self.field_offset = field_offset
        self.expected = expected
        self.code = code


_PERM_LETTER = tuple(chr(i) for i in range(256))


def _cstring(buf: bytes, start: int, length: int, end: int, what: str) -> str:
    """Decode a NUL-terminated string of ``length`` bytes (NUL included) at ``start``."""
    stop = start + length
    if length == 0:
        raise _BodyError(start, f"{what}: length 0, no room for its NUL terminator", "missing-nul")
    if stop > end:
        raise _BodyError(
            start,
            f"{what}: {length} bytes, only {max(end - start, 0)} remain in the record",
            "overrun",
        )
    if buf[stop - 1] != 0:
        raise _BodyError(stop - 1, f"{what}: NUL terminator at its last byte", "missing-nul")
    try:
        return buf[start : stop - 1].decode()
    except UnicodeDecodeError as exc:
        raise _BodyError(start + exc.start, f"{what}: valid UTF-8 text", "bad-string") from None


class _Codec:
    """Precompiled structs and body decoders for one byte order."""

    def __init__(self, big_endian: bool) -> None:
        e = ">" if big_endian else "<"
        self.big_endian = big_endian
        self.header = struct.Struct(e + "II")
        self.global_ = struct.Struct(e + "ii")
        self.conn = struct.Struct(e + "IHH8xHHI")
        self.ring = struct.Struct(e + "HHI")
        self.socket = struct.Struct(e + "iI")
        self.u64 = struct.Struct(e + "Q")
        self.watch = struct.Struct(e + "IHH")
        self.u16 = struct.Struct(e + "H")
        self.ta = struct.Struct(e + "II")
        self.node = struct.Struct(e + "IIHHHH")
        # Record header, NODE_DATA fixed part (conn-id and tx-id as one u64,
        # access skipped) and (if any) first permission entry in one (the
        # bulk path).
        self.node_record = struct.Struct(e + "IIQHH2xHI")
        # Record header and WATCH_DATA fixed part in one.
        self.watch_record = struct.Struct(e + "IIIHH")
        self.hh = struct.Struct(e + "HH")
        self.domain = struct.Struct(e + "HHI")
        self._prefix = e
        self._u32s: dict[int, struct.Struct] = {}
        self._perms: dict[bytes, tuple[NodePerm, ...]] = {}
        self.decoders: dict[int, Callable[[bytes, int, int, int], tuple[Record, int]]] = {
            RecordType.END: self.decode_end,
            RecordType.GLOBAL_DATA: self.decode_global,
            RecordType.CONNECTION_DATA: self.decode_connection,
            RecordType.WATCH_DATA: self.decode_watch,
            RecordType.TRANSACTION_DATA: self.decode_transaction,
            RecordType.NODE_DATA: self.decode_node,
            RecordType.GLOBAL_QUOTA_DATA: self.decode_global_quota,
            RecordType.DOMAIN_DATA: self.decode_domain,
            RecordType.WATCH_DATA_EXTENDED: self.decode_watch_ext,
        }

    # Each decoder takes (buf, start, end, version) for a body at buf[start:end]
    # and returns (record, content length).

    def _need(self, start: int, end: int, size: int, what: str) -> None:
        if end - start < size:
            raise _BodyError(
                start, f"{what}: {size} bytes, only {end - start} in the record", "overrun"
            )

    def u32s(self, n: int) -> struct.Struct:
        s = self._u32s.get(n)
        if s is None:
            s = self._u32s[n] = struct.Struct(f"{self._prefix}{n}I")
        return s

    def decode_end(self, buf: bytes, start: int, end: int, version: int) -> tuple[Record, int]:
        return End(), 0

    def decode_global(self, buf: bytes, start: int, end: int, version: int) -> tuple[Record, int]:
        self._need(start, end, 8, "GLOBAL_DATA fields")
        sock, evtchn = self.global_.unpack_from(buf, start)
        return GlobalData(sock, evtchn), 8

    def decode_connection(
        self, buf: bytes, start: int, end: int, version: int
    ) -> tuple[Record, int]:
        self._need(start, end, 24, "CONNECTION_DATA fixed part")
        conn_id, ctype, fields, in_len, resp_len, out_len = self.conn.unpack_from(buf, start)
        spec: RingSpec | SocketSpec | OpaqueSpec
        if ctype == CONN_TYPE_RING:
            spec = RingSpec(*self.ring.unpack_from(buf, start + 8))
        elif ctype == CONN_TYPE_SOCKET:
            spec = SocketSpec(self.socket.unpack_from(buf, start + 8)[0])
        else:
            spec = OpaqueSpec(buf[start + 8 : start + 16])
        data = start + 24
        data_end = data + in_len + out_len
        if data_end > end:
            raise _BodyError(
                start + 16,
                f"pending data: in-data-len {in_len} + out-data-len {out_len} bytes, "
                f"only {end - data} remain in the record",
                "overrun",
            )
        in_data = buf[data : data + in_len]
        out_data = buf[data + in_len : data_end]
        content = data_end - start
        unique_id = None
        if fields & CONN_FIELD_UNIQUE_ID:
            rel = (content + 7) & ~7
            if start + rel + 8 > end:
                raise _BodyError(
                    start + rel, "unique-id: 8 bytes after the 8-aligned pending data", "overrun"
                )
            unique_id = self.u64.unpack_from(buf, start + rel)[0]
            content = rel + 8
        return (
            ConnectionData(conn_id, ctype, fields, spec, in_data, out_data, resp_len, unique_id),
            content,
        )

    def decode_watch(self, buf: bytes, start: int, end: int, version: int) -> tuple[Record, int]:
        self._need(start, end, 8, "WATCH_DATA fixed part")
        conn_id, plen, tlen = self.watch.unpack_from(buf, start)
        wpath = _cstring(buf, start + 8, plen, end, "wpath")
        token = _cstring(buf, start + 8 + plen, tlen, end, "token")
        return WatchData(conn_id, wpath, token), 8 + plen + tlen

    def decode_watch_ext(
        self, buf: bytes, start: int, end: int, version: int
    ) -> tuple[Record, int]:
        self._need(start, end, 8, "WATCH_DATA_EXTENDED fixed part")
        conn_id, plen, tlen = self.watch.unpack_from(buf, start)
        layout = self.watch_ext_layout(buf, start, end)
        if layout == LAYOUT_C_HEAD_WRITER:
            depth = DEPTH_UNLIMITED  # the C HEAD writer drops the depth
        else:
            self._need(
                start,
                end,
                12 if layout != LAYOUT_C_READER else 10,
                "WATCH_DATA_EXTENDED fixed part",
            )
            depth = self.u16.unpack_from(buf, start + 8)[0]
        data = start + _LAYOUT_START[layout or LAYOUT_SPEC]
        wpath = _cstring(buf, data, plen, end, "wpath")
        token = _cstring(buf, data + plen, tlen, end, "token")
        return WatchDataExtended(conn_id, wpath, token, depth), data - start + plen + tlen

    def watch_ext_layouts(self, buf: bytes, start: int, end: int) -> list[str]:
        """All WATCH_DATA_EXTENDED layouts the body at buf[start:end] is consistent with.

        Digest §10.10: a layout fits when the path and the token both end with
        their NUL exactly where their lengths say, the path has no other NUL
        and starts like a path, and everything fits in the record.
        """
        if end - start < 8:
            return []
        _, plen, tlen = self.watch.unpack_from(buf, start)
        if plen < 2 or tlen < 1:
            return []
        fits = []
        for name, off in _LAYOUT_START.items():
            data = start + off
            stop = data + plen + tlen
            if stop > end:
                continue
            if name == LAYOUT_SPEC and (buf[start + 10] or buf[start + 11]):
                continue
            if buf[data + plen - 1] != 0 or buf[stop - 1] != 0:
                continue
            path = buf[data : data + plen - 1]
            if 0 in path or not _path_start(path[0]):
                continue
            fits.append(name)
        return fits

    def watch_ext_layout(self, buf: bytes, start: int, end: int) -> str | None:
        """The layout to decode with: the first that fits (spec, C reader, C HEAD writer)."""
        fits = self.watch_ext_layouts(buf, start, end)
        return fits[0] if fits else None

    def decode_transaction(
        self, buf: bytes, start: int, end: int, version: int
    ) -> tuple[Record, int]:
        self._need(start, end, 8, "TRANSACTION_DATA fields")
        conn_id, tx_id = self.ta.unpack_from(buf, start)
        return TransactionData(conn_id, tx_id), 8

    def decode_node(self, buf: bytes, start: int, end: int, version: int) -> tuple[Record, int]:
        if end - start < 16:
            self._need(start, end, 16, "NODE_DATA fixed part")
        conn_id, tx_id, plen, vlen, access, nperms = self.node.unpack_from(buf, start)
        p = start + 16 + 4 * nperms
        pe = p + plen
        ve = pe + vlen
        if ve > end or plen == 0 or buf[pe - 1] != 0:
            if p > end:
                raise _BodyError(
                    start + 14,
                    f"{nperms} permission entries, only {end - start - 16} bytes remain",
                    "overrun",
                )
            _cstring(buf, p, plen, end, "path")  # raises the precise error
            raise _BodyError(
                pe, f"value: {vlen} bytes, only {end - pe} remain in the record", "overrun"
            )
        raw_perms = buf[start + 16 : p]
        perms = self._perms.get(raw_perms)
        if perms is None:
            perms = self._decode_perms(raw_perms, nperms)
        try:
            path = buf[p : pe - 1].decode()
        except UnicodeDecodeError as exc:
            raise _BodyError(p + exc.start, "path: valid UTF-8 text", "bad-string") from None
        return NodeData(conn_id, tx_id, access, perms, path, buf[pe:ve]), ve - start

    def _decode_perms(self, raw: bytes, n: int) -> tuple[NodePerm, ...]:
        s = self._perm_struct(n)
        vals = s.unpack(raw)
        perms = tuple(
            NodePerm(_PERM_LETTER[vals[i]], vals[i + 1], vals[i + 2]) for i in range(0, 3 * n, 3)
        )
        if len(self._perms) > 4096:  # bounded cache: permission sets repeat a lot
            self._perms.clear()
        self._perms[raw] = perms
        return perms

    def _perm_struct(self, n: int) -> struct.Struct:
        key = -n - 1  # share the struct cache with u32s without colliding
        s = self._u32s.get(key)
        if s is None:
            s = self._u32s[key] = struct.Struct(self._prefix + "BBH" * n)
        return s

    def _quota(
        self, buf: bytes, pos: int, n: int, end: int, what: str
    ) -> tuple[list[QuotaValue], int]:
        if pos + 4 * n > end:
            raise _BodyError(
                pos, f"{what}: {n} quota values, only {end - pos} bytes remain", "overrun"
            )
        values = self.u32s(n).unpack_from(buf, pos)
        pos += 4 * n
        out = []
        for value in values:
            nul = buf.find(b"\0", pos, end)
            if nul < 0:
                raise _BodyError(pos, f"{what}: {n} NUL-terminated quota names", "missing-nul")
            try:
                name = buf[pos:nul].decode()
            except UnicodeDecodeError:
                raise _BodyError(
                    pos, f"{what}: quota name as valid UTF-8 text", "bad-string"
                ) from None
            out.append(QuotaValue(name, value))
            pos = nul + 1
        return out, pos

    def decode_global_quota(
        self, buf: bytes, start: int, end: int, version: int
    ) -> tuple[Record, int]:
        self._need(start, end, 4, "GLOBAL_QUOTA_DATA fixed part")
        n_dom, n_glob = self.hh.unpack_from(buf, start)
        vals, stop = self._quota(buf, start + 4, n_dom + n_glob, end, "GLOBAL_QUOTA_DATA")
        return GlobalQuotaData(tuple(vals[:n_dom]), tuple(vals[n_dom:])), stop - start

    def decode_domain(self, buf: bytes, start: int, end: int, version: int) -> tuple[Record, int]:
        self._need(start, end, 8, "DOMAIN_DATA fixed part")
        domid, n, features = self.domain.unpack_from(buf, start)
        if version <= VERSION_1:
            features = 0  # only valid in version 2; the spec says to ignore it
        vals, stop = self._quota(buf, start + 8, n, end, "DOMAIN_DATA")
        return DomainData(domid, features, tuple(vals)), stop - start

    def decode_unknown(self, rtype: int, buf: bytes, start: int, end: int) -> tuple[Record, int]:
        return UnknownRecord(rtype, buf[start:end]), end - start

    def decode(
        self, rtype: int, buf: bytes, start: int, end: int, version: int
    ) -> tuple[Record, int]:
        decoder = self.decoders.get(rtype)
        if decoder is None:
            return self.decode_unknown(rtype, buf, start, end)
        return decoder(buf, start, end, version)


def _path_start(byte: int) -> bool:
    """Could this byte open a watch path? ('/', '@' or a valid path character)."""
    return (
        byte in (0x2F, 0x40, 0x2D, 0x5F)
        or 0x30 <= byte <= 0x39
        or 0x41 <= byte <= 0x5A
        or 0x61 <= byte <= 0x7A
    )


_CODECS = {False: _Codec(False), True: _Codec(True)}

_RAW_SETTERS: tuple[Any, ...] = tuple(
    RawRecord.__dict__[name].__set__
    for name in ("index", "offset", "type", "length", "body", "padding", "quirk")
)

# Slot setters of NodeData: the reader's hot path builds nodes without going
# through the frozen dataclass __init__ (which costs one object.__setattr__
# call per field); the result is the same object.
_NODE_SETTERS: tuple[Any, ...] = tuple(
    NodeData.__dict__[name].__set__
    for name in ("conn_id", "tx_id", "access", "perms", "path", "value")
)

_WATCH_SETTERS: tuple[Any, ...] = tuple(
    WatchData.__dict__[name].__set__ for name in ("conn_id", "wpath", "token")
)


def codec_for(big_endian: bool) -> _Codec:
    """The shared decoder set for one byte order."""
    return _CODECS[big_endian]


def watch_ext_layouts(raw: RawRecord, header: StreamHeader) -> list[str]:
    """Every WATCH_DATA_EXTENDED layout (``LAYOUT_*``) this record's bytes fit.

    More than one entry means the layout is ambiguous (digest §10.10); the
    reader decodes with the first.
    """
    body = raw.body
    return _CODECS[header.big_endian].watch_ext_layouts(body, 0, len(body))


def _reserved_nonzero(
    record: Record, raw: RawRecord, header: StreamHeader, content: int
) -> tuple[str, ...]:
    """Reserved/pad fields and ignored-by-version fields of ``raw`` that are not zero."""
    body = raw.body
    out: list[str] = []
    if isinstance(record, ConnectionData):
        if isinstance(record.spec, SocketSpec) and any(body[12:16]):
            out.append("conn-spec pad")
        if record.fields & ~CONN_FIELD_UNIQUE_ID:
            out.append("fields (undefined bits)")
        if record.unique_id is not None:
            data_end = 24 + len(record.in_data) + len(record.out_data)
            if any(body[data_end : content - 8]):
                out.append("padding before unique-id")
    elif isinstance(record, WatchDataExtended):
        if raw.quirk is None and any(body[10:12]):
            out.append("pad")
    elif isinstance(record, DomainData) and header.version <= VERSION_1 and any(body[4:8]):
        out.append("features (not valid in version 1)")
    return tuple(out)


def _as_stream_error(exc: _BodyError, raw_offset: int, index: int, rtype: int) -> StreamError:
    return StreamError(
        exc.expected,
        offset=raw_offset + 8 + exc.field_offset,
        record_index=index,
        record_type=rtype,
        code=exc.code,
    )


def _decode_raw(raw: RawRecord, header: StreamHeader) -> tuple[Record, int]:
    body = raw.body
    try:
        return _CODECS[header.big_endian].decode(raw.type, body, 0, len(body), header.version)
    except _BodyError as exc:
        raise _as_stream_error(exc, raw.offset, raw.index, raw.type) from None
    except (struct.error, IndexError, UnicodeDecodeError) as exc:  # defensive: never leak these
        raise StreamError(
            f"a well-formed body ({exc})",
            offset=raw.offset,
            record_index=raw.index,
            record_type=raw.type,
            code="invalid",
        ) from None


def inspect_record(raw: RawRecord, header: StreamHeader) -> DecodeInfo:
    """Decode ``raw`` and report what is not canonical about it (see :class:`DecodeInfo`)."""
    record, content = _decode_raw(raw, header)
    reserved = _reserved_nonzero(record, raw, header, content)
    return DecodeInfo(record, content, raw.body[content:], reserved, raw.quirk)


def decode_record(raw: RawRecord, header: StreamHeader) -> Record:
    """Decode the body of one framed record."""
    return _decode_raw(raw, header)[0]


def parse_preamble(data: bytes, *, allow_unknown_version: bool = False) -> StreamHeader:
    """Check and decode the 16-byte preamble (ident, BE version, BE flags)."""
    if len(data) < PREAMBLE_SIZE:
        raise StreamError(
            f"a {PREAMBLE_SIZE}-byte preamble, the stream has only {len(data)} bytes",
            offset=len(data),
            code="truncated",
        )
    ident, version, flags = _PREAMBLE.unpack_from(data, 0)
    if ident != STREAM_IDENT:
        raise StreamError(f"ident {STREAM_IDENT!r}, found {ident!r}", offset=0, code="bad-ident")
    if version not in SUPPORTED_VERSIONS and not allow_unknown_version:
        raise StreamError(f"version 1 or 2, found {version}", offset=8, code="bad-version")
    return StreamHeader(version, flags)


class _BufferFile(io.RawIOBase):
    """A seekable read-only file over a bytearray or memoryview (copies only what is read)."""

    def __init__(self, data: bytearray | memoryview) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        data = bytes(self._view[self._pos : end])
        self._pos += len(data)
        return data


class StreamReader:
    """Reads one stream, once, incrementally.

    ``source`` is a path, a binary file object (read from its current
    position; not closed by the reader) or a bytes-like buffer.  The preamble
    is read at construction (:attr:`header`).  Iterate :meth:`iter_raw` for
    framed records or the reader itself for decoded records; both stop after
    END and raise :class:`StreamError` if the stream ends without one.
    """

    def __init__(self, source: Source, *, allow_unknown_version: bool = False) -> None:
        self._file: IO[bytes] | _BufferFile | None = None
        self._owns_file = False
        self._size: int | None = None  # total stream size when known
        self._buf = b""
        self._base = 0  # stream offset of self._buf[0]
        self._pos = 0  # read position in self._buf
        self._started = False
        self._ended = False
        if isinstance(source, bytes):
            self._buf = source  # already immutable: used in place, no copy
            self._size = len(source)
        elif isinstance(source, (bytearray, memoryview)):
            # read in chunks like a file, so a large mapped buffer is not copied whole
            self._file = _BufferFile(source)
        elif isinstance(source, (str, os.PathLike)):
            try:
                self._file = open(source, "rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise StreamError(f"a readable file ({exc.strerror})", code="io") from None
            self._owns_file = True
        else:
            self._file = source
        if self._file is not None:
            self._size = self._file_size(self._file)
        try:
            self.header = parse_preamble(
                self._take(PREAMBLE_SIZE), allow_unknown_version=allow_unknown_version
            )
        except BaseException:
            self.close()
            raise
        self._codec = _CODECS[self.header.big_endian]

    @staticmethod
    def _file_size(f: IO[bytes] | _BufferFile) -> int | None:
        try:
            if not f.seekable():
                return None
            here = f.tell()
            size = f.seek(0, io.SEEK_END)
            f.seek(here)
            return size - here
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Close the file if the reader opened it."""
        if self._owns_file and self._file is not None:
            self._file.close()
        self._file = None

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def offset(self) -> int:
        """Current stream offset (start of the next unread record)."""
        return self._base + self._pos

    def _read(self, n: int) -> bytes:
        assert self._file is not None
        try:
            return self._file.read(n)
        except OSError as exc:
            raise StreamError(
                f"readable data ({exc.strerror})", offset=self.offset, code="io"
            ) from None

    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes available from ``self._pos``; False at end of data."""
        avail = len(self._buf) - self._pos
        if avail >= need:
            return True
        if self._file is None:
            return False
        if self._size is not None and self._base + self._pos + need > self._size:
            return False  # known too short: do not read it all to find out
        parts = [self._buf[self._pos :]]
        self._base += self._pos
        self._pos = 0
        while avail < need:
            chunk = self._read(max(CHUNK_SIZE, min(need - avail, 4 * CHUNK_SIZE)))
            if not chunk:
                break
            parts.append(chunk)
            avail += len(chunk)
        self._buf = b"".join(parts)
        return avail >= need

    def _take(self, n: int) -> bytes:
        if self._size is not None:  # read what there is, even if short
            n = min(n, self._size - self._base - self._pos)
        self._fill(n)
        data = self._buf[self._pos : self._pos + n]
        self._pos += len(data)
        return data

    def _remaining_hint(self) -> int:
        """Bytes known to remain from the current position (lower bound for pipes)."""
        if self._size is not None:
            return self._size - self._base - self._pos
        return len(self._buf) - self._pos

    def _begin(self) -> None:
        if self._started:
            raise RuntimeError("a StreamReader can be iterated only once")
        self._started = True

    def _frame_one(self, index: int) -> tuple[int, int, int, int, bytes, int, int, int, str | None]:
        """Frame the record at the read position and step over it.

        Returns (index, offset, type, len, buf, body start, body end, padding
        end, quirk); the body is ``buf[start:end]``.
        """
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 8:
            if not self._fill(8):
                remain = self._remaining_hint()
                if remain == 0:
                    raise StreamError(
                        "an END record, the stream ends without one",
                        offset=self.offset,
                        record_index=index,
                        code="missing-end",
                    )
                raise StreamError(
                    f"an 8-byte record header, only {remain} bytes remain",
                    offset=self.offset,
                    record_index=index,
                    code="truncated",
                )
            buf = self._buf
            pos = self._pos
        offset = self._base + pos
        rtype, length = self._codec.header.unpack_from(buf, pos)
        start = pos + 8
        stop = start + length
        pad = -(offset + 8 + length) & 7
        if stop + pad > len(buf):
            if not self._fill(8 + length + pad):
                if rtype == RecordType.END:
                    # C stops at the END header and never reads its body: an
                    # END whose len overruns the file still ends the stream.
                    self._fill(1 << 16)
                    buf = self._buf
                    pos = self._pos
                    start = pos + 8
                    stop = min(start + length, len(buf))
                    self._pos = stop
                    self._ended = True
                    return index, offset, rtype, length, buf, start, stop, stop, None
                remain = self._remaining_hint() - 8
                what = (
                    f"{length} bytes of body"
                    if remain < length
                    else f"{pad} bytes of padding after the body"
                )
                raise StreamError(
                    f"{what}, only {remain} bytes remain",
                    offset=offset,
                    record_index=index,
                    record_type=rtype,
                    code="truncated",
                )
            buf = self._buf
            pos = self._pos
            start = pos + 8
            stop = start + length
        quirk = None
        if rtype == RecordType.WATCH_DATA_EXTENDED:
            codec = self._codec
            layout = codec.watch_ext_layout(buf, start, stop)
            if layout is not None and layout != LAYOUT_SPEC:
                quirk = _LAYOUT_QUIRK[layout]
                if layout == LAYOUT_C_HEAD_WRITER and pad == 0:
                    # C wrote fewer bytes than its len claims: the record
                    # really ends at the 8-aligned end of path and token.
                    _, plen, tlen = codec.watch.unpack_from(buf, start)
                    real = (8 + plen + tlen + 7) & ~7
                    if real < length:
                        stop = start + real
        self._pos = stop + pad
        if rtype == RecordType.END:
            self._ended = True
        return index, offset, rtype, length, buf, start, stop, stop + pad, quirk

    def iter_raw(self) -> Iterator[RawRecord]:
        """Framed records, END included, without decoding their bodies."""
        self._begin()
        new = object.__new__
        set_index, set_offset, set_type, set_length, set_body, set_padding, set_quirk = _RAW_SETTERS
        index = 0
        while True:
            _, offset, rtype, length, buf, start, stop, pad_end, quirk = self._frame_one(index)
            raw = new(RawRecord)  # same object as RawRecord(...), without the frozen __init__
            set_index(raw, index)
            set_offset(raw, offset)
            set_type(raw, rtype)
            set_length(raw, length)
            set_body(raw, buf[start:stop])
            set_padding(raw, buf[stop:pad_end])
            set_quirk(raw, quirk)
            yield raw
            if rtype == RecordType.END:
                return
            index += 1

    def _decode_frame(
        self, index: int, offset: int, rtype: int, buf: bytes, start: int, stop: int
    ) -> Record:
        try:
            return self._codec.decode(rtype, buf, start, stop, self.header.version)[0]
        except _BodyError as exc:
            raise StreamError(
                exc.expected,
                offset=offset + 8 + (exc.field_offset - start),
                record_index=index,
                record_type=rtype,
                code=exc.code,
            ) from None
        except (struct.error, IndexError, UnicodeDecodeError) as exc:  # defensive
            raise StreamError(
                f"a well-formed body ({exc})",
                offset=offset,
                record_index=index,
                record_type=rtype,
                code="invalid",
            ) from None

    def __iter__(self) -> Iterator[Record]:
        """Decoded records, END included.

        NODE_DATA records lying whole in the read buffer take an inlined path
        (they are the bulk of every stream); anything else, or any anomaly, goes
        through :meth:`_frame_one` and the generic decoders, which also produce
        the precise errors.
        """
        self._begin()
        codec = self._codec
        unpack_header = codec.header.unpack_from
        unpack_node = codec.node.unpack_from
        perm_cache = codec._perms
        decode_perms = codec._decode_perms
        new = object.__new__
        set_conn, set_tx, set_access, set_perms, set_path, set_value = _NODE_SETTERS
        index = 0
        while True:
            buf = self._buf
            pos = self._pos
            size = len(buf)
            base = self._base
            while pos + 24 <= size:
                rtype, length = unpack_header(buf, pos)
                if rtype != 5 or length < 16:
                    break
                start = pos + 8
                stop = start + length
                nxt = stop + (-(base + stop) & 7)
                if nxt > size:
                    break
                conn_id, tx_id, plen, vlen, access, nperms = unpack_node(buf, start)
                p = start + 16 + 4 * nperms
                pe = p + plen
                if pe + vlen > stop or plen == 0 or buf[pe - 1] != 0:
                    break
                raw_perms = buf[start + 16 : p]
                perms = perm_cache.get(raw_perms)
                if perms is None:
                    perms = decode_perms(raw_perms, nperms)
                try:
                    path = buf[p : pe - 1].decode()
                except UnicodeDecodeError:
                    break
                node = new(NodeData)
                set_conn(node, conn_id)
                set_tx(node, tx_id)
                set_access(node, access)
                set_perms(node, perms)
                set_path(node, path)
                set_value(node, buf[pe : pe + vlen])
                pos = self._pos = nxt
                index += 1
                yield node
            self._pos = pos
            _, offset, rtype, _length, buf, start, stop, _pad_end, _quirk = self._frame_one(index)
            yield self._decode_frame(index, offset, rtype, buf, start, stop)
            if rtype == RecordType.END:
                return
            index += 1

    def iter_node_runs(self) -> Iterator[Record | list[CommittedNode]]:
        """Like iterating the reader, but runs of committed nodes come as lists.

        A NODE_DATA record with ``conn_id`` and ``tx_id`` 0 lying whole in
        the read buffer comes as a ``(path, perms, value)`` tuple inside a
        list of consecutive such records (``access`` is left out: committed
        nodes have none); every other record, or any anomaly, comes as a
        record, exactly as iteration gives it (with its precise errors).
        For bulk consumers (a live-update restore): no record object and no
        generator step per node.  WATCH_DATA records lying whole in the
        buffer are decoded inline too (one per watch, many per stream).
        Records keep their stream order, END last.
        """
        self._begin()
        codec = self._codec
        unpack_node_record = codec.node_record.unpack_from
        unpack_watch_record = codec.watch_record.unpack_from
        perm_cache = codec._perms
        decode_perms = codec._decode_perms
        new = object.__new__
        set_conn, set_wpath, set_token = _WATCH_SETTERS
        single_perms: dict[int, tuple[NodePerm, ...]] = {}
        last_perm0 = -1  # (a u32 never is)
        last_perms: tuple[NodePerm, ...] = ()
        index = 0
        while True:
            buf = self._buf
            pos = self._pos
            size = len(buf)
            base = self._base
            run: list[CommittedNode] = []
            add = run.append
            while pos + 28 <= size:
                # conn-id and tx-id as one number (both 0 for a committed node).
                rtype, length, ids, plen, vlen, nperms, perm0 = unpack_node_record(buf, pos)
                # Records start 8-aligned; a len that counts its padding (as
                # every writer's here does) ends the record 8-aligned too.
                nxt = pos + 8 + length
                if rtype != 5 or length & 7 or nxt > size:
                    break
                if nperms == 1:
                    # The usual single entry, by its value (no bytes object).
                    p = pos + 28
                    if perm0 != last_perm0:
                        perms = single_perms.get(perm0)
                        if perms is None:
                            raw_perms = buf[pos + 24 : p]
                            perms = perm_cache.get(raw_perms) or decode_perms(raw_perms, 1)
                            single_perms[perm0] = perms
                        last_perm0 = perm0
                        last_perms = perms
                    else:
                        perms = last_perms
                    pe = p + plen
                    if ids or pe + vlen > nxt or plen == 0 or buf[pe - 1] != 0:
                        break
                else:
                    p = pos + 24 + 4 * nperms
                    pe = p + plen
                    if ids or pe + vlen > nxt or plen == 0 or buf[pe - 1] != 0:
                        break
                    raw_perms = buf[pos + 24 : p]
                    perms = perm_cache.get(raw_perms)
                    if perms is None:
                        perms = decode_perms(raw_perms, nperms)
                try:
                    path = buf[p : pe - 1].decode()
                except UnicodeDecodeError:
                    break
                add((path, perms, buf[pe : pe + vlen]))
                pos = nxt
            if run:
                index += len(run)
                self._pos = pos
                yield run
            # WATCH_DATA, checked as Codec.decode_watch does (else decoded by it).
            watches = pos
            while pos + 16 <= size:
                rtype, length, conn_id, plen, tlen = unpack_watch_record(buf, pos)
                if rtype != 3:
                    break
                start = pos + 16
                pe = start + plen
                te = pe + tlen
                stop = pos + 8 + length
                nxt = stop + (-(base + stop) & 7)
                if (
                    length < 8
                    or nxt > size
                    or te > stop
                    or plen == 0
                    or tlen == 0
                    or buf[pe - 1] != 0
                    or buf[te - 1] != 0
                ):
                    break
                try:
                    wpath = buf[start : pe - 1].decode()
                    token = buf[pe : te - 1].decode()
                except UnicodeDecodeError:
                    break
                watch = new(WatchData)  # WatchData(...) without the frozen __init__
                set_conn(watch, conn_id)
                set_wpath(watch, wpath)
                set_token(watch, token)
                pos = self._pos = nxt
                index += 1
                yield watch
            if pos != watches:
                continue  # node runs may follow
            _, offset, rtype, _length, buf, start, stop, _pad_end, _quirk = self._frame_one(index)
            yield self._decode_frame(index, offset, rtype, buf, start, stop)
            if rtype == RecordType.END:
                return
            index += 1

    def bytes_after_end(self) -> int:
        """How many bytes follow the END record (call after iterating to END)."""
        if not self._ended:
            raise RuntimeError("bytes_after_end() needs the END record to have been read")
        extra = len(self._buf) - self._pos
        if self._file is None:
            return extra
        if self._size is not None:
            return self._size - self._base - self._pos
        while chunk := self._read(CHUNK_SIZE):
            extra += len(chunk)
        return extra


def read_records(source: Source) -> tuple[StreamHeader, list[Record]]:
    """Read a whole stream: its header and all records, END included."""
    with StreamReader(source) as reader:
        return reader.header, list(reader)


def iter_records(source: Source) -> Iterator[Record]:
    """Decoded records of a stream, one at a time."""
    with StreamReader(source) as reader:
        yield from reader


__all__ = [
    "CHUNK_SIZE",
    "CommittedNode",
    "DecodeInfo",
    "LAYOUT_C_HEAD_WRITER",
    "LAYOUT_C_READER",
    "LAYOUT_SPEC",
    "QUIRK_WATCH_EXT_C_HEAD_WRITER",
    "QUIRK_WATCH_EXT_C_READER",
    "RawRecord",
    "StreamError",
    "StreamReader",
    "codec_for",
    "decode_record",
    "inspect_record",
    "iter_records",
    "parse_preamble",
    "read_records",
    "watch_ext_layouts",
]
