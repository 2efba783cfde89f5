"""Domains and features: INTRODUCE, RELEASE, RESUME, SET_TARGET, GET/SET_FEATURE (domain.c)."""

from __future__ import annotations

import pytest

from pyxenstored.store import Store, StoreConfig
from pyxenstored.wire import MsgType as M
from pyxenstored.wire import XsError

from .conftest import Client, ClientFactory, assert_consistent


def test_get_domain_path(dom0: Client, connect: ClientFactory) -> None:
    assert dom0.ok(M.GET_DOMAIN_PATH, b"7\0") == b"/local/domain/7\0"
    assert dom0.ok(M.GET_DOMAIN_PATH, b"\0") == b"/local/domain/0\0"  # "" parses as 0
    assert connect(domid=3).ok(M.GET_DOMAIN_PATH, b"65535\0") == b"/local/domain/65535\0"
    for bad in (b"x\0", b"65536\0", b"7", b"7\x008\0"):
        assert dom0.err(M.GET_DOMAIN_PATH, bad) == "EINVAL"


def test_introduce_and_is_domain_introduced(dom0: Client) -> None:
    assert dom0.ok(M.IS_DOMAIN_INTRODUCED, b"0\0") == b"T\0"  # introduced at start
    assert dom0.ok(M.IS_DOMAIN_INTRODUCED, b"5\0") == b"F\0"
    assert dom0.ok(M.IS_DOMAIN_INTRODUCED, b"32752\0") == b"T\0"  # DOMID_SELF
    assert dom0.ok(M.INTRODUCE, b"5\x00123\x009\0") == b"OK\0"
    assert dom0.ok(M.INTRODUCE, b"6\x00123\x009\x00extra\0") == b"OK\0"
    assert dom0.ok(M.IS_DOMAIN_INTRODUCED, b"5\0") == b"T\0"
    assert dom0.err(M.IS_DOMAIN_INTRODUCED, b"x\0") == "EINVAL"


@pytest.mark.parametrize(
    "payload", [b"5\x001\0", b"x\x001\x001\0", b"5\x001\x000\0", b"5\x001\x00-3\0"]
)
def test_introduce_errors(dom0: Client, payload: bytes) -> None:
    assert dom0.err(M.INTRODUCE, payload) == "EINVAL"


def test_introduce_resets_the_domain_connection(dom0: Client, connect: ClientFactory) -> None:
    guest = connect(domid=5)
    guest.watch("/", "t")
    tx = guest.start()
    dom0.ok(M.INTRODUCE, b"5\x001\x001\0")
    assert guest.err(M.READ, b"/local\0", tx=tx) == "ENOENT"
    assert not dom0.req(M.WRITE, b"/x\0").events
    assert_consistent(dom0.store)


def test_release_errors(dom0: Client) -> None:
    assert dom0.err(M.RELEASE, b"0\0") == "EINVAL"
    assert dom0.err(M.RELEASE, b"5\0") == "ENOENT"
    assert dom0.err(M.RELEASE, b"5") == "EINVAL"
    assert dom0.err(M.RESUME, b"0\0") == "EINVAL"
    assert dom0.err(M.RESUME, b"5\0") == "ENOENT"
    dom0.ok(M.INTRODUCE, b"5\x001\x001\0")
    assert dom0.ok(M.RESUME, b"5\0") == b"OK\0"
    assert dom0.ok(M.RELEASE, b"5\0") == b"OK\0"
    assert dom0.err(M.RELEASE, b"5\0") == "ENOENT"
    assert dom0.ok(M.IS_DOMAIN_INTRODUCED, b"5\0") == b"F\0"


