"""server/poller.py: the loop's readiness source behaves like selectors."""

from __future__ import annotations

import os
import socket

import pytest

from pyxenstored.server.poller import EVENT_READ, EVENT_WRITE, Poller


def test_read_write_interest_and_data() -> None:
    a, b = socket.socketpair()
    with a, b:
        p: Poller[str] = Poller()
        p.register(b, EVENT_READ, "b")
        assert p.poll(0) == []
        a.send(b"x")
        assert p.poll(0) == [("b", EVENT_READ)]
        p.modify(b, EVENT_READ | EVENT_WRITE, "b2")
        assert p.poll(0) == [("b2", EVENT_READ | EVENT_WRITE)]
        p.modify(b.fileno(), EVENT_WRITE, "b3")
        assert p.poll(0) == [("b3", EVENT_WRITE)]
        p.unregister(b)
        assert p.poll(0) == []
        p.close()


def test_hang_up_wakes_the_registered_interest_only() -> None:
    a, b = socket.socketpair()
    with b:
        p: Poller[int] = Poller()
        p.register(b, EVENT_READ, 1)
        a.close()
        # The peer is gone: readable (recv gives end of file), reported as read only.
        assert p.poll(0) == [(1, EVENT_READ)]
        p.modify(b, EVENT_WRITE, 2)
        assert p.poll(0) == [(2, EVENT_WRITE)]
        p.close()


def test_registration_errors_and_closed_descriptors() -> None:
    r, w = os.pipe()
    p: Poller[None] = Poller()
    p.register(r, EVENT_READ, None)
    with pytest.raises(KeyError):
        p.register(r, EVENT_READ, None)
    with pytest.raises(KeyError):
        p.modify(w, EVENT_WRITE, None)
    os.close(r)
    p.unregister(r)  # closed already: forgotten without complaint
    with pytest.raises(KeyError):
        p.unregister(r)
    os.close(w)
    p.close()


def test_timeout_none_waits_for_readiness() -> None:
    a, b = socket.socketpair()
    with a, b:
        p: Poller[str] = Poller()
        p.register(b, EVENT_READ, "b")
        a.send(b"x")
        assert p.poll(None) == [("b", EVENT_READ)]
        p.close()
