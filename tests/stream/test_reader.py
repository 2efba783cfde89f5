"""Reader: sources, incremental reading, errors, and the real C 4.17 dump."""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import pytest
from tests.stream.conftest import (
    DATA_DIR,
    WORKED_EXAMPLE,
    WORKED_EXAMPLE_RECORDS,
    body_node,
    body_watch,
    end_record,
    frame,
    preamble,
    stream,
)

from pyxenstored.stream import (
    ConnectionData,
    End,
    GlobalData,
    NodeData,
    RingSpec,
    SocketSpec,
    StreamError,
    StreamReader,
    WatchData,
    inspect_record,
    iter_records,
    read_records,
    write_stream,
)
from pyxenstored.stream import reader as reader_module


class NonSeekable(io.RawIOBase):
    """A pipe-like binary source: no seek, short reads."""

    def __init__(self, data: bytes, step: int = 5) -> None:
        self._data = data
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


# --- sources ---------------------------------------------------------------------


def test_sources_all_give_the_same_records(tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    path.write_bytes(WORKED_EXAMPLE)
    sources: list[object] = [
        WORKED_EXAMPLE,
        bytearray(WORKED_EXAMPLE),
        memoryview(WORKED_EXAMPLE),
        str(path),
        path,
        io.BytesIO(WORKED_EXAMPLE),
        io.BufferedReader(NonSeekable(WORKED_EXAMPLE)),
        NonSeekable(WORKED_EXAMPLE),
    ]
    for source in sources:
        header, records = read_records(source)  # type: ignore[arg-type]
        assert header.version == 2
        assert records == WORKED_EXAMPLE_RECORDS, source


def test_file_object_read_from_its_position_and_left_open() -> None:
    f = io.BytesIO(b"JUNK" + WORKED_EXAMPLE)
    f.seek(4)
    reader = StreamReader(f)
    assert list(reader) == WORKED_EXAMPLE_RECORDS
    reader.close()
    assert not f.closed


@pytest.mark.parametrize("chunk", [1, 3, 8, 13, 64])
def test_records_straddling_read_chunks(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(reader_module, "CHUNK_SIZE", chunk)
    nodes = [
        frame(False, 5, body_node(False, 0, 0, 0, [(b"n", 0, 0)], f"/n{i}".encode(), b"v" * i))
        for i in range(20)
    ]
    data = stream(2, False, *nodes, frame(False, 3, body_watch(False, 1, b"/n1", b"t")))
    expected = read_records(data)[1]
    assert len(expected) == 22
    assert list(StreamReader(io.BytesIO(data))) == expected
    assert list(StreamReader(io.BufferedReader(NonSeekable(data, 7)))) == expected
    raws = list(StreamReader(io.BytesIO(data)).iter_raw())
    assert [r.index for r in raws] == list(range(22))


def test_reader_does_not_read_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "CHUNK_SIZE", 4096)
    node = frame(False, 5, body_node(False, 0, 0, 0, [(b"n", 0, 0)], b"/x", b"y" * 100))
    data = stream(2, False, *([node] * 2000))
    reads: list[int] = []

    class Spy(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            reads.append(-1 if n is None else n)
            return super().read(n)

    reader = StreamReader(Spy(data))
    it = iter(reader)
    next(it)
    assert max(reads) <= 4096  # first record: one chunk, not the file
    assert sum(1 for _ in it) == 2000
    assert all(0 < n <= 4096 for n in reads)


def test_iterate_only_once() -> None:
    reader = StreamReader(WORKED_EXAMPLE)
    list(reader)
    with pytest.raises(RuntimeError):
        list(reader.iter_raw())


def test_iter_records_and_offset() -> None:
    assert list(iter_records(WORKED_EXAMPLE)) == WORKED_EXAMPLE_RECORDS
    reader = StreamReader(WORKED_EXAMPLE)
    assert reader.offset == 16
    list(reader)
    assert reader.offset == len(WORKED_EXAMPLE)


def test_bytes_after_end(tmp_path: Path) -> None:
    data = WORKED_EXAMPLE + b"trailing"
    for source in (data, io.BytesIO(data), io.BufferedReader(NonSeekable(data))):
        reader = StreamReader(source)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError):
            reader.bytes_after_end()
        assert list(reader) == WORKED_EXAMPLE_RECORDS
        assert reader.bytes_after_end() == 8


def test_big_endian_stream_from_hand_bytes() -> None:
    e = ">"
    g = struct.pack(e + "II", 1, 8) + struct.pack(e + "ii", -1, 5)
    data = preamble(1, True) + g + struct.pack(e + "II", 0, 0)
    header, records = read_records(data)
    assert header.big_endian and header.flags == 1
    assert records == [GlobalData(-1, 5), End()]


def test_reserved_flags_kept_in_header() -> None:
    data = preamble(2, False, flags=0x80000000) + end_record(False)
    reader = StreamReader(data)
    assert reader.header.reserved_flags == 0x80000000
    assert not reader.header.big_endian


# --- errors ------------------------------------------------------------------------


def _error(data: bytes) -> StreamError:
    with pytest.raises(StreamError) as exc:
        read_records(data)
    return exc.value


def test_error_bad_ident() -> None:
    err = _error(b"xenstorf" + WORKED_EXAMPLE[8:])
    assert (err.code, err.offset, err.record_index) == ("bad-ident", 0, None)
    assert "xenstore" in str(err)


@pytest.mark.parametrize("version", [0, 3, 0x01000000])
def test_error_bad_version(version: int) -> None:
    data = b"xenstore" + struct.pack(">II", version, 0) + end_record(False)
    err = _error(data)
    assert err.code == "bad-version" and err.offset == 8
    reader = StreamReader(data, allow_unknown_version=True)
    assert reader.header.version == version


def test_error_short_preamble() -> None:
    err = _error(b"xenstore\0\0")
    assert err.code == "truncated"


def test_error_missing_end() -> None:
    err = _error(WORKED_EXAMPLE[:-8])
    assert err.code == "missing-end"
    assert err.offset == len(WORKED_EXAMPLE) - 8
    assert err.record_index == 5


def test_error_truncated_body_names_record() -> None:
    err = _error(WORKED_EXAMPLE[:0x60])
    assert err.code == "truncated"
    assert (err.offset, err.record_index, err.record_type) == (0x48, 2, 2)
    assert "48 bytes of body" in err.expected
    assert str(err).startswith("offset 0x48, record 2 (CONNECTION_DATA): ")
    assert "\n" not in str(err)


def test_error_lying_len_larger_than_file(tmp_path: Path) -> None:
    data = preamble(2, False) + struct.pack("<II", 5, 0xFFFFFFF0) + b"\0" * 32
    path = tmp_path / "lie.state"
    path.write_bytes(data)
    for source in (data, str(path), io.BufferedReader(NonSeekable(data))):
        with pytest.raises(StreamError) as exc:
            read_records(source)  # type: ignore[arg-type]
        assert exc.value.code == "truncated" and exc.value.record_type == 5


def test_error_truncated_header() -> None:
    err = _error(WORKED_EXAMPLE[:-4])
    assert err.code == "truncated" and err.record_index == 5


@pytest.mark.parametrize(
    ("body", "code", "field_offset"),
    [
        # path-len says 10 but the record holds only 6 bytes of path and value
        (struct.pack("<IIHHHH", 0, 0, 10, 0, 0, 1) + b"n\0\0\0" + b"/abc\0\0", "overrun", 20),
        # path without its NUL
        (struct.pack("<IIHHHH", 0, 0, 4, 0, 0, 1) + b"n\0\0\0" + b"/abc", "missing-nul", 23),
        # path-len 0
        (struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 1) + b"n\0\0\0", "missing-nul", 20),
        # value runs past the record
        (struct.pack("<IIHHHH", 0, 0, 3, 9, 0, 1) + b"n\0\0\0" + b"/a\0vv", "overrun", 23),
        # 100 permissions announced, none there
        (struct.pack("<IIHHHH", 0, 0, 3, 0, 0, 100) + b"/a\0", "overrun", 14),
        # invalid UTF-8 in the path
        (struct.pack("<IIHHHH", 0, 0, 4, 0, 0, 1) + b"n\0\0\0" + b"/\xff\xfe\0", "bad-string", 21),
        # fixed part cut short
        (struct.pack("<IIH", 0, 0, 3), "overrun", 0),
    ],
)
def test_error_node_lengths(body: bytes, code: str, field_offset: int) -> None:
    # len = exact body size, so that the zero padding is outside the record
    data = stream(2, False, frame(False, 5, body, padded=False))
    err = _error(data)
    assert err.code == code
    assert err.record_index == 0 and err.record_type == 5
    assert err.offset == 16 + 8 + field_offset
    # the same through the raw layer
    reader = StreamReader(data)
    raw = next(reader.iter_raw())
    with pytest.raises(StreamError) as exc:
        inspect_record(raw, reader.header)
    assert (exc.value.code, exc.value.offset) == (code, 16 + 8 + field_offset)


