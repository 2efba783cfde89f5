"""Ops/s for a guest domain on a shared ring: pyxenstored vs the C reference.

One harness for both daemons: each runs in its own ring directory on the
simulated hypervisor of the C reference daemons' directory (``PYXENSTORED_PEERS``,
see ``tests/util.py``; the C reference through its
shim with ``XS_SHIM_RINGDIR``, pyxenstored with ``--ring-dir``), dom0
introduces domain 5 over the socket, and the project's client plays the
guest on ``ring-dom5``.  Measured, each as the median of ``--repeat`` runs of
``--duration`` seconds:

* ``seq read`` / ``seq write`` -- one request in flight (a PV driver's
  xenbus calls);
* ``pipe read dN`` -- N requests in flight, replies matched by id (N above
  the outstanding quota of 20 exercises the daemon's back-pressure); the
  depths are ``--depths``.

Beside the guest's ops/s, over the same runs (medians):

* the daemon's own CPU time per request (all its threads,
  ``/proc/PID/task/*/schedstat``): the machine's other load slows the
  guest's clock more than it changes what a request costs the daemon;
* its ``read`` calls per request (``/proc/PID/io``): reading the guests'
  kicks is most of them;
* the share of the run it was busy (CPU time over the run's time): below 1
  with requests still to come, it waited for the guest.

The daemons run at once and their runs alternate, so that the machine's
other load falls on both alike.  The daemons are pinned to ``--daemon-cpu``,
the guest to ``--guest-cpu``.  The C
reference never notifies guests (its shim drops notifications), so the guest
polls its page for it; pyxenstored writes to ``notify-dom5`` and the guest
sleeps on that FIFO.  ``pyxenstored-xen`` is pyxenstored on its Xen backend
under the C reference's shim (the libraries' calls answered as for C, so
no notifications either: the guest polls, as for C).  ``pyxenstored-polled``
is pyxenstored on ``sim`` with a guest that polls as it must for the other
two (it opens no notification FIFO): beside ``pyxenstored`` it shows what
the guest's way of waiting costs, beside ``pyxenstored-xen`` what the
backend costs.  Run::

    python bench/ring_bench.py --duration 2 --repeat 3
    python bench/ring_bench.py --daemons pyxenstored-polled,pyxenstored-xen --depths 4,16,64
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pyxenstored.client import Client, Perm, create_ring_page
from pyxenstored.wire import MsgType

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]
from tests.launcher import accepts  # noqa: E402
from tests.util import REFERENCE_RUNNER, peer_missing, shim_library  # noqa: E402

from ops_bench import cpu_seconds  # noqa: E402

GUEST, PORT = 5, 7
VALUE = b"v" * 32


@contextlib.contextmanager
def reference(cpu: str) -> Iterator[tuple[str, int]]:
    """The C reference serving rings in a fresh dir; yields the dir and its pid."""
    runner = REFERENCE_RUNNER
    if not runner.exists():
        raise SystemExit(peer_missing(runner))
    ring_dir = tempfile.mkdtemp(prefix="rb-c-", dir="/tmp")
    env = dict(os.environ, XS_SHIM_RINGDIR=ring_dir, XS_SHIM_DOMAINS=f"0,{GUEST}")
    env.pop("XENSTORED_PATH", None)
    out = subprocess.run(
        [str(runner), "start", ring_dir], env=env, capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise SystemExit(f"reference xenstored did not start: {out.stderr}")
    pid = int(out.stdout.split()[-1])
    subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], capture_output=True)
    try:
        yield ring_dir, pid
    finally:
        subprocess.run([str(runner), "stop", ring_dir], capture_output=True, timeout=30)
        shutil.rmtree(ring_dir, ignore_errors=True)


@contextlib.contextmanager
def pyxenstored(cpu: str, backend: str = "sim") -> Iterator[tuple[str, int]]:
    """pyxenstored on ``backend`` serving rings in a fresh dir; yields the dir and its pid."""
    ring_dir = tempfile.mkdtemp(prefix="rb-py-", dir="/tmp")
    env = dict(os.environ)
    env.pop("XENSTORED_PATH", None)
    if backend == "xen":
        shim = shim_library()
        if not shim.exists():
            raise SystemExit(f"{shim} not found (reference-xenstored install builds it)")
        env.update(LD_PRELOAD=str(shim), XS_SHIM_RINGDIR=ring_dir, XS_SHIM_DOMAINS=f"0,{GUEST}")
        cmd = [
            sys.executable,
            "-m",
            "pyxenstored",
            "-N",
            "--hypervisor",
            "xen",
            "--rundir",
            ring_dir,
        ]
    else:
        Path(ring_dir, "domains").write_text(f"0\n{GUEST}\n")
        cmd = [
            sys.executable,
            "-m",
            "pyxenstored",
            "-N",
            "--rundir",
            ring_dir,
            "--ring-dir",
            ring_dir,
        ]
    proc = subprocess.Popen(
        ["taskset", "-c", cpu, *cmd],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not accepts(os.path.join(ring_dir, "socket")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("pyxenstored did not start")
            time.sleep(0.02)
        yield ring_dir, proc.pid  # taskset execs the daemon: one pid
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(ring_dir, ignore_errors=True)


def introduce(ring_dir: str, notify: bool = True) -> Client:
    """What a toolstack does; returns the guest's client on its ring.

    ``notify`` False: the guest opens no notification FIFO and polls its page.
    """
    with Client.connect_socket(os.path.join(ring_dir, "socket"), timeout=20) as dom0:
        create_ring_page(ring_dir, GUEST)
        home = f"/local/domain/{GUEST}"
        dom0.mkdir(home)
        dom0.set_perms(home, [Perm("n", GUEST)])
        dom0.introduce(GUEST, 1, PORT)
    return Client.connect_ring(ring_dir, GUEST, PORT, timeout=20, notify=notify)


def read_calls(pid: int) -> int:
    """``read`` system calls ``pid`` made so far (-1: not readable here)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("syscr:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def seq_read(guest: Client, until: float) -> int:
    count = 0
    while time.monotonic() < until:
        for _ in range(50):
            guest.read("bench/value")
        count += 50
    return count


def seq_write(guest: Client, until: float) -> int:
    count = 0
    while time.monotonic() < until:
        for _ in range(50):
            guest.write("bench/value", VALUE)
        count += 50
    return count


def pipe_read(depth: int) -> Callable[[Client, float], int]:
    payload = b"bench/value\0"

    def run(guest: Client, until: float) -> int:
        count = 0
        pending = [guest.submit(MsgType.READ, payload) for _ in range(depth)]
        while time.monotonic() < until:
            for _ in range(50):
                guest.collect(pending.pop(0))
                pending.append(guest.submit(MsgType.READ, payload))
            count += 50
        for rid in pending:
            guest.collect(rid)
        return count

    return run


@dataclass(slots=True, frozen=True)
class Daemon:
    """One daemon under test: its guest and its pid."""

    guest: Client
    pid: int


Table = dict[str, dict[str, float]]


def measure(
    daemons: dict[str, Daemon],
    tests: list[tuple[str, Callable[[Client, float], int]]],
    args: argparse.Namespace,
) -> tuple[Table, Table, Table, Table]:
    """Median ops/s, daemon CPU us and reads per op, and daemon busy share, per daemon and test.

    The daemons' runs are interleaved.
    """
    rates: dict[str, dict[str, list[float]]] = {n: {t: [] for t, _ in tests} for n in daemons}
    costs: dict[str, dict[str, list[float]]] = {n: {t: [] for t, _ in tests} for n in daemons}
    reads: dict[str, dict[str, list[float]]] = {n: {t: [] for t, _ in tests} for n in daemons}
    busy: dict[str, dict[str, list[float]]] = {n: {t: [] for t, _ in tests} for n in daemons}
    for test, fn in tests:
        for daemon in daemons.values():
            fn(daemon.guest, time.monotonic() + 0.2)  # warm-up
        for _ in range(args.repeat):
            # Alternating daemons spreads the machine's other load over both.
            for name, daemon in daemons.items():
                cpu = cpu_seconds(daemon.pid)
                calls = read_calls(daemon.pid)
                start = time.monotonic()
                done = fn(daemon.guest, start + args.duration)
                elapsed = time.monotonic() - start
                cpu = cpu_seconds(daemon.pid) - cpu
                rates[name][test].append(done / elapsed)
                costs[name][test].append(cpu / done * 1e6)
                reads[name][test].append((read_calls(daemon.pid) - calls) / done)
                busy[name][test].append(cpu / elapsed)
    return _medians(rates), _medians(costs), _medians(reads), _medians(busy)


def _medians(runs: dict[str, dict[str, list[float]]]) -> Table:
    return {n: {t: statistics.median(v) for t, v in per.items()} for n, per in runs.items()}


def print_table(title: str, table: Table, names: list[str], tests: list[str], fmt: str) -> None:
    print(title)
    print(
        f"{'test':<16}"
        + "".join(f"{n:>19}" for n in names)
        + (f"{'2nd/1st':>9}" if len(names) == 2 else "")
    )
    for test in tests:
        row = f"{test:<16}" + "".join(f"{table[n][test]:>19{fmt}}" for n in names)
        if len(names) == 2 and table[names[0]][test]:
            row += f"{table[names[1]][test] / table[names[0]][test]:>9.2f}"
        print(row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--daemon-cpu", default="0", help="CPU list for the daemon (taskset)")
    parser.add_argument("--guest-cpu", type=int, default=1, help="CPU for the guest")
    parser.add_argument(
        "--daemons",
        default="reference,pyxenstored",
        help="which daemons, comma separated (reference, pyxenstored, pyxenstored-polled,"
        " pyxenstored-xen)",
    )
    parser.add_argument(
        "--depths",
        default="16,64",
        help="requests in flight for the pipelined tests, comma separated",
    )
    parser.add_argument(
        "--no-seq", action="store_true", help="leave out the one-request-in-flight tests"
    )
    args = parser.parse_args(argv)
    try:
        depths = [int(d) for d in args.depths.split(",") if d.strip()]
    except ValueError:
        parser.error(f"--depths: not a list of numbers: {args.depths}")
    if any(d < 1 for d in depths):
        parser.error("--depths: each depth is at least 1")
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.guest_cpu})
    tests: list[tuple[str, Callable[[Client, float], int]]] = []
    if not args.no_seq:
        tests += [("seq read", seq_read), ("seq write", seq_write)]
    tests += [(f"pipe read d{d}", pipe_read(d)) for d in depths]
    # name -> (starter, whether the guest sleeps on the notification FIFO)
    starters: dict[
        str, tuple[Callable[[str], contextlib.AbstractContextManager[tuple[str, int]]], bool]
    ] = {
        "reference": (reference, True),
        "pyxenstored": (pyxenstored, True),
        "pyxenstored-polled": (pyxenstored, False),
        "pyxenstored-xen": (lambda cpu: pyxenstored(cpu, "xen"), True),
    }
    names = [n.strip() for n in args.daemons.split(",") if n.strip()]
    for name in names:
        if name not in starters:
            parser.error(f"unknown daemon {name!r}")
    with contextlib.ExitStack() as stack:
        daemons: dict[str, Daemon] = {}
        for name in names:
            start, notify = starters[name]
            ring_dir, pid = stack.enter_context(start(args.daemon_cpu))
            guest = introduce(ring_dir, notify)
            stack.callback(guest.close)
            guest.write("bench/value", VALUE)
            daemons[name] = Daemon(guest, pid)
        rates, costs, reads, busy = measure(daemons, tests, args)
    labels = [t for t, _ in tests]
    runs = f"median of {args.repeat} x {args.duration:g} s"
    print_table(f"guest ops/s over a ring ({runs})", rates, names, labels, ",.0f")
    print()
    print_table(f"daemon CPU us per request ({runs})", costs, names, labels, ".2f")
    print()
    print_table(f"daemon read calls per request ({runs})", reads, names, labels, ".2f")
    print()
    print_table(f"daemon busy, CPU time / run time ({runs})", busy, names, labels, ".2f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
