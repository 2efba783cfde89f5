"""``xenstore-stream``: open, check, compare and convert migration streams.

Sub-commands: ``dump`` (text, ``--tree`` like ``xenstore-ls [-f] [-p] PATH``,
``--json`` NDJSON), ``check``, ``convert``, ``diff``, ``stats``, ``build``
(NDJSON back to a stream), ``extract`` (one domain's migration stream) and
``synth`` (a realistic synthetic stream).  Every input may also be
oxenstored's state dump, recognised by its first line, where the command
has a meaning for it; ``-`` is stdin or stdout for every file argument.
Errors are one
line on stderr, never a traceback.  Exit codes: 0 success (``check``: clean,
``diff``: same), 1 problems found (``check``: errors, ``diff``: different),
2 the input could not be read or the request could not be done.

This module is the command line only (arguments, files, progress, exit
codes); what each command does is in :mod:`pyxenstored.stream`: the text
and tree forms in :mod:`~pyxenstored.stream.text`, the NDJSON encoding in
:mod:`~pyxenstored.stream.ndjson`, ``diff`` in :mod:`~pyxenstored.stream.diff`,
``stats`` in :mod:`~pyxenstored.stream.stats`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import IO, TextIO

from pyxenstored import __version__
from pyxenstored.cli.helptext import Section, epilog
from pyxenstored.stream import check as checker
from pyxenstored.stream import oxenstored as ox
from pyxenstored.stream import oxenstored_text as oxtext
from pyxenstored.stream.byteorder import swap_pending
from pyxenstored.stream.convert_bounded import BoundedConverter
from pyxenstored.stream.diff import StreamState, change_json, change_text, diff_changes, state_of
from pyxenstored.stream.diff_bounded import diff_streams_with
from pyxenstored.stream.ndjson import (
    header_format,
    header_from_json,
    header_to_json,
    is_header,
    record_from_json,
    record_to_json,
)
from pyxenstored.stream.oxenstored_extras import attach_extras, detach_extras
from pyxenstored.stream.reader import StreamError, StreamReader, decode_record
from pyxenstored.stream.records import End, NodeData, Record, StreamHeader
from pyxenstored.stream.stats import StreamStats
from pyxenstored.stream.synth import SynthConfig, write_synth
from pyxenstored.stream.text import (
    LsOptions,
    TreeNode,
    build_tree,
    header_line,
    in_tree_order,
    record_line,
    streamed_tree_lines,
    tree_lines,
)
from pyxenstored.stream.writer import TARGETS, StreamWriteError, StreamWriter

PROG = "xenstore-stream"
EXIT_OK = 0
EXIT_FOUND = 1
EXIT_FAIL = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report as one line (exit 2)."""


# --- progress -------------------------------------------------------------


class Progress:
    """A one-line progress indicator on stderr, shown only on a terminal after a second."""

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.total = total
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < 1.0 or now - self.last < 0.1:
            return
        self.last = now
        mb = done / 1e6
        if self.total:
            pct = min(100.0, 100.0 * done / self.total)
            width = 30
            fill = int(width * pct / 100)
            text = f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {pct:5.1f}% {mb:.0f} MB"
        else:
            text = f"\r{self.label} {mb:.0f} MB"
        self.stream.write(text)
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size if path != "-" else None
    except OSError:
        return None


# --- inputs and outputs: '-' is stdin or stdout for every file argument ----------

STREAM = "stream"
OXENSTORED = "oxenstored"
_SNIFF = 32  # enough of the start of a file to tell the formats apart


