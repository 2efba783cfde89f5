"""Transactions: lazy overlays, conflicts, events at commit, limits (C's ``transaction.c``)."""

from __future__ import annotations

from pyxenstored.store import Store, StoreConfig
from pyxenstored.wire import MsgType as M

from .conftest import Client, ClientFactory, assert_consistent, events_of


def test_ids_start_at_one_and_increase(dom0: Client) -> None:
    assert [dom0.start() for _ in range(3)] == [1, 2, 3]
    assert dom0.end(2).payload == b"OK\0"
    assert dom0.start() == 4


def test_ids_are_per_connection(dom0: Client, connect: ClientFactory) -> None:
    other = connect()
    assert dom0.start() == 1
    assert other.start() == 1
    assert dom0.err(M.READ, b"/\0", tx=2) == "ENOENT"


def test_writes_invisible_until_commit(dom0: Client) -> None:
    tx = dom0.start()
    dom0.write("/t/x", b"v", tx=tx)
    assert dom0.read("/t/x", tx=tx) == b"v"
    assert dom0.ls("/", tx=tx) == ["tool", "t"]
    assert dom0.err(M.READ, b"/t/x\0") == "ENOENT"
    assert dom0.ls("/") == ["tool"]
    assert dom0.end(tx).payload == b"OK\0"
    assert dom0.read("/t/x") == b"v"
    assert_consistent(dom0.store)


def test_abort_discards(dom0: Client) -> None:
    dom0.write("/a", b"old")
    tx = dom0.start()
    dom0.write("/a", b"new", tx=tx)
    dom0.rm("/a", tx=tx)
    assert dom0.end(tx, commit=False).payload == b"OK\0"
    assert dom0.read("/a") == b"old"
    assert dom0.err(M.TRANSACTION_END, b"T\0", tx=tx) == "ENOENT"


def test_end_argument_checked_first(dom0: Client) -> None:
    assert dom0.err(M.TRANSACTION_END, b"X\0") == "EINVAL"
    assert dom0.err(M.TRANSACTION_END, b"T\0") == "ENOENT"
    assert dom0.err(M.TRANSACTION_END, b"T") == "EINVAL"
    tx = dom0.start()
    assert dom0.err(M.TRANSACTION_END, b"TT\0", tx=tx) == "EINVAL"
    assert dom0.end(tx).payload == b"OK\0"  # still open after the EINVAL


def test_no_nesting(dom0: Client) -> None:
    tx = dom0.start()
    assert dom0.err(M.TRANSACTION_START, b"\0", tx=tx) == "EBUSY"


def test_conflicting_write_gives_eagain(dom0: Client, connect: ClientFactory) -> None:
    other = connect()
    dom0.write("/c", b"0")
    tx = dom0.start()
    assert dom0.read("/c", tx=tx) == b"0"
    other.write("/c", b"1")
    assert dom0.read("/c", tx=tx) == b"0"  # keeps its copy
    dom0.write("/c", b"2", tx=tx)
    assert dom0.end(tx).payload == b"EAGAIN\0"
    assert dom0.read("/c") == b"1"
    assert dom0.err(M.TRANSACTION_END, b"T\0", tx=tx) == "ENOENT"  # gone after error


def test_first_access_after_outside_change_sees_it(dom0: Client, connect: ClientFactory) -> None:
    other = connect()
    dom0.write("/c", b"0")
    dom0.write("/d", b"0")
    tx = dom0.start()
    dom0.read("/d", tx=tx)
    other.write("/c", b"1")  # not yet touched by the transaction
    assert dom0.read("/c", tx=tx) == b"1"
    dom0.write("/d", b"x", tx=tx)
    assert dom0.end(tx).payload == b"OK\0"


def test_creation_race_conflicts(dom0: Client, connect: ClientFactory) -> None:
    other = connect()
    tx = dom0.start()
    assert dom0.err(M.READ, b"/new\0", tx=tx) == "ENOENT"
    other.write("/new", b"x")
    dom0.write("/elsewhere", b"", tx=tx)
    assert dom0.end(tx).payload == b"EAGAIN\0"


def test_unrelated_changes_do_not_conflict(dom0: Client, connect: ClientFactory) -> None:
    other = connect()
    dom0.write("/a/x")
    dom0.write("/b/y")
    tx = dom0.start()
    dom0.write("/a/x", b"t", tx=tx)
    other.write("/b/y", b"o")
    assert dom0.end(tx).payload == b"OK\0"
    assert (dom0.read("/a/x"), dom0.read("/b/y")) == (b"t", b"o")


