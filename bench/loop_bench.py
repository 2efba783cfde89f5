"""The event loop's own cost per request, in one process, without a client process.

A :class:`~pyxenstored.server.loop.Server` with a real store gets eight
socket-pair connections; each turn sends one request on every connection,
runs one ``Server.run_once`` and reads the eight replies.  Only the
``run_once`` calls are timed, so the figure is the daemon's side of a
sequential 8-connection load (poll, ``recv``, store, ``send``) without the
scheduling noise of separate client processes -- the number to watch when
changing the loop or the store's hot operations.  Also printed: the whole
process's user and system CPU per request (client side included).

    python bench/loop_bench.py                 # read, write, directory, get_perms, transaction
    python bench/loop_bench.py read --requests 80000 --profile
    python bench/loop_bench.py --interpreter-only

``--interpreter-only`` takes the kernel out: each connection's ``recv``
returns the same request and ``send`` is ``len``, and the poll reports all
eight connections ready, so what is timed is CPython running the loop and
the store.  It is steadier than the full figure (a few per cent between
runs) and the one to compare before and after a change to Python code;
transactions are left out (their requests depend on the replies).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import select
import socket
import statistics
import struct
import time

from pyxenstored.server.loop import Server
from pyxenstored.server.socket_transport import READ_SIZE, SocketTransport
from pyxenstored.store import Store, StoreConfig

HDR = struct.Struct("=IIII")
CONNS = 8
BASE = b"/local/domain/0/bench/w0"
READ, DIRECTORY, GET_PERMS, TX_START, TX_END, WRITE = 2, 1, 3, 6, 7, 11
SIMPLE = {
    "read": (READ, BASE + b"/d/c0\0"),
    "write": (WRITE, BASE + b"/d/c1\0value"),
    "directory": (DIRECTORY, BASE + b"/d\0"),
    "get_perms": (GET_PERMS, BASE + b"/d/c0\0"),
}
OPS = (*SIMPLE, "transaction")


class _ReadyEpoll:
    """Stands in for ``select.epoll``: every connection is always readable."""

    def __init__(self, ready: list[tuple[int, int]]) -> None:
        self.ready = ready

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        return self.ready


class Rig:
    def __init__(self) -> None:
        self.server = Server(Store(StoreConfig()))
        self.clients: list[socket.socket] = []
        for _ in range(CONNS):
            mine, theirs = socket.socketpair()
            self.server.add_connection(SocketTransport(theirs), 0)
            self.clients.append(mine)
        for i in range(10):
            self.call(0, WRITE, BASE + b"/d/c%d\0v" % i)
        for i in range(CONNS):
            self.call(i, WRITE, BASE + b"/tx/t%d\0v" % i)

    def call(self, conn: int, type_: int, payload: bytes, tx: int = 0) -> bytes:
        self.clients[conn].sendall(HDR.pack(type_, 0, tx, len(payload)) + payload)
        self.server.run_once(0)
        return self.clients[conn].recv(65536)

    def turn(self, messages: list[bytes]) -> tuple[float, list[bytes]]:
        """One request per connection, one ``run_once``: its time and the replies."""
        for sock, msg in zip(self.clients, messages, strict=True):
            sock.send(msg)
        started = time.perf_counter()
        self.server.run_once(0)
        spent = time.perf_counter() - started
        return spent, [sock.recv(65536) for sock in self.clients]

    def run(self, op: str, requests: int) -> float:
        """Seconds of ``run_once`` per request."""
        spent = 0.0
        turns = max(1, requests // CONNS)
        if op != "transaction":
            type_, payload = SIMPLE[op]
            messages = [HDR.pack(type_, 0, 0, len(payload)) + payload] * CONNS
            for _ in range(turns):
                spent += self.turn(messages)[0]
            return spent / (turns * CONNS)
        start = [HDR.pack(TX_START, 0, 0, 1) + b"\0"] * CONNS
        for _ in range(turns // 3 or 1):
            took, replies = self.turn(start)
            spent += took
            txs = [int(r[16:].rstrip(b"\0")) for r in replies]
            writes = []
            for i, tx in enumerate(txs):
                payload = BASE + b"/tx/t%d\0value" % i
                writes.append(HDR.pack(WRITE, 0, tx, len(payload)) + payload)
            spent += self.turn(writes)[0]
            ends = [HDR.pack(TX_END, 0, tx, 2) + b"T\0" for tx in txs]
            spent += self.turn(ends)[0]
        return spent / ((turns // 3 or 1) * 3 * CONNS)

    def run_interpreter_only(self, op: str, requests: int) -> float:
        """Seconds of ``run_once`` per request with recv, send and epoll_wait faked."""
        type_, payload = SIMPLE[op]
        message = HDR.pack(type_, 0, 0, len(payload)) + payload
        conns = list(self.server.connections)
        ready = [(conn.transport.fileno(), select.EPOLLIN) for conn in conns]
        transports = [conn.transport for conn in conns]
        assert all(isinstance(t, SocketTransport) for t in transports)
        saved = [(t.recv, t.send) for t in transports]  # type: ignore[union-attr]
        poller = self.server._sel  # noqa: SLF001 -- a bench reaching into the loop
        epoll = poller._epoll  # noqa: SLF001
        for transport in transports:
            transport.recv = {READ_SIZE: message}.get  # type: ignore[union-attr]
            transport.send = len  # type: ignore[union-attr]
        poller._epoll = _ReadyEpoll(ready)  # type: ignore[assignment]  # noqa: SLF001
        try:
            turns = max(1, requests // len(conns))
            run_once = self.server.run_once
            started = time.perf_counter()
            for _ in range(turns):
                run_once(0)
            return (time.perf_counter() - started) / (turns * len(conns))
        finally:
            poller._epoll = epoll  # noqa: SLF001
            for transport, (recv, send) in zip(transports, saved, strict=True):
                transport.recv = recv  # type: ignore[union-attr]
                transport.send = send  # type: ignore[union-attr]

    def close(self) -> None:
        self.server.close()
        for sock in self.clients:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "ops", nargs="*", metavar="OP", help=f"any of {', '.join(OPS)} (default all)"
    )
    parser.add_argument("--requests", type=int, default=40000, help="requests per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--profile", action="store_true", help="cProfile one run instead")
    parser.add_argument(
        "--interpreter-only",
        action="store_true",
        help="fake recv, send and epoll_wait: time CPython alone (not transactions)",
    )
    args = parser.parse_args()
    unknown = [op for op in args.ops if op not in OPS]
    if unknown:
        parser.error(f"unknown op(s): {', '.join(unknown)}")
    print(f"{CONNS} socket-pair connections, {args.requests} requests per run")
    if args.interpreter_only:
        print(f"{'op':<12} {'interpreter us/req':>18}")
        for op in args.ops or SIMPLE:
            if op not in SIMPLE:
                parser.error(f"--interpreter-only: {op} is not one of {', '.join(SIMPLE)}")
            rig = Rig()
            try:
                rig.run_interpreter_only(op, 2000)  # warm the caches
                runs = [rig.run_interpreter_only(op, args.requests) for _ in range(args.runs)]
                print(f"{op:<12} {statistics.median(runs) * 1e6:18.3f}")
            finally:
                rig.close()
        return
    if not args.profile:
        print(f"{'op':<12} {'run_once us/req':>16} {'process user us':>16} {'process sys us':>15}")
    for op in args.ops or OPS:
        rig = Rig()
        try:
            rig.run(op, 2000)  # warm the caches
            if args.profile:
                profile = cProfile.Profile()
                profile.runcall(rig.run, op, args.requests)
                pstats.Stats(profile).sort_stats("tottime").print_stats(20)
                continue
            times, users, systems = [], [], []
            for _ in range(args.runs):
                before = resource.getrusage(resource.RUSAGE_SELF)
                times.append(rig.run(op, args.requests))
                after = resource.getrusage(resource.RUSAGE_SELF)
                users.append((after.ru_utime - before.ru_utime) / args.requests)
                systems.append((after.ru_stime - before.ru_stime) / args.requests)
            print(
                f"{op:<12} {statistics.median(times) * 1e6:16.2f}"
                f" {statistics.median(users) * 1e6:16.2f} {statistics.median(systems) * 1e6:15.2f}"
            )
        finally:
            rig.close()


if __name__ == "__main__":
    main()
