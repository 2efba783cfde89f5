"""The floor: what CPython alone costs per request, with no xenstore in it.

A deliberately minimal server on a unix socket -- one ``select.epoll``, one
``recv`` and one ``send`` per request, READ answered from a dict, DIRECTORY
with ``--children`` fixed names, anything else with ``OK`` -- that speaks
just enough of the wire format for ``bench/ops_bench.py`` to drive it.  It is
not a xenstored: no paths, permissions, transactions, watches, quota or
back pressure.  It exists to measure how close pyxenstored's per-request CPU
can get to the C daemon's on this machine and interpreter: run it, the C
reference and pyxenstored under the same load and compare the daemons' user
and system CPU per request (``ops_bench.py --socket LABEL=PATH:PID``)::

    taskset -c 0 python bench/floor_server.py /tmp/floor.sock &
    python bench/ops_bench.py --socket floor=/tmp/floor.sock:$! \\
        --ops read --modes seq --conns 8 --cpu 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import struct

HEADER = struct.Struct("=IIII")
READ, DIRECTORY = 2, 1


def serve(path: str, children: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    listener.setblocking(False)
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    listing = b"".join(b"c%d\0" % i for i in range(children))
    values: dict[bytes, bytes] = {}
    clients: dict[int, socket.socket] = {}
    unpack, pack = HEADER.unpack_from, HEADER.pack
    poll, listen_fd = epoll.poll, listener.fileno()
    while True:
        for fd, _events in poll():
            if fd == listen_fd:
                client, _ = listener.accept()
                client.setblocking(False)
                clients[client.fileno()] = client
                epoll.register(client.fileno(), select.EPOLLIN)
                continue
            client = clients[fd]
            try:
                data = client.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if len(data) < 16:
                epoll.unregister(fd)
                client.close()
                del clients[fd]
                continue
            type_, req_id, tx_id, length = unpack(data, 0)
            # One whole request per read is all a sequential client sends.
            if type_ == READ:
                reply = values.get(data[16 : 16 + length], b"")
            elif type_ == DIRECTORY:
                reply = listing
            else:
                reply = b"OK\0"
            client.send(pack(type_, req_id, tx_id, len(reply)) + reply)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("socket", help="unix socket path to listen on")
    parser.add_argument(
        "--children",
        type=int,
        default=10,
        help="names in every DIRECTORY reply (ops_bench checks 10)",
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.socket, args.children)


if __name__ == "__main__":
    main()
