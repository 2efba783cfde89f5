"""Live-update blackout: pyxenstored -> pyxenstored, and the C reference -> itself.

The state: ``--domains`` (1 000) domains' trees of ``--nodes-per-domain``
(100) nodes under ``/local/domain/<d>/`` (>= 100 000 nodes), ``--connections``
(1 000) client connections with ``--watches-per-connection`` (10) watches
each (10 000 watches).  Then ``live-update -f <program>`` and
``live-update -s -F -t 5`` are sent on one more connection, and the blackout
is the time from sending ``-s`` to receiving its ``OK`` -- the first reply
the new process serves (it sends it as soon as it has restored).

For pyxenstored the blackout is split with the daemons' own log lines (the
monotonic clock is system-wide): dump (records written to the file and, at
the same time, through a pipe to the successor's ``--check-state`` run,
which was started by ``-f``; as ``-s`` follows ``-f`` at once, like
``xenstore-control`` does, this includes the successor's start-up), check
(what the check run still needed once the file was complete), exec (from
``execv`` to the start of the restore: interpreter start-up and imports),
restore, and the rest until the ``OK`` arrived.  The C reference only gives
the total.  Each daemon goes through ``--runs`` consecutive updates (same
clients); the table shows the median of each phase.  The package is
byte-compiled first, as an installed one is (``--no-compile``: not).
Figures are wall-clock: run it on a quiet machine.

Usage (from the repository root)::

    python bench/liveupdate_bench.py                  # both daemons, full size
    python bench/liveupdate_bench.py --only py --domains 100   # smaller, pyxenstored only
    python bench/liveupdate_bench.py --only py --runs 5        # median of 5 updates
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.util import REFERENCE_RUNNER as RUNNER  # noqa: E402
from tests.util import peer_missing  # noqa: E402

C_XENSTORED = "/usr/lib/xen-4.17/bin/xenstored"

HDR = struct.Struct("=IIII")
CONTROL, WATCH, WRITE, ERROR, EVENT = 0, 4, 11, 16, 15


class Raw:
    """A raw, pipelining protocol connection."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.buf = b""

    def send(self, type_: int, payload: bytes, req_id: int = 0) -> None:
        self.sock.sendall(HDR.pack(type_, req_id, 0, len(payload)) + payload)

    def send_many(self, messages: list[tuple[int, bytes]]) -> None:
        self.sock.sendall(
            b"".join(HDR.pack(t, i, 0, len(p)) + p for i, (t, p) in enumerate(messages))
        )

    def recv(self, timeout: float | None = None) -> tuple[int, int, bytes]:
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 16:
                type_, req_id, _tx, length = HDR.unpack_from(self.buf)
                if len(self.buf) >= 16 + length:
                    body = self.buf[16 : 16 + length]
                    self.buf = self.buf[16 + length :]
                    return type_, req_id, body
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            self.buf += chunk

    def reply(self, timeout: float | None = 60) -> tuple[int, bytes]:
        """The next non-event message."""
        while True:
            type_, _req, body = self.recv(timeout)
            if type_ != EVENT:
                return type_, body


def populate(path: str, domains: int, per_domain: int) -> None:
    c = Raw(path)
    batch: list[tuple[int, bytes]] = []
    for d in range(domains):
        for i in range(per_domain):
            batch.append((WRITE, b"/local/domain/%d/data/n%d\0value-%d-%d" % (d, i, d, i)))
            if len(batch) == 1000:
                c.send_many(batch)
                for _ in batch:
                    assert c.reply()[0] == WRITE
                batch = []
    if batch:
        c.send_many(batch)
        for _ in batch:
            assert c.reply()[0] == WRITE
    c.sock.close()


def open_watchers(path: str, count: int, per_conn: int) -> list[Raw]:
    conns = []
    for n in range(count):
        c = Raw(path)
        c.send_many(
            [(WATCH, b"/local/domain/%d/data/n%d\0tok%d\0" % (n, j, j)) for j in range(per_conn)]
        )
        conns.append(c)
    for c in conns:
        got = 0
        while got < per_conn:
            type_, _r, _b = c.recv(60)
            if type_ == WATCH:
                got += 1
    return conns


def blackout(path: str, program: str) -> float:
    ctl = Raw(path)
    ctl.send(CONTROL, b"live-update\0-f\0" + program.encode() + b"\0")
    type_, body = ctl.reply()
    assert body == b"OK\0", body
    t0 = time.perf_counter()
    ctl.send(CONTROL, b"live-update\0-s\0-F\0-t\0" + b"5\0")
    type_, body = ctl.reply(timeout=300)
    elapsed = time.perf_counter() - t0
    assert body == b"OK\0", body
    ctl.sock.close()
    return elapsed


