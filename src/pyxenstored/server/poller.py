"""Readiness of the event loop's descriptors: one epoll, selectors' vocabulary.

The loop registers every descriptor here with ``EVENT_READ``/``EVENT_WRITE``
interest and a piece of data (a connection or a callback), exactly as with
:mod:`selectors`.  What differs is :meth:`Poller.poll`: it hands back
``(data, events)`` pairs straight from the kernel's list, without building a
``SelectorKey`` lookup and a new tuple per ready descriptor.  On a daemon
whose clients wait for every reply, that per-event cost is paid once per
request, and it was a fifth of the loop's own time.
"""

from __future__ import annotations

import contextlib
import select
from selectors import EVENT_READ, EVENT_WRITE
from typing import Generic, Protocol, TypeVar

__all__ = ["EVENT_READ", "EVENT_WRITE", "Poller"]

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
# Hang-up and error wake up whichever interest is registered, as selectors does.
_TROUBLE = select.EPOLLERR | select.EPOLLHUP

T = TypeVar("T")


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def _fd(fileobj: int | _HasFileno) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


def _epoll_mask(events: int) -> int:
    return (_IN if events & EVENT_READ else 0) | (_OUT if events & EVENT_WRITE else 0)


class Poller(Generic[T]):
    """Descriptors with their interest and data; :meth:`poll` says which are ready."""

    __slots__ = ("_epoll", "_entries")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        # fd -> (data, interest as EVENT_* bits)
        self._entries: dict[int, tuple[T, int]] = {}

    def register(self, fileobj: int | _HasFileno, events: int, data: T) -> None:
        fd = _fd(fileobj)
        if fd in self._entries:
            raise KeyError(f"descriptor {fd} is already registered")
        self._epoll.register(fd, _epoll_mask(events))
        self._entries[fd] = (data, events)

    def modify(self, fileobj: int | _HasFileno, events: int, data: T) -> None:
        fd = _fd(fileobj)
        if fd not in self._entries:
            raise KeyError(f"descriptor {fd} is not registered")
        if self._entries[fd][1] != events:
            self._epoll.modify(fd, _epoll_mask(events))
        self._entries[fd] = (data, events)

    def unregister(self, fileobj: int | _HasFileno) -> None:
        fd = _fd(fileobj)
        del self._entries[fd]  # KeyError when unknown, as selectors
        # Already closed: the kernel forgot it with the descriptor.
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)

    def poll(self, timeout: float | None = None) -> list[tuple[T, int]]:
        """``(data, EVENT_* bits)`` of every ready registration (at most one each)."""
        entries = self._entries
        ready: list[tuple[T, int]] = []
        append = ready.append
        for fd, flags in self._epoll.poll(-1 if timeout is None else timeout):
            entry = entries.get(fd)
            if entry is None:
                continue  # unregistered by an earlier handler of this round
            data, interest = entry
            if flags == _IN:
                # The usual case: a request arrived.
                if interest & EVENT_READ:
                    append((data, EVENT_READ))
                continue
            events = 0
            if flags & (_IN | _TROUBLE):
                events |= EVENT_READ
            if flags & (_OUT | _TROUBLE):
                events |= EVENT_WRITE
            events &= interest
            if events:
                append((data, events))
        return ready

    def close(self) -> None:
        self._entries.clear()
        self._epoll.close()
