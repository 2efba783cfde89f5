"""Side-by-side benchmark: pyxenstored against the C reference, in one run.

Both daemons run at the same time, each pinned with ``taskset`` to the same
CPU (``--daemon-cpu``, default 0); every client process is pinned to another
(``--client-cpu``, default 1).  Each workload runs against the reference,
then against pyxenstored, and one table is printed with a row per figure and
the ratio pyxenstored/reference expressed so that **>= 1.0 means pyxenstored
is at least as good** (speeds: py/ref; times and memory: ref/py).

Workloads:

* ops/s of READ, WRITE, DIRECTORY, GET_PERMS and whole transactions,
  sequential and pipelined, 1 and 8 connections (``bench/ops_bench.py``),
  and the daemon's CPU time per operation in the same runs (less sensitive
  to other load on the machine than the rates);
* Debian's ``test-xenstore -i N`` average per test (ns);
* watch fan-out: one WRITE, 1 000 watches on the written node (100
  connections x 10 tokens), time until every event has arrived;
* transaction-conflict storm: 8 clients updating 4 overlapping nodes in
  transactions (read two, write one): commits/s and EAGAIN rate;
* memory: RSS growth for 100 000 nodes (16-byte values), per node;
* a guest domain on its ring (shim conventions): sequential READs per second.

Usage (from the repository root)::

    python bench/compare.py                 # full run, a few minutes
    python bench/compare.py --quick         # shorter runs, for a smoke test
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import re
import select
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "src")]

from tests.conformance.daemons import PYXENSTORED, REFERENCE, Daemon, available  # noqa: E402
from tests.conformance.rawclient import RingClient  # noqa: E402

import ops_bench  # noqa: E402

HDR = struct.Struct("=IIII")
WATCH, TX_START, TX_END, READ, WRITE, ERROR, EVENT = 4, 6, 7, 2, 11, 16, 15
INTRODUCE, MKDIR, SET_PERMS = 8, 12, 14
TEST_XENSTORE = "/usr/lib/xen-4.17/bin/test-xenstore"


@dataclass(slots=True, frozen=True)
class Row:
    name: str
    unit: str
    ref: float
    py: float
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ref <= 0 or self.py <= 0:
            return None
        return self.py / self.ref if self.higher_is_better else self.ref / self.py


# --- a tiny raw client -------------------------------------------------------------


class Raw(ops_bench.Client):
    """ops_bench's client, patient while connecting, with watch events in view."""

    def __init__(self, path: str) -> None:
        super().__init__(path, retry_for=5.0)

    def send(self, type_: int, payload: bytes, tx_id: int = 0, req_id: int = 0) -> None:
        self.sock.sendall(HDR.pack(type_, req_id, tx_id, len(payload)) + payload)

    def next_msg(self) -> tuple[int, int, bytes]:
        while True:
            if len(self.buf) >= 16:
                type_, _req, tx_id, length = HDR.unpack_from(self.buf)
                if len(self.buf) >= 16 + length:
                    body = bytes(self.buf[16 : 16 + length])
                    del self.buf[: 16 + length]
                    return type_, tx_id, body
            self.fill()

    def reply(self) -> tuple[int, bytes]:
        while True:
            type_, _tx, body = self.next_msg()
            if type_ != EVENT:
                return type_, body

    def call(self, type_: int, payload: bytes, tx_id: int = 0) -> tuple[int, bytes]:
        self.send(type_, payload, tx_id)
        return self.reply()


# --- workloads -------------------------------------------------------------------------


