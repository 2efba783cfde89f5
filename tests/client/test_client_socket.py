"""The client over the unix socket, against the C reference and pyxenstored.

Expected replies and error names are those of xenstore.txt and C HEAD (the
``do_*`` handlers of ``core.c``, ``watch.c`` and ``transaction.c``); where
Debian's C 4.17 lacks a HEAD feature (watch depth, GET/SET_FEATURE and
_QUOTA) the test checks 4.17's answer instead.
"""

from __future__ import annotations

import errno

import pytest
from tests.launcher import Launched

from pyxenstored.client import (
    Client,
    ClientConnectionError,
    Perm,
    Transaction,
    WatchEvent,
    XsClientError,
)
from pyxenstored.wire import HEADER, MsgType

EVENT_WAIT = 10.0


def error_of(fn: object, *args: object) -> str:
    assert callable(fn)
    with pytest.raises(XsClientError) as info:
        fn(*args)
    return info.value.name


def test_write_read_values(xs: Client) -> None:
    xs.write("/t/a", b"hello")
    xs.write("/t/nul", b"a\0b\0")
    xs.write("/t/empty", b"")
    assert xs.read("/t/a") == b"hello"
    assert xs.read("/t/nul") == b"a\0b\0"
    assert xs.read("/t/empty") == b""
    assert xs.read("/t") == b""  # created as an empty ancestor
    assert sorted(xs.directory("/t")) == ["a", "empty", "nul"]


def test_errors_are_oserrors_with_errno(xs: Client) -> None:
    with pytest.raises(OSError) as info:
        xs.read("/no/such/node")
    assert info.value.errno == errno.ENOENT
    xs.watch("/e", "tok")
    with pytest.raises(OSError) as info:
        xs.watch("/e", "tok")  # the same watch twice
    assert isinstance(info.value, XsClientError)
    assert (info.value.name, info.value.errno) == ("EEXIST", errno.EEXIST)


def test_mkdir_rm_and_error_names(xs: Client) -> None:
    xs.mkdir("/m/d")
    assert xs.directory("/m/d") == []
    xs.rm("/m")
    assert error_of(xs.read, "/m/d") == "ENOENT"
    assert error_of(xs.read, "/m") == "ENOENT"
    xs.rm("/m")  # missing node whose parent exists: OK
    assert error_of(xs.rm, "/m/x/y") == "ENOENT"
    assert error_of(xs.rm, "/") == "EINVAL"
    assert error_of(xs.read, "/a//b") == "EINVAL"
    assert error_of(xs.write, "/trailing/", b"") == "EINVAL"
    assert error_of(xs.read, "/bad char") == "EINVAL"
    assert not xs.exists("/m")
    xs.write("/m", b"")
    assert xs.exists("/m")


def test_relative_socket_paths_resolve_under_domain_0(xs: Client) -> None:
    xs.write("rel/x", b"1")
    assert xs.read("/local/domain/0/rel/x") == b"1"


def test_large_directory_comes_in_parts(xs: Client) -> None:
    names = [f"child-with-a-rather-long-name-{i:04d}" for i in range(200)]
    for name in names:
        xs.write(f"/big/{name}", b"")
    # One DIRECTORY reply cannot hold the list: the daemon says E2BIG ...
    assert error_of(xs.request, MsgType.DIRECTORY, b"/big\0") == "E2BIG"
    # ... and directory() fetches it with DIRECTORY_PART.
    assert xs.directory("/big") == names


def test_permissions_roundtrip(xs: Client) -> None:
    xs.write("/p", b"")
    assert xs.get_perms("/p") == [Perm("n", 0)]
    xs.set_perms("/p", [Perm("w", 0), Perm("r", 3), Perm("b", 4)])
    assert xs.get_perms("/p") == [Perm("w", 0), Perm("r", 3), Perm("b", 4)]
    assert error_of(xs.set_perms, "/p", ["x3"]) == "EINVAL"
    assert error_of(xs.get_perms, "/nope") == "ENOENT"


