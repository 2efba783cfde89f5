"""``xenstore-stream`` sub-commands, run in-process through ``main(argv)``."""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path

import pytest
from tests.stream.conftest import (
    DATA_DIR,
    WORKED_EXAMPLE,
    body_node,
    frame,
    stream,
)

from pyxenstored.cli.stream_tool import Progress, main
from pyxenstored.stream import read_records
from pyxenstored.stream.byteorder import swap_messages
from pyxenstored.stream.ndjson import record_from_json, record_to_json
from pyxenstored.stream.records import NodeData, NodePerm
from pyxenstored.stream.synth import SynthConfig, write_synth
from pyxenstored.stream.text import (
    build_tree,
    in_tree_order,
    sanitise,
    streamed_tree_lines,
    tree_lines,
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def synth_file(tmp_path: Path) -> Path:
    path = tmp_path / "synth.xs"
    write_synth(str(path), SynthConfig(domains=5, seed=3))
    return path


@pytest.fixture
def example_file(tmp_path: Path) -> Path:
    path = tmp_path / "example.xs"
    path.write_bytes(WORKED_EXAMPLE)
    return path


# --- dump ---------------------------------------------------------------------------


def test_dump_text_lines(capsys: pytest.CaptureFixture[str], example_file: Path) -> None:
    code, out, err = run(capsys, "dump", str(example_file))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("xenstore migration stream version 2, little-endian")
    assert lines[1] == "#0 @0x10 GLOBAL_DATA rw-socket-fd=3 evtchn-fd=4"
    assert (
        "conn-type=ring domid=1 tdomid=0x7ff4 evtchn=9" in lines[2]
        and "unique-id=0x1122334455667788" in lines[2]
    )
    assert 'out="\\000\\000\\000\\000\\a' not in lines[3]  # escapes are C-style, not Python's
    assert lines[3].endswith('OK\\000" out-resp-len=0')
    assert lines[4] == '#3 @0x80 WATCH_DATA conn-id=2 wpath="/tool" token="tok"'
    assert lines[5] == '#4 @0xa0 NODE_DATA "/tool" = "hi" (n0)'
    assert lines[6] == "#5 @0xc8 END"


def test_sanitise_like_xenstore_ls() -> None:
    assert sanitise(b"a b~") == "a b~"
    assert sanitise(b"\t\n\r\\") == "\\t\\n\\r\\\\"
    assert sanitise(b"\x00\x07\x08\x7f\xff") == "\\000\\007\\x08\\x7f\\xff"


C_DUMPS = sorted(p for p in DATA_DIR.glob("*.state") if p.with_suffix(".ls").exists())


def test_c_dumps_with_listings_are_present() -> None:
    assert any(p.name == "basic.state" for p in C_DUMPS)


@pytest.mark.parametrize("state", C_DUMPS, ids=[p.name for p in C_DUMPS])
def test_dump_tree_matches_xenstore_ls_of_real_c_dump(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    expected = state.with_suffix(".ls").read_text()
    code, out, _ = run(capsys, "dump", "--tree", "-p", str(state))
    assert code == 0
    assert out == expected


def test_tree_long_names_and_values_are_cut_like_xenstore_ls() -> None:
    recs = [
        NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/a", b"v" * 71),
        NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/b", b"w" * 72),
        NodeData(0, 0, 0, (NodePerm("r", 0, 3), NodePerm("w", 1, 4)), "/" + "z" * 80, b"x"),
    ]
    lines = list(tree_lines(build_tree(recs)))
    # 1 + 4 + 71 + 1 = 77 <= 80: shown whole, one space, no dots left to draw
    assert lines[0] == 'a = "' + "v" * 71 + '"   (n0)'
    # 1 + 72 + 8 = 81 > 80: cut to 80 - 8 - 1 characters and "\..."
    assert lines[1] == 'b = "' + "w" * 71 + '\\..."  (n0)'
    # names are cut to 72 columns; the value no longer fits
    assert lines[2] == "z" * 72 + ' = "\\..."  (r3,w4)'


def test_streamed_tree_equals_in_memory_tree(synth_file: Path) -> None:
    _, records = read_records(str(synth_file))
    assert in_tree_order(records)
    assert list(streamed_tree_lines(records)) == list(tree_lines(build_tree(records)))


def test_tree_of_a_stream_not_in_tree_order(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    n0 = [(b"n", 0, 0)]
    data = stream(
        2,
        False,
        *(
            frame(False, 5, body_node(False, 0, 0, 0, n0, path, b""))
            for path in (b"/a", b"/b", b"/a/c", b"/b/d", b"/a/c/e")
        ),
    )
    _, records = read_records(data)
    assert not in_tree_order(records)
    src = tmp_path / "o.xs"
    src.write_bytes(data)
    code, out, _ = run(capsys, "dump", "--tree", str(src))
    names = [line.split(" = ")[0] for line in out.splitlines()]
    assert code == 0 and names == ["a", " c", "  e", "b", " d"]


def test_dump_json_then_build_is_byte_identical(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, synth_file: Path
) -> None:
    for src in (synth_file, DATA_DIR / "basic.state"):
        code, out, _ = run(capsys, "dump", "--json", str(src))
        assert code == 0
        nd = tmp_path / "x.ndjson"
        nd.write_text(out)
        first = json.loads(out.splitlines()[0])
        assert first["type"] == "HEADER"
        code, _, err = run(capsys, "build", str(nd), str(tmp_path / "back.xs"))
        assert code == 0, err
        assert (tmp_path / "back.xs").read_bytes() == src.read_bytes()


def test_big_endian_v1_json_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "be.xs"
    write_synth(str(src), SynthConfig(domains=2, version=1), big_endian=True)
    _, out, _ = run(capsys, "dump", "--json", str(src))
    (tmp_path / "be.json").write_text(out)
    assert run(capsys, "build", str(tmp_path / "be.json"), str(tmp_path / "be2.xs"))[0] == 0
    assert (tmp_path / "be2.xs").read_bytes() == src.read_bytes()


def test_json_encoding_is_lossless_for_all_bytes() -> None:
    rec = NodeData(1, 2, 3, (NodePerm("b", 1, 7),), "/p", bytes(range(256)))
    obj = json.loads(json.dumps(record_to_json(rec)))
    assert obj["type"] == "NODE_DATA" and set(obj) == {
        "type",
        "conn-id",
        "tx-id",
        "access",
        "perms",
        "path",
        "value",
        "value-encoding",
    }
    assert obj["value-encoding"] == "base64" and obj["perms"] == ["b7!"]
    assert record_from_json(obj) == rec


def test_unknown_record_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = stream(2, False, frame(False, 42, b"\x01\x02abc\xff\x00\x00"))
    src = tmp_path / "u.xs"
    src.write_bytes(data)
    _, out, _ = run(capsys, "dump", "--json", str(src))
    assert json.loads(out.splitlines()[1])["type"] == "UNKNOWN(42)"
    (tmp_path / "u.json").write_text(out)
    assert run(capsys, "build", str(tmp_path / "u.json"), str(tmp_path / "u2.xs"))[0] == 0
    assert (tmp_path / "u2.xs").read_bytes() == data


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        '{"type": "NODE_DATA"}',
        '{"type": "FROB"}',
        '{"type": "GLOBAL_DATA", "socket_fd": 1, "evtchn_fd": 2, "extra": 3}',
        '{"type": "NODE_DATA", "conn_id": 0, "tx_id": 0, "access": 0, "perms": [], "path": "/a", "value": "\\u0100"}',
    ],
)
def test_build_rejects_bad_lines_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, line: str
) -> None:
    nd = tmp_path / "bad.ndjson"
    nd.write_text('{"type": "HEADER", "version": 2, "flags": 0}\n' + line + "\n")
    code, _, err = run(capsys, "build", str(nd), str(tmp_path / "o.xs"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "bad.ndjson:2" in err
    assert not (tmp_path / "o.xs").exists()


# --- check ------------------------------------------------------------------------


def test_check_exit_codes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, example_file: Path
) -> None:
    assert run(capsys, "check", str(example_file))[0] == 0
    bad = tmp_path / "bad.xs"
    bad.write_bytes(
        stream(2, False, frame(False, 5, body_node(False, 0, 0, 0, [(b"n", 0, 0)], b"/a/b", b"")))
    )
    code, out, err = run(capsys, "check", str(bad))
    assert code == 1 and "[node-parent-missing]" in out and len(err.splitlines()) == 1
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a stream at all")
    code, out, err = run(capsys, "check", str(junk))
    assert code == 2 and len(err.splitlines()) == 1
    code, _, err = run(capsys, "check", str(tmp_path / "missing"))
    assert code == 2 and "no such file" in err


def test_check_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.xs"
    bad.write_bytes(
        stream(2, False, frame(False, 5, body_node(False, 0, 0, 0, [(b"q", 0, 0)], b"/a", b"")))
    )
    code, out, _ = run(capsys, "check", "--json", str(bad))
    assert code == 1
    diags = [json.loads(line) for line in out.splitlines()]
    assert diags == [
        {
            "rule": "bad-perm-letter",
            "severity": "error",
            "record": 0,
            "record_type": "NODE_DATA",
            "offset": 16 + 24,
            "message": 'permission 0 letter "q"',
        }
    ]


def test_check_real_c_dump_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", str(DATA_DIR / "basic.state"))
    assert code == 0 and "0 errors, 0 warnings" in out


# --- convert and diff ---------------------------------------------------------------


def test_convert_v2_to_v1_refuses_without_lossy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, synth_file: Path
) -> None:
    out_path = tmp_path / "v1.xs"
    code, _, err = run(capsys, "convert", str(synth_file), str(out_path), "--version", "1")
    assert code == 2 and "depth" in err and "features" in err and len(err.splitlines()) == 1
    assert not out_path.exists()
    code, _, err = run(
        capsys, "convert", str(synth_file), str(out_path), "--version", "1", "--lossy"
    )
    assert code == 0 and "dropped: depth" in err
    header, records = read_records(str(out_path))
    assert header.version == 1
    assert run(capsys, "check", str(out_path))[0] == 0


