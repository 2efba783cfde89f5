"""Transaction memory in the ``memory`` quota (issue 12, docs/compat.md D06).

What an open transaction holds -- a copy of every node it read, wrote or
created -- is charged to the domain of its connection from the moment the
copy is made (C's ``get_acc_domid`` charges its per-transaction nodes to
the transaction's owner), and released when the transaction ends however
it ends.  The figures below are computed by hand from the accounting rule
of C's ``core.c:db_write`` (docs/compat.md S06): a node costs
``16 + 8 * permissions + value + child names (each with its NUL) + path``.
"""

from __future__ import annotations

import logging

import pytest

from pyxenstored.migrate import StoreOnlySink, dump_state, restore_state
from pyxenstored.store import Store, StoreConfig
from pyxenstored.store import quota as q
from pyxenstored.stream import (
    ConnectionData,
    GlobalData,
    RingSpec,
    SocketSpec,
    read_records,
    write_stream,
)
from pyxenstored.wire import MsgType as M

from .conftest import EXISTING, Client, ClientFactory, assert_consistent

HOME = "/local/domain/5"
HOME_COPY = 16 + 8 + len(HOME)  # the home, owned by 5 alone, no value, no children yet


def node_cost(path: str, value: bytes = b"", perms: int = 1, children: str = "") -> int:
    """C's ``core.c:db_write`` charge for one node; ``children``: the names, NUL-separated."""
    child_bytes = sum(len(name) + 1 for name in children.split()) if children else 0
    return 16 + 8 * perms + len(value) + child_bytes + len(path)


@pytest.fixture
def guest(dom0: Client, connect: ClientFactory) -> Client:
    dom0.mkdir(HOME)
    dom0.set_perms(HOME, "n5")
    return connect(domid=5)


def memory(store: Store, domid: int = 5) -> int:
    return store.domains[domid].usage[q.MEMORY]


def test_a_write_in_a_transaction_is_charged_at_once_and_abort_gives_it_back(
    store: Store, guest: Client
) -> None:
    before = memory(store)
    assert before == HOME_COPY  # the committed home
    tx = guest.start()
    guest.write("a", b"x" * 100, tx=tx)
    # The copy of the home (read for the parent, then given child "a") and the new node.
    held = node_cost(HOME, children="a") + node_cost(HOME + "/a", b"x" * 100)
    assert memory(store) == before + held
    assert_consistent(store)
    assert guest.end(tx, commit=False).payload == b"OK\0"
    assert memory(store) == before
    assert_consistent(store)


def test_commit_moves_the_charge_from_the_copies_to_the_owners(
    store: Store, dom0: Client, guest: Client
) -> None:
    tx = guest.start()
    guest.write("a", b"x" * 100, tx=tx)
    assert guest.end(tx).payload == b"OK\0"
    committed = node_cost(HOME, children="a") + node_cost(HOME + "/a", b"x" * 100)
    assert memory(store) == committed
    # The same result as the same write outside a transaction.
    other = Store(StoreConfig(existing_domids=EXISTING))
    other.connect(1, 0, is_socket=True)
    other.connect(2, 5, is_socket=False)
    other.handle(1, M.MKDIR, 0, HOME.encode() + b"\0")
    other.handle(1, M.SET_PERMS, 0, HOME.encode() + b"\0n5\0")
    other.handle(2, M.WRITE, 0, b"a\0" + b"x" * 100)
    assert memory(other) == committed
    assert_consistent(store)


def test_a_failed_commit_gives_the_copies_back_too(
    store: Store, dom0: Client, guest: Client
) -> None:
    guest.write("a", b"1")
    before = memory(store)
    tx = guest.start()
    guest.read("a", tx=tx)
    guest.write("b", b"y" * 50, tx=tx)
    dom0.write(HOME + "/a", b"2")  # changes what the transaction read (same size)
    assert memory(store) > before + 50
    assert guest.end(tx).payload == b"EAGAIN\0"
    assert memory(store) == before
    assert_consistent(store)


