"""A guest that writes garbage on its page never hurts the daemon (pyxenstored, both backends).

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

from tests.client.daemons import introduce_guest
from tests.launcher import Launched
from tests.rings.conftest import EVENT_WAIT, kick

from pyxenstored.client import Client
from pyxenstored.wire import HEADER

U32 = struct.Struct("=I")
ROUNDS = 25
# The guests' ports.  Under the shim a guest's kick carries its own port
# number, while the Xen backend's local ports are the shim's counter (1, 2,
# ...; each re-INTRODUCE takes the next): ports far above the counter keep
# the other guest's kick from naming the scribbler's latest local port.
PORT, OTHER_PORT = 107, 108


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


def test_garbage_on_a_page_never_hurts_the_daemon(py_daemon: Launched) -> None:
    ring_dir = py_daemon.ring_dir
    assert ring_dir is not None
    rng = random.Random(20261125)
    # Xen's ports fit the libraries' signed int (xenevtchn_pending returns
    # -1 for an error); the shim hands on any u32 from its FIFO.
    port_mask = 0x7FFFFFFF if py_daemon.kind == "pyxenstored-xen" else 0xFFFFFFFF
    with py_daemon.connect() as dom0:
        introduce_guest(dom0, ring_dir, 6, OTHER_PORT)
        other = Client.connect_ring(ring_dir, 6, OTHER_PORT, timeout=EVENT_WAIT)
        introduce_guest(dom0, ring_dir, 5, PORT)
        fd = os.open(os.path.join(ring_dir, "ring-dom5"), os.O_RDWR)
        mem = mmap.mmap(fd, 4096)
        os.close(fd)
        try:
            for round_ in range(ROUNDS):
                for _ in range(rng.randrange(1, 6)):
                    scribble(mem, rng)
                    port = rng.choice((PORT, PORT, PORT, 0, 1, rng.getrandbits(32)))
                    kick(ring_dir, port & port_mask)
                # Everyone else is served meanwhile.
                other.write("round", b"%d" % round_)
                assert dom0.read("/local/domain/6/round") == b"%d" % round_
                # The toolstack resets the scribbler; it is served again.
                U32.pack_into(mem, 2068, 0)
                dom0.introduce(5, 1, PORT)
                guest = Client.connect_ring(ring_dir, 5, PORT, timeout=EVENT_WAIT)
                guest.write("ok", b"%d" % round_)
                assert dom0.read("/local/domain/5/ok") == b"%d" % round_
                guest.close()
        finally:
            mem.close()
            other.close()
        assert dom0.control("check") in ("", "OK")