@pytest.mark.parametrize(
    ("rtype", "body", "code"),
    [
        (1, b"\0" * 4, "overrun"),
        (2, b"\0" * 20, "overrun"),
        (2, struct.pack("<IHH8sHHI", 1, 1, 0, b"", 5, 0, 0) + b"ab", "overrun"),
        (2, struct.pack("<IHH8sHHI", 1, 0, 1, b"", 0, 0, 0), "overrun"),  # unique-id missing
        (3, struct.pack("<IHH", 1, 3, 9) + b"/a\0tok", "overrun"),
        (3, struct.pack("<IHH", 1, 3, 2) + b"/ab" + b"t\0", "missing-nul"),
        (3, struct.pack("<IHH", 1, 0, 2) + b"t\0", "missing-nul"),
        (8, struct.pack("<IHH", 1, 3, 2) + b"\0\0", "overrun"),
        (4, b"\0" * 4, "overrun"),
        (6, struct.pack("<HH", 3, 0) + b"\0" * 8, "overrun"),
        (6, struct.pack("<HHI", 1, 0, 5) + b"nodes", "missing-nul"),
        (6, struct.pack("<HHI", 1, 0, 5) + b"\xffx\0", "bad-string"),
        (7, struct.pack("<HH", 1, 0), "overrun"),
        (7, struct.pack("<HHII", 1, 1, 0, 5) + b"abc", "missing-nul"),
    ],
)
def test_error_other_records(rtype: int, body: bytes, code: str) -> None:
    err = _error(stream(2, False, frame(False, rtype, body, padded=False)))
    assert err.code == code
    assert err.record_index == 0 and err.record_type == rtype
    assert 24 <= (err.offset or 0) < 24 + len(body) + 8