def test_closing_the_connection_gives_the_copies_back(store: Store, guest: Client) -> None:
    before = memory(store)
    for _ in range(3):
        tx = guest.start()
        guest.write("big", b"z" * 1000, tx=tx)
    assert memory(store) > before + 3000
    store.disconnect(guest.conn_id)
    assert memory(store) == before
    assert_consistent(store)


def test_reset_watches_gives_the_copies_back(store: Store, guest: Client) -> None:
    before = memory(store)
    tx = guest.start()
    guest.write("big", b"z" * 1000, tx=tx)
    assert memory(store) > before + 1000
    guest.ok(M.RESET_WATCHES, b"")
    assert memory(store) == before
    assert guest.err(M.READ, b"big\0", tx) == "ENOENT"  # the transaction is gone
    assert_consistent(store)


def test_a_node_of_another_owner_is_charged_to_the_writer_until_commit(
    store: Store, dom0: Client, guest: Client
) -> None:
    dom0.write("/shared", b"")
    dom0.set_perms("/shared", "n0", "b5")  # owned by dom0, writable by the guest
    dom0_before = memory(store, 0)
    tx = guest.start()
    guest.write("/shared", b"s" * 300, tx=tx)
    assert memory(store) == HOME_COPY + node_cost("/shared", b"s" * 300, perms=2)
    assert memory(store, 0) == dom0_before  # the owner pays only once it is committed
    assert guest.end(tx).payload == b"OK\0"
    assert memory(store) == HOME_COPY
    assert memory(store, 0) == dom0_before + 300
    assert_consistent(store)


def test_records_of_absent_paths_are_charged_their_length(store: Store, guest: Client) -> None:
    tx = guest.start()
    long = "n" * 2000
    assert guest.err(M.READ, long.encode() + b"\0", tx) == "ENOENT"
    # The record of the path, and the home's copy (read to tell ENOENT from EACCES).
    assert memory(store) == HOME_COPY + len(HOME + "/" + long) + node_cost(HOME)
    guest.end(tx, commit=False)
    assert memory(store) == HOME_COPY
    assert_consistent(store)


def test_read_copies_are_charged(store: Store, dom0: Client, guest: Client) -> None:
    dom0.write("/pub", b"p" * 500)
    dom0.set_perms("/pub", "n0", "r5")
    tx = guest.start()
    assert guest.read("/pub", tx=tx) == b"p" * 500
    assert memory(store) == HOME_COPY + node_cost("/pub", b"p" * 500, perms=2)
    guest.read("/pub", tx=tx)  # already copied: nothing more
    assert memory(store) == HOME_COPY + node_cost("/pub", b"p" * 500, perms=2)
    assert guest.end(tx).payload == b"OK\0"
    assert memory(store) == HOME_COPY


def test_nested_create_then_delete_inside_a_transaction(store: Store, guest: Client) -> None:
    before = memory(store)
    tx = guest.start()
    guest.write("a/b/c", b"v" * 10, tx=tx)
    created = (
        node_cost(HOME, children="a")
        + node_cost(HOME + "/a", children="b")
        + node_cost(HOME + "/a/b", children="c")
        + node_cost(HOME + "/a/b/c", b"v" * 10)
    )
    assert memory(store) == before + created
    guest.rm("a/b", tx=tx)
    # What is left: the home's copy, a's copy now without the child b, and
    # the records of the paths deleted (their lengths).
    gone = len(HOME + "/a/b") + len(HOME + "/a/b/c")
    assert memory(store) == before + node_cost(HOME, children="a") + node_cost(HOME + "/a") + gone
    assert_consistent(store)
    guest.rm("a", tx=tx)
    assert memory(store) == before + node_cost(HOME) + len(HOME + "/a") + gone
    assert guest.end(tx).payload == b"OK\0"
    assert memory(store) == before
    assert guest.ls(HOME) == []
    assert_consistent(store)


def test_deleting_committed_nodes_in_a_transaction(store: Store, guest: Client) -> None:
    guest.write("d/e", b"e" * 200)
    before = memory(store)
    tx = guest.start()
    guest.rm("d", tx=tx)
    # The subtree's copies went with it (their paths' records stay); the
    # home's copy lost "d".
    assert memory(store) == before + node_cost(HOME) + len(HOME + "/d") + len(HOME + "/d/e")
    assert guest.end(tx).payload == b"OK\0"
    assert memory(store) == HOME_COPY
    assert_consistent(store)