class _Replay(io.RawIOBase):
    """A pipe whose first bytes were read to learn its format, given back first."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def sniff(head: bytes) -> str:
    """The format of a file that starts with ``head``: an oxenstored dump or (else) a stream."""
    if head.startswith(b"$xenstored") or (head and ox.HEADER.startswith(head)):
        return OXENSTORED
    return STREAM


def _open_input(path: str) -> tuple[str, IO[bytes]]:
    """``(format, binary file at its start)`` of ``path`` ('-': stdin)."""
    if path == "-":
        raw: IO[bytes] = sys.stdin.buffer
    else:
        if not os.path.exists(path):
            raise CliError(f"{path}: no such file")
        if os.path.isdir(path):
            raise CliError(f"{path}: is a directory")
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    head = b""
    while len(head) < _SNIFF:
        more = raw.read(_SNIFF - len(head))
        if not more:
            break
        head += more
    if raw.seekable():
        raw.seek(0)
        return sniff(head), raw
    return sniff(head), io.BufferedReader(_Replay(head, raw))


def _reader(path: str, opened: tuple[str, IO[bytes]] | None = None) -> StreamReader:
    """A reader of the migration stream ``path`` (``opened``: what :func:`_open_input` gave)."""
    kind, f = opened or _open_input(path)
    if kind == OXENSTORED:
        if path != "-":
            f.close()
        raise CliError(
            f"{path}: an oxenstored dump; this command reads migration streams "
            f"(xenstore-stream convert {path} OUT makes one)"
        )
    return _OwningReader(f, path != "-")


class _OwningReader(StreamReader):
    """A reader that closes the file it was given when the file was opened for it."""

    def __init__(self, f: IO[bytes], owned: bool) -> None:
        self._given = f if owned else None
        try:
            super().__init__(f)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        super().close()
        if self._given is not None:
            self._given.close()
            self._given = None


def _load_dump(path: str, f: IO[bytes]) -> ox.OxDump:
    """The oxenstored dump in ``f``; a one-line error when it has no header."""
    with f if path != "-" else contextlib.nullcontext(f):
        data = f.read()
    try:
        return ox.parse_dump(data)
    except ox.OxenstoredFormatError as exc:
        raise CliError(f"{path}: not an oxenstored dump: {exc}") from None


def _read_quota(path: str | None) -> ox.OxenstoredQuota | None:
    """The quota settings of an ``oxenstored.conf`` (``--oxenstored-config``), None without one."""
    if path is None:
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        quota, problems = ox.parse_config(f.read())
    for problem in problems:
        print(f"{PROG}: warning: {path}: {problem}", file=sys.stderr)
    return quota


def _dump_records(
    path: str, dump: ox.OxDump, quota: ox.OxenstoredQuota | None, lossy: bool
) -> ox.StreamConversion:
    """The stream records of an oxenstored dump, its extras inside (``.oxenstored_extras``)."""
    try:
        conv = ox.dump_to_records(dump, quota=quota, lossy=lossy)
    except ox.OxenstoredConversionError as exc:
        raise CliError(f"{path}: {exc}; --lossy converts anyway") from None
    records = attach_extras(conv.records, conv.extras)
    return ox.StreamConversion(tuple(records), conv.extras, conv.dropped)


@contextlib.contextmanager
def _output(path: str, binary_stream: bool = True) -> Iterator[IO[bytes]]:
    """A binary file for ``path`` ('-': stdout), put in place only when all went well.

    A regular file is written beside (``PATH.tmp``) and renamed over ``path``
    at the end, so a failure leaves no half-written output; anything else
    that exists (``/dev/null``, a named pipe) is opened and written as it is.
    """
    if path == "-":
        if binary_stream and sys.stdout.isatty():
            raise CliError(
                "will not write a binary stream to a terminal; redirect it or name a file"
            )
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    if os.path.exists(path) and not os.path.isfile(path):
        # a device or a pipe (/dev/null, a FIFO): written in place, never replaced
        with open(path, "wb") as f:
            yield f
        return
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- sub-commands ---------------------------------------------------------------


def _iter_with_progress(reader: StreamReader, progress: Progress) -> Iterator[Record]:
    for n, record in enumerate(reader):
        if not n & 0xFFF:
            progress.update(reader.offset)
        yield record
    progress.done()


def _ls_options(args: argparse.Namespace) -> LsOptions:
    root = args.path or "/"
    if root != "/" and (not root.startswith("/") or root.endswith("/") or "//" in root):
        raise CliError(f"{root}: not a node path (absolute, no trailing '/')")
    return LsOptions(root=root, full_paths=args.full_paths, perms=args.perms)


def _check_dump_args(args: argparse.Namespace) -> None:
    if not args.tree and (args.path or args.full_paths or args.perms or args.silent):
        raise CliError("PATH, -f, -p and -s go with --tree")


def cmd_dump(args: argparse.Namespace, out: TextIO) -> int:
    _check_dump_args(args)
    kind, f = _open_input(args.file)
    if kind == OXENSTORED:
        return _dump_oxenstored(args, _load_dump(args.file, f), out)
    if args.tree:
        return _dump_tree(args, _reader(args.file, (kind, f)), out)
    progress = Progress("dump", _size_of(args.file))
    with _reader(args.file, (kind, f)) as reader:
        header = reader.header
        if args.json:
            out.write(json.dumps(header_to_json(header)) + "\n")
            for record in _iter_with_progress(reader, progress):
                out.write(json.dumps(record_to_json(record)) + "\n")
            return EXIT_OK
        out.write(header_line(header) + "\n")
        try:
            for raw in reader.iter_raw():
                if not raw.index & 0xFFF:
                    progress.update(raw.offset)
                record = decode_record(raw, header)
                note = f" [{raw.quirk}]" if raw.quirk else ""
                out.write(f"#{raw.index} @{raw.offset:#x} {record_line(record)}{note}\n")
        finally:
            progress.done()
    return EXIT_OK


class _SeenPath:
    """Passes records on and notes whether a committed node ``path`` went by."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen = path == "/"

    def watch(self, records: Iterable[Record]) -> Iterator[Record]:
        for r in records:
            if not self.seen and isinstance(r, NodeData) and not r.conn_id and r.path == self.path:
                self.seen = True
            yield r


