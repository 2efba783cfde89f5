"""What one guest can make the store hold: each resource charged and bounded.

Each test pushes one resource as far as an unprivileged guest can with the
default quotas (C HEAD's, in ``domain.c``) and checks the refusal C gives, what is charged
to the guest, and -- with ``tracemalloc`` -- that the memory the store
really holds stays within a small multiple of what is charged.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from pyxenstored.store import Store
from pyxenstored.store import quota as q
from pyxenstored.wire import MsgType as M

from .conftest import Client, ClientFactory, assert_consistent

HOME = "/local/domain/5"
MEMORY_QUOTA = 2 * 1024 * 1024 + 512 * 1024


@pytest.fixture
def guest(dom0: Client, connect: ClientFactory) -> Client:
    dom0.mkdir(HOME)
    dom0.set_perms(HOME, "n5")
    return connect(domid=5)


@pytest.fixture
def held() -> Iterator[Callable[[], int]]:
    """Bytes allocated (and still held) since the test started."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    yield lambda: tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()


def memory(store: Store) -> int:
    return store.domains[5].usage[q.MEMORY]


def test_watch_paths_and_tokens(store: Store, guest: Client, held: Callable[[], int]) -> None:
    """C's ``do_watch`` (ENOSPC at the watches quota) and ``add_watch`` (path and token charged)."""
    before = memory(store)
    charged = 0
    for i in range(127):
        rel = b"%03d" % i + b"p" * 1997  # 2000 bytes below the home
        token = b"%03d" % i + b"t" * 2000
        guest.ok(M.WATCH, rel + b"\0" + token + b"\0")
        charged += len(HOME) + 1 + len(rel) + len(token)
    assert guest.err(M.WATCH, b"one-more\0t\0") == "ENOSPC"
    assert memory(store) == before + charged
    assert held() < 2 * charged + 512 * 1024
    # Where memory runs out first, C answers ENOMEM.
    guest.ok(M.RESET_WATCHES, b"")
    store.domains[5].quota.set(q.MEMORY, q.HARD, before + 3000)
    guest.ok(M.WATCH, b"a\0" + b"t" * 2000 + b"\0")
    assert guest.err(M.WATCH, b"b\0" + b"t" * 2000 + b"\0") == "ENOMEM"
    assert_consistent(store)


def test_long_paths_do_not_fill_the_path_caches(
    store: Store, guest: Client, held: Callable[[], int]
) -> None:
    """Paths a guest names are remembered only when short (the caches are shared by all)."""
    for i in range(8192):
        long = b"%06d" % i + b"x" * 2000
        assert guest.err(M.READ, b"/" + long + b"\0") == "EACCES"  # absolute
        assert guest.err(M.READ, long + b"\0") == "ENOENT"  # relative
        assert guest.err(M.GET_PERMS, long + b"\0") == "ENOENT"
    assert held() < 1024 * 1024


def test_transaction_records_of_absent_paths(
    store: Store, guest: Client, held: Callable[[], int]
) -> None:
    """9 transactions recording absent paths of 2 KB: charged, refused at the quota.

    C's ``access_node`` keeps such records uncharged (bounded only by the
    ``transaction-nodes`` quota: about 20 MB per guest); here each is
    charged its path.
    """
    answers: dict[str, int] = {}
    for t in range(9):
        tx = guest.start()
        for i in range(1030):
            r = guest.req(M.READ, b"%d-%06d" % (t, i) + b"x" * 2030 + b"\0", tx)
            name = r.payload.rstrip(b"\0").decode()
            answers[name] = answers.get(name, 0) + 1
    assert set(answers) == {"ENOENT", "ENOMEM", "ENOSPC"}, answers
    assert memory(store) < MEMORY_QUOTA
    assert held() < 2 * MEMORY_QUOTA
    assert_consistent(store)


def test_nodes_per_transaction(store: Store, guest: Client) -> None:
    """C's ``access_node``: the 1024th distinct node of a transaction is refused and fails it."""
    tx = guest.start()
    guest.read(HOME, tx=tx)
    for i in range(1022):
        assert guest.err(M.READ, b"r%d\0" % i, tx) == "ENOENT"  # 1023 with the home
    assert guest.err(M.WRITE, b"one-more\0", tx) == "ENOSPC"
    assert guest.end(tx).payload == b"ENOMEM\0"
    assert_consistent(store)
