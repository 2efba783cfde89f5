"""``xenstore-stream`` on oxenstored's state dumps: recognised by their first line.

The dumps are the real ones of ``tests/data/oxenstored`` (written by
oxenstored 4.17) and hand-made lines in the form docs/oxenstored-format.md
gives (``xenstored.ml:DB.to_channel``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyxenstored.cli.stream_tool import main
from pyxenstored.stream import read_records
from pyxenstored.stream.oxenstored_quota import OX_MAXWATCHEVENTS
from pyxenstored.stream.records import DomainData, GlobalQuotaData

OX_DIR = Path(__file__).resolve().parent.parent / "data" / "oxenstored"
BASIC = OX_DIR / "basic.db"
MINIMAL = OX_DIR / "minimal.db"

# A small dump by hand: header, global, evtchn-dev, dom0, one guest with a
# watch, a socket with a watch, and the tree (hex of the strings).
HEX = bytes.hex
SMALL_LINES = [
    b"$xenstored-dump-format",
    b"global,3",
    b"evtchn-dev,5,1",
    b"dom,0,0,1,2",
    b"dom,1,1001,11,3",
    b"watch,1,%s,%s" % (HEX(b"/local/domain/1").encode(), HEX(b"tok").encode()),
    b"socket,8",
    b"watch,-8,%s,%s" % (HEX(b"@introduceDomain").encode(), HEX(b"intro").encode()),
    b"store,%s,%s," % (HEX(b"/").encode(), HEX(b"n0").encode()),
    b"store,%s,%s," % (HEX(b"/local").encode(), HEX(b"n0").encode()),
    b"store,%s,%s," % (HEX(b"/local/domain").encode(), HEX(b"n0").encode()),
    b"store,%s,%s,%s"
    % (HEX(b"/local/domain/1").encode(), HEX(b"n1\0r0").encode(), HEX(b"hi").encode()),
]


def small(*replace: tuple[int, bytes], end: bytes = b"\n") -> bytes:
    lines = list(SMALL_LINES)
    for index, text in replace:
        lines[index] = text
    return b"\n".join(lines) + end


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, data: bytes, name: str = "d.db") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# --- check ---------------------------------------------------------------------------


@pytest.mark.parametrize("dump", [BASIC, MINIMAL], ids=["basic", "minimal"])
def test_check_real_dumps_clean(capsys: pytest.CaptureFixture[str], dump: Path) -> None:
    code, out, err = run(capsys, "check", str(dump))
    assert code == 0 and err == ""
    lines = len(dump.read_bytes().splitlines())
    assert out.endswith(f": oxenstored dump, {lines} lines, 0 errors, 0 warnings\n")


def test_check_small_dump_clean(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "check", write(tmp_path, small()))
    assert code == 0 and "0 errors, 0 warnings" in out


@pytest.mark.parametrize(
    ("data", "rule", "code"),
    [
        # cut short in the middle of the last line
        (small(end=b"")[:-3], "truncated", 1),
        # a value field that is not hex
        (
            small(
                (11, b"store,%s,%s,zz" % (HEX(b"/local/domain/1").encode(), HEX(b"n1").encode()))
            ),
            "bad-hex",
            1,
        ),
        # a line type oxenstored does not know: it skips it, a warning
        (small((7, b"frobnicate,1,2")), "unknown-line", 0),
        # a guest domain without its ring page
        (small((4, b"dom,1,0,11,3")), "dom-no-ring", 1),
    ],
    ids=["truncated", "bad-hex", "unknown-line", "dom-no-ring"],
)
def test_bad_dumps_are_named_never_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: bytes, rule: str, code: int
) -> None:
    path = write(tmp_path, data)
    got, out, err = run(capsys, "check", path)
    assert got == code
    assert f": {rule}: " in out and "Traceback" not in out + err
    got, out, _ = run(capsys, "check", "--json", path)
    diags = [json.loads(line) for line in out.splitlines()]
    assert got == code and rule in {d["rule"] for d in diags}
    assert all(set(d) == {"rule", "severity", "line", "message"} for d in diags)
    # every other command says it in one line too, or goes on
    for argv in (["dump", path], ["dump", "--tree", path], ["diff", path, path]):
        got, _, err = run(capsys, *argv)
        assert got in (0, 2) and "Traceback" not in err


def test_check_no_header_is_unreadable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, b"$xenstored-dump-formax\nglobal,3\n")
    code, out, err = run(capsys, "check", path)
    assert code == 2 and "bad-header" in out and "not a readable oxenstored dump" in err
    code, _, err = run(capsys, "dump", path)
    assert code == 2 and len(err.splitlines()) == 1 and "not an oxenstored dump" in err


def test_truncated_dump_convert_refuses_then_names_the_loss(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, small((7, b"frobnicate"), end=b""))
    out_path = str(tmp_path / "o.xs")
    code, _, err = run(capsys, "convert", path, out_path)
    assert code == 2 and len(err.splitlines()) == 1 and "--lossy" in err
    assert "truncated" in err and not Path(out_path).exists()
    code, _, err = run(capsys, "convert", "--lossy", path, out_path)
    assert code == 0 and "dropped: line 8: unknown-line" in err


# --- dump ----------------------------------------------------------------------------


def test_dump_text_lines(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "dump", write(tmp_path, small()))
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == "oxenstored state dump ($xenstored-dump-format), 11 lines"
    assert lines[1] == "line 2: global socket-fd=3"
    assert lines[2] == "line 3: evtchn-dev fd=5 domexc-port=1"
    assert lines[4] == "line 5: dom domid=1 mfn=0x3e9 remote-port=11 local-port=3"
    assert lines[5] == 'line 6: watch domid=1 wpath="/local/domain/1" token="tok"'
    assert lines[7] == 'line 8: watch socket-fd=8 wpath="@introduceDomain" token="intro"'
    assert lines[11] == 'line 12: store "/local/domain/1" = "hi" (n1,r0)'


def test_dump_tree_is_xenstore_ls_of_the_real_oxenstored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # basic.ls is `xenstore-ls -p /` of the oxenstored that wrote basic.db
    code, out, _ = run(capsys, "dump", "--tree", "-p", str(BASIC))
    assert code == 0 and out == (OX_DIR / "basic.ls").read_text()


def test_dump_json_then_build_is_byte_identical(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for src in (BASIC, MINIMAL, Path(write(tmp_path, small((6, b"frob,x"), end=b"")))):
        code, out, _ = run(capsys, "dump", "--json", str(src))
        first = json.loads(out.splitlines()[0])
        assert code == 0 and first["kind"] == "oxenstored-dump" and first["format"] == 2
        nd = tmp_path / "x.ndjson"
        nd.write_text(out)
        code, _, err = run(capsys, "build", str(nd), str(tmp_path / "back.db"))
        assert code == 0, err
        assert (tmp_path / "back.db").read_bytes() == src.read_bytes()


def test_dump_json_bytes_utf8_or_base64(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "dump", "--json", str(BASIC))
    objs = [json.loads(line) for line in out.splitlines()[1:]]
    binary = next(o for o in objs if o.get("path") == "/tool/binary")
    assert binary["value-encoding"] == "base64"  # 0xfe 0xff: not UTF-8
    name = next(o for o in objs if o.get("path") == "/tool/name")
    assert name["value"] == "oxenstored fixture" and "value-encoding" not in name
    assert name["perms"] == ["r0", "w1", "n2", "b3"]


# --- convert and diff ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_round_trip_through_the_stream_is_byte_identical(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, version: str
) -> None:
    for src in (BASIC, MINIMAL):
        xs, back = str(tmp_path / "s.xs"), str(tmp_path / "back.db")
        code, _, err = run(capsys, "convert", "--version", version, str(src), xs)
        assert code == 0 and err == ""
        code, out, _ = run(capsys, "check", xs)
        assert code == 0 and "0 errors, 0 warnings" in out
        assert read_records(xs)[0].version == int(version)
        code, _, err = run(capsys, "convert", "--to", "oxenstored", xs, back)
        assert code == 0 and err == ""
        assert Path(back).read_bytes() == src.read_bytes()
        # the dump and its stream mean the same
        assert run(capsys, "diff", str(src), xs)[:2] == (0, "")


def test_quota_from_the_config_travels_and_is_known_to_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = tmp_path / "oxenstored.conf"
    conf.write_text("quota-maxentity = 500\nquota-maxwatchevents = 77\n")
    xs = str(tmp_path / "q.xs")
    code, _, err = run(capsys, "convert", "--oxenstored-config", str(conf), str(BASIC), xs)
    assert code == 0, err
    quota = next(r for r in read_records(xs)[1] if isinstance(r, GlobalQuotaData))
    assert {q.name: q.value for q in quota.domain_quota}[OX_MAXWATCHEVENTS] == 77
    code, out, _ = run(capsys, "check", xs)
    assert code == 0 and "unknown-quota-name" not in out and "0 warnings" in out
    # back: refused without a place for the quota, kept with one
    back = str(tmp_path / "q.db")
    code, _, err = run(capsys, "convert", "--to", "oxenstored", xs, back)
    assert code == 2 and "quota settings" in err and "--lossy" in err
    conf2 = tmp_path / "out.conf"
    code, _, err = run(
        capsys, "convert", "--to", "oxenstored", "--oxenstored-config", str(conf2), xs, back
    )
    assert code == 0, err
    assert Path(back).read_bytes() == BASIC.read_bytes()
    assert "quota-maxentity = 500" in conf2.read_text()
    assert "quota-maxwatchevents = 77" in conf2.read_text()


def test_stream_to_oxenstored_refuses_what_it_cannot_carry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from pyxenstored.stream.synth import SynthConfig, write_synth

    xs = tmp_path / "synth.xs"
    write_synth(str(xs), SynthConfig(domains=2, seed=1))
    out_path = tmp_path / "o.db"
    code, _, err = run(capsys, "convert", "--to", "oxenstored", str(xs), str(out_path))
    assert code == 2 and len(err.splitlines()) == 1 and not out_path.exists()
    assert "would drop" in err and "(and 20 more)" in err and "--lossy" in err
    code, _, err = run(capsys, "convert", "--to", "oxenstored", "--lossy", str(xs), str(out_path))
    assert code == 0
    assert "dropped: domain 1's ring connection: its ring frame and port are not known" in err
    assert "dropped: transaction 17 of connection 4" in err
    assert "dropped: event-channel descriptor 6" in err
    # what is left is a dump oxenstored reads; the one error is the named loss
    code, out, _ = run(capsys, "check", str(out_path))
    assert code == 1 and out.count(": error: ") == 1 and "no-evtchn-dev" in out


def test_diff_against_a_changed_stream(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    xs = str(tmp_path / "s.xs")
    assert run(capsys, "convert", str(BASIC), xs)[0] == 0
    _, out, _ = run(capsys, "dump", "--json", xs)
    edited = []
    for line in out.splitlines():
        obj = json.loads(line)
        if obj.get("path") == "/tool/name":
            obj["value"] = "changed"
        edited.append(json.dumps(obj))
    (tmp_path / "e.ndjson").write_text("\n".join(edited) + "\n")
    assert run(capsys, "build", str(tmp_path / "e.ndjson"), str(tmp_path / "e.xs"))[0] == 0
    code, out, _ = run(capsys, "diff", str(BASIC), str(tmp_path / "e.xs"))
    assert code == 1
    assert out == '~ node /tool/name: value "oxenstored fixture" -> "changed"\n'
    code, out, _ = run(capsys, "diff", "--json", str(tmp_path / "e.xs"), str(BASIC))
    change = json.loads(out)
    assert code == 1 and change["kind"] == "node" and change["path"] == "/tool/name"
    assert change["a"]["value"] == "changed" and change["b"]["value"] == "oxenstored fixture"


def test_extras_ride_in_domain_data(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    xs = str(tmp_path / "s.xs")
    assert run(capsys, "convert", write(tmp_path, small()), xs)[0] == 0
    records = read_records(xs)[1]
    dom1 = next(r for r in records if isinstance(r, DomainData) and r.domid == 1)
    assert {q.name: q.value for q in dom1.quota} == {
        "oxenstored:ring-mfn-low": 1001,
        "oxenstored:ring-mfn-high": 0,
        "oxenstored:remote-port": 11,
    }


def test_stream_only_commands_say_how_to_get_a_stream(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for argv in (["stats", str(BASIC)], ["extract", str(BASIC), "--domain", "1", "-"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and len(err.splitlines()) == 1
        assert "an oxenstored dump" in err and "xenstore-stream convert" in err
