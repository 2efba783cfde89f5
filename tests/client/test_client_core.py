"""Client message handling against a scripted transport: bytes in, bytes out, no daemon.

Replies are hand-built from the header layout (four native u32: type,
req_id, tx_id, len) and the payload rules of xenstore.txt ("Database read, write and
permissions operations") and C's ``core.c:send_directory_part``.
"""

from __future__ import annotations

import errno
import os
import pickle
import struct
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxenstored.client import (
    Client,
    ClientConnectionError,
    DeviceTransport,
    Perm,
    Transaction,
    WatchEvent,
    XsClientError,
    default_socket_path,
)
from pyxenstored.client.transport import open_transport
from pyxenstored.wire import XsError

HDR = struct.Struct("=IIII")
READ, DIRECTORY, GET_PERMS, WATCH, TX_START, TX_END = 2, 1, 3, 4, 6, 7
WRITE, SET_PERMS, WATCH_EVENT, ERROR, DIRECTORY_PART = 11, 14, 15, 16, 22

Request = tuple[int, int, int, bytes]
Script = Callable[[Request], list[bytes]]


def msg(t: int, rid: int, payload: bytes, tx: int = 0) -> bytes:
    return HDR.pack(t, rid, tx, len(payload)) + payload


class ScriptedTransport:
    """Answers each request with the messages ``script`` returns, delivered in ``chunk``-byte pieces."""

    def __init__(self, script: Script, chunk: int = 65536) -> None:
        self.script = script
        self.chunk = chunk
        self.requests: list[Request] = []
        self.incoming: deque[bytes] = deque()
        self.closed = False

    def send(self, data: bytes, timeout: float | None = None) -> None:
        while data:
            t, rid, tx, n = HDR.unpack_from(data)
            req = (t, rid, tx, data[16 : 16 + n])
            data = data[16 + n :]
            self.requests.append(req)
            out = b"".join(self.script(req))
            for i in range(0, len(out), self.chunk):
                self.incoming.append(out[i : i + self.chunk])

    def receive(self, timeout: float | None) -> bytes:
        return self.incoming.popleft() if self.incoming else b""

    def close(self) -> None:
        self.closed = True


def ok(req: Request) -> list[bytes]:
    return [msg(req[0], req[1], b"OK\0", req[2])]


def client_for(script: Script, chunk: int = 65536) -> tuple[Client, ScriptedTransport]:
    transport = ScriptedTransport(script, chunk)
    return Client(transport, timeout=0.5), transport


def test_request_header_and_payload_bytes() -> None:
    xs, tr = client_for(ok)
    xs.write("/a/b", b"v\0w")
    xs.set_perms("/a", [Perm("n", 0), "r5"])
    xs.watch("/a", "tok", depth=2)
    assert [r[0] for r in tr.requests] == [WRITE, SET_PERMS, WATCH]
    assert tr.requests[0][3] == b"/a/b\0v\0w"
    assert tr.requests[1][3] == b"/a\0n0\0r5\0"
    assert tr.requests[2][3] == b"/a\0tok\0" + b"2\0"
    # req_ids are distinct so replies can be matched; tx_id 0 outside transactions
    assert len({r[1] for r in tr.requests}) == 3
    assert all(r[2] == 0 for r in tr.requests)


def test_domain_and_quota_payloads() -> None:
    answers = {8: b"OK\0", 17: b"F\0", 25: b"1000\0", 23: b"14\0", 10: b"/local/domain/3\0"}
    xs, tr = client_for(lambda r: [msg(r[0], r[1], answers.get(r[0], b"OK\0"))])
    xs.introduce(5, 1, 7)
    assert xs.is_domain_introduced(5) is False
    assert xs.get_quota("nodes", domid=5) == 1000
    assert xs.get_feature() == 14
    assert xs.get_domain_path(3) == "/local/domain/3"
    xs.set_quota("watches", 7)
    xs.set_feature(5, 6)
    xs.set_target(5, 6)
    assert xs.control("print", "hi") == "OK"
    assert [r[3] for r in tr.requests] == [
        b"5\x001\x007\0",
        b"5\0",
        b"5\0nodes\0",
        b"",
        b"3\0",
        b"watches\x007\0",
        b"5\x006\0",
        b"5\x006\0",
        b"print\0hi\0",
    ]


def test_replies_matched_by_req_id_not_arrival_order() -> None:
    held: list[Request] = []

    def script(req: Request) -> list[bytes]:
        held.append(req)
        if len(held) < 2:
            return []
        # answer the second request first
        return [msg(READ, r[1], b"value-%d" % r[1]) for r in reversed(held)]

    xs, _ = client_for(script)
    first = xs.submit(READ, b"/x\0")
    second = xs.submit(READ, b"/y\0")
    assert xs.collect(first) == b"value-%d" % first
    assert xs.collect(second) == b"value-%d" % second


