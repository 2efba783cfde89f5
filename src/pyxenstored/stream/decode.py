"""Record bodies -> record values, for one byte order at a time.

The framing (where a record starts and ends) is :mod:`.reader`'s; this
module turns one body into a record of :mod:`.records` and says what it
noticed on the way (:class:`DecodeInfo`, for the checker and ``dump``).
Byte positions come from :mod:`.layout`.  Every length inside a body is
checked against the record, so a lying body raises one :class:`StreamError`
naming the field, never a low-level exception.

Accepted beyond the spec, as the C daemon writes it: the three
WATCH_DATA_EXTENDED layouts (see :mod:`.layout`), DOMAIN_DATA ``features``
in a version-1 stream (ignored, as the spec says).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import layout as L
from .records import (
    CONN_FIELD_UNIQUE_ID,
    CONN_TYPE_RING,
    CONN_TYPE_SOCKET,
    DEPTH_UNLIMITED,
    STREAM_IDENT,
    SUPPORTED_VERSIONS,
    VERSION_1,
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

#: RawRecord.quirk values for WATCH_DATA_EXTENDED records not in the spec layout.
QUIRK_WATCH_EXT_C_READER = "watch-ext-c-reader-layout"
QUIRK_WATCH_EXT_C_HEAD_WRITER = "watch-ext-c-head-writer"
#: WATCH_DATA_EXTENDED layouts (names as in :mod:`.layout`).
LAYOUT_SPEC = L.WATCH_EXT_SPEC
LAYOUT_C_READER = L.WATCH_EXT_C_READER
LAYOUT_C_HEAD_WRITER = L.WATCH_EXT_C_HEAD_WRITER
LAYOUT_QUIRK = {
    LAYOUT_SPEC: None,
    LAYOUT_C_READER: QUIRK_WATCH_EXT_C_READER,
    LAYOUT_C_HEAD_WRITER: QUIRK_WATCH_EXT_C_HEAD_WRITER,
}


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
        return self.offset + L.RECORD_HEADER_SIZE + len(self.body) + len(self.padding)


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


class BodyError(Exception):
    """Raised inside body decoders; the framing turns it into a StreamError with the
    record's position (``field_offset`` is an index into the decoder's buffer)."""

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
        raise BodyError(start, f"{what}: length 0, no room for its NUL terminator", "missing-nul")
    if stop > end:
        raise BodyError(
            start,
            f"{what}: {length} bytes, only {max(end - start, 0)} remain in the record",
            "overrun",
        )
    if buf[stop - 1] != 0:
        raise BodyError(stop - 1, f"{what}: NUL terminator at its last byte", "missing-nul")
    try:
        return buf[start : stop - 1].decode()
    except UnicodeDecodeError as exc:
        raise BodyError(start + exc.start, f"{what}: valid UTF-8 text", "bad-string") from None


Decoder = Callable[[bytes, int, int, int], tuple[Record, int]]


class Codec:
    """Body decoders for one byte order (shared: see :func:`codec_for`).

    Each decoder takes ``(buf, start, end, version)`` for a body at
    ``buf[start:end]`` and returns ``(record, content length)``.
    """

    def __init__(self, big_endian: bool) -> None:
        lay = L.layout_for(big_endian)
        self.big_endian = big_endian
        self.layout = lay
        self.header = lay.header
        self.watch = lay.watch
        self.node = lay.node
        # The bulk paths' views (see layout.NODE_RECORD_BULK): a NODE_DATA
        # record, and a WATCH_DATA record with its header and fixed part.
        self.node_record = lay.struct(L.NODE_RECORD_BULK)
        self.watch_record = lay.struct(L.RECORD_HEADER, L.WATCH_DATA)
        # Permission sets repeat a lot: decoded once per distinct bytes.
        self.perm_cache: dict[bytes, tuple[NodePerm, ...]] = {}
        self.decoders: dict[int, Decoder] = {
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

    def decode(
        self, rtype: int, buf: bytes, start: int, end: int, version: int
    ) -> tuple[Record, int]:
        """The record of type ``rtype`` in ``buf[start:end]`` and the bytes its fields use."""
        decoder = self.decoders.get(rtype)
        if decoder is None:
            return UnknownRecord(rtype, buf[start:end]), end - start
        return decoder(buf, start, end, version)

    @staticmethod
    def _need(start: int, end: int, size: int, what: str) -> None:
        if end - start < size:
            raise BodyError(
                start, f"{what}: {size} bytes, only {end - start} in the record", "overrun"
            )

    def decode_end(self, buf: bytes, start: int, end: int, version: int) -> tuple[Record, int]:
        return End(), 0

    def decode_global(self, buf: bytes, start: int, end: int, version: int) -> tuple[Record, int]:
        self._need(start, end, L.GLOBAL_DATA_SIZE, "GLOBAL_DATA fields")
        sock, evtchn = self.layout.global_data.unpack_from(buf, start)
        return GlobalData(sock, evtchn), L.GLOBAL_DATA_SIZE

    def decode_connection(
        self, buf: bytes, start: int, end: int, version: int
    ) -> tuple[Record, int]:
        lay = self.layout
        self._need(start, end, L.CONNECTION_DATA_OFFSET, "CONNECTION_DATA fixed part")
        conn_id, ctype, fields, domid, tdomid, evtchn, in_len, resp_len, out_len = (
            lay.connection.unpack_from(buf, start)
        )
        spec: RingSpec | SocketSpec | OpaqueSpec
        spec_at = start + L.CONN_SPEC_OFFSET
        if ctype == CONN_TYPE_RING:
            spec = RingSpec(domid, tdomid, evtchn)
        elif ctype == CONN_TYPE_SOCKET:
            spec = SocketSpec(lay.socket_spec.unpack_from(buf, spec_at)[0])
        else:
            spec = OpaqueSpec(buf[spec_at : spec_at + L.CONN_SPEC_SIZE])
        data = start + L.CONNECTION_DATA_OFFSET
        data_end = data + in_len + out_len
        if data_end > end:
            raise BodyError(
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
            rel = L.padded(content)
            if start + rel + L.UNIQUE_ID_SIZE > end:
                raise BodyError(
                    start + rel, "unique-id: 8 bytes after the 8-aligned pending data", "overrun"
                )
            unique_id = lay.unique_id.unpack_from(buf, start + rel)[0]
            content = rel + L.UNIQUE_ID_SIZE
        return (
            ConnectionData(conn_id, ctype, fields, spec, in_data, out_data, resp_len, unique_id),
            content,
        )

    def decode_watch(self, buf: bytes, start: int, end: int, version: int) -> tuple[Record, int]:
        self._need(start, end, L.WATCH_DATA_SIZE, "WATCH_DATA fixed part")
        conn_id, plen, tlen = self.watch.unpack_from(buf, start)
        at = start + L.WATCH_DATA_SIZE
        wpath = _cstring(buf, at, plen, end, "wpath")
        token = _cstring(buf, at + plen, tlen, end, "token")
        return WatchData(conn_id, wpath, token), L.WATCH_DATA_SIZE + plen + tlen

    def watch_ext_layout(self, buf: bytes, start: int, end: int) -> str | None:
        """The WATCH_DATA_EXTENDED layout to decode ``buf[start:end]`` with (None: none fits)."""
        if end - start < L.WATCH_DATA_SIZE:
            return None
        _, plen, tlen = self.watch.unpack_from(buf, start)
        fits = L.watch_ext_fits(buf, start, end, plen, tlen)
        return fits[0] if fits else None

    def decode_watch_ext(
        self, buf: bytes, start: int, end: int, version: int
    ) -> tuple[Record, int]:
        self._need(start, end, L.WATCH_DATA_SIZE, "WATCH_DATA_EXTENDED fixed part")
        conn_id, plen, tlen = self.watch.unpack_from(buf, start)
        # No layout fits: decode as the spec's, for the precise error.
        layout = self.watch_ext_layout(buf, start, end) or LAYOUT_SPEC
        if layout == LAYOUT_C_HEAD_WRITER:
            depth = DEPTH_UNLIMITED  # the C HEAD writer drops the depth
        else:
            self._need(
                start,
                end,
                L.WATCH_EXT_PATH_AT[layout],
                "WATCH_DATA_EXTENDED fixed part",
            )
            depth = self.layout.u16.unpack_from(buf, start + L.WATCH_DEPTH_OFFSET)[0]
        data = start + L.WATCH_EXT_PATH_AT[layout]
        wpath = _cstring(buf, data, plen, end, "wpath")
        token = _cstring(buf, data + plen, tlen, end, "token")
        return WatchDataExtended(conn_id, wpath, token, depth), data - start + plen + tlen

    def decode_transaction(
        self, buf: bytes, start: int, end: int, version: int
    ) -> tuple[Record, int]:
        self._need(start, end, L.TRANSACTION_DATA_SIZE, "TRANSACTION_DATA fields")
        conn_id, tx_id = self.layout.transaction.unpack_from(buf, start)
        return TransactionData(conn_id, tx_id), L.TRANSACTION_DATA_SIZE

    def decode_node(self, buf: bytes, start: int, end: int, version: int) -> tuple[Record, int]:
        if end - start < L.NODE_DATA_SIZE:
            self._need(start, end, L.NODE_DATA_SIZE, "NODE_DATA fixed part")
        conn_id, tx_id, plen, vlen, access, nperms = self.node.unpack_from(buf, start)
        p = start + L.NODE_DATA_SIZE + L.NODE_PERM_SIZE * nperms
        pe = p + plen
        ve = pe + vlen
        if ve > end or plen == 0 or buf[pe - 1] != 0:
            if p > end:
                raise BodyError(
                    start + L.NODE_PERM_COUNT_OFFSET,
                    f"{nperms} permission entries, only {end - start - L.NODE_DATA_SIZE} "
                    "bytes remain",
                    "overrun",
                )
            _cstring(buf, p, plen, end, "path")  # raises the precise error
            raise BodyError(
                pe, f"value: {vlen} bytes, only {end - pe} remain in the record", "overrun"
            )
        perms = self.perms(buf[start + L.NODE_DATA_SIZE : p], nperms)
        try:
            path = buf[p : pe - 1].decode()
        except UnicodeDecodeError as exc:
            raise BodyError(p + exc.start, "path: valid UTF-8 text", "bad-string") from None
        return NodeData(conn_id, tx_id, access, perms, path, buf[pe:ve]), ve - start

    def perms(self, raw: bytes, n: int) -> tuple[NodePerm, ...]:
        """The ``n`` permission specifiers of ``raw`` (memoised by their bytes)."""
        perms = self.perm_cache.get(raw)
        if perms is not None:
            return perms
        vals = self.layout.perms(n).unpack(raw)
        perms = tuple(
            NodePerm(_PERM_LETTER[vals[i]], vals[i + 1], vals[i + 2]) for i in range(0, 3 * n, 3)
        )
        if len(self.perm_cache) > 4096:  # bounded
            self.perm_cache.clear()
        self.perm_cache[raw] = perms
        return perms

    def _quota(
        self, buf: bytes, pos: int, n: int, end: int, what: str
    ) -> tuple[list[QuotaValue], int]:
        if pos + L.QUOTA_VALUE_SIZE * n > end:
            raise BodyError(
                pos, f"{what}: {n} quota values, only {end - pos} bytes remain", "overrun"
            )
        values = self.layout.quota_values(n).unpack_from(buf, pos)
        pos += L.QUOTA_VALUE_SIZE * n
        out = []
        for value in values:
            nul = buf.find(b"\0", pos, end)
            if nul < 0:
                raise BodyError(pos, f"{what}: {n} NUL-terminated quota names", "missing-nul")
            try:
                name = buf[pos:nul].decode()
            except UnicodeDecodeError:
                raise BodyError(
                    pos, f"{what}: quota name as valid UTF-8 text", "bad-string"
                ) from None
            out.append(QuotaValue(name, value))
            pos = nul + 1
        return out, pos

    def decode_global_quota(
        self, buf: bytes, start: int, end: int, version: int
    ) -> tuple[Record, int]:
        self._need(start, end, L.GLOBAL_QUOTA_DATA_SIZE, "GLOBAL_QUOTA_DATA fixed part")
        n_dom, n_glob = self.layout.global_quota.unpack_from(buf, start)
        vals, stop = self._quota(
            buf, start + L.GLOBAL_QUOTA_DATA_SIZE, n_dom + n_glob, end, "GLOBAL_QUOTA_DATA"
        )
        return GlobalQuotaData(tuple(vals[:n_dom]), tuple(vals[n_dom:])), stop - start

    def decode_domain(self, buf: bytes, start: int, end: int, version: int) -> tuple[Record, int]:
        self._need(start, end, L.DOMAIN_DATA_SIZE, "DOMAIN_DATA fixed part")
        domid, n, features = self.layout.domain.unpack_from(buf, start)
        if version <= VERSION_1:
            features = 0  # only valid in version 2; the spec says to ignore it
        vals, stop = self._quota(buf, start + L.DOMAIN_DATA_SIZE, n, end, "DOMAIN_DATA")
        return DomainData(domid, features, tuple(vals)), stop - start


_CODECS = {False: Codec(False), True: Codec(True)}


def codec_for(big_endian: bool) -> Codec:
    """The shared decoder set for one byte order."""
    return _CODECS[big_endian]


def watch_ext_layouts(raw: RawRecord, header: StreamHeader) -> list[str]:
    """Every WATCH_DATA_EXTENDED layout (``LAYOUT_*``) this record's bytes fit.

    More than one entry means the layout is ambiguous; the reader decodes
    with the first (see :func:`.layout.watch_ext_fits`).
    """
    body = raw.body
    if len(body) < L.WATCH_DATA_SIZE:
        return []
    _, plen, tlen = _CODECS[header.big_endian].watch.unpack_from(body, 0)
    return L.watch_ext_fits(body, 0, len(body), plen, tlen)


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
            data_end = L.CONNECTION_DATA_OFFSET + len(record.in_data) + len(record.out_data)
            if any(body[data_end : content - L.UNIQUE_ID_SIZE]):
                out.append("padding before unique-id")
    elif isinstance(record, WatchDataExtended):
        if raw.quirk is None and any(body[L.WATCH_PAD_OFFSET : L.WATCH_DATA_EXTENDED_SIZE]):
            out.append("pad")
    elif isinstance(record, DomainData) and header.version <= VERSION_1 and any(body[4:8]):
        out.append("features (not valid in version 1)")
    return tuple(out)


def decode_error(
    exc: BodyError | struct.error | IndexError | UnicodeDecodeError,
    offset: int,
    index: int,
    rtype: int,
    body_start: int,
) -> StreamError:
    """The StreamError for a decoder's failure on the record at ``offset``.

    ``body_start`` is where the body starts in the buffer the decoder saw.
    Low-level exceptions should not happen (every length is checked); they
    become a generic StreamError all the same, never a traceback.
    """
    if isinstance(exc, BodyError):
        return StreamError(
            exc.expected,
            offset=offset + L.RECORD_HEADER_SIZE + (exc.field_offset - body_start),
            record_index=index,
            record_type=rtype,
            code=exc.code,
        )
    return StreamError(
        f"a well-formed body ({exc})",
        offset=offset,
        record_index=index,
        record_type=rtype,
        code="invalid",
    )


def _decode_raw(raw: RawRecord, header: StreamHeader) -> tuple[Record, int]:
    body = raw.body
    try:
        return _CODECS[header.big_endian].decode(raw.type, body, 0, len(body), header.version)
    except (BodyError, struct.error, IndexError, UnicodeDecodeError) as exc:
        raise decode_error(exc, raw.offset, raw.index, raw.type, 0) from None


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
    size = L.PREAMBLE.size
    if len(data) < size:
        raise StreamError(
            f"a {size}-byte preamble, the stream has only {len(data)} bytes",
            offset=len(data),
            code="truncated",
        )
    ident, version, flags = L.PREAMBLE.unpack_from(data, 0)
    if ident != STREAM_IDENT:
        raise StreamError(f"ident {STREAM_IDENT!r}, found {ident!r}", offset=0, code="bad-ident")
    if version not in SUPPORTED_VERSIONS and not allow_unknown_version:
        raise StreamError(f"version 1 or 2, found {version}", offset=8, code="bad-version")
    return StreamHeader(version, flags)


__all__ = [
    "BodyError",
    "Codec",
    "DecodeInfo",
    "LAYOUT_C_HEAD_WRITER",
    "LAYOUT_C_READER",
    "LAYOUT_QUIRK",
    "LAYOUT_SPEC",
    "QUIRK_WATCH_EXT_C_HEAD_WRITER",
    "QUIRK_WATCH_EXT_C_READER",
    "RawRecord",
    "StreamError",
    "codec_for",
    "decode_error",
    "decode_record",
    "inspect_record",
    "parse_preamble",
    "watch_ext_layouts",
]
