"""Shared helpers for the stream tests: hand-made byte vectors and hypothesis strategies.

The byte builders here follow the tables of xenstore-migration.md field by
field with ``struct.pack``; they never call the project's writer, so tests
that compare the writer's output with them check the writer against the spec.
"""

from __future__ import annotations

import string
import struct
from pathlib import Path

from hypothesis import strategies as st

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

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "c417"


def endian(big: bool) -> str:
    return ">" if big else "<"


def preamble(version: int, big: bool, flags: int | None = None) -> bytes:
    """ident 'xenstore', version and flags, both big-endian whatever the payload order."""
    return b"xenstore" + struct.pack(">II", version, (1 if big else 0) if flags is None else flags)


def frame(big: bool, rtype: int, body: bytes, padded: bool = True) -> bytes:
    """A record: type, len, body, padding to 8.

    ``padded``: ``len`` counts the padding (what C writes); otherwise ``len``
    is the body length and the zero padding follows outside it.
    """
    pad = b"\0" * (-len(body) & 7)
    e = endian(big)
    if padded:
        return struct.pack(e + "II", rtype, len(body) + len(pad)) + body + pad
    return struct.pack(e + "II", rtype, len(body)) + body + pad


def end_record(big: bool) -> bytes:
    return struct.pack(endian(big) + "II", 0, 0)


def stream(version: int, big: bool, *records: bytes) -> bytes:
    """Preamble + the given framed records + END."""
    return preamble(version, big) + b"".join(records) + end_record(big)


# --- bodies, field by field from the spec tables ------------------------------


def body_global(big: bool, sock: int, evtchn: int) -> bytes:
    return struct.pack(endian(big) + "ii", sock, evtchn)


def body_connection(
    big: bool,
    conn_id: int,
    conn_type: int,
    fields: int,
    spec: bytes,
    in_data: bytes,
    out_data: bytes,
    out_resp_len: int,
    unique_id: int | None,
) -> bytes:
    e = endian(big)
    body = (
        struct.pack(e + "IHH", conn_id, conn_type, fields)
        + spec
        + struct.pack(e + "HHI", len(in_data), out_resp_len, len(out_data))
        + in_data
        + out_data
    )
    if unique_id is not None:
        body += b"\0" * (-len(body) & 7) + struct.pack(e + "Q", unique_id)
    return body


def ring_spec(big: bool, domid: int, tdomid: int, evtchn: int) -> bytes:
    return struct.pack(endian(big) + "HHI", domid, tdomid, evtchn)


def socket_spec(big: bool, fd: int) -> bytes:
    return struct.pack(endian(big) + "iI", fd, 0)


def body_watch(big: bool, conn_id: int, wpath: bytes, token: bytes) -> bytes:
    return (
        struct.pack(endian(big) + "IHH", conn_id, len(wpath) + 1, len(token) + 1)
        + wpath
        + b"\0"
        + token
        + b"\0"
    )


def body_watch_ext(big: bool, conn_id: int, wpath: bytes, token: bytes, depth: int) -> bytes:
    return (
        struct.pack(endian(big) + "IHHHH", conn_id, len(wpath) + 1, len(token) + 1, depth, 0)
        + wpath
        + b"\0"
        + token
        + b"\0"
    )


def body_transaction(big: bool, conn_id: int, tx_id: int) -> bytes:
    return struct.pack(endian(big) + "II", conn_id, tx_id)


def body_node(
    big: bool,
    conn_id: int,
    tx_id: int,
    access: int,
    perms: list[tuple[bytes, int, int]],
    path: bytes,
    value: bytes,
) -> bytes:
    e = endian(big)
    out = struct.pack(e + "IIHHHH", conn_id, tx_id, len(path) + 1, len(value), access, len(perms))
    for letter, flags, domid in perms:
        out += struct.pack(e + "cBH", letter, flags, domid)
    return out + path + b"\0" + value


def body_global_quota(
    big: bool, dom: list[tuple[bytes, int]], glob: list[tuple[bytes, int]]
) -> bytes:
    e = endian(big)
    out = struct.pack(e + "HH", len(dom), len(glob))
    for _, value in dom + glob:
        out += struct.pack(e + "I", value)
    return out + b"".join(name + b"\0" for name, _ in dom + glob)


def body_domain(big: bool, domid: int, features: int, quota: list[tuple[bytes, int]]) -> bytes:
    e = endian(big)
    out = struct.pack(e + "HHI", domid, len(quota), features)
    for _, value in quota:
        out += struct.pack(e + "I", value)
    return out + b"".join(name + b"\0" for name, _ in quota)


