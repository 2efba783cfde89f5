"""``xenstore-stream``: open, check, compare and convert migration streams.

Sub-commands: ``dump`` (text, ``--tree`` like ``xenstore-ls -p``, ``--json``
NDJSON), ``check``, ``convert``, ``diff``, ``stats``, ``build`` (NDJSON back
to a stream), ``extract`` (one domain's migration stream) and ``synth`` (a
realistic synthetic stream).  Errors are one
line on stderr, never a traceback.  Exit codes: 0 success (``check``: clean,
``diff``: same), 1 problems found (``check``: errors, ``diff``: different),
2 the input could not be read or the request could not be done.

NDJSON encoding (``dump --json`` / ``build``): the first line is
``{"type": "HEADER", "version": V, "flags": F}``, then one object per record
with ``"type"`` the spec's record name (``UNKNOWN(n)`` for reserved types)
and the other keys the field names of :mod:`pyxenstored.stream.records`.
Byte strings (node values, pending connection data, unknown bodies, opaque
conn-specs) are JSON strings in which each character U+0000..U+00FF stands
for one byte (ISO-8859-1): lossless, and plain ASCII stays readable.
Permissions are ``{"perm", "flags", "domid"}`` objects, quota values
``{"name", "value"}`` objects, ``spec`` is ``{"domid", "tdomid", "evtchn"}``
(ring), ``{"socket_fd"}`` (socket) or ``{"raw"}`` (reserved type).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO, Any, Literal, TextIO

from pyxenstored.stream import check as checker
from pyxenstored.stream.reader import StreamError, StreamReader, decode_record
from pyxenstored.stream.records import (
    RECORD_TYPES,
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
    RingSpec,
    SocketSpec,
    StreamHeader,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    type_name,
)
from pyxenstored.stream.synth import SynthConfig, write_synth
from pyxenstored.stream.writer import TARGETS, StreamWriteError, StreamWriter, adapt_for_target

PROG = "xenstore-stream"
EXIT_OK = 0
EXIT_FOUND = 1
EXIT_FAIL = 2


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


# --- showing values ---------------------------------------------------------


def sanitise(value: bytes) -> str:
    """Bytes as ``xenstore-ls`` shows them: printable ASCII as is, the rest escaped."""
    out = []
    for c in value:
        if 0x20 <= c <= 0x7E and c != 0x5C:
            out.append(chr(c))
        elif c == 0x09:
            out.append("\\t")
        elif c == 0x0A:
            out.append("\\n")
        elif c == 0x0D:
            out.append("\\r")
        elif c == 0x5C:
            out.append("\\\\")
        elif c < 0o10:
            out.append(f"\\{c:03o}")
        else:
            out.append(f"\\x{c:02x}")
    return "".join(out)


def _q(value: bytes | str) -> str:
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return '"' + sanitise(raw) + '"'


def _perms_text(perms: Iterable[NodePerm]) -> str:
    return ",".join(f"{p.perm}{p.domid}" + ("!" if p.stale else "") for p in perms)


def _quota_text(quota: Iterable[QuotaValue]) -> str:
    return " ".join(f"{q.name}={q.value}" for q in quota) or "-"


def record_line(r: Record) -> str:
    """One readable line for a record."""
    if isinstance(r, End):
        return "END"
    if isinstance(r, GlobalData):
        return f"GLOBAL_DATA rw-socket-fd={r.socket_fd} evtchn-fd={r.evtchn_fd}"
    if isinstance(r, ConnectionData):
        spec = r.spec
        if isinstance(spec, RingSpec):
            where = f"ring domid={spec.domid} tdomid={spec.tdomid:#x} evtchn={spec.evtchn}"
        elif isinstance(spec, SocketSpec):
            where = f"socket fd={spec.socket_fd}"
        else:
            where = f"conn-type={r.conn_type} spec={_q(spec.raw)}"
        text = f"CONNECTION_DATA conn-id={r.conn_id} {where} fields={r.fields:#x}"
        if r.unique_id is not None:
            text += f" unique-id={r.unique_id:#x}"
        if r.in_data:
            text += f" in={_q(r.in_data)}"
        if r.out_data:
            text += f" out={_q(r.out_data)} out-resp-len={r.out_resp_len}"
        return text
    if isinstance(r, WatchDataExtended):
        depth = "unlimited" if r.depth == 0xFFFF else str(r.depth)
        return f"WATCH_DATA_EXTENDED conn-id={r.conn_id} wpath={_q(r.wpath)} token={_q(r.token)} depth={depth}"
    if isinstance(r, WatchData):
        return f"WATCH_DATA conn-id={r.conn_id} wpath={_q(r.wpath)} token={_q(r.token)}"
    if isinstance(r, TransactionData):
        return f"TRANSACTION_DATA conn-id={r.conn_id} tx-id={r.tx_id}"
    if isinstance(r, NodeData):
        text = f"NODE_DATA {_q(r.path)} = {_q(r.value)} ({_perms_text(r.perms)})"
        if r.conn_id:
            access = "".join(c for bit, c in ((1, "r"), (2, "w")) if r.access & bit) or "-"
            state = " deleted" if not r.perms else ""
            text += f" conn-id={r.conn_id} tx-id={r.tx_id} access={access}{state}"
        return text
    if isinstance(r, GlobalQuotaData):
        return f"GLOBAL_QUOTA_DATA domain: {_quota_text(r.domain_quota)} global: {_quota_text(r.global_quota)}"
    if isinstance(r, DomainData):
        return f"DOMAIN_DATA domid={r.domid} features={r.features:#x} quota: {_quota_text(r.quota)}"
    return f"{type_name(r.type)} len={len(r.body)} body={_q(r.body)}"


def header_line(h: StreamHeader) -> str:
    order = "big-endian" if h.big_endian else "little-endian"
    return f"xenstore migration stream version {h.version}, {order} (flags {h.flags:#010x})"


# --- NDJSON ----------------------------------------------------------------

_CLASS_BY_NAME: dict[str, type] = {rt.name: cls for cls, rt in RECORD_TYPES.items()}
_BYTES_FIELDS = frozenset({"value", "in_data", "out_data", "body", "raw"})
_QUOTA_FIELDS = frozenset({"domain_quota", "global_quota", "quota"})


def _b2j(value: bytes) -> str:
    return value.decode("latin-1")


def _j2b(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string of byte characters")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} has a character above U+00FF (not a byte)") from None


def record_to_json(r: Record) -> dict[str, Any]:
    """A record as a JSON-able dict (see the module docstring)."""
    if isinstance(r, UnknownRecord):
        return {"type": type_name(r.type), "body": _b2j(r.body)}
    out: dict[str, Any] = {"type": RECORD_TYPES[type(r)].name}
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        if isinstance(v, bytes):
            out[f.name] = _b2j(v)
        elif f.name == "perms":
            out[f.name] = [{"perm": p.perm, "flags": p.flags, "domid": p.domid} for p in v]
        elif f.name in _QUOTA_FIELDS:
            out[f.name] = [{"name": q.name, "value": q.value} for q in v]
        elif f.name == "spec":
            if isinstance(v, OpaqueSpec):
                out[f.name] = {"raw": _b2j(v.raw)}
            else:
                out[f.name] = dataclasses.asdict(v)
        else:
            out[f.name] = v
    return out


def _int(obj: dict[str, Any], key: str, what: str) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{what}: {key!r} must be an integer")
    return v


def _spec_from_json(v: object) -> RingSpec | SocketSpec | OpaqueSpec:
    if not isinstance(v, dict):
        raise ValueError("spec must be an object")
    keys = set(v)
    if keys == {"domid", "tdomid", "evtchn"}:
        return RingSpec(
            _int(v, "domid", "spec"), _int(v, "tdomid", "spec"), _int(v, "evtchn", "spec")
        )
    if keys == {"socket_fd"}:
        return SocketSpec(_int(v, "socket_fd", "spec"))
    if keys == {"raw"}:
        return OpaqueSpec(_j2b(v["raw"], "spec.raw"))
    raise ValueError(f"spec with keys {sorted(keys)} is neither ring, socket nor raw")


def record_from_json(obj: object) -> Record:
    """Inverse of :func:`record_to_json`; raises ValueError on anything malformed."""
    if not isinstance(obj, dict):
        raise ValueError("a record must be a JSON object")
    name = obj.get("type")
    if not isinstance(name, str):
        raise ValueError("missing string key 'type'")
    if name.startswith("UNKNOWN(") and name.endswith(")"):
        try:
            number = int(name[8:-1])
        except ValueError:
            raise ValueError(f"bad record type {name!r}") from None
        if set(obj) != {"type", "body"}:
            raise ValueError(f"{name} takes exactly the keys type and body")
        return UnknownRecord(number, _j2b(obj["body"], "body"))
    cls = _CLASS_BY_NAME.get(name)
    if cls is None:
        raise ValueError(f"unknown record type {name!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    extra = set(obj) - names - {"type"}
    if extra:
        raise ValueError(f"{name} has no field(s) {', '.join(sorted(extra))}")
    kwargs: dict[str, Any] = {}
    for key, v in obj.items():
        if key == "type":
            continue
        if key in _BYTES_FIELDS:
            kwargs[key] = _j2b(v, key)
        elif key == "perms":
            if not isinstance(v, list):
                raise ValueError("perms must be a list")
            perms = []
            for p in v:
                if not isinstance(p, dict) or set(p) != {"perm", "flags", "domid"}:
                    raise ValueError("each permission needs exactly perm, flags, domid")
                if not isinstance(p["perm"], str) or len(p["perm"]) != 1:
                    raise ValueError("perm must be one letter")
                perms.append(
                    NodePerm(p["perm"], _int(p, "flags", "perm"), _int(p, "domid", "perm"))
                )
            kwargs[key] = tuple(perms)
        elif key in _QUOTA_FIELDS:
            if not isinstance(v, list):
                raise ValueError(f"{key} must be a list")
            quota = []
            for q in v:
                if (
                    not isinstance(q, dict)
                    or set(q) != {"name", "value"}
                    or not isinstance(q["name"], str)
                ):
                    raise ValueError("each quota needs exactly a string name and a value")
                quota.append(QuotaValue(q["name"], _int(q, "value", "quota")))
            kwargs[key] = tuple(quota)
        elif key == "spec":
            kwargs[key] = _spec_from_json(v)
        elif key in ("wpath", "token", "path"):
            if not isinstance(v, str):
                raise ValueError(f"{key} must be a string")
            kwargs[key] = v
        elif key == "unique_id" and v is None:
            kwargs[key] = None
        else:
            kwargs[key] = _int(obj, key, name)
    try:
        record: Record = cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return record


# --- the committed tree -------------------------------------------------------


class _TreeNode:
    __slots__ = ("value", "perms", "children")

    def __init__(self, value: bytes, perms: tuple[NodePerm, ...]) -> None:
        self.value = value
        self.perms = perms
        self.children: list[str] = []


def build_tree(records: Iterable[Record]) -> dict[str, _TreeNode]:
    """Committed nodes as a path -> node map; children in stream order (C's child-list order)."""
    nodes: dict[str, _TreeNode] = {"/": _TreeNode(b"", ())}
    for r in records:
        if not isinstance(r, NodeData) or r.conn_id or r.path.startswith("@"):
            continue
        if r.path == "/":
            nodes["/"].value = r.value
            nodes["/"].perms = r.perms
            continue
        node = nodes.get(r.path)
        if node is None:
            nodes[r.path] = node = _TreeNode(r.value, r.perms)
            cut = r.path.rfind("/")
            parent = nodes.get(r.path[:cut] if cut > 0 else "/")
            if parent is not None:
                parent.children.append(r.path[cut + 1 :])
        else:
            node.value, node.perms = r.value, r.perms
    return nodes


LS_WIDTH = 80  # xenstore-ls when stdout is not a terminal
_TAG_LEN = len(' = "..."')
_DESIRED = 60


def ls_line(name: str, depth: int, value: bytes, perms: Iterable[NodePerm]) -> str:
    """One line of ``xenstore-ls -p``: indent, name, quoted value, dotted fill, permissions."""
    max_width = LS_WIDTH
    line = " " * depth + name[: max(0, max_width - _TAG_LEN - depth)]
    width = len(line)
    shown = sanitise(value)
    # C compares the raw length but cuts the escaped text
    if max_width < width + len(value) + _TAG_LEN:
        line += ' = "' + shown[: max(0, max_width - _TAG_LEN - width)] + '\\..."'
    else:
        line += ' = "' + shown + '" '
        width = len(line)
        line += "".join("." if w & 1 else " " for w in range(width, min(_DESIRED, max_width)))
    return line + "  (" + ",".join(f"{p.perm}{p.domid}" for p in perms) + ")"


def tree_lines(nodes: dict[str, _TreeNode]) -> Iterator[str]:
    """The lines ``xenstore-ls -p /`` prints for an in-memory tree."""
    stack: list[tuple[str, int]] = [("/" + name, 0) for name in reversed(nodes["/"].children)]
    while stack:
        path, depth = stack.pop()
        node = nodes[path]
        yield ls_line(path[path.rfind("/") + 1 :], depth, node.value, node.perms)
        for child in reversed(node.children):
            stack.append((path + "/" + child, depth + 1))


def _listed(r: Record) -> bool:
    """Whether ``xenstore-ls /`` would show this record's node."""
    return isinstance(r, NodeData) and not r.conn_id and r.path[:1] == "/" and r.path != "/"


def in_tree_order(records: Iterable[Record]) -> bool:
    """Whether the listed nodes come depth-first, each new, each right after its
    parent's subtree started: then stream order is the listing order."""
    stack: list[tuple[str, set[str]]] = [("/", set())]
    for r in records:
        if not _listed(r):
            continue
        assert isinstance(r, NodeData)
        path = r.path
        while stack[-1][0] != "/" and not path.startswith(stack[-1][0] + "/"):
            stack.pop()
        cut = path.rfind("/")
        parent, name = path[:cut] or "/", path[cut + 1 :]
        top, kids = stack[-1]
        if top != parent or name in kids:
            return False
        kids.add(name)
        stack.append((path, set()))
    return True


def streamed_tree_lines(records: Iterable[Record]) -> Iterator[str]:
    """``xenstore-ls -p`` lines for a stream that is :func:`in_tree_order`, in constant memory."""
    for r in records:
        if _listed(r):
            assert isinstance(r, NodeData)
            path = r.path
            yield ls_line(path[path.rfind("/") + 1 :], path.count("/") - 1, r.value, r.perms)


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
            out.write(
                json.dumps({"type": "HEADER", "version": header.version, "flags": header.flags})
                + "\n"
            )
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


def swap_messages(data: bytes, skip: int, src_big: bool) -> bytes:
    """Byte-swap the header fields of the wire messages in ``data[skip:]``.

    Pending connection data holds xsd_sockmsg messages (four u32: type,
    req_id, tx_id, len; then the payload) in the writer's byte order, so a
    byte-order conversion must swap them too.  Whole fields of a partial
    header at the end are swapped; payloads and the first ``skip`` bytes (a
    partly sent response) are left as they are.
    """
    out = bytearray(data)
    order: Literal["big", "little"] = "big" if src_big else "little"
    pos, end = skip, len(data)
    while pos < end:
        for field in range(pos, min(pos + 16, end - 3), 4):
            out[field : field + 4] = data[field : field + 4][::-1]
        if pos + 16 > end:
            break
        pos += 16 + int.from_bytes(data[pos + 12 : pos + 16], order)
    return bytes(out)


def swap_pending(record: Record, src_big: bool) -> Record:
    """A CONNECTION_DATA with its pending messages in the other byte order."""
    if not isinstance(record, ConnectionData) or not (record.in_data or record.out_data):
        return record
    return dataclasses.replace(
        record,
        in_data=swap_messages(record.in_data, 0, src_big),
        out_data=swap_messages(
            record.out_data, min(record.out_resp_len, len(record.out_data)), src_big
        ),
    )


def cmd_convert(args: argparse.Namespace, out: TextIO) -> int:
    with _reader(args.input) as reader:
        header = reader.header
        records = list(reader)
    version = args.version
    if version is None:
        version = 1 if args.target == "c-4.17" else header.version
    big = header.big_endian if args.endian == "same" else args.endian == "big"
    if big != header.big_endian:
        records = [swap_pending(r, header.big_endian) for r in records]
    converted, dropped = adapt_for_target(records, version, args.target, args.lossy)
    for what in dropped:
        print(f"{PROG}: dropped: {what}", file=sys.stderr)
    tmp = args.output + ".tmp" if args.output != "-" else None
    try:
        with StreamWriter(
            tmp if tmp else sys.stdout.buffer, version=version, big_endian=big, target=args.target
        ) as writer:
            for record in converted:
                writer.write(record)
        if tmp:
            os.replace(tmp, args.output)
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return EXIT_OK


@dataclasses.dataclass(slots=True)
class _State:
    """The semantic content of a stream, for ``diff``."""

    nodes: dict[str, tuple[bytes, tuple[tuple[str, int, int], ...]]] = dataclasses.field(
        default_factory=dict
    )
    pending: dict[tuple[int, int, str], tuple[int, bytes, tuple[tuple[str, int, int], ...]]] = (
        dataclasses.field(default_factory=dict)
    )
    watches: Counter[tuple[int, str, str, int | None]] = dataclasses.field(default_factory=Counter)
    conns: dict[int, tuple[object, ...]] = dataclasses.field(default_factory=dict)
    transactions: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    global_data: tuple[int, int] | None = None
    global_quota: dict[str, int] | None = None
    global_only_quota: dict[str, int] | None = None
    domains: dict[int, tuple[int, dict[str, int]]] = dataclasses.field(default_factory=dict)
    unknown: Counter[tuple[int, bytes]] = dataclasses.field(default_factory=Counter)


def _perm_key(perms: tuple[NodePerm, ...]) -> tuple[tuple[str, int, int], ...]:
    return tuple((p.perm, p.flags, p.domid) for p in perms)


def load_state(path: str) -> _State:
    st = _State()
    progress = Progress(f"read {path}", _size_of(path))
    with _reader(path) as reader:
        big = reader.header.big_endian
        for r in _iter_with_progress(reader, progress):
            if big:
                # compare pending wire messages in one byte order
                r = swap_pending(r, True)
            if isinstance(r, NodeData):
                if r.conn_id:
                    st.pending[(r.conn_id, r.tx_id, r.path)] = (
                        r.access,
                        r.value,
                        _perm_key(r.perms),
                    )
                else:
                    st.nodes[r.path] = (r.value, _perm_key(r.perms))
            elif isinstance(r, WatchDataExtended):
                depth = None if r.depth == 0xFFFF else r.depth
                st.watches[(r.conn_id, r.wpath, r.token, depth)] += 1
            elif isinstance(r, WatchData):
                st.watches[(r.conn_id, r.wpath, r.token, None)] += 1
            elif isinstance(r, ConnectionData):
                st.conns[r.conn_id] = (
                    r.conn_type,
                    r.spec,
                    r.unique_id,
                    r.in_data,
                    r.out_data,
                    r.out_resp_len,
                )
            elif isinstance(r, TransactionData):
                st.transactions.add((r.conn_id, r.tx_id))
            elif isinstance(r, GlobalData):
                st.global_data = (r.socket_fd, r.evtchn_fd)
            elif isinstance(r, GlobalQuotaData):
                st.global_quota = {q.name: q.value for q in r.domain_quota}
                st.global_only_quota = {q.name: q.value for q in r.global_quota}
            elif isinstance(r, DomainData):
                st.domains[r.domid] = (r.features, {q.name: q.value for q in r.quota})
            elif isinstance(r, UnknownRecord):
                st.unknown[(r.type, r.body)] += 1
    return st


def _node_text(value: bytes, perms: tuple[tuple[str, int, int], ...]) -> str:
    return f"{_q(value)} ({','.join(f'{p}{d}' + ('!' if f & 1 else '') for p, f, d in perms)})"


def _pending_text(p: tuple[int, bytes, tuple[tuple[str, int, int], ...]]) -> str:
    access, value, perms = p
    if not perms:
        return "deleted"
    rights = "".join(c for bit, c in ((1, "r"), (2, "w")) if access & bit) or "-"
    return f"{_node_text(value, perms)} access={rights}"


def _conn_text(c: tuple[object, ...]) -> str:
    ctype, spec, unique_id, in_data, out_data, resp = c
    text = f"type {ctype} {spec}"
    if unique_id is not None:
        text += f" unique-id {unique_id:#x}"
    assert isinstance(in_data, bytes) and isinstance(out_data, bytes)
    text += f" in {_q(in_data)} out {_q(out_data)} out-resp-len {resp}"
    return text


def diff_states(a: _State, b: _State) -> Iterator[str]:
    """Lines describing how ``b`` differs from ``a`` (``-`` only in a, ``+`` only in b, ``~`` changed)."""
    for path in sorted(a.nodes.keys() | b.nodes.keys()):
        na, nb = a.nodes.get(path), b.nodes.get(path)
        if na == nb:
            continue
        if na is None:
            assert nb is not None
            yield f"+ node {path} = {_node_text(*nb)}"
        elif nb is None:
            yield f"- node {path} = {_node_text(*na)}"
        else:
            parts = []
            if na[0] != nb[0]:
                parts.append(f"value {_q(na[0])} -> {_q(nb[0])}")
            if na[1] != nb[1]:
                parts.append(f"perms {_node_text(b'', na[1])[3:]} -> {_node_text(b'', nb[1])[3:]}")
            yield f"~ node {path}: " + "; ".join(parts)
    for key in sorted(a.pending.keys() | b.pending.keys()):
        pa, pb = a.pending.get(key), b.pending.get(key)
        if pa != pb:
            label = f"pending node {key[2]} (conn {key[0]} tx {key[1]})"
            if pa and pb:
                yield f"~ {label}: {_pending_text(pa)} -> {_pending_text(pb)}"
            else:
                got = pb or pa
                assert got is not None
                yield f"{'+' if pb else '-'} {label}: {_pending_text(got)}"
    for w in sorted((a.watches | b.watches).keys(), key=repr):
        if a.watches[w] != b.watches[w]:
            depth = "" if w[3] is None else f" depth {w[3]}"
            sign = "+" if b.watches[w] > a.watches[w] else "-"
            yield f"{sign} watch conn {w[0]} {w[1]!r} token {w[2]!r}{depth}"
    for cid in sorted(a.conns.keys() | b.conns.keys()):
        ca, cb = a.conns.get(cid), b.conns.get(cid)
        if ca != cb:
            if ca is None:
                assert cb is not None
                yield f"+ connection {cid}: {_conn_text(cb)}"
            elif cb is None:
                yield f"- connection {cid}: {_conn_text(ca)}"
            else:
                yield f"~ connection {cid}: {_conn_text(ca)} -> {_conn_text(cb)}"
    for t in sorted(a.transactions ^ b.transactions):
        yield f"{'+' if t in b.transactions else '-'} transaction {t[1]} of conn {t[0]}"
    if a.global_data != b.global_data:
        yield f"~ global data {a.global_data} -> {b.global_data}"
    if a.global_quota != b.global_quota:
        yield f"~ global quota {a.global_quota} -> {b.global_quota}"
    if a.global_only_quota != b.global_only_quota:
        yield f"~ global-only quota {a.global_only_quota} -> {b.global_only_quota}"
    for d in sorted(a.domains.keys() | b.domains.keys()):
        da, db = a.domains.get(d), b.domains.get(d)
        if da == db:
            continue
        if da is None or db is None:
            dom = da or db
            assert dom is not None
            yield f"{'+' if db else '-'} domain {d}: features {dom[0]:#x} quota {dom[1]}"
            continue
        if da[0] != db[0]:
            yield f"~ domain {d} features {da[0]:#x} -> {db[0]:#x}"
        if da[1] != db[1]:
            yield f"~ domain {d} quota {da[1]} -> {db[1]}"
    for u in sorted((a.unknown | b.unknown).keys()):
        if a.unknown[u] != b.unknown[u]:
            yield f"{'+' if b.unknown[u] > a.unknown[u] else '-'} record {type_name(u[0])} {_q(u[1])}"


def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    a = load_state(args.a)
    b = load_state(args.b)
    different = False
    for line in diff_states(a, b):
        different = True
        out.write(line + "\n")
    return EXIT_FOUND if different else EXIT_OK


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    by_type: Counter[int] = Counter()
    nodes_by_dom: Counter[int] = Counter()
    bytes_by_dom: Counter[int] = Counter()
    watches_by_dom: Counter[str] = Counter()
    conn_owner: dict[int, str] = {}
    largest: list[tuple[int, str]] = []
    global_quota: GlobalQuotaData | None = None
    domains: list[DomainData] = []
    total_value = 0
    progress = Progress("stats", _size_of(args.file))
    with _reader(args.file) as reader:
        header = reader.header
        for r in _iter_with_progress(reader, progress):
            if isinstance(r, UnknownRecord):
                by_type[r.type] += 1
                continue
            by_type[RECORD_TYPES[type(r)]] += 1
            if isinstance(r, NodeData):
                if r.conn_id == 0 and r.perms:
                    owner = r.perms[0].domid
                    nodes_by_dom[owner] += 1
                    bytes_by_dom[owner] += len(r.value)
                    total_value += len(r.value)
                    item = (len(r.value), r.path)
                    if len(largest) < args.top:
                        heapq.heappush(largest, item)
                    elif item > largest[0]:
                        heapq.heapreplace(largest, item)
            elif isinstance(r, ConnectionData):
                spec = r.spec
                conn_owner[r.conn_id] = (
                    f"dom{spec.domid}" if isinstance(spec, RingSpec) else f"socket conn {r.conn_id}"
                )
            elif isinstance(r, (WatchData, WatchDataExtended)):
                watches_by_dom[conn_owner.get(r.conn_id, f"unknown conn {r.conn_id}")] += 1
            elif isinstance(r, GlobalQuotaData):
                global_quota = r
            elif isinstance(r, DomainData) and len(domains) < 100_000:
                domains.append(r)
        size = reader.offset
    order = "big-endian" if header.big_endian else "little-endian"
    out.write(
        f"stream: version {header.version}, {order}, {sum(by_type.values())} records, {size} bytes\n"
    )
    out.write("records by type:\n")
    for rtype, n in sorted(by_type.items()):
        out.write(f"  {type_name(rtype):<22}{n:>10}\n")
    out.write(f"nodes by owner ({sum(nodes_by_dom.values())} nodes, {total_value} value bytes):\n")
    out.write(f"  {'domain':<10}{'nodes':>10}{'value-bytes':>14}{'watches':>10}\n")
    for dom in sorted(nodes_by_dom):
        w = watches_by_dom.get(f"dom{dom}", 0)
        out.write(f"  {dom:<10}{nodes_by_dom[dom]:>10}{bytes_by_dom[dom]:>14}{w:>10}\n")
    others = {
        k: v
        for k, v in watches_by_dom.items()
        if not (k.startswith("dom") and int(k[3:]) in nodes_by_dom)
    }
    if others:
        out.write("watches of other connections:\n")
        for k, v in sorted(others.items()):
            out.write(f"  {k:<24}{v:>10}\n")
    out.write(f"largest nodes (top {args.top}):\n")
    for n, path in sorted(largest, reverse=True):
        out.write(f"  {n:>8}  {path}\n")
    out.write("quota:\n")
    defaults: dict[str, int] = {}
    if global_quota is not None:
        defaults = {q.name: q.value for q in global_quota.domain_quota}
        out.write(f"  per-domain defaults: {_quota_text(global_quota.domain_quota)}\n")
        if global_quota.global_quota:
            out.write(f"  global only: {_quota_text(global_quota.global_quota)}\n")
    else:
        out.write("  no GLOBAL_QUOTA_DATA\n")
    features: Counter[int] = Counter()
    for d in domains:
        features[d.features] += 1
        special = [q for q in d.quota if defaults.get(q.name) != q.value]
        if special:
            out.write(f"  domain {d.domid}: {_quota_text(special)}\n")
    if features:
        out.write(
            "domain features: "
            + ", ".join(f"{f:#x} x{n}" for f, n in sorted(features.items()))
            + "\n"
        )
    return EXIT_OK


def cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    src: IO[str] = sys.stdin if args.ndjson == "-" else open(args.ndjson, encoding="utf-8")  # noqa: SIM115
    tmp = args.output + ".tmp"
    try:
        with src:
            lines = (line for line in src)
            first = _next_json(lines, 1)
            if not isinstance(first, dict) or first.get("type") != "HEADER":
                raise CliError(f"{args.ndjson}:1: the first line must be the HEADER object")
            version = _int(first, "version", "HEADER")
            flags = _int(first, "flags", "HEADER")
            if flags & ~1:
                raise CliError(f"{args.ndjson}:1: flags {flags:#x} has reserved bits set")
            with StreamWriter(tmp, version=version, big_endian=bool(flags & 1)) as writer:
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
    p = argparse.ArgumentParser(prog=PROG, description="Xenstore migration stream toolkit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("dump", help="print the records, the node tree or NDJSON")
    d.add_argument("file", help="stream file ('-' for stdin)")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--tree", action="store_true", help="committed nodes like 'xenstore-ls -p /'")
    g.add_argument("--json", action="store_true", help="NDJSON, one object per record")
    d.set_defaults(func=cmd_dump)

    c = sub.add_parser("check", help="check against the spec and the C daemon's rules")
    c.add_argument("file")
    c.add_argument("--json", action="store_true", help="one JSON diagnostic per line")
    c.set_defaults(func=cmd_check)

    v = sub.add_parser("convert", help="change version, byte order or target layout")
    v.add_argument("input")
    v.add_argument("output")
    v.add_argument(
        "--version", type=int, choices=(1, 2), help="default: the input's (1 for c-4.17)"
    )
    v.add_argument("--endian", choices=("little", "big", "same"), default="same")
    v.add_argument("--target", choices=TARGETS, default="spec")
    v.add_argument(
        "--lossy", action="store_true", help="drop what the output cannot carry, and say what"
    )
    v.set_defaults(func=cmd_convert)

    f = sub.add_parser("diff", help="semantic difference of two streams")
    f.add_argument("a")
    f.add_argument("b")
    f.set_defaults(func=cmd_diff)

    s = sub.add_parser("stats", help="counts, per-domain usage, largest nodes, quota")
    s.add_argument("file")
    s.add_argument("--top", type=int, default=10, help="how many largest nodes to list")
    s.set_defaults(func=cmd_stats)

    b = sub.add_parser("build", help="write a stream from 'dump --json' output")
    b.add_argument("ndjson", help="NDJSON file ('-' for stdin)")
    b.add_argument("output")
    b.set_defaults(func=cmd_build)

    e = sub.add_parser("extract", help="cut one domain's migration stream out of a dump")
    e.add_argument("file", help="stream file ('-' for stdin)")
    e.add_argument("--domain", type=int, required=True, metavar="N", help="the domain's domid")
    e.add_argument("output")
    e.set_defaults(func=cmd_extract)

    y = sub.add_parser("synth", help="write a realistic synthetic stream")
    y.add_argument("output")
    y.add_argument("--domains", type=int, required=True)
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--version", type=int, choices=(1, 2), default=2)
    y.add_argument("--endian", choices=("little", "big"), default="little")
    y.add_argument("--vifs", type=int, default=1, help="network devices per guest")
    y.add_argument("--vbds", type=int, default=1, help="disks per guest")
    y.add_argument("--no-transactions", action="store_true", help="no pending transaction")
    y.set_defaults(func=cmd_synth)
    return p


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
        return 130
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
