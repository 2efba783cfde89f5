"""Bounded-memory diff and convert: the in-memory engines' results, with a capped hold.

The references are the in-memory engines (``diff_states(state_of(...))``
and ``adapt_for_target``) on the same records; the bounded engines run with
tiny limits so that every input spills and merges through several levels of
runs.  Their hold is checked against the cap: memory bounded by design, not
by measurement.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxenstored.cli.stream_tool import load_state, main
from pyxenstored.stream.byteorder import swap_pending
from pyxenstored.stream.convert_bounded import BoundedConverter
from pyxenstored.stream.diff import diff_states, state_of
from pyxenstored.stream.diff_bounded import DiffRun, diff_streams
from pyxenstored.stream.reader import StreamReader
from pyxenstored.stream.records import (
    CONN_FIELD_UNIQUE_ID,
    DEPTH_UNLIMITED,
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
)
from pyxenstored.stream.spill import ExternalSorter, SpillLimits, Spool
from pyxenstored.stream.synth import SynthConfig, synth_records, write_synth
from pyxenstored.stream.writer import TARGETS, StreamWriteError, adapt_for_target, write_stream

TINY = SpillLimits(cap=3, cap_bytes=1 << 20, fan_in=2, chunk=2)


def _msg(big: bool, mtype: int, req: int, payload: bytes) -> bytes:
    """One wire message (xsd_sockmsg header from xenstore.txt: type, req_id, tx_id, len)."""
    return struct.pack(">IIII" if big else "<IIII", mtype, req, 0, len(payload)) + payload


def _node(path: str, value: bytes = b"v", owner: int = 0, conn: int = 0, tx: int = 0) -> NodeData:
    perms = (NodePerm("n", 0, owner), NodePerm("r", 0, 5))
    return NodeData(conn, tx, 1 if conn else 0, perms, path, value)


def _pool(big: bool) -> list[Record]:
    """Records that touch every field of a diff state, with colliding keys."""
    ring = RingSpec(domid=5, tdomid=0x7FF4, evtchn=3)
    return [
        GlobalData(3, 4),
        GlobalData(3, 5),
        GlobalQuotaData((QuotaValue("nodes", 1000),), (QuotaValue("x", 1),)),
        GlobalQuotaData((QuotaValue("nodes", 2000),)),
        ConnectionData(1, 1, 0, SocketSpec(7)),
        ConnectionData(2, 0, CONN_FIELD_UNIQUE_ID, ring, unique_id=0x1234),
        ConnectionData(
            2, 0, 0, ring, in_data=_msg(big, 2, 7, b"/a\0"), out_data=_msg(big, 2, 6, b"x")
        ),
        WatchData(1, "/a", "t"),
        WatchData(2, "/a", "t"),
        WatchDataExtended(2, "/b", "t", 0),
        WatchDataExtended(2, "/b", "t", DEPTH_UNLIMITED),
        WatchData(9, "/orphan", "o"),
        TransactionData(2, 1),
        TransactionData(2, 4),
        _node("/"),
        _node("/a"),
        _node("/a", b"other"),
        _node("/a/b", owner=5),
        _node("/b", owner=6),
        _node("/c\u00e9", owner=5),
        _node("/a", b"tx", conn=2, tx=1),
        NodeData(2, 1, 3, (), "/gone", b""),
        DomainData(0),
        DomainData(5, 1, (QuotaValue("nodes", 10),)),
        DomainData(5, 0, (QuotaValue("pyxenstored:transaction:2:1:1", 0),)),
        DomainData(6, 0, (QuotaValue("watches", 3),)),
        UnknownRecord(12, b"\1\2\3\0\0\0\0\0"),
        UnknownRecord(13, b""),
        End(),
    ]


def _synth(cfg: SynthConfig, big: bool) -> list[Record]:
    """The records of a synthetic stream as read back from its bytes (in that byte order)."""
    buf = io.BytesIO()
    write_synth(buf, cfg, big_endian=big)
    return list(StreamReader(buf.getvalue()))


# --- spill structures ------------------------------------------------------------


def test_sorter_sorts_through_levels_of_runs() -> None:
    limits = SpillLimits(cap=4, fan_in=2, chunk=3)
    sorter = ExternalSorter(io.BytesIO, limits)
    keys = [(i * 7919) % 1000 for i in range(1000)]
    for seq, k in enumerate(keys):
        sorter.add((k, seq, {"payload": k}))
    got = list(sorter)
    assert [g[:2] for g in got] == sorted((k, seq) for seq, k in enumerate(keys))
    assert all(g[2] == {"payload": g[0]} for g in got)
    assert sorter.peak_held <= 4
    assert sorter.runs_written > 250  # runs of 4 items, then merges of merges


def test_spool_keeps_order_and_holds_a_block() -> None:
    spool = Spool(io.BytesIO, SpillLimits(chunk=5))
    for i in range(103):
        spool.add((i, str(i)))
    assert list(spool) == [(i, str(i)) for i in range(103)]
    assert spool.peak_held <= 5


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        SpillLimits(fan_in=1)


# --- diff ---------------------------------------------------------------------------


def _both_diffs(
    a: list[Record], a_big: bool, b: list[Record], b_big: bool, limits: SpillLimits = TINY
) -> tuple[list[str], list[str], DiffRun]:
    want = list(diff_states(state_of(a, a_big), state_of(b, b_big)))
    run = DiffRun()
    got = list(diff_streams(iter(a), a_big, iter(b), b_big, io.BytesIO, limits=limits, run=run))
    return want, got, run


@settings(max_examples=150, deadline=None)
@given(
    st.data(),
    st.booleans(),
    st.booleans(),
    st.integers(min_value=1, max_value=6),
)
def test_diff_equals_the_in_memory_engine(
    data: st.DataObject, a_big: bool, b_big: bool, cap: int
) -> None:
    pool_a, pool_b = _pool(a_big), _pool(b_big)
    picks = st.lists(st.integers(0, len(pool_a) - 1), max_size=40)
    a = [pool_a[i] for i in data.draw(picks)]
    b = [pool_b[i] for i in data.draw(picks)]
    limits = SpillLimits(cap=cap, fan_in=2, chunk=2)
    want, got, run = _both_diffs(a, a_big, b, b_big, limits)
    assert got == want
    assert run.peak_held <= cap


def test_diff_of_synthetic_streams_in_both_byte_orders_and_versions() -> None:
    cfg_a = SynthConfig(domains=12, seed=1, version=2)
    cfg_b = SynthConfig(domains=13, seed=2, version=1, vifs=2)
    for a_big in (False, True):
        for b_big in (False, True):
            a = _synth(cfg_a, a_big)
            b = _synth(cfg_b, b_big)
            want, got, run = _both_diffs(a, a_big, b, b_big, SpillLimits(cap=50, fan_in=3))
            assert want and got == want
            assert run.spilled and run.peak_held <= 50
            # the same stream in the other byte order means the same
            _, same, _ = _both_diffs(a, a_big, _synth(cfg_a, b_big), b_big)
            assert same == []


def test_diff_differences_in_every_field_are_all_reported() -> None:
    pool = _pool(False)
    a = pool[::2]
    b = pool[1::2]
    want, got, run = _both_diffs(a, False, b, False)
    assert got == want
    kinds = {line.split()[1] for line in got}
    assert {"node", "pending", "watch", "connection", "transaction", "domain", "record"} <= kinds
    assert any(line.startswith("~ global") for line in got)
    assert run.spilled


def test_diff_without_spilling_holds_one_batch() -> None:
    pool = _pool(False)
    run = DiffRun()
    got = list(diff_streams(pool, False, pool[:-5], False, io.BytesIO, run=run))
    assert got == list(diff_states(state_of(pool, False), state_of(pool[:-5], False)))
    assert not run.spilled and run.runs_written == 0


def test_diff_hold_stays_under_the_cap_on_a_long_stream() -> None:
    records = list(synth_records(SynthConfig(domains=40, seed=3)))
    assert len(records) > 3000
    run = DiffRun()
    limits = SpillLimits(cap=64, fan_in=4, chunk=16)
    assert (
        list(diff_streams(records, False, records, False, io.BytesIO, limits=limits, run=run)) == []
    )
    assert run.spilled and run.peak_held <= 64
    assert run.runs_written > 2 * len(records) // 64


# --- convert ------------------------------------------------------------------------


def _convert_both(
    records: list[Record],
    src_big: bool,
    big: bool,
    version: int,
    target: str,
    lossy: bool,
    limits: SpillLimits = TINY,
) -> tuple[object, object, BoundedConverter]:
    swapped = [swap_pending(r, src_big) for r in records] if src_big != big else records
    want: object
    try:
        want = adapt_for_target(swapped, version, target, lossy)
    except StreamWriteError as exc:
        want = str(exc)
    drops: list[str] = []
    conv = BoundedConverter(
        version=version,
        target=target,
        lossy=lossy,
        src_big_endian=src_big,
        big_endian=big,
        new_file=io.BytesIO,
        limits=limits,
        on_drop=drops.append,
    )
    got: object
    try:
        got = (list(conv.convert(iter(records))), drops)
    except StreamWriteError as exc:
        got = str(exc)
    return want, got, conv


# c-4.17 reads version 1 only: no version-2 case for it.
TARGET_VERSIONS = [(t, v) for t in TARGETS for v in (1, 2) if not (t == "c-4.17" and v == 2)]


@pytest.mark.parametrize(("target", "version"), TARGET_VERSIONS)
@pytest.mark.parametrize("lossy", [True, False])
@pytest.mark.parametrize(("src_big", "big"), [(False, False), (False, True), (True, False)])
def test_convert_equals_the_in_memory_path(
    target: str, version: int, lossy: bool, src_big: bool, big: bool
) -> None:
    records = _pool(src_big)
    # connections after some of their watches, a second END, records out of C's order
    records = records[7:12] + records[::-1] + [WatchData(4, "/late", "l"), End()]
    want, got, conv = _convert_both(records, src_big, big, version, target, lossy)
    assert got == want
    assert conv.peak_held <= 4 * TINY.chunk + 2 * TINY.cap


@pytest.mark.parametrize("target", TARGETS)
def test_convert_of_a_synthetic_stream(target: str) -> None:
    version = 1 if target == "c-4.17" else 2
    records = list(synth_records(SynthConfig(domains=30, seed=4)))
    limits = SpillLimits(cap=40, fan_in=3, chunk=8)
    want, got, conv = _convert_both(records, False, True, version, target, True, limits)
    assert got == want
    assert conv.peak_held <= 4 * limits.chunk + 2 * limits.cap


@settings(max_examples=100, deadline=None)
@given(st.data(), st.sampled_from(TARGETS), st.booleans())
def test_convert_random_record_lists(data: st.DataObject, target: str, lossy: bool) -> None:
    pool = _pool(False)
    records = [pool[i] for i in data.draw(st.lists(st.integers(0, len(pool) - 1), max_size=30))]
    version = 1 if target == "c-4.17" else data.draw(st.sampled_from([1, 2]))
    want, got, _ = _convert_both(records, False, False, version, target, lossy)
    assert got == want


def test_a_refused_loss_names_the_first_five_and_counts_all() -> None:
    records = [TransactionData(2, i) for i in range(9)]
    want, got, conv = _convert_both(records, False, False, 2, "c-head", False)
    assert isinstance(got, str) and got == want
    assert "(and 4 more)" in got
    assert conv.dropped == 9


# --- the command line uses the bounded engines --------------------------------------


def test_cli_diff_matches_the_in_memory_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.xs", tmp_path / "b.xs"
    write_synth(str(a), SynthConfig(domains=5, seed=1), big_endian=False)
    write_synth(str(b), SynthConfig(domains=6, seed=2, version=1), big_endian=True)
    want = list(diff_states(load_state(str(a)), load_state(str(b))))
    assert main(["diff", str(a), str(b)]) == 1
    assert capsys.readouterr().out.splitlines() == want


@pytest.mark.parametrize("target", TARGETS)
def test_cli_convert_matches_the_in_memory_path(tmp_path: Path, target: str) -> None:
    src, dst = tmp_path / "a.xs", tmp_path / "b.xs"
    write_synth(str(src), SynthConfig(domains=5, seed=1))
    version = 1 if target == "c-4.17" else 2
    records = [swap_pending(r, False) for r in StreamReader(str(src))]
    converted, _ = adapt_for_target(records, version, target, lossy=True)
    want = write_stream(converted, version=version, big_endian=True, target=target)
    args = ["convert", str(src), str(dst), "--endian", "big", "--target", target, "--lossy"]
    assert main(args) == 0
    assert dst.read_bytes() == want