def _dump_tree(args: argparse.Namespace, reader: StreamReader, out: TextIO) -> int:
    """``dump --tree``: like ``xenstore-ls [-f] [-p] PATH`` on the committed nodes."""
    options = _ls_options(args)
    path = args.file
    if path != "-":
        seen = _SeenPath(options.root)
        with reader:
            records = _iter_with_progress(reader, Progress("dump", _size_of(path)))
            ordered = in_tree_order(seen.watch(records))
            for _ in records:  # finish the pass: PATH may come after the order broke
                pass
        if ordered:
            # C writes the tree depth-first: print while reading, a second pass
            if not seen.seen:
                raise CliError(f"{path}: no node {options.root}")
            with _reader(path) as again:
                second = _iter_with_progress(again, Progress("dump", _size_of(path)))
                for line in streamed_tree_lines(second, options):
                    out.write(line + "\n")
            return EXIT_OK
        reader = _reader(path)  # read again, keep the whole tree this time
    with reader:
        nodes = build_tree(_iter_with_progress(reader, Progress("dump", _size_of(path))))
    _write_tree(path, nodes, options, out)
    return EXIT_OK


def _write_tree(path: str, nodes: dict[str, TreeNode], options: LsOptions, out: TextIO) -> None:
    if options.root not in nodes:
        raise CliError(f"{path}: no node {options.root}")
    for line in tree_lines(nodes, options):
        out.write(line + "\n")


