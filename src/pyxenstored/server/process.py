"""Process plumbing of the daemon: pid file, readiness notification, paths."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass


class PidFileLocked(Exception):
    """Another daemon holds the pid file lock."""


@dataclass(slots=True)
class PidFile:
    """A pid file kept open and locked for the daemon's lifetime (as C does)."""

    path: str
    fd: int

    @classmethod
    def create(cls, path: str) -> PidFile:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.lockf(fd, os.F_TLOCK, 0)
        except OSError:
            os.close(fd)
            raise PidFileLocked(path) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return cls(path, fd)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` to the service manager at ``$NOTIFY_SOCKET``, if any.

    The protocol is one datagram on a unix socket; an address starting with
    ``@`` is in the abstract namespace.  Returns whether a message was sent.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    elif address[0] != "/":
        return False  # other address families (vsock) are not handled
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode("utf-8"), address)
        except OSError:
            return False
    return True


def default_rundir(environ: Mapping[str, str] | None = None) -> str:
    """``$XENSTORED_RUNDIR``, else ``$XDG_RUNTIME_DIR/pyxenstored``, else ``/tmp/pyxenstored-$UID``."""
    env = os.environ if environ is None else environ
    if env.get("XENSTORED_RUNDIR"):
        return env["XENSTORED_RUNDIR"]
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "pyxenstored")
    return f"/tmp/pyxenstored-{os.getuid()}"


def socket_path(
    rundir: str | None, socket_opt: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """The run directory and socket path, from options first, then libxenstore's rules.

    ``--socket`` wins, then ``--rundir``/socket, then ``$XENSTORED_PATH``,
    then ``<default run dir>/socket`` (digest 13.1).
    """
    env = os.environ if environ is None else environ
    run = rundir or default_rundir(env)
    if socket_opt:
        return run, socket_opt
    if rundir:
        return run, os.path.join(rundir, "socket")
    if env.get("XENSTORED_PATH"):
        return run, env["XENSTORED_PATH"]
    return run, os.path.join(run, "socket")
