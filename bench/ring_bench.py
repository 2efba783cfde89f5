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
  the outstanding quota of 20 exercises the daemon's back-pressure).

Both daemons run at once and their runs alternate, so that the machine's
other load falls on both alike.  The daemons are pinned to ``--daemon-cpu``,
the guest to ``--guest-cpu``.  The C
reference never notifies guests (its shim drops notifications), so the guest
polls its page for it; pyxenstored writes to ``notify-dom5`` and the guest
sleeps on that FIFO.  ``pyxenstored-xen`` is pyxenstored on its Xen backend
under the C reference's shim (the libraries' calls answered as for C, so
no notifications either: the guest polls, as for C).  Run::

    python bench/ring_bench.py --duration 2 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pyxenstored.client import Client, Perm, create_ring_page
from pyxenstored.wire import MsgType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.util import REFERENCE_RUNNER, peer_missing, shim_library  # noqa: E402

GUEST, PORT = 5, 7
VALUE = b"v" * 32


@contextlib.contextmanager
def reference(cpu: str) -> Iterator[str]:
    """The C reference serving rings in a fresh dir; yields the dir."""
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
        yield ring_dir
    finally:
        subprocess.run([str(runner), "stop", ring_dir], capture_output=True, timeout=30)
        shutil.rmtree(ring_dir, ignore_errors=True)


@contextlib.contextmanager
def pyxenstored(cpu: str, backend: str = "sim") -> Iterator[str]:
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
        yield ring_dir
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(ring_dir, ignore_errors=True)


def accepts(path: str) -> bool:
    """The socket file appears at bind(), before listen(): try a connection."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def introduce(ring_dir: str) -> Client:
    """What a toolstack does; returns the guest's client on its ring."""
    with Client.connect_socket(os.path.join(ring_dir, "socket"), timeout=20) as dom0:
        create_ring_page(ring_dir, GUEST)
        home = f"/local/domain/{GUEST}"
        dom0.mkdir(home)
        dom0.set_perms(home, [Perm("n", GUEST)])
        dom0.introduce(GUEST, 1, PORT)
    return Client.connect_ring(ring_dir, GUEST, PORT, timeout=20)


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


def measure(
    guests: dict[str, Client],
    tests: list[tuple[str, Callable[[Client, float], int]]],
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """Median ops/s per daemon and test; the daemons' runs are interleaved."""
    runs: dict[str, dict[str, list[float]]] = {n: {t: [] for t, _ in tests} for n in guests}
    for test, fn in tests:
        for guest in guests.values():
            fn(guest, time.monotonic() + 0.2)  # warm-up
        for _ in range(args.repeat):
            # Alternating daemons spreads the machine's other load over both.
            for name, guest in guests.items():
                start = time.monotonic()
                done = fn(guest, start + args.duration)
                runs[name][test].append(done / (time.monotonic() - start))
    return {n: {t: statistics.median(v) for t, v in per.items()} for n, per in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--daemon-cpu", default="0", help="CPU list for the daemon (taskset)")
    parser.add_argument("--guest-cpu", type=int, default=1, help="CPU for the guest")
    parser.add_argument(
        "--daemons",
        default="reference,pyxenstored",
        help="which daemons, comma separated (reference, pyxenstored, pyxenstored-xen)",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.guest_cpu})
    tests: list[tuple[str, Callable[[Client, float], int]]] = [
        ("seq read", seq_read),
        ("seq write", seq_write),
        ("pipe read d16", pipe_read(16)),
        ("pipe read d64", pipe_read(64)),
    ]
    starters: dict[str, Callable[[str], contextlib.AbstractContextManager[str]]] = {
        "reference": reference,
        "pyxenstored": pyxenstored,
        "pyxenstored-xen": lambda cpu: pyxenstored(cpu, "xen"),
    }
    names = [n.strip() for n in args.daemons.split(",") if n.strip()]
    for name in names:
        if name not in starters:
            parser.error(f"unknown daemon {name!r}")
    with contextlib.ExitStack() as stack:
        guests: dict[str, Client] = {}
        for name in names:
            ring_dir = stack.enter_context(starters[name](args.daemon_cpu))
            guest = introduce(ring_dir)
            stack.callback(guest.close)
            guest.write("bench/value", VALUE)
            guests[name] = guest
        table = measure(guests, tests, args)
    print(f"guest ops/s over a ring (median of {args.repeat} x {args.duration:g} s)")
    print(
        f"{'test':<16}"
        + "".join(f"{n:>16}" for n in names)
        + (f"{'py/C':>8}" if len(names) == 2 else "")
    )
    for test, _fn in tests:
        row = f"{test:<16}" + "".join(f"{table[n][test]:>16,.0f}" for n in names)
        if len(names) == 2 and table[names[0]][test]:
            row += f"{table[names[1]][test] / table[names[0]][test]:>8.2f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