def ops_rows(daemons: dict[str, Daemon], args: argparse.Namespace) -> list[Row]:
    rows = []
    cpu_rows = []
    for op in ops_bench.OPS:
        for mode in ("seq", "pipe"):
            for conns in (1, 8):
                cell = ops_bench.Cell(op, mode, conns)
                measured: dict[str, list[tuple[float, int, float]]] = {k: [] for k in daemons}
                spent = dict.fromkeys(daemons, 0.0)
                # The daemons take turns run by run, so that a burst of other
                # load on the machine hits both rather than one of them.
                for _ in range(args.repeat):
                    for kind, daemon in daemons.items():
                        before = ops_bench.cpu_seconds(daemon.pid)
                        measured[kind].append(
                            ops_bench.measure(
                                daemon.socket,
                                cell,
                                args.depth,
                                args.duration,
                                args.client_cpu,
                                args.client_procs,
                            )
                        )
                        spent[kind] += ops_bench.cpu_seconds(daemon.pid) - before
                rates = {}
                cpu_per_op = {}
                client_load = {}
                for kind, runs in measured.items():
                    rates[kind] = statistics.median(rate for rate, _e, _c in runs)
                    client_load[kind] = statistics.median(c for _r, _e, c in runs) / args.duration
                    # setup and clean-up requests are included: a slight overestimate
                    done = sum(rate for rate, _e, _c in runs) * args.duration
                    cpu_per_op[kind] = spent[kind] / max(1.0, done) * 1e6
                name = f"ops {op} {mode} {conns}c"
                # Near 100 %: the one client CPU, not the daemon, set the pace.
                load = f"client CPU {client_load[REFERENCE]:.0%}/{client_load[PYXENSTORED]:.0%}"
                rows.append(Row(name, "ops/s", rates[REFERENCE], rates[PYXENSTORED], note=load))
                cpu_rows.append(
                    Row(
                        f"cpu {op} {mode} {conns}c",
                        "us CPU/op",
                        cpu_per_op[REFERENCE],
                        cpu_per_op[PYXENSTORED],
                        higher_is_better=False,
                    )
                )
                print(
                    f"  {name}: ref {rates[REFERENCE]:.0f}, py {rates[PYXENSTORED]:.0f}", flush=True
                )
    return rows + cpu_rows


_TX_LINE = re.compile(r"^(.{10}): avg: (\d+) ns")


def test_xenstore_rows(daemons: dict[str, Daemon], args: argparse.Namespace) -> list[Row]:
    if not os.access(TEST_XENSTORE, os.X_OK):
        print("  test-xenstore not installed; rows skipped")
        return []
    results: dict[str, dict[str, float]] = {}
    for kind, daemon in daemons.items():
        env = dict(os.environ, XENSTORED_PATH=daemon.socket)
        cmd = ["taskset", "-c", str(args.client_cpu), TEST_XENSTORE, "-i", str(args.iterations)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        parsed = {}
        for line in out.stdout.splitlines():
            m = _TX_LINE.match(line)
            if m:
                parsed[m.group(1).strip()] = float(m.group(2))
        if out.returncode != 0 or not parsed:
            print(f"  test-xenstore failed on {kind}: {out.stdout[-500:]}{out.stderr[-500:]}")
        results[kind] = parsed
    rows = []
    for name, ref_ns in results.get(REFERENCE, {}).items():
        py_ns = results.get(PYXENSTORED, {}).get(name, 0.0)
        rows.append(Row(f"test-xenstore {name}", "ns avg", ref_ns, py_ns, higher_is_better=False))
    return rows


def watch_fanout(path: str, conns: int, per_conn: int, writes: int) -> float:
    """Median seconds from a WRITE until all conns*per_conn events arrived."""
    clients = [Raw(path) for _ in range(conns)]
    node = b"/bench-fanout/node"
    writer = Raw(path)
    writer.call(WRITE, node + b"\0x")
    for c in clients:
        for t in range(per_conn):
            c.send(WATCH, node + b"\0tok%d\0" % t)
        # each WATCH gives an OK and one initial event
        got_ok = got_ev = 0
        while got_ok < per_conn or got_ev < per_conn:
            type_, _tx, _body = c.next_msg()
            if type_ == EVENT:
                got_ev += 1
            else:
                got_ok += 1
    times = []
    for i in range(writes):
        t0 = time.perf_counter()
        writer.call(WRITE, node + b"\0v%d" % i)
        pending = {c.sock.fileno(): (c, per_conn) for c in clients}
        while pending:
            ready, _, _ = select.select([c.sock for c, _n in pending.values()], [], [], 30)
            if not ready:
                raise TimeoutError("watch events missing")
            for sock in ready:
                c, left = pending[sock.fileno()]
                c.fill()
                while len(c.buf) >= 16:
                    _t, _r, _x, length = HDR.unpack_from(c.buf)
                    if len(c.buf) < 16 + length:
                        break
                    del c.buf[: 16 + length]
                    left -= 1
                if left <= 0:
                    del pending[sock.fileno()]
                else:
                    pending[sock.fileno()] = (c, left)
        times.append(time.perf_counter() - t0)
    writer.call(13, b"/bench-fanout\0")
    for c in [*clients, writer]:
        c.sock.close()
    return statistics.median(times)


def _fanout_in_child(path: str, cpu: int, writes: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    os.sched_setaffinity(0, {cpu})
    out.put(watch_fanout(path, 100, 10, writes))


def fanout_rows(daemons: dict[str, Daemon], args: argparse.Namespace) -> list[Row]:
    ctx = mp.get_context("fork")
    secs = {}
    for kind, daemon in daemons.items():
        q = ctx.Queue()
        p = ctx.Process(
            target=_fanout_in_child, args=(daemon.socket, args.client_cpu, args.fanout_writes, q)
        )
        p.start()
        secs[kind] = q.get(timeout=600)
        p.join()
    return [
        Row(
            "watch fan-out 1000 (one write)",
            "ms",
            secs[REFERENCE] * 1e3,
            secs[PYXENSTORED] * 1e3,
            higher_is_better=False,
        )
    ]


def _storm_worker(
    path: str, index: int, duration: float, cpu: int, barrier: object, out: mp.Queue
) -> None:  # type: ignore[type-arg]
    os.sched_setaffinity(0, {cpu})
    c = Raw(path)
    keys = [b"/bench-storm/k%d" % k for k in range(4)]
    barrier.wait()  # type: ignore[attr-defined]
    commits = eagain = 0
    i = 0
    until = time.monotonic() + duration
    while time.monotonic() < until:
        i += 1
        type_, body = c.call(TX_START, b"\0")
        tx = int(body.rstrip(b"\0"))
        a, b = keys[(index + i) % 4], keys[(index + 2 * i + 1) % 4]
        c.call(READ, a + b"\0", tx)
        c.call(READ, b + b"\0", tx)
        c.call(WRITE, a + b"\0" + b"%d-%d" % (index, i), tx)
        type_, body = c.call(TX_END, b"T\0", tx)
        if type_ == ERROR and body == b"EAGAIN\0":
            eagain += 1
        elif type_ == TX_END:
            commits += 1
        else:
            raise RuntimeError(f"unexpected reply {type_} {body!r}")
    c.sock.close()
    out.put((commits, eagain))


def storm(path: str, duration: float, cpu: int) -> tuple[float, float]:
    setup = Raw(path)
    for k in range(4):
        setup.call(WRITE, b"/bench-storm/k%d\x000" % k)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(8)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_storm_worker, args=(path, i, duration, cpu, barrier, out))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=duration + 60) for _ in procs]
    for p in procs:
        p.join()
    setup.call(13, b"/bench-storm\0")
    setup.sock.close()
    commits = sum(r[0] for r in results)
    eagain = sum(r[1] for r in results)
    return commits / duration, eagain / max(1, commits + eagain)