def _dump_oxenstored(args: argparse.Namespace, dump: ox.OxDump, out: TextIO) -> int:
    if args.tree:
        _write_tree(args.file, oxtext.ls_tree(dump), _ls_options(args), out)
        return EXIT_OK
    if args.json:
        out.write(json.dumps(oxtext.header_to_json(dump)) + "\n")
        for line in dump.lines:
            out.write(json.dumps(oxtext.line_to_json(line)) + "\n")
        return EXIT_OK
    out.write(oxtext.header_text(dump) + "\n")
    for n, line in dump.numbered():
        out.write(f"line {n}: {oxtext.line_text(line)}\n")
    return EXIT_OK


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    path = args.file
    if path != "-" and not os.path.isfile(path):
        raise CliError(
            f"{path}: no such file" if not os.path.exists(path) else f"{path}: not a file"
        )
    kind, f = _open_input(path)
    if kind == OXENSTORED:
        return _check_oxenstored(args, f, out)
    progress = Progress("check", _size_of(path))
    summary = checker.CheckSummary()
    unreadable = False
    try:
        for diag in checker.check_stream(f, summary, progress=progress.update):
            if diag.rule in ("bad-ident",) or (diag.record is None and diag.rule == "truncated"):
                unreadable = True
            if args.json:
                out.write(json.dumps(diag.to_json()) + "\n")
            else:
                out.write(f"{path}: {diag}\n")
    finally:
        progress.done()
        if path != "-":
            f.close()
    status = (
        f"{path}: {summary.records} records, {summary.errors} errors, {summary.warnings} warnings"
    )
    if unreadable:
        print(f"{PROG}: {path}: not a readable xenstore stream", file=sys.stderr)
        return EXIT_FAIL
    if summary.errors:
        print(status, file=sys.stderr)
        return EXIT_FOUND
    if args.json:
        return EXIT_OK
    out.write(status + "\n")
    return EXIT_OK


def _check_oxenstored(args: argparse.Namespace, f: IO[bytes], out: TextIO) -> int:
    """``check`` of an oxenstored dump: its rules (``oxenstored_check.RULES``), by line."""
    path = args.file
    with f if path != "-" else contextlib.nullcontext(f):
        data = f.read()
    diags = ox.check_dump(data, _read_quota(args.oxenstored_config))
    errors = sum(d.severity is checker.Severity.ERROR for d in diags)
    for d in diags:
        if args.json:
            obj = {"rule": d.rule, "severity": str(d.severity), "line": d.line}
            out.write(json.dumps({**obj, "message": d.message}) + "\n")
        else:
            out.write(f"{path}: {d}\n")
    if any(d.rule == "bad-header" for d in diags):
        print(f"{PROG}: {path}: not a readable oxenstored dump", file=sys.stderr)
        return EXIT_FAIL
    lines = data.count(b"\n") + (not data.endswith(b"\n"))
    status = (
        f"{path}: oxenstored dump, {lines} lines, {errors} errors, {len(diags) - errors} warnings"
    )
    if errors:
        print(status, file=sys.stderr)
        return EXIT_FOUND
    if not args.json:
        out.write(status + "\n")
    return EXIT_OK


def _say_dropped(dropped: Iterable[str]) -> None:
    for what in dropped:
        print(f"{PROG}: dropped: {what}", file=sys.stderr)


def cmd_convert(args: argparse.Namespace, out: TextIO) -> int:
    kind, f = _open_input(args.input)
    if kind == OXENSTORED:
        dump = _load_dump(args.input, f)
        if args.to == OXENSTORED:
            with _output(args.output, binary_stream=False) as dest:
                dest.write(ox.format_dump(dump))
            return EXIT_OK
        conv = _dump_records(args.input, dump, _read_quota(args.oxenstored_config), args.lossy)
        _say_dropped(conv.dropped)
        _write_stream(args, StreamHeader(2, 0), conv.records)
        return EXIT_OK
    with _reader(args.input, (kind, f)) as reader:
        if args.to == OXENSTORED:
            return _convert_to_oxenstored(args, reader.header, list(reader))
        # Read while writing: bounded memory (stream.convert_bounded).
        _write_stream(args, reader.header, reader)
    return EXIT_OK


