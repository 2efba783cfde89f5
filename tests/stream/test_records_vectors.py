"""Hand-built byte vectors (spec tables, struct.pack) for every record type.

Each vector is decoded in both byte orders, both versions (where the version
allows the record), with ``len`` counting the padding (C) and without it;
the canonical (padded) form must also come out of the writer byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from tests.stream.conftest import (
    HEAD_QUOTA_DEFAULTS,
    WORKED_EXAMPLE,
    WORKED_EXAMPLE_RECORDS,
    body_connection,
    body_domain,
    body_global,
    body_global_quota,
    body_node,
    body_transaction,
    body_watch,
    body_watch_ext,
    end_record,
    frame,
    preamble,
    ring_spec,
    socket_spec,
    stream,
)

from pyxenstored.stream import (
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
    StreamReader,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    inspect_record,
    read_records,
    write_stream,
)
from pyxenstored.stream.reader import QUIRK_WATCH_EXT_C_HEAD_WRITER, QUIRK_WATCH_EXT_C_READER


@dataclass(frozen=True)
class Vector:
    name: str
    rtype: int
    body: Callable[[bool], bytes]
    record: Record
    min_version: int = 1


def _q(pairs: list[tuple[str, int]]) -> tuple[QuotaValue, ...]:
    return tuple(QuotaValue(n, v) for n, v in pairs)


def _qb(pairs: list[tuple[str, int]]) -> list[tuple[bytes, int]]:
    return [(n.encode(), v) for n, v in pairs]


VECTORS = [
    Vector("global", 1, lambda b: body_global(b, 3, 4), GlobalData(3, 4)),
    Vector("global-no-socket", 1, lambda b: body_global(b, -1, 17), GlobalData(-1, 17)),
    Vector(
        "conn-ring-uid",
        2,
        lambda b: body_connection(
            b, 1, 0, 1, ring_spec(b, 5, 0x7FF4, 9), b"", b"", 0, 0x0102030405060708
        ),
        ConnectionData(1, 0, 1, RingSpec(5, 0x7FF4, 9), b"", b"", 0, 0x0102030405060708),
    ),
    Vector(
        "conn-ring-pending-uid",
        2,
        lambda b: body_connection(
            b, 7, 0, 1, ring_spec(b, 3, 2, 0x10001), b"\x02\0\0\0abc", b"partial", 3, 42
        ),
        ConnectionData(7, 0, 1, RingSpec(3, 2, 0x10001), b"\x02\0\0\0abc", b"partial", 3, 42),
    ),
    Vector(
        "conn-ring-no-uid",
        2,
        lambda b: body_connection(b, 2, 0, 0, ring_spec(b, 4, 0x7FF4, 1), b"", b"xyz", 0, None),
        ConnectionData(2, 0, 0, RingSpec(4, 0x7FF4, 1), b"", b"xyz", 0, None),
    ),
    Vector(
        "conn-socket",
        2,
        lambda b: body_connection(b, 9, 1, 0, socket_spec(b, 12), b"in", b"OK\0", 0, None),
        ConnectionData(9, 1, 0, SocketSpec(12), b"in", b"OK\0", 0, None),
    ),
    Vector(
        "conn-reserved-type",
        2,
        lambda b: body_connection(b, 3, 7, 0, b"ABCDEFGH", b"", b"", 0, None),
        ConnectionData(3, 7, 0, OpaqueSpec(b"ABCDEFGH"), b"", b"", 0, None),
    ),
    Vector(
        "watch",
        3,
        lambda b: body_watch(b, 2, b"/tool", b"tok"),
        WatchData(2, "/tool", "tok"),
    ),
    Vector(
        "watch-relative-empty-token",
        3,
        lambda b: body_watch(b, 4, b"device", b""),
        WatchData(4, "device", ""),
    ),
    Vector(
        "watch-ext",
        8,
        lambda b: body_watch_ext(b, 2, b"/local/domain/1", b"t1", 3),
        WatchDataExtended(2, "/local/domain/1", "t1", 3),
        min_version=2,
    ),
    Vector(
        "watch-ext-unlimited",
        8,
        lambda b: body_watch_ext(b, 2, b"@releaseDomain", b"rel", 0xFFFF),
        WatchDataExtended(2, "@releaseDomain", "rel", 0xFFFF),
        min_version=2,
    ),
    Vector(
        "transaction",
        4,
        lambda b: body_transaction(b, 3, 0x12345678),
        TransactionData(3, 0x12345678),
    ),
    Vector(
        "node-committed",
        5,
        lambda b: body_node(b, 0, 0, 0, [(b"n", 0, 0)], b"/tool", b"hi"),
        NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/tool", b"hi"),
    ),
    Vector(
        "node-perms-stale-binary",
        5,
        lambda b: body_node(
            b,
            0,
            0,
            0,
            [(b"b", 0, 5), (b"r", 1, 7), (b"w", 0, 0x7FF5)],
            b"/local/domain/5/x",
            b"\0\x01\xff",
        ),
        NodeData(
            0,
            0,
            0,
            (NodePerm("b", 0, 5), NodePerm("r", 1, 7), NodePerm("w", 0, 0x7FF5)),
            "/local/domain/5/x",
            b"\0\x01\xff",
        ),
    ),
    Vector(
        "node-pending",
        5,
        lambda b: body_node(b, 4, 9, 3, [(b"n", 0, 1)], b"/a/b", b"v"),
        NodeData(4, 9, 3, (NodePerm("n", 0, 1),), "/a/b", b"v"),
    ),
    Vector(
        "node-deleted-in-transaction",
        5,
        lambda b: body_node(b, 4, 9, 0, [], b"/a/c", b""),
        NodeData(4, 9, 0, (), "/a/c", b""),
    ),
    Vector(
        "node-special-utf8",
        5,
        lambda b: body_node(b, 0, 0, 0, [(b"n", 0, 0)], "/caf\u00e9".encode(), b""),
        NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/caf\u00e9", b""),
    ),
    Vector(
        "global-quota-head-defaults",
        6,
        lambda b: body_global_quota(b, _qb(HEAD_QUOTA_DEFAULTS), []),
        GlobalQuotaData(_q(HEAD_QUOTA_DEFAULTS), ()),
    ),
    Vector(
        "global-quota-both-groups",
        6,
        lambda b: body_global_quota(b, [(b"nodes", 10)], [(b"x-global", 0), (b"", 5)]),
        GlobalQuotaData(_q([("nodes", 10)]), _q([("x-global", 0), ("", 5)])),
    ),
    Vector(
        "global-quota-empty",
        6,
        lambda b: body_global_quota(b, [], []),
        GlobalQuotaData((), ()),
    ),
    Vector(
        "domain-v1",
        7,
        lambda b: body_domain(b, 3, 0, [(b"nodes", 12), (b"watches", 0)]),
        DomainData(3, 0, _q([("nodes", 12), ("watches", 0)])),
    ),
    Vector(
        "domain-features",
        7,
        lambda b: body_domain(b, 0x7FF0, 0xE, [(b"memory", 1 << 30)]),
        DomainData(0x7FF0, 0xE, _q([("memory", 1 << 30)])),
        min_version=2,
    ),
    Vector(
        "unknown-type",
        0x1234,
        lambda b: b"opaque..bytes!!!",
        UnknownRecord(0x1234, b"opaque..bytes!!!"),
    ),
]

ORDERS = [pytest.param(False, id="le"), pytest.param(True, id="be")]


def _cases() -> list[object]:
    out = []
    for v in VECTORS:
        for version in (1, 2):
            if version < v.min_version:
                continue
            for big in (False, True):
                for padded in (True, False):
                    out.append(
                        pytest.param(
                            v,
                            version,
                            big,
                            padded,
                            id=f"{v.name}-v{version}-{'be' if big else 'le'}-"
                            f"{'padded' if padded else 'unpadded'}",
                        )
                    )
    return out


@pytest.mark.parametrize(("vector", "version", "big", "padded"), _cases())
def test_vector_decodes(vector: Vector, version: int, big: bool, padded: bool) -> None:
    data = stream(version, big, frame(big, vector.rtype, vector.body(big), padded))
    header, records = read_records(data)
    assert header.version == version
    assert header.big_endian is big
    assert records == [vector.record, End()]


@pytest.mark.parametrize(("vector", "version", "big", "padded"), _cases())
def test_vector_writer_is_canonical(vector: Vector, version: int, big: bool, padded: bool) -> None:
    canonical = stream(version, big, frame(big, vector.rtype, vector.body(big), True))
    assert write_stream([vector.record, End()], version=version, big_endian=big) == canonical
    # read -> write of either form gives the canonical bytes
    data = stream(version, big, frame(big, vector.rtype, vector.body(big), padded))
    _, records = read_records(data)
    assert write_stream(records, version=version, big_endian=big) == canonical


@pytest.mark.parametrize("big", ORDERS)
def test_raw_framing_padded_and_unpadded(big: bool) -> None:
    body = body_watch(big, 1, b"/a", b"t")  # 13 bytes
    padded = stream(2, big, frame(big, 3, body, True))
    unpadded = stream(2, big, frame(big, 3, body, False))
    raws_p = list(StreamReader(padded).iter_raw())
    raws_u = list(StreamReader(unpadded).iter_raw())
    assert (raws_p[0].length, raws_u[0].length) == (16, 13)
    assert raws_p[0].body == body + b"\0" * 3 and raws_p[0].padding == b""
    assert raws_u[0].body == body and raws_u[0].padding == b"\0" * 3
    assert raws_p[1].offset == raws_u[1].offset == 16 + 8 + 16
    assert [r.type for r in raws_p] == [3, 0]


def test_worked_example_stream() -> None:
    header, records = read_records(WORKED_EXAMPLE)
    assert (header.version, header.flags, header.big_endian) == (2, 0, False)
    assert records == WORKED_EXAMPLE_RECORDS
    # the socket connection's pending output is the OK reply to req_id 7
    conn = records[2]
    assert isinstance(conn, ConnectionData)
    assert struct.unpack_from("<IIII", conn.out_data) == (0, 7, 0, 3)
    assert write_stream(records, version=2) == WORKED_EXAMPLE


def test_worked_example_offsets() -> None:
    raws = list(StreamReader(WORKED_EXAMPLE).iter_raw())
    assert [(r.offset, r.type, r.length) for r in raws] == [
        (0x10, 1, 8),
        (0x20, 2, 32),
        (0x48, 2, 48),
        (0x80, 3, 24),
        (0xA0, 5, 32),
        (0xC8, 0, 0),
    ]


def test_global_quota_head_defaults_with_garbage_padding() -> None:
    """C leaves GLOBAL_QUOTA_DATA padding uninitialised: tolerated, and reported as slack."""
    body = body_global_quota(False, _qb(HEAD_QUOTA_DEFAULTS), [])
    assert len(body) == 156
    rec = struct.pack("<II", 6, 160) + body + b"\xde\xad\xbe\xef"
    data = preamble(2, False) + rec + end_record(False)
    reader = StreamReader(data)
    raw = next(reader.iter_raw())
    assert raw.length == 160
    info = inspect_record(raw, reader.header)
    assert info.record == GlobalQuotaData(_q(HEAD_QUOTA_DEFAULTS), ())
    assert info.content_length == 156
    assert info.slack == b"\xde\xad\xbe\xef"
    assert read_records(data)[1][0] == info.record


def test_domain_features_ignored_in_version_1() -> None:
    data = stream(1, False, frame(False, 7, body_domain(False, 3, 0xE, [(b"nodes", 5)])))
    reader = StreamReader(data)
    raw = next(reader.iter_raw())
    info = inspect_record(raw, reader.header)
    assert info.record == DomainData(3, 0, _q([("nodes", 5)]))
    assert info.reserved == ("features (not valid in version 1)",)


def test_socket_pad_and_watch_ext_pad_reported() -> None:
    sock = struct.pack("<IHH", 1, 1, 0) + struct.pack("<iI", 4, 0xAA) + struct.pack("<HHI", 0, 0, 0)
    wext = struct.pack("<IHHHH", 1, 3, 2, 1, 0) + b"/a\0t\0"
    data = stream(2, False, frame(False, 2, sock), frame(False, 8, wext))
    reader = StreamReader(data)
    raws = list(reader.iter_raw())
    assert inspect_record(raws[0], reader.header).reserved == ("conn-spec pad",)
    assert inspect_record(raws[1], reader.header).reserved == ()
    # non-zero pad: no layout fits exactly, the spec layout is used and the pad reported
    wext_bad = struct.pack("<IHHHH", 1, 3, 2, 1, 0x0101) + b"/a\0t\0"
    data = stream(2, False, frame(False, 8, wext_bad))
    reader = StreamReader(data)
    info = inspect_record(next(reader.iter_raw()), reader.header)
    assert info.record == WatchDataExtended(1, "/a", "t", 1)
    assert info.reserved == ("pad",)


# --- WATCH_DATA_EXTENDED as C HEAD reads and writes it (watch.c) -----------------


def test_c_head_writer_watch_ext_example() -> None:
    """What watch.c:dump_state_watches writes for a depth watch: len 24, 16 bytes, no depth."""
    rec = bytes.fromhex("080000001800000001000000030002002f61007400000000")
    after = frame(False, 3, body_watch(False, 1, b"/b", b"u"))
    data = preamble(1, False) + rec + after + end_record(False)
    reader = StreamReader(data)
    raws = list(reader.iter_raw())
    assert raws[0].quirk == QUIRK_WATCH_EXT_C_HEAD_WRITER
    assert raws[0].length == 24 and len(raws[0].body) == 16
    assert raws[1].offset == 16 + 8 + 16  # the next record is found where C really put it
    assert [r.type for r in raws] == [8, 3, 0]
    _, records = read_records(data)
    assert records == [
        WatchDataExtended(1, "/a", "t", 0xFFFF),
        WatchData(1, "/b", "u"),
        End(),
    ]


def test_c_head_writer_watch_ext_when_lengths_agree() -> None:
    """(p + t) mod 8 in 1..4: C's len is right, but the depth is still missing."""
    body = struct.pack("<IHH", 1, 5, 3) + b"/abc\0tk\0"  # 16 bytes, len 24 = ROUNDUP(12+8, 8)
    rec = struct.pack("<II", 8, 24) + body + b"\0" * 8
    data = preamble(2, False) + rec + end_record(False)
    raws = list(StreamReader(data).iter_raw())
    assert raws[0].quirk == QUIRK_WATCH_EXT_C_HEAD_WRITER
    assert read_records(data)[1][0] == WatchDataExtended(1, "/abc", "tk", 0xFFFF)