def events_until(xs: Client, marker: WatchEvent) -> list[WatchEvent]:
    """Events up to (not including) ``marker``, which the test triggers last."""
    seen: list[WatchEvent] = []
    while (event := xs.next_event(EVENT_WAIT)) != marker:
        assert event is not None, f"no event after {seen}"
        seen.append(event)
    return seen


def test_watch_initial_event_writes_and_removal(xs: Client, other: Client) -> None:
    xs.watch("/w", "tok")
    assert xs.next_event(EVENT_WAIT) == WatchEvent("/w", "tok")
    xs.watch("/marker", "m")
    assert xs.next_event(EVENT_WAIT) == WatchEvent("/marker", "m")
    other.write("/w/a", b"1")
    assert xs.next_event(EVENT_WAIT) == WatchEvent("/w/a", "tok")
    xs.watch("/w/a", "below")
    assert xs.next_event(EVENT_WAIT) == WatchEvent("/w/a", "below")
    other.rm("/w")
    other.write("/marker", b"")
    removal = events_until(xs, WatchEvent("/marker", "m"))
    # The watch on /w sees /w itself; the watch on the removed /w/a sees
    # /w/a (core.c:delnode_sub: removed descendants match watches on their own path).
    assert sorted(removal, key=str) == [WatchEvent("/w", "tok"), WatchEvent("/w/a", "below")]
    assert error_of(xs.watch, "/w", "tok") == "EEXIST"


def test_event_arriving_while_a_reply_is_awaited(xs: Client) -> None:
    xs.watch("/q", "t")
    assert xs.next_event(EVENT_WAIT) == WatchEvent("/q", "t")
    # Our own write fires our own watch: the event comes with (or before)
    # the WRITE reply and must be kept for events().
    xs.write("/q/x", b"1")
    assert xs.read("/q/x") == b"1"
    assert next(xs.events()) == WatchEvent("/q/x", "t")


def test_unwatch_and_reset_watches(xs: Client, other: Client) -> None:
    xs.watch("/u", "a")
    xs.watch("/v", "b")
    assert xs.next_event(EVENT_WAIT) == WatchEvent("/u", "a")
    assert xs.next_event(EVENT_WAIT) == WatchEvent("/v", "b")
    xs.unwatch("/u", "a")
    assert error_of(xs.unwatch, "/u", "a") == "ENOENT"
    other.write("/u/x", b"")  # no longer watched
    other.write("/v/x", b"")
    assert xs.next_event(EVENT_WAIT) == WatchEvent("/v/x", "b")
    xs.reset_watches()
    assert error_of(xs.unwatch, "/v", "b") == "ENOENT"


def test_watch_depth(daemon: Launched, xs: Client, other: Client) -> None:
    if daemon.kind == "reference":
        # Debian's 4.17 has no WATCHDEPTH: a third argument is EINVAL.
        assert error_of(xs.watch, "/d", "t", 1) == "EINVAL"
        return
    xs.watch("/d", "t", depth=1)
    assert xs.next_event(EVENT_WAIT) == WatchEvent("/d", "t")
    other.write("/d/x/y", b"")  # two levels down: not reported
    other.write("/d/z", b"")
    assert xs.next_event(EVENT_WAIT) == WatchEvent("/d/z", "t")


def test_transaction_commit_and_abort(xs: Client, other: Client) -> None:
    xs.write("/tx/a", b"old")
    with xs.transaction() as tx:
        assert tx.read("/tx/a") == b"old"
        tx.write("/tx/a", b"new")
        tx.write("/tx/b", b"created")
        assert tx.read("/tx/a") == b"new"
        assert other.read("/tx/a") == b"old"  # isolated until commit
    assert other.read("/tx/a") == b"new"
    assert other.read("/tx/b") == b"created"
    with pytest.raises(RuntimeError), xs.transaction() as tx:
        tx.write("/tx/a", b"discarded")
        raise RuntimeError
    assert xs.read("/tx/a") == b"new"


