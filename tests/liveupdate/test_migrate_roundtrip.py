"""migrate: dump -> stream bytes -> restore -> dump gives the same records.

The store is driven through its one entry point (requests as bytes), dumped,
written with the stream writer, read back, restored into a fresh store, and
dumped again.  Besides record equality, behaviour must be the same: quota
counters, commit answers of open transactions, events at commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyxenstored.migrate import (
    Preserved,
    RestoreError,
    StoreOnlySink,
    dump_state,
    restore_state,
    restore_stream,
)
from pyxenstored.store import Store, StoreConfig
from pyxenstored.store import quota as q
from pyxenstored.stream import (
    ConnectionData,
    DomainData,
    End,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    QuotaValue,
    Record,
    RingSpec,
    SocketSpec,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    read_records,
    write_stream,
)
from pyxenstored.stream.check import check_all
from pyxenstored.stream.txmarks import NODE_CHANGED, is_marks_name, parse_marks
from pyxenstored.wire import MsgType

C417 = Path(__file__).resolve().parent.parent / "data" / "c417" / "basic.state"


def req(store: Store, conn: int, t: MsgType, payload: bytes, tx: int = 0) -> bytes:
    r = store.handle(conn, t, tx, payload)
    assert r.reply_type == t, (t, payload, r.payload)
    return r.payload


def err(store: Store, conn: int, t: MsgType, payload: bytes, tx: int = 0) -> bytes:
    r = store.handle(conn, t, tx, payload)
    assert r.reply_type == MsgType.ERROR, (t, payload, r.payload)
    return r.payload


def conn_records(store: Store) -> list[ConnectionData]:
    """Connection records as the server would describe them (no pending bytes)."""
    out = []
    for conn_id, conn in store.conns.items():
        if conn.is_socket:
            out.append(ConnectionData(conn_id, 1, 0, SocketSpec(100 + conn_id)))
        else:
            out.append(ConnectionData(conn_id, 0, 1, RingSpec(conn.domid, 0x7FF4, 7), unique_id=9))
    return out


def build_store() -> Store:
    """A store with a bit of everything the stream can carry."""
    store = Store(StoreConfig(existing_domids=frozenset({5, 6})))
    store.connect(1, 0, is_socket=True)
    store.connect(2, 5, is_socket=False)  # an unprivileged guest on a ring
    s = store
    req(s, 1, MsgType.SET_FEATURE, b"6\x002\0")  # before introduction: allowed
    req(s, 1, MsgType.WRITE, b"/local/domain/5/name\0guest5")
    req(s, 1, MsgType.SET_PERMS, b"/local/domain/5\0n5\0r0\0")
    req(s, 1, MsgType.SET_PERMS, b"/local/domain/5/name\0n5\0r0\0w6\0")
    req(s, 1, MsgType.WRITE, b"/tool/bin\0\x00\x01\xfe\xffbin")
    for i in range(20):
        req(s, 1, MsgType.WRITE, b"/tree/%d/leaf\0v%d" % (i % 4, i))
    req(s, 2, MsgType.WRITE, b"data/x\0guest data")  # relative, owned by dom5
    req(s, 1, MsgType.SET_QUOTA, b"5\0nodes\x0050\0")
    req(s, 1, MsgType.CONTROL, b"quota\0set\0watches\x0077\0")
    # Watches: absolute, relative, depth, special, in registration order.
    req(s, 1, MsgType.WATCH, b"/tree\0t-tree\0")
    req(s, 1, MsgType.WATCH, b"/tree\0t-depth\x002\0")
    req(s, 1, MsgType.WATCH, b"@releaseDomain\0rel\0")
    req(s, 2, MsgType.WATCH, b"data\0rel-data\0")
    req(s, 2, MsgType.WATCH, b"/local/domain/5\0abs\x000\0")
    return store


def open_transactions(store: Store) -> dict[str, int]:
    """Transactions in several states; returns name -> tx id (all on connection 1)."""
    s = store
    tx = {}
    # clean: read and write, nothing changed outside
    t = int(req(s, 1, MsgType.TRANSACTION_START, b"\0")[:-1])
    req(s, 1, MsgType.READ, b"/tree/0/leaf\0", t)
    req(s, 1, MsgType.WRITE, b"/tree/1/leaf\0in-tx", t)
    req(s, 1, MsgType.WRITE, b"/tree/new/deep/leaf\0created", t)
    req(s, 1, MsgType.RM, b"/tree/2\0", t)
    err(s, 1, MsgType.READ, b"/absent\0", t)  # read while absent
    tx["clean"] = t
    # doomed: a node it read was changed outside afterwards
    t = int(req(s, 1, MsgType.TRANSACTION_START, b"\0")[:-1])
    req(s, 1, MsgType.READ, b"/tree/3/leaf\0", t)
    req(s, 1, MsgType.WRITE, b"/tool/bin\0from-doomed", t)
    tx["doomed"] = t
    req(s, 1, MsgType.WRITE, b"/tree/3/leaf\0outside")
    # guest transaction on the ring connection
    t = int(req(s, 2, MsgType.TRANSACTION_START, b"\0")[:-1])
    req(s, 2, MsgType.WRITE, b"data/y\0tx-y", t)
    tx["guest"] = t
    return tx


def roundtrip(store: Store, **kw: object) -> tuple[list[Record], list[Record], Store]:
    records = list(dump_state(store, conn_records(store), global_data=GlobalData(3, -1)))
    data = write_stream(records)
    _, back = read_records(data)
    assert back == records
    fresh = Store(StoreConfig(existing_domids=frozenset({5, 6})))
    sink = StoreOnlySink(fresh)
    restore_state(back, fresh, sink)
    again = list(dump_state(fresh, sink.records, global_data=GlobalData(3, -1)))
    return records, again, fresh


def test_roundtrip_without_transactions_is_identical() -> None:
    store = build_store()
    records, again, fresh = roundtrip(store)
    assert again == records
    assert fresh.check() == []
    # Usage counters rebuilt: the same as accounted live.
    for domid, dom in store.domains.items():
        assert fresh.domains[domid].usage[: q.TRANSACTIONS + 1] == dom.usage[: q.TRANSACTIONS + 1]
    # Depth, relative paths, special watch kept.
    assert WatchDataExtended(1, "/tree", "t-depth", 2) in records
    assert WatchData(2, "data", "rel-data") in records
    assert WatchDataExtended(2, "/local/domain/5", "abs", 0) in records
    assert WatchData(1, "@releaseDomain", "rel") in records


def test_restored_store_behaves_the_same() -> None:
    store = build_store()
    _, _, fresh = roundtrip(store)
    for s in (store, fresh):
        assert req(s, 1, MsgType.GET_QUOTA, b"5\0nodes\0") == b"50\0"
        assert req(s, 1, MsgType.GET_QUOTA, b"watches\0") == b"77\0"
        assert req(s, 1, MsgType.GET_FEATURE, b"6\0") == b"2\0"
        assert req(s, 2, MsgType.READ, b"data/x\0") == b"guest data"
        assert req(s, 1, MsgType.DIRECTORY, b"/tree\0") == b"0\x001\x002\x003\0"
        # The relative watch reports relative paths; the depth watch ignores deep nodes.
        r = s.handle(1, MsgType.WRITE, 0, b"/local/domain/5/data/x\0new")
        assert [(e.conn_id, e.path, e.token) for e in r.events] == [(2, b"data/x", b"rel-data")]
        r = s.handle(1, MsgType.WRITE, 0, b"/tree/0/a/b/c\0deep")
        assert sorted(e.token for e in r.events) == [b"t-tree"]
        r = s.handle(1, MsgType.WRITE, 0, b"/tree/0/a\0shallow")
        assert sorted(e.token for e in r.events) == [b"t-depth", b"t-tree"]
    assert store.check() == fresh.check() == []


def test_unprivileged_quota_counts_survive() -> None:
    """A guest near its nodes quota is refused at the same point before and after."""
    store = build_store()
    req(store, 1, MsgType.SET_QUOTA, b"5\0nodes\x005\0")
    _, _, fresh = roundtrip(store)
    for s in (store, fresh):
        answers = []
        for i in range(4):
            r = s.handle(2, MsgType.WRITE, 0, b"data/n%d\0x" % i)
            answers.append(r.payload)
        assert answers.count(b"ENOSPC\0") >= 1
    assert [fresh.handle(2, MsgType.WRITE, 0, b"data/m%d\0x" % i).payload for i in range(3)] == [
        store.handle(2, MsgType.WRITE, 0, b"data/m%d\0x" % i).payload for i in range(3)
    ]


def test_open_transactions_roundtrip_and_commit_alike() -> None:
    store = build_store()
    tx = open_transactions(store)
    records, again, fresh = roundtrip(store)
    assert again == records
    assert fresh.check() == []
    pending = [r for r in records if isinstance(r, NodeData) and r.conn_id]
    assert all(r.access & ~3 == 0 for r in pending)  # only the spec's access bits
    # What goes beyond the spec rides in DOMAIN_DATA quota entries of the
    # connection's domain (stream.txmarks), one per transaction.
    marks = {
        (m.conn_id, m.tx_id): m
        for r in records
        if isinstance(r, DomainData)
        for v in r.quota
        if is_marks_name(v.name)
        for m in [parse_marks(v)]
    }
    assert set(marks) == {(1, tx["clean"]), (1, tx["doomed"]), (2, tx["guest"])}
    assert any(n & NODE_CHANGED for n in marks[(1, tx["doomed"])].nodes)  # the doomed one
    assert not any(n & NODE_CHANGED for n in marks[(1, tx["clean"])].nodes)
    diags, _ = check_all(write_stream(records))
    # (domain 6 has a feature but no connection: a C reader could not place it)
    assert [d.rule for d in diags] == ["domain-unknown-to-c"]
    assert any(not r.perms and r.access & 3 == 0 for r in pending)  # a deleted node
    assert any(not r.perms and r.access & 3 == 1 for r in pending)  # read while absent
    assert TransactionData(1, tx["clean"]) in records
    # Commit in both stores: same answers, same tree, same events.
    for name, conn in (("doomed", 1), ("clean", 1), ("guest", 2)):
        a = store.handle(conn, MsgType.TRANSACTION_END, tx[name], b"T\0")
        b = fresh.handle(conn, MsgType.TRANSACTION_END, tx[name], b"T\0")
        assert (a.reply_type, a.payload) == (b.reply_type, b.payload), name
        assert sorted((e.conn_id, e.path, e.token) for e in a.events) == sorted(
            (e.conn_id, e.path, e.token) for e in b.events
        ), name
    assert store.handle(1, MsgType.TRANSACTION_END, tx["doomed"], b"T\0").payload == b"ENOENT\0"
    after_a = list(dump_state(store, conn_records(store)))
    after_b = list(dump_state(fresh, conn_records(fresh)))
    assert after_a == after_b
    assert fresh.check() == []


def test_transaction_made_doomed_after_restore_fails_alike() -> None:
    store = build_store()
    t = int(req(store, 1, MsgType.TRANSACTION_START, b"\0")[:-1])
    req(store, 1, MsgType.READ, b"/tree/0/leaf\0", t)
    _, _, fresh = roundtrip(store)
    for s in (store, fresh):
        req(s, 1, MsgType.WRITE, b"/tree/0/leaf\0changed")
        assert s.handle(1, MsgType.TRANSACTION_END, t, b"T\0").payload == b"EAGAIN\0"
    # And a new transaction id does not collide with the restored one.
    assert int(req(fresh, 1, MsgType.TRANSACTION_START, b"\0")[:-1]) != t


def test_unknown_quota_names_and_records_are_preserved() -> None:
    store = Store()
    store.connect(1, 0, is_socket=True)
    records: list[Record] = [
        GlobalQuotaData(
            (QuotaValue("nodes", 42), QuotaValue("future-quota", 7)), (QuotaValue("glob-x", 3),)
        ),
        ConnectionData(1, 1, 0, SocketSpec(4)),
        NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/", b""),
        NodeData(0, 0, 0, (NodePerm("n", 0, 0), NodePerm("r", 1, 3)), "/a", b"x"),
        DomainData(0, 0, (QuotaValue("nodes", 9), QuotaValue("dom-future", 11))),
        UnknownRecord(77, b"12345678"),
        End(),
    ]
    fresh = Store()
    sink = StoreOnlySink(fresh)
    restored = restore_state(records, fresh, sink)
    assert restored.preserved == Preserved(
        (QuotaValue("future-quota", 7),),
        (QuotaValue("glob-x", 3),),
        {0: (QuotaValue("dom-future", 11),)},
        [UnknownRecord(77, b"12345678")],
    )
    assert fresh.config.quota.hard(q.NODES) == 42
    assert fresh.domains[0].quota.hard(q.NODES) == 9
    again = list(dump_state(fresh, sink.records, preserved=restored.preserved))
    quota = next(r for r in again if isinstance(r, GlobalQuotaData))
    assert QuotaValue("future-quota", 7) in quota.domain_quota
    assert quota.global_quota == (QuotaValue("glob-x", 3),)
    dom0 = next(r for r in again if isinstance(r, DomainData) and r.domid == 0)
    assert dom0.quota[-1] == QuotaValue("dom-future", 11)
    assert UnknownRecord(77, b"12345678") in again
    # the stale flag of the permission entry survives
    node = next(r for r in again if isinstance(r, NodeData) and r.path == "/a")
    assert node.perms[1] == NodePerm("r", 1, 3)


def test_restore_c417_dump() -> None:
    """A real C 4.17 live-update dump restores cleanly and says what xenstore-ls said."""
    fresh = Store()
    sink = StoreOnlySink(fresh)
    restored = restore_stream(str(C417), fresh, sink)
    assert restored.version == 1
    assert restored.connections == 8
    assert fresh.check() == []
    assert req(fresh, 2, MsgType.READ, b"/tool/name\0") == b"c417 fixture"
    assert req(fresh, 2, MsgType.READ, b"/tool/binary\0") == b"\0\x01\xfe\xff bin\0ary"
    perms = req(fresh, 2, MsgType.GET_PERMS, b"/local/domain/1/control/shutdown\0")
    assert perms == b"n1\0r0\0"
    # Watches restored on their connections, relative ones relative.
    # Dumped again, the C tree and watches come out unchanged.
    _, original = read_records(str(C417))
    again = list(dump_state(fresh, sink.records))
    r = fresh.handle(2, MsgType.WRITE, 0, b"/local/domain/1/device/new\0x")
    assert (3, b"device/new", b"dev") in [(e.conn_id, e.path, e.token) for e in r.events]
    key = lambda rs: sorted(  # noqa: E731
        (r.path, r.value, r.perms) for r in rs if isinstance(r, NodeData)
    )
    assert key(again) == key(original)
    watches = lambda rs: [r for r in rs if isinstance(r, (WatchData, WatchDataExtended))]  # noqa: E731
    assert watches(again) == watches(original)


def test_restore_errors_name_record_and_offset() -> None:
    _, records = read_records(str(C417))
    data = write_stream(records[:-1], version=1)  # no END
    store = Store()
    with pytest.raises(RestoreError, match="END"):
        restore_stream(data, store, StoreOnlySink(store))
    # A node whose parent is missing.
    bad = [r for r in records if not (isinstance(r, NodeData) and r.path == "/tool")]
    data = write_stream(bad, version=1)
    store = Store()
    with pytest.raises(RestoreError) as info:
        restore_stream(data, store, StoreOnlySink(store))
    assert "parent" in str(info.value) and "NODE_DATA" in str(info.value)
    assert info.value.offset is not None and info.value.index is not None
    assert f"offset {info.value.offset:#x}" in str(info.value)
    # Garbage in the middle: the reader's own error, with its offset.
    raw = bytearray(C417.read_bytes())
    raw[0x24:0x28] = b"\xff\xff\xff\x7f"  # a huge len in the first CONNECTION_DATA
    store = Store()
    with pytest.raises(RestoreError) as info:
        restore_stream(bytes(raw), store, StoreOnlySink(store))
    assert info.value.offset is not None
    # A watch of an unknown connection.
    rs: list[Record] = [
        NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/", b""),
        WatchData(9, "/", "t"),
        End(),
    ]
    store = Store()
    with pytest.raises(RestoreError, match="unknown connection 9"):
        restore_state(rs, store, StoreOnlySink(store))


def test_restore_c_head_layout() -> None:
    """A version-2 stream as C HEAD writes it: quota first, a depth watch in its writer's
    (buggy) layout, unique-id on a ring connection, DOMAIN_DATA with features."""
    import struct

    from pyxenstored.stream import encode_record
    from pyxenstored.stream.writer import encode_preamble

    head_defaults = (
        ("nodes", 1000), ("watches", 128), ("outstanding", 20), ("memory", 2621440),
        ("soft-memory", 2097152), ("transactions", 10), ("transaction-nodes", 1024),
        ("node-permissions", 5), ("path-max", 2048), ("node-size", 2048),
    )  # fmt: skip
    quota = GlobalQuotaData(
        tuple(QuotaValue(n, 7 if n == "watches" else v) for n, v in head_defaults)
    )
    parts = [
        encode_preamble(2, False),
        encode_record(GlobalData(-1, -1)),
        encode_record(quota),
        encode_record(ConnectionData(1, 1, 0, SocketSpec(4))),
        # WATCH_DATA_EXTENDED as C HEAD's watch.c:dump_state_watches emits it (no depth,
        # len overstated by 8): path "/a", token "t", conn 1.
        struct.pack("<II", 8, 24) + bytes.fromhex("0100000003000200 2f61007400000000"),
        encode_record(ConnectionData(2, 0, 1, RingSpec(3, 0x7FF4, 9), unique_id=0x1122)),
    ]
    for path in ("/", "/a", "@releaseDomain", "@introduceDomain"):
        parts.append(encode_record(NodeData(0, 0, 0, (NodePerm("n", 0, 0),), path, b"")))
    parts.append(encode_record(NodeData(0, 0, 0, (NodePerm("b", 0, 3),), "/a/guest", b"g")))
    parts.append(encode_record(DomainData(0, 14, quota.domain_quota)))
    parts.append(encode_record(DomainData(3, 2, (QuotaValue("nodes", 5),))))
    parts.append(encode_record(End()))
    store = Store()
    sink = StoreOnlySink(store)
    restored = restore_stream(b"".join(parts), store, sink)
    assert restored.version == 2 and restored.connections == 2
    assert store.check() == []
    assert store.config.quota.hard(q.WATCHES) == 7
    assert store.domains[3].features == 2 and store.domains[3].quota.hard(q.NODES) == 5
    assert store.domains[3].usage[q.NODES] == 1
    # The watch is there, depth unknown (unlimited), and fires.
    r = store.handle(1, MsgType.WRITE, 0, b"/a/x/y\0v")
    assert [(e.conn_id, e.path, e.token) for e in r.events] == [(1, b"/a/x/y", b"t")]
    # The ring connection keeps its record (unique-id included) for the next dump.
    again = list(dump_state(store, sink.records))
    assert ConnectionData(2, 0, 1, RingSpec(3, 0x7FF4, 9), unique_id=0x1122) in again


def test_permissions_of_domains_without_connection_survive() -> None:
    """A domain known only as a node owner keeps its read right on others' nodes."""
    store = Store(StoreConfig(existing_domids=frozenset({5})))
    store.connect(1, 0, is_socket=True)
    req(store, 1, MsgType.WRITE, b"/local/domain/5/x\0v")
    req(store, 1, MsgType.SET_PERMS, b"/local/domain/5\0n5\0")
    req(store, 1, MsgType.WRITE, b"/tool/shared\0s")
    req(store, 1, MsgType.SET_PERMS, b"/tool/shared\0n0\0r5\0")
    records = list(dump_state(store, conn_records(store)))
    # Without its DOMAIN_DATA, domain 5 is first met as an owner while restoring.
    records = [r for r in records if not (isinstance(r, DomainData) and r.domid == 5)]
    fresh = Store(StoreConfig(existing_domids=frozenset({5})))
    restore_state(records, fresh, StoreOnlySink(fresh))
    for s in (store, fresh):
        s.connect(50, 5, is_socket=False)
        assert s.handle(50, MsgType.READ, 0, b"/tool/shared\0").payload == b"s"