def _write_stream(
    args: argparse.Namespace, header: StreamHeader, records: Iterable[Record]
) -> None:
    version = args.version
    if version is None:
        version = 1 if args.target == "c-4.17" else header.version
    big = header.big_endian if args.endian == "same" else args.endian == "big"
    converter = BoundedConverter(
        version=version,
        target=args.target,
        lossy=args.lossy,
        src_big_endian=header.big_endian,
        big_endian=big,
        new_file=tempfile.TemporaryFile,
        on_drop=lambda what: _say_dropped([what]),
    )
    with (
        _output(args.output) as dest,
        StreamWriter(dest, version=version, big_endian=big, target=args.target) as writer,
    ):
        for record in converter.convert(records):
            writer.write(record)


def _convert_to_oxenstored(
    args: argparse.Namespace, header: StreamHeader, records: list[Record]
) -> int:
    if header.big_endian:
        records = [swap_pending(r, True) for r in records]
    records, extras = detach_extras(records)
    try:
        conv = ox.records_to_dump(records, extras=extras, lossy=True)
    except ox.OxenstoredConversionError as exc:  # only when lossy is False
        raise CliError(str(exc)) from None
    dropped = list(conv.dropped)
    if conv.quota is not None and args.oxenstored_config is None:
        dropped.append("quota settings (GLOBAL_QUOTA_DATA): --oxenstored-config FILE keeps them")
    if dropped and not args.lossy:
        shown = "; ".join(dropped[:8]) + (
            f" (and {len(dropped) - 8} more)" if len(dropped) > 8 else ""
        )
        raise CliError(
            f"converting to an oxenstored dump would drop: {shown}; --lossy converts anyway"
        )
    _say_dropped(dropped)
    with _output(args.output, binary_stream=False) as dest:
        dest.write(ox.format_dump(conv.dump))
    if conv.quota is not None and args.oxenstored_config is not None:
        with _output(args.oxenstored_config, binary_stream=False) as dest:
            dest.write(ox.format_config(conv.quota).encode())
    return EXIT_OK


def load_state(path: str) -> StreamState:
    """The semantic content of the stream or oxenstored dump in ``path`` (see :mod:`~pyxenstored.stream.diff`)."""
    kind, f = _open_input(path)
    if kind == OXENSTORED:
        # as oxenstored would load it: what it skips is not there
        return state_of(_dump_records(path, _load_dump(path, f), None, lossy=True).records, False)
    progress = Progress(f"read {path}", _size_of(path))
    with _reader(path, (kind, f)) as reader:
        return state_of(_iter_with_progress(reader, progress), reader.header.big_endian)


def _diff_side(path: str, stack: contextlib.ExitStack) -> tuple[Iterable[Record], bool]:
    """One side of ``diff``: its records and byte order, a stream read as it goes."""
    kind, f = _open_input(path)
    if kind == OXENSTORED:
        # as oxenstored would load it: what it skips is not there
        return _dump_records(path, _load_dump(path, f), None, lossy=True).records, False
    reader = stack.enter_context(_reader(path, (kind, f)))
    progress = Progress(f"read {path}", _size_of(path))
    return _iter_with_progress(reader, progress), reader.header.big_endian


def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    if args.a == "-" and args.b == "-":
        raise CliError("only one side of diff can be '-' (stdin)")
    different = False
    with contextlib.ExitStack() as stack:
        a, a_big = _diff_side(args.a, stack)
        b, b_big = _diff_side(args.b, stack)
        # Bounded memory: both sides spill to temporary files (stream.diff_bounded).
        changes = diff_streams_with(diff_changes, a, a_big, b, b_big, tempfile.TemporaryFile)
        for change in changes:
            different = True
            text = json.dumps(change_json(change)) if args.json else change_text(change)
            out.write(text + "\n")
    return EXIT_FOUND if different else EXIT_OK


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    stats = StreamStats(args.top)
    progress = Progress("stats", _size_of(args.file))
    with _reader(args.file) as reader:
        for r in _iter_with_progress(reader, progress):
            stats.add(r)
        size = reader.offset
        header = reader.header
    if args.json:
        out.write(json.dumps(stats.to_json(header, size)) + "\n")
        return EXIT_OK
    for line in stats.lines(header, size):
        out.write(line + "\n")
    return EXIT_OK


def cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    src: IO[str] = sys.stdin if args.ndjson == "-" else open(args.ndjson, encoding="utf-8")  # noqa: SIM115
    with src:
        lines = enumerate((line for line in src), start=1)
        lineno, first = _next_json(lines, args.ndjson)
        if not is_header(first):
            raise CliError(
                f"{args.ndjson}:{lineno}: the first line must be the HEADER object "
                '(e.g. {"type": "HEADER", "format": 2, "version": 2, "flags": 0})'
            )
        assert isinstance(first, dict)
        try:
            fmt = header_format(first)
            if first.get("kind") == oxtext.KIND:
                return _build_oxenstored(args, first, lines)
            header = header_from_json({k: v for k, v in first.items() if k != "format"})
        except ValueError as exc:
            raise CliError(f"{args.ndjson}:{lineno}: {exc}") from None
        if header.reserved_flags:
            raise CliError(f"{args.ndjson}:{lineno}: flags {header.flags:#x} has reserved bits set")
        with (
            _output(args.output) as dest,
            StreamWriter(dest, version=header.version, big_endian=header.big_endian) as writer,
        ):
            ended = False
            for lineno, line in lines:
                if not line.strip():
                    continue
                try:
                    record = record_from_json(json.loads(line), fmt)
                    writer.write(record)
                except (ValueError, StreamWriteError) as exc:
                    raise CliError(f"{args.ndjson}:{lineno}: {_one_line(exc)}") from None
                ended = isinstance(record, End)
            if not ended:  # documented default: the END record closes the stream
                writer.write(End())
    return EXIT_OK


def _build_oxenstored(
    args: argparse.Namespace, first: dict[str, object], lines: Iterator[tuple[int, str]]
) -> int:
    """``build`` of an oxenstored dump from ``dump --json`` of one."""
    final = first.get("final-newline", True)
    if not isinstance(final, bool):
        raise ValueError("HEADER: final-newline must be true or false")
    dump_lines = []
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            dump_lines.append(oxtext.line_from_json(json.loads(line)))
        except ValueError as exc:
            raise CliError(f"{args.ndjson}:{lineno}: {_one_line(exc)}") from None
    with _output(args.output, binary_stream=False) as dest:
        dest.write(ox.format_dump(ox.OxDump(tuple(dump_lines), final)))
    return EXIT_OK


def _next_json(lines: Iterator[tuple[int, str]], name: str) -> tuple[int, object]:
    for lineno, line in lines:
        if line.strip():
            try:
                return lineno, json.loads(line)
            except ValueError as exc:
                raise CliError(f"{name}:{lineno}: {exc}") from None
    raise CliError(f"{name}: empty NDJSON input")


def cmd_extract(args: argparse.Namespace, out: TextIO) -> int:
    """One domain's migration stream cut out of a full stream (``migrate.domain``)."""
    from pyxenstored.migrate.domain import DomainMigrationError, extract_domain

    with _reader(args.file) as reader:
        big = reader.header.big_endian
        try:
            records = extract_domain(reader, args.domain)
        except DomainMigrationError as exc:
            raise CliError(f"{args.file}: {exc}") from None
    with _output(args.output) as dest, StreamWriter(dest, version=2, big_endian=big) as writer:
        writer.write_all(records)
    print(f"{args.output}: domain {args.domain}, {len(records)} records", file=sys.stderr)
    return EXIT_OK


def cmd_synth(args: argparse.Namespace, out: TextIO) -> int:
    cfg = SynthConfig(
        domains=args.domains,
        seed=args.seed,
        version=args.version,
        vifs=args.vifs,
        vbds=args.vbds,
        transactions=not args.no_transactions,
    )
    with _output(args.output) as dest:
        count = write_synth(dest, cfg, big_endian=args.endian == "big")  # type: ignore[arg-type]
        size = dest.tell() if dest.seekable() else None
    where = f", {size} bytes" if size is not None else ""
    print(f"{args.output}: {count} records{where}", file=sys.stderr)
    return EXIT_OK


