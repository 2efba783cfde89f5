"""wire: header layout, error table, argument and path rules (xs_wire.h; C's core.c:onearg,
get_strings, canonicalize and domain.c:parse_domid).

``is_child`` is checked against the results of C's ``watch.c:is_child``."""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxenstored import wire
from pyxenstored.wire import XsError


def test_header_is_four_native_u32() -> None:
    raw = struct.pack("=IIII", 2, 7, 0, 5)
    h = wire.Header.unpack(raw)
    assert (h.type, h.req_id, h.tx_id, h.len) == (2, 7, 0, 5)
    assert h.pack() == raw
    assert wire.HEADER_SIZE == 16
    order = "little" if sys.byteorder == "little" else "big"
    assert wire.pack_message(11, 1, 2, b"ab")[:4] == (11).to_bytes(4, order)


def test_iter_frames_walks_back_to_back_messages() -> None:
    # Two whole messages (payloads 3 and 0 bytes), then a torn header of 5 bytes.
    data = struct.pack("=IIII", 2, 7, 0, 3) + b"ab\0" + struct.pack("=IIII", 16, 8, 9, 0) + b"12345"
    assert list(wire.iter_frames(data)) == [(0, 2, 7, 0, 3), (19, 16, 8, 9, 0)]
    # From an offset, up to an end: the second header alone.
    assert list(wire.iter_frames(data, 19, 35)) == [(19, 16, 8, 9, 0)]
    # Fewer than 16 bytes: nothing.
    assert list(wire.iter_frames(data[:15])) == []


def test_iter_frames_stops_after_a_payload_past_the_end() -> None:
    # The header announces 100 bytes, only 4 follow: yielded once, then the walk ends.
    data = struct.pack("=IIII", 11, 1, 0, 100) + b"abcd" + struct.pack("=IIII", 2, 2, 0, 0)
    assert list(wire.iter_frames(data)) == [(0, 11, 1, 0, 100)]


@pytest.mark.parametrize("order", ["<", ">"])
def test_iter_frames_in_either_byte_order(order: str) -> None:
    data = struct.pack(order + "IIII", 4, 0x01020304, 5, 2) + b"x\0"
    assert list(wire.iter_frames(data, order=order)) == [(0, 4, 0x01020304, 5, 2)]


def test_error_table_order_is_the_wire_order() -> None:
    assert wire.ERROR_NAMES[0] == "EINVAL"
    assert wire.ERROR_NAMES[12] == "EAGAIN"
    assert wire.ERROR_NAMES[15] == "EPERM"
    assert len(wire.ERROR_NAMES) == 16


def test_unknown_errno_becomes_einval() -> None:
    assert XsError("EBADF").name == "EINVAL"
    assert XsError("ENOENT").payload == b"ENOENT\0"


def test_message_types() -> None:
    assert wire.MsgType.SET_QUOTA == 26
    assert wire.TYPE_COUNT == 27
    assert wire.MsgType.WATCH_EVENT == 15


@pytest.mark.parametrize(
    "payload,ok",
    [(b"a\0", b"a"), (b"\0", b""), (b"", None), (b"a", None), (b"a\0b\0", None), (b"a\0b", None)],
)
def test_onearg(payload: bytes, ok: bytes | None) -> None:
    if ok is None:
        with pytest.raises(XsError) as e:
            wire.onearg(payload)
        assert e.value.name == "EINVAL"
    else:
        assert wire.onearg(payload) == ok


def test_split_strings_ignores_tail() -> None:
    assert wire.split_strings(b"a\0b\0tail") == [b"a", b"b"]
    assert wire.split_strings(b"") == []
    assert wire.split_strings(b"\0") == [b""]


@pytest.mark.parametrize(
    "arg,value",
    [
        (b"0", 0),
        (b"", 0),
        (b"5", 5),
        (b"65535", 65535),
        (b"65536", None),
        (b"5x", None),
        (b"-1", None),
        (b"x", None),
    ],
)
def test_parse_domid(arg: bytes, value: int | None) -> None:
    if value is None:
        with pytest.raises(XsError):
            wire.parse_domid(arg)
    else:
        assert wire.parse_domid(arg) == value


@pytest.mark.parametrize(
    "arg,value",
    [
        (b"0x1f", 31),
        (b"017", 15),
        (b"0", 0),
        (b"12", 12),
        (b"-3", -3),
        (b"", None),
        (b"1a", None),
        (b"08", None),
    ],
)
def test_strtol_base0(arg: bytes, value: int | None) -> None:
    assert wire.c_strtol0(arg) == value


def test_atoi() -> None:
    assert wire.c_atoi(b"12abc") == 12
    assert wire.c_atoi(b"abc") == 0
    assert wire.c_atoi(b" -4") == -4


@pytest.mark.parametrize(
    "raw,domid,expect",
    [
        (b"/a/b", 0, "/a/b"),
        (b"/", 0, "/"),
        (b"a/b", 0, "/local/domain/0/a/b"),
        (b"name", 5, "/local/domain/5/name"),
        (b"@releaseDomain", 0, "@releaseDomain"),
    ],
)
def test_canonicalize_ok(raw: bytes, domid: int, expect: str) -> None:
    assert wire.canonicalize(raw, domid, allow_special=True) == expect


@pytest.mark.parametrize("raw", [b"/a//b", b"/a/", b"", b"/a b", b"/a\xff", b"/a.b", b"a/"])
def test_canonicalize_einval(raw: bytes) -> None:
    with pytest.raises(XsError) as e:
        wire.canonicalize(raw, 0)
    assert e.value.name == "EINVAL"


def test_special_paths_only_where_allowed() -> None:
    with pytest.raises(XsError):
        wire.canonicalize(b"@introduceDomain", 0)


def test_relative_length_strips_domain_home() -> None:
    assert wire.relative_length("/local/domain/5/abc") == 3
    assert wire.relative_length("/abc") == 4


@pytest.mark.parametrize(
    "path,parent,depth,expect",
    [
        ("/a", "/a", -1, True),
        ("/a", "/a", 0, True),
        ("/a/b", "/a", 0, False),
        ("/a/b", "/a", 1, True),
        ("/a/b/c", "/a", 1, False),
        ("/a/b/c", "/a", 2, True),
        ("/ab", "/a", -1, False),
        ("/x", "/", -1, True),
        ("/x", "/", 0, False),
        ("/x", "/", 1, True),
        ("/x/y", "/", 1, False),
        ("/x/y", "/", 2, True),
        ("@releaseDomain/5", "@releaseDomain", 1, True),
        ("@releaseDomain/5", "@releaseDomain", 0, False),
    ],
)
def test_is_child_matches_c_is_child(path: str, parent: str, depth: int, expect: bool) -> None:
    assert wire.is_child(path, parent, depth) is expect


@given(st.binary(max_size=64))
def test_canonicalize_never_raises_other_errors(raw: bytes) -> None:
    try:
        out = wire.canonicalize(raw, 3, allow_special=True)
    except XsError as e:
        assert e.name == "EINVAL"
    else:
        assert out.startswith(("/", "@"))
