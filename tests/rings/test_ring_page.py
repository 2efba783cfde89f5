"""The server end of the ring on hand-built pages (offsets from xenstore-ring.txt).

Each test lays the page out with ``struct`` at the spec's offsets -- request
queue at 0, response queue at 1024, req_cons 2048, req_prod 2052, rsp_cons
2056, rsp_prod 2060, features 2064, connection 2068, error 2072 -- never
through the transport's own accessors.  Tests about wrapping and chunking
run on both kinds of page memory: an ``mmap`` (files, the simulated
hypervisor) and a byte ``memoryview`` of ``ctypes`` memory (what the Xen
backend gets from the libraries).
"""

from __future__ import annotations

import ctypes
import mmap
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxenstored.ringpage import RingPage
from pyxenstored.server.hypervisor import RingMemory
from pyxenstored.server.ring_transport import RingTransport

U32 = struct.Struct("=I")
HDR = struct.Struct("=IIII")


KINDS = ["mmap", "ctypes"]


def new_page(kind: str = "mmap") -> RingMemory:
    if kind == "ctypes":
        return memoryview((ctypes.c_char * 4096)()).cast("B")
    return mmap.mmap(-1, 4096)


def put(mem: RingMemory, offset: int, value: int) -> None:
    U32.pack_into(mem, offset, value & 0xFFFFFFFF)


def get(mem: RingMemory, offset: int) -> int:
    value: int = U32.unpack_from(mem, offset)[0]
    return value


def guest_send(mem: RingMemory, data: bytes) -> None:
    """What a guest does: bytes at prod mod 1024, then the producer offset."""
    prod = get(mem, 2052)
    for i, byte in enumerate(data):
        mem[(prod + i) % 1024] = byte
    put(mem, 2052, prod + len(data))


def guest_take(mem: RingMemory) -> bytes:
    cons, prod = get(mem, 2056), get(mem, 2060)
    n = (prod - cons) & 0xFFFFFFFF
    out = bytes(mem[1024 + (cons + i) % 1024] for i in range(n))
    put(mem, 2056, cons + n)
    return out


class Kicks:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def transport(mem: RingMemory, report_errors: bool = True) -> tuple[RingTransport, Kicks]:
    kicks = Kicks()
    return RingTransport(RingPage(mem), 5, kicks, report_errors=report_errors), kicks


def test_reads_requests_and_advances_the_consumer() -> None:
    mem = new_page()
    t, kicks = transport(mem)
    assert t.read() is None
    msg = HDR.pack(2, 7, 0, 4) + b"a/b\0"
    guest_send(mem, msg)
    assert t.read() == msg
    assert get(mem, 2048) == len(msg)  # req_cons
    assert kicks.count == 0  # the consumption is signalled at the end of the turn...
    t.flush_notify()
    assert kicks.count == 1
    t.flush_notify()
    assert kicks.count == 1  # ...once
    guest_send(mem, msg)
    assert t.read() == msg
    assert t.write([b"reply"]) == 5
    assert kicks.count == 2  # ...or by the write that follows, with it
    t.flush_notify()
    assert kicks.count == 2
    assert t.read() is None


@pytest.mark.parametrize("kind", KINDS)
def test_indices_start_anywhere_and_wrap_modulo_2_32(kind: str) -> None:
    mem = new_page(kind)
    start = 0xFFFFFFFF - 5  # free-running offsets close to wrapping
    for off in (2048, 2052, 2056, 2060):
        put(mem, off, start)
    t, _ = transport(mem)
    msg = HDR.pack(2, 1, 0, 20) + bytes(range(20))
    guest_send(mem, msg)
    data = t.read()
    assert data == msg
    assert type(data) is bytes  # a copy, whatever the page memory is
    assert get(mem, 2048) == (start + len(msg)) & 0xFFFFFFFF
    assert t.write([b"0123456789", b"abcdef"]) == 16
    assert get(mem, 2060) == (start + 16) & 0xFFFFFFFF
    assert guest_take(mem) == b"0123456789abcdef"


def test_response_queue_holds_at_most_1024_bytes() -> None:
    mem = new_page()
    t, _ = transport(mem)
    assert t.write([b"x" * 1000, b"y" * 100]) == 1024
    assert t.write([b"z"]) == 0  # full until the guest consumes
    out = guest_take(mem)
    assert out == b"x" * 1000 + b"y" * 24
    assert t.write([memoryview(b"y" * 100)[24:]]) == 76