@pytest.mark.parametrize("chunk", [1, 7, 16, 17, 4096])
def test_events_arriving_before_a_reply_are_queued(chunk: int) -> None:
    def script(req: Request) -> list[bytes]:
        return [
            msg(WATCH_EVENT, 0, b"/a/b\0tok\0"),
            msg(WATCH_EVENT, 0, b"rel/x\0t2\0"),
            msg(READ, req[1], b"hello"),
        ]

    xs, _ = client_for(script, chunk)
    assert xs.read("/a") == b"hello"
    assert xs.next_event(0) == WatchEvent("/a/b", "tok")
    assert xs.pending_events() == [WatchEvent("rel/x", "t2")]
    assert xs.next_event(0) is None


def test_error_reply_raises_with_wire_name() -> None:
    xs, _ = client_for(lambda r: [msg(ERROR, r[1], b"ENOENT\0")])
    with pytest.raises(XsClientError) as info:
        xs.read("/missing")
    assert info.value.name == "ENOENT"
    assert isinstance(info.value, XsError)
    assert info.value.request == READ


# The wire error table (xs_wire.h: xsd_errors) with Linux's numbers for the names.
LINUX_ERRNO = {
    "EINVAL": 22,
    "EACCES": 13,
    "EEXIST": 17,
    "EISDIR": 21,
    "ENOENT": 2,
    "ENOMEM": 12,
    "ENOSPC": 28,
    "EIO": 5,
    "ENOTEMPTY": 39,
    "ENOSYS": 38,
    "EROFS": 30,
    "EBUSY": 16,
    "EAGAIN": 11,
    "EISCONN": 106,
    "E2BIG": 7,
    "EPERM": 1,
}


@pytest.mark.skipif(sys.platform != "linux", reason="errno numbers are Linux's")
@pytest.mark.parametrize("name", sorted(LINUX_ERRNO))
def test_error_reply_is_an_oserror_with_errno(name: str) -> None:
    xs, _ = client_for(lambda r: [msg(ERROR, r[1], name.encode() + b"\0")])
    with pytest.raises(OSError) as info:
        xs.write("/vm/x", b"v")
    exc = info.value
    assert isinstance(exc, XsClientError)
    assert exc.errno == LINUX_ERRNO[name]
    assert exc.args == (LINUX_ERRNO[name], os.strerror(LINUX_ERRNO[name]))  # as pyxs's PyXSError
    assert exc.strerror == os.strerror(LINUX_ERRNO[name])
    assert exc.name == name
    assert str(exc) == f"{name}: WRITE /vm/x"
    assert exc.filename is None


def test_client_side_errors_carry_errno_too() -> None:
    xs, _ = client_for(ok)
    with pytest.raises(OSError) as info:
        xs.write("/x", b"v" * 4096)
    assert info.value.errno == errno.E2BIG


def test_error_survives_pickling() -> None:
    exc = XsClientError("EACCES", READ, payload=b"/tool\0")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is XsClientError
    assert (back.name, back.errno, back.request, str(back)) == (
        "EACCES",
        errno.EACCES,
        READ,
        "EACCES: READ /tool",
    )
    assert repr(back) == "XsClientError('EACCES', 'READ /tool')"


def test_unknown_error_name_reads_as_einval() -> None:
    xs, _ = client_for(lambda r: [msg(ERROR, r[1], b"EWHATEVER\0")])
    with pytest.raises(XsClientError) as info:
        xs.read("/x")
    assert info.value.name == "EINVAL"
    assert info.value.errno == errno.EINVAL


def test_reply_of_wrong_type_breaks_the_connection() -> None:
    xs, _ = client_for(lambda r: [msg(WRITE, r[1], b"OK\0")])
    with pytest.raises(ClientConnectionError, match="WRITE to READ"):
        xs.read("/x")
    with pytest.raises(ClientConnectionError):
        xs.read("/x")


def test_oversized_message_from_daemon_breaks_the_connection() -> None:
    xs, _ = client_for(lambda r: [HDR.pack(READ, r[1], 0, 5000)])
    with pytest.raises(ClientConnectionError, match="5000"):
        xs.read("/x")


def test_oversized_request_refused_without_sending() -> None:
    xs, tr = client_for(ok)
    with pytest.raises(XsClientError) as info:
        xs.write("/x", b"v" * 4096)
    assert info.value.name == "E2BIG"
    assert tr.requests == []


