"""Process plumbing of the daemon: pid file, fork, readiness, process name, paths.

The C daemon (``posix.c:daemonize``, ``finish_daemonize``, ``write_pidfile``
in xen.git) forks twice with a ``setsid`` between, writes its pid file, and
sends systemd's ``READY=1`` once it serves.  :func:`daemonize` forks the
same way, but the process that was started waits until the daemon listens
and has written its pid file (or failed) before it exits, with the
daemon's status: whoever runs ``pyxenstored`` finds a working daemon when
the command returns, which init scripts rely on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from pyxenstored.paths import SOCKET_NAME, daemon_rundir

log = logging.getLogger("pyxenstored.daemon")

PROCESS_NAME = "pyxenstored"
# Seconds a connect to an existing socket may take before the daemon
# behind it is taken for alive (a full listen backlog blocks the connect).
_PROBE_TIMEOUT = 2.0


class PidFileLocked(Exception):
    """Another daemon holds the pid file lock; ``holder`` is the pid written in it."""

    def __init__(self, path: str, holder: str) -> None:
        super().__init__(path, holder)
        self.path = path
        self.holder = holder


@dataclass(slots=True)
class PidFile:
    """A pid file kept open and locked for the daemon's lifetime.

    C writes the file under a ``lockf`` lock and exits silently when the lock
    is taken; keeping the descriptor open keeps the lock, so a second daemon
    is turned away for as long as the first one runs, not just while it
    starts.  The descriptor is close-on-exec: a live update's successor
    takes the lock again under the same pid.
    """

    path: str
    fd: int

    @classmethod
    def create(cls, path: str) -> PidFile:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.lockf(fd, os.F_TLOCK, 0)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise PidFileLocked(path, holder or "?") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(path, fd)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` to the service manager at ``$NOTIFY_SOCKET``, if any.

    The protocol is one datagram on a unix socket (``sd_notify(3)``; no
    libsystemd needed); an address starting with ``@`` is in the abstract
    namespace.  Returns whether a message was sent.
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


def socket_path(
    rundir: str | None, socket_opt: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """The run directory and socket path, from options first, then libxenstore's rules.

    ``--socket`` wins, then ``--rundir``/socket, then ``$XENSTORED_PATH``,
    then ``<default run dir>/socket`` (see :mod:`pyxenstored.paths`).
    """
    env = os.environ if environ is None else environ
    run = rundir or daemon_rundir(env)
    if socket_opt:
        return run, socket_opt
    if rundir:
        return run, os.path.join(rundir, SOCKET_NAME)
    if env.get("XENSTORED_PATH"):
        return run, env["XENSTORED_PATH"]
    return run, os.path.join(run, SOCKET_NAME)


def live_daemon_on(path: str) -> bool:
    """Whether a daemon answers connections on the unix socket ``path``.

    A socket file whose daemon died refuses the connection (stale: it may be
    replaced); a connection that is accepted, or that does not complete in
    time, means a live daemon.  Anything else (no file, no permission) is
    left for ``listen`` to report.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(_PROBE_TIMEOUT)
        try:
            sock.connect(path)
        except TimeoutError:
            return True
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                log.debug("cannot probe %s: %s", path, exc)
            return False
    return True


def set_process_name(name: str = PROCESS_NAME) -> None:
    """Name the process ``name`` (its ``comm``), whatever interpreter runs it.

    ``ps``, ``pkill`` and ``start-stop-daemon --name`` see this name; started
    as ``python3 -m pyxenstored`` the process would otherwise be ``python3``.
    """
    try:
        with open("/proc/self/comm", "w", encoding="ascii") as comm:
            comm.write(name[:15])
    except OSError as exc:
        log.debug("cannot set the process name: %s", exc)


def stderr_discarded() -> bool:
    """Whether standard error goes to ``/dev/null`` (a daemon in the background,
    also after a live update replaced it in place)."""
    try:
        err, null = os.fstat(2), os.stat(os.devnull)
    except OSError:
        return True
    return (err.st_dev, err.st_ino) == (null.st_dev, null.st_ino)


class Readiness:
    """The daemon's end of the pipe to the process that started it (forked mode).

    The starting process waits on the pipe: one byte is the status it exits
    with (0: the daemon serves).  Until the daemon reports, its messages go
    to the starter's stderr; once it serves, its standard descriptors go to
    ``/dev/null`` as C's ``finish_daemonize`` does.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def reported(self) -> bool:
        return self._fd < 0

    def ready(self) -> None:
        """The daemon serves: let the starter exit 0 and leave the terminal."""
        self._report(0)
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        os.close(null)

    def failed(self, status: int) -> None:
        """The daemon will not serve: the starter exits with ``status``.

        0 is a quiet success: another daemon already serves (its pid file is
        locked), as C exits 0 then.
        """
        self._report(status)

    def _report(self, status: int) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, bytes([status & 0xFF]))
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1


def daemonize() -> Readiness:
    """Fork into the background (fork, ``setsid``, fork), as C's ``daemonize``.

    Returns in the daemon only.  The calling process waits until the daemon
    calls :meth:`Readiness.ready` or :meth:`Readiness.failed` (or dies) and
    exits with that status; the middle process exits at once, so the daemon
    belongs to no session and no terminal.  Unlike C, the working directory
    stays: relative paths given on the command line keep their meaning, also
    for a live update's successor, which runs with the same arguments.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first:
        os.close(write_fd)
        os.waitpid(first, 0)
        os._exit(_wait_for_daemon(read_fd))
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)
    return Readiness(write_fd)


def _wait_for_daemon(fd: int) -> int:
    """The starter's side: the daemon's status, or 1 when it died without one."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 16)
        except KeyboardInterrupt:
            return 130
        if not chunk:
            break
        data += chunk
    if data:
        log.debug("the daemon reported status %d; its starter exits", data[0])
        return data[0]
    print(
        f"{PROCESS_NAME}: the daemon stopped before it served (run it with -N -v to see why)",
        file=sys.stderr,
    )
    return 1
