"""Quota: names, defaults, the >= rule, GET/SET_QUOTA, CONTROL output, options (domain.c)."""

from __future__ import annotations

import pytest

from pyxenstored.store import QuotaTable, Store, StoreConfig, apply_quota_option
from pyxenstored.wire import MsgType as M

from .conftest import Client, ClientFactory, assert_consistent

ALL_NAMES = (
    b"nodes watches outstanding memory soft-memory transactions transaction-nodes "
    b"node-permissions path-max node-size\0"
)


@pytest.fixture
def guest(dom0: Client, connect: ClientFactory) -> Client:
    dom0.mkdir("/local/domain/5")
    dom0.set_perms("/local/domain/5", "n5")
    return connect(domid=5)


def test_get_quota_names_and_defaults(dom0: Client) -> None:
    assert dom0.ok(M.GET_QUOTA, b"") == ALL_NAMES
    expected = {
        b"nodes": b"1000",
        b"watches": b"128",
        b"outstanding": b"20",
        b"memory": b"2621440",
        b"soft-memory": b"2097152",
        b"transactions": b"10",
        b"transaction-nodes": b"1024",
        b"node-permissions": b"5",
        b"path-max": b"2048",
        b"node-size": b"2048",
    }
    for name, value in expected.items():
        assert dom0.ok(M.GET_QUOTA, name + b"\0") == value + b"\0"


@pytest.mark.parametrize(
    "payload", [b"bogus\0", b"soft-nodes\0", b"soft-bogus\0", b"0\0nodes\0x\0", b"permissions\0"]
)
def test_get_quota_errors(dom0: Client, payload: bytes) -> None:
    assert dom0.err(M.GET_QUOTA, payload) == "EINVAL"


def test_set_quota_global_and_per_domain(dom0: Client) -> None:
    assert dom0.ok(M.SET_QUOTA, b"nodes\x0050\0") == b"OK\0"
    assert dom0.ok(M.GET_QUOTA, b"nodes\0") == b"50\0"
    # Global defaults are copied when a record is created: new domain 8 gets 50 ...
    assert dom0.ok(M.GET_QUOTA, b"8\0nodes\0") == b"50\0"
    dom0.ok(M.SET_QUOTA, b"nodes\x0060\0")
    # ... and keeps it when the default changes later.
    assert dom0.ok(M.GET_QUOTA, b"8\0nodes\0") == b"50\0"
    assert dom0.ok(M.SET_QUOTA, b"8\0soft-memory\x00100\0") == b"OK\0"
    assert dom0.ok(M.GET_QUOTA, b"8\0soft-memory\0") == b"100\0"
    assert dom0.ok(M.SET_QUOTA, b"8\0nodes\x000\0") == b"OK\0"  # 0 = unlimited
    assert dom0.ok(M.GET_QUOTA, b"8\0nodes\0") == b"0\0"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"nodes\0", "EINVAL"),
        (b"1\0nodes\x005\x00x\0", "EINVAL"),
        (b"bogus\x005\0", "EINVAL"),
        (b"nodes\x00-1\0", "EINVAL"),  # UINT_MAX is the "disabled" marker
        (b"x\0nodes\x005\0", "EINVAL"),
        (b"70000\0nodes\x005\0", "EINVAL"),
    ],
)
def test_set_quota_errors(dom0: Client, payload: bytes, error: str) -> None:
    assert dom0.err(M.SET_QUOTA, payload) == error


def test_unknown_domain_is_enoent() -> None:
    store = Store(StoreConfig(existing_domids=frozenset({0, 1})))
    store.connect(1, 0, is_socket=True)
    assert store.handle(1, M.GET_QUOTA, 0, b"3\0nodes\0").payload == b"ENOENT\0"
    assert store.handle(1, M.SET_QUOTA, 0, b"3\0nodes\x001\0").payload == b"ENOENT\0"
    assert store.handle(1, M.GET_QUOTA, 0, b"1\0nodes\0").payload == b"1000\0"