def test_no_reply_times_out() -> None:
    xs, _ = client_for(lambda r: [])
    with pytest.raises(TimeoutError):
        xs.read("/x")


def test_get_perms_parses_signed_domids() -> None:
    xs, _ = client_for(lambda r: [msg(GET_PERMS, r[1], b"w0\0r5\0b32757\0n-1\0")])
    assert xs.get_perms("/x") == [Perm("w", 0), Perm("r", 5), Perm("b", 32757), Perm("n", -1)]


def test_perm_validation_and_text() -> None:
    assert str(Perm("b", 7)) == "b7"
    assert Perm.parse(b"r12") == Perm("r", 12)
    with pytest.raises(ValueError):
        Perm("x", 1)
    with pytest.raises(ValueError):
        Perm.parse("r")


def directory_part_script(slices: dict[int, list[bytes]]) -> tuple[Script, list[bytes]]:
    """DIRECTORY answers E2BIG; DIRECTORY_PART answers from ``slices`` by offset (consumed in order)."""
    asked: list[bytes] = []

    def script(req: Request) -> list[bytes]:
        t, rid, tx, payload = req
        if t == DIRECTORY:
            return [msg(ERROR, rid, b"E2BIG\0", tx)]
        path, offset, _ = payload.split(b"\0")
        asked.append(offset)
        return [msg(DIRECTORY_PART, rid, slices[int(offset)].pop(0), tx)]

    return script, asked


def test_directory_falls_back_to_parts() -> None:
    script, asked = directory_part_script({0: [b"7\0aa\0b\0"], 5: [b"7\0c\0\0"]})
    xs, _ = client_for(script)
    assert xs.directory("/d") == ["aa", "b", "c"]
    assert asked == [b"0", b"5"]


def test_directory_parts_restart_when_generation_changes() -> None:
    script, asked = directory_part_script(
        {0: [b"7\0aa\0b\0", b"8\0aa\0"], 5: [b"8\0c\0\0"], 3: [b"8\0z\0\0"]}
    )
    xs, _ = client_for(script)
    assert xs.directory("/d") == ["aa", "z"]
    assert asked == [b"0", b"5", b"0", b"3"]


def test_directory_part_offset_past_end() -> None:
    script, _ = directory_part_script({0: [b"3\0x\0"], 2: [b"3\0\0"]})
    xs, _ = client_for(script)
    assert xs.directory("/d") == ["x"]


def test_directory_part_enosys_reads_as_e2big() -> None:
    def script(req: Request) -> list[bytes]:
        name = b"E2BIG\0" if req[0] == DIRECTORY else b"ENOSYS\0"
        return [msg(ERROR, req[1], name)]

    xs, _ = client_for(script)
    with pytest.raises(XsClientError) as info:
        xs.directory("/d")
    assert info.value.name == "E2BIG"


class TxDaemon:
    """Transactions: ids from 1; the first ``conflicts`` commits answer EAGAIN."""

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.next_id = 1
        self.ends: list[tuple[int, bytes]] = []

    def __call__(self, req: Request) -> list[bytes]:
        t, rid, tx, payload = req
        if t == TX_START:
            self.next_id += 1
            return [msg(t, rid, b"%d\0" % (self.next_id - 1), tx)]
        if t == TX_END:
            self.ends.append((tx, payload))
            if payload == b"T\0" and self.conflicts:
                self.conflicts -= 1
                return [msg(ERROR, rid, b"EAGAIN\0", tx)]
        if t == READ:
            return [msg(t, rid, b"tx%d" % tx, tx)]
        return ok(req)


def test_run_transaction_retries_on_eagain() -> None:
    daemon = TxDaemon(conflicts=2)
    xs, tr = client_for(daemon)
    calls: list[Transaction] = []

    def body(tx: Transaction) -> bytes:
        calls.append(tx)
        return tx.read("/n")

    assert xs.run_transaction(body) == b"tx3"
    assert len(calls) == 3
    assert daemon.ends == [(1, b"T\0"), (2, b"T\0"), (3, b"T\0")]
    reads = [r for r in tr.requests if r[0] == READ]
    assert [r[2] for r in reads] == [1, 2, 3]


def test_run_transaction_gives_up_after_retries() -> None:
    xs, _ = client_for(TxDaemon(conflicts=10))
    with pytest.raises(XsClientError) as info:
        xs.run_transaction(lambda tx: None, retries=2)
    assert info.value.name == "EAGAIN"


def test_transaction_block_aborts_on_exception() -> None:
    daemon = TxDaemon(conflicts=0)
    xs, _ = client_for(daemon)
    with pytest.raises(RuntimeError), xs.transaction() as tx:
        tx.write("/n", b"v")
        raise RuntimeError("boom")
    assert daemon.ends == [(1, b"F\0")]
    with xs.transaction() as tx:
        tx.write("/n", b"v")
    assert daemon.ends[-1] == (2, b"T\0")


