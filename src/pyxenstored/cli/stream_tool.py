"""``xenstore-stream``: open, check, compare and convert migration streams.

Sub-commands: ``dump`` (text, ``--tree`` like ``xenstore-ls -p``, ``--json``
NDJSON), ``check``, ``convert``, ``diff``, ``stats``, ``build`` (NDJSON back
to a stream), ``extract`` (one domain's migration stream) and ``synth`` (a
realistic synthetic stream).  Errors are one
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
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO, TextIO

from pyxenstored import __version__
from pyxenstored.cli.helptext import Section, epilog
from pyxenstored.stream import check as checker
from pyxenstored.stream.convert_bounded import BoundedConverter
from pyxenstored.stream.diff import StreamState, state_of
from pyxenstored.stream.diff_bounded import diff_streams
from pyxenstored.stream.ndjson import (
    header_from_json,
    header_to_json,
    is_header,
    record_from_json,
    record_to_json,
)
from pyxenstored.stream.reader import StreamError, StreamReader, decode_record
from pyxenstored.stream.records import Record
from pyxenstored.stream.stats import StreamStats
from pyxenstored.stream.synth import SynthConfig, write_synth
from pyxenstored.stream.text import (
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


def _open_in(path: str) -> str | IO[bytes]:
    return sys.stdin.buffer if path == "-" else path


def _reader(path: str) -> StreamReader:
    if path != "-" and not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if path != "-" and os.path.isdir(path):
        raise CliError(f"{path}: is a directory")
    return StreamReader(_open_in(path))


# --- sub-commands ---------------------------------------------------------------


def _iter_with_progress(reader: StreamReader, progress: Progress) -> Iterator[Record]:
    for n, record in enumerate(reader):
        if not n & 0xFFF:
            progress.update(reader.offset)
        yield record
    progress.done()


def cmd_dump(args: argparse.Namespace, out: TextIO) -> int:
    progress = Progress("dump", _size_of(args.file))
    with _reader(args.file) as reader:
        header = reader.header
        if args.tree:
            if args.file != "-" and in_tree_order(_iter_with_progress(reader, progress)):
                # C writes the tree depth-first: print while reading, a second pass
                with _reader(args.file) as again:
                    second = _iter_with_progress(again, Progress("dump", _size_of(args.file)))
                    for line in streamed_tree_lines(second):
                        out.write(line + "\n")
                return EXIT_OK
            if args.file != "-":
                reader = _reader(args.file)  # read again, keep the whole tree this time
            with reader:
                nodes = build_tree(
                    _iter_with_progress(reader, Progress("dump", _size_of(args.file)))
                )
            for line in tree_lines(nodes):
                out.write(line + "\n")
            return EXIT_OK
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


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    path = args.file
    if path != "-" and not os.path.isfile(path):
        raise CliError(
            f"{path}: no such file" if not os.path.exists(path) else f"{path}: not a file"
        )
    progress = Progress("check", _size_of(path))
    summary = checker.CheckSummary()
    unreadable = False
    try:
        for diag in checker.check_stream(_open_in(path), summary, progress=progress.update):
            if diag.rule in ("bad-ident",) or (diag.record is None and diag.rule == "truncated"):
                unreadable = True
            if args.json:
                out.write(json.dumps(diag.to_json()) + "\n")
            else:
                out.write(f"{path}: {diag}\n")
    finally:
        progress.done()
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


def cmd_convert(args: argparse.Namespace, out: TextIO) -> int:
    reader = _reader(args.input)  # read while writing: bounded memory (stream.convert_bounded)
    header = reader.header
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
        on_drop=lambda what: print(f"{PROG}: dropped: {what}", file=sys.stderr),
    )
    tmp = args.output + ".tmp" if args.output != "-" else None
    try:
        with (
            reader,
            StreamWriter(
                tmp if tmp else sys.stdout.buffer,
                version=version,
                big_endian=big,
                target=args.target,
            ) as writer,
        ):
            for record in converter.convert(reader):
                writer.write(record)
        if tmp:
            os.replace(tmp, args.output)
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return EXIT_OK


def load_state(path: str) -> StreamState:
    """The semantic content of the stream in ``path`` (see :mod:`~pyxenstored.stream.diff`)."""
    progress = Progress(f"read {path}", _size_of(path))
    with _reader(path) as reader:
        return state_of(_iter_with_progress(reader, progress), reader.header.big_endian)


def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    different = False
    with _reader(args.a) as ra, _reader(args.b) as rb:
        a = _iter_with_progress(ra, Progress(f"read {args.a}", _size_of(args.a)))
        b = _iter_with_progress(rb, Progress(f"read {args.b}", _size_of(args.b)))
        lines = diff_streams(
            a, ra.header.big_endian, b, rb.header.big_endian, tempfile.TemporaryFile
        )
        for line in lines:
            different = True
            out.write(line + "\n")
    return EXIT_FOUND if different else EXIT_OK


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    stats = StreamStats(args.top)
    progress = Progress("stats", _size_of(args.file))
    with _reader(args.file) as reader:
        for r in _iter_with_progress(reader, progress):
            stats.add(r)
        size = reader.offset
        header = reader.header
    for line in stats.lines(header, size):
        out.write(line + "\n")
    return EXIT_OK


def cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    src: IO[str] = sys.stdin if args.ndjson == "-" else open(args.ndjson, encoding="utf-8")  # noqa: SIM115
    tmp = args.output + ".tmp"
    try:
        with src:
            lines = (line for line in src)
            first = _next_json(lines, 1)
            if not is_header(first):
                raise CliError(f"{args.ndjson}:1: the first line must be the HEADER object")
            assert isinstance(first, dict)
            header = header_from_json(first)
            if header.reserved_flags:
                raise CliError(f"{args.ndjson}:1: flags {header.flags:#x} has reserved bits set")
            with StreamWriter(tmp, version=header.version, big_endian=header.big_endian) as writer:
                for lineno, line in enumerate(lines, start=2):
                    if not line.strip():
                        continue
                    try:
                        record = record_from_json(json.loads(line))
                        writer.write(record)
                    except (ValueError, StreamWriteError) as exc:
                        raise CliError(f"{args.ndjson}:{lineno}: {exc}") from None
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return EXIT_OK


def _next_json(lines: Iterator[str], lineno: int) -> object:
    for line in lines:
        if line.strip():
            try:
                return json.loads(line)
            except ValueError as exc:
                raise CliError(f"line {lineno}: {exc}") from None
    raise CliError("empty NDJSON input")


def cmd_extract(args: argparse.Namespace, out: TextIO) -> int:
    """One domain's migration stream cut out of a full stream (``migrate.domain``)."""
    from pyxenstored.migrate.domain import DomainMigrationError, extract_domain

    with _reader(args.file) as reader:
        big = reader.header.big_endian
        try:
            records = extract_domain(reader, args.domain)
        except DomainMigrationError as exc:
            raise CliError(f"{args.file}: {exc}") from None
    tmp = args.output + ".tmp"
    try:
        with StreamWriter(tmp, version=2, big_endian=big) as writer:
            writer.write_all(records)
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
    count = write_synth(args.output, cfg, big_endian=args.endian == "big")
    print(f"{args.output}: {count} records, {os.path.getsize(args.output)} bytes", file=sys.stderr)
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
    d.set_defaults(func=cmd_dump)

    c = sub.add_parser("check", help="check against the spec and the C daemon's rules")
    c.add_argument("file", help="stream file ('-' for stdin)")
    c.add_argument("--json", action="store_true", help="one JSON diagnostic per line")
    c.set_defaults(func=cmd_check)

    v = sub.add_parser("convert", help="change version, byte order or target layout")
    v.add_argument("input", help="stream file ('-' for stdin)")
    v.add_argument("output", help="the converted stream ('-' for stdout)")
    _convert_options(v)
    v.set_defaults(func=cmd_convert)

    f = sub.add_parser("diff", help="semantic difference of two streams")
    f.add_argument("a", help="the first stream file ('-' for stdin)")
    f.add_argument("b", help="the second stream file")
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
