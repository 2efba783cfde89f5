"""Unix stream sockets: the listening socket and the per-client transport."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Sequence

READ_SIZE = 65536
# sendmsg takes at most IOV_MAX (1024 on Linux) buffers; stay well below.
MAX_IOV = 256


class SocketTransport:
    """A connected, non-blocking unix stream socket."""

    __slots__ = ("_sock", "recv", "send", "_sendmsg")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        # Bound methods looked up once: these are on every request's path.
        # ``recv``/``send`` are the socket's own, for callers that handle
        # its exceptions themselves (the loop's quick path).
        self.recv = sock.recv
        self.send = sock.send
        self._sendmsg = sock.sendmsg

    @property
    def is_socket(self) -> bool:
        return True

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> bytes | None:
        try:
            return self.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            # ECONNRESET and friends: the peer is gone, like end of file.
            return b""

    def write(self, buffers: Sequence[bytes | memoryview]) -> int:
        try:
            if len(buffers) == 1:
                return self.send(buffers[0])
            return self._sendmsg(buffers[:MAX_IOV])
        except (BlockingIOError, InterruptedError):
            return 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def listen_unix(path: str, backlog: int = 128) -> socket.socket:
    """A non-blocking listening socket at ``path`` (mode 0600).

    A stale socket file left by a dead daemon is replaced, as C does; any
    other kind of file at ``path`` is an error rather than silently deleted.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Create the file with mode 0600 right away, not after a chmod.
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
