"""oxenstored's dump format: the reader and writer against hand-built lines.

The vectors are written from oxenstored's own writer functions
(``xenstored.ml:DB.to_channel``, ``event.ml:dump``, ``domain.ml:dump``,
``connection.ml:dump``, ``utils.ml:hexify``, ``perms.ml:Node.to_string``),
with the hex spelled out by hand, never produced by our writer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxenstored.stream.oxenstored import (
    HEADER,
    DomLine,
    EvtchnDevLine,
    GlobalLine,
    IgnoredLine,
    OxDump,
    OxenstoredFormatError,
    OxPerm,
    SocketLine,
    StoreLine,
    WatchLine,
    format_dump,
    format_line,
    looks_like_dump,
    parse_dump,
    parse_line,
)
from pyxenstored.stream.oxenstored_format import format_perms, parse_perms

DATA = Path(__file__).resolve().parent.parent / "data" / "oxenstored"

# A dump as 4.17 writes it for: listening socket fd 3, event-channel device
# fd 5 with DOM_EXC on port 1, dom0 (page from xsd_kva: mfn 0, xsd_port 1,
# bound locally to 2), guest 7 (ring frame 4660, its port 9, ours 3) with a
# relative watch "data" token "t1", a socket fd 8 watching "@releaseDomain"
# with token "a,b", and the tree /, /local, /local/domain/7 = "hi"
# owned by 7 with r0, plus the special node @introduceDomain.
HAND_BUILT = (
    b"$xenstored-dump-format\n"
    b"global,3\n"
    b"evtchn-dev,5,1\n"
    b"dom,0,0,1,2\n"
    b"dom,7,4660,9,3\n"
    b"watch,7,64617461,7431\n"
    b"socket,8\n"
    b"watch,-8,4072656c65617365446f6d61696e,612c62\n"
    b"store,2f,6e30,\n"
    b"store,2f6c6f63616c,6e30,\n"
    b"store,2f6c6f63616c2f646f6d61696e,6e30,\n"
    b"store,2f6c6f63616c2f646f6d61696e2f37,6e37007230,6869\n"
    b"store,2f40696e74726f64756365446f6d61696e,6e30,\n"
)
HAND_BUILT_LINES = (
    GlobalLine(3),
    EvtchnDevLine(5, 1),
    DomLine(0, 0, 1, 2),
    DomLine(7, 4660, 9, 3),
    WatchLine(7, b"data", b"t1"),
    SocketLine(8),
    WatchLine(-8, b"@releaseDomain", b"a,b"),
    StoreLine(b"/", (OxPerm("n", 0),), b""),
    StoreLine(b"/local", (OxPerm("n", 0),), b""),
    StoreLine(b"/local/domain", (OxPerm("n", 0),), b""),
    StoreLine(b"/local/domain/7", (OxPerm("n", 7), OxPerm("r", 0)), b"hi"),
    StoreLine(b"/@introduceDomain", (OxPerm("n", 0),), b""),
)


def test_hand_built_dump_reads_field_by_field() -> None:
    dump = parse_dump(HAND_BUILT)
    assert dump.lines == HAND_BUILT_LINES
    assert dump.final_newline


def test_hand_built_dump_is_written_back_byte_for_byte() -> None:
    assert format_dump(OxDump(HAND_BUILT_LINES)) == HAND_BUILT


def test_line_numbers_count_the_header() -> None:
    numbered = dict(parse_dump(HAND_BUILT).numbered())
    assert numbered[2] == GlobalLine(3)
    assert numbered[13] == HAND_BUILT_LINES[-1]


def test_watch_of_a_socket_names_its_descriptor() -> None:
    assert WatchLine(-8, b"/x", b"t").socket_fd == 8
    assert WatchLine(7, b"/x", b"t").socket_fd is None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # xenstored.ml: "there might be more parameters here, e.g. a RO socket
        # from a previous version: ignore it"
        (b"global,3,4", GlobalLine(3, (b"4",))),
        (b"global,-1", GlobalLine(-1)),
        # dom lines from before 4.17 had no local port
        (b"dom,4,100,7", DomLine(4, 100, 7, None)),
        (b"dom,4,100,7,8,later", DomLine(4, 100, 7, 8, (b"later",))),
        # %nd: the mfn is a signed native int
        (b"dom,4,-1,7,8", DomLine(4, -1, 7, 8)),
        (b"dom,4,9223372036854775807,7,8", DomLine(4, (1 << 63) - 1, 7, 8)),
        (b"socket,12", SocketLine(12)),
        (b"watch,0,,", WatchLine(0, b"", b"")),
        # a value with NUL, comma, newline and high bytes survives hex
        (b"store,2f62,6230,002c0aff", StoreLine(b"/b", (OxPerm("b", 0),), b"\x00,\n\xff")),
        (
            b"store,2f61,7230007731006e32006233,",
            StoreLine(b"/a", (OxPerm("r", 0), OxPerm("w", 1), OxPerm("n", 2), OxPerm("b", 3)), b""),
        ),
    ],
)
def test_each_line_type(text: bytes, line: object) -> None:
    assert parse_line(text) == line
    assert format_line(parse_line(text)) == text


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (b"", "unknown-line"),
        (b"transaction,1,2", "unknown-line"),
        (b"Store,2f,6e30,", "unknown-line"),
        (b"global", "bad-field-count"),
        (b"evtchn-dev,5", "bad-field-count"),
        (b"evtchn-dev,5,1,2", "bad-field-count"),
        (b"dom,1,2", "bad-field-count"),
        (b"socket", "bad-field-count"),
        (b"socket,1,2", "bad-field-count"),
        (b"watch,1,2f", "bad-field-count"),
        (b"store,2f,6e30", "bad-field-count"),
        (b"store,2f,6e30,,", "bad-field-count"),
        (b"global,x", "bad-number"),
        (b"global,0x3", "bad-number"),  # int_of_string would take it; we do not
        (b"socket,007", "bad-number"),
        (b"socket,-0", "bad-number"),
        (b"socket,+7", "bad-number"),
        (b"socket,4611686018427387904", "bad-number"),  # past OCaml's max_int
        (b"dom,1,2,3,", "bad-number"),
        (b"dom,1,9223372036854775808,3,4", "bad-number"),
        (b"store,2F,6e30,", "bad-hex"),
        (b"store,2f6,6e30,", "bad-hex"),
        (b"store,2f,6e30,zz", "bad-hex"),
        (b"watch,1,2f,7x", "bad-hex"),
        (b"store,2f,,", "bad-perms"),  # "permvec empty"
        (b"store,2f,6e3000,", "bad-perms"),  # trailing NUL: an empty entry
        (b"store,2f,7830,", "bad-perms"),  # letter x
        (b"store,2f,72,", "bad-perms"),  # no domid
        (b"store,2f,722d31,", "bad-perms"),  # r-1
        (b"store,2f,723031,", "bad-perms"),  # r01
    ],
)
def test_lines_oxenstored_skips_are_kept_verbatim(text: bytes, rule: str) -> None:
    line = parse_line(text)
    assert isinstance(line, IgnoredLine)
    assert line.rule == rule
    assert line.text == text
    assert format_line(line) == text


def test_perms_string_form() -> None:
    perms = (OxPerm("n", 5), OxPerm("r", 0), OxPerm("b", 65535))
    assert format_perms(perms) == b"n5\x00r0\x00b65535"
    assert parse_perms(b"n5\x00r0\x00b65535") == perms
    assert str(perms[0]) == "n5"
    with pytest.raises(ValueError):
        parse_perms(b"")


@pytest.mark.parametrize(
    "data",
    [b"", b"xenstore\x00\x00\x00\x01", b"$xenstored-dump-format\r\nglobal,3\r\n", b"global,3\n"],
)
def test_no_header_is_the_only_fatal_error(data: bytes) -> None:
    with pytest.raises(OxenstoredFormatError) as exc:
        parse_dump(data)
    assert exc.value.line == 1
    assert "header" in str(exc.value) or "empty" in str(exc.value)
    assert not looks_like_dump(data)


def test_header_alone() -> None:
    assert parse_dump(HEADER) == OxDump((), final_newline=False)
    assert parse_dump(HEADER + b"\n") == OxDump((), final_newline=True)
    assert looks_like_dump(HEADER) and looks_like_dump(HEADER + b"\nglobal,3\n")
    assert not looks_like_dump(HEADER + b"x")


def test_last_line_without_newline_is_read_and_remembered() -> None:
    data = HAND_BUILT[:-1]
    dump = parse_dump(data)
    assert not dump.final_newline
    assert dump.lines == HAND_BUILT_LINES
    assert format_dump(dump) == data


def test_cut_inside_a_line() -> None:
    cut = HAND_BUILT[:-10]
    dump = parse_dump(cut)
    assert isinstance(dump.lines[-1], IgnoredLine)
    assert format_dump(dump) == cut


@pytest.mark.parametrize("name", ["basic.db", "minimal.db"])
def test_real_dumps_read_without_ignored_lines_and_write_back_identically(name: str) -> None:
    data = (DATA / name).read_bytes()
    dump = parse_dump(data)
    assert not [line for line in dump.lines if isinstance(line, IgnoredLine)]
    assert format_dump(dump) == data


def test_real_basic_dump_contents() -> None:
    dump = parse_dump((DATA / "basic.db").read_bytes())
    lines = dump.lines
    assert lines[:2] == (GlobalLine(3), EvtchnDevLine(5, 1))
    doms = {line.domid: line for line in lines if isinstance(line, DomLine)}
    assert doms[0] == DomLine(0, 0, 1, 2)
    assert doms[1] == DomLine(1, 1001, 11, 3)
    assert doms[2] == DomLine(2, 1002, 12, 4)
    watches = {(w.conn, w.path, w.token) for w in lines if isinstance(w, WatchLine)}
    assert (1, b"device", b"dev") in watches  # relative path kept as given
    assert (-7, b"backend", b"rel,tok") in watches
    nodes = {s.path: s for s in lines if isinstance(s, StoreLine)}
    assert nodes[b"/tool/binary"].value == b"\x00\x01,\n\xfe\xff bin\x00ary"
    assert nodes[b"/tool/name"].perms == (
        OxPerm("r", 0),
        OxPerm("w", 1),
        OxPerm("n", 2),
        OxPerm("b", 3),
    )
    assert len(nodes[b"/tool/long"].value) == 2048
    # store.ml:traversal walks each node's children in reverse name order
    roots = [s.path for s in lines if isinstance(s, StoreLine) and s.path.count(b"/") == 1]
    assert roots == [b"/", b"/vm", b"/tool", b"/local", b"/@releaseDomain", b"/@introduceDomain"]


# --- properties ------------------------------------------------------------------

_ints = st.integers(min_value=-(1 << 62), max_value=(1 << 62) - 1)
_raw = st.binary(max_size=24)
_perms = st.lists(
    st.builds(OxPerm, st.sampled_from("nrwb"), st.integers(0, 70000)), min_size=1, max_size=4
).map(tuple)
_field = st.binary(max_size=6).filter(lambda b: b"," not in b and b"\n" not in b)
_typed_lines = st.one_of(
    st.builds(GlobalLine, _ints, st.lists(_field, max_size=2).map(tuple)),
    st.builds(EvtchnDevLine, _ints, _ints),
    st.builds(
        DomLine,
        _ints,
        st.integers(-(1 << 63), (1 << 63) - 1),
        _ints,
        st.none() | _ints,
        st.just(()),
    ),
    st.builds(DomLine, _ints, _ints, _ints, _ints, st.lists(_field, max_size=2).map(tuple)),
    st.builds(SocketLine, _ints),
    st.builds(WatchLine, _ints, _raw, _raw),
    st.builds(StoreLine, _raw, _perms, _raw),
)


@settings(max_examples=300)
@given(st.lists(_typed_lines, max_size=12), st.booleans())
def test_written_dumps_read_back_equal(lines: list[object], final: bool) -> None:
    dump = OxDump(tuple(lines), final)  # type: ignore[arg-type]
    assert parse_dump(format_dump(dump)) == dump


_fragments = st.sampled_from(
    [b"global", b"evtchn-dev", b"dom", b"socket", b"watch", b"store", b",", b"-", b"0"]
    + [b"1", b"42", b"2f", b"6e30", b"7230007731", b"zz", b"2F", b"\xff", b" ", b"00"]
)
_line_text = st.lists(_fragments, max_size=8).map(b"".join) | st.binary(max_size=30).map(
    lambda b: b.replace(b"\n", b"")
)


@settings(max_examples=400)
@given(st.lists(_line_text, max_size=10), st.booleans())
def test_any_text_after_the_header_round_trips(lines: list[bytes], final: bool) -> None:
    data = b"\n".join([HEADER, *lines]) + (b"\n" if final else b"")
    assert format_dump(parse_dump(data)) == data


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_the_format_error(data: bytes) -> None:
    for candidate in (data, HEADER + b"\n" + data):
        try:
            dump = parse_dump(candidate)
        except OxenstoredFormatError:
            continue
        assert format_dump(dump) == candidate
