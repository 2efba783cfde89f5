"""Checker for oxenstored's state dump: every problem, its line and a named rule.

:func:`check_dump` takes the bytes of a dump and returns
:class:`OxDiagnostic` values; it never raises.  It replays what oxenstored's
restore (``xenstored.ml:DB.from_channel``) would do with each line and
reports where that goes wrong: lines it would skip (unknown type, bad hex,
bad numbers or permissions), watches of connections it does not know, nodes
whose parent it has not created, domains it cannot reach.  Rule names are
stable (scripts match on them) and listed in :data:`RULES`.

:func:`analyse_dump` gives the same findings plus, for each line that
oxenstored would not load, the reason; the conversion to the migration
stream (:mod:`.oxenstored_convert`) uses it to know what it would drop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..wire import DOMID_FIRST_RESERVED
from .check import Severity
from .oxenstored_format import (
    DomLine,
    EvtchnDevLine,
    GlobalLine,
    IgnoredLine,
    OxDump,
    OxenstoredFormatError,
    SocketLine,
    StoreLine,
    WatchLine,
    parse_dump,
)
from .oxenstored_quota import OxenstoredQuota
from .text import quote

E = Severity.ERROR
W = Severity.WARNING

#: rule name -> (severity, what it means).  Errors are lines oxenstored would
#: lose or misread; warnings are things it reads but that look wrong.
RULES: dict[str, tuple[Severity, str]] = {
    "bad-header": (E, "the first line is not $xenstored-dump-format; oxenstored refuses the file"),
    "truncated": (E, "the file does not end with a newline: it was most likely cut short"),
    "no-nodes": (E, "no store lines: a dump oxenstored writes always has at least /"),
    "no-root": (W, "no store line for /: the root keeps oxenstored's default (n0, empty)"),
    "no-global": (W, "no global line: oxenstored restarts without a listening socket"),
    # lines oxenstored skips
    "unknown-line": (W, "a line of a type oxenstored does not know; it skips the line"),
    "bad-field-count": (E, "a known line type with the wrong number of fields; it is skipped"),
    "bad-number": (E, "a number field that is not plain decimal or out of range; line skipped"),
    "bad-hex": (E, "a string field that is not lower-case hex of whole bytes; line skipped"),
    "bad-perms": (E, "a permission list oxenstored cannot parse; the node is skipped"),
    "extra-fields": (W, "fields after the ones oxenstored reads; it ignores them"),
    # global state
    "duplicate-global": (E, "a second global line replaces the first listening socket"),
    "duplicate-evtchn-dev": (E, "a second evtchn-dev line; domains before it are lost"),
    "evtchn-dev-late": (E, "evtchn-dev after dom lines: those domains are on another handle"),
    "bad-fd": (E, "a descriptor out of range, or 0 for a socket (its watches would name domain 0)"),
    "fd-clash": (E, "the same descriptor given for two things"),
    # domains
    "no-evtchn-dev": (E, "a dom line without an earlier evtchn-dev: its bound port is lost"),
    "bad-domid": (E, "a domid below 0 or above 65535"),
    "reserved-domid": (W, "a domid in the reserved range (0x7FF0 and up)"),
    "duplicate-dom": (E, "two dom lines for one domain"),
    "dom-no-ring": (E, "a guest domain without a ring page (mfn 0 or below)"),
    "dom-no-local-port": (W, "a dom line without oxenstored's port (pre-4.17): it binds again"),
    "bad-port": (E, "an event-channel port of 0 or below, or over 32 bits"),
    "duplicate-port": (E, "the same local event-channel port for two things"),
    # sockets and watches
    "duplicate-socket": (E, "two socket lines with one descriptor"),
    "watch-unknown-connection": (E, "a watch of a connection without an earlier dom/socket line"),
    "bad-watch-path": (E, "a watch path oxenstored rejects (empty or invalid); watch skipped"),
    "duplicate-watch": (E, "the same watch (path and token) twice on one connection"),
    "watch-over-quota": (E, "more watches than quota-maxwatch allows a guest; the rest skipped"),
    # nodes
    "bad-path": (E, "a node path oxenstored rejects; the node is skipped"),
    "noncanonical-path": (W, "a path written as @name: oxenstored reads it as /@name"),
    "duplicate-node": (E, "the same node twice; the later line overwrites the earlier"),
    "node-parent-missing": (E, "a node whose parent has no earlier line; oxenstored skips it"),
    "node-too-big": (E, "a value longer than quota-maxsize; oxenstored skips the node"),
}

#: Nodes oxenstored creates before reading a dump (``store.ml:Path.specials``).
SPECIAL_NODES = ((b"@introduceDomain",), (b"@releaseDomain",))

_NAME = re.compile(rb"[a-zA-Z0-9_@-]+")
_DOMID_MAX = 0xFFFF
_FD_MAX = 0x7FFFFFFF  # a descriptor is a C int
_PORT_MAX = 0xFFFFFFFF  # event-channel ports are 32-bit
# A watch's relative path is relative to this, the domid filled in
# (``connection.ml:get_path``; sockets are domain 0).
_DOMAIN_PATH = b"/local/domain/%d/"


@dataclass(slots=True, frozen=True)
class OxDiagnostic:
    """One finding: a rule broken at a line (1 = the header)."""

    rule: str
    severity: Severity
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.severity}: {self.rule}: {self.message}"


@dataclass(slots=True)
class DumpAnalysis:
    """What :func:`analyse_dump` found.

    ``dropped`` maps the line number of each line oxenstored would not load
    to the reason; ``duplicates`` maps each later line of a node written
    more than once to its first line (oxenstored keeps the node where the
    first line put it, with the last line's value and permissions);
    ``diagnostics`` is every finding, in line order.
    """

    diagnostics: list[OxDiagnostic] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)
    duplicates: dict[int, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[OxDiagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]


def node_components(path: bytes) -> tuple[bytes, ...] | None:
    """The path as oxenstored splits it (``store.ml:Path.of_string``), None if invalid.

    ``@name`` is one component (a child of the root), ``/`` none.
    """
    if not path:
        return None
    if path.startswith(b"@"):
        return (path,)
    if path == b"/":
        return ()
    parts = path.split(b"/")
    if parts[0] != b"" or not all(_NAME.fullmatch(p) for p in parts[1:]):
        return None
    return tuple(parts[1:])


def watch_key(conn: int, path: bytes) -> bytes | None:
    """The absolute path a watch of ``conn`` on ``path`` is kept under, None if invalid.

    ``connection.ml:get_watch_path`` then ``connections.ml:key_of_str``.
    """
    if not path:
        return None
    if path.startswith(b"@"):
        return path
    if not path.startswith(b"/"):
        path = _DOMAIN_PATH % max(conn, 0) + path
    return path if node_components(path) is not None else None


class _Walk:
    """One pass over the lines, doing oxenstored's bookkeeping."""

    def __init__(self, quota: OxenstoredQuota | None) -> None:
        self.quota = quota
        self.out = DumpAnalysis()
        self.global_line = 0
        self.evtchn_line = 0
        self.dom_seen = False
        self.fds: dict[int, str] = {}
        self.ports: dict[int, str] = {}
        self.conns: set[int] = set()
        self.watches: set[tuple[int, bytes, bytes]] = set()
        self.watch_count: dict[int, int] = {}
        self.nodes: dict[tuple[bytes, ...], int] = {c: 0 for c in SPECIAL_NODES}
        self.nodes[()] = 0
        self.store_lines = 0
        self.root_line = False

    def report(self, rule: str, line: int, message: str, drop: bool = False) -> None:
        severity = RULES[rule][0]
        self.out.diagnostics.append(OxDiagnostic(rule, severity, line, message))
        if drop:
            self.out.dropped.setdefault(line, f"{rule}: {message}")

    def claim_fd(self, fd: int, what: str, n: int) -> None:
        if fd in self.fds:
            self.report("fd-clash", n, f"descriptor {fd} of {what} is also {self.fds[fd]}")
        else:
            self.fds[fd] = what

    def claim_port(self, port: int, what: str, n: int) -> None:
        if port in self.ports:
            self.report("duplicate-port", n, f"port {port} of {what} is also {self.ports[port]}")
        else:
            self.ports[port] = what

    def ignored(self, line: IgnoredLine, n: int) -> None:
        self.report(line.rule, n, f"{line.detail}; oxenstored skips this line", drop=True)

    def global_(self, line: GlobalLine, n: int) -> None:
        if self.global_line:
            self.report(
                "duplicate-global", n, f"global line after the one at line {self.global_line}"
            )
        self.global_line = n
        if line.extra:
            self.report("extra-fields", n, f"{len(line.extra)} field(s) after the socket")
        if not -1 <= line.socket_fd <= _FD_MAX:
            self.report("bad-fd", n, f"listening socket descriptor {line.socket_fd}", drop=True)
        elif line.socket_fd >= 0:
            self.claim_fd(line.socket_fd, "the listening socket", n)

    def evtchn(self, line: EvtchnDevLine, n: int) -> None:
        if self.evtchn_line:
            self.report(
                "duplicate-evtchn-dev", n, f"evtchn-dev after the one at line {self.evtchn_line}"
            )
        elif self.dom_seen:
            self.report("evtchn-dev-late", n, "evtchn-dev after dom lines")
        if not 0 <= line.fd <= _FD_MAX:
            self.report("bad-fd", n, f"event-channel descriptor {line.fd}", drop=True)
            return
        self.evtchn_line = n
        self.claim_fd(line.fd, "the event-channel device", n)
        if not 0 < line.domexc_port <= _PORT_MAX:
            self.report("bad-port", n, f"DOM_EXC port {line.domexc_port}")
        else:
            self.claim_port(line.domexc_port, "the DOM_EXC VIRQ", n)

    def dom(self, line: DomLine, n: int) -> None:
        d = line.domid
        if not self.evtchn_line and not self.dom_seen:
            self.report("no-evtchn-dev", n, f"domain {d} before any evtchn-dev line")
        self.dom_seen = True
        if line.extra:
            self.report("extra-fields", n, f"{len(line.extra)} field(s) after the local port")
        if not 0 <= d <= _DOMID_MAX:
            self.report("bad-domid", n, f"domid {d}", drop=True)
            return
        if d >= DOMID_FIRST_RESERVED:
            self.report("reserved-domid", n, f"domid {d:#x}")
        if d in self.conns:
            self.report("duplicate-dom", n, f"domain {d} again", drop=True)
            return
        if d > 0 and line.mfn <= 0:
            self.report("dom-no-ring", n, f"domain {d} has ring mfn {line.mfn}")
        if d > 0 and not 0 < line.remote_port <= _PORT_MAX:
            self.report("bad-port", n, f"domain {d}'s own port {line.remote_port}")
        if line.local_port is None:
            self.report("dom-no-local-port", n, f"domain {d}")
        elif not 0 < line.local_port <= _PORT_MAX:
            self.report("bad-port", n, f"domain {d}'s local port {line.local_port}")
        else:
            self.claim_port(line.local_port, f"domain {d}", n)
        self.conns.add(d)

    def socket(self, line: SocketLine, n: int) -> None:
        if not 0 < line.fd <= _FD_MAX:
            self.report("bad-fd", n, f"socket descriptor {line.fd}", drop=True)
            return
        if -line.fd in self.conns:
            self.report("duplicate-socket", n, f"socket {line.fd} again", drop=True)
            return
        self.claim_fd(line.fd, f"socket {line.fd}", n)
        self.conns.add(-line.fd)

    def watch(self, line: WatchLine, n: int) -> None:
        who = f"socket {-line.conn}" if line.conn < 0 else f"domain {line.conn}"
        if line.conn not in self.conns:
            self.report(
                "watch-unknown-connection", n, f"watch of {who}, not seen before", drop=True
            )
            return
        key = watch_key(line.conn, line.path)
        if key is None:
            self.report("bad-watch-path", n, f"watch path {quote(line.path)} of {who}", drop=True)
            return
        if (line.conn, key, line.token) in self.watches:
            self.report(
                "duplicate-watch",
                n,
                f"{who} watches {quote(key)} with {quote(line.token)} again",
                drop=True,
            )
            return
        count = self.watch_count.get(line.conn, 0)
        q = self.quota
        if q and q.activate and q.maxwatch > 0 and line.conn > 0 and count > q.maxwatch:
            self.report(
                "watch-over-quota", n, f"watch {count + 1} of {who}, quota {q.maxwatch}", drop=True
            )
            return
        self.watch_count[line.conn] = count + 1
        self.watches.add((line.conn, key, line.token))

    def store(self, line: StoreLine, n: int) -> None:
        self.store_lines += 1
        parts = node_components(line.path)
        if parts is None:
            self.report("bad-path", n, f"node path {quote(line.path)}", drop=True)
            return
        if line.path.startswith(b"@"):
            self.report("noncanonical-path", n, f"{quote(line.path)}")
        self.root_line = self.root_line or parts == ()
        shown = (b"/" + b"/".join(parts)).decode("ascii")
        q = self.quota
        if q and q.activate and len(line.value) > q.maxsize:
            self.report(
                "node-too-big", n, f"{shown}: {len(line.value)} bytes > {q.maxsize}", drop=True
            )
            return
        if parts in self.nodes and self.nodes[parts]:
            first = self.nodes[parts]
            self.report("duplicate-node", n, f"{shown} again (first at line {first})")
            self.out.duplicates[n] = first
            return
        if parts and parts[:-1] not in self.nodes:
            self.report("node-parent-missing", n, f"{shown}", drop=True)
            return
        self.nodes[parts] = n

    def finish(self, dump: OxDump, last: int) -> DumpAnalysis:
        if not dump.final_newline:
            self.report("truncated", last, "no newline after the last line")
        if not self.store_lines:
            self.report("no-nodes", last, "the dump has no store line")
        elif not self.root_line:
            self.report("no-root", last, "no store line for /")
        if not self.global_line:
            self.report("no-global", last, "no global line")
        self.out.diagnostics.sort(key=lambda d: d.line)
        return self.out


def analyse_dump(dump: OxDump, quota: OxenstoredQuota | None = None) -> DumpAnalysis:
    """The findings on a parsed ``dump`` and the lines oxenstored would not load.

    With ``quota`` (the daemon's settings), watches and node sizes over its
    limits are reported as oxenstored would refuse them.
    """
    walk = _Walk(quota)
    last = 1
    for n, line in dump.numbered():
        match line:
            case StoreLine():
                walk.store(line, n)
            case WatchLine():
                walk.watch(line, n)
            case DomLine():
                walk.dom(line, n)
            case SocketLine():
                walk.socket(line, n)
            case GlobalLine():
                walk.global_(line, n)
            case EvtchnDevLine():
                walk.evtchn(line, n)
            case IgnoredLine():
                walk.ignored(line, n)
        last = n
    return walk.finish(dump, last)


def check_dump(data: bytes, quota: OxenstoredQuota | None = None) -> list[OxDiagnostic]:
    """Every problem of the dump in ``data``; never raises."""
    try:
        dump = parse_dump(data)
    except OxenstoredFormatError as exc:
        return [OxDiagnostic("bad-header", Severity.ERROR, exc.line, exc.message)]
    return analyse_dump(dump, quota).diagnostics


__all__ = [
    "RULES",
    "SPECIAL_NODES",
    "DumpAnalysis",
    "OxDiagnostic",
    "analyse_dump",
    "check_dump",
    "node_components",
    "watch_key",
]