# --- a worked example: C's record layouts (xenstore-migration.md), by hand -----

WORKED_EXAMPLE = bytes.fromhex(
    "78656e73746f7265 0000000200000000"
    "0100000008000000 0300000004000000"
    "0200000020000000 0100000000000100"
    "0100f47f09000000 0000000000000000"
    "8877665544332211"
    "0200000030000000 0200000001000000"
    "0700000000000000 0000000013000000"
    "0000000007000000 0000000003000000"
    "4f4b000000000000"
    "0300000018000000 0200000006000400"
    "2f746f6f6c00746f 6b00000000000000"
    "0500000020000000 0000000000000000"
    "0600020000000100 6e0000002f746f6f"
    "6c00686900000000"
    "0000000000000000"
)

WORKED_EXAMPLE_RECORDS: list[Record] = [
    GlobalData(3, 4),
    ConnectionData(1, 0, 1, RingSpec(1, 0x7FF4, 9), b"", b"", 0, 0x1122334455667788),
    ConnectionData(
        2,
        1,
        0,
        SocketSpec(7),
        b"",
        struct.pack("<IIII", 0, 7, 0, 3) + b"OK\0",
        0,
        None,
    ),
    WatchData(2, "/tool", "tok"),
    NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/tool", b"hi"),
    End(),
]

# GLOBAL_QUOTA_DATA as C HEAD writes it with its default quotas, in its order
# (domain.c:dump_state_glb_quota; xenstore-migration.md "GLOBAL_QUOTA_DATA").
HEAD_QUOTA_DEFAULTS = [
    ("nodes", 1000),
    ("watches", 128),
    ("outstanding", 20),
    ("memory", 2621440),
    ("soft-memory", 2097152),
    ("transactions", 10),
    ("transaction-nodes", 1024),
    ("node-permissions", 5),
    ("path-max", 2048),
    ("node-size", 2048),
]


# --- hypothesis strategies --------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
u64 = st.integers(0, 2**64 - 1)

_segment = st.text(string.ascii_letters + string.digits + "-_@", min_size=1, max_size=8)
paths = st.one_of(
    st.just("/"),
    st.lists(_segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["@releaseDomain", "@introduceDomain", "device", "data/x"]),
)
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
values = st.binary(max_size=48)

node_perms = st.builds(NodePerm, st.sampled_from("nrwbx"), u8, u16)
conn_specs = st.one_of(
    st.tuples(st.just(0), st.builds(RingSpec, u16, u16, u32)),
    st.tuples(st.just(1), st.builds(SocketSpec, i32)),
    st.tuples(st.integers(2, 0xFFFF), st.builds(OpaqueSpec, st.binary(min_size=8, max_size=8))),
)


@st.composite
def connections(draw: st.DrawFn) -> ConnectionData:
    conn_type, spec = draw(conn_specs)
    fields = draw(u16)
    unique_id = draw(u64) if fields & 1 else None
    return ConnectionData(
        draw(u32),
        conn_type,
        fields,
        spec,
        draw(st.binary(max_size=40)),
        draw(st.binary(max_size=40)),
        draw(u16),
        unique_id,
    )


quota_values = st.lists(st.builds(QuotaValue, texts, u32), max_size=5).map(tuple)


def records_for(version: int) -> st.SearchStrategy[Record]:
    """Any record (END excepted) that a stream of ``version`` may carry."""
    options: list[st.SearchStrategy[Record]] = [
        st.builds(GlobalData, i32, i32),
        connections(),
        st.builds(WatchData, u32, paths, texts),
        st.builds(TransactionData, u32, u32),
        st.builds(
            NodeData, u32, u32, u16, st.lists(node_perms, max_size=4).map(tuple), paths, values
        ),
        st.builds(GlobalQuotaData, quota_values, quota_values),
        st.builds(DomainData, u16, u32 if version >= 2 else st.just(0), quota_values),
        st.builds(
            UnknownRecord,
            st.integers(9, 0xFFFFFFFF),
            st.integers(0, 5).flatmap(lambda n: st.binary(min_size=8 * n, max_size=8 * n)),
        ),
    ]
    if version >= 2:
        options.append(st.builds(WatchDataExtended, u32, paths, texts, u16))
    return st.one_of(options)


def record_lists(version: int) -> st.SearchStrategy[list[Record]]:
    """A record list ending with END."""
    return st.lists(records_for(version), max_size=8).map(lambda rs: [*rs, End()])
