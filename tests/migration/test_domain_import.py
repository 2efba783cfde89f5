"""extract_domain / save_domain / import_domain on sans-I/O stores.

A guest (domain 5 on side A) with nodes, permissions naming it, watches
(relative, absolute with a depth, special), an open transaction, its own
quota and features moves to domain 9 on side B.
"""

from __future__ import annotations

import dataclasses

import pytest
from tests.migration.conftest import DOM0, Side

from pyxenstored.migrate.domain import (
    DomainMigrationError,
    extract_domain,
    import_domain,
    remap_events,
    save_domain,
)
from pyxenstored.migrate.dump import dump_state
from pyxenstored.store import quota as q
from pyxenstored.store.perms import PERM_NONE, PERM_READ, PERM_RW
from pyxenstored.stream.reader import StreamReader
from pyxenstored.stream.records import (
    CONN_TYPE_RING,
    ConnectionData,
    DomainData,
    End,
    NodeData,
    QuotaValue,
    Record,
    RingSpec,
    TransactionData,
    WatchData,
    WatchDataExtended,
)
from pyxenstored.stream.writer import write_stream
from pyxenstored.wire import DOMID_INVALID, HEADER, MsgType

W = MsgType


def ring_record(side: Side, domid: int, out: bytes = b"", inp: bytes = b"") -> ConnectionData:
    return ConnectionData(
        side.guest(domid), CONN_TYPE_RING, 0, RingSpec(domid, DOMID_INVALID, 7), inp, out
    )


def build_source() -> tuple[Side, int]:
    """Side A: guest 5 with state, and a bystander domain 6; returns (side, tx id)."""
    a = Side((5, 6))
    a.ok(DOM0, W.MKDIR, "/local/domain/5")
    a.ok(DOM0, W.SET_PERMS, "/local/domain/5", "n5")
    a.ok(DOM0, W.SET_FEATURE, "5", "4")  # before INTRODUCE: watch depth only
    a.ok(DOM0, W.SET_QUOTA, "5", "nodes", "50")
    a.ok(DOM0, W.SET_QUOTA, "5", "watches", "7")
    g = a.introduce(5, 2, home=False)
    a.introduce(6, 3)
    a.ok(DOM0, W.WRITE, "/local/domain/6/other", "x")
    a.ok(DOM0, W.WRITE, "/local/domain/5/name", "guest")
    a.ok(DOM0, W.SET_PERMS, "/local/domain/5/name", "n0", "r5")
    a.ok(g, W.WRITE, "data/a", "1")
    a.ok(g, W.SET_PERMS, "data/a", "n5", "r6")
    a.ok(g, W.WRITE, "device/vif/0/state", "4")
    a.ok(g, W.WATCH, "data", "rel")
    a.ok(g, W.WATCH, "/local/domain/5/device", "abs", "1")
    a.ok(g, W.WATCH, "@releaseDomain", "rd")
    tx = int(a.ok(g, W.TRANSACTION_START, "").rstrip(b"\0"))
    a.ok(g, W.WRITE, "data/b", "2", tx=tx)
    assert a.ok(g, W.READ, "/local/domain/5/name", tx=tx) == b"guest"
    return a, tx


def build_target() -> Side:
    """Side B: domain 9 introduced with an empty home, a bystander domain 7 with a node."""
    b = Side((7, 8, 9))
    b.introduce(7, 4)
    b.ok(DOM0, W.WRITE, "/local/domain/7/mine", "seven")
    b.introduce(9, 5)
    return b


