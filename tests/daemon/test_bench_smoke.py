"""The request benchmarks still run: every row of ops_bench in both client
layouts, loop_bench, and the floor server answering ops_bench.

No figure is checked against another (timings are not test material); what
must hold is that each row completes without errors, reports a rate, and
leaves nothing behind in the daemon.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.daemon.wireclient import DIRECTORY, ERROR, call, connect
from tests.launcher import start_pyxenstored

BENCH = Path(__file__).resolve().parents[2] / "bench"
ROW = re.compile(r"^(read|write|directory|get_perms|transaction)\s+(seq|pipe)\s+(\d+)\s+(.*)$")


def run_bench(script: str, *args: str, timeout: float = 120.0) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def ops_rows(output: str) -> list[tuple[str, str, int, list[str]]]:
    rows = []
    for line in output.splitlines():
        match = ROW.match(line)
        if match:
            op, mode, conns, rest = match.groups()
            rows.append((op, mode, int(conns), rest.split()))
    return rows


@pytest.mark.parametrize("procs", [None, 1], ids=["process-per-connection", "one-process"])
def test_ops_bench_completes_every_row(tmp_path: Path, procs: int | None) -> None:
    daemon = start_pyxenstored(tmp_path)
    try:
        args = ["--socket", f"py={daemon.socket}:{daemon.pid}"]
        args += ["--duration", "0.2", "--repeat", "1", "--conns", "1,3", "--depth", "4"]
        if procs is not None:
            args += ["--procs", str(procs)]
        rows = ops_rows(run_bench("ops_bench.py", *args))
        assert [(op, mode, n) for op, mode, n, _cells in rows] == [
            (op, mode, n)
            for op in ("read", "write", "directory", "get_perms", "transaction")
            for mode in ("seq", "pipe")
            for n in (1, 3)
        ]
        for op, mode, n, cells in rows:
            rate, cpu, load = cells
            # An error count would follow the rate as "(Ne)".
            assert float(rate) > 0 and float(cpu) > 0 and load.endswith("%"), (op, mode, n)
        # Every worker removed its work area.
        with contextlib.closing(connect(daemon.socket)) as sock:
            kind, body = call(sock, DIRECTORY, b"/bench\0")
        assert kind == ERROR or body == b"", body
    finally:
        daemon.stop()


def test_loop_bench_prints_every_op() -> None:
    out = run_bench("loop_bench.py", "--requests", "400", "--runs", "1")
    ops = [line.split()[0] for line in out.splitlines()[2:]]
    assert ops == ["read", "write", "directory", "get_perms", "transaction"]
    out = run_bench("loop_bench.py", "--interpreter-only", "--requests", "400", "--runs", "1")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [row[0] for row in rows] == ["read", "write", "directory", "get_perms"]
    assert all(float(row[1]) > 0 for row in rows)


def test_floor_server_answers_ops_bench(tmp_path: Path) -> None:
    sock = tmp_path / "floor.sock"
    floor = subprocess.Popen([sys.executable, str(BENCH / "floor_server.py"), str(sock)])
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert floor.poll() is None and time.monotonic() < deadline, "floor server not up"
            time.sleep(0.05)
        out = run_bench(
            "ops_bench.py",
            *("--socket", str(sock), "--ops", "read,directory", "--modes", "seq"),
            *("--conns", "2", "--duration", "0.2", "--repeat", "1"),
        )
        rows = ops_rows(out)
        assert [(op, n) for op, _m, n, _c in rows] == [("read", 2), ("directory", 2)]
        assert all(float(cells[0]) > 0 for *_x, cells in rows)
    finally:
        floor.terminate()
        floor.wait(10)