def storm_rows(daemons: dict[str, Daemon], args: argparse.Namespace) -> list[Row]:
    res = {kind: storm(d.socket, args.duration * 2, args.client_cpu) for kind, d in daemons.items()}
    return [
        Row("tx storm 8c commits", "commits/s", res[REFERENCE][0], res[PYXENSTORED][0]),
        Row(
            "tx storm 8c EAGAIN rate",
            "% of ends",
            res[REFERENCE][1] * 100,
            res[PYXENSTORED][1] * 100,
            higher_is_better=False,
        ),
    ]


def ring_rate(daemon: Daemon, requests: int) -> float:
    """Sequential READs per second of guest domain 5 on its ring."""
    admin = Raw(daemon.socket)
    admin.call(MKDIR, b"/local/domain/5\0")
    admin.call(SET_PERMS, b"/local/domain/5\0n5\0")
    admin.call(INTRODUCE, b"5\x001\x00105\0")
    admin.call(WRITE, b"/local/domain/5/v\0value")
    guest = RingClient(str(daemon.rundir), 5, 105)
    try:
        t0 = time.perf_counter()
        for _ in range(requests):
            guest.request(READ, b"v\0")
        elapsed = time.perf_counter() - t0
    finally:
        guest.close()
        admin.sock.close()
    return requests / elapsed


