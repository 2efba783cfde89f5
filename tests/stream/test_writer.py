"""Writer: refusals per version and target, target layouts, adapt_for_target, round trips."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.stream.conftest import (
    DATA_DIR,
    WORKED_EXAMPLE,
    WORKED_EXAMPLE_RECORDS,
    body_domain,
    frame,
    preamble,
    record_lists,
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
    StreamWriteError,
    StreamWriter,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    adapt_for_target,
    encode_record,
    read_records,
    write_stream,
)

NODE = NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/", b"")
RING1 = ConnectionData(1, 0, 1, RingSpec(1, 0x7FF4, 9), b"", b"", 0, 77)
TX_NODE = NodeData(1, 5, 2, (NodePerm("n", 0, 1),), "/local/domain/1/x", b"v")


# --- version rules -----------------------------------------------------------------


def test_v1_refuses_watch_data_extended() -> None:
    with pytest.raises(StreamWriteError, match="WATCH_DATA_EXTENDED is not valid in version 1"):
        encode_record(WatchDataExtended(1, "/a", "t", 2), version=1)


def test_v1_refuses_features_but_allows_quota_records() -> None:
    with pytest.raises(StreamWriteError, match="features"):
        encode_record(DomainData(1, 4, ()), version=1)
    encode_record(DomainData(1, 0, (QuotaValue("nodes", 3),)), version=1)
    encode_record(GlobalQuotaData((QuotaValue("nodes", 3),), ()), version=1)


@pytest.mark.parametrize("version", [0, 3])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(StreamWriteError, match="version"):
        write_stream([End()], version=version)


def test_unknown_target() -> None:
    with pytest.raises(StreamWriteError, match="unknown target"):
        StreamWriter(io.BytesIO(), target="oxenstored")


# --- field checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        NodeData(0, 0, 0, (NodePerm("n", 0, 70000),), "/a", b""),
        NodeData(0, 0, 0, (NodePerm("nn", 0, 0),), "/a", b""),
        NodeData(0, 0, 0, (NodePerm("\u00e9", 0, 0),), "/a", b""),
        NodeData(0, 0, 0, (), "/a", b"x" * 70000),
        NodeData(-1, 0, 0, (), "/a", b""),
        NodeData(0, 0, 0, (), "/\udcff", b""),
        ConnectionData(1, 0, 1, RingSpec(1, 2, 3), b"", b"", 0, None),
        ConnectionData(1, 0, 0, RingSpec(1, 2, 3), b"", b"", 0, 5),
        ConnectionData(1, 1, 0, RingSpec(1, 2, 3)),
        ConnectionData(1, 0, 0, SocketSpec(3)),
        ConnectionData(1, 5, 0, OpaqueSpec(b"short")),
        GlobalData(2**31, 0),
        GlobalQuotaData((QuotaValue("a\0b", 1),), ()),
        WatchData(1, "/a", "t" * 70000),
        "not a record",
    ],
)
def test_bad_fields_are_stream_write_errors(record: Record) -> None:
    with pytest.raises(StreamWriteError):
        encode_record(record)


# --- targets ------------------------------------------------------------------------


def test_c_head_watch_ext_uses_c_reader_layout() -> None:
    data = encode_record(WatchDataExtended(3, "/a", "t", 5), target="c-head")
    # depth at 8, path at 10, len = ROUNDUP(10 + 3 + 2, 8) = 16
    assert data == struct.pack("<IIIHHH", 8, 16, 3, 3, 2, 5) + b"/a\0t\0" + b"\0"


def test_spec_watch_ext_layout() -> None:
    data = encode_record(WatchDataExtended(3, "/a", "t", 5))
    assert data == struct.pack("<IIIHHHH", 8, 24, 3, 3, 2, 5, 0) + b"/a\0t\0" + b"\0" * 7


@pytest.mark.parametrize("target", ["c-head", "c-4.17"])
def test_c_targets_refuse_transactions(target: str) -> None:
    version = 1 if target == "c-4.17" else 2
    with pytest.raises(StreamWriteError, match="TRANSACTION_DATA"):
        encode_record(TransactionData(1, 5), version=version, target=target)
    with pytest.raises(StreamWriteError, match="pending-transaction node"):
        encode_record(TX_NODE, version=version, target=target)


def test_c_head_writer_refuses_domain_it_cannot_find() -> None:
    w = StreamWriter(io.BytesIO(), target="c-head")
    w.write(NODE)
    w.write(DomainData(0, 0, ()))  # known: owns /
    with pytest.raises(StreamWriteError, match="domain 1"):
        w.write(DomainData(1, 0, ()))
    w.write(RING1)
    w.write(DomainData(1, 0, ()))  # now known through its ring connection
    with pytest.raises(StreamWriteError, match="domain 9"):
        write_stream([NODE, DomainData(9, 0, ())], target="c-head")


def test_c417_target_is_version_1_only() -> None:
    assert write_stream([End()], target="c-4.17")[8:12] == b"\0\0\0\x01"
    with pytest.raises(StreamWriteError, match="version 1"):
        write_stream([End()], version=2, target="c-4.17")


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (GlobalQuotaData((), ()), "GLOBAL_QUOTA_DATA"),
        (DomainData(0, 0, ()), "DOMAIN_DATA"),
        (UnknownRecord(42, b""), "unknown type 42"),
        (RING1, "unique-id"),
        (WatchDataExtended(1, "/a", "t"), "WATCH_DATA_EXTENDED"),
    ],
)
def test_c417_refuses_what_it_would_drop(record: Record, match: str) -> None:
    with pytest.raises(StreamWriteError, match=match):
        encode_record(record, version=1, target="c-4.17")


# --- adapt_for_target ------------------------------------------------------------------


def test_adapt_v1_lossless_unlimited_watch() -> None:
    out, dropped = adapt_for_target(
        [WatchDataExtended(1, "/a", "t", 0xFFFF), End()], 1, "spec", lossy=False
    )
    assert out == [WatchData(1, "/a", "t"), End()] and dropped == []


def test_adapt_v1_depth_and_features_need_lossy() -> None:
    records: list[Record] = [WatchDataExtended(1, "/a", "t", 2), DomainData(3, 6, ()), End()]
    with pytest.raises(StreamWriteError) as exc:
        adapt_for_target(records, 1, "spec", lossy=False)
    assert "depth 2" in str(exc.value) and "features 0x6 of domain 3" in str(exc.value)
    out, dropped = adapt_for_target(records, 1, "spec", lossy=True)
    assert out == [WatchData(1, "/a", "t"), DomainData(3, 0, ()), End()]
    assert len(dropped) == 2
    write_stream(out, version=1)


def test_adapt_spec_v2_changes_nothing() -> None:
    records: list[Record] = [TransactionData(1, 2), TX_NODE, WatchDataExtended(1, "/a", "t", 2)]
    assert adapt_for_target(records, 2, "spec", lossy=False) == (records, [])


def test_adapt_c_head_drops_transactions_and_orders_like_c() -> None:
    records: list[Record] = [
        NODE,
        DomainData(1, 0, ()),
        DomainData(4, 0, ()),
        WatchData(1, "/w", "a"),
        TransactionData(1, 5),
        TX_NODE,
        RING1,
        GlobalQuotaData((QuotaValue("nodes", 5),), ()),
        GlobalData(-1, 3),
        WatchDataExtended(1, "/x", "b", 1),
        End(),
    ]
    with pytest.raises(StreamWriteError, match="would lose"):
        adapt_for_target(records, 2, "c-head", lossy=False)
    out, dropped = adapt_for_target(records, 2, "c-head", lossy=True)
    assert out == [
        GlobalData(-1, 3),
        GlobalQuotaData((QuotaValue("nodes", 5),), ()),
        RING1,
        WatchData(1, "/w", "a"),
        WatchDataExtended(1, "/x", "b", 1),
        NODE,
        DomainData(1, 0, ()),
        End(),
    ]
    assert dropped == [
        "transaction 5 of connection 1",
        'node "/local/domain/1/x" of transaction 5 of connection 1',
        "DOMAIN_DATA of domain 4 (C HEAD cannot find that domain)",
    ]
    data = write_stream(out, target="c-head")
    assert read_records(data)[1] == out


def test_adapt_c417() -> None:
    records: list[Record] = [
        GlobalData(-1, 3),
        GlobalQuotaData((), ()),
        RING1,
        WatchDataExtended(1, "/x", "b", 0xFFFF),
        NODE,
        DomainData(1, 0, ()),
        UnknownRecord(99, b""),
        End(),
    ]
    out, dropped = adapt_for_target(records, 1, "c-4.17", lossy=True)
    assert out == [
        GlobalData(-1, 3),
        ConnectionData(1, 0, 0, RingSpec(1, 0x7FF4, 9), b"", b"", 0, None),
        WatchData(1, "/x", "b"),
        NODE,
        End(),
    ]
    assert len(dropped) == 4
    assert any("unique-id" in d for d in dropped)
    write_stream(out, target="c-4.17")


def test_adapt_c417_of_the_real_c417_dump_is_lossless() -> None:
    data = (DATA_DIR / "basic.state").read_bytes()
    _, records = read_records(data)
    out, dropped = adapt_for_target(records, 1, "c-4.17", lossy=False)
    assert dropped == [] and out == records
    assert write_stream(out, target="c-4.17") == data


# --- StreamWriter ------------------------------------------------------------------------


def test_stream_writer_path_and_file(tmp_path: Path) -> None:
    path = tmp_path / "out.state"
    with StreamWriter(path, version=2) as w:
        w.write_all(WORKED_EXAMPLE_RECORDS)
    assert path.read_bytes() == WORKED_EXAMPLE
    buf = io.BytesIO()
    w2 = StreamWriter(buf)
    for r in WORKED_EXAMPLE_RECORDS:
        w2.write(r)
    w2.close()
    assert not buf.closed and buf.getvalue() == WORKED_EXAMPLE


def test_writer_writes_no_implicit_end() -> None:
    assert write_stream([GlobalData(1, 2)]) == preamble(2, False) + struct.pack("<IIii", 1, 8, 1, 2)


def test_writer_matches_hand_bytes_big_endian_v1() -> None:
    body = body_domain(True, 3, 0, [(b"nodes", 9)])
    expected = stream(1, True, frame(True, 7, body))
    assert (
        write_stream(
            [DomainData(3, 0, (QuotaValue("nodes", 9),)), End()], version=1, big_endian=True
        )
        == expected
    )


# --- round trips (hypothesis) ------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("big", [False, True])
def test_round_trip_generated(version: int, big: bool) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(record_lists(version))
    def check(records: list[Record]) -> None:
        data = write_stream(records, version=version, big_endian=big)
        header, back = read_records(data)
        assert (header.version, header.big_endian) == (version, big)
        assert back == records
        assert write_stream(back, version=version, big_endian=big) == data

    check()


@settings(max_examples=40, deadline=None)
@given(record_lists(2), st.booleans())
def test_byte_order_conversion_keeps_records(records: list[Record], big: bool) -> None:
    data = write_stream(records, big_endian=big)
    other = write_stream(read_records(data)[1], big_endian=not big)
    assert read_records(other)[1] == records
    assert len(other) == len(data)


@settings(max_examples=40, deadline=None)
@given(record_lists(2))
def test_adapt_then_write_always_works(records: list[Record]) -> None:
    for version, target in ((1, "spec"), (2, "c-head"), (1, "c-head"), (1, "c-4.17")):
        out, dropped = adapt_for_target(records, version, target, lossy=True)
        # adapt may refuse nothing the writer refuses, except fields out of the
        # writer's own range, which generated records never have
        data = write_stream(out, version=version, target=target)
        assert read_records(data)[1] == out
        assert isinstance(dropped, list)


# --- the real C 4.17 reader restores what we write ------------------------------------------

_REWRITE = """
import sys
from pyxenstored.stream import End, NodeData, NodePerm, read_records, write_stream
from pyxenstored.stream.writer import adapt_for_target
path = sys.argv[1]
_, records = read_records(path)
extra = [
    NodeData(0, 0, 0, (NodePerm("n", 0, 0), NodePerm("r", 0, 1)), "/injected", b"by pyxenstored"),
    NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/injected/child", bytes(range(1, 20))),
]
records = records[:-1] + extra + [End()]
out, dropped = adapt_for_target(records, 1, "c-4.17", lossy=False)
with open(path, "wb") as f:
    f.write(write_stream(out, target="c-4.17"))