def test_diff_against_byte_swapped_conversion_is_empty(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, synth_file: Path
) -> None:
    swapped = tmp_path / "be.xs"
    assert run(capsys, "convert", str(synth_file), str(swapped), "--endian", "big")[0] == 0
    assert swapped.read_bytes() != synth_file.read_bytes()
    code, out, _ = run(capsys, "diff", str(synth_file), str(swapped))
    assert (code, out) == (0, "")
    # the pending wire messages were swapped too: the result checks clean
    code, out, _ = run(capsys, "check", str(swapped))
    assert code == 0 and "0 warnings" in out
    back = tmp_path / "le.xs"
    assert run(capsys, "convert", str(swapped), str(back), "--endian", "little")[0] == 0
    assert back.read_bytes() == synth_file.read_bytes()


def test_swap_messages() -> None:
    le = struct.pack("<IIII", 2, 7, 0, 3) + b"ab\0" + struct.pack("<II", 11, 8)[:6]
    be = swap_messages(le, 0, src_big=False)
    assert (
        be
        == struct.pack(">IIII", 2, 7, 0, 3)
        + b"ab\0"
        + struct.pack(">I", 11)
        + struct.pack("<I", 8)[:2]
    )
    assert swap_messages(be, 0, src_big=True) == le
    # a partly sent response is left alone
    assert swap_messages(b"xyz" + le[:19], 3, src_big=False)[:3] == b"xyz"