def test_move_5_to_9_remaps_paths_perms_watches() -> None:
    a, tx = build_source()
    usage_a = a.usage_lines(5)[1:]
    before_a = a.snapshot()
    records = save_domain(a.store, 5, ring_record(a, 5))
    assert a.snapshot() == before_a, "saving must not change the source"

    b = build_target()
    seven_before = dict(b.store.nodes)
    done = import_domain(b.store, records, 9)
    assert (done.old_domid, done.new_domid, done.watches, done.transactions) == (5, 9, 3, 1)
    s = b.store
    assert s.check() == []
    assert b.usage_lines(9)[1:] == usage_a, "usage counters are what they were on A"
    assert a.store.check() == []
    # Paths and permission entries move to 9; other entries stay.
    assert s.nodes["/local/domain/9/data/a"].value == b"1"
    assert s.nodes["/local/domain/9/data/a"].perms == ((9, PERM_NONE), (6, PERM_READ))
    assert s.nodes["/local/domain/9/name"].perms == ((0, PERM_NONE), (9, PERM_READ))
    assert s.nodes["/local/domain/9"].perms == ((9, PERM_NONE),)
    assert s.nodes["/local/domain/9/device/vif/0/state"].value == b"4"
    assert not any("/local/domain/5" in p or "/local/domain/6" in p for p in s.nodes)
    for path, node in seven_before.items():
        if path.startswith("/local/domain/7"):
            assert s.nodes[path] is node
    # Watches: relative stays relative, absolute moves, special unchanged.
    g = b.guest(9)
    watches = {(w.path, w.token): w for w in s.conns[g].watches.values()}
    assert watches[("/local/domain/9/data", b"rel")].prefix_len > 0
    assert watches[("/local/domain/9/device", b"abs")].depth == 1
    assert ("@releaseDomain", b"rd") in watches
    # The transaction goes on under its id and commits with the new paths.
    assert b.ok(g, W.READ, "data/b", tx=tx) == b"2"
    r = b.req(g, W.TRANSACTION_END, "T", tx=tx)
    assert r.reply_type == W.TRANSACTION_END, r.payload
    assert [(e.path, e.token) for e in r.events] == [(b"data/b", b"rel")]
    assert s.nodes["/local/domain/9/data/b"].perms[0][0] == 9
    r = b.req(DOM0, W.WRITE, "/local/domain/9/data/x", "v")
    assert [(e.conn_id, e.path, e.token) for e in r.events] == [(g, b"data/x", b"rel")]
    r = b.req(DOM0, W.WRITE, "/local/domain/9/device/new", "v")
    assert [(e.path, e.token) for e in r.events] == [(b"/local/domain/9/device/new", b"abs")]
    r = b.req(DOM0, W.WRITE, "/local/domain/9/device/new/1/deep", "v")
    assert not r.events, "depth 1 watch must not see two levels down"
    # Quota and features follow; usage is what it was on A.
    assert b.ok(DOM0, W.GET_QUOTA, "9", "nodes") == b"50\0"
    assert b.ok(DOM0, W.GET_QUOTA, "9", "watches") == b"7\0"
    assert b.ok(DOM0, W.GET_FEATURE, "9") == b"4\0"
    b.ok(DOM0, W.RM, "/local/domain/9/data/x")
    b.ok(DOM0, W.RM, "/local/domain/9/device/new")
    b.ok(g, W.RM, "data/b")
    assert s.check() == []
    assert s.check() == []


def test_transaction_conflict_on_source_stays_a_conflict() -> None:
    a, tx = build_source()
    a.ok(DOM0, W.WRITE, "/local/domain/5/name", "changed")  # the tx read it: EAGAIN due
    b = build_target()
    import_domain(b.store, save_domain(a.store, 5, ring_record(a, 5)), 9)
    assert b.err(b.guest(9), W.TRANSACTION_END, "T", tx=tx) == "EAGAIN"
    assert b.store.check() == []


def test_read_outside_home_that_differs_on_target_fails_the_commit() -> None:
    a, _ = build_source()
    g = a.guest(5)
    a.ok(DOM0, W.WRITE, "/shared", "a")
    a.ok(DOM0, W.SET_PERMS, "/shared", "n0", "r5")
    tx2 = int(a.ok(g, W.TRANSACTION_START, "").rstrip(b"\0"))
    a.ok(g, W.READ, "/shared", tx=tx2)
    a.ok(g, W.WRITE, "data/c", "3", tx=tx2)
    records = save_domain(a.store, 5, ring_record(a, 5))
    b = build_target()
    b.ok(DOM0, W.WRITE, "/shared", "b")
    b.ok(DOM0, W.SET_PERMS, "/shared", "n0", "r9")
    import_domain(b.store, records, 9)
    assert b.err(b.guest(9), W.TRANSACTION_END, "T", tx=tx2) == "EAGAIN"
    b2 = build_target()
    b2.ok(DOM0, W.WRITE, "/shared", "a")
    b2.ok(DOM0, W.SET_PERMS, "/shared", "n0", "r9")
    import_domain(b2.store, records, 9)
    b2.ok(b2.guest(9), W.TRANSACTION_END, "T", tx=tx2)
    assert b2.store.nodes["/local/domain/9/data/c"].value == b"3"


