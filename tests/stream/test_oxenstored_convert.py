"""oxenstored dump <-> migration-stream records, and oxenstored's quota settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxenstored.stream import read_records, write_stream
from pyxenstored.stream.check import check_stream
from pyxenstored.stream.oxenstored import (
    DomainRing,
    OxDump,
    OxenstoredConversionError,
    OxenstoredExtras,
    OxenstoredQuota,
    check_dump,
    dump_to_records,
    format_config,
    format_dump,
    parse_config,
    parse_dump,
    quota_from_c,
    quota_to_c,
    records_to_dump,
)
from pyxenstored.stream.oxenstored_quota import OX_MAXWATCHEVENTS
from pyxenstored.stream.records import (
    ConnectionData,
    DomainData,
    End,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    OpaqueSpec,
    QuotaValue,
    Record,
    RingSpec,
    SocketSpec,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
)
from pyxenstored.wire import DOMID_INVALID

DATA = Path(__file__).resolve().parent.parent / "data"
OX = DATA / "oxenstored"
N0 = (NodePerm("n", 0, 0),)


def h(text: str) -> str:
    return text.encode().hex()


def dump(*lines: str) -> OxDump:
    return parse_dump(("$xenstored-dump-format\n" + "".join(f"{x}\n" for x in lines)).encode())


# --- oxenstored -> records -----------------------------------------------------------


def test_real_dump_to_records() -> None:
    out = dump_to_records(parse_dump((OX / "basic.db").read_bytes()))
    records = out.records
    assert out.dropped == ()
    assert records[0] == GlobalData(socket_fd=3, evtchn_fd=5)
    assert records[-1] == End()
    conns = [r for r in records if isinstance(r, ConnectionData)]
    # line order: dom 2, dom 0, dom 1, then sockets 7, 9, 8; ids from 1
    assert [(c.conn_id, c.spec) for c in conns] == [
        (1, RingSpec(2, DOMID_INVALID, 4)),
        (2, RingSpec(0, DOMID_INVALID, 2)),
        (3, RingSpec(1, DOMID_INVALID, 3)),
        (4, SocketSpec(7)),
        (5, SocketSpec(9)),
        (6, SocketSpec(8)),
    ]
    assert all(not c.in_data and not c.out_data and c.unique_id is None for c in conns)
    watches = [r for r in records if isinstance(r, WatchData)]
    assert WatchData(3, "device", "dev") in watches
    assert WatchData(4, "backend", "rel,tok") in watches
    assert WatchData(1, "@releaseDomain", "rel") in watches
    nodes = {r.path: r for r in records if isinstance(r, NodeData)}
    # the special nodes are oxenstored's root children /@introduceDomain, /@releaseDomain
    assert "@introduceDomain" in nodes and "/@introduceDomain" not in nodes
    assert nodes["/tool/name"].perms == (
        NodePerm("r", 0, 0),
        NodePerm("w", 0, 1),
        NodePerm("n", 0, 2),
        NodePerm("b", 0, 3),
    )
    assert nodes["/tool/binary"].value == b"\x00\x01,\n\xfe\xff bin\x00ary"
    assert all(n.committed and n.tx_id == 0 and n.access == 0 for n in nodes.values())
    assert out.extras == OxenstoredExtras(
        1, (DomainRing(2, 1002, 12), DomainRing(0, 0, 1), DomainRing(1, 1001, 11))
    )


@pytest.mark.parametrize("name", ["basic.db", "minimal.db"])
@pytest.mark.parametrize("version", [1, 2])
def test_round_trip_through_a_stream_is_byte_identical(name: str, version: int) -> None:
    data = (OX / name).read_bytes()
    out = dump_to_records(parse_dump(data))
    stream = write_stream(out.records, version=version)
    assert list(check_stream(stream)) == []
    header, records = read_records(stream)
    assert header.version == version
    back = records_to_dump(records, extras=out.extras)
    assert back.dropped == () and back.quota is None
    assert format_dump(back.dump) == data


def test_converted_real_dump_restores_into_pyxenstored() -> None:
    from pyxenstored.migrate.restore import StoreOnlySink, restore_state
    from pyxenstored.store import Store

    out = dump_to_records(parse_dump((OX / "basic.db").read_bytes()))
    store = Store()
    restored = restore_state(out.records, store, StoreOnlySink(store))
    assert restored.connections == 6
    assert restored.global_data == GlobalData(3, 5)
    assert restored.nodes == sum(isinstance(r, NodeData) for r in out.records)


def test_quota_goes_into_global_quota_data() -> None:
    quota = OxenstoredQuota(path_max=1024)
    out = dump_to_records(parse_dump((OX / "minimal.db").read_bytes()), quota=quota)
    assert out.records[1] == GlobalQuotaData(quota_to_c(quota)[0])
    back = records_to_dump(out.records, extras=out.extras)
    assert back.quota == quota
    assert format_dump(back.dump) == (OX / "minimal.db").read_bytes()


HEAD = ("global,3", "evtchn-dev,5,1", "dom,0,0,1,2", f"store,{h('/')},{h('n0')},")


@pytest.mark.parametrize(
    ("lines", "item"),
    [
        (("mystery,1",), "line 6: unknown-line"),
        ((f"store,{h('/a/b')},{h('n0')},",), "line 6: node-parent-missing"),
        (("dom,4,100,7",), "domain 4 has no local port"),
        (("dom,4,100,7,8,x",), "fields after domain 4's local port"),
        (("global,3,4",), "fields after the global socket"),
        (("socket,7", f"watch,-7,{h('/a')},ff"), "not a NUL-free UTF-8 string"),
        (("socket,7", f"watch,-7,{h('/a')},{h('x')}00"), "not a NUL-free UTF-8 string"),
        ((f"watch,9,{h('/a')},{h('t')}",), "line 6: watch-unknown-connection"),
        ((f"store,{h('/p')},{h('n70000')},", f"store,{h('/p/q')},{h('n0')},"), "node /p/q"),
    ],
)
def test_what_the_stream_cannot_take_needs_lossy(lines: tuple[str, ...], item: str) -> None:
    bad = dump(*HEAD, *lines)
    with pytest.raises(OxenstoredConversionError) as exc:
        dump_to_records(bad)
    assert item in str(exc.value)
    assert any(item in d for d in exc.value.dropped)
    out = dump_to_records(bad, lossy=True)
    assert any(item in d for d in out.dropped)
    # whatever is left is a stream the checker accepts
    assert [d for d in check_stream(write_stream(out.records)) if d.severity == "error"] == []


def test_truncated_dump_needs_lossy() -> None:
    data = (OX / "basic.db").read_bytes()
    with pytest.raises(OxenstoredConversionError, match="truncated"):
        dump_to_records(parse_dump(data[:-1]))
    out = dump_to_records(parse_dump(data[:-1]), lossy=True)
    assert sum(isinstance(r, NodeData) for r in out.records) == data.count(b"\nstore,")


def test_node_written_twice_keeps_its_place_and_its_last_value() -> None:
    out = dump_to_records(
        dump(
            *HEAD,
            f"store,{h('/a')},{h('n0')},{h('old')}",
            f"store,{h('/a/b')},{h('n0')},",
            f"store,{h('/a')},{h('r5')},{h('new')}",
        ),
        lossy=True,
    )
    nodes = [r for r in out.records if isinstance(r, NodeData)]
    assert [(n.path, n.value) for n in nodes] == [("/", b""), ("/a", b"new"), ("/a/b", b"")]
    assert nodes[1].perms == (NodePerm("r", 0, 5),)
    assert any("duplicate-node" in d for d in out.dropped)


def test_noncanonical_special_path() -> None:
    out = dump_to_records(dump(*HEAD, f"store,{h('@releaseDomain')},{h('n0')},"))
    assert NodeData(0, 0, 0, N0, "@releaseDomain", b"") in out.records


# --- records -> oxenstored -----------------------------------------------------------

RECORDS: list[Record] = [
    GlobalData(3, 5),
    ConnectionData(1, 0, 0, RingSpec(0, DOMID_INVALID, 2)),
    ConnectionData(2, 0, 0, RingSpec(7, DOMID_INVALID, 3)),
    WatchData(2, "data", "t1"),
    ConnectionData(3, 1, 0, SocketSpec(8)),
    WatchDataExtended(3, "@releaseDomain", "a,b"),
    NodeData(0, 0, 0, N0, "/", b""),
    NodeData(0, 0, 0, (NodePerm("n", 0, 7), NodePerm("r", 0, 0)), "/x", b"hi"),
    NodeData(0, 0, 0, N0, "@introduceDomain", b""),
    End(),
    NodeData(0, 0, 0, N0, "/after-end", b""),
]
EXTRAS = OxenstoredExtras(1, (DomainRing(7, 4660, 9), DomainRing(9, 99, 19)))
EXPECTED = (
    b"$xenstored-dump-format\n"
    b"global,3\n"
    b"evtchn-dev,5,1\n"
    b"dom,0,0,0,2\n"
    b"dom,7,4660,9,3\n"
    b"watch,7,64617461,7431\n"
    b"socket,8\n"
    b"watch,-8,4072656c65617365446f6d61696e,612c62\n"
    b"store,2f,6e30,\n"
    b"store,2f78,6e37007230,6869\n"
    b"store,2f40696e74726f64756365446f6d61696e,6e30,\n"
)


def test_records_to_dump() -> None:
    out = records_to_dump(RECORDS, extras=EXTRAS)
    assert out.dropped == ()
    assert format_dump(out.dump) == EXPECTED
    assert check_dump(EXPECTED) == []


@pytest.mark.parametrize(
    ("extra", "item"),
    [
        (ConnectionData(9, 1, 0, SocketSpec(20), in_data=b"abc"), "3 bytes of pending input"),
        (ConnectionData(9, 1, 0, SocketSpec(20), out_data=b"ab", out_resp_len=2), "pending out"),
        (ConnectionData(9, 0, 1, RingSpec(9, DOMID_INVALID, 4), unique_id=5), "unique-id 0x5"),
        (ConnectionData(9, 0, 0, RingSpec(8, 7, 4)), "domain 8 acting for domain 7"),
        (ConnectionData(9, 0, 0, RingSpec(8, DOMID_INVALID, 4)), "domain 8's ring connection"),
        (ConnectionData(9, 0, 0, RingSpec(9, DOMID_INVALID, 0)), "no local event-channel port"),
        (ConnectionData(9, 5, 0, OpaqueSpec(bytes(8))), "connection 9 of type 5"),
        (ConnectionData(2, 1, 0, SocketSpec(21)), "connection 2 given twice"),
        (ConnectionData(9, 1, 0, SocketSpec(8)), "socket descriptor 8 unusable or reused"),
        (WatchDataExtended(3, "/x", "d", 1), 'depth 1 of watch "/x"'),
        (WatchData(42, "/x", "t"), "of connection 42: its connection is left out"),
        (TransactionData(3, 1), "transaction 1 of connection 3"),
        (NodeData(3, 1, 2, N0, "/x", b"new"), "node /x of transaction 1"),
        (NodeData(0, 0, 0, (NodePerm("n", 1, 0),), "/y", b""), "stale flag"),
        (NodeData(0, 0, 0, (), "/y", b""), "node /y: no permissions"),
        (DomainData(7, features=1), "features 0x1 of domain 7"),
        (DomainData(7, quota=(QuotaValue("nodes", 9),)), "quota nodes 9 of domain 7"),
        (GlobalQuotaData((QuotaValue("memory", 100),)), "quota memory 100"),
        (GlobalQuotaData((), (QuotaValue("whatever", 1),)), "global-only quota whatever"),
        (UnknownRecord(77, b""), "record of unknown type 77"),
    ],
)
def test_what_oxenstored_cannot_take_needs_lossy(extra: Record, item: str) -> None:
    records = [*RECORDS[:-2], extra, End()]
    with pytest.raises(OxenstoredConversionError) as exc:
        records_to_dump(records, extras=EXTRAS)
    assert item in str(exc.value)
    out = records_to_dump(records, extras=EXTRAS, lossy=True)
    assert any(item in d for d in out.dropped), out.dropped
    assert [d for d in check_dump(format_dump(out.dump)) if d.severity == "error"] == []


def test_guest_rings_need_extras_but_dom0_does_not() -> None:
    out = records_to_dump(RECORDS, extras=OxenstoredExtras(1), lossy=True)
    text = format_dump(out.dump)
    assert b"dom,0,0,0,2\n" in text and b"dom,7," not in text and b"watch,7," not in text
    assert any("domain 7's ring connection" in d for d in out.dropped)
    assert any('watch "data" token "t1" of connection 2' in d for d in out.dropped)


def test_event_channel_needs_the_dom_exc_port() -> None:
    with pytest.raises(OxenstoredConversionError, match="DOM_EXC"):
        records_to_dump(RECORDS, extras=OxenstoredExtras(None, EXTRAS.rings))
    no_evtchn = records_to_dump([GlobalData(3, -1), End()])
    assert format_dump(no_evtchn.dump) == b"$xenstored-dump-format\nglobal,3\n"


def test_domain_quota_equal_to_the_defaults_is_not_lost() -> None:
    values = (QuotaValue("nodes", 100), QuotaValue("watches", 5))
    records = [GlobalQuotaData(values), DomainData(7, quota=values), End()]
    out = records_to_dump(records)
    assert out.dropped == ()
    assert out.quota == OxenstoredQuota(maxentity=100, maxwatch=5)


def test_c417_stream_to_oxenstored() -> None:
    _, records = read_records(DATA / "c417" / "basic.state")
    with pytest.raises(OxenstoredConversionError):
        records_to_dump(records)
    extras = OxenstoredExtras(1, (DomainRing(1, 1001, 11), DomainRing(2, 1002, 12)))
    out = records_to_dump(records, extras=extras, lossy=True)
    # C 4.17 keeps pending bytes; oxenstored cannot
    assert sorted(d.split(":")[0] for d in out.dropped) == [
        "connection 3",
        "connection 5",
        "connection 7",
        "connection 8",
    ]
    data = format_dump(out.dump)
    assert check_dump(data) == []
    nodes = {r.path for r in records if isinstance(r, NodeData)}
    stores = parse_dump(data).lines
    assert len([s for s in stores if type(s).__name__ == "StoreLine"]) == len(nodes)


# --- quota -------------------------------------------------------------------------

CONFIG = """
# comment = ignored
  quota-activate = true
