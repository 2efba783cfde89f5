"""Throughput and memory of the stream reader, writer and checker.

Prints, for a synthetic 1000-domain stream (>= 100 000 NODE_DATA records):
read, write and check throughput (records/s and MB/s, median of ``--runs``
runs) and the peak memory of each as a separate process; then generates a
stream of at least ``--big-gb`` GB in a temporary file and measures the
peak memory (and time) of ``check`` and ``dump`` on it in subprocesses, and
deletes the file.

    python bench/stream_bench.py [--domains 1000] [--runs 5] [--big-gb 1] [--skip-big]

Targets on the project's 2-core machine: read and write >= 400 000
records/s, check >= 250 000 records/s, check/dump of the 1 GB stream in
< 100 MB of memory.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from pyxenstored.stream.check import check_stream
from pyxenstored.stream.reader import StreamReader
from pyxenstored.stream.records import NodeData, Record
from pyxenstored.stream.synth import MAX_DOMAINS, SynthConfig, synth_records, write_synth
from pyxenstored.stream.writer import StreamWriter

# Runs one operation on a file in a fresh interpreter and prints "seconds maxrss_kb records".
_CHILD = r"""
import os, resource, sys, time
op, path = sys.argv[1], sys.argv[2]
t = time.perf_counter()
n = 0
if op == "check":
    from pyxenstored.stream.check import check_stream, CheckSummary
    s = CheckSummary()
    for _ in check_stream(path, s):
        pass
    n = s.records
elif op == "read":
    from pyxenstored.stream.reader import StreamReader
    with StreamReader(path) as r:
        for _ in r:
            n += 1
elif op == "dump":
    from pyxenstored.cli.stream_tool import main
    sys.stdout = open(os.devnull, "w")
    main(["dump", path])
    n = -1
elif op == "write":
    from pyxenstored.stream.reader import StreamReader
    from pyxenstored.stream.writer import StreamWriter
    with StreamReader(path) as r, open(os.devnull, "wb") as out:
        w = StreamWriter(out, version=r.header.version, big_endian=r.header.big_endian)
        for rec in r:
            w.write(rec)
            n += 1
        w.close()
dt = time.perf_counter() - t
# VmHWM: this process image's peak RSS (ru_maxrss would include the parent's
# peak, which Linux carries across fork and exec).
hwm = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
if not hwm:
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(dt, hwm, n, file=sys.__stdout__)
"""


def child(op: str, path: str) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, records) of ``op`` on ``path`` in a new process."""
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, op, path], check=True, capture_output=True, text=True
    )
    secs, rss_kb, n = res.stdout.split()
    return float(secs), int(rss_kb) / 1024, int(n)


def median_time(fn: Callable[[], object], runs: int) -> float:
    """Median CPU time of ``runs`` calls: on a shared 2-core machine wall time
    measures the neighbours as much as the code."""
    times = []
    for _ in range(runs):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def rate_line(label: str, records: int, nbytes: int, secs: float) -> str:
    return (
        f"  {label:<22}{records / secs:>12,.0f} records/s {nbytes / secs / 1e6:>8.1f} MB/s"
        f"   ({secs * 1000:.0f} ms median)"
    )


def bench_small(domains: int, runs: int) -> None:
    buf = io.BytesIO()
    cfg = SynthConfig(domains=domains, seed=1)
    write_synth(buf, cfg)
    data = buf.getvalue()
    records: list[Record] = list(StreamReader(data))
    nodes = sum(isinstance(r, NodeData) for r in records)
    n = len(records)
    print(
        f"synthetic stream: {domains} domains, {n:,} records ({nodes:,} NODE_DATA), {len(data):,} bytes"
    )

    def read() -> None:
        for _ in StreamReader(data):
            pass

    def read_raw() -> None:
        for _ in StreamReader(data).iter_raw():
            pass

    def write() -> None:
        out = io.BytesIO()
        w = StreamWriter(out, version=2)
        for r in records:
            w.write(r)
        w.close()

    def check() -> None:
        for _ in check_stream(data):
            pass

    def generate() -> None:
        for _ in synth_records(cfg):
            pass

    print("throughput (in memory, one core, median CPU time):")
    print(rate_line("read (decode)", n, len(data), median_time(read, runs)))
    print(rate_line("read (framing only)", n, len(data), median_time(read_raw, runs)))
    print(rate_line("write", n, len(data), median_time(write, runs)))
    print(rate_line("check", n, len(data), median_time(check, runs)))
    print(rate_line("synth (records only)", n, len(data), median_time(generate, max(1, runs // 2))))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "small.xs")
        with open(path, "wb") as f:
            f.write(data)
        print("peak memory, each operation in its own process on the file:")
        for op in ("read", "write", "check", "dump"):
            secs, rss, _ = child(op, path)
            print(f"  {op:<22}{rss:>8.1f} MB   ({secs:.2f} s)")


def big_config(target_bytes: int, seed: int) -> SynthConfig:
    """Enough domains and devices to reach ``target_bytes``."""
    probe = SynthConfig(domains=20, seed=seed, vifs=8, vbds=8)
    buf = io.BytesIO()
    write_synth(buf, probe)
    per_domain = len(buf.getvalue()) / probe.domains
    domains = math.ceil(target_bytes * 1.02 / per_domain)
    if domains > MAX_DOMAINS:
        raise SystemExit(f"--big-gb too large for {MAX_DOMAINS} domains of 16 devices")
    return SynthConfig(domains=domains, seed=seed, vifs=8, vbds=8)


def bench_big(gb: float, with_dump: bool) -> None:
    target = int(gb * 1e9)
    cfg = big_config(target, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.xs")
        t = time.perf_counter()
        count = write_synth(path, cfg)
        size = os.path.getsize(path)
        print(
            f"big stream: {cfg.domains} domains x 16 devices, {count:,} records, "
            f"{size / 1e9:.2f} GB, generated in {time.perf_counter() - t:.0f} s"
        )
        ops = ["check"] + (["dump"] if with_dump else [])
        for op in ops:
            secs, rss, _ = child(op, path)
            print(
                f"  {op:<22}peak {rss:>7.1f} MB   {secs:.0f} s   {count / secs:,.0f} records/s"
                f"   {size / secs / 1e6:.1f} MB/s"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", type=int, default=1000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--big-gb", type=float, default=1.0)
    p.add_argument("--skip-big", action="store_true")
    p.add_argument(
        "--skip-big-dump", action="store_true", help="measure only check on the big stream"
    )
    args = p.parse_args()
    bench_small(args.domains, args.runs)
    if not args.skip_big:
        bench_big(args.big_gb, not args.skip_big_dump)


if __name__ == "__main__":
    main()
