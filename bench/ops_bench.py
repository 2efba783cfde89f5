"""Load generator for any xenstored on a unix socket: ops/s per request type.

Measures READ, WRITE, DIRECTORY, GET_PERMS and transactions (START, WRITE
in the transaction, END commit: one row counts whole transactions) in two
modes:

* ``seq``  -- one request in flight per connection (a libxenstore client);
* ``pipe`` -- ``--depth`` requests in flight per connection (replies are
  matched by ``req_id``; each transaction is a little state machine).

with 1 and 8 connections, by default each connection in its own client
process (``--procs 1``: all of a row's connections in one process, through
one epoll).  Besides ops/s it prints the client processes' CPU load: with
every client pinned to one CPU (``--cpu``) a load near 100 % says the row
measured the load generator as much as the daemon (eight processes that
each block on every reply cost a context switch per request).  The same run
works against the C reference daemon, so the figures compare directly::

    taskset -c 0 python -m pyxenstored -N --rundir /tmp/b &
    python bench/ops_bench.py --socket /tmp/b/socket --cpu 1

Each cell is the median of ``--repeat`` runs of ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import resource
import select
import socket
import statistics
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HDR = struct.Struct("=IIII")
DIRECTORY, READ, GET_PERMS, TX_START, TX_END, WRITE, ERROR = 1, 2, 3, 6, 7, 11, 16
CHILDREN = 10
VALUE = b"v" * 32

OPS = ("read", "write", "directory", "get_perms", "transaction")


@dataclass(slots=True, frozen=True)
class Cell:
    op: str
    mode: str
    conns: int


class Client:
    """One raw connection with a reply parser that works on any split."""

    def __init__(self, path: str, retry_for: float = 0.0) -> None:
        deadline = time.monotonic() + retry_for
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except ConnectionRefusedError:  # a full listen backlog (C's is 1)
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        self.buf = bytearray()
        # One receive buffer for the connection's life: a fresh 256 KiB
        # bytes object per recv costs an mmap/munmap pair in glibc and made
        # the client, not the daemon, the limit of the transaction rows.
        self._chunk = memoryview(bytearray(262144))

    def call(self, type_: int, payload: bytes, tx_id: int = 0) -> tuple[int, bytes]:
        self.sock.sendall(HDR.pack(type_, 0, tx_id, len(payload)) + payload)
        while True:
            reply = self.next_reply()
            if reply is not None:
                return reply[0], reply[3]
            self.fill()

    def fill(self) -> None:
        got = self.sock.recv_into(self._chunk)
        if not got:
            raise EOFError("daemon closed the connection")
        self.buf += self._chunk[:got]

    def next_reply(self) -> tuple[int, int, int, bytes] | None:
        buf = self.buf
        if len(buf) < 16:
            return None
        type_, req_id, tx_id, length = HDR.unpack_from(buf, 0)
        if len(buf) < 16 + length:
            return None
        body = bytes(buf[16 : 16 + length])
        del buf[: 16 + length]
        return type_, req_id, tx_id, body


def setup_nodes(client: Client, base: bytes, depth: int) -> None:
    # The transaction nodes exist beforehand: creating one in a transaction
    # changes the parent and would make concurrent commits conflict.
    # DIRECTORY lists base/d: exactly CHILDREN entries.
    names = [b"d/c%d" % i for i in range(CHILDREN)] + [b"tx/t%d" % i for i in range(depth)]
    for name in names:
        kind, body = client.call(WRITE, base + b"/" + name + b"\0" + VALUE)
        if kind == ERROR:
            raise RuntimeError(f"setup write failed: {body!r}")
    kind, body = client.call(DIRECTORY, base + b"/d\0")
    if body.count(b"\0") != CHILDREN:
        raise RuntimeError("setup: directory does not list the nodes written")


def simple_request(op: str, base: bytes) -> tuple[int, bytes]:
    key = base + b"/d/c0\0"
    if op == "read":
        return READ, key
    if op == "write":
        return WRITE, base + b"/d/c1\0" + VALUE
    if op == "directory":
        return DIRECTORY, base + b"/d\0"
    if op == "get_perms":
        return GET_PERMS, key
    raise ValueError(op)


def run_seq(client: Client, op: str, base: bytes, until: float) -> tuple[int, int]:
    """Round trips one at a time; returns (completed, errors)."""
    done = errors = 0
    sock = client.sock
    if op == "transaction":
        while time.monotonic() < until:
            kind, body = client.call(TX_START, b"\0")
            tx = int(body.rstrip(b"\0"))
            client.call(WRITE, base + b"/tx/t0\0" + VALUE, tx)
            kind, body = client.call(TX_END, b"T\0", tx)
            done += 1
            errors += kind == ERROR
        return done, errors
    type_, payload = simple_request(op, base)
    request = HDR.pack(type_, 0, 0, len(payload)) + payload
    recv_into = sock.recv_into
    buf = bytearray(8192)
    view = memoryview(buf)
    check = 0
    while True:
        # Check the clock every 64 requests: time.monotonic is not free.
        if check == 0:
            if time.monotonic() >= until:
                break
            check = 64
        check -= 1
        sock.sendall(request)
        got = recv_into(view)
        while got < 16 or got < 16 + HDR.unpack_from(buf, 0)[3]:
            got += recv_into(view[got:])
        done += 1
        errors += HDR.unpack_from(buf, 0)[0] == ERROR
    return done, errors


class Driver:
    """One connection's requests in flight: what to send next for the replies received.

    ``depth`` requests stay in flight (1 for ``seq``).  Simple ops resend the
    same request; transactions run ``depth`` little state machines (slot =
    ``req_id``: START, then WRITE, then END).  Once ``running`` is cleared no
    new work starts and ``inflight`` drains to 0.
    """

    def __init__(self, client: Client, op: str, base: bytes, depth: int) -> None:
        self.client = client
        self.op = op
        self.depth = depth
        self.done = self.errors = 0
        self.inflight = depth
        self.running = True
        if op == "transaction":
            self.paths = [base + b"/tx/t%d\0" % i + VALUE for i in range(depth)]
            self.state = [0] * depth
            self.txid = [0] * depth
        else:
            type_, payload = simple_request(op, base)
            self.request = HDR.pack(type_, 0, 0, len(payload)) + payload

    def first(self) -> bytes:
        if self.op == "transaction":
            return b"".join(HDR.pack(TX_START, i, 0, 1) + b"\0" for i in range(self.depth))
        return self.request * self.depth

    def take(self) -> bytes:
        """Consume the complete replies buffered; the requests to send in return."""
        if self.op == "transaction":
            return self._take_tx()
        buf = self.client.buf
        pos = n = 0
        end = len(buf)
        while end - pos >= 16:
            kind, _req, _tx, length = HDR.unpack_from(buf, pos)
            if end - pos < 16 + length:
                break
            self.errors += kind == ERROR
            pos += 16 + length
            n += 1
        del buf[:pos]
        self.done += n
        if self.running:
            return self.request * n
        self.inflight -= n
        return b""

    def _take_tx(self) -> bytes:
        out = []
        state, txid, paths = self.state, self.txid, self.paths
        while (reply := self.client.next_reply()) is not None:
            kind, slot, _tx, body = reply
            st = state[slot]
            if st == 0:
                txid[slot] = int(body.rstrip(b"\0"))
                out.append(HDR.pack(WRITE, slot, txid[slot], len(paths[slot])) + paths[slot])
                state[slot] = 1
            elif st == 1:
                out.append(HDR.pack(TX_END, slot, txid[slot], 2) + b"T\0")
                state[slot] = 2
            else:
                self.done += 1
                self.errors += kind == ERROR
                if self.running:
                    out.append(HDR.pack(TX_START, slot, 0, 1) + b"\0")
                    state[slot] = 0
                else:
                    self.inflight -= 1
        return b"".join(out)


def run_pipe(client: Client, op: str, base: bytes, until: float, depth: int) -> tuple[int, int]:
    """``depth`` requests in flight on one connection, matched by req_id."""
    driver = Driver(client, op, base, depth)
    sock = client.sock
    sock.sendall(driver.first())
    while driver.inflight:
        client.fill()
        if driver.running and time.monotonic() >= until:
            driver.running = False
        out = driver.take()
        if out:
            sock.sendall(out)
    return driver.done, driver.errors


def run_many(
    clients: list[Client], op: str, bases: list[bytes], until: float, depth: int
) -> tuple[int, int]:
    """Several connections in one process: one epoll, ``depth`` in flight on each."""
    drivers = {
        c.sock.fileno(): Driver(c, op, b, depth) for c, b in zip(clients, bases, strict=True)
    }
    poller = select.epoll()
    for fd, driver in drivers.items():
        poller.register(fd, select.EPOLLIN)
        driver.client.sock.sendall(driver.first())
    busy = len(drivers)
    running = True
    while busy:
        for fd, _events in poller.poll():
            driver = drivers[fd]
            driver.client.fill()
            out = driver.take()
            if out:
                driver.client.sock.sendall(out)
            elif not driver.inflight:
                poller.unregister(fd)
                busy -= 1
        if running and time.monotonic() >= until:
            running = False
            for driver in drivers.values():
                driver.running = False
    poller.close()
    return sum(d.done for d in drivers.values()), sum(d.errors for d in drivers.values())


def worker(
    path: str,
    cell: Cell,
    depth: int,
    duration: float,
    indices: list[int],
    cpu: int | None,
    barrier: object,
    results: object,
) -> None:
    try:
        outcome = run_worker(path, cell, depth, duration, indices, cpu, barrier)
    except Exception as exc:  # reported by the parent, which then stops
        barrier.abort()  # type: ignore[attr-defined]
        results.put(f"worker {indices}: {type(exc).__name__}: {exc}")  # type: ignore[attr-defined]
    else:
        results.put(outcome)  # type: ignore[attr-defined]


def run_worker(
    path: str,
    cell: Cell,
    depth: int,
    duration: float,
    indices: list[int],
    cpu: int | None,
    barrier: object,
) -> tuple[int, int, float]:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    depth = depth if cell.mode == "pipe" else 1
    clients = [Client(path) for _ in indices]
    bases = [b"/bench/p%d-%d" % (os.getpid(), i) for i in indices]
    for client, base in zip(clients, bases, strict=True):
        setup_nodes(client, base, depth)
    barrier.wait()  # type: ignore[attr-defined]
    t0 = time.monotonic()
    until = t0 + duration
    if len(clients) > 1:
        done, errors = run_many(clients, cell.op, bases, until, depth)
    elif cell.mode == "seq":
        done, errors = run_seq(clients[0], cell.op, bases[0], until)
    else:
        done, errors = run_pipe(clients[0], cell.op, bases[0], until, depth)
    elapsed = time.monotonic() - t0
    for client, base in zip(clients, bases, strict=True):
        client.call(13, base + b"\0")  # RM the work area
        client.sock.close()
    return done, errors, elapsed


def measure(
    path: str,
    cell: Cell,
    depth: int,
    duration: float,
    cpu: int | None,
    procs: int | None = None,
) -> tuple[float, int, float]:
    """One run: ops/s summed over the connections, the error count, client CPU seconds.

    The connections are shared out among ``procs`` client processes (default
    one each); a process with several drives them through one epoll.
    """
    nprocs = min(cell.conns, procs or cell.conns)
    shares = [list(range(i, cell.conns, nprocs)) for i in range(nprocs)]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(nprocs)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=worker,
            args=(path, cell, depth, duration, share, cpu, barrier, results),
        )
        for share in shares
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for p in workers:
        p.start()
    outcomes = []
    for _ in workers:
        outcome = results.get(timeout=duration + 60)
        if isinstance(outcome, str):
            for p in workers:
                p.terminate()
            raise SystemExit(f"ops_bench: {outcome}")
        outcomes.append(outcome)
    for p in workers:
        p.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rate = sum(done / elapsed for done, _e, elapsed in outcomes)
    return rate, sum(e for _d, e, _t in outcomes), client_cpu


def cpu_seconds(pid: int) -> float:
    """CPU time of all of a process's threads so far.

    From the scheduler's statistics (nanoseconds: short runs are not
    rounded to clock ticks); from ``/proc/PID/stat`` (user + system, in
    ticks) where a kernel has none.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        total = 0
        for task in tasks:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_target(text: str) -> tuple[str, str, int | None]:
    """``LABEL=SOCKET[:PID]`` or ``SOCKET``: label, socket path, daemon pid."""
    label, sep, rest = text.partition("=")
    if not sep:
        label, rest = "", text
    path, colon, pid = rest.rpartition(":")
    if colon and pid.isdigit():
        return label or path, path, int(pid)
    return label or rest, rest, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--socket",
        action="append",
        default=[],
        metavar="[LABEL=]PATH[:PID]",
        help="daemon socket; repeat to compare daemons (runs are interleaved so that"
        " background load hits them alike); with :PID also the daemon's CPU time per"
        " request is printed (default $XENSTORED_PATH)",
    )
    parser.add_argument(
        "--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}"
    )
    parser.add_argument("--modes", default="seq,pipe", help="seq, pipe or both")
    parser.add_argument("--conns", default="1,8", help="connection counts, e.g. 1,8")
    parser.add_argument(
        "--depth", type=int, default=32, help="requests in flight per connection in pipe mode"
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per cell; the median is printed"
    )
    parser.add_argument("--cpu", type=int, help="pin the client processes to this CPU")
    parser.add_argument(
        "--procs",
        type=int,
        help="client processes sharing a row's connections (default one per connection);"
        " 1 drives them all through one epoll, which costs the client far less CPU",
    )
    args = parser.parse_args(argv)
    sockets = args.socket or (
        [os.environ["XENSTORED_PATH"]] if os.environ.get("XENSTORED_PATH") else []
    )
    if not sockets:
        parser.error("--socket or XENSTORED_PATH is required")
    targets = [parse_target(t) for t in sockets]
    ops = [op for op in args.ops.split(",") if op]
    for op in ops:
        if op not in OPS:
            parser.error(f"unknown op {op!r}")
    modes = args.modes.split(",")
    conns = [int(c) for c in args.conns.split(",")]
    print(f"ops/s, median of {args.repeat} x {args.duration:g}s, pipe depth {args.depth}")
    for label, path, pid in targets:
        print(f"  {label}: {path}" + (f" (pid {pid})" if pid else ""))
    columns = [label for label, _p, _pid in targets]
    if any(pid for _l, _p, pid in targets):
        columns += [f"{label} us/req" for label, _p, pid in targets if pid]
    columns += [f"{label} client" for label, _p, _pid in targets]
    header = f"{'op':<12} {'mode':<5} {'conns':>5}" + "".join(f" {c:>14}" for c in columns)
    print(header)
    print("-" * len(header))
    for op in ops:
        for mode in modes:
            for n in conns:
                rates: list[list[float]] = [[] for _ in targets]
                costs: list[list[float]] = [[] for _ in targets]
                loads: list[list[float]] = [[] for _ in targets]
                errors = [0] * len(targets)
                for _ in range(args.repeat):
                    for i, (_label, path, pid) in enumerate(targets):
                        before = cpu_seconds(pid) if pid else 0.0
                        rate, errs, client_cpu = measure(
                            path, Cell(op, mode, n), args.depth, args.duration, args.cpu, args.procs
                        )
                        if pid:
                            requests = rate * args.duration * (3 if op == "transaction" else 1)
                            costs[i].append((cpu_seconds(pid) - before) / requests * 1e6)
                        rates[i].append(rate)
                        loads[i].append(client_cpu / args.duration)
                        errors[i] += errs
                cells = []
                for i in range(len(targets)):
                    cell = f"{statistics.median(rates[i]):.0f}"
                    if errors[i]:
                        cell += f" ({errors[i]}e)"
                    cells.append(cell)
                cells += [f"{statistics.median(c):.1f}" for c in costs if c]
                cells += [f"{statistics.median(c):.0%}" for c in loads]
                print(
                    f"{op:<12} {mode:<5} {n:>5}" + "".join(f" {c:>14}" for c in cells), flush=True
                )
    print("transaction rows count whole transactions (START + WRITE + END), i.e. 3 requests each;")
    print(
        "us/req is the daemon's CPU time (user+sys) per request, a figure less sensitive to load;"
    )
    print("client is the load generator's CPU time per second of run: with --cpu, near 100% means")
    print("the client CPU, not the daemon, was the limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