def test_release_removes_owned_nodes_and_entries(dom0: Client, connect: ClientFactory) -> None:
    dom0.ok(M.INTRODUCE, b"5\x001\x001\0")
    dom0.mkdir("/local/domain/5")
    dom0.set_perms("/local/domain/5", "n5")
    dom0.write("/shared")
    dom0.set_perms("/shared", "n0", "r5", "w6")
    guest = connect(domid=5)
    guest.write("data/x", b"1")
    watcher = connect()
    watcher.watch("/local/domain/5", "w")
    guest.watch("/", "mine")
    r = dom0.req(M.RELEASE, b"5\0")
    assert r.payload == b"OK\0"
    assert dom0.err(M.READ, b"/local/domain/5\0") == "ENOENT"
    assert dom0.ls("/local/domain") == []
    assert dom0.get_perms("/shared") == ["n0", "w6"]
    # The released domain's own watches went first.
    assert all(e.conn_id != guest.conn_id for e in r.events)
    assert (watcher.conn_id, b"/local/domain/5") in [(e.conn_id, e.path) for e in r.events]
    assert_consistent(dom0.store)


def test_release_keep_orphans() -> None:
    store = Store(StoreConfig(keep_orphans=True))
    store.connect(1, 0, is_socket=True)
    dom0 = Client(store, 1)
    dom0.ok(M.INTRODUCE, b"5\x001\x001\0")
    dom0.write("/local/domain/5/x")
    dom0.set_perms("/local/domain/5/x", "n5", "r5", "r6")
    dom0.ok(M.RELEASE, b"5\0")
    assert dom0.get_perms("/local/domain/5/x") == ["n0", "r6"]
    assert_consistent(store)


def test_set_target(dom0: Client) -> None:
    assert dom0.err(M.SET_TARGET, b"5\0") == "EINVAL"
    assert dom0.err(M.SET_TARGET, b"5\x00x\0") == "EINVAL"
    assert dom0.err(M.SET_TARGET, b"5\x006\0") == "ENOENT"
    dom0.ok(M.INTRODUCE, b"5\x001\x001\0")
    assert dom0.err(M.SET_TARGET, b"5\x006\0") == "ENOENT"
    dom0.ok(M.INTRODUCE, b"6\x001\x001\0")
    assert dom0.ok(M.SET_TARGET, b"5\x006\0") == b"OK\0"
    assert dom0.store.domains[5].target == 6


def test_domain_hooks_are_called() -> None:
    calls: list[tuple[str, int]] = []

    class Hooks:
        def introduce(self, domid: int, gfn: int, evtchn: int) -> None:
            if domid == 9:
                raise XsError("EIO", "no ring")
            calls.append(("introduce", domid))

        def release(self, domid: int) -> None:
            calls.append(("release", domid))

    store = Store(domain_hooks=Hooks())
    store.connect(1, 0, is_socket=True)
    c = Client(store, 1)
    c.ok(M.INTRODUCE, b"5\x001\x001\0")
    assert c.err(M.INTRODUCE, b"9\x001\x001\0") == "EIO"
    assert c.ok(M.IS_DOMAIN_INTRODUCED, b"9\0") == b"F\0"
    c.ok(M.RELEASE, b"5\0")
    assert calls == [("introduce", 5), ("release", 5)]


def test_guest_connection_is_charged(dom0: Client, connect: ClientFactory) -> None:
    dom0.mkdir("/local/domain/5")
    dom0.set_perms("/local/domain/5", "n5")
    guest = connect(domid=5)
    guest.write("a/b", b"xyz")
    guest.watch("a", "t")
    guest.start()
    usage = dom0.store.domains[5].usage
    assert (usage[0], usage[1], usage[4]) == (3, 1, 1)
    assert usage[3] > 0
    assert_consistent(dom0.store)


# --- features (domain.c:do_get_feature, do_set_feature) --------------------------------


def test_get_feature(dom0: Client, connect: ClientFactory) -> None:
    assert dom0.ok(M.GET_FEATURE, b"") == b"14\0"
    assert dom0.ok(M.GET_FEATURE, b"5\0") == b"14\0"
    guest = connect(domid=5)
    assert guest.ok(M.GET_FEATURE, b"") == b"14\0"
    assert guest.err(M.GET_FEATURE, b"5\0") == "EACCES"
    assert dom0.err(M.GET_FEATURE, b"5\x006\0") == "EINVAL"
    assert dom0.err(M.GET_FEATURE, b"x\0") == "EINVAL"