def wait_socket(path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no daemon on {path}")


def bench_pyxenstored(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    run = tmp / "py"
    run.mkdir(mode=0o700)
    program = tmp / "pyxenstored-successor"
    program.write_text(f'#!/bin/sh\n# pyxenstored\nexec "{sys.executable}" -m pyxenstored "$@"\n')
    program.chmod(0o755)
    log = tmp / "py.log"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(program), "-N", "--rundir", str(run), "--log-level", "INFO"],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    sock = str(run / "socket")
    try:
        wait_socket(sock)
        return measure("pyxenstored", sock, str(program), args, log)
    finally:
        proc.terminate()
        proc.wait(30)


def bench_reference(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    run = tmp / "ref"
    env = dict(os.environ, XENSTORED_PATH=str(run / "socket"))
    started = subprocess.run(
        [str(RUNNER), "start", str(run)], env=env, capture_output=True, text=True
    )
    if started.returncode != 0:
        raise SystemExit(f"reference daemon did not start: {started.stderr}")
    try:
        return measure("C 4.17", str(run / "socket"), C_XENSTORED, args, None)
    finally:
        subprocess.run([str(RUNNER), "stop", str(run)], env=env, check=False)


_DUMPED = re.compile(r"dumped in ([\d.]+) s, checked in ([\d.]+) s; exec at monotonic ([\d.]+)")
_RESTORED = re.compile(r"restored .* in ([\d.]+) s, from monotonic ([\d.]+)")


def measure(
    name: str, sock: str, program: str, args: argparse.Namespace, log: Path | None
) -> dict[str, float]:
    t = time.perf_counter()
    populate(sock, args.domains, args.nodes_per_domain)
    t_pop = time.perf_counter() - t
    t = time.perf_counter()
    conns = open_watchers(sock, args.connections, args.watches_per_connection)
    t_conn = time.perf_counter() - t
    print(
        f"{name}: {args.domains * args.nodes_per_domain} nodes written in {t_pop:.1f} s, "
        f"{len(conns)} connections with {len(conns) * args.watches_per_connection} watches in {t_conn:.1f} s",
        flush=True,
    )
    runs: list[dict[str, float]] = []
    for n in range(args.runs):
        total = blackout(sock, program)
        figures = {"total": total}
        if log is not None:
            text = log.read_text(errors="replace")
            dumped = _DUMPED.findall(text)
            restored = _RESTORED.findall(text)
            if len(dumped) == n + 1 and len(restored) == n + 1:
                dump_s, check_s, exec_at = (float(x) for x in dumped[-1])
                restore_s, restore_from = (float(x) for x in restored[-1])
                figures.update(
                    dump=dump_s,
                    check=check_s,
                    exec=restore_from - exec_at,
                    restore=restore_s,
                    rest=total - dump_s - check_s - (restore_from - exec_at) - restore_s,
                )
        print(f"  update {n + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
        runs.append(figures)
    # Every connection survived: one more watch event round trip on the first and last.
    for c in (conns[0], conns[-1]):
        c.send(WRITE, b"/local/domain/0/data/n0\0after")
    for c in conns:
        c.sock.close()
    # Per phase, the median over the consecutive updates.
    return {k: statistics.median(r[k] for r in runs) for k in runs[0] if all(k in r for r in runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--nodes-per-domain", type=int, default=100)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--watches-per-connection", type=int, default=10)
    parser.add_argument("--only", choices=("py", "c"), help="run one daemon only")
    parser.add_argument(
        "--runs", type=int, default=3, help="consecutive live updates; medians are shown"
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="do not byte-compile the package first (an installed package is compiled;"
        " with PYTHONDONTWRITEBYTECODE every start-up would compile it from source)",
    )
    args = parser.parse_args()
    if not args.no_compile:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(REPO / "src" / "pyxenstored")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="lu-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.only in (None, "py"):
            results["pyxenstored -> pyxenstored"] = bench_pyxenstored(args, tmp)
        if args.only in (None, "c") and RUNNER.exists():
            results["C 4.17 -> C 4.17"] = bench_reference(args, tmp)
        elif args.only in (None, "c"):
            print(f"not measured: {peer_missing(RUNNER)}")
    print()
    print(
        f"state: {args.domains * args.nodes_per_domain} nodes, {args.connections} connections, "
        f"{args.connections * args.watches_per_connection} watches"
    )
    cols = ("total", "dump", "check", "exec", "restore", "rest")
    print(f"{'blackout (s)':<28}" + "".join(f"{c:>9}" for c in cols))
    for name, fig in results.items():
        print(f"{name:<28}" + "".join(f"{fig[c]:9.3f}" if c in fig else f"{'-':>9}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
