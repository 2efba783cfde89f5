"""Connection output queue and MessageReader, without sockets (sans-I/O)."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxenstored.server.connection import Connection
from pyxenstored.server.framing import MessageReader, OversizedMessage

HDR = struct.Struct("=IIII")


class FakeTransport:
    """Accepts at most ``room`` bytes in all until given more (0 = socket full)."""

    is_socket = True

    def __init__(self, room: int = 0) -> None:
        self.room = room
        self.written = bytearray()

    def fileno(self) -> int:
        return -1

    def read(self) -> bytes | None:
        return None

    def write(self, buffers: Sequence[bytes | memoryview]) -> int:
        data = b"".join(bytes(b) for b in buffers)[: self.room]
        self.room -= len(data)
        self.written += data
        return len(data)

    def close(self) -> None:
        pass


def split_messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        t, r, x, n = HDR.unpack_from(data, pos)
        out.append((t, r, x, data[pos + 16 : pos + 16 + n]))
        pos += 16 + n
    assert pos == len(data)
    return out


def test_reply_header_echoes_req_and_tx_id() -> None:
    tr = FakeTransport(room=1 << 20)
    conn = Connection(1, 0, tr, out_limit=1 << 20)
    conn.queue_reply(2, 0xDEADBEEF, 7, b"value")
    assert conn.flush()
    assert bytes(tr.written) == HDR.pack(2, 0xDEADBEEF, 7, 5) + b"value"


def test_event_header_is_zero_but_type_and_len() -> None:
    tr = FakeTransport(room=1 << 20)
    conn = Connection(1, 0, tr, out_limit=1 << 20)
    assert conn.queue_event(b"/a\0tok\0", None, 0.0)
    conn.flush()
    assert bytes(tr.written) == HDR.pack(15, 0, 0, 7) + b"/a\0tok\0"


def test_a_queued_event_is_held_once() -> None:
    """What a queued event holds is about what it is charged: one copy of the message.

    The regression: the de-duplication key was the payload itself, a second
    copy of every queued event beside the message (charged once), so a
    guest that read nothing made the daemon hold twice its memory quota.
    """
    tr = FakeTransport(room=0)
    conn = Connection(1, 0, tr, out_limit=1 << 24)

    def payload(i: int) -> bytes:
        # A new object each time, as the store makes one per event fired.
        return b"/shared/n%04d\0" % i + b"t" * 3000 + b"\0"

    payloads = [payload(i) for i in range(200)]
    charged = sum(HDR.size + len(p) for p in payloads)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            assert conn.queue_event(payload(i), None, 0.0)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert conn.out_bytes == charged
    assert held < charged * 1.25, (held, charged)
    assert not conn.queue_event(payloads[7], None, 0.0)  # still de-duplicated
    tr.room = 1 << 24
    conn.flush()
    assert [m[3] for m in split_messages(bytes(tr.written))] == payloads
    assert conn.queue_event(payloads[7], None, 0.0)  # sent: may be queued again


def test_identical_events_dropped_while_queued_even_if_started() -> None:
    tr = FakeTransport(room=5)
    conn = Connection(1, 0, tr, out_limit=1 << 20)
    assert conn.queue_event(b"/a\0t\0", None, 0.0)
    conn.flush()  # transmission of the first event has begun
    assert conn.out_bytes == 16 + 5 - 5
    assert not conn.queue_event(b"/a\0t\0", None, 0.0)
    assert conn.queue_event(b"/a\0u\0", None, 0.0)  # other token: kept
    assert conn.queue_event(b"@releaseDomain\0t\0", None, 0.0)
    assert conn.queue_event(b"@releaseDomain\0t\0", None, 0.0)  # @ paths never deduplicated
    tr.room = 1 << 20
    conn.flush()
    events = split_messages(bytes(tr.written))
    assert [e[3] for e in events] == [
        b"/a\0t\0",
        b"/a\0u\0",
        b"@releaseDomain\0t\0",
        b"@releaseDomain\0t\0",
    ]
    # Once sent, the same event may be queued again.
    assert conn.queue_event(b"/a\0t\0", None, 0.0)


def test_events_beyond_limit_dropped_replies_stop_reading() -> None:
    tr = FakeTransport(room=0)
    conn = Connection(1, 0, tr, out_limit=1000)
    assert conn.can_process()
    kept = sum(conn.queue_event(b"/p/%03d\0t\0" % i, None, 0.0) for i in range(200))
    assert conn.out_bytes <= 1000
    assert kept == 1000 // (16 + 9)
    conn.queue_reply(2, 0, 0, b"x" * 100)  # replies are never dropped...
    assert not conn.can_process()  # ...but the connection is not read any more
    woken: list[Connection] = []
    conn.wake = woken.append
    tr.room = 1 << 20
    conn.flush()
    assert woken == [conn] and conn.can_process()


def test_outstanding_counts_reply_and_events_of_a_request() -> None:
    requester = Connection(
        1, 5, FakeTransport(room=1 << 20), out_limit=1 << 20, outstanding_limit=1
    )
    watcher_tr = FakeTransport(room=0)
    watcher = Connection(2, 0, watcher_tr, out_limit=1 << 20)
    token = requester.queue_reply(11, 0, 0, b"OK\0")
    assert token is not None
    assert watcher.queue_event(b"/x\0t\0", token, 0.0)
    assert requester.outstanding == 1 and not requester.can_process()
    requester.flush()  # reply sent, but its event is still queued elsewhere
    assert requester.outstanding == 1
    woken: list[Connection] = []
    requester.wake = woken.append
    watcher_tr.room = 1 << 20
    watcher.flush()
    assert requester.outstanding == 0 and woken == [requester]


def test_event_timeout_spares_started_event() -> None:
    tr = FakeTransport(room=3)
    conn = Connection(1, 0, tr, out_limit=1 << 20, event_timeout=1.0)
    conn.queue_event(b"/a\0t\0", None, 100.0)
    conn.queue_event(b"/b\0t\0", None, 100.0)
    conn.flush()  # 3 bytes of the first event are out
    assert conn.expire_events(100.5) == 0
    assert conn.expire_events(101.0) == 1
    tr.room = 1 << 20
    conn.flush()
    assert [e[3] for e in split_messages(bytes(tr.written))] == [b"/a\0t\0"]


def test_pending_output_starts_at_first_unsent_byte() -> None:
    tr = FakeTransport(room=10)
    conn = Connection(1, 0, tr, out_limit=1 << 20)
    conn.queue_reply(2, 1, 0, b"abc")
    conn.queue_reply(2, 2, 0, b"defg")
    conn.flush()
    whole = HDR.pack(2, 1, 0, 3) + b"abc" + HDR.pack(2, 2, 0, 4) + b"defg"
    assert conn.pending_output() == whole[10:]
    conn.reader.feed(HDR.pack(2, 3, 0, 4) + b"ab")
    assert conn.pending_input() == HDR.pack(2, 3, 0, 4) + b"ab"


def test_reader_oversized() -> None:
    reader = MessageReader()
    reader.feed(HDR.pack(2, 0, 0, 4096) + b"x" * 4096 + HDR.pack(2, 0, 0, 4097))
    assert reader.next_message() == (2, 0, 0, b"x" * 4096)
    with pytest.raises(OversizedMessage):
        reader.next_message()


messages = st.lists(
    st.tuples(
        st.integers(0, 30),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=300),
    ),
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(messages, st.lists(st.integers(1, 64), max_size=60), st.data())
def test_reader_any_split(
    msgs: list[tuple[int, int, int, bytes]], cuts: list[int], data: st.DataObject
) -> None:
    stream = b"".join(HDR.pack(t, r, x, len(p)) + p for t, r, x, p in msgs)
    reader = MessageReader()
    got = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[pos : pos + cut])
        pos += cut
        # Take some, not necessarily all, of what is complete (back pressure).
        for _ in range(data.draw(st.integers(0, 3))):
            m = reader.next_message()
            if m is None:
                break
            got.append(m)
    while (m := reader.next_message()) is not None:
        got.append(m)
    assert got == msgs
    assert reader.buffered() == 0


def test_take_returns_messages_before_an_oversized_header_first() -> None:
    reader = MessageReader()
    good = HDR.pack(11, 1, 0, 3) + b"a\0b"
    reader.feed(good + good + HDR.pack(2, 0, 0, 5000))
    assert reader.take(10) == [(11, 1, 0, b"a\0b"), (11, 1, 0, b"a\0b")]
    with pytest.raises(OversizedMessage):
        reader.take(10)


def test_take_respects_limit_and_partial_tail() -> None:
    reader = MessageReader()
    stream = b"".join(HDR.pack(2, i, 0, 1) + b"x" for i in range(5))
    reader.feed(stream + HDR.pack(2, 9, 0, 4) + b"ab")
    assert [m[1] for m in reader.take(3)] == [0, 1, 2]
    assert [m[1] for m in reader.take(10)] == [3, 4]
    assert reader.take(10) == []
    reader.feed(b"cd")
    assert reader.take(10) == [(2, 9, 0, b"abcd")]


def test_allowance_keeps_worst_case_replies_within_bound() -> None:
    conn = Connection(1, 0, FakeTransport(), out_limit=10 * 4112)
    assert conn.allowance() == 10  # 10 worst-case replies fit
    conn.queue_reply(2, 0, 0, b"x" * 4000)
    assert conn.allowance() == 9
    conn.out_limit = conn.out_bytes + 100
    assert conn.allowance() == 1  # below the bound: one more, as C does
    conn.queue_reply(2, 0, 0, b"x" * 90)
    assert conn.allowance() == 0
    limited = Connection(2, 5, FakeTransport(), out_limit=1 << 20, outstanding_limit=3)
    assert limited.allowance() == 3
    limited.queue_reply(2, 0, 0, b"")
    assert limited.allowance() == 2
