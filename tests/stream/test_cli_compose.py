"""``xenstore-stream`` as a tool that composes: '-' everywhere, NDJSON format 2,
``--json`` for ``diff`` and ``stats``, ``build`` defaults, ``dump --tree`` like
``xenstore-ls``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.stream.conftest import DATA_DIR

from pyxenstored.cli.stream_tool import main
from pyxenstored.stream import read_records
from pyxenstored.stream.ndjson import record_from_json, record_to_json
from pyxenstored.stream.records import (
    ConnectionData,
    End,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    QuotaValue,
    Record,
    RingSpec,
    StreamHeader,
    WatchDataExtended,
)
from pyxenstored.stream.synth import SynthConfig, write_synth
from pyxenstored.stream.writer import write_stream

SRC = str(Path(__file__).resolve().parents[2] / "src")


def save(path: Path, records: list[Record]) -> None:
    path.write_bytes(write_stream(records, version=2))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """``command`` in a shell, ``XS`` standing for ``xenstore-stream`` of this tree."""
    env = dict(os.environ, PYTHONPATH=SRC)
    xs = f"{sys.executable} -m pyxenstored.cli.stream_tool"
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command.replace("XS ", xs + " ")],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def synth_file(tmp_path: Path) -> Path:
    path = tmp_path / "synth.xs"
    write_synth(str(path), SynthConfig(domains=3, seed=5))
    return path


# --- '-' for every file argument ----------------------------------------------------


def test_synth_to_stdout_into_check_from_stdin(tmp_path: Path) -> None:
    got = shell("XS synth - --domains 3 | XS check -", tmp_path)
    assert got.returncode == 0, got.stderr
    assert b"-: " in got.stdout and b"0 errors" in got.stdout
    assert not (tmp_path / "-").exists()


def test_dash_for_inputs_and_outputs(tmp_path: Path, synth_file: Path) -> None:
    s = synth_file.name
    commands = [
        f"XS dump --json {s} | XS build - - | cmp - {s}",
        f"cat {s} | XS convert - - --endian big | XS convert - - --endian little | cmp - {s}",
        f"cat {s} | XS diff - {s}",
        f"XS extract {s} --domain 2 - | XS check -",
        f"cat {s} | XS dump --tree -p - | head -1 | grep -q ' = '",
        f"cat {s} | XS stats --json - | grep -q records",
    ]
    for command in commands:
        got = shell(command, tmp_path)
        assert got.returncode == 0, (command, got.stderr)
    assert not (tmp_path / "-").exists()
    got = shell(f"XS diff - - < {s}", tmp_path)
    assert got.returncode == 2 and b"only one side" in got.stderr


def test_output_to_a_named_pipe_is_written_not_replaced(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, synth_file: Path
) -> None:
    # /dev/null or a FIFO as OUTPUT: written in place; a rename over it would
    # leave a regular file where the device or pipe was
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    copy = tmp_path / "copy.xs"
    with subprocess.Popen(["cp", str(fifo), str(copy)]) as reader:
        code, _, err = run(capsys, "convert", str(synth_file), str(fifo))
        assert reader.wait(timeout=60) == 0
    assert code == 0, err
    assert fifo.is_fifo() and copy.read_bytes() == synth_file.read_bytes()
    assert not (tmp_path / "fifo.tmp").exists()


def test_oxenstored_dump_through_pipes(tmp_path: Path) -> None:
    basic = Path(__file__).resolve().parents[1] / "data" / "oxenstored" / "basic.db"
    got = shell(
        f"cat {basic} | XS convert - - | XS convert --to oxenstored - - | cmp - {basic}", tmp_path
    )
    assert got.returncode == 0, got.stderr


# --- NDJSON format 2 ----------------------------------------------------------------------


def test_ndjson_header_has_format_and_values_are_utf8(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    src = tmp_path / "u.xs"
    save(
        src,
        [
            NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/", b""),
            NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/u", "ÿ é".encode()),
            NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/b", b"\xff\xfe\x00"),
            End(),
        ],
    )
    code, out, _ = run(capsys, "dump", "--json", str(src))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert lines[0] == {"type": "HEADER", "format": 2, "version": 2, "flags": 0}
    assert lines[2]["value"] == "ÿ é" and "value-encoding" not in lines[2]
    assert lines[3]["value-encoding"] == "base64"
    assert base64.b64decode(lines[3]["value"]) == b"\xff\xfe\x00"
    assert "Ã" not in out


def test_ndjson_keys_are_the_text_dump_names() -> None:
    conn = ConnectionData(3, 0, 1, RingSpec(1, 0x7FF4, 9), b"in", b"", 0, 0x55)
    obj = record_to_json(conn)
    assert obj == {
        "type": "CONNECTION_DATA",
        "conn-id": 3,
        "conn-type": "ring",
        "domid": 1,
        "tdomid": 0x7FF4,
        "evtchn": 9,
        "fields": 1,
        "unique-id": 0x55,
        "in": "in",
        "out": "",
        "out-resp-len": 0,
    }
    assert record_from_json(obj) == conn
    assert record_to_json(GlobalData(3, 4)) == {
        "type": "GLOBAL_DATA",
        "rw-socket-fd": 3,
        "evtchn-fd": 4,
    }
    watch = WatchDataExtended(2, "/a", "t", 0xFFFF)
    assert record_to_json(watch)["depth"] == "unlimited"
    assert record_from_json(record_to_json(watch)) == watch
    quota = GlobalQuotaData((QuotaValue("nodes", 5),), ())
    assert record_to_json(quota)["domain-quota"] == {"nodes": 5}
    # a repeated name keeps both entries (a list)
    twice = GlobalQuotaData((QuotaValue("nodes", 5), QuotaValue("nodes", 6)))
    assert record_from_json(record_to_json(twice)) == twice


@pytest.mark.parametrize(
    "state", [DATA_DIR / "basic.state", None], ids=["c417-basic", "synth-big-endian"]
)
def test_dump_json_then_build_is_byte_identical(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state: Path | None
) -> None:
    if state is None:
        state = tmp_path / "be.xs"
        write_synth(str(state), SynthConfig(domains=2, version=1), big_endian=True)
    _, out, _ = run(capsys, "dump", "--json", str(state))
    (tmp_path / "x.ndjson").write_text(out)
    assert run(capsys, "build", str(tmp_path / "x.ndjson"), str(tmp_path / "y.xs"))[0] == 0
    assert (tmp_path / "y.xs").read_bytes() == state.read_bytes()


def test_build_reads_the_first_form(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # no "format": the Latin-1, underscore-keyed form of earlier releases
    nd = tmp_path / "old.ndjson"
    nd.write_text(
        '{"type": "HEADER", "version": 2, "flags": 0}\n'
        '{"type": "NODE_DATA", "conn_id": 0, "tx_id": 0, "access": 0,'
        ' "perms": [{"perm": "n", "flags": 0, "domid": 0}], "path": "/", "value": "\\u00ff"}\n'
        '{"type": "END"}\n'
    )
    code, _, err = run(capsys, "build", str(nd), str(tmp_path / "o.xs"))
    assert code == 0, err
    node = read_records(str(tmp_path / "o.xs"))[1][0]
    assert isinstance(node, NodeData) and node.value == b"\xff"


def test_build_fills_documented_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    nd = tmp_path / "short.ndjson"
    nd.write_text(
        '{"type": "HEADER", "format": 2}\n'
        '{"type": "GLOBAL_DATA"}\n'
        '{"type": "NODE_DATA", "path": "/"}\n'
        '{"type": "NODE_DATA", "path": "/a", "value": "x"}\n'
        '{"type": "CONNECTION_DATA", "conn-id": 1, "domid": 2, "evtchn": 7}\n'
        '{"type": "WATCH_DATA_EXTENDED", "conn-id": 1, "wpath": "/a", "token": "t"}\n'
    )
    code, _, err = run(capsys, "build", str(nd), str(tmp_path / "o.xs"))
    assert code == 0, err
    header, records = read_records(str(tmp_path / "o.xs"))
    assert header == StreamHeader(2, 0)
    assert records == [
        GlobalData(-1, -1),
        NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/", b""),
        NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/a", b"x"),
        ConnectionData(1, 0, 0, RingSpec(2, 0x7FF4, 7)),
        WatchDataExtended(1, "/a", "t", 0xFFFF),
        End(),  # added when the input has none
    ]


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('{"type": "NODE_DATA"}', "NODE_DATA: missing field 'path'"),
        ('{"type": "WATCH_DATA", "conn-id": 1, "wpath": "/a"}', "missing field 'token'"),
        ('{"type": "TRANSACTION_DATA", "conn-id": 1}', "missing field 'tx-id'"),
        ('{"type": "CONNECTION_DATA", "conn-id": 1}', "missing field 'conn-type'"),
        ('{"type": "CONNECTION_DATA", "conn-id": 1, "domid": 1}', "missing field 'evtchn'"),
        ('{"type": "DOMAIN_DATA"}', "missing field 'domid'"),
        ('{"type": "GLOBAL_DATA", "rw-socket-fd": "x"}', "'rw-socket-fd' must be an integer"),
        ('{"type": "GLOBAL_DATA", "socket_fd": 1}', "has no field 'socket_fd'"),
        ('{"type": "NODE_DATA", "path": "/a", "value": "!", "value-encoding": "base64"}', "base64"),
        ('{"type": "NODE_DATA", "path": "/a", "perms": ["q"]}', "not a letter and a domid"),
        ('{"path": "/a"}', "missing field 'type'"),
    ],
)
def test_build_names_the_missing_or_bad_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, line: str, named: str
) -> None:
    nd = tmp_path / "bad.ndjson"
    nd.write_text('{"type": "HEADER", "format": 2, "version": 2, "flags": 0}\n' + line + "\n")
    code, _, err = run(capsys, "build", str(nd), str(tmp_path / "o.xs"))
    assert code == 2 and len(err.splitlines()) == 1
    assert "bad.ndjson:2: " in err and named in err
    assert "TypeError" not in err and "__init__" not in err and "positional" not in err
    assert not (tmp_path / "o.xs").exists()


def test_build_refuses_an_unknown_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    nd = tmp_path / "f.ndjson"
    nd.write_text('{"type": "HEADER", "format": 9}\n')
    code, _, err = run(capsys, "build", str(nd), str(tmp_path / "o.xs"))
    assert code == 2 and "f.ndjson:1: HEADER: format 9" in err


# --- diff and stats --json, the project's notation -------------------------------------


def test_diff_text_has_no_python_reprs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a, b = tmp_path / "a.xs", tmp_path / "b.xs"
    root = NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/", b"")
    save(
        a,
        [
            GlobalData(3, 4),
            GlobalQuotaData((QuotaValue("nodes", 10),)),
            ConnectionData(1, 0, 0, RingSpec(0, 0x7FF4, 2)),
            root,
            End(),
        ],
    )
    save(
        b,
        [
            GlobalData(5, 4),
            GlobalQuotaData((QuotaValue("nodes", 20),)),
            ConnectionData(1, 0, 0, RingSpec(0, 0x7FF4, 3)),
            root,
            End(),
        ],
    )
    code, out, _ = run(capsys, "diff", str(a), str(b))
    assert code == 1
    assert out.splitlines() == [
        "~ connection conn-id=1: conn-type=ring domid=0 tdomid=0x7ff4 evtchn=2"
        ' in="" out="" out-resp-len=0 -> conn-type=ring domid=0 tdomid=0x7ff4 evtchn=3'
        ' in="" out="" out-resp-len=0',
        "~ global data: rw-socket-fd=3 evtchn-fd=4 -> rw-socket-fd=5 evtchn-fd=4",
        "~ global quota nodes=10 -> nodes=20",
    ]
    for bad in ("RingSpec", "{", "(3, 4)", "'"):
        assert bad not in out
    code, out, _ = run(capsys, "diff", "--json", str(a), str(b))
    changes = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [c["kind"] for c in changes] == [
        "connection",
        "global-data",
        "global-quota",
    ]
    assert changes[0]["a"]["evtchn"] == 2 and changes[0]["b"]["evtchn"] == 3
    assert changes[1] == {
        "change": "~",
        "kind": "global-data",
        "a": {"rw-socket-fd": 3, "evtchn-fd": 4},
        "b": {"rw-socket-fd": 5, "evtchn-fd": 4},
    }
    assert changes[2]["a"] == {"nodes": 10} and changes[2]["b"] == {"nodes": 20}
    assert run(capsys, "diff", "--json", str(a), str(a))[:2] == (0, "")


def test_stats_json_has_the_text_figures(
    capsys: pytest.CaptureFixture[str], synth_file: Path
) -> None:
    code, out, _ = run(capsys, "stats", "--json", "--top", "2", str(synth_file))
    stats = json.loads(out)
    _, records = read_records(str(synth_file))
    nodes = [r for r in records if isinstance(r, NodeData) and not r.conn_id and r.perms]
    assert code == 0 and stats["records"] == len(records)
    assert stats["records-by-type"]["NODE_DATA"] == sum(isinstance(r, NodeData) for r in records)
    assert stats["nodes"] == len(nodes)
    assert stats["value-bytes"] == sum(len(r.value) for r in nodes)
    assert len(stats["largest-nodes"]) == 2
    assert stats["domain-quota"]["nodes"] == 1000
    _, text, _ = run(capsys, "stats", "--top", "2", str(synth_file))
    assert f"{stats['records']} records, {stats['bytes']} bytes" in text


# --- dump --tree like xenstore-ls -------------------------------------------------------

TREE = [
    NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/", b""),
    NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/local", b""),
    NodeData(0, 0, 0, (NodePerm("n", 1, 0), NodePerm("r", 0, 5)), "/local/a", b"v"),
    NodeData(0, 0, 0, (NodePerm("n", 5, 0),), "/local/a/b", b"x" * 100),
    NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/tool", b"t"),
    End(),
]


@pytest.fixture(params=["tree-order", "other-order"])
def tree_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "tree.xs"
    records = list(TREE)
    if request.param == "other-order":  # not depth-first: read whole, not streamed
        records = [records[0], records[1], records[4], records[2], records[3], records[5]]
    save(path, records)
    return path


def test_tree_plain_is_xenstore_ls_without_options(
    capsys: pytest.CaptureFixture[str], tree_file: Path
) -> None:
    # xenstore_client.c do_ls: no fill and no permissions without -p
    code, out, _ = run(capsys, "dump", "--tree", str(tree_file))
    lines = out.splitlines()
    assert code == 0
    assert 'local = ""' in lines and ' a = "v"' in lines and 'tool = "t"' in lines
    # 80 columns: the value is cut, with \...
    long = next(line for line in lines if line.startswith("  b = "))
    assert long == '  b = "' + "x" * (80 - len(' = "..."') - 3) + '\\..."'


def test_tree_path_and_perms(capsys: pytest.CaptureFixture[str], tree_file: Path) -> None:
    code, out, _ = run(capsys, "dump", "--tree", "-p", str(tree_file), "/local")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    fill = "".join("." if w & 1 else " " for w in range(len('a = "v" '), 60))
    assert lines[0] == 'a = "v" ' + fill + "  (n0,r5)"  # the stale flag is not shown
    assert lines[1].startswith(' b = "xxx') and lines[1].endswith('\\..."  (n0)')


def test_tree_full_paths(capsys: pytest.CaptureFixture[str], tree_file: Path) -> None:
    # -f: whole path, no width limit, no fill; with -p three spaces before "("
    code, out, _ = run(capsys, "dump", "--tree", "-f", str(tree_file), "/local")
    assert code == 0 and out.splitlines() == ['/local/a = "v"', f'/local/a/b = "{"x" * 100}"']
    code, out, _ = run(capsys, "dump", "--tree", "-f", "-p", "-s", str(tree_file))
    assert out.splitlines() == [
        '/local = ""   (n0)',
        '/local/a = "v"   (n0,r5)',
        f'/local/a/b = "{"x" * 100}"   (n0)',
        '/tool = "t"   (n0)',
    ]


def test_tree_errors(capsys: pytest.CaptureFixture[str], tree_file: Path) -> None:
    code, _, err = run(capsys, "dump", "--tree", str(tree_file), "/nope")
    assert code == 2 and err.strip().endswith("no node /nope")
    code, _, err = run(capsys, "dump", "--tree", str(tree_file), "local/")
    assert code == 2 and "not a node path" in err
    code, _, err = run(capsys, "dump", "-p", str(tree_file))
    assert code == 2 and "go with --tree" in err


@pytest.mark.parametrize("opts", [[], ["-p"], ["-f"], ["-f", "-p"], ["-s"]], ids=str)
def test_tree_equals_the_real_xenstore_ls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, opts: list[str]
) -> None:
    """The same nodes in a running daemon, listed by libxenstore's xenstore-ls."""
    import contextlib

    from tests.client.daemons import run_daemon
    from tests.util import require_tool

    ls = require_tool("xenstore-ls")
    long = "x" * 100
    save(
        tmp_path / "t.xs",
        [
            NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/", b""),
            NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/t", b""),
            NodeData(0, 0, 0, (NodePerm("n", 0, 0), NodePerm("r", 0, 5)), "/t/a", b"v"),
            NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/t/a/b", long.encode()),
            NodeData(0, 0, 0, (NodePerm("n", 0, 0),), "/t/c", b"\x01\\"),
            End(),
        ],
    )
    with contextlib.contextmanager(run_daemon)("pyxenstored", False) as daemon:
        client = daemon.connect()
        client.write("/t/a", b"v")
        client.write("/t/a/b", long.encode())
        client.write("/t/c", b"\x01\\")
        client.set_perms("/t/a", ["n0", "r5"])
        client.close()
        env = dict(os.environ, XENSTORED_PATH=daemon.socket)
        real = subprocess.run(
            [ls, *opts, "/t"], env=env, capture_output=True, check=True, timeout=60
        ).stdout.decode()
    code, out, _ = run(capsys, "dump", "--tree", *opts, str(tmp_path / "t.xs"), "/t")
    assert code == 0 and out == real
