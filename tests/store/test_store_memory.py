"""Memory-saving representation of nodes: shared empty child lists, interned
child names and permission lists; behaviour (order, sizes) unchanged."""

from __future__ import annotations

from pyxenstored.store import Store
from pyxenstored.store.node import NO_CHILDREN

from .conftest import Client, ClientFactory, assert_consistent


def test_leaves_share_the_empty_child_list(store: Store, dom0: Client) -> None:
    dom0.write("/p/a", b"1")
    dom0.write("/p/b", b"2")
    assert store.nodes["/p/a"].children is NO_CHILDREN
    assert store.nodes["/p/b"].children is NO_CHILDREN
    assert store.nodes["/p"].clen == len("a\0b\0")


def test_last_child_removed_gives_back_the_shared_empty_list(store: Store, dom0: Client) -> None:
    dom0.write("/p/a", b"")
    dom0.write("/p/b", b"")
    dom0.rm("/p/a")
    assert dom0.ls("/p") == ["b"]
    assert store.nodes["/p"].clen == 2
    dom0.rm("/p/b")
    assert store.nodes["/p"].children is NO_CHILDREN
    assert store.nodes["/p"].clen == 0
    assert dom0.ls("/p") == []
    dom0.write("/p/c", b"")
    assert dom0.ls("/p") == ["c"]
    assert_consistent(store)


def test_creation_order_kept_across_removals_and_transactions(store: Store, dom0: Client) -> None:
    for name in ("z", "a", "m", "b"):
        dom0.write(f"/o/{name}", b"")
    dom0.rm("/o/a")
    tx = dom0.start()
    dom0.write("/o/a", b"", tx)
    dom0.rm("/o/z", tx)
    assert dom0.ls("/o", tx) == ["m", "b", "a"]
    assert dom0.ls("/o") == ["z", "m", "b"]
    assert dom0.end(tx).payload == b"OK\0"
    assert dom0.ls("/o") == ["m", "b", "a"]
    assert_consistent(store)


def test_same_child_name_under_many_parents_is_one_string(store: Store, dom0: Client) -> None:
    for i in range(3):
        dom0.write(f"/dev{i}/state", b"4")
    names = [next(iter(store.nodes[f"/dev{i}"].children)) for i in range(3)]
    assert names[0] is names[1] is names[2]


def test_equal_permission_lists_are_shared(
    store: Store, dom0: Client, connect: ClientFactory
) -> None:
    dom0.mkdir("/local/domain/5")
    dom0.set_perms("/local/domain/5", "b5")
    guest = connect(domid=5)
    guest.write("/local/domain/5/a", b"")
    guest.write("/local/domain/5/b", b"")
    assert store.nodes["/local/domain/5/a"].perms is store.nodes["/local/domain/5/b"].perms
    dom0.set_perms("/local/domain/5/a", "n5", "r0")
    dom0.set_perms("/local/domain/5/b", "n5", "r0")
    assert store.nodes["/local/domain/5/a"].perms is store.nodes["/local/domain/5/b"].perms
    assert dom0.get_perms("/local/domain/5/b") == ["n5", "r0"]
