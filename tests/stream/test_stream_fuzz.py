"""Fuzzing: whatever the bytes, the reader raises StreamError or returns records."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.stream.conftest import DATA_DIR, WORKED_EXAMPLE, preamble, record_lists

from pyxenstored.stream import (
    StreamError,
    StreamReader,
    inspect_record,
    read_records,
    write_stream,
)

C417 = (DATA_DIR / "basic.state").read_bytes()


def _read_everything(data: bytes) -> None:
    """Decode ``data`` both ways (records, and raw + inspect); only StreamError may escape."""
    try:
        read_records(data)
    except StreamError as exc:
        assert "\n" not in str(exc)
    try:
        reader = StreamReader(io.BytesIO(data))
        for raw in reader.iter_raw():
            inspect_record(raw, reader.header)
    except StreamError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=128))
def test_random_bytes(data: bytes) -> None:
    _read_everything(data)


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.sampled_from([1, 2]), st.binary(max_size=200))
def test_random_records_after_valid_preamble(big: bool, version: int, data: bytes) -> None:
    _read_everything(preamble(version, big) + data)


@settings(max_examples=200, deadline=None)
@given(
    st.booleans(),
    st.lists(
        st.tuples(st.integers(0, 12), st.binary(max_size=40)).map(
            lambda t: struct.pack("<II", t[0], len(t[1])) + t[1] + b"\0" * (-len(t[1]) & 7)
        ),
        max_size=6,
    ),
)
def test_random_bodies_with_consistent_framing(end: bool, frames: list[bytes]) -> None:
    """Well-framed records of every type with random bodies: deep decoding paths."""
    data = preamble(2, False) + b"".join(frames) + (b"\0" * 8 if end else b"")
    _read_everything(data)


@pytest.mark.parametrize("name", ["worked-example", "c417"])
def test_truncation_at_every_offset(name: str) -> None:
    data = WORKED_EXAMPLE if name == "worked-example" else C417
    for cut in range(len(data)):
        with pytest.raises(StreamError):
            read_records(data[:cut])
        with pytest.raises(StreamError):
            list(StreamReader(io.BytesIO(data[:cut])).iter_raw())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([WORKED_EXAMPLE, C417]), st.data())
def test_byte_flips(base: bytes, data: st.DataObject) -> None:
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(base) - 1), st.integers(1, 255)), min_size=1, max_size=4
        )
    )
    mutated = bytearray(base)
    for pos, mask in flips:
        mutated[pos] ^= mask
    _read_everything(bytes(mutated))


@settings(max_examples=100, deadline=None)
@given(record_lists(2), st.data())
def test_flips_and_cuts_of_generated_streams(records: list[object], data: st.DataObject) -> None:
    stream = write_stream(records)  # type: ignore[arg-type]
    pos = data.draw(st.integers(0, len(stream) - 1))
    mutated = bytearray(stream)
    mutated[pos] ^= data.draw(st.integers(1, 255))
    _read_everything(bytes(mutated))
    cut = data.draw(st.integers(0, len(stream) - 1))
    with pytest.raises(StreamError):
        read_records(stream[:cut])