@pytest.mark.parametrize("kind", KINDS)
def test_a_message_split_across_the_wrap_and_several_kicks(kind: str) -> None:
    mem = new_page(kind)
    put(mem, 2048, 1000)
    put(mem, 2052, 1000)
    t, _ = transport(mem)
    payload = bytes(range(256)) * 8  # 2048 bytes: more than the queue
    msg = HDR.pack(11, 3, 0, len(payload)) + payload
    got = b""
    pos = 0
    while pos < len(msg):
        room = 1024 - ((get(mem, 2052) - get(mem, 2048)) & 0xFFFFFFFF)
        chunk = msg[pos : pos + min(room, 300)]
        guest_send(mem, chunk)
        pos += len(chunk)
        data = t.read()
        assert type(data) is bytes
        got += data
    assert got == msg
    assert not t.doomed


def test_oversized_header_dooms_the_ring_after_the_good_messages() -> None:
    mem = new_page()
    t, _ = transport(mem)
    good = HDR.pack(2, 1, 0, 2) + b"a\0"
    bad = HDR.pack(11, 2, 0, 4097)
    guest_send(mem, good + bad)
    assert t.read() == good  # served up to the bad header
    assert t.doomed == 3
    assert t.read() == b""  # then the connection is over
    reply = HDR.pack(2, 1, 0, 1) + b"v"
    assert t.write([reply]) == len(reply)  # the good request is still answered
    assert guest_take(mem) == reply
    assert get(mem, 2072) == 0
    t.close()
    assert get(mem, 2072) == 3  # protocol violation


def test_a_payload_of_exactly_4096_is_fine() -> None:
    mem = new_page()
    t, _ = transport(mem)
    guest_send(mem, HDR.pack(11, 1, 0, 4096) + b"v" * 1008)
    assert t.read() is not None
    assert not t.doomed


def test_oversized_header_split_across_reads() -> None:
    mem = new_page()
    t, _ = transport(mem)
    bad = HDR.pack(11, 2, 0, 100000)
    guest_send(mem, bad[:9])
    assert t.read() == bad[:9]
    guest_send(mem, bad[9:])
    assert t.read() == b""
    assert t.doomed == 3


@pytest.mark.parametrize("queue", ["request", "response"])
def test_inconsistent_offsets_set_error_2(queue: str) -> None:
    mem = new_page()
    t, _ = transport(mem)
    if queue == "request":
        put(mem, 2052, 1025)  # req_prod - req_cons > 1024
        assert t.read() == b""
    else:
        put(mem, 2056, 5000)  # rsp_cons ahead of rsp_prod
        with pytest.raises(OSError):
            t.write([b"x"])
    assert t.doomed == 2
    t.close()
    assert get(mem, 2072) == 2


def test_no_error_indicator_without_the_error_feature() -> None:
    mem = new_page()
    t, _ = transport(mem, report_errors=False)
    put(mem, 2052, 2000)
    assert t.read() == b""
    t.close()
    assert get(mem, 2072) == 0


def test_queues_untouched_while_a_reconnection_is_pending() -> None:
    mem = new_page()
    t, _ = transport(mem)
    guest_send(mem, HDR.pack(2, 1, 0, 0))
    put(mem, 2068, 1)
    assert t.read() is None
    assert t.write([b"x"]) == 0
    assert get(mem, 2048) == 0


def test_page_features_only_gain_bits() -> None:
    mem = new_page()
    page = RingPage(mem)
    page.advertise(2)
    page.advertise(4 | 1)
    assert get(mem, 2064) == 7
    put(mem, 2048, 9)
    page.reset_queues()
    assert [get(mem, o) for o in (2048, 2052, 2056, 2060)] == [0, 0, 0, 0]


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, 0xFFFFFFFF),
    sizes=st.lists(st.integers(0, 600), min_size=1, max_size=12),
    chunk=st.integers(1, 1024),
    kind=st.sampled_from(KINDS),
)
def test_any_start_and_chunking_delivers_the_same_stream(
    start: int, sizes: list[int], chunk: int, kind: str
) -> None:
    mem = new_page(kind)
    for off in (2048, 2052, 2056, 2060):
        put(mem, off, start)
    t, _ = transport(mem)
    stream = b"".join(HDR.pack(2, i, 0, n) + bytes([i & 0xFF]) * n for i, n in enumerate(sizes))
    got = b""
    pos = 0
    while pos < len(stream) or got != stream:
        room = 1024 - ((get(mem, 2052) - get(mem, 2048)) & 0xFFFFFFFF)
        piece = stream[pos : pos + min(room, chunk)]
        guest_send(mem, piece)
        pos += len(piece)
        data = t.read()
        got += data or b""
    assert got == stream
    assert not t.doomed
    # And back: the same stream through the response queue.
    back = b""
    pos = 0
    while pos < len(stream):
        pos += t.write([stream[pos : pos + chunk]])
        back += guest_take(mem)
    assert back == stream
