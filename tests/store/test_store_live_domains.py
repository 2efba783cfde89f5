"""The store learns about domains from the hypervisor at the moment of a request.

C asks the hypervisor (``xenmanage_get_domain_info``) whenever it needs a
domain it has no record of: ``domain_alloc_permrefs`` for SET_PERMS entries
and owner, ``find_or_alloc_existing_domain`` for GET/SET_QUOTA and
GET/SET_FEATURE with a domid (docs/compat.md S10, S20).  A domain's creation raises
no ``VIRQ_DOM_EXC``, so nothing may depend on having been told about it.

Here a fake hypervisor (the store's ``StoreConfig.hypervisor``) holds the
domains; the test changes it behind the store's back, as Xen does.  The
scenarios are libxl's order of building a domain (home and rights before
INTRODUCE) and domid reuse (``domain.c:chk_domain_generation``: a new domain with an old domid
inherits no rights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pyxenstored.store import Store, StoreConfig
from pyxenstored.wire import MsgType

from .conftest import Client, assert_consistent

M = MsgType


@dataclass(frozen=True)
class Facts:
    """What the fake hypervisor says about one domain."""

    unique_id: int = 0
    shutdown: bool = False
    dying: bool = False


class FakeHypervisor:
    """Domains by domid; the test edits ``existing`` as Xen creates and destroys them."""

    def __init__(self, existing: dict[int, Facts]) -> None:
        self.existing = dict(existing)
        self.asked: list[int] = []

    def domain_info(self, domid: int) -> Facts | None:
        self.asked.append(domid)
        return self.existing.get(domid)


@pytest.fixture
def hv() -> FakeHypervisor:
    return FakeHypervisor({0: Facts(0x1000)})


@pytest.fixture
def live(hv: FakeHypervisor) -> Store:
    return Store(StoreConfig(hypervisor=hv))


Connect = Callable[[int | None], Client]


@pytest.fixture
def conn(live: Store) -> Connect:
    ids = iter(range(1, 1000))

    def make(domid: int | None = None) -> Client:
        conn_id = next(ids)
        live.connect(conn_id, 0 if domid is None else domid, is_socket=domid is None)
        return Client(live, conn_id)

    return make


def introduce(dom0: Client, domid: int) -> None:
    assert dom0.ok(M.INTRODUCE, f"{domid}\x001\x00{domid + 10}\0".encode()) == b"OK\0"


# --- libxl's order: the domain exists, nobody told the store ----------------------


@pytest.mark.parametrize("home", [("n4", "r0"), ("n0", "r4")])
def test_libxl_order_with_a_domain_nobody_announced(
    hv: FakeHypervisor, conn: Connect, home: tuple[str, ...]
) -> None:
    dom0 = conn(None)
    hv.existing[4] = Facts(0x44)  # created by the toolstack: no VIRQ_DOM_EXC
    dom0.mkdir("/local/domain/4")
    dom0.set_perms("/local/domain/4", *home)
    dom0.mkdir("/local/domain/4/data")
    dom0.set_perms("/local/domain/4/data", "n4")
    dom0.mkdir("/vm/pre")
    dom0.set_perms("/vm/pre", "n0", "r4")
    introduce(dom0, 4)
    guest = conn(4)
    assert guest.read("/vm/pre") == b""
    assert guest.read("/local/domain/4") == b""
    guest.write("/local/domain/4/data/x", b"1")
    assert guest.read("data/x") == b"1"
    if home[0] == "n4":
        guest.write("/local/domain/4/y", b"2")
        assert dom0.read("/local/domain/4/y") == b"2"
    else:
        assert guest.err(M.WRITE, b"/local/domain/4/y\x002") == "EACCES"
    assert guest.err(M.WRITE, b"/vm/pre\0x") == "EACCES"
    assert_consistent(dom0.store)


def test_rights_given_before_introduce_hold_after_it() -> None:
    """Bug 2 on the fixed domain list: SET_PERMS's own record must not make its entry stale."""
    store = Store(StoreConfig(existing_domids=frozenset({3})))
    store.connect(1, 0, is_socket=True)
    dom0 = Client(store, 1)
    dom0.write("/vm/pre", b"v")
    dom0.set_perms("/vm/pre", "n0", "r3")
    dom0.write("/vm/pre", b"w")  # rewriting it changes nothing
    introduce(dom0, 3)
    store.connect(2, 3, is_socket=False)
    guest = Client(store, 2)
    assert guest.read("/vm/pre") == b"w"