def test_transaction_conflict_and_retry(xs: Client, other: Client) -> None:
    xs.write("/c/n", b"0")
    with pytest.raises(XsClientError) as info, xs.transaction() as tx:
        tx.read("/c/n")
        other.write("/c/n", b"outside")
        tx.write("/c/n", b"inside")
    assert info.value.name == "EAGAIN"
    assert xs.read("/c/n") == b"outside"

    attempts: list[int] = []
    xs.write("/c/counter", b"0")

    def increment(tx: Transaction) -> int:
        value = int(tx.read("/c/counter"))
        if not attempts:
            other.write("/c/counter", b"10")  # a racing writer, first time only
        attempts.append(value)
        tx.write("/c/counter", b"%d" % (value + 1))
        return value + 1

    assert xs.run_transaction(increment) == 11
    assert len(attempts) == 2
    assert xs.read("/c/counter") == b"11"
    assert error_of(xs.request, MsgType.READ, b"/c/n\0", 999) == "ENOENT"  # unknown tx id


def test_domain_requests(xs: Client) -> None:
    assert xs.get_domain_path(7) == "/local/domain/7"
    assert xs.is_domain_introduced(0)
    assert not xs.is_domain_introduced(7)
    assert error_of(xs.release, 7) == "ENOENT"
    assert error_of(xs.resume, 7) == "ENOENT"
    assert error_of(xs.set_target, 7, 8) == "ENOENT"
    with pytest.raises(ClientConnectionError, match="only on a shared ring"):
        xs.reconnect()


def test_features_and_quota(daemon: Launched, xs: Client) -> None:
    if daemon.kind == "reference":
        # 4.17 predates types 23-26.
        assert error_of(xs.get_feature) == "ENOSYS"
        assert error_of(xs.quota_names) == "ENOSYS"
        return
    assert xs.get_feature() & 4  # WATCHDEPTH on the socket's full set
    names = xs.quota_names()
    assert names[:3] == ["nodes", "watches", "outstanding"]
    xs.set_quota("nodes", 1234)
    assert xs.get_quota("nodes") == 1234
    assert error_of(xs.get_quota, "no-such-quota") == "EINVAL"


def test_control(xs: Client) -> None:
    assert "quota" in xs.control("help")
    assert xs.control("print", "hello from the client tests") == "OK"
    assert error_of(xs.control, "no-such-command") == "EINVAL"


def test_pipelined_submit_and_collect(xs: Client) -> None:
    writes = [xs.submit(MsgType.WRITE, b"/pipe/%d\0v%d" % (i, i)) for i in range(100)]
    reads = [xs.submit(MsgType.READ, b"/pipe/%d\0" % i) for i in range(100)]
    for i, rid in reversed(list(enumerate(reads))):
        assert xs.collect(rid) == b"v%d" % i
    for rid in writes:
        assert xs.collect(rid) == b"OK\0"


def test_send_raw_and_collect_by_req_id(xs: Client) -> None:
    xs.write("/raw", b"bytes")
    payload = b"/raw\0"
    xs.send_raw(HEADER.pack(MsgType.READ, 4242, 0, len(payload)) + payload)
    assert xs.collect_message(4242) == (MsgType.READ, b"bytes")


def test_connect_socket_from_environment(daemon: Launched, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    monkeypatch.setenv("XENSTORED_RUNDIR", str(daemon.rundir))
    with Client.connect_socket(timeout=10) as a:
        a.write("/env", b"rundir")
    monkeypatch.setenv("XENSTORED_PATH", daemon.socket)
    monkeypatch.setenv("XENSTORED_RUNDIR", "/nonexistent")
    with Client.connect_socket(timeout=10) as b:
        assert b.read("/env") == b"rundir"
    with Client.connect(timeout=10) as c:  # libxenstore's order: the socket first
        assert c.read("/env") == b"rundir"
    with Client.connect(daemon.socket, timeout=10) as d:
        assert d.read("/env") == b"rundir"
