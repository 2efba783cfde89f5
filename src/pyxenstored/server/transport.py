"""What a connection needs from the thing that carries its bytes.

A transport moves raw bytes and says when it may have more; it knows nothing
of messages.  The unix socket (:mod:`.socket_transport`) is one; a shared
ring page with a notification channel is another (:mod:`.ring_transport`).  Every
message-level concern -- framing, output queue, back pressure, accounting --
lives in :class:`~pyxenstored.server.connection.Connection` so that it is the
same for every transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Transport(Protocol):
    """Byte pipe to one client."""

    @property
    def is_socket(self) -> bool:
        """True for unix-socket clients (privileged, store domain)."""
        ...

    def fileno(self) -> int:
        """File descriptor the event loop waits on for readiness."""
        ...

    def read(self) -> bytes | None:
        """Bytes available now; ``None`` if none yet; ``b""`` once the peer is gone."""
        ...

    def write(self, buffers: Sequence[bytes | memoryview]) -> int:
        """Write as much of ``buffers`` (in order) as fits now; bytes accepted.

        Returns 0 when nothing can be written now; raises ``OSError`` when the
        peer is gone.
        """
        ...

    def close(self) -> None: ...