quota-maxentity=50
quota-maxsize =\t99
quota-maxwatch = 7\t\x20
quota-transaction = -1
quota-maxrequests = x12
quota-maxoutstanding = 3 = 4
quota-path-max = 512
quota-path-max = 256
persistent = false
quota-activate = maybe
"""


def test_parse_config_as_config_ml_reads_it() -> None:
    quota, problems = parse_config(CONFIG)
    assert quota == OxenstoredQuota(
        activate=True,
        maxentity=50,
        maxsize=99,
        maxwatch=7,
        transaction=-1,
        maxrequests=1024,
        maxoutstanding=1024,
        path_max=256,
    )
    assert [p.split(":")[1].strip() for p in problems] == [
        "quota-maxrequests",
        "quota-maxoutstanding",
        "quota-activate",
    ]


def test_xen_shipped_defaults_map_to_c_names() -> None:
    values, dropped = quota_to_c(OxenstoredQuota(path_max=1024))
    assert dropped == []
    assert dict((v.name, v.value) for v in values) == {
        "nodes": 1000,
        "node-size": 2048,
        "watches": 100,
        "transactions": 10,
        "transaction-nodes": 1024,
        "outstanding": 1024,
        "path-max": 1024,
        "memory": 0,
        "node-permissions": 0,
        OX_MAXWATCHEVENTS: 1024,
    }


def test_quota_limits_without_a_c_counterpart() -> None:
    _, dropped = quota_to_c(OxenstoredQuota(maxentity=0, maxsize=-1, maxoutstanding=0))
    assert [d.split(" ")[0] for d in dropped] == [
        "quota-maxentity",
        "quota-maxsize",
        "quota-maxoutstanding",
    ]
    values, dropped = quota_to_c(OxenstoredQuota(activate=False, maxwatch=0, maxrequests=-1))
    got = {v.name: v.value for v in values}
    assert dropped == []
    assert got["nodes"] == got["node-size"] == got["watches"] == got["transaction-nodes"] == 0


def test_quota_from_c() -> None:
    q, dropped = quota_from_c(
        [
            QuotaValue("nodes", 0),
            QuotaValue("node-size", 0),
            QuotaValue("watches", 0),
            QuotaValue("transactions", 0),
            QuotaValue("transaction-nodes", 0),
            QuotaValue("soft-memory", 0xFFFFFFFF),
        ]
    )
    assert dropped == []
    assert (q.activate, q.transaction, q.maxrequests) == (False, 0, -1)
    _, dropped = quota_from_c(
        [
            QuotaValue("nodes", 0),
            QuotaValue("memory", 5),
            QuotaValue("soft-memory", 4),
            QuotaValue("path-max", 0),
            QuotaValue("odd", 1),
        ]
    )
    assert [d.split(" ")[1] for d in dropped] == [
        "nodes",
        "memory",
        "soft-memory",
        "path-max",
        "odd",
    ]


_positive = st.integers(1, 0xFFFFFFFF)


@settings(max_examples=200)
@given(
    st.builds(
        OxenstoredQuota,
        st.just(True),
        _positive,
        _positive,
        _positive,
        _positive,
        _positive,
        _positive,
        _positive,
        _positive,
    )
)
def test_positive_quota_round_trips_through_c_names(quota: OxenstoredQuota) -> None:
    values, dropped = quota_to_c(quota)
    assert dropped == []
    assert quota_from_c(values) == (quota, [])


@settings(max_examples=200)
@given(
    st.builds(
        OxenstoredQuota,
        st.booleans(),
        *[st.integers(-(1 << 40), 1 << 40)] * 8,
    )
)
def test_config_text_round_trips(quota: OxenstoredQuota) -> None:
    assert parse_config(format_config(quota)) == (quota, [])


# --- round-trip property -------------------------------------------------------------

_name = st.text("abcXYZ019_-@", min_size=1, max_size=6)
_token = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=8)
_watch_path = st.one_of(
    st.sampled_from(["@introduceDomain", "@releaseDomain", "/"]),
    st.lists(_name, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p)),
    st.lists(_name, min_size=1, max_size=3).map("/".join),  # relative
)
_perms = st.lists(
    st.tuples(st.sampled_from("nrwb"), st.integers(0, 0xFFFF)), min_size=1, max_size=3
).map(lambda ps: "\0".join(f"{letter}{d}" for letter, d in ps))


@st.composite
def canonical_dumps(draw: st.DrawFn) -> bytes:
    """A dump shaped as oxenstored writes one, with random contents."""
    lines = [f"global,{draw(st.integers(-1, 1000))}", "evtchn-dev,5000,1"]
    port = 2
    domids = draw(st.lists(st.integers(0, 0x7FEF), unique=True, max_size=4))
    fds = draw(st.lists(st.integers(5001, 9999), unique=True, max_size=3))
    conns = [(d, f"dom,{d},{0 if d == 0 else d + 1000},{d + 7},") for d in domids]
    conns += [(-fd, f"socket,{fd}") for fd in fds]
    for conn, line in conns:
        if line.startswith("dom"):
            line += str(port)
            port += 1
        lines.append(line)
        seen = set()
        for path, token in draw(st.lists(st.tuples(_watch_path, _token), max_size=3)):
            if (path, token) not in seen:
                seen.add((path, token))
                lines.append(f"watch,{conn},{h(path)},{token.encode().hex()}")
    lines.append(f"store,{h('/')},{h('n0')},")
    paths: list[str] = []
    for _ in range(draw(st.integers(0, 8))):
        parent = draw(st.sampled_from(["", *paths]))
        path = f"{parent}/{draw(_name)}"
        if path in paths or path in ("/@introduceDomain", "/@releaseDomain"):
            continue
        paths.append(path)
        value = draw(st.binary(max_size=12)).hex()
        lines.append(f"store,{h(path)},{draw(_perms).encode().hex()},{value}")
    for special in draw(st.lists(st.sampled_from(["@introduceDomain", "@releaseDomain"]))):
        line = f"store,{h('/' + special)},{h('n0')},"
        if line not in lines:
            lines.append(line)
    return ("$xenstored-dump-format\n" + "".join(f"{x}\n" for x in lines)).encode()


@settings(max_examples=150, deadline=None)
@given(canonical_dumps(), st.sampled_from([1, 2]))
def test_any_canonical_dump_round_trips_through_a_stream(data: bytes, version: int) -> None:
    assert check_dump(data) == []
    out = dump_to_records(parse_dump(data))
    _, records = read_records(write_stream(out.records, version=version))
    back = records_to_dump(records, extras=out.extras)
    assert format_dump(back.dump) == data


_any_line = st.one_of(
    st.sampled_from(["global", "evtchn-dev", "dom", "socket", "watch", "store"]).flatmap(
        lambda kind: st.lists(
            st.one_of(
                st.integers(-(1 << 62), (1 << 62) - 1).map(str),
                st.integers(-3, 70000).map(str),
                st.sampled_from([h("/"), h("/a"), h("/a/b"), h("@x"), h("n0"), h("r1\0w2"), "ff"]),
                st.binary(max_size=6).map(bytes.hex),
            ),
            max_size=5,
        ).map(lambda fields: ",".join([kind, *fields]))
    ),
    st.text(max_size=10),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_any_line, max_size=12))
def test_lossy_conversion_of_any_dump_gives_a_writable_stream_and_back(lines: list[str]) -> None:
    data = ("$xenstored-dump-format\n" + "".join(f"{x}\n" for x in lines)).encode(
        "utf-8", "replace"
    )
    out = dump_to_records(parse_dump(data), lossy=True)
    for version in (1, 2):
        _, records = read_records(write_stream(out.records, version=version))
    back = records_to_dump(records, extras=out.extras, lossy=True)
    # nothing new goes wrong on the way: the errors left are the source's
    # (a source whose store lines were all skipped comes back with none)
    errors = {d.rule for d in check_dump(data) if d.severity == "error"} | {"no-nodes"}
    assert {d.rule for d in check_dump(format_dump(back.dump)) if d.severity == "error"} <= errors