def test_convert_for_c_head(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, synth_file: Path
) -> None:
    out_path = tmp_path / "head.xs"
    code, _, err = run(capsys, "convert", str(synth_file), str(out_path), "--target", "c-head")
    assert code == 2 and "transaction" in err
    code, _, err = run(
        capsys, "convert", str(synth_file), str(out_path), "--target", "c-head", "--lossy"
    )
    assert code == 0 and "dropped: transaction 17" in err
    code, out, _ = run(capsys, "check", str(out_path))
    assert code == 0 and "[watch-ext-c-reader-layout]" in out  # a warning only
    code, out, _ = run(capsys, "diff", str(synth_file), str(out_path))
    assert code == 1
    assert "- transaction conn-id=4 tx-id=17" in out
    assert "- pending node /local/domain/1/attr/os conn-id=4 tx-id=17: deleted" in out
    assert 'data/progress conn-id=4 tx-id=17: "50%" (n1,r0) access=rw' in out
    assert "node /" not in out.replace("pending node /", "")  # the committed tree is the same


def test_diff_ignores_record_order(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a = stream(
        2,
        False,
        frame(False, 5, body_node(False, 0, 0, 0, [(b"n", 0, 0)], b"/a", b"1")),
        frame(False, 5, body_node(False, 0, 0, 0, [(b"n", 0, 0)], b"/b", b"2")),
    )
    b = stream(
        2,
        False,
        frame(False, 5, body_node(False, 0, 0, 0, [(b"n", 0, 0)], b"/b", b"2")),
        frame(False, 5, body_node(False, 0, 0, 0, [(b"n", 0, 0)], b"/a", b"1")),
    )
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    assert run(capsys, "diff", str(tmp_path / "a"), str(tmp_path / "b"))[:2] == (0, "")


def test_diff_reports_semantic_changes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, synth_file: Path
) -> None:
    _, out, _ = run(capsys, "dump", "--json", str(synth_file))
    edited = []
    for line in out.splitlines():
        obj = json.loads(line)
        if obj["type"] == "NODE_DATA" and obj["path"] == "/local/domain/1/name":
            obj["value"] = "renamed"
        if obj["type"] == "NODE_DATA" and obj["path"] == "/local/domain/2/name":
            obj["perms"].append("r9")
        if obj["type"] == "NODE_DATA" and obj["path"] == "/local/domain/3/name":
            continue  # removed
        if obj["type"] == "DOMAIN_DATA" and obj["domid"] == 4:
            obj["features"] = 2
            obj["quota"]["nodes"] = 7
        if obj["type"] == "WATCH_DATA" and obj["token"] == "domlist":
            obj["token"] = "other"
        if obj["type"] == "CONNECTION_DATA" and obj["conn-id"] == 2:
            obj["out"] = "x"
        edited.append(json.dumps(obj))
    nd = tmp_path / "e.ndjson"
    nd.write_text("\n".join(edited) + "\n")
    assert run(capsys, "build", str(nd), str(tmp_path / "e.xs"))[0] == 0
    code, out, _ = run(capsys, "diff", str(synth_file), str(tmp_path / "e.xs"))
    assert code == 1
    assert '~ node /local/domain/1/name: value "' in out and '-> "renamed"' in out
    assert "~ node /local/domain/2/name: perms (n0,r2) -> (n0,r2,r9)" in out
    assert "- node /local/domain/3/name" in out
    assert "~ domain 4 features" in out and "~ domain 4 quota" in out
    assert '+ watch conn-id=2 wpath="@introduceDomain" token="other"' in out
    assert "~ connection conn-id=2: conn-type=" in out
    assert "RingSpec" not in out and "{" not in out  # no Python reprs