def test_sibling_creation_conflicts_through_parent(dom0: Client, connect: ClientFactory) -> None:
    other = connect()
    dom0.mkdir("/p")
    tx = dom0.start()
    dom0.write("/p/one", b"", tx=tx)
    other.write("/p/two", b"")
    assert dom0.end(tx).payload == b"EAGAIN\0"
    assert dom0.ls("/p") == ["two"]
    assert_consistent(dom0.store)


def test_rm_in_transaction(dom0: Client) -> None:
    dom0.write("/r/a/b", b"1")
    tx = dom0.start()
    dom0.rm("/r/a", tx=tx)
    assert dom0.err(M.READ, b"/r/a/b\0", tx=tx) == "ENOENT"
    assert dom0.read("/r/a/b") == b"1"
    assert dom0.end(tx).payload == b"OK\0"
    assert dom0.ls("/r") == []
    assert_consistent(dom0.store)


def test_events_only_at_commit_in_first_access_order(dom0: Client, connect: ClientFactory) -> None:
    watcher = connect()
    watcher.watch("/", "w")
    dom0.write("/e/b")
    dom0.write("/e/c")
    tx = dom0.start()
    assert not dom0.req(M.WRITE, b"/e/c\0", tx=tx).events
    assert not dom0.req(M.WRITE, b"/e/a\0", tx=tx).events
    assert not dom0.req(M.WRITE, b"/e/c\0again", tx=tx).events
    r = dom0.end(tx)
    assert [(c, p) for c, p, _ in events_of(r)] == [
        (watcher.conn_id, b"/e/c"),
        (watcher.conn_id, b"/e/a"),
    ]
    assert r.events_before_reply


def test_commit_events_of_removed_nodes(dom0: Client, connect: ClientFactory) -> None:
    # At commit C checks watchers against the permissions a node had when the
    # transaction first saw it; a node created and removed inside the
    # transaction had none and can no longer be read: it notifies nobody.
    watcher = connect()
    guest = connect(domid=5)
    dom0.write("/e/b")
    dom0.set_perms("/e/b", "n0", "r5")
    watcher.watch("/e", "w")
    guest.watch("/e/b", "g")
    tx = dom0.start()
    dom0.rm("/e/b", tx=tx)
    dom0.write("/e/new/deep", b"1", tx=tx)
    dom0.rm("/e/new/deep", tx=tx)
    r = dom0.end(tx)
    assert events_of(r) == [(watcher.conn_id, b"/e/b", b"w"), (guest.conn_id, b"/e/b", b"g")]


def test_no_events_on_abort_or_failure(dom0: Client, connect: ClientFactory) -> None:
    watcher = connect()
    watcher.watch("/", "w")
    tx = dom0.start()
    dom0.write("/x", b"", tx=tx)
    assert not dom0.end(tx, commit=False).events
    dom0.write("/y")
    tx = dom0.start()
    dom0.write("/y", b"t", tx=tx)
    watcher.write("/y", b"w")
    r = dom0.end(tx)
    assert r.payload == b"EAGAIN\0"
    assert not r.events


def test_reset_watches_and_disconnect_drop_transactions(dom0: Client) -> None:
    tx = dom0.start()
    dom0.ok(M.RESET_WATCHES, b"")
    assert dom0.err(M.READ, b"/\0", tx=tx) == "ENOENT"
    dom0.start()
    dom0.store.disconnect(dom0.conn_id)
    assert_consistent(dom0.store)


def _guest(dom0: Client, connect: ClientFactory, domid: int = 5) -> Client:
    dom0.mkdir(f"/local/domain/{domid}")
    dom0.set_perms(f"/local/domain/{domid}", f"n{domid}")
    return connect(domid=domid)


def test_transaction_quota(dom0: Client, connect: ClientFactory) -> None:
    guest = _guest(dom0, connect)
    ids = [guest.start() for _ in range(9)]  # quota 10: at most 9 open
    assert guest.err(M.TRANSACTION_START, b"\0") == "ENOSPC"
    guest.end(ids[0], commit=False)
    guest.start()
    # Privileged connections are not limited.
    assert [dom0.start() for _ in range(12)][-1] == 12


def test_transaction_nodes_quota_fails_the_transaction(
    dom0: Client, connect: ClientFactory
) -> None:
    guest = _guest(dom0, connect)
    dom0.ok(M.SET_QUOTA, b"5\0transaction-nodes\x003\0")
    tx = guest.start()
    guest.read("/local/domain/5", tx=tx)
    guest.write("a", b"", tx=tx)  # accesses a (missing): 2 nodes
    assert guest.err(M.WRITE, b"b\0", tx=tx) == "ENOSPC"  # a 3rd node reaches the quota
    assert guest.end(tx).payload == b"ENOMEM\0"
    assert guest.err(M.READ, b"a\0") == "ENOENT"


