"""Logging set-up and the request trace file (the C daemon's ``-T``).

Diagnostics go through :mod:`logging` (``pyxenstored.*`` loggers, level from
``-v``/``--log-level``).  The trace file is separate, as in C: one line per
message in and out, plus connection creation/destruction, with the switches
``obj io wrl acc tdb`` that CONTROL ``log`` shows and toggles (``obj``,
``io`` and ``wrl`` produce output here; ``acc`` and ``tdb`` are accepted for
compatibility).
A line looks like C's::

    io: IN conn3 (d0) 20261125 18:30:00 WRITE (/a/b value )

with NUL bytes of the payload shown as blanks.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import time
from typing import TextIO

from pyxenstored.wire import MsgType

TRACE_SWITCHES: tuple[str, ...] = ("obj", "io", "wrl", "acc", "tdb")
_DEFAULT_SWITCHES = frozenset({"obj", "io"})
_TYPE_NAMES = {int(t): t.name for t in MsgType}
_NUL_TO_BLANK = bytes.maketrans(b"\0", b" ")

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def setup_logging(level: int | str = logging.WARNING, stream: TextIO | None = None) -> None:
    """Send the ``pyxenstored`` loggers to ``stream`` (stderr) at ``level``."""
    root = logging.getLogger("pyxenstored")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def valid_trace_switch(arg: str) -> bool:
    """Whether ``arg`` is ``+name`` or ``-name`` of a trace switch (``--trace-control``)."""
    return len(arg) >= 2 and arg[0] in "+-" and arg[1:] in TRACE_SWITCHES


def log_to_syslog(ident: str = "pyxenstored") -> bool:
    """Send the ``pyxenstored`` loggers to syslog (``/dev/log``), keeping their level.

    For a daemon in the background, whose stderr is ``/dev/null`` (C logs to
    syslog the same way).  Without a syslog socket the records are dropped;
    returns whether syslog was reached.
    """
    root = logging.getLogger("pyxenstored")
    handler: logging.Handler
    try:
        handler = logging.handlers.SysLogHandler(
            "/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter(f"{ident}[{os.getpid()}]: %(name)s: %(message)s"))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    return not isinstance(handler, logging.NullHandler)


def level_from_options(verbose: int, log_level: str | None) -> int:
    """``--log-level`` wins; otherwise each ``-v`` is one step from WARNING."""
    if log_level is not None:
        value = logging.getLevelName(log_level.upper())
        if not isinstance(value, int):
            raise ValueError(f"unknown log level {log_level!r}")
        return value
    return max(logging.DEBUG, logging.WARNING - 10 * verbose)


class Tracer:
    """The trace file: every request and reply, when enabled."""

    __slots__ = ("path", "base_dir", "_fd", "_switches", "io_on")

    def __init__(self, path: str | None = None, base_dir: str = ".") -> None:
        # Relative names given later (CONTROL logfile) resolve here.
        self.base_dir = base_dir
        self.path = self._absolute(path) if path else None
        self._fd = -1
        self._switches = set(_DEFAULT_SWITCHES)
        # Cached: checked on every message, so keep it one attribute load.
        self.io_on = False
        if self.path:
            self.reopen()

    def _absolute(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)

    def _update(self) -> None:
        self.io_on = self._fd >= 0 and "io" in self._switches

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def reopen(self) -> None:
        """(Re)open the trace file, e.g. after log rotation (SIGHUP, ``log on``)."""
        if not self.path:
            return
        self.close()
        try:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            logging.getLogger("pyxenstored.server").error(
                "cannot open trace file %s: %s", self.path, exc
            )
        else:
            self.write("\n***\n")
        self._update()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1
        self._update()

    def set_file(self, path: str) -> None:
        """Switch to another trace file (CONTROL ``logfile``)."""
        self.close()
        self.path = self._absolute(path)
        self.reopen()

    def set_switch(self, arg: str) -> bool:
        """Apply ``+name`` or ``-name``; False for anything else."""
        if not valid_trace_switch(arg):
            return False
        if arg[0] == "+":
            self._switches.add(arg[1:])
        else:
            self._switches.discard(arg[1:])
        self._update()
        return True

    def settings(self) -> str:
        """CONTROL ``log`` without argument: one line per switch."""
        lines = ["Log switch settings:\n"]
        for name in TRACE_SWITCHES:
            lines.append(f"{name:<8}: {'on' if name in self._switches else 'off'}\n")
        return "".join(lines)

    def write(self, text: str) -> None:
        if self._fd < 0:
            return
        # A full disk must not take the daemon down.
        with contextlib.suppress(OSError):
            os.write(self._fd, text.encode("utf-8", "replace"))

    def message(self, direction: str, conn_id: int, domid: int, type_: int, payload: bytes) -> None:
        """One ``io:`` line; callers check :attr:`io_on` first."""
        stamp = time.strftime("%Y%m%d %H:%M:%S")
        name = _TYPE_NAMES.get(type_, "**UNKNOWN**")
        body = payload.translate(_NUL_TO_BLANK).decode("latin-1")
        self.write(f"io: {direction} conn{conn_id} (d{domid}) {stamp} {name} ({body})\n")

    def wrl(self, line: str) -> None:
        """A write-rate line from the store (``store/wrl.py``), when ``wrl`` is on."""
        if self._fd >= 0 and "wrl" in self._switches:
            self.write("wrl: " + line)

    def obj(self, event: str, what: str, ident: int) -> None:
        if self._fd >= 0 and "obj" in self._switches:
            self.write(f"obj: {event} {what} {ident}\n")

    def text(self, line: str) -> None:
        """A free-form line (CONTROL ``print`` and similar)."""
        self.write(line if line.endswith("\n") else line + "\n")