def _ring_in_child(daemon: Daemon, cpu: int, requests: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    os.sched_setaffinity(0, {cpu})
    out.put(ring_rate(daemon, requests))


def ring_rows(daemons: dict[str, Daemon], args: argparse.Namespace) -> list[Row]:
    ctx = mp.get_context("fork")
    rates = {}
    for kind, daemon in daemons.items():
        q = ctx.Queue()
        p = ctx.Process(
            target=_ring_in_child, args=(daemon, args.client_cpu, args.ring_requests, q)
        )
        p.start()
        rates[kind] = q.get(timeout=600)
        p.join()
    return [Row("ring guest READ seq 1c", "ops/s", rates[REFERENCE], rates[PYXENSTORED])]


def fill_nodes(path: str, count: int, batch: int = 64) -> None:
    c = Raw(path)
    value = b"v" * 16
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        msgs = bytearray()
        for i in range(sent, sent + n):
            body = b"/bench-mem/d%d/n%d\0" % (i // 1000, i % 1000) + value
            msgs += HDR.pack(WRITE, i, 0, len(body)) + body
        c.sock.sendall(msgs)
        for _ in range(n):
            type_, body = c.reply()
            if type_ == ERROR:
                raise RuntimeError(f"write failed: {body!r}")
        sent += n
    c.sock.close()


def memory_rows(daemons: dict[str, Daemon], args: argparse.Namespace) -> list[Row]:
    per_node = {}
    for kind, daemon in daemons.items():
        before = daemon.rss_kib()
        fill_nodes(daemon.socket, args.nodes)
        time.sleep(0.2)
        after = daemon.rss_kib()
        per_node[kind] = (after - before) * 1024 / args.nodes
        Raw(daemon.socket).call(13, b"/bench-mem\0")
    return [
        Row(
            f"memory per node ({args.nodes} nodes)",
            "bytes RSS",
            per_node[REFERENCE],
            per_node[PYXENSTORED],
            higher_is_better=False,
        )
    ]


# --- output ------------------------------------------------------------------------


def machine_line() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print()
    print(f"machine: {machine_line()}")
    print(
        f"daemons pinned to CPU {args.daemon_cpu}, clients to CPU {args.client_cpu}; "
        "ratio >= 1.0: pyxenstored at least as good as the reference"
    )
    print()
    head = (
        f"| {'workload':<36} | {'unit':<10} | {'reference':>12} | {'pyxenstored':>12}"
        f" | {'ratio':>6} | {'note (ref/py)':<21} |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}"
        print(
            f"| {r.name:<36} | {r.unit:<10} | {r.ref:>12.1f} | {r.py:>12.1f} | {ratio:>6}"
            f" | {r.note:<21} |"
        )


WORKLOADS: dict[str, Callable[[dict[str, Daemon], argparse.Namespace], list[Row]]] = {
    "ops": ops_rows,
    "test-xenstore": test_xenstore_rows,
    "fanout": fanout_rows,
    "storm": storm_rows,
    "memory": memory_rows,
    "ring": ring_rows,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemon-cpu", default="0", help="CPU list for both daemons (taskset)")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU for the client processes")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per ops/storm run")
    parser.add_argument("--repeat", type=int, default=3, help="ops runs per cell (median)")
    parser.add_argument("--depth", type=int, default=32, help="pipeline depth")
    parser.add_argument(
        "--client-procs",
        type=int,
        help="client processes per ops row (default one per connection; see ops_bench --procs)",
    )
    parser.add_argument("--iterations", type=int, default=200, help="test-xenstore -i")
    parser.add_argument("--fanout-writes", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--ring-requests", type=int, default=3000)
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma list of workloads")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeat, args.iterations = 0.3, 1, 20
        args.fanout_writes, args.nodes, args.ring_requests = 3, 10_000, 300
    for kind in (REFERENCE, PYXENSTORED):
        ok, reason = available(kind)
        if not ok:
            print(f"cannot run {kind}: {reason}", file=sys.stderr)
            return 2
    daemons = {
        REFERENCE: Daemon(REFERENCE, cpus=args.daemon_cpu, guests=(5,)).start(),
        PYXENSTORED: Daemon(PYXENSTORED, cpus=args.daemon_cpu, guests=(5,)).start(),
    }
    rows: list[Row] = []
    try:
        for name in args.only.split(","):
            print(f"running {name} ...", flush=True)
            rows += WORKLOADS[name](daemons, args)
    finally:
        for d in daemons.values():
            d.stop()
    print_table(rows, args)
    print(
        f"\ncommand: python bench/compare.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
