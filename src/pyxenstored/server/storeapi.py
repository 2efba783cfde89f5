"""What the server needs from the store (see ``store/``), as Protocols.

The server depends only on these few members, so tests can drive it with a
small fake store and the store can evolve without touching the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class EventLike(Protocol):
    """A watch event for one connection."""

    @property
    def conn_id(self) -> int: ...

    @property
    def payload(self) -> bytes:
        """``path NUL token NUL``."""
        ...


class ResultLike(Protocol):
    """The store's answer to one request."""

    @property
    def reply_type(self) -> int: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def events(self) -> Sequence[EventLike]: ...

    @property
    def events_before_reply(self) -> bool:
        """The requester's own events go out before its reply (C's order)."""
        ...


class StoreLike(Protocol):
    """The store's entry points used by the server."""

    def connect(self, conn_id: int, domid: int, *, is_socket: bool) -> None: ...

    def disconnect(self, conn_id: int) -> None: ...

    def handle(self, conn_id: int, msg_type: int, tx_id: int, payload: bytes) -> ResultLike: ...

    def quick_read(self, conn_id: int, msg_type: int, payload: bytes) -> bytes | None:
        """The reply payload of a READ/DIRECTORY/GET_PERMS outside a transaction.

        Only where :meth:`handle` would reply with that payload under the
        request's own type and no events; None: call :meth:`handle`.
        """
        ...

    def quota_for_conn(self, conn_id: int, name: str) -> int | None:
        """The connection's domain's quota ``name``; None when unlimited."""
        ...

    def charge(self, conn_id: int, name: str, delta: int, *, check: bool = False) -> bool:
        """Account ``outstanding``/``memory`` held by queued output to the domain.

        With ``check``, a charge that would reach an unprivileged domain's
        quota is refused (returns False).
        """
        ...
