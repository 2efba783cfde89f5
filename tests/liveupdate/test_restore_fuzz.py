"""Restoring damaged streams: a RestoreError naming the place, never a traceback."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pyxenstored.migrate import RestoreError, StoreOnlySink, restore_stream
from pyxenstored.store import Store

C417 = (Path(__file__).resolve().parent.parent / "data" / "c417" / "basic.state").read_bytes()


def _restore(data: bytes) -> None:
    store = Store()
    try:
        restore_stream(data, store, StoreOnlySink(store))
    except RestoreError as exc:
        assert str(exc)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(C417) - 1), st.integers(0, 255)), max_size=6))
def test_byte_flips(flips: list[tuple[int, int]]) -> None:
    data = bytearray(C417)
    for pos, value in flips:
        data[pos] = value
    _restore(bytes(data))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(C417)))
def test_truncation(cut: int) -> None:
    _restore(C417[:cut])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_after_a_preamble(tail: bytes) -> None:
    _restore(C417[:16] + tail)


def test_bad_node_paths_are_refused() -> None:
    import pytest

    from pyxenstored.migrate import restore_state
    from pyxenstored.stream import End, NodeData, NodePerm

    perms = (NodePerm("n", 0, 0),)
    for bad in ("relative", "/a/", "/a//b", "/ü", ""):
        records = [NodeData(0, 0, 0, perms, "/", b""), NodeData(0, 0, 0, perms, bad, b""), End()]
        store = Store()
        with pytest.raises(RestoreError, match="not valid"):
            restore_state(records, store, StoreOnlySink(store))
