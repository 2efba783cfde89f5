"""The client as guest domain 5 on a shared ring, against the C reference and pyxenstored.

The daemon runs on the simulated hypervisor of the reference's shim: the page is
``DIR/ring-dom5``, kicks go to ``DIR/evtchn``.  Dom0 (the socket) introduces
the guest as a toolstack would.  Expected answers follow C HEAD
(``core.c:canonicalize`` for relative paths, ``errno_from_parents`` for EACCES
vs ENOENT, ``domain.c:introduce_domain``, ``fire_special_watches``);
where Debian's C 4.17 differs from HEAD the test says so.
"""

from __future__ import annotations

import pytest
from tests.client.daemons import GUEST, SPARE, introduce_guest
from tests.launcher import Launched

from pyxenstored.client import (
    Client,
    ClientConnectionError,
    Perm,
    RingTransport,
    WatchEvent,
    XsClientError,
)
from pyxenstored.wire import FEATURE_RECONNECTION, HEADER, MsgType

EVENT_WAIT = 10.0
HOME = f"/local/domain/{GUEST}"


def error_of(fn: object, *args: object) -> str:
    assert callable(fn)
    with pytest.raises(XsClientError) as info:
        fn(*args)
    return info.value.name


def ring_of(client: Client) -> RingTransport:
    assert isinstance(client.transport, RingTransport)
    return client.transport


def test_relative_paths_resolve_under_the_guest_home(guest: Client, dom0: Client) -> None:
    guest.write("data/x", b"from the guest")
    assert dom0.read(f"{HOME}/data/x") == b"from the guest"
    assert guest.read(f"{HOME}/data/x") == b"from the guest"
    assert guest.directory("data") == ["x"]
    assert guest.get_domain_path(GUEST) == HOME
    assert guest.get_perms("data/x")[0] == Perm("n", GUEST)  # the guest owns what it creates


def test_permission_errors(guest: Client, dom0: Client) -> None:
    assert error_of(guest.read, "/tool") == "EACCES"
    assert error_of(guest.write, "/local/domain/0/x", b"") == "EACCES"
    # A missing node under an unreadable ancestor is EACCES, not ENOENT (core.c:errno_from_parents)
    assert error_of(guest.read, "/no/such/node") == "EACCES"
    assert error_of(guest.read, "no-such-node") == "ENOENT"
    dom0.write("/shared", b"public")
    dom0.set_perms("/shared", [Perm("n", 0), Perm("r", GUEST)])
    assert guest.read("/shared") == b"public"
    assert error_of(guest.write, "/shared", b"mine") == "EACCES"
    assert error_of(guest.set_perms, "data", ["n0"]) == "ENOENT"
    assert error_of(guest.introduce, 9, 1, 9) == "EACCES"  # privileged only


def test_messages_larger_than_the_ring(guest: Client) -> None:
    value = bytes(range(256)) * 7 + b"tail"  # 1796 bytes: each way spans the 1024-byte queue
    guest.write("big", value)
    assert guest.read("big") == value
    # 4000 bytes go over in several kicks and are refused by the node-size
    # quota; the connection stays in step.
    assert error_of(guest.write, "too-big", b"x" * 4000) == "ENOSPC"
    assert guest.read("big") == value


def test_many_requests_wrap_the_queues(guest: Client) -> None:
    page = ring_of(guest).page
    for i in range(300):
        guest.write(f"wrap/n{i % 10}", b"value-%06d" % i)
    for i in range(290, 300):
        assert guest.read(f"wrap/n{i % 10}") == b"value-%06d" % i
    # Over 10 KiB of requests went through the 1 KiB queue.
    assert page.word(2052) > 10 * 1024  # req_prod (INTRODUCE started it at 0)


def test_pipelined_requests_over_the_ring(guest: Client) -> None:
    # More requests in flight than the outstanding quota (20): the daemon
    # stops reading until we take replies, which the client does while it sends.
    guest.write("p", b"x" * 100)
    ids = [guest.submit(MsgType.READ, b"p\0") for _ in range(100)]
    for rid in ids:
        assert guest.collect(rid) == b"x" * 100