def test_nodes_quota_uses_ge_rule(dom0: Client, guest: Client) -> None:
    dom0.ok(M.SET_QUOTA, b"5\0nodes\x004\0")
    # The guest owns /local/domain/5 already: 2 more make 3, the next would make 4.
    guest.write("a")
    guest.write("b")
    assert guest.err(M.WRITE, b"c\0") == "ENOSPC"
    assert guest.err(M.MKDIR, b"c/d\0") == "ENOSPC"
    guest.rm("a")
    guest.write("c")
    # Privileged connections are never limited, even creating nodes for the guest.
    dom0.write("/local/domain/5/priv")
    assert_consistent(dom0.store)


def test_nodes_quota_counts_committed_nodes_only(dom0: Client, guest: Client) -> None:
    # Like C, one request creating several levels is checked against the count
    # before the request: it may overshoot the quota (core.c:create_node).
    dom0.ok(M.SET_QUOTA, b"5\0nodes\x004\0")
    guest.write("a")  # owns 2
    guest.write("x/y/z")  # 2 + 1 < 4 for every new level
    assert dom0.store.domains[5].usage[0] == 5
    assert guest.err(M.WRITE, b"b\0") == "ENOSPC"
    # Inside a transaction the transaction's own creations are not counted
    # either: the commit checks committed + net new.
    guest.rm("x")
    guest.rm("a")  # owns 1
    tx = guest.start()
    for name in ("p", "q", "r", "s"):
        guest.write(name, b"", tx=tx)
    assert guest.end(tx).payload == b"ENOSPC\0"
    assert_consistent(dom0.store)


def test_watch_quota(dom0: Client, guest: Client) -> None:
    dom0.ok(M.SET_QUOTA, b"5\0watches\x003\0")
    guest.watch("a", "1")
    guest.watch("a", "2")
    assert guest.err(M.WATCH, b"a\x003\0") == "ENOSPC"
    assert dom0.store.domains[5].usage[1] == 2


def test_node_permissions_quota(dom0: Client, guest: Client) -> None:
    guest.write("p")
    guest.set_perms("p", "n5", "r1", "r2", "r3")
    assert guest.err(M.SET_PERMS, b"p\0n5\0r1\0r2\0r3\0r4\0") == "ENOSPC"
    dom0.set_perms("/local/domain/5/p", "n5", "r1", "r2", "r3", "r4", "r6")


def test_node_size_quota(dom0: Client, guest: Client) -> None:
    # size = 16 + 8 * perms + value + children list; quota 2048 => at most 2047.
    guest.write("v", b"x" * (2047 - 16 - 8))
    assert guest.err(M.WRITE, b"v\0" + b"x" * (2048 - 16 - 8)) == "ENOSPC"
    assert guest.err(M.WRITE, b"w\0" + b"x" * (2048 - 16 - 8)) == "ENOSPC"
    dom0.write("/local/domain/5/v", b"x" * 3000)


def test_memory_quota(dom0: Client, guest: Client) -> None:
    dom0.ok(M.SET_QUOTA, b"5\0memory\x00300\0")
    guest.write("a", b"x" * 100)
    assert guest.err(M.WRITE, b"b\0" + b"x" * 200) == "ENOMEM"
    assert guest.err(M.WATCH, b"/" + b"w" * 200 + b"\0t\0") == "ENOMEM"
    assert_consistent(dom0.store)


def test_memory_soft_quota_warns(
    dom0: Client, guest: Client, caplog: pytest.LogCaptureFixture
) -> None:
    dom0.ok(M.SET_QUOTA, b"5\0soft-memory\x00100\0")
    with caplog.at_level("WARNING", logger="pyxenstored.store"):
        guest.write("a", b"x" * 150)
    assert any("soft memory quota" in r.getMessage() for r in caplog.records)


def test_quota_for_conn(dom0: Client, guest: Client) -> None:
    store = dom0.store
    assert store.quota_for_conn(dom0.conn_id, "outstanding") is None
    assert store.quota_for_conn(guest.conn_id, "outstanding") == 20
    dom0.ok(M.SET_QUOTA, b"5\0outstanding\x000\0")
    assert store.quota_for_conn(guest.conn_id, "outstanding") is None


# --- CONTROL quota (control.c:do_control_quota) -----------------------------------------