@pytest.mark.parametrize("big", ORDERS)
def test_c_reader_layout_watch_ext(big: bool) -> None:
    """Depth at 8, path at 10: what a writer for C HEAD emits."""
    e = ">" if big else "<"
    body = struct.pack(e + "IHHH", 6, 6, 4, 2) + b"/tool\0tok\0"
    data = stream(2, big, frame(big, 8, body))
    raws = list(StreamReader(data).iter_raw())
    assert raws[0].quirk == QUIRK_WATCH_EXT_C_READER
    assert read_records(data)[1][0] == WatchDataExtended(6, "/tool", "tok", 2)
    assert (
        write_stream(
            [WatchDataExtended(6, "/tool", "tok", 2), End()],
            version=2,
            big_endian=big,
            target="c-head",
        )
        == data
    )


def test_watch_ext_accepted_in_version_1_stream() -> None:
    """C HEAD writes WATCH_DATA_EXTENDED in version-1 streams too; the reader takes it."""
    data = stream(1, False, frame(False, 8, body_watch_ext(False, 1, b"/x", b"t", 4)))
    assert read_records(data)[1][0] == WatchDataExtended(1, "/x", "t", 4)


def test_big_endian_flag_bytes() -> None:
    data = write_stream([End()], version=2, big_endian=True)
    assert data == b"xenstore" + bytes([0, 0, 0, 2, 0, 0, 0, 1]) + bytes(8)
    data = write_stream([End()], version=1, big_endian=False)
    assert data == b"xenstore" + bytes([0, 0, 0, 1, 0, 0, 0, 0]) + bytes(8)


