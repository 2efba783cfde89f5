"""Byte transports under the client: the unix socket, and the common interface.

A transport moves raw bytes between the client and the daemon; it knows
nothing of messages.  :class:`SocketTransport` is the daemon's unix socket;
the shared-ring transport lives in :mod:`pyxenstored.client.ring`.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import time
from collections.abc import Mapping
from typing import Protocol

from pyxenstored.paths import SYSTEM_RUNDIR, client_socket_candidates

DEFAULT_RUNDIR = SYSTEM_RUNDIR


class ClientConnectionError(ConnectionError):
    """The connection to the daemon failed, closed, or broke the protocol."""


class Transport(Protocol):
    """What the client needs from a connection to the daemon."""

    def send(self, data: bytes, timeout: float | None = None) -> None:
        """Hand all of ``data`` to the daemon (blocking while it cannot take more)."""
        ...

    def receive(self, timeout: float | None) -> bytes:
        """Bytes from the daemon: at least one, or ``b""`` when ``timeout`` expires.

        ``timeout`` None waits for ever, 0 only takes what is already there.
        Raises :class:`ClientConnectionError` when the daemon closed the
        connection.
        """
        ...

    def close(self) -> None: ...


def device_candidates(environ: Mapping[str, str] | None = None) -> list[str]:
    """Where libxenstore looks after the socket (``xs.c:xs_domain_dev``): the xenbus device."""
    env = os.environ if environ is None else environ
    path = env.get("XENSTORED_PATH")
    if path:
        return [path]
    if os.path.exists("/dev/xen/xenbus"):
        return ["/dev/xen/xenbus"]
    return ["/proc/xen/xenbus"]


def default_socket_path(environ: Mapping[str, str] | None = None) -> str:
    """The daemon socket as libxenstore finds it (its first candidate).

    ``XENSTORED_PATH`` if set, else ``$XENSTORED_RUNDIR/socket``, else
    ``/var/run/xenstored/socket``.  :func:`socket_candidates` adds the place
    where an unprivileged pyxenstored listens.
    """
    return socket_candidates(environ)[0]


def socket_candidates(environ: Mapping[str, str] | None = None) -> list[str]:
    """The sockets :meth:`Client.connect_socket` tries, in order.

    libxenstore's socket (:func:`default_socket_path`), then, unless
    ``XENSTORED_PATH`` or ``XENSTORED_RUNDIR`` says where, the per-user socket
    of a pyxenstored run by this user (``$XDG_RUNTIME_DIR/pyxenstored/socket``,
    else ``/tmp/pyxenstored-$UID/socket``): the daemon and the client agree
    whoever runs them (:mod:`pyxenstored.paths`).
    """
    return client_socket_candidates(environ)


def connect_default_socket(connect_timeout: float | None = 10.0) -> SocketTransport:
    """The first of :func:`socket_candidates` that accepts a connection."""
    failures = []
    for path in socket_candidates():
        try:
            return SocketTransport(path, connect_timeout)
        except ClientConnectionError as exc:
            failures.append(str(exc))
    raise ClientConnectionError("; ".join(failures))


class SocketTransport:
    """A stream connection to the daemon's unix socket."""

    def __init__(self, path: str, connect_timeout: float | None = 10.0) -> None:
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(connect_timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise ClientConnectionError(f"cannot connect to xenstored at {path}: {exc}") from exc
        self._sock = sock
        self._timeout: float | None = connect_timeout
        self._rx = bytearray()  # replies read while a send was blocked

    def fileno(self) -> int:
        return self._sock.fileno()

    def _set_timeout(self, timeout: float | None) -> None:
        if timeout != self._timeout:
            self._sock.settimeout(timeout)
            self._timeout = timeout

    def send(self, data: bytes, timeout: float | None = None) -> None:
        # Non-blocking sends; while the daemon does not take more, keep
        # reading its replies so that a daemon which stops reading until its
        # replies are consumed (back-pressure) cannot deadlock a pipeline.
        self._set_timeout(0.0)
        view = memoryview(data)
        pos = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while pos < len(view):
            try:
                pos += self._sock.send(view[pos:])
                continue
            except BlockingIOError:
                pass
            except OSError as exc:
                raise ClientConnectionError(f"send to {self.path} failed: {exc}") from exc
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"xenstored at {self.path} is not reading its socket")
            readable, _, _ = select.select([self._sock], [self._sock], [], remaining)
            if readable:
                self._rx += self._recv()

    def _recv(self) -> bytes:
        try:
            data = self._sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            # recv takes bytes or none, so a timeout never loses data.
            return b""
        except OSError as exc:
            raise ClientConnectionError(f"receive from {self.path} failed: {exc}") from exc
        if not data:
            raise ClientConnectionError(f"xenstored at {self.path} closed the connection")
        return data

    def receive(self, timeout: float | None) -> bytes:
        if self._rx:
            data = bytes(self._rx)
            self._rx.clear()
            return data
        self._set_timeout(timeout)
        return self._recv()

    def close(self) -> None:
        self._sock.close()


class DeviceTransport:
    """The kernel's xenstore device (``/dev/xen/xenbus`` in a guest or dom0), or any byte fd."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        self.path = path
        if fd is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise ClientConnectionError(f"cannot open {path}: {exc}") from exc
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def send(self, data: bytes, timeout: float | None = None) -> None:
        view = memoryview(data)
        deadline = None if timeout is None else time.monotonic() + timeout
        while view:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{self.path} does not take more data")
            _, writable, _ = select.select([], [self._fd], [], remaining)
            if not writable:
                continue
            try:
                view = view[os.write(self._fd, view) :]
            except OSError as exc:
                raise ClientConnectionError(f"write to {self.path} failed: {exc}") from exc

    def receive(self, timeout: float | None) -> bytes:
        readable, _, _ = select.select([self._fd], [], [], timeout)
        if not readable:
            return b""
        try:
            data = os.read(self._fd, 65536)
        except OSError as exc:
            raise ClientConnectionError(f"read from {self.path} failed: {exc}") from exc
        if not data:
            raise ClientConnectionError(f"{self.path} closed")
        return data

    def close(self) -> None:
        os.close(self._fd)


def open_transport(path: str) -> SocketTransport | DeviceTransport:
    """A socket transport for a unix socket, a device transport for anything else (as libxenstore)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ClientConnectionError(f"cannot connect to xenstored at {path}: {exc}") from exc
    if stat.S_ISSOCK(mode):
        return SocketTransport(path)
    return DeviceTransport(path)


def open_default_transport() -> SocketTransport | DeviceTransport:
    """libxenstore's ``xs.c:xs_open``: the daemon sockets, else the kernel device."""
    failures = []
    for path in [*socket_candidates(), *device_candidates()]:
        try:
            return open_transport(path)
        except ClientConnectionError as exc:
            failures.append(str(exc))
    raise ClientConnectionError("; ".join(failures))