QUOTA_TEXT = (
    "Quota settings:\n"
    "nodes            :     1000 Nodes per domain\n"
    "watches          :      128 Watches per domain\n"
    "outstanding      :       20 Outstanding requests per domain\n"
    "memory           :  2621440 Total Xenstore memory per domain\n"
    "transactions     :       10 Active transactions per domain\n"
    "transaction-nodes:     1024 Max. number of accessed nodes per transaction\n"
    "node-permissions :        5 Max. number of permissions per node\n"
    "path-max         :     2048 Max. length of a node path\n"
    "node-size        :     2048 Max. size of a node\n"
)


def test_control_quota_text(dom0: Client) -> None:
    assert dom0.ok(M.CONTROL, b"quota\0") == QUOTA_TEXT.encode() + b"\0"
    assert dom0.ok(M.CONTROL, b"quota-soft\0") == (
        b"Quota settings:\nmemory           :  2097152 Total Xenstore memory per domain\n\0"
    )


def test_control_quota_set(dom0: Client) -> None:
    assert dom0.ok(M.CONTROL, b"quota\0set\0nodes\x0077\0") == b"OK\0"
    assert dom0.ok(M.GET_QUOTA, b"nodes\0") == b"77\0"
    assert dom0.ok(M.CONTROL, b"quota-soft\0set\0memory\x00999\0") == b"OK\0"
    assert dom0.ok(M.GET_QUOTA, b"soft-memory\0") == b"999\0"
    assert dom0.err(M.CONTROL, b"quota\0set\0nodes\x000\0") == "EINVAL"
    assert dom0.err(M.CONTROL, b"quota\0set\0bogus\x005\0") == "EINVAL"
    assert dom0.err(M.CONTROL, b"quota-soft\0set\0nodes\x005\0") == "EINVAL"
    assert dom0.err(M.CONTROL, b"quota\0set\0nodes\0") == "EINVAL"
    assert dom0.err(M.CONTROL, b"quota-soft\x005\0") == "EINVAL"


def test_control_quota_domain_and_max(dom0: Client, guest: Client) -> None:
    guest.write("a")
    guest.watch("a", "t")
    text = dom0.ok(M.CONTROL, b"quota\x005\0").decode()
    lines = text.rstrip("\0").split("\n")
    assert lines[0] == "Domain 5:"
    assert lines[1] == "nodes            :        2 (max        2)"
    assert lines[2] == "watches          :        1 (max        1)"
    assert len(lines) == 11 and lines[-1] == ""
    assert dom0.err(M.CONTROL, b"quota\x00777\0") == "ENOENT"
    text = dom0.ok(M.CONTROL, b"quota\0max\0").decode()
    assert text.startswith("Max. seen accounting values:\nnodes            :        2\n")
    guest.rm("a")
    dom0.ok(M.CONTROL, b"quota\0max\0-r\0")
    text = dom0.ok(M.CONTROL, b"quota\0max\0").decode()
    assert "nodes            :        1\n" in text
    assert dom0.err(M.CONTROL, b"quota\0max\0-x\0") == "EINVAL"


# --- command-line options (core.c:main, set_quota) ---------------------------------------


def test_apply_quota_options() -> None:
    table = QuotaTable()
    apply_quota_option(table, "-E", "10")
    apply_quota_option(table, "-S", "11")
    apply_quota_option(table, "-W", "12")
    apply_quota_option(table, "-t", "13")
    apply_quota_option(table, "-A", "14")
    apply_quota_option(table, "-M", "5000")
    apply_quota_option(table, "-Q", "outstanding=15")
    apply_quota_option(table, "-q", "memory=16")
    assert [table.hard(i) for i in range(9)] == [10, 12, 15, 2621440, 13, 1024, 14, 2048, 11]
    assert table.get(3, 1) == 16
    for option, arg in [
        ("-Q", "bogus=1"),
        ("-Q", "nodes"),
        ("-q", "nodes=1"),
        ("-E", "x"),
        ("-Z", "1"),
    ]:
        with pytest.raises(ValueError):
            apply_quota_option(table, option, arg)


def test_config_quota_reaches_domains() -> None:
    table = QuotaTable()
    apply_quota_option(table, "-W", "2")
    store = Store(StoreConfig(quota=table))
    store.connect(1, 0, is_socket=True)
    store.connect(2, 5, is_socket=False)
    assert store.handle(2, M.WATCH, 0, b"/a\0t\0").reply_type == M.WATCH
    assert store.handle(2, M.WATCH, 0, b"/a\0u\0").payload == b"ENOSPC\0"