def test_error_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StreamError) as exc:
        StreamReader(tmp_path / "nope")
    assert exc.value.code == "io"


# --- the real C 4.17 dump (tests/data/c417) ----------------------------------------------

LS_LINE = re.compile(r'^( *)(\S+) = "(.*?)"\s.*\(([^()]*)\)$')


def _ls_tree(text: str) -> dict[str, tuple[str, str]]:
    """path -> (value as shown, perms) from `xenstore-ls -p /` output."""
    out: dict[str, tuple[str, str]] = {}
    stack: list[str] = []
    for line in text.splitlines():
        m = LS_LINE.match(line)
        assert m, line
        depth = len(m.group(1))
        del stack[depth:]
        stack.append(m.group(2))
        out["/" + "/".join(stack)] = (m.group(3), m.group(4))
    return out


def test_c417_dump_reads_and_matches_xenstore_ls() -> None:
    header, records = read_records(DATA_DIR / "basic.state")
    assert (header.version, header.big_endian) == (1, False)
    assert records[-1] == End()
    nodes = {r.path: r for r in records if isinstance(r, NodeData)}
    tree = _ls_tree((DATA_DIR / "basic.ls").read_text())
    assert len(tree) > 30
    for path, (shown, perms) in tree.items():
        node = nodes[path]
        assert ",".join(str(p) for p in node.perms) == perms, path
        if "\\" not in shown and not shown.endswith("..."):
            assert node.value.decode() == shown, path
    committed = {p for p, n in nodes.items() if n.committed and not p.startswith("@")}
    assert committed - {"/"} == set(tree)
    assert {"@releaseDomain", "@introduceDomain"} <= set(nodes)
    assert nodes["/tool/binary"].value == b"\x00\x01\xfe\xff bin\0ary"
    assert nodes["/tool/long"].value == b"x" * 300


def test_c417_dump_connections_watches_pending_data() -> None:
    _, records = read_records(DATA_DIR / "basic.state")
    conns = [r for r in records if isinstance(r, ConnectionData)]
    watches = {(w.conn_id, w.wpath, w.token) for w in records if isinstance(w, WatchData)}
    rings = {c.spec.domid: c for c in conns if isinstance(c.spec, RingSpec)}
    sockets = [c for c in conns if isinstance(c.spec, SocketSpec)]
    assert set(rings) == {0, 1, 2}
    assert all(c.unique_id is None and c.fields == 0 for c in conns)  # 4.17: no unique-id
    guest1 = rings[1]
    assert len(guest1.in_data) == 10  # half a request header sent by the guest
    assert guest1.out_resp_len > 0 and guest1.out_data  # a partly delivered watch event
    assert (guest1.conn_id, "/local/domain/1/control/shutdown", "ctl") in watches
    assert (guest1.conn_id, "device", "dev") in watches  # relative path kept relative
    assert (rings[2].conn_id, "@releaseDomain", "rel") in watches
    tokens = {t for _, _, t in watches}
    assert {"/tool", "bigwatch", "vmtok"} <= tokens
    partial = next(c for c in sockets if c.in_data)
    assert partial.in_data == struct.pack("<IIII", 2, 7, 0, 8) + b"/too"
    # the connection that asked for the live update carries the OK reply
    assert sockets[-1].out_data.endswith(b"OK\0")
    assert any(c.out_data and b"bigwatch" in c.out_data for c in sockets)


def test_c417_dump_is_canonical_and_round_trips() -> None:
    data = (DATA_DIR / "basic.state").read_bytes()
    reader = StreamReader(data)
    for raw in reader.iter_raw():
        info = inspect_record(raw, reader.header)
        assert raw.length % 8 == 0 and raw.padding == b""
        assert not any(info.slack) and info.reserved == () and raw.quirk is None
    _, records = read_records(data)
    assert write_stream(records, version=1) == data


def test_end_with_overrunning_len_still_ends_the_stream() -> None:
    """C stops at the END header; a non-zero END len past the file is not fatal."""
    data = preamble(2, False) + struct.pack("<II", 0, 64) + b"abc"
    for source in (data, io.BytesIO(data), io.BufferedReader(NonSeekable(data))):
        reader = StreamReader(source)  # type: ignore[arg-type]
        raws = list(reader.iter_raw())
        assert [(r.type, r.length, r.body) for r in raws] == [(0, 64, b"abc")]
        assert reader.bytes_after_end() == 0
    assert read_records(data)[1] == [End()]
