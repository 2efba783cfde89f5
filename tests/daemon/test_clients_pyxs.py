"""pyxs, unchanged, against the daemon's unix socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.launcher import Launched
from tests.util import require_module

pytestmark = pytest.mark.clients


@pytest.fixture
def client(daemon: Launched) -> Iterator[Any]:
    require_module("pyxs")
    from pyxs import Client

    with Client(unix_socket_path=daemon.socket) as c:
        yield c


def test_read_write_list_delete(client: Any) -> None:
    client.write(b"/pyxs/a", b"1")
    client.write(b"/pyxs/b", b"2")
    client.mkdir(b"/pyxs/c")
    assert client.read(b"/pyxs/a") == b"1"
    assert sorted(client.list(b"/pyxs")) == [b"a", b"b", b"c"]
    assert client.exists(b"/pyxs/c")
    client.delete(b"/pyxs/a")
    assert not client.exists(b"/pyxs/a")
    assert client.get_domain_path(0) == b"/local/domain/0"


def test_errors_are_pyxs_errors(client: Any) -> None:
    from pyxs import PyXSError

    with pytest.raises(PyXSError) as info:
        client.read(b"/pyxs/missing")
    assert info.value.args[0] == 2  # ENOENT


def test_perms(client: Any) -> None:
    client.write(b"/pyxs/p", b"x")
    client.set_perms(b"/pyxs/p", [b"n0", b"r3"])
    assert client.get_perms(b"/pyxs/p") == [b"n0", b"r3"]


def test_transaction_commit_and_rollback(client: Any) -> None:
    client.transaction()
    client.write(b"/pyxs/t", b"in-tx")
    assert client.commit()
    assert client.read(b"/pyxs/t") == b"in-tx"
    client.transaction()
    client.write(b"/pyxs/t", b"dropped")
    client.rollback()
    assert client.read(b"/pyxs/t") == b"in-tx"


def test_watch_events(daemon: Launched, client: Any) -> None:
    from pyxs import Client

    with client.monitor() as monitor:
        monitor.watch(b"/pyxs/w", b"tok")
        events = monitor.wait()
        assert next(events) == (b"/pyxs/w", b"tok")  # registration fires once
        with Client(unix_socket_path=daemon.socket) as other:
            other.write(b"/pyxs/w/leaf", b"v")
        assert next(events) == (b"/pyxs/w/leaf", b"tok")
