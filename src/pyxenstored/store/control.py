"""CONTROL (type 0): command parsing, the store's own commands, and hooks.

Commands that touch files or the process (``log``, ``logfile``,
``memreport``, ``live-update``) go through :class:`ControlHooks`, which the
server implements; :class:`DefaultControlHooks` is used when the store runs
alone.  The texts follow C's ``control.c`` formats exactly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from ..wire import DOMID_ANY, OK, XsError, c_atoi, split_strings
from . import quota as q
from .node import SPECIAL_NODES, child_path

if TYPE_CHECKING:
    from .control_ops import ControlOps

log = logging.getLogger("pyxenstored.store")

TRACE_SWITCHES = ("obj", "io", "wrl", "acc", "tdb")

# (command, parameter synopsis) in C's order: ``help`` prints them so.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("check", ""),
    ("log", "[on|off|+<switch>|-<switch>]"),
    (
        "live-update",
        "[-c <cmdline>] [-F] [-t <timeout>] [-v <version>] <file>\n"
        "    Default timeout is 60 seconds, default version is 2.",
    ),
    ("logfile", "<file>"),
    ("memreport", "[<file>]"),
    ("print", "<string>"),
    ("quota", "[set <name> <val>|<domid>|max [-r]]"),
    ("quota-soft", "[set <name> <val>]"),
    ("domain-state-save", "<domid> <file>"),
    ("domain-state-restore", "<file> <domid>"),
    ("help", ""),
)
# Domain migration (pyxenstored only, no C counterpart): see docs/migration.md.
DOMAIN_STATE_COMMANDS = frozenset({"domain-state-save", "domain-state-restore"})
DOMAIN_STATE_UNSUPPORTED = b"domain migration needs a running daemon\0"
COMMAND_NAMES = frozenset(name for name, _ in COMMANDS)
# live-update splits out only the command and 6 arguments: a binary chunk may hold NULs.
LIVE_UPDATE_MAX_PARS = 7

LIVE_UPDATE_UNSUPPORTED = b"live-update is not yet supported\0"


def help_text() -> bytes:
    return "".join(f"{name:<15} {pars}\n" for name, pars in COMMANDS).encode("ascii") + b"\0"


def split_control(payload: bytes) -> tuple[str, list[bytes]]:
    """The command name and its arguments, as C's ``do_control`` splits them."""
    nul = payload.find(b"\0")
    if nul < 0:
        raise XsError("EINVAL", "CONTROL without command")
    try:
        command = payload[:nul].decode("ascii")
    except UnicodeDecodeError:
        raise XsError("EINVAL", "bad CONTROL command") from None
    if command not in COMMAND_NAMES:
        raise XsError("EINVAL", f"unknown CONTROL command {command!r}")
    if command == "live-update":
        return command, split_live_update(payload[nul + 1 :])
    return command, split_strings(payload[nul + 1 :])


def split_live_update(rest: bytes) -> list[bytes]:
    """Arguments of ``live-update``: at most 6; binary data keeps its NULs.

    C splits only the command and 6 arguments and hands out pointers, so
    the ``-d <size> <chunk>`` chunk and the last argument reach into the
    rest of the payload.  Here the chunk of ``-d`` and a 6th argument are
    the raw remainder (without the final NUL).
    """
    args: list[bytes] = []
    while rest and len(args) < LIVE_UPDATE_MAX_PARS - 1:
        if len(args) == LIVE_UPDATE_MAX_PARS - 2 or (len(args) == 2 and args[0] == b"-d"):
            args.append(rest[:-1] if rest.endswith(b"\0") else rest)
            break
        end = rest.find(b"\0")
        if end < 0:
            break
        args.append(rest[:end])
        rest = rest[end + 1 :]
    return args


class ControlHooks(Protocol):
    """The server's side of the I/O-touching CONTROL commands."""

    def log(self, args: list[bytes]) -> bytes:
        """``log`` with 0 or 1 argument; returns the reply payload (text + NUL)."""
        ...

    def logfile(self, name: bytes) -> None: ...

    def memreport(self, name: bytes | None) -> None: ...

    def live_update(self, args: list[bytes]) -> bytes:
        """Returns the reply text (+ NUL): ``OK`` or an error message."""
        ...

    def domain_state(self, command: str, args: list[bytes]) -> bytes:
        """``domain-state-save``/``-restore``: the reply text (+ NUL), ``OK`` or why not."""
        ...


