"""The server's half of CONTROL: trace file switches, memreport, live update.

The store parses CONTROL and calls these hooks for the commands that touch
files or the process (``store.control.ControlHooks``).  Formats follow C's
``control.c``; relative file names resolve in the daemon's run directory
(C uses ``/var/lib/xen/xenstore``).
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable, Iterable

from pyxenstored.server.connection import Connection
from pyxenstored.server.log import Tracer
from pyxenstored.store.control import DOMAIN_STATE_UNSUPPORTED, LIVE_UPDATE_UNSUPPORTED
from pyxenstored.wire import XsError


class ServerControlHooks:
    """ControlHooks backed by the daemon's tracer and connection table."""

    def __init__(
        self, tracer: Tracer, connections: Callable[[], Iterable[Connection]] | None = None
    ) -> None:
        self.tracer = tracer
        # Bound late: the server is built after the store that holds us.
        self.connections: Callable[[], Iterable[Connection]] = connections or (lambda: ())
        # CONTROL live-update: set by server/liveupdate.py when it is installed.
        self.live_updater: Callable[[list[bytes]], bytes] | None = None
        # CONTROL domain-state-save/-restore: set by server/domain_state.py.
        self.domain_stater: Callable[[str, list[bytes]], bytes] | None = None

    def log(self, args: list[bytes]) -> bytes:
        if not args:
            return self.tracer.settings().encode("ascii") + b"\0"
        if len(args) != 1:
            raise XsError("EINVAL", "log takes at most one argument")
        arg = args[0]
        if arg == b"on":
            self.tracer.reopen()
        elif arg == b"off":
            self.tracer.close()
        elif not self.tracer.set_switch(arg.decode("latin-1")):
            raise XsError("EINVAL", f"bad log switch {arg!r}")
        return b"OK\0"

    def logfile(self, name: bytes) -> None:
        self.tracer.set_file(os.fsdecode(name))

    def memreport(self, name: bytes | None) -> None:
        if name is None:
            if self.tracer.path is None:
                # C answers EBADF, which is not in the wire table: EINVAL.
                raise XsError("EINVAL", "no trace file for memreport")
            path = self.tracer.path
        else:
            path = os.fsdecode(name)
            if not os.path.isabs(path):
                path = os.path.join(self.tracer.base_dir, path)
        try:
            with open(path, "a", encoding="utf-8") as out:
                out.write(self.report())
        except OSError as exc:
            raise XsError("EINVAL", f"memreport: {exc}") from None

    def report(self) -> str:
        """A memory report: process figures and every connection's buffers."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        lines = [
            f"memreport {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}",
            f"max resident set: {usage.ru_maxrss} KiB",
            f"python objects tracked by gc: {len(gc.get_objects())}",
        ]
        total_in = total_out = 0
        conns = list(self.connections())
        for conn in conns:
            pending_in = conn.reader.buffered()
            total_in += pending_in
            total_out += conn.out_bytes
            lines.append(
                f"connection {conn.conn_id} domid {conn.domid}: input {pending_in} bytes,"
                f" output {conn.out_bytes} bytes (limit {conn.out_limit}),"
                f" outstanding {conn.outstanding}"
            )
        lines.append(
            f"{len(conns)} connection(s): input {total_in} bytes, output {total_out} bytes"
        )
        return "\n".join(lines) + "\n"

    def live_update(self, args: list[bytes]) -> bytes:
        if self.live_updater is None:
            return LIVE_UPDATE_UNSUPPORTED
        return self.live_updater(args)

    def domain_state(self, command: str, args: list[bytes]) -> bytes:
        if self.domain_stater is None:
            return DOMAIN_STATE_UNSUPPORTED
        return self.domain_stater(command, args)
