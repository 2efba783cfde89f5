"""Lazy generation numbers: writes nobody observed share a value, yet every
comparison (transaction conflicts, DIRECTORY_PART, stale permission entries)
comes out as with C's one-number-per-write counter."""

from __future__ import annotations

from pyxenstored.store import Store
from pyxenstored.wire import MsgType

from .conftest import Client


def _part_gen(client: Client, path: str, tx: int = 0) -> bytes:
    reply = client.ok(MsgType.DIRECTORY_PART, path.encode() + b"\x000\x00", tx)
    return reply.split(b"\0", 1)[0]


def test_unobserved_writes_share_one_generation(store: Store, dom0: Client) -> None:
    for i in range(50):
        dom0.write(f"/run/n{i}", b"v")
    gens = {store.nodes[f"/run/n{i}"].gen for i in range(50)}
    assert len(gens) < 5  # the point of the exercise: no int per node


def test_transaction_sees_a_change_after_a_run_of_writes(dom0: Client) -> None:
    for name in "abc":
        dom0.write(f"/x/{name}", b"0")
    tx = dom0.start()
    assert dom0.read("/x/b", tx) == b"0"
    dom0.write("/x/b", b"1")  # outside the transaction, after it looked
    dom0.write("/x/d", b"1", tx)
    assert dom0.end(tx).payload == b"EAGAIN\0"


def test_unrelated_writes_do_not_fail_a_transaction(dom0: Client) -> None:
    for name in "abc":
        dom0.write(f"/x/{name}", b"0")
    tx = dom0.start()
    assert dom0.read("/x/b", tx) == b"0"
    dom0.write("/x/c", b"1")
    dom0.write("/y", b"1")
    dom0.write("/x/d", b"1", tx)
    assert dom0.end(tx).payload == b"OK\0"


def test_delete_and_recreate_is_a_conflict(dom0: Client) -> None:
    dom0.write("/x/a", b"0")
    dom0.write("/x/b", b"0")
    tx = dom0.start()
    assert dom0.read("/x/b", tx) == b"0"
    dom0.rm("/x/b")
    dom0.write("/x/b", b"0")  # same value, same place: still a new node
    dom0.write("/x/c", b"1", tx)
    assert dom0.end(tx).payload == b"EAGAIN\0"


def test_directory_part_generation_changes_only_with_the_node(dom0: Client) -> None:
    dom0.write("/d/a", b"")
    dom0.write("/e", b"")
    first = _part_gen(dom0, "/d")
    dom0.write("/e", b"1")
    dom0.write("/f", b"1")
    assert _part_gen(dom0, "/d") == first
    dom0.write("/d/b", b"")
    second = _part_gen(dom0, "/d")
    assert second != first
    dom0.write("/d/b", b"x")  # a child's value: the directory is unchanged
    assert _part_gen(dom0, "/d") == second


def test_domain_younger_than_all_but_the_last_write(store: Store, dom0: Client) -> None:
    # C: a domain record takes the counter as it is, so the node written just
    # before it is not older than the domain, every earlier one is.
    for name in "abc":
        dom0.write(f"/s/{name}", b"")
    dom0.write("/s/c", b"1")  # the last write touches /s/c alone (a creation ends with the parent)
    assert 40 not in store.domains
    dom = store.ensure_domain(40)
    for older in ("/s", "/s/a", "/s/b"):
        assert store.is_stale(40, store.nodes[older].gen)
    assert not store.is_stale(40, store.nodes["/s/c"].gen)
    dom0.write("/s/a", b"1")
    dom0.write("/s/d", b"")
    assert not store.is_stale(40, store.nodes["/s/a"].gen)
    assert not store.is_stale(40, store.nodes["/s/d"].gen)
    assert dom.generation <= store.generation


def test_restored_nodes_share_a_generation_and_still_conflict(dom0: Client) -> None:
    from pyxenstored.migrate import StoreOnlySink, dump_state, restore_stream
    from pyxenstored.stream import write_stream

    for i in range(20):
        dom0.write(f"/r/n{i}", b"v")
    data = write_stream(list(dump_state(dom0.store, [])), version=2)
    fresh = Store()
    restore_stream(data, fresh, StoreOnlySink(fresh))
    assert len({fresh.nodes[f"/r/n{i}"].gen for i in range(20)}) < 5
    fresh.connect(1, 0, is_socket=True)
    again = Client(fresh, 1)
    tx = again.start()
    assert again.read("/r/n19", tx) == b"v"
    again.write("/r/n19", b"w")
    again.write("/r/x", b"", tx)
    assert again.end(tx).payload == b"EAGAIN\0"


def test_directory_part_tokens_of_two_nodes_differ(dom0: Client) -> None:
    for _ in range(3):
        dom0.write("/a", b"")
    dom0.write("/b", b"")  # /a, /b (and /) written in one unobserved run
    assert _part_gen(dom0, "/a") != _part_gen(dom0, "/b")