def test_the_quota_cannot_be_bypassed_by_create_and_delete(
    store: Store, dom0: Client, guest: Client
) -> None:
    dom0.ok(M.SET_QUOTA, b"5\0memory\x003500\0")
    tx = guest.start()
    # Creating and deleting over and over never holds more than one copy.
    for _ in range(50):
        guest.write("tmp", b"t" * 1500, tx=tx)
        assert memory(store) < 3500
        guest.rm("tmp", tx=tx)
    assert memory(store) == HOME_COPY + node_cost(HOME) + len(HOME + "/tmp")
    assert guest.end(tx).payload == b"OK\0"
    # Deleting a committed node inside the transaction frees nothing before
    # the commit: the committed node is still there, charged to its owner.
    guest.write("keep", b"k" * 1500)
    tx = guest.start()
    guest.rm("keep", tx=tx)
    assert guest.err(M.WRITE, b"new\0" + b"n" * 2000, tx) == "ENOMEM"
    assert memory(store) < 3500
    guest.end(tx, commit=False)
    guest.rm("keep")
    guest.write("new", b"n" * 2000)  # once it is really gone, it fits
    assert_consistent(store)


def test_the_hard_limit_fails_the_request_and_the_transaction(
    store: Store, dom0: Client, guest: Client
) -> None:
    dom0.ok(M.SET_QUOTA, b"5\0memory\x003000\0")
    tx1 = guest.start()
    tx2 = guest.start()
    guest.write("a", b"a" * 1200, tx=tx1)
    guest.write("b", b"b" * 1200, tx=tx2)
    held = memory(store)
    assert guest.err(M.WRITE, b"c\0" + b"c" * 1200, tx1) == "ENOMEM"
    held += len(HOME + "/c")  # the refused write holds only the record of its path
    assert memory(store) == held
    assert guest.err(M.WRITE, b"b\0" + b"b" * 1900, tx2) == "ENOMEM"  # growing a copy
    assert memory(store) == held
    # C's write_node fails the transaction: its commit answers ENOMEM.
    assert guest.end(tx1).payload == b"ENOMEM\0"
    assert guest.end(tx2).payload == b"ENOMEM\0"
    assert memory(store) == HOME_COPY
    # Nothing stays held: the guest can write again.
    guest.write("a", b"a" * 1200)
    assert_consistent(store)


def test_a_read_copy_over_the_quota_is_refused(store: Store, dom0: Client, guest: Client) -> None:
    dom0.write("/pub", b"p" * 1500)
    dom0.set_perms("/pub", "n0", "r5")
    dom0.ok(M.SET_QUOTA, b"5\0memory\x001500\0")
    tx = guest.start()
    assert guest.err(M.READ, b"/pub\0", tx) == "ENOMEM"
    assert memory(store) == HOME_COPY
    assert guest.end(tx).payload == b"ENOMEM\0"
    assert guest.read("/pub") == b"p" * 1500  # outside a transaction nothing is copied
    assert_consistent(store)


def test_a_node_size_refusal_fails_the_transaction(guest: Client) -> None:
    tx = guest.start()
    guest.write("a", b"x", tx=tx)
    assert guest.err(M.WRITE, b"big\0" + b"x" * 2100, tx) == "ENOSPC"
    assert guest.end(tx).payload == b"ENOMEM\0"  # C 4.17 measured: ENOMEM


def test_privileged_and_socket_writers_are_never_refused(
    store: Store, dom0: Client, connect: ClientFactory
) -> None:
    ring0 = connect(domid=0)  # the privileged domain on a ring: charged, not limited
    store.handle(dom0.conn_id, M.SET_QUOTA, 0, b"0\0memory\x00100\0")
    before = memory(store, 0)
    tx = ring0.start()
    ring0.write("/big", b"b" * 1000, tx=tx)
    assert memory(store, 0) > before + 1000
    assert ring0.end(tx).payload == b"OK\0"
    tx = dom0.start()  # the socket has no domain record: nothing charged
    usage = {d: list(r.usage) for d, r in store.domains.items()}
    dom0.write("/big2", b"b" * 1000, tx=tx)
    assert {d: list(r.usage) for d, r in store.domains.items()} == usage
    assert dom0.end(tx).payload == b"OK\0"
    assert_consistent(store)