def test_default_socket_path_follows_libxenstore() -> None:
    assert default_socket_path({"XENSTORED_PATH": "/x/s"}) == "/x/s"
    assert default_socket_path({"XENSTORED_RUNDIR": "/r"}) == "/r/socket"
    assert default_socket_path({"XENSTORED_PATH": "/x/s", "XENSTORED_RUNDIR": "/r"}) == "/x/s"
    assert default_socket_path({}) == "/var/run/xenstored/socket"


def test_connect_socket_to_nothing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClientConnectionError, match="cannot connect"):
        Client.connect_socket(f"{tmp_path}/no-socket")


class ChunkFeed:
    """A transport that only delivers preset chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = deque(chunks)

    def send(self, data: bytes, timeout: float | None = None) -> None:
        pass

    def receive(self, timeout: float | None) -> bytes:
        return self.chunks.popleft() if self.chunks else b""

    def close(self) -> None:
        pass


messages = st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(msgs=messages, cuts=st.lists(st.integers(0, 5000), max_size=10))
def test_any_split_of_the_stream_gives_the_same_messages(
    msgs: list[tuple[bool, bytes]], cuts: list[int]
) -> None:
    stream = b""
    replies: list[tuple[int, bytes]] = []
    events: list[WatchEvent] = []
    for i, (is_event, body) in enumerate(msgs):
        if is_event:
            path, token = body[:10].hex(), body[10:20].hex()
            stream += msg(WATCH_EVENT, 0, f"{path}\0{token}\0".encode())
            events.append(WatchEvent(path, token))
        else:
            stream += msg(READ, i + 1, body)
            replies.append((i + 1, body))
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    xs = Client(ChunkFeed(chunks), timeout=0.01)
    for rid, body in replies:
        assert xs.collect_message(rid) == (READ, body)
    assert xs.pending_events() == events


@settings(max_examples=100, deadline=None)
@given(garbage=st.binary(min_size=16, max_size=200), big=st.integers(4097, 2**32 - 1))
def test_garbage_from_the_daemon_is_a_clear_error_or_a_wait(garbage: bytes, big: int) -> None:
    for data in (garbage, garbage[:12] + struct.pack("=I", big) + garbage[16:]):
        t, rid, _, n = HDR.unpack_from(data)
        xs = Client(ChunkFeed([data]), timeout=0.01)
        if n > 4096:
            with pytest.raises(ClientConnectionError, match="limit 4096"):
                xs.collect_message(rid)
        elif 16 + n <= len(data) and t != WATCH_EVENT:
            assert xs.collect_message(rid) == (t, data[16 : 16 + n])
        else:
            with pytest.raises(TimeoutError):
                xs.collect_message(rid)


def test_failed_send_leaves_the_connection_unusable() -> None:
    class StuckDaemon(ChunkFeed):
        def send(self, data: bytes, timeout: float | None = None) -> None:
            raise TimeoutError("daemon not reading")

    xs = Client(StuckDaemon([]), timeout=0.01)
    with pytest.raises(TimeoutError):
        xs.read("/x")
    with pytest.raises(ClientConnectionError, match="unusable after a failed send"):
        xs.read("/x")


def test_device_transport_carries_the_byte_stream() -> None:
    import socket
    import threading

    ours, theirs = socket.socketpair()
    xs = Client(DeviceTransport("xenbus", fd=ours.detach()), timeout=5)

    def kernel_side() -> None:
        request = theirs.recv(4096)
        t, rid, tx, n = HDR.unpack_from(request)
        assert request[16 : 16 + n] == b"/dev\0"
        theirs.sendall(msg(t, rid, b"via the device"))

    thread = threading.Thread(target=kernel_side)
    thread.start()
    assert xs.read("/dev") == b"via the device"
    thread.join()
    xs.close()
    theirs.close()


def test_open_transport_picks_socket_or_device(tmp_path: Path) -> None:
    plain = tmp_path / "xenbus"
    plain.write_bytes(b"")
    transport = open_transport(str(plain))
    assert isinstance(transport, DeviceTransport)
    transport.close()
    with pytest.raises(ClientConnectionError, match="cannot connect"):
        open_transport(str(tmp_path / "missing"))


def test_close_twice_closes_the_transport_once() -> None:
    closes: list[int] = []

    class Counting(ScriptedTransport):
        def close(self) -> None:
            closes.append(1)

    xs = Client(Counting(ok))
    with xs:
        xs.close()
    assert closes == [1]