def test_node_quota_checked_at_commit(dom0: Client, connect: ClientFactory) -> None:
    guest = _guest(dom0, connect)
    dom0.ok(M.SET_QUOTA, b"5\0nodes\x004\0")
    tx1 = guest.start()
    tx2 = guest.start()
    guest.write("x1", b"", tx=tx1)
    guest.write("x2", b"", tx=tx1)
    guest.write("y1", b"", tx=tx2)
    guest.write("y2", b"", tx=tx2)
    assert guest.end(tx1).payload == b"OK\0"  # 2 nodes owned
    r = guest.end(tx2)
    # 2 committed + 2 new reaches quota 4 (checked before the generation test).
    assert r.payload == b"ENOSPC\0"
    assert_consistent(dom0.store)


def test_counters_after_commit(dom0: Client) -> None:
    store: Store = dom0.store
    before = store.domains[0].usage[0]
    tx = dom0.start()
    dom0.write("/n/a/b", b"", tx=tx)
    dom0.end(tx)
    assert store.domains[0].usage[0] == before + 3
    assert_consistent(store)


def test_transaction_sees_own_creation_and_subsequent_ops() -> None:
    store = Store(StoreConfig())
    store.connect(1, 0, is_socket=True)
    c = Client(store, 1)
    tx = c.start()
    c.write("/q/r", b"1", tx=tx)
    c.set_perms("/q/r", "n0", "r3", tx=tx)
    assert c.ok(M.GET_PERMS, b"/q/r\0", tx=tx) == b"n0\0r3\0"
    c.rm("/q", tx=tx)
    c.write("/q", b"2", tx=tx)
    assert c.end(tx).payload == b"OK\0"
    assert c.read("/q") == b"2"
    assert c.ls("/q") == []
    assert_consistent(store)


def test_parent_copied_after_outside_removal_of_child(dom0: Client, connect: ClientFactory) -> None:
    # The transaction copies /a, another connection removes /a, then the
    # transaction removes /a: its late copy of / no longer lists "a".
    other = connect()
    dom0.write("/a", b"1")
    tx = dom0.start()
    dom0.read("/a", tx=tx)
    other.rm("/a")
    assert dom0.err(M.RM, b"/a\0", tx=tx) == "EIO"  # as C's delete_child
    assert dom0.end(tx).payload == b"EAGAIN\0"
    assert_consistent(dom0.store)


def test_parent_copied_after_outside_creation_of_child(
    dom0: Client, connect: ClientFactory
) -> None:
    other = connect()
    tx = dom0.start()
    assert dom0.err(M.READ, b"/n/x\0", tx=tx) == "ENOENT"  # copies nothing of /n yet
    other.write("/n/x", b"o")
    dom0.write("/n/x", b"t", tx=tx)
    assert dom0.ls("/n", tx=tx) == ["x"]
    assert dom0.end(tx).payload == b"EAGAIN\0"
    assert dom0.read("/n/x") == b"o"
    assert_consistent(dom0.store)


def test_rm_of_child_unknown_to_the_parent_copy_is_eio(
    dom0: Client, connect: ClientFactory
) -> None:
    other = connect()
    tx = dom0.start()
    dom0.write("/a", b"", tx=tx)  # copies /
    other.write("/c", b"")
    assert dom0.err(M.RM, b"/c\0", tx=tx) == "EIO"
    assert dom0.end(tx).payload == b"EAGAIN\0"
    assert_consistent(dom0.store)


def test_eacces_inside_a_transaction_checks_the_parent(
    dom0: Client, connect: ClientFactory
) -> None:
    """C asks the parents before answering EACCES (errno_from_parents): an access."""
    dom0.ok(M.INTRODUCE, b"5\0" + b"1\0" + b"15\0")
    guest = connect(domid=5)
    tx = guest.start()
    dom0.write("/b")
    assert guest.err(M.WRITE, b"/b\0mine", tx) == "EACCES"
    dom0.write("/a")  # a new child of /, which the refused write consulted
    assert guest.end(tx).payload == b"EAGAIN\0"
    # Without the outside change the same refused write commits fine.
    tx = guest.start()
    assert guest.err(M.WRITE, b"/b\0mine", tx) == "EACCES"
    assert guest.end(tx).payload == b"OK\0"
    assert_consistent(dom0.store)
