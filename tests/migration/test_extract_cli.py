"""``xenstore-stream extract``: one domain's stream cut out of a synthetic live-update dump."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.migration.conftest import DOM0, Side

from pyxenstored.cli.stream_tool import main as stream_main
from pyxenstored.migrate.domain import DomainMigrationError, import_domain, whole_messages
from pyxenstored.stream.check import check_all
from pyxenstored.stream.reader import StreamReader
from pyxenstored.stream.records import (
    ConnectionData,
    DomainData,
    GlobalData,
    NodeData,
    NodePerm,
    RingSpec,
    TransactionData,
    WatchData,
    WatchDataExtended,
)
from pyxenstored.stream.writer import write_stream
from pyxenstored.wire import MsgType


@pytest.fixture(scope="module")
def synth_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "dump.xss"
    assert stream_main(["synth", str(path), "--domains", "3", "--seed", "4"]) == 0
    return path


def _torn(data: bytes) -> bool:
    try:
        whole_messages(data)
    except DomainMigrationError:
        return True
    return False


def _records(path: Path) -> list[object]:
    with StreamReader(str(path)) as reader:
        assert reader.header.version == 2
        return list(reader)


def _ring_domids(records: list[object]) -> list[int]:
    return [
        r.spec.domid
        for r in records
        if isinstance(r, ConnectionData) and isinstance(r.spec, RingSpec) and r.spec.domid
    ]


def test_extract_checks_clean_and_holds_only_that_domain(synth_dump: Path, tmp_path: Path) -> None:
    full = _records(synth_dump)
    extracted = 0
    for domid in _ring_domids(full):
        conn = next(
            r
            for r in full
            if isinstance(r, ConnectionData)
            and isinstance(r.spec, RingSpec)
            and r.spec.domid == domid
        )
        out = tmp_path / f"dom{domid}.xss"
        code = stream_main(["extract", str(synth_dump), "--domain", str(domid), str(out)])
        if _torn(conn.in_data):
            # synth leaves a half-received request on some guests: refused, no file.
            assert code == 2 and not out.exists()
            continue
        assert code == 0
        extracted += 1
        diags, _ = check_all(out.read_bytes())
        assert [d for d in diags if d.severity.name == "ERROR"] == [], diags
        cut = _records(out)
        home = f"/local/domain/{domid}"
        assert isinstance(cut[0], ConnectionData) and cut[0].conn_id == conn.conn_id
        assert cut[0].unique_id is None
        nodes = [r for r in cut if isinstance(r, NodeData) and not r.conn_id]
        assert nodes and nodes[0].path == home
        assert all(n.path == home or n.path.startswith(home + "/") for n in nodes)
        want = [r.path for r in full if isinstance(r, NodeData) and not r.conn_id]
        assert [n.path for n in nodes] == [p for p in want if p == home or p.startswith(home + "/")]
        for r in cut:
            if isinstance(r, (WatchData, WatchDataExtended, TransactionData)):
                assert r.conn_id == conn.conn_id
        assert [r.domid for r in cut if isinstance(r, DomainData)] == [domid]
        assert not any(isinstance(r, GlobalData) for r in cut)
    assert extracted >= 2


def test_extract_refuses_unknown_domain_and_partial_input(
    synth_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.xss"
    assert stream_main(["extract", str(synth_dump), "--domain", "77", str(out)]) == 2
    assert "domain 77 has no ring connection" in capsys.readouterr().err
    assert not out.exists()
    full = _records(synth_dump)
    torn = [
        r.spec.domid
        for r in full
        if isinstance(r, ConnectionData) and isinstance(r.spec, RingSpec) and _torn(r.in_data)
    ]
    assert torn, "synth seed 4 leaves a half-received request on domain 1"
    for domid in torn:
        assert stream_main(["extract", str(synth_dump), "--domain", str(domid), str(out)]) == 2
        assert "partial message" in capsys.readouterr().err


def test_extracted_stream_loads_into_a_store(synth_dump: Path, tmp_path: Path) -> None:
    domid = 3
    out = tmp_path / "dom3.xss"
    assert stream_main(["extract", str(synth_dump), "--domain", str(domid), str(out)]) == 0
    b = Side((9,))
    b.ok(DOM0, MsgType.MKDIR, "/local/domain")
    b.introduce(9, 2, home=False)
    with StreamReader(str(out)) as reader:
        done = import_domain(b.store, list(reader), 9)
    assert done.old_domid == 3 and done.nodes > 10
    assert b.store.check() == []
    assert not any(p.startswith("/local/domain/3") for p in b.store.nodes)


def test_check_accepts_a_home_only_at_the_top_of_a_migration_stream() -> None:
    perms = (NodePerm("n", 0, 5),)
    home = NodeData(0, 0, 0, perms, "/local/domain/5", b"")
    child = NodeData(0, 0, 0, perms, "/local/domain/5/x", b"")
    conn = ConnectionData(1, 0, 0, RingSpec(5, 0x7FF4, 7))
    ok, _ = check_all(write_stream([conn, home, child]) + b"\0" * 8)
    assert not [d for d in ok if d.rule == "node-parent-missing"]
    live = write_stream([GlobalData(-1, -1), conn, home, child]) + b"\0" * 8
    assert [d.rule for d in check_all(live)[0] if d.rule == "node-parent-missing"] == [
        "node-parent-missing"
    ]
    other = write_stream([conn, NodeData(0, 0, 0, perms, "/vm/x", b"")]) + b"\0" * 8
    assert "node-parent-missing" in [d.rule for d in check_all(other)[0]]


def test_cli_entry_point(synth_dump: Path, tmp_path: Path) -> None:
    out = tmp_path / "dom2.xss"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxenstored.cli.stream_tool",
            "extract",
            str(synth_dump),
            "--domain",
            "2",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    check = subprocess.run(
        [sys.executable, "-m", "pyxenstored.cli.stream_tool", "check", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 errors" in check.stdout + check.stderr


C417_DUMP = Path(__file__).parent.parent / "data" / "c417" / "basic.state"


def test_extract_from_a_c417_dump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real C 4.17 live-update dump (version 1): domain 2 is clean, domain 1 mid-message."""
    out = tmp_path / "dom2.xss"
    assert stream_main(["extract", str(C417_DUMP), "--domain", "2", str(out)]) == 0
    diags, _ = check_all(out.read_bytes())
    assert [d for d in diags if d.severity.name == "ERROR"] == [], diags
    cut = _records(out)
    assert [type(r).__name__ for r in cut][:2] == ["ConnectionData", "WatchData"]
    assert not any(isinstance(r, DomainData) for r in cut)  # 4.17 wrote none
    b = Side((9,))
    b.ok(DOM0, MsgType.MKDIR, "/local/domain")
    b.introduce(9, 2)
    done = import_domain(b.store, cut, 9)
    assert (done.old_domid, done.watches) == (2, 1)
    assert b.store.nodes["/local/domain/9"].perms[0][0] == 9
    assert b.store.check() == []
    assert stream_main(["extract", str(C417_DUMP), "--domain", "1", str(out)]) == 2
    assert "partial reply" in capsys.readouterr().err