def test_same_domid_and_no_home_on_target() -> None:
    a, _ = build_source()
    records = save_domain(a.store, 5, ring_record(a, 5))
    b = Side((5,))
    b.introduce(5, 2, home=False)
    with pytest.raises(DomainMigrationError, match="'/local/domain' does not exist"):
        import_domain(b.store, records, 5)
    b.ok(DOM0, W.MKDIR, "/local/domain")
    import_domain(b.store, records, 5)
    assert b.store.check() == []
    assert b.usage_lines(5) == a.usage_lines(5)


def test_extract_from_a_full_dump_equals_save() -> None:
    a, _ = build_source()
    cd = ring_record(a, 5)
    other = ConnectionData(a.guest(6), CONN_TYPE_RING, 0, RingSpec(6, DOMID_INVALID, 8))
    full = list(dump_state(a.store, [cd, other]))
    cut = extract_domain(full, 5)
    assert cut == save_domain(a.store, 5, cd)
    assert isinstance(cut[0], ConnectionData) and isinstance(cut[-1], End)
    assert {type(r) for r in cut} <= {
        ConnectionData,
        WatchData,
        WatchDataExtended,
        NodeData,
        TransactionData,
        DomainData,
        End,
    }
    committed = [r.path for r in cut if isinstance(r, NodeData) and not r.conn_id]
    assert committed[0] == "/local/domain/5"
    assert all(p.startswith("/local/domain/5") for p in committed)
    assert [r.domid for r in cut if isinstance(r, DomainData)] == [5]
    # The bytes round-trip through the stream library.
    data = write_stream(cut, version=2)
    with StreamReader(data) as reader:
        assert list(reader) == cut


def _msg(t: int, payload: bytes, req: int = 0) -> bytes:
    return HEADER.pack(t, req, 0, len(payload)) + payload


def test_pending_data_must_be_whole_messages() -> None:
    a, _ = build_source()
    whole = _msg(W.READ, b"data/a\0", 3)
    torn = whole[:-2]
    for cd in (ring_record(a, 5, inp=torn), ring_record(a, 5, out=whole + torn[:10])):
        with pytest.raises(DomainMigrationError, match="partial"):
            save_domain(a.store, 5, cd)
    mid = dataclasses.replace(ring_record(a, 5, out=whole), out_resp_len=4)
    with pytest.raises(DomainMigrationError, match="partial reply"):
        save_domain(a.store, 5, mid)
    assert save_domain(a.store, 5, ring_record(a, 5, inp=whole))[0].in_data == whole


def test_queued_events_move_with_the_domain() -> None:
    out = (
        _msg(W.WATCH_EVENT, b"/local/domain/5/device/x\0abs\0")
        + _msg(W.WATCH_EVENT, b"data/x\0rel\0")
        + _msg(W.READ, b"/local/domain/5\0", 4)
    )
    moved = remap_events(out, 5, 9)
    assert moved == (
        _msg(W.WATCH_EVENT, b"/local/domain/9/device/x\0abs\0")
        + _msg(W.WATCH_EVENT, b"data/x\0rel\0")
        + _msg(W.READ, b"/local/domain/5\0", 4)
    )
    a, _ = build_source()
    b = build_target()
    done = import_domain(b.store, save_domain(a.store, 5, ring_record(a, 5, out=out)), 9)
    assert done.out_data == moved
    # The server charges the queued bytes when it queues them; the store is consistent.
    assert b.store.check() == []


def _refused(b: Side, records: list[Record], domid: int, match: str) -> None:
    before = b.snapshot()
    with pytest.raises(DomainMigrationError, match=match):
        import_domain(b.store, records, domid)
    assert b.snapshot() == before
    assert b.store.check() == []


def test_refusals_leave_the_target_unchanged() -> None:
    a, _ = build_source()
    before_a = a.snapshot()
    records = save_domain(a.store, 5, ring_record(a, 5))
    b = build_target()
    _refused(b, records, 8, "not introduced")
    _refused(b, records, 0, "privileged")
    g = b.guest(9)
    b.ok(g, W.WATCH, "x", "t")
    _refused(b, records, 9, "already has state")
    b.ok(g, W.UNWATCH, "x", "t")
    b.ok(DOM0, W.WRITE, "/local/domain/9/data/a", "there")
    _refused(b, records, 9, "with children")
    b.ok(DOM0, W.RM, "/local/domain/9/data")
    # The stream's own quota is what the domain must fit in on the target.
    small = [
        dataclasses.replace(r, quota=(QuotaValue("nodes", 3),)) if isinstance(r, DomainData) else r
        for r in records
    ]
    _refused(b, small, 9, "nodes quota")
    few = [
        dataclasses.replace(r, quota=(QuotaValue("watches", 2),))
        if isinstance(r, DomainData)
        else r
        for r in records
    ]
    _refused(b, few, 9, "watches quota")
    # Nodes the domain owns on the target outside its home count too.
    b.ok(DOM0, W.WRITE, "/own/a", "")
    for i in range(44):
        b.ok(DOM0, W.WRITE, f"/own/a/{i}", "")
    for i in range(44):
        b.ok(DOM0, W.SET_PERMS, f"/own/a/{i}", "n9")
    _refused(b, records, 9, "nodes quota")
    b.ok(DOM0, W.RM, "/own")
    import_domain(b.store, records, 9)  # and now it fits
    assert a.snapshot() == before_a