"""


@pytest.mark.reference
def test_c417_daemon_restores_a_stream_we_wrote(tmp_path: Path) -> None:
    """Live update of the C 4.17 daemon where our writer rewrites the state file in between."""
    import os
    import subprocess
    import sys

    from tests.launcher import start_reference
    from tests.util import REPO, XEN_BIN, require, require_peer, require_tool

    require_peer()
    require((XEN_BIN / "xenstore-control").exists(), "xen-utils-4.17 xenstore-control")
    read_tool = require_tool("xenstore-read")
    write_tool = require_tool("xenstore-write")
    run = tmp_path / "ref"
    env = dict(os.environ, XENSTORED_PATH=str(run / "socket"))
    ref = start_reference(run, env=env, optional=True)
    try:
        subprocess.run([write_tool, "/tool/a", "kept"], env=env, check=True)
        script = tmp_path / "rewrite.py"
        script.write_text(_REWRITE)
        wrapper = tmp_path / "wrapper.sh"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"PYTHONPATH={REPO / 'src'} {sys.executable} {script} {run / 'state_dump'}"
            f" >{tmp_path / 'rewrite.log'} 2>&1 || exit 1\n"
            f'exec {XEN_BIN / "xenstored"} "$@"\n'
        )
        wrapper.chmod(0o755)
        done = subprocess.run(
            [str(XEN_BIN / "xenstore-control"), "live-update", str(wrapper)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (done.stdout, done.stderr)

        def read(path: str) -> str:
            return subprocess.run(
                [read_tool, path], env=env, check=True, capture_output=True, text=True
            ).stdout.strip()

        assert read("/injected") == "by pyxenstored"
        assert read("/tool/a") == "kept"
        perms = subprocess.run(
            [require_tool("xenstore-ls"), "-p", "/injected"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert "child" in perms
        assert (
            "(n0,r1)"
            in subprocess.run(
                [require_tool("xenstore-ls"), "-p", "/"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    finally:
        ref.stop()