def test_stale_entries_are_dumped_stale() -> None:
    """An entry for a domain younger than the node is ignored; the dump says so."""
    store = Store(StoreConfig(existing_domids=frozenset({5})))
    store.connect(1, 0, is_socket=True)
    req(store, 1, MsgType.WRITE, b"/tool/shared\0s")
    req(store, 1, MsgType.SET_PERMS, b"/tool/shared\0n0\0r5\0")
    # Domain 5's record goes and comes back (a new domain with the same id),
    # after a later write: a record made right after a node's write is as
    # old as the node (C's chk_domain_generation), one made later is younger.
    dom5 = store.domains.pop(5)
    req(store, 1, MsgType.WRITE, b"/tool/later\0")
    req(store, 1, MsgType.GET_FEATURE, b"5\0")
    assert store.domains[5] is not dom5
    records = list(dump_state(store, conn_records(store)))
    node = next(r for r in records if isinstance(r, NodeData) and r.path == "/tool/shared")
    assert node.perms[1] == NodePerm("r", 1, 5)
    fresh = Store(StoreConfig(existing_domids=frozenset({5})))
    restore_state(records, fresh, StoreOnlySink(fresh))
    for s in (store, fresh):
        s.connect(50, 5, is_socket=False)
        assert s.handle(50, MsgType.READ, 0, b"/tool/shared\0").payload == b"EACCES\0"


def test_failed_transaction_still_fails() -> None:
    """A transaction over its transaction-nodes quota commits with ENOMEM, before and after."""
    store = build_store()
    req(store, 1, MsgType.SET_QUOTA, b"5\0transaction-nodes\x003\0")
    t = int(req(store, 2, MsgType.TRANSACTION_START, b"\0")[:-1])
    req(store, 2, MsgType.READ, b"data/x\0", t)
    assert err(store, 2, MsgType.WRITE, b"data/a/b/c\0v", t) == b"ENOSPC\0"
    records, again, fresh = roundtrip(store)
    assert again == records
    for s in (store, fresh):
        assert s.handle(2, MsgType.TRANSACTION_END, t, b"T\0").payload == b"ENOMEM\0"