class DefaultControlHooks:
    """Hooks for a store without a server: switches in memory, no files."""

    def __init__(self) -> None:
        self.switches = {name: name in ("obj", "io") for name in TRACE_SWITCHES}
        self.tracefile: bytes | None = None
        self.logging_on = False

    def log(self, args: list[bytes]) -> bytes:
        if not args:
            lines = "".join(
                f"{name:<8}: {'on' if on else 'off'}\n" for name, on in self.switches.items()
            )
            return b"Log switch settings:\n" + lines.encode("ascii") + b"\0"
        if len(args) != 1:
            raise XsError("EINVAL", "log takes one argument")
        arg = args[0]
        if arg == b"on":
            self.logging_on = True
        elif arg == b"off":
            self.logging_on = False
        else:
            name = arg[1:].decode("ascii", "replace")
            if arg[:1] not in (b"+", b"-") or name not in self.switches:
                raise XsError("EINVAL", f"bad log switch {arg!r}")
            self.switches[name] = arg[:1] == b"+"
        return b"OK\0"

    def logfile(self, name: bytes) -> None:
        self.tracefile = name

    def memreport(self, name: bytes | None) -> None:
        if name is None and self.tracefile is None:
            raise XsError("EINVAL", "no trace file (C: EBADF)")

    def live_update(self, args: list[bytes]) -> bytes:
        return LIVE_UPDATE_UNSUPPORTED

    def domain_state(self, command: str, args: list[bytes]) -> bytes:
        return DOMAIN_STATE_UNSUPPORTED


def run_control(store: ControlOps, command: str, args: list[bytes]) -> bytes:
    """Run one CONTROL command; its reply payload (text + NUL) or XsError."""
    if command == "help":
        if args:
            raise XsError("EINVAL", "help takes no argument")
        return help_text()
    if command == "check":
        if args:
            raise XsError("EINVAL", "check takes no argument")
        problems = store.check()
        for problem in problems:
            log.error("check: %s", problem)
        return OK
    if command == "log":
        return store.hooks.log(args)
    if command == "logfile":
        if len(args) != 1:
            raise XsError("EINVAL", "logfile takes a file name")
        store.hooks.logfile(args[0])
        return OK
    if command == "memreport":
        if len(args) > 1:
            raise XsError("EINVAL", "memreport takes at most a file name")
        store.hooks.memreport(args[0] if args else None)
        return OK
    if command == "print":
        if len(args) != 1:
            raise XsError("EINVAL", "print takes one string")
        log.info("control: %s", args[0].decode("utf-8", "replace"))
        return OK
    if command == "live-update":
        return store.hooks.live_update(args)
    if command in DOMAIN_STATE_COMMANDS:
        return store.hooks.domain_state(command, args)
    if command == "quota":
        return control_quota(store, args, q.HARD)
    return control_quota(store, args, q.SOFT)  # quota-soft


def control_quota(store: ControlOps, args: list[bytes], kind: int) -> bytes:
    """``quota`` / ``quota-soft`` (``control.c:do_control_quota``, ``do_control_quota_s``)."""
    table = store.config.quota
    if not args:
        return q.format_settings(table, kind).encode("ascii") + b"\0"
    if args[0] == b"set":
        if len(args) != 3:
            raise XsError("EINVAL", "quota set <name> <val>")
        value = q.parse_control_value(args[2])
        index, got = q.parse_quota_name(table, args[1].decode("latin-1"))
        if got != q.HARD:
            raise XsError("EINVAL", "not a quota name")
        if table.get(index, kind) == q.DISABLED:
            raise XsError("EINVAL", "no such soft quota")
        table.set(index, kind, value)
        return OK
    if kind == q.SOFT:
        raise XsError("EINVAL", "quota-soft takes only set")
    if args[0] == b"max":
        if len(args) > 2 or (len(args) == 2 and args[1] != b"-r"):
            raise XsError("EINVAL", "quota max [-r]")
        if len(args) == 2:
            store.reset_maxima()
        return q.format_max(store.global_maxima()).encode("ascii") + b"\0"
    if len(args) != 1:
        raise XsError("EINVAL", "quota <domid>")
    dom = store.domains.get(c_atoi(args[0]) & 0xFFFFFFFF)
    if dom is None:
        raise XsError("ENOENT", "no such domain")
    return q.format_usage(dom.domid, dom.usage, dom.maxima).encode("ascii") + b"\0"


