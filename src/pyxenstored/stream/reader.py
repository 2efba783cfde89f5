"""Incremental reader of Xenstore migration streams: the framing.

Reads a stream from a path, a binary file object or an in-memory buffer,
record by record, in bounded chunks (never the whole file).  Accepts both
byte orders and versions 1 and 2, and everything the C daemon writes:

* ``len`` that counts the padding (C) or not (a ``len`` that is not a
  multiple of 8 is followed by padding up to the next 8-aligned offset);
* padding bytes that are not zero (kept, so a checker can report them);
* the C HEAD writer's WATCH_DATA_EXTENDED, whose ``len`` overstates the
  record by up to 8 bytes (see :mod:`.layout`): the next record is read where
  it really starts.

Every length is checked against the bytes that remain, so a truncated or
lying stream raises one :class:`StreamError`, never a low-level exception.

Layers: :meth:`StreamReader.iter_raw` does the framing and yields
:class:`RawRecord`; :mod:`.decode` turns one body into a record
(:func:`decode_record` / :func:`inspect_record`); iterating a
:class:`StreamReader` does both, and :meth:`StreamReader.iter_node_runs`
gives committed nodes in bulk.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from typing import IO, Union

from . import layout as L
from .decode import (
    LAYOUT_C_HEAD_WRITER,
    LAYOUT_C_READER,
    LAYOUT_QUIRK,
    LAYOUT_SPEC,
    QUIRK_WATCH_EXT_C_HEAD_WRITER,
    QUIRK_WATCH_EXT_C_READER,
    BodyError,
    DecodeInfo,
    RawRecord,
    StreamError,
    codec_for,
    decode_error,
    decode_record,
    inspect_record,
    parse_preamble,
    watch_ext_layouts,
)
from .records import (
    CommittedNode,
    NodeData,
    NodePerm,
    Record,
    RecordType,
    StreamHeader,
    WatchData,
)

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

#: Bytes read from a file at a time.
CHUNK_SIZE = 1 << 20


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
                self._take(L.PREAMBLE.size), allow_unknown_version=allow_unknown_version
            )
        except BaseException:
            self.close()
            raise
        self._codec = codec_for(self.header.big_endian)

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
                quirk = LAYOUT_QUIRK[layout]
                if layout == LAYOUT_C_HEAD_WRITER and pad == 0:
                    # C wrote fewer bytes than its len claims: the record
                    # really ends at the 8-aligned end of path and token.
                    _, plen, tlen = codec.watch.unpack_from(buf, start)
                    real = L.c_head_writer_extent(plen, tlen)
                    if real < length:
                        stop = start + real
        self._pos = stop + pad
        if rtype == RecordType.END:
            self._ended = True
        return index, offset, rtype, length, buf, start, stop, stop + pad, quirk

    def iter_raw(self) -> Iterator[RawRecord]:
        """Framed records, END included, without decoding their bodies."""
        self._begin()
        index = 0
        while True:
            _, offset, rtype, length, buf, start, stop, pad_end, quirk = self._frame_one(index)
            yield RawRecord(index, offset, rtype, length, buf[start:stop], buf[stop:pad_end], quirk)
            if rtype == RecordType.END:
                return
            index += 1

    def _decode_frame(
        self, index: int, offset: int, rtype: int, buf: bytes, start: int, stop: int
    ) -> Record:
        try:
            return self._codec.decode(rtype, buf, start, stop, self.header.version)[0]
        except (BodyError, struct.error, IndexError, UnicodeDecodeError) as exc:
            raise decode_error(exc, offset, index, rtype, start) from None

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
        perm_cache = codec.perm_cache
        decode_perms = codec.perms
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
                pos = self._pos = nxt
                index += 1
                yield NodeData(conn_id, tx_id, access, perms, path, buf[pe : pe + vlen])
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

        One piece: the two inner loops run once per node and per watch of a
        live-update restore, with everything they need in locals; split into
        functions they would cost a call per record.
        """
        self._begin()
        codec = self._codec
        unpack_node_record = codec.node_record.unpack_from
        unpack_watch_record = codec.watch_record.unpack_from
        perm_cache = codec.perm_cache
        decode_perms = codec.perms
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
                pos = self._pos = nxt
                index += 1
                yield WatchData(conn_id, wpath, token)
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