def test_set_feature(dom0: Client, connect: ClientFactory) -> None:
    assert dom0.ok(M.SET_FEATURE, b"5\x004\0") == b"OK\0"
    assert dom0.ok(M.GET_FEATURE, b"5\0") == b"4\0"
    assert connect(domid=5).ok(M.GET_FEATURE, b"") == b"4\0"
    assert dom0.err(M.SET_FEATURE, b"5\x001\0") == "EINVAL"  # RECONNECTION not offered
    assert dom0.err(M.SET_FEATURE, b"5\x0016\0") == "EINVAL"
    assert dom0.err(M.SET_FEATURE, b"5\0") == "EINVAL"
    assert dom0.err(M.SET_FEATURE, b"5\x001\x002\0") == "EINVAL"
    assert dom0.err(M.SET_FEATURE, b"0\x002\0") == "EBUSY"  # dom0 is introduced
    dom0.ok(M.INTRODUCE, b"5\x001\x001\0")
    assert dom0.err(M.SET_FEATURE, b"5\x006\0") == "EBUSY"


def test_feature_of_unknown_domain() -> None:
    store = Store(StoreConfig(existing_domids=frozenset({0})))
    store.connect(1, 0, is_socket=True)
    assert store.handle(1, M.GET_FEATURE, 0, b"4\0").payload == b"ENOENT\0"
    assert store.handle(1, M.SET_FEATURE, 0, b"4\x002\0").payload == b"ENOENT\0"


def test_shutdown_and_death_reported_by_the_hypervisor(dom0: Client) -> None:
    store = dom0.store
    dom0.ok(M.INTRODUCE, b"5\x001\x001\0")
    dom0.ok(M.INTRODUCE, b"6\x001\x001\0")
    dom0.watch("@releaseDomain", "plain")
    dom0.watch("@releaseDomain", "dom", 1)
    events = store.domains_changed(shutdown={5}, dead=set())
    assert [(e.path, e.token) for e in events] == [
        (b"@releaseDomain/5", b"dom"),
        (b"@releaseDomain", b"plain"),
    ]
    assert store.domains_changed(shutdown={5}, dead=set()) == []  # once per shutdown
    dom0.ok(M.RESUME, b"5\0")
    assert len(store.domains_changed(shutdown={5}, dead=set())) == 2
    events = store.domains_changed(shutdown=set(), dead={6})
    assert [(e.path, e.token) for e in events] == [
        (b"@releaseDomain", b"plain"),
        (b"@releaseDomain/6", b"dom"),
    ]
    assert dom0.ok(M.IS_DOMAIN_INTRODUCED, b"6\0") == b"F\0"
    assert_consistent(store)


def test_server_side_charges(dom0: Client, connect: ClientFactory) -> None:
    store = dom0.store
    guest = connect(domid=5)
    dom0.ok(M.SET_QUOTA, b"5\0outstanding\x003\0")
    assert store.charge(guest.conn_id, "outstanding", 1, check=True)
    assert store.charge(guest.conn_id, "outstanding", 1, check=True)
    assert not store.charge(guest.conn_id, "outstanding", 1, check=True)
    assert store.charge(dom0.conn_id, "memory", 10**9, check=True)  # sockets: no quota
    assert store.charge(guest.conn_id, "memory", 100)
    assert_consistent(store)
    assert store.charge(guest.conn_id, "memory", -100)
    assert store.domains[5].usage[2] == 2
    with pytest.raises(ValueError):
        store.charge(guest.conn_id, "nodes", 1)


def test_default_config_knows_only_priv_and_store_domains() -> None:
    store = Store(StoreConfig())
    store.connect(1, 0, is_socket=True)
    c = Client(store, 1)
    c.write("/p", b"v")
    assert c.err(M.SET_PERMS, b"/p\0n7\0") == "ENOENT"
    assert c.err(M.GET_FEATURE, b"7\0") == "ENOENT"
    assert c.err(M.GET_QUOTA, b"7\0nodes\0") == "ENOENT"
    c.set_perms("/p", "n0", "r7")  # kept, but stale
    # Introducing a domain makes it known.
    c.ok(M.INTRODUCE, b"7\x001\x001\0")
    assert c.ok(M.GET_FEATURE, b"7\0") == b"14\0"
    c.set_perms("/p", "n7")