def recount(store: ControlOps) -> dict[int, list[int]]:
    """Usage counters recomputed from scratch: domid -> [nodes, watches, memory, transactions].

    Memory is what the committed nodes, the watches, the copies held by
    open transactions (charged to the transaction's connection) and the
    server's queued output are charged.
    """
    counts: dict[int, list[int]] = {}
    for path, node in store.nodes.items():
        c = counts.setdefault(node.perms[0][0], [0, 0, 0, 0])
        c[0] += 1
        c[2] += node.memory(path)
    for conn in store.conns.values():
        if conn.domain is None:
            continue
        c = counts.setdefault(conn.domid, [0, 0, 0, 0])
        c[1] += len(conn.watches)
        c[2] += sum(len(w.path) + len(w.token) for w in conn.watches.values())
        c[2] += sum(tx.held_memory() for tx in conn.transactions.values())
        c[3] += len(conn.transactions)
    for domid, dom in store.domains.items():
        c = counts.setdefault(domid, [0, 0, 0, 0])
        c[2] += dom.io_usage[q.MEMORY]
    return counts


def check_store(store: ControlOps) -> list[str]:
    """CONTROL ``check``: the tree and the counters; the problems found (empty: fine).

    Reachability of every node from ``/``, child lists and their lengths,
    each domain's counters against a recount (open transactions' copies
    included), each open transaction's charge against what it holds, the
    watch index against the connections.  Unlike C, problems are reported, not repaired.
    """
    problems: list[str] = []
    _check_tree(store, problems)
    _check_counters(store, problems)
    _check_watches(store, problems)
    _check_transactions(store, problems)
    return problems


def _check_tree(store: ControlOps, problems: list[str]) -> None:
    """Every node reachable from ``/`` once, its child list right; the special nodes there."""
    nodes = store.nodes
    if "/" not in nodes:
        problems.append("no root node")
    reachable = {"/"}
    stack = ["/"] if "/" in nodes else []
    while stack:
        path = stack.pop()
        node = nodes[path]
        if not node.perms:
            problems.append(f"{path}: no permissions")
        if node.clen != sum(len(n) + 1 for n in node.children):
            problems.append(f"{path}: child list length {node.clen} is wrong")
        listing = node.children.listing if node.children else None
        if listing is not None and listing != "".join(n + "\0" for n in node.children).encode():
            problems.append(f"{path}: remembered DIRECTORY reply is out of date")
        for name in node.children:
            child = child_path(path, name)
            if child not in nodes:
                problems.append(f"{path}: child {name} missing")
            elif child in reachable:
                problems.append(f"{child}: reachable twice")
            else:
                reachable.add(child)
                stack.append(child)
    for path in nodes:
        if path not in reachable and not path.startswith("@"):
            problems.append(f"{path}: not reachable from /")
    for special in SPECIAL_NODES:
        if special not in nodes:
            problems.append(f"{special}: special node missing")


def _check_counters(store: ControlOps, problems: list[str]) -> None:
    """Each domain's counters against a recount (open transactions' copies included)."""
    counts = recount(store)
    for domid, dom in store.domains.items():
        nodes_n, watches_n, mem, txs = counts.get(domid, [0, 0, 0, 0])
        expected = (nodes_n, watches_n, mem, txs)
        actual = (
            dom.usage[q.NODES],
            dom.usage[q.WATCHES],
            dom.usage[q.MEMORY],
            dom.usage[q.TRANSACTIONS],
        )
        if expected != actual:
            problems.append(f"domain {domid}: counters {actual} != recount {expected}")
    for domid in counts:
        if domid not in store.domains and domid != DOMID_ANY:
            problems.append(f"domain {domid}: owns nodes but has no record")


def _check_watches(store: ControlOps, problems: list[str]) -> None:
    """Each connection's quota domain, and the watch index against the connections."""
    seen = 0
    for conn in store.conns.values():
        if conn.limited is not (None if conn.privileged else conn.domain):
            problems.append(f"connection {conn.conn_id}: quota domain is not its domain")
        for key, watch in conn.watches.items():
            seen += 1
            if watch not in store.watches.by_path.get(watch.path, ()) or key != (
                watch.path,
                watch.token,
            ):
                problems.append(f"watch {watch.path} of connection {conn.conn_id} not indexed")
    if seen != store.watches.count:
        problems.append(f"watch index holds {store.watches.count} watches, connections {seen}")


def _check_transactions(store: ControlOps, problems: list[str]) -> None:
    """Each open transaction's charge and count; the write-rate credits of introduced domains."""
    for conn in store.conns.values():
        for tx in conn.transactions.values():
            held = tx.held_memory()
            if tx.memory != held:
                problems.append(
                    f"transaction {tx.tx_id} of connection {conn.conn_id}: "
                    f"charged {tx.memory} bytes, holds {held}"
                )
    open_tx = sum(len(conn.transactions) for conn in store.conns.values())
    if store.open_transactions() != open_tx:
        problems.append(
            f"{store.open_transactions()} open transactions counted, connections hold {open_tx}"
        )
    for domid, dom in store.domains.items():
        if dom.introduced and domid not in store.wrl:
            problems.append(f"domain {domid}: introduced without write-rate credits")