# --- stats, synth, errors -----------------------------------------------------------


def test_stats(capsys: pytest.CaptureFixture[str], synth_file: Path) -> None:
    code, out, _ = run(capsys, "stats", str(synth_file), "--top", "3")
    assert code == 0
    header, records = read_records(str(synth_file))
    nodes = sum(isinstance(r, NodeData) for r in records)
    assert re.search(rf"^  NODE_DATA +{nodes}$", out, re.M)
    owned = [
        r for r in records if isinstance(r, NodeData) and not r.conn_id and r.perms[0].domid == 1
    ]
    nbytes = sum(len(r.value) for r in owned)
    # domain 1: nodes, value bytes, watches (3 on its ring in the synthetic stream)
    assert re.search(rf"^  1 +{len(owned)} +{nbytes} +3$", out, re.M)
    assert "largest nodes (top 3):" in out
    assert "per-domain defaults: nodes=1000" in out
    assert "domain features:" in out


def test_synth_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_path = tmp_path / "s.xs"
    code, _, err = run(
        capsys, "synth", str(out_path), "--domains", "3", "--seed", "9", "--endian", "big"
    )
    assert code == 0 and "records" in err
    header, _ = read_records(str(out_path))
    assert header.big_endian and header.version == 2
    assert run(capsys, "check", str(out_path))[0] == 0
    code, _, err = run(capsys, "synth", str(out_path), "--domains", "40000")
    assert code == 2 and len(err.splitlines()) == 1


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for argv in (
        ["dump", str(tmp_path / "nope")],
        ["stats", str(tmp_path)],
        ["diff", "/nonexistent", "/x"],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    truncated = tmp_path / "t.xs"
    truncated.write_bytes(WORKED_EXAMPLE[:-12])
    code, out, err = run(capsys, "dump", str(truncated))
    assert code == 2 and len(err.splitlines()) == 1 and "offset" in err


def test_progress_silent_when_not_a_terminal() -> None:
    sink = io.StringIO()
    p = Progress("x", 100, sink)
    p.start -= 5
    p.update(50)
    p.done()
    assert sink.getvalue() == ""


def test_progress_draws_on_a_terminal_after_a_second() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    sink = Tty()
    p = Progress("x", 100, sink)
    p.update(10)
    assert sink.getvalue() == ""  # not before a second has passed
    p.start -= 5
    p.update(50)
    assert "\r" in sink.getvalue() and "50.0%" in sink.getvalue()
    p.done()
    assert sink.getvalue().endswith("\r\033[K")


def test_quirk_shown_in_dump(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = struct.pack("<IHHH", 2, 3, 2, 1) + b"/a\0t\0"  # C reader layout, path at 10
    data = WORKED_EXAMPLE[:-8] + frame(False, 8, body) + WORKED_EXAMPLE[-8:]
    p = tmp_path / "q.xs"
    p.write_bytes(data)
    code, out, _ = run(capsys, "dump", str(p))
    assert code == 0 and "WATCH_DATA_EXTENDED" in out and "c-reader" in out
