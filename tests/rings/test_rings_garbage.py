"""A guest that writes garbage on its page never hurts the daemon (pyxenstored).

Seeded random rounds: random requests (any type, any payload), random bytes
in the request queue, offsets and the connection state set to random values,
kicks on random ports.  After each round the toolstack re-introduces the
guest (which resets its ring) and everyone -- dom0 on the socket, another
guest on its ring, the scribbling guest itself -- is served as before.
"""

from __future__ import annotations

import mmap
import os
import random
import struct

from tests.client.daemons import Daemon, introduce_guest
from tests.rings.conftest import EVENT_WAIT, kick

from pyxenstored.client import Client
from pyxenstored.wire import HEADER

U32 = struct.Struct("=I")
ROUNDS = 25


def scribble(mem: mmap.mmap, rng: random.Random) -> None:
    kind = rng.randrange(5)
    prod = U32.unpack_from(mem, 2052)[0]
    if kind == 0:  # a well-framed request of any type with any payload
        payload = rng.randbytes(rng.randrange(0, 200))
        data = HEADER.pack(rng.randrange(0, 40), rng.getrandbits(32), 0, len(payload)) + payload
    elif kind == 1:  # random bytes
        data = rng.randbytes(rng.randrange(1, 1024))
    else:
        data = b""
    for i, byte in enumerate(data[: 1024 - ((prod - U32.unpack_from(mem, 2048)[0]) & 0xFFFFFFFF)]):
        mem[(prod + i) % 1024] = byte
    if data:
        U32.pack_into(mem, 2052, (prod + len(data)) & 0xFFFFFFFF)
    if kind == 2:
        U32.pack_into(mem, rng.choice((2048, 2052, 2056, 2060)), rng.getrandbits(32))
    if kind == 3:
        U32.pack_into(mem, 2068, rng.choice((1, 2, rng.getrandbits(32))))
    if kind == 4:
        U32.pack_into(mem, 2064, rng.getrandbits(32))  # guests must not, but may


def test_garbage_on_a_page_never_hurts_the_daemon(py_daemon: Daemon) -> None:
    ring_dir = py_daemon.ring_dir
    assert ring_dir is not None
    rng = random.Random(20261125)
    with py_daemon.connect() as dom0:
        introduce_guest(dom0, ring_dir, 6, 8)
        other = Client.connect_ring(ring_dir, 6, 8, timeout=EVENT_WAIT)
        introduce_guest(dom0, ring_dir, 5, 7)
        fd = os.open(os.path.join(ring_dir, "ring-dom5"), os.O_RDWR)
        mem = mmap.mmap(fd, 4096)
        os.close(fd)
        try:
            for round_ in range(ROUNDS):
                for _ in range(rng.randrange(1, 6)):
                    scribble(mem, rng)
                    kick(ring_dir, rng.choice((7, 7, 7, 0, 1, rng.getrandbits(32))))
                # Everyone else is served meanwhile.
                other.write("round", b"%d" % round_)
                assert dom0.read("/local/domain/6/round") == b"%d" % round_
                # The toolstack resets the scribbler; it is served again.
                U32.pack_into(mem, 2068, 0)
                dom0.introduce(5, 1, 7)
                guest = Client.connect_ring(ring_dir, 5, 7, timeout=EVENT_WAIT)
                guest.write("ok", b"%d" % round_)
                assert dom0.read("/local/domain/5/ok") == b"%d" % round_
                guest.close()
        finally:
            mem.close()
            other.close()
        assert dom0.control("check") in ("", "OK")
