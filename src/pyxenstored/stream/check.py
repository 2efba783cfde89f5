"""The migration-stream checker: every rule of the spec, and what the C daemon's reader needs.

:func:`check_stream` walks a stream once and yields :class:`Diagnostic`
values, each naming a stable rule of :data:`RULES`, its severity, the record
number (0 = first record after the 16-byte header, ``None`` for the header)
and the byte offset of what is wrong.

The checker does its own framing instead of using ``StreamReader``: it must
go on after a record the decoder would reject (a bad string, a lying length)
and it must see things the decoder tolerates (padding contents, the C HEAD
watch defect).  It keeps going after an error wherever the framing still
holds and stops cleanly at truncation.  This module is the framing; the
rules for each record are :mod:`.check_records`', the rule table
:mod:`.rules`'.

Memory does not grow with the file: record bodies are looked at in place in
a sliding read buffer, and the only per-node state is what the committed-tree
rules need (see :class:`~.pathtrack.PathTracker`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import IO

from . import layout as L
from .check_records import RecordRules
from .records import FLAG_BIG_ENDIAN, FLAGS_RESERVED, STREAM_IDENT, SUPPORTED_VERSIONS, RecordType
from .rules import RULES, CheckSummary, Diagnostic, Severity

CHUNK = 1 << 20
#: Bytes between two calls of the ``progress`` callback.
PROGRESS_STEP = 1 << 24

Input = str | bytes | bytearray | memoryview | IO[bytes]


class _Source:
    """A sliding window over a file or a buffer; offsets are absolute."""

    __slots__ = ("f", "buf", "base", "eof")

    def __init__(self, source: Input) -> None:
        self.f: IO[bytes] | None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.f = None
            self.buf = bytes(source)
            self.eof = True
        else:
            self.f = source if not isinstance(source, str) else open(source, "rb")  # noqa: SIM115
            self.buf = b""
            self.eof = False
        self.base = 0

    def window(self, offset: int, n: int) -> tuple[bytes, int]:
        """(buffer, index of ``offset`` in it) holding at least ``n`` bytes if the file has them."""
        idx = offset - self.base
        buf = self.buf
        have = len(buf) - idx
        if have >= n or self.eof:
            return buf, idx
        assert self.f is not None
        parts = [buf[idx:]]
        want = max(CHUNK, n) - have
        while want > 0:
            # bounded reads: a lying len must not make us ask for gigabytes at once
            more = self.f.read(min(want, 16 * CHUNK))
            if not more:
                self.eof = True
                break
            parts.append(more)
            want -= len(more)
        self.buf = b"".join(parts)
        self.base = offset
        return self.buf, 0

    def close(self, owned: bool) -> None:
        if owned and self.f is not None:
            self.f.close()


def check_stream(
    source: Input,
    summary: CheckSummary | None = None,
    *,
    exact_limit: int = 200_000,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Diagnostic]:
    """Check a stream, yielding diagnostics as they are found.

    ``source`` is a path, a binary file or a buffer.  ``summary`` (optional)
    is filled in with totals.  ``progress`` is called now and then with the
    byte offset reached.  Raises ``OSError`` only if the file cannot be read.
    """
    summary = summary if summary is not None else CheckSummary()
    src = _Source(source)
    try:
        ck = RecordRules(summary, exact_limit)
        ok = _preamble(src, ck, summary)
        yield from _drain(ck)
        if ok:
            yield from _records(src, ck, summary, progress)
            yield from _drain(ck)
    finally:
        src.close(owned=isinstance(source, str))


def _preamble(src: _Source, ck: RecordRules, summary: CheckSummary) -> bool:
    """Check the preamble and take its byte order; False when nothing after it can be read."""
    size = L.PREAMBLE_SIZE
    buf, i = src.window(0, size)
    ck.rtype = None
    if len(buf) - i < size:
        ck.report("truncated", f"file has {len(buf) - i} bytes, the preamble needs {size}", 0)
        return False
    ident, version, flags = L.PREAMBLE.unpack_from(buf, i)
    if ident != STREAM_IDENT:
        ck.report("bad-ident", f"ident {ident!r}", 0)
        return False  # not a xenstore stream: nothing else can be trusted
    if version not in SUPPORTED_VERSIONS:
        ck.report("bad-version", f"version {version}", 8)
    if flags & FLAGS_RESERVED:
        ck.report("reserved-flags", f"flags {flags:#010x}", 12)
    summary.version = version
    summary.big_endian = bool(flags & FLAG_BIG_ENDIAN)
    ck.version = version
    ck.setup(summary.big_endian)
    return True


def _records(
    src: _Source,
    ck: RecordRules,
    summary: CheckSummary,
    progress: Callable[[int], None] | None,
) -> Iterator[Diagnostic]:
    """The framing loop: each record's header, its rules, its padding, up to END.

    One piece: it runs once per record, and its locals are the window into
    the file (splitting it would cost a call per record).
    """
    header = ck.layout.header
    handlers = ck.handlers
    n_handlers = len(handlers)
    out = ck.out
    offset = L.PREAMBLE_SIZE
    index = 0
    next_progress = PROGRESS_STEP
    buf = src.buf
    base = src.base
    while True:
        i = offset - base
        if i + 8 > len(buf):
            buf, i = src.window(offset, 8)
            base = src.base
        avail = len(buf) - i
        ck.index = index
        ck.offset = offset
        if avail < 8:
            _missing_end(ck, summary, offset, avail)
            break
        rtype, length = header.unpack_from(buf, i)
        ck.rtype = rtype
        padded = (length + 7) & ~7
        if i + 8 + padded > len(buf):
            buf, i = src.window(offset, 8 + padded)
            base = src.base
        summary.records = index + 1
        if (padded != length or i + 8 + length > len(buf)) and not _body_fits(
            ck, summary, len(buf) - i - 8, offset, length, padded
        ):
            break
        start = i + 8
        if rtype == RecordType.END:
            _end(src, ck, summary, index, offset + 8 + padded, length, header)
            break
        handler = handlers[rtype] if rtype < n_handlers else None
        if handler is None:
            ck.report("unknown-record-type", f"record type {rtype}")
            used = length
        else:
            used = handler(buf, start, length)
        if used < 0:
            # C HEAD watch defect: the record is shorter than its len says
            padded = -used
        elif used < length and buf.count(0, start + used, start + length) != length - used:
            ck.report(
                "nonzero-padding",
                f"{length - used} bytes after the fields (inside len) are not zero",
                offset + 8 + used,
            )
        if (
            padded != length
            and used >= 0
            and buf.count(0, start + length, start + padded) != padded - length
        ):
            ck.report("nonzero-padding", "padding after len is not zero", offset + 8 + length)
        offset += 8 + padded
        index += 1
        if out:
            yield from _drain(ck)
        if progress is not None and offset >= next_progress:
            progress(offset)
            next_progress = offset + PROGRESS_STEP
    summary.bytes_read = max(summary.bytes_read, offset)


def _missing_end(ck: RecordRules, summary: CheckSummary, offset: int, avail: int) -> None:
    """The file ends where a record header should be."""
    ck.rtype = None
    if avail:
        ck.report("truncated", f"{avail} bytes where a record header (8 bytes) should be", offset)
    ck.report("end-missing", "the stream ends without an END record", offset)
    summary.bytes_read = offset + avail


def _body_fits(
    ck: RecordRules, summary: CheckSummary, avail: int, offset: int, length: int, padded: int
) -> bool:
    """Whether the body and its padding are in the file (``avail`` bytes after the header).

    Reports a truncation (False) or a ``len`` that is not a multiple of 8.
    """
    if avail < length:
        ck.report("truncated", f"len {length} but only {avail} bytes remain")
        summary.bytes_read = offset + 8 + avail
        return False
    if avail < padded:
        ck.report(
            "truncated",
            f"padding after len {length} needs {padded - length} bytes, {avail - length} remain",
        )
        summary.bytes_read = offset + 8 + avail
        return False
    if padded != length:
        ck.report("unpadded-len", f"len {length} is not a multiple of 8")
    return True


def _end(
    src: _Source,
    ck: RecordRules,
    summary: CheckSummary,
    index: int,
    after: int,
    length: int,
    header: struct.Struct,
) -> None:
    """The END record: empty, and nothing after it."""
    if length:
        ck.report("end-nonempty", f"END with len {length}")
    summary.ended = True
    rest_buf, j = src.window(after, 8)
    rest = len(rest_buf) - j
    if rest:
        ck.index = index + 1
        ck.offset = after
        ck.rtype = None
        if rest >= 8 and header.unpack_from(rest_buf, j)[0] <= RecordType.WATCH_DATA_EXTENDED:
            ck.report("end-not-last", "a record header follows END", after)
        else:
            ck.report("data-after-end", "bytes follow END", after)
    summary.bytes_read = after + rest


def _drain(ck: RecordRules) -> Iterator[Diagnostic]:
    out = ck.out
    while out:
        items = list(out)
        out.clear()
        yield from items


def check_all(source: Input) -> tuple[list[Diagnostic], CheckSummary]:
    """Convenience: every diagnostic as a list, plus the summary."""
    summary = CheckSummary()
    diags = list(check_stream(source, summary))
    return diags, summary


__all__ = [
    "RULES",
    "CheckSummary",
    "Diagnostic",
    "Severity",
    "check_all",
    "check_stream",
]