# --- argument parsing ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Xenstore migration stream toolkit: read, check, compare, convert and\n"
        "write the state dumps of live update and domain migration.",
        epilog=epilog(exit_status(None), note=f"Each command's options: {PROG} COMMAND --help."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__}",
        help="print the program's version (a stream's version: convert/synth --stream-version)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    d = sub.add_parser("dump", help="print the records, the node tree or NDJSON")
    d.add_argument("file", help="stream file ('-' for stdin)")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--tree", action="store_true", help="committed nodes like 'xenstore-ls -p /'")
    g.add_argument("--json", action="store_true", help="NDJSON, one object per record")
    _tree_options(d)
    d.set_defaults(func=cmd_dump)

    c = sub.add_parser("check", help="check against the spec and the C daemon's rules")
    c.add_argument("file", help="stream file ('-' for stdin)")
    c.add_argument("--json", action="store_true", help="one JSON diagnostic per line")
    c.add_argument(
        "--oxenstored-config",
        metavar="CONF",
        help="oxenstored dump: check it against the quota of this oxenstored.conf",
    )
    c.set_defaults(func=cmd_check)

    v = sub.add_parser("convert", help="change version, byte order or target layout")
    v.add_argument("input", help="stream file ('-' for stdin)")
    v.add_argument("output", help="the converted stream ('-' for stdout)")
    _convert_options(v)
    v.set_defaults(func=cmd_convert)

    f = sub.add_parser("diff", help="semantic difference of two streams")
    f.add_argument("a", help="the first stream or oxenstored dump ('-' for stdin)")
    f.add_argument("b", help="the second stream or oxenstored dump ('-' for stdin)")
    f.add_argument("--json", action="store_true", help="one JSON object per difference")
    f.set_defaults(func=cmd_diff)

    s = sub.add_parser("stats", help="counts, per-domain usage, largest nodes, quota")
    s.add_argument("file", help="stream file ('-' for stdin)")
    s.add_argument(
        "--top",
        type=int,
        default=10,
        metavar="N",
        help="how many largest nodes to list (default 10)",
    )
    s.add_argument("--json", action="store_true", help="the figures as one JSON object")
    s.set_defaults(func=cmd_stats)

    b = sub.add_parser("build", help="write a stream from 'dump --json' output")
    b.add_argument("ndjson", help="NDJSON file ('-' for stdin)")
    b.add_argument("output", help="the stream to write")
    b.set_defaults(func=cmd_build)

    e = sub.add_parser("extract", help="cut one domain's migration stream out of a dump")
    e.add_argument("file", help="stream file ('-' for stdin)")
    e.add_argument("--domain", type=int, required=True, metavar="N", help="the domain's domid")
    e.add_argument("output", help="the domain's migration stream to write")
    e.set_defaults(func=cmd_extract)

    y = sub.add_parser("synth", help="write a realistic synthetic stream")
    y.add_argument("output", help="the stream to write")
    _synth_options(y)
    y.set_defaults(func=cmd_synth)
    _command_help(sub.choices, {action.dest: action.help for action in sub._choices_actions})
    return p


def _tree_options(d: argparse.ArgumentParser) -> None:
    """The options of ``dump --tree``, as ``xenstore-ls`` has them."""
    d.add_argument("path", nargs="?", help="with --tree: list the nodes under PATH (default /)")
    d.add_argument(
        "-f",
        dest="full_paths",
        action="store_true",
        help="with --tree: full paths (xenstore-ls -f)",
    )
    d.add_argument(
        "-p", dest="perms", action="store_true", help="with --tree: permissions (xenstore-ls -p)"
    )
    d.add_argument(
        "-s",
        dest="silent",
        action="store_true",
        help="with --tree: accepted and ignored, as xenstore-ls does since Xen 4.15",
    )