def test_stream_in_c_head_style() -> None:
    """A whole stream laid out as C HEAD writes it (lu.c:lu_dump_state), built by hand.

    Version 1 (C's -v 1) with a ring connection carrying unique-id, quota
    records with garbage padding, a depth watch in C HEAD's broken layout, and
    DOMAIN_DATA last.
    """
    le = False
    quota = body_global_quota(le, _qb(HEAD_QUOTA_DEFAULTS), [])
    quota_rec = struct.pack("<II", 6, 160) + quota + b"\x11\x22\x33\x44"
    dom = body_domain(le, 1, 0, _qb(HEAD_QUOTA_DEFAULTS))
    dom_rec = struct.pack("<II", 7, 160) + dom + b"\x55" * (160 - len(dom))
    # broken WATCH_DATA_EXTENDED: len = ROUNDUP(12+6+4, 8) = 24, written ROUNDUP(8+10, 8) = 24
    # bytes -> here (p+t) = 10, 10 mod 8 = 2: lengths agree
    bad_watch = struct.pack("<IIIHH", 8, 24, 1, 6, 4) + b"/tool\0tok\0" + b"\0" * 6
    data = (
        preamble(1, le)
        + frame(le, 1, body_global(le, 3, 4))
        + quota_rec
        + frame(
            le,
            2,
            body_connection(le, 1, 0, 1, ring_spec(le, 1, 0x7FF4, 9), b"", b"", 0, 0xABCDEF),
        )
        + bad_watch
        + frame(le, 5, body_node(le, 0, 0, 0, [(b"n", 0, 0)], b"/", b""))
        + frame(le, 5, body_node(le, 0, 0, 0, [(b"n", 0, 1)], b"/tool", b""))
        + frame(le, 5, body_node(le, 0, 0, 0, [(b"n", 0, 0)], b"@releaseDomain", b""))
        + dom_rec
        + end_record(le)
    )
    reader = StreamReader(data)
    raws = list(reader.iter_raw())
    infos = [inspect_record(r, reader.header) for r in raws]
    assert [r.type for r in raws] == [1, 6, 2, 8, 5, 5, 5, 7, 0]
    assert raws[3].quirk == QUIRK_WATCH_EXT_C_HEAD_WRITER
    assert infos[1].slack == b"\x11\x22\x33\x44"
    assert infos[7].slack == b"\x55" * (160 - len(dom))
    assert infos[2].record == ConnectionData(1, 0, 1, RingSpec(1, 0x7FF4, 9), b"", b"", 0, 0xABCDEF)
    assert infos[3].record == WatchDataExtended(1, "/tool", "tok", 0xFFFF)
    assert infos[7].record == DomainData(1, 0, _q(HEAD_QUOTA_DEFAULTS))
    assert read_records(data)[1] == [i.record for i in infos]