def test_rights_given_in_a_transaction_before_introduce(hv: FakeHypervisor, conn: Connect) -> None:
    dom0 = conn(None)
    hv.existing[4] = Facts(0x44)
    dom0.write("/vm/t", b"v")
    tx = dom0.start()
    dom0.set_perms("/vm/t", "n0", "r4", tx=tx)
    dom0.write("/vm/t/child", b"c", tx=tx)
    assert dom0.end(tx).payload == b"OK\0"
    introduce(dom0, 4)
    guest = conn(4)
    assert guest.read("/vm/t") == b"v"
    assert guest.read("/vm/t/child") == b"c"


def test_existence_is_asked_at_each_request(hv: FakeHypervisor, conn: Connect) -> None:
    dom0 = conn(None)
    dom0.write("/p", b"")
    assert dom0.err(M.SET_PERMS, b"/p\0n9\0") == "ENOENT"
    assert dom0.err(M.GET_QUOTA, b"9\0nodes\0") == "ENOENT"
    assert dom0.err(M.GET_FEATURE, b"9\0") == "ENOENT"
    assert dom0.err(M.SET_FEATURE, b"9\x002\0") == "ENOENT"
    assert dom0.err(M.SET_QUOTA, b"9\0nodes\x005\0") == "ENOENT"
    hv.existing[9] = Facts(0x99)
    assert dom0.ok(M.GET_FEATURE, b"9\0") == b"14\0"
    hv.existing[8] = Facts(0x88)
    assert dom0.ok(M.SET_QUOTA, b"8\0nodes\x005\0") == b"OK\0"
    hv.existing[7] = Facts(0x77)
    assert dom0.ok(M.GET_QUOTA, b"7\0nodes\0") == b"1000\0"
    hv.existing[6] = Facts(0x66)
    assert dom0.ok(M.SET_FEATURE, b"6\x002\0") == b"OK\0"
    hv.existing[5] = Facts(0x55)
    dom0.set_perms("/p", "n5", "r0")
    # A domain gone before the store made a record of it is unknown at once.
    del hv.existing[5], hv.existing[9]
    hv.existing[10] = Facts(0xA)
    dom0.set_perms("/p", "n10", "r12")  # 12 does not exist: kept, stale
    assert dom0.get_perms("/p") == ["n10", "r12"]
    hv.existing[12] = Facts(0xC)
    introduce(dom0, 12)
    assert conn(12).err(M.READ, b"/p\0") == "EACCES"


def test_stale_entry_stays_stale_when_its_domain_appears(hv: FakeHypervisor, conn: Connect) -> None:
    dom0 = conn(None)
    dom0.write("/early", b"e")
    dom0.set_perms("/early", "n0", "r11")  # 11 does not exist yet
    hv.existing[11] = Facts(0xB)
    dom0.write("/early", b"f")
    introduce(dom0, 11)
    guest = conn(11)
    assert guest.err(M.READ, b"/early\0") == "EACCES"
    dom0.set_perms("/early", "n0", "r11")  # given again now that 11 exists
    assert guest.read("/early") == b"f"


# --- domid reuse: rights of a dead domain stay void -------------------------------


def test_a_domain_that_died_before_introduction(hv: FakeHypervisor, conn: Connect) -> None:
    dom0 = conn(None)
    hv.existing[8] = Facts(80)
    dom0.mkdir("/local/domain/8")
    dom0.set_perms("/local/domain/8", "n8")
    dom0.write("/vm/x", b"")
    dom0.set_perms("/vm/x", "n0", "r8")
    del hv.existing[8]
    assert dom0.store.domains_changed(shutdown=set(), dead={8}) == []  # never introduced
    # C's destroy_domain cleans the tree for every record (domain_tree_remove).
    assert dom0.err(M.READ, b"/local/domain/8\0") == "ENOENT"
    assert dom0.get_perms("/vm/x") == ["n0"]
    hv.existing[8] = Facts(81)
    introduce(dom0, 8)
    assert conn(8).err(M.READ, b"/vm/x\0") == "EACCES"
    assert_consistent(dom0.store)