def test_guest_watch_reports_relative_paths(guest: Client, dom0: Client) -> None:
    guest.watch("data", "g")
    assert guest.next_event(EVENT_WAIT) == WatchEvent("data", "g")
    dom0.write(f"{HOME}/data/y", b"1")
    assert guest.next_event(EVENT_WAIT) == WatchEvent("data/y", "g")
    guest.write("data/z", b"2")  # the guest's own write; event kept while awaiting the reply
    assert guest.read("data/z") == b"2"
    assert guest.next_event(EVENT_WAIT) == WatchEvent("data/z", "g")


def test_guest_transactions(guest: Client, dom0: Client) -> None:
    guest.write("t/n", b"0")
    with pytest.raises(XsClientError) as info, guest.transaction() as tx:
        tx.read("t/n")
        dom0.write(f"{HOME}/t/n", b"dom0")
        tx.write("t/n", b"guest")
    assert info.value.name == "EAGAIN"
    assert guest.run_transaction(lambda tx: tx.write("t/n", tx.read("t/n") + b"+1")) is None
    assert guest.read("t/n") == b"dom0+1"


def test_large_directory_over_the_ring(guest: Client, dom0: Client) -> None:
    names = [f"entry-with-a-long-name-{i:04d}" for i in range(200)]
    for name in names:
        dom0.write(f"{HOME}/dir/{name}", b"")
    assert guest.directory("dir") == names


def test_introduce_and_release_fire_special_watches(ring_daemon: Launched, dom0: Client) -> None:
    assert ring_daemon.ring_dir is not None
    dom0.watch("@introduceDomain", "i")
    dom0.watch("@releaseDomain", "r")
    assert dom0.next_event(EVENT_WAIT) == WatchEvent("@introduceDomain", "i")
    assert dom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain", "r")
    assert not dom0.is_domain_introduced(SPARE)
    introduce_guest(dom0, ring_daemon.ring_dir, SPARE, 8)
    assert dom0.next_event(EVENT_WAIT) == WatchEvent("@introduceDomain", "i")
    assert dom0.is_domain_introduced(SPARE)
    spare = Client.connect_ring(ring_daemon.ring_dir, SPARE, 8, timeout=10)
    spare.write("hello", b"6")
    spare.close()
    dom0.release(SPARE)
    assert dom0.next_event(EVENT_WAIT) == WatchEvent("@releaseDomain", "r")
    assert not dom0.is_domain_introduced(SPARE)


def test_feature_bits_on_the_page(ring_daemon: Launched, guest: Client) -> None:
    features = ring_of(guest).server_features
    if ring_daemon.kind == "reference":
        assert features == 0  # 4.17 writes nothing at offset 2064 (HEAD: domain.c:introduce_domain)
        return
    # The domain's mask, plus ring reconnection, which pyxenstored offers on
    # pages beyond C HEAD (GET_FEATURE keeps C HEAD's set).
    assert features == guest.get_feature() | FEATURE_RECONNECTION
    guest.watch("data", "deep", depth=1)  # WATCHDEPTH is usable by the guest
    assert guest.next_event(EVENT_WAIT) == WatchEvent("data", "deep")


def test_reconnection(ring_daemon: Launched, guest: Client) -> None:
    if not ring_of(guest).server_features & FEATURE_RECONNECTION:
        with pytest.raises(ClientConnectionError, match="does not offer"):
            guest.reconnect()
        return
    guest.watch("data", "before")
    assert guest.next_event(EVENT_WAIT) == WatchEvent("data", "before")
    guest.reconnect()
    assert error_of(guest.unwatch, "data", "before") == "ENOENT"  # watches dropped
    guest.write("after", b"ok")
    assert guest.read("after") == b"ok"


def test_protocol_breaking_guest_is_cut_off(
    ring_daemon: Launched, guest: Client, dom0: Client
) -> None:
    assert ring_daemon.ring_dir is not None
    introduce_guest(dom0, ring_daemon.ring_dir, SPARE, 8)
    good = Client.connect_ring(ring_daemon.ring_dir, SPARE, 8, timeout=10)
    guest.write("before", b"1")
    # A header announcing more than 4096 payload bytes breaks the protocol.
    guest.send_raw(HEADER.pack(MsgType.WRITE, 1, 0, 5000))
    with pytest.raises(ClientConnectionError, match="error indicator 3"):
        guest.read("before")
    assert ring_of(guest).page.error == 3
    # Everyone else carries on.
    good.write("still", b"here")
    assert good.read("still") == b"here"
    assert dom0.read(f"{HOME}/before") == b"1"
    good.close()