def _convert_options(v: argparse.ArgumentParser) -> None:
    """The options of ``convert`` (besides its files)."""
    v.add_argument(
        "--stream-version",
        "--version",
        dest="version",
        type=int,
        choices=(1, 2),
        help="the output's stream version (default: the input's; 1 for c-4.17); "
        "--version is the old spelling",
    )
    v.add_argument(
        "--endian",
        choices=("little", "big", "same"),
        default="same",
        help="the output's byte order (default: same as the input)",
    )
    v.add_argument(
        "--target",
        choices=TARGETS,
        default="spec",
        help="whose layout to write: the spec's, C master's or C 4.17's (default: spec)",
    )
    v.add_argument(
        "--lossy", action="store_true", help="drop what the output cannot carry, and say what"
    )
    v.add_argument(
        "--to",
        choices=(STREAM, OXENSTORED),
        default=STREAM,
        help="output format: a migration stream (default) or an oxenstored dump",
    )
    v.add_argument(
        "--oxenstored-config",
        metavar="CONF",
        help="oxenstored.conf: its quota into the stream (from a dump), "
        "or written there (--to oxenstored)",
    )


def _synth_options(y: argparse.ArgumentParser) -> None:
    """The options of ``synth`` (besides its output file)."""
    y.add_argument(
        "--domains",
        type=int,
        required=True,
        metavar="N",
        help="how many guest domains (1..N) besides dom0 (required)",
    )
    y.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="random seed: the same seed writes the same stream (default 0)",
    )
    y.add_argument(
        "--stream-version",
        "--version",
        dest="version",
        type=int,
        choices=(1, 2),
        default=2,
        help="the stream version (default 2); --version is the old spelling",
    )
    y.add_argument(
        "--endian",
        choices=("little", "big"),
        default="little",
        help="byte order (default little)",
    )
    y.add_argument(
        "--vifs", type=int, default=1, metavar="K", help="network devices per guest (default 1)"
    )
    y.add_argument("--vbds", type=int, default=1, metavar="K", help="disks per guest (default 1)")
    y.add_argument("--no-transactions", action="store_true", help="no pending transaction")


def _command_help(
    commands: dict[str, argparse.ArgumentParser], helps: dict[str, str | None]
) -> None:
    """Each command's own ``--help``: its one-line help as description, its exit statuses."""
    # argparse keeps a command's one-line help only on the sub-parsers
    # action; it becomes the description of the command's own --help.
    for name, parser in commands.items():
        parser.description = parser.description or helps.get(name)
        parser.epilog = epilog(exit_status(name))
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


# What each command's exit statuses 0 and 1 mean, where they say more than
# "done" (1 is only for the commands listed in _FOUND).
_DONE = {"check": "no errors (warnings alone are not errors)", "diff": "the streams are the same"}
_FOUND = {"check": "errors found", "diff": "the streams differ"}


def exit_status(command: str | None) -> Section:
    """The ``exit status`` section of ``--help``: the whole program's, or one command's."""
    if command is None:
        done = "done; " + "; ".join(f"{name}: {text}" for name, text in _DONE.items())
        found = "; ".join(f"{name}: {text}" for name, text in _FOUND.items())
    else:
        done = _DONE.get(command, "done")
        found = _FOUND.get(command, "")
    items = [(str(EXIT_OK), done)]
    if found:
        items.append((str(EXIT_FOUND), found))
    items.append(
        (
            str(EXIT_FAIL),
            "the input could not be read, or the request could not be done (one line "
            "on stderr says why), or a bad command line",
        )
    )
    items.append((str(EXIT_INTERRUPTED), "interrupted (SIGINT)"))
    return Section("exit status", tuple(items), man="EXIT STATUS")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = sys.stdout
    try:
        code: int = args.func(args, out)
        out.flush()
        return code
    except BrokenPipeError:
        # the reader of our output went away (e.g. `| head`): not an error
        # point stdout at /dev/null so the interpreter's final flush stays quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CliError, StreamError, StreamWriteError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    except ValueError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAIL


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