@pytest.mark.parametrize("introduced_before", [False, True])
def test_a_reused_domid_nobody_announced_inherits_nothing(
    hv: FakeHypervisor, conn: Connect, introduced_before: bool
) -> None:
    dom0 = conn(None)
    hv.existing[7] = Facts(100)
    dom0.mkdir("/local/domain/7")
    dom0.set_perms("/local/domain/7", "n7")
    dom0.write("/vm/old", b"secret")
    dom0.set_perms("/vm/old", "n0", "r7")
    dom0.ok(M.SET_QUOTA, b"7\0watches\x003\0")
    if introduced_before:
        introduce(dom0, 7)
        assert conn(7).read("/vm/old") == b"secret"
    dom0.watch("@releaseDomain", "rel")
    # Domain 7 died and a new domain 7 was built before the store heard of it.
    hv.existing[7] = Facts(101)
    result = dom0.req(M.INTRODUCE, b"7\x001\x0017\0")
    assert result.payload == b"OK\0"
    fired = [(e.path, e.token) for e in result.events]
    assert fired == ([(b"@releaseDomain", b"rel")] if introduced_before else [])
    guest = conn(7)
    assert guest.err(M.READ, b"/vm/old\0") == "EACCES"
    assert dom0.get_perms("/vm/old") == ["n0"]
    assert dom0.err(M.READ, b"/local/domain/7\0") == "ENOENT"  # owned by the old 7
    assert dom0.ok(M.GET_QUOTA, b"7\0watches\0") == b"128\0"  # the old record is gone
    assert_consistent(dom0.store)


def test_the_same_domain_introduced_again_keeps_its_rights(
    hv: FakeHypervisor, conn: Connect
) -> None:
    dom0 = conn(None)
    hv.existing[6] = Facts(60)
    dom0.write("/vm/six", b"6")
    dom0.set_perms("/vm/six", "n0", "r6")
    introduce(dom0, 6)
    introduce(dom0, 6)  # repeated INTRODUCE: only the event channel again
    assert conn(6).read("/vm/six") == b"6"


def test_without_a_hypervisor_only_the_configured_domains_exist() -> None:
    store = Store(StoreConfig(existing_domids=frozenset({4})))
    store.connect(1, 0, is_socket=True)
    dom0 = Client(store, 1)
    dom0.write("/p", b"")
    dom0.set_perms("/p", "n4")
    assert dom0.err(M.SET_PERMS, b"/p\0n5\0") == "ENOENT"


def test_rights_in_a_restored_transaction_hold(hv: FakeHypervisor, conn: Connect) -> None:
    """A node written in a transaction keeps its entries across a dump and restore."""
    from pyxenstored.migrate import StoreOnlySink, dump_state, restore_state
    from pyxenstored.stream import ConnectionData, RingSpec, SocketSpec

    dom0 = conn(None)
    hv.existing[5] = Facts(0x55)
    guest = conn(5)  # its domain record comes back with its connection
    dom0.write("/t", b"")
    dom0.set_perms("/t", "n0", "r5")
    tx = dom0.start()
    dom0.write("/t", b"in tx", tx=tx)
    old = dom0.store
    records = [
        ConnectionData(dom0.conn_id, 1, 0, SocketSpec(100)),
        ConnectionData(guest.conn_id, 0, 1, RingSpec(5, 0x7FF4, 7), unique_id=0x55),
    ]
    fresh = Store(StoreConfig(hypervisor=hv))
    restore_state(list(dump_state(old, records)), fresh, StoreOnlySink(fresh))
    for store in (old, fresh):
        assert Client(store, dom0.conn_id).end(tx).payload == b"OK\0"
        assert Client(store, guest.conn_id).read("/t") == b"in tx"