def test_transaction_writing_outside_the_home_is_refused() -> None:
    a, _ = build_source()
    g = a.guest(5)
    a.ok(DOM0, W.MKDIR, "/shared")
    a.ok(DOM0, W.SET_PERMS, "/shared", "n0", "b5")
    tx = int(a.ok(g, W.TRANSACTION_START, "").rstrip(b"\0"))
    a.ok(g, W.WRITE, "/shared/x", "1", tx=tx)
    records = save_domain(a.store, 5, ring_record(a, 5))
    b = build_target()
    b.ok(DOM0, W.MKDIR, "/shared")
    _refused(b, records, 9, "outside the domain's home")


def test_malformed_streams_are_refused() -> None:
    a, _ = build_source()
    records = save_domain(a.store, 5, ring_record(a, 5))
    b = build_target()
    _refused(b, records[:-1], 9, "without an END")
    _refused(b, records[1:], 9, "before the connection")
    stray = NodeData(
        0, 0, 0, records[5].perms if isinstance(records[5], NodeData) else (), "/x", b""
    )
    nodes_at = next(i for i, r in enumerate(records) if isinstance(r, NodeData))
    _refused(b, records[: nodes_at + 1] + [stray] + records[nodes_at + 1 :], 9, "outside the home")
    _refused(b, [records[0], records[0], End()], 9, "more than one connection")
    with pytest.raises(DomainMigrationError, match="no ring connection"):
        extract_domain(records, 6)


def test_save_refuses_a_domain_that_is_not_introduced() -> None:
    a, _ = build_source()
    with pytest.raises(DomainMigrationError, match="not introduced"):
        save_domain(a.store, 8, ring_record(a, 5))
    with pytest.raises(DomainMigrationError, match="privileged"):
        save_domain(a.store, 0, ring_record(a, 5))


def test_perms_bits_survive() -> None:
    a, _ = build_source()
    g = a.guest(5)
    a.ok(g, W.WRITE, "rw", "")
    a.ok(g, W.SET_PERMS, "rw", "r5", "b0")
    b = build_target()
    import_domain(b.store, save_domain(a.store, 5, ring_record(a, 5)), 9)
    assert b.store.nodes["/local/domain/9/rw"].perms == ((9, PERM_READ), (0, PERM_RW))


def test_transaction_copies_count_in_the_imported_memory_quota() -> None:
    """The import's memory pre-check prices the transactions' copies exactly.

    Domain 5 holds four 2000-byte values written in an open transaction:
    with a memory quota one byte short of what the import makes it hold
    (its nodes, watches and those copies) the import is refused and changes
    nothing; one byte more and it goes through with that usage.  Before
    the copies were priced, a domain whose transactions held most of its
    memory was imported past its quota.
    """
    a, _ = build_source()
    g = a.guest(5)
    tx = int(a.ok(g, W.TRANSACTION_START, "").rstrip(b"\0"))
    for i in range(4):
        a.ok(g, W.WRITE, f"data/big{i}", "v" * 2000, tx=tx)
    records = save_domain(a.store, 5, ring_record(a, 5))

    roomy = build_target()
    import_domain(roomy.store, records, 9)
    held = roomy.store.domains[9].usage[q.MEMORY]
    copies = sum(t.memory for t in roomy.store.conns[roomy.guest(9)].transactions.values())
    assert copies > 4 * 2000
    assert held - copies < copies  # without the copies it would fit in half the room

    def with_memory(limit: int) -> list[Record]:
        return [
            dataclasses.replace(r, quota=(QuotaValue("memory", limit),))
            if isinstance(r, DomainData)
            else r
            for r in records
        ]

    tight = build_target()
    _refused(tight, with_memory(held), 9, "memory quota")
    import_domain(tight.store, with_memory(held + 1), 9)
    assert tight.store.domains[9].usage[q.MEMORY] == held
    assert tight.store.check() == []
