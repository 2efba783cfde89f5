"""CONTROL (type 0): command parsing, the store's own commands, and hooks.

Commands that touch files or the process (``log``, ``logfile``,
``memreport``, ``live-update``) go through :class:`ControlHooks`, which the
server implements; :class:`DefaultControlHooks` is used when the store runs
alone.  The texts follow C's ``control.c`` formats exactly.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ..wire import XsError, split_strings

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