def test_releasing_a_domain_with_open_transactions(
    store: Store, dom0: Client, guest: Client
) -> None:
    dom0.ok(M.INTRODUCE, b"5\x001\x007\0")
    for _ in range(3):
        tx = guest.start()
        guest.write("x", b"x" * 700, tx=tx)
    assert memory(store) > 3 * 700
    dom0.ok(M.RELEASE, b"5\0")
    # The connection stays (the server closes it) with a fresh record.
    assert memory(store) == 0
    assert_consistent(store)


def test_check_finds_a_wrong_transaction_charge(store: Store, guest: Client) -> None:
    tx = guest.start()
    guest.write("a", b"x" * 10, tx=tx)
    store.conns[guest.conn_id].transactions[tx].memory += 1
    held = node_cost(HOME, children="a") + node_cost(HOME + "/a", b"x" * 10)
    assert store.check() == [
        f"transaction {tx} of connection {guest.conn_id}: charged {held + 1} bytes, holds {held}"
    ]


def test_soft_limit_log_lines_as_c(
    store: Store, dom0: Client, guest: Client, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    store.config.clock = lambda: now[0]
    dom0.ok(M.SET_QUOTA, b"5\0soft-memory\x001000\0")
    dom0.ok(M.SET_QUOTA, b"5\0memory\x001500\0")
    with caplog.at_level(logging.INFO, logger="pyxenstored.store"):
        tx = guest.start()
        guest.write("a", b"a" * 1000, tx=tx)
        guest.end(tx, commit=False)
        guest.write("b", b"b" * 10)  # below again, but within 10 s: not said yet
        now[0] += 10
        guest.write("c", b"c" * 10)
        tx = guest.start()
        assert guest.err(M.WRITE, b"d\0" + b"d" * 1500, tx) == "ENOMEM"
        assert guest.err(M.WRITE, b"d\0" + b"d" * 1500, tx) == "ENOMEM"  # said once
    lines = [r.getMessage() for r in caplog.records if "memory quota" in r.getMessage()]
    assert lines == [
        "Domain 5 exceeds soft memory quota",
        "Domain 5 below soft memory quota again",
        "Domain 5 exceeds hard memory quota, Xenstore interface to domain stalled",
    ]


def test_counters_exact_after_a_restore_with_open_transactions(
    store: Store, dom0: Client, guest: Client
) -> None:
    guest.write("base", b"b" * 100)
    tx = guest.start()
    guest.write("t/1", b"1" * 900, tx=tx)
    guest.read("base", tx=tx)
    tx2 = guest.start()
    guest.rm("base", tx=tx2)
    usage = list(store.domains[5].usage)
    assert usage[q.MEMORY] > 1000
    conns = [
        ConnectionData(dom0.conn_id, 1, 0, SocketSpec(100)),
        ConnectionData(guest.conn_id, 0, 1, RingSpec(5, 0x7FF4, 7), unique_id=9),
    ]
    records = list(dump_state(store, conns, global_data=GlobalData(3, -1)))
    _, back = read_records(write_stream(records))
    fresh = Store(StoreConfig(existing_domids=EXISTING))
    restore_state(back, fresh, StoreOnlySink(fresh))
    assert fresh.check() == []
    assert fresh.domains[5].usage[q.MEMORY] == usage[q.MEMORY]
    # Ending them gives everything back there too.
    for t in (tx, tx2):
        assert fresh.handle(guest.conn_id, M.TRANSACTION_END, t, b"F\0").payload == b"OK\0"
    assert fresh.domains[5].usage[q.MEMORY] == node_cost(HOME, children="base") + node_cost(
        HOME + "/base", b"b" * 100
    )
    assert fresh.check() == []
