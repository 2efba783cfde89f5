"""The client proper: requests, replies, watch events and transactions.

One :class:`Client` talks to the daemon through any byte transport (unix
socket or shared ring).  Requests carry increasing ``req_id`` values and
replies are matched by ``req_id``; watch events that arrive while a reply is
awaited are queued for :meth:`Client.events`.  The client is not thread-safe:
use one per thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pyxenstored.wire import HEADER, HEADER_SIZE, PAYLOAD_MAX, MsgType, XsError, split_strings

from .ring import RingTransport
from .transport import (
    ClientConnectionError,
    SocketTransport,
    Transport,
    connect_default_socket,
    open_default_transport,
    open_transport,
)

T = TypeVar("T")

PERM_LETTERS = "nrwb"
DIRECTORY_PART_RESTARTS = 100
DEFAULT_TRANSACTION_RETRIES = 100
_REQ_ID_MASK = 0xFFFFFFFF


class XsClientError(XsError, OSError):
    """The daemon answered a request with an ERROR reply (or the client refused it first).

    An :class:`OSError` as pyxs's ``PyXSError`` and libxenstore's ``errno``
    are: ``errno`` is the host's number for the error and ``strerror`` its
    text; ``name`` is the wire error name (``ENOENT``, ``EAGAIN``, ...),
    ``request`` the request type and ``detail`` what was asked.
    """

    def __init__(
        self, name: str, request: int | None = None, detail: str = "", payload: bytes = b""
    ) -> None:
        if not detail and request is not None:
            # Name the request and its first argument (usually the path).
            first = payload.split(b"\0", 1)[0][:200]
            detail = f"{_type_name(request)} {_dec(first)}".rstrip()
        XsError.__init__(self, name, detail)
        # Every name of the wire error table is a Linux errno name, so the
        # host has a number for it, as libxenstore's get_error (xs.c) finds.
        code: int = getattr(errno, self.name)
        self.errno = code
        self.strerror = os.strerror(code)
        self.args = (code, self.strerror)
        self.request = request

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}" if self.detail else self.name

    def __repr__(self) -> str:
        return f"XsClientError({self.name!r}, {self.detail!r})"

    def __reduce__(self) -> tuple[type[XsClientError], tuple[str, int | None, str]]:
        return (type(self), (self.name, self.request, self.detail))


def _type_name(type_: int) -> str:
    try:
        return MsgType(type_).name
    except ValueError:
        return f"type {type_}"


def _enc(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def _dec(raw: bytes) -> str:
    # surrogateescape keeps any byte string round-trippable through str.
    return raw.decode("utf-8", "surrogateescape")


def _arg(text: str | bytes | int) -> bytes:
    """One NUL-terminated request argument."""
    if isinstance(text, int):
        return b"%d\0" % text
    return _enc(text) + b"\0"


def _text_reply(reply: bytes) -> str:
    """A reply holding one string, with or without its NUL."""
    return _dec(reply[:-1] if reply.endswith(b"\0") else reply)


def _int_reply(reply: bytes, request: int) -> int:
    text = _text_reply(reply)
    try:
        return int(text)
    except ValueError:
        raise ClientConnectionError(
            f"{_type_name(request)} reply is not a number: {reply!r}"
        ) from None


@dataclass(slots=True, frozen=True)
class Perm:
    """One permission entry: ``letter`` (n, r, w, b) for domain ``domid``.

    In a permission list the first entry names the owner, and its letter is
    the access of every domain not listed.
    """

    letter: str
    domid: int

    def __post_init__(self) -> None:
        if len(self.letter) != 1 or self.letter not in PERM_LETTERS:
            raise ValueError(f"permission letter must be one of {PERM_LETTERS!r}: {self.letter!r}")

    @classmethod
    def parse(cls, text: str | bytes) -> Perm:
        """``r5`` -> Perm("r", 5); the domid is signed decimal as the daemon prints it."""
        raw = _dec(text) if isinstance(text, bytes) else text
        try:
            domid = int(raw[1:], 10)
        except ValueError:
            raise ValueError(f"bad permission entry {raw!r}") from None
        return cls(raw[:1], domid)

    def __str__(self) -> str:
        return f"{self.letter}{self.domid}"


@dataclass(slots=True, frozen=True)
class WatchEvent:
    """A WATCH_EVENT: the path that changed (as the watch was written) and the token."""

    path: str
    token: str


class Operations:
    """The node operations, shared by the client and its transactions."""

    def _call(self, type_: int, payload: bytes) -> bytes:
        raise NotImplementedError

    def read(self, path: str | bytes) -> bytes:
        return self._call(MsgType.READ, _arg(path))

    def write(self, path: str | bytes, value: str | bytes) -> None:
        self._call(MsgType.WRITE, _arg(path) + _enc(value))

    def mkdir(self, path: str | bytes) -> None:
        self._call(MsgType.MKDIR, _arg(path))

    def rm(self, path: str | bytes) -> None:
        self._call(MsgType.RM, _arg(path))

    def exists(self, path: str | bytes) -> bool:
        """Whether READ finds the node (EACCES counts as existing but hidden: False)."""
        try:
            self.read(path)
        except XsClientError as exc:
            if exc.name in ("ENOENT", "EACCES"):
                return False
            raise
        return True

    def directory(self, path: str | bytes) -> list[str]:
        """Child names; a list too long for one reply is fetched in DIRECTORY_PART slices."""
        try:
            reply = self._call(MsgType.DIRECTORY, _arg(path))
        except XsClientError as exc:
            if exc.name != "E2BIG":
                raise
            return self._directory_by_parts(path)
        return [_dec(name) for name in split_strings(reply)]

    def _directory_by_parts(self, path: str | bytes) -> list[str]:
        # Each slice starts with the node's generation; if it changes between
        # slices the list changed under us and we start again (core.c:send_directory_part).
        for _ in range(DIRECTORY_PART_RESTARTS):
            names: list[bytes] = []
            offset = 0
            generation: bytes | None = None
            while True:
                try:
                    reply = self._call(MsgType.DIRECTORY_PART, _arg(path) + _arg(offset))
                except XsClientError as exc:
                    if exc.name == "ENOSYS":  # daemon without DIRECTORY_PART
                        raise XsClientError("E2BIG", MsgType.DIRECTORY) from exc
                    raise
                sep = reply.find(b"\0")
                if sep < 0:
                    raise ClientConnectionError(
                        f"DIRECTORY_PART reply without generation: {reply!r}"
                    )
                gen, chunk = reply[:sep], reply[sep + 1 :]
                if generation is None:
                    generation = gen
                elif gen != generation:
                    break
                if chunk == b"\0" or chunk.endswith(b"\0\0"):
                    names.extend(split_strings(chunk[:-1]))
                    return [_dec(name) for name in names]
                if not chunk.endswith(b"\0"):
                    raise ClientConnectionError(
                        f"DIRECTORY_PART slice cut inside a name: {reply!r}"
                    )
                names.extend(split_strings(chunk))
                offset += len(chunk)
        raise XsClientError("EAGAIN", MsgType.DIRECTORY_PART, "directory kept changing")

    def get_perms(self, path: str | bytes) -> list[Perm]:
        reply = self._call(MsgType.GET_PERMS, _arg(path))
        return [Perm.parse(entry) for entry in split_strings(reply)]

    def set_perms(self, path: str | bytes, perms: Iterable[Perm | str]) -> None:
        payload = _arg(path) + b"".join(_arg(str(p)) for p in perms)
        self._call(MsgType.SET_PERMS, payload)


class Transaction(Operations):
    """An open transaction: the node operations run with its ``tx_id``."""

    def __init__(self, client: Client, tx_id: int) -> None:
        self.client = client
        self.tx_id = tx_id
        self.ended = False

    def _call(self, type_: int, payload: bytes) -> bytes:
        return self.client.request(type_, payload, self.tx_id)

    def commit(self) -> None:
        """END with ``T``; EAGAIN means a conflicting change won: start again."""
        self._end(b"T\0")

    def abort(self) -> None:
        self._end(b"F\0")

    def _end(self, how: bytes) -> None:
        # The daemon forgets the transaction whatever the answer (transaction.c:do_transaction_end).
        self.ended = True
        self.client.request(MsgType.TRANSACTION_END, how, self.tx_id)


class Client(Operations):
    """A connection to xenstored over one transport.

    ``timeout`` (seconds, None = for ever) bounds the wait for each reply;
    :class:`TimeoutError` is raised when it passes.
    """

    def __init__(self, transport: Transport, timeout: float | None = None) -> None:
        self.transport = transport
        self.timeout = timeout
        self._next_req_id = 1
        self._inbuf = bytearray()
        self._replies: dict[int, deque[tuple[int, bytes]]] = {}
        self._submitted: dict[int, tuple[int, bytes]] = {}  # req_id -> (type, payload)
        self._events: deque[WatchEvent] = deque()
        self._broken: str | None = None
        self._closed = False

    # --- opening --------------------------------------------------------------

    @classmethod
    def connect_socket(cls, path: str | None = None, timeout: float | None = None) -> Client:
        """Connect to the unix socket ``path``; by default the first that answers of
        :func:`~pyxenstored.client.transport.socket_candidates` (libxenstore's, then
        the per-user socket of an unprivileged pyxenstored)."""
        return cls(SocketTransport(path) if path else connect_default_socket(), timeout)

    @classmethod
    def connect(cls, path: str | None = None, timeout: float | None = None) -> Client:
        """Connect as libxenstore does: ``path`` (socket or device), else the default
        sockets, else the kernel's xenbus device (``xs.c:xs_open``)."""
        transport = open_transport(path) if path else open_default_transport()
        return cls(transport, timeout)

    @classmethod
    def connect_ring(
        cls,
        ring_dir: str,
        domid: int,
        port: int,
        timeout: float | None = None,
        notify: bool = True,
    ) -> Client:
        """Act as guest ``domid`` on its ring page in ``ring_dir`` (already introduced)."""
        return cls(RingTransport(ring_dir, domid, port, notify=notify), timeout)

    def close(self) -> None:
        """End the connection; closing again does nothing, as with files and sockets."""
        if not self._closed:
            self._closed = True
            self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- messages -------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise ClientConnectionError(self._broken)

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for tests and benchmarks); replies go to :meth:`collect`."""
        self._check_usable()
        self._send(data)

    def _send(self, data: bytes) -> None:
        try:
            self.transport.send(data, self.timeout)
        except (ClientConnectionError, TimeoutError) as exc:
            # Part of a message may have gone: the stream is out of step.
            self._broken = f"connection unusable after a failed send: {exc}"
            raise

    def submit(self, type_: int, payload: bytes = b"", tx_id: int = 0) -> int:
        """Send one request without waiting; returns its ``req_id`` for :meth:`collect`."""
        self._check_usable()
        if len(payload) > PAYLOAD_MAX:
            # libxenstore refuses these before sending; the daemon would drop us.
            raise XsClientError("E2BIG", type_, f"payload of {len(payload)} bytes")
        req_id = self._next_req_id
        self._next_req_id = (req_id + 1) & _REQ_ID_MASK or 1
        self._submitted[req_id] = (type_, payload)
        self._send(HEADER.pack(type_, req_id, tx_id, len(payload)) + payload)
        return req_id

    def collect_message(self, req_id: int, timeout: float | None = None) -> tuple[int, bytes]:
        """The next reply carrying ``req_id``, as (type, payload), errors included."""
        wait = self.timeout if timeout is None else timeout
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            queue = self._replies.get(req_id)
            if queue:
                message = queue.popleft()
                if not queue:
                    del self._replies[req_id]
                return message
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no reply to request {req_id} from xenstored")
            self._pump(remaining)

    def collect(self, req_id: int, timeout: float | None = None) -> bytes:
        """The payload of the reply to ``req_id``; an ERROR reply raises :class:`XsClientError`."""
        type_, payload = self.collect_message(req_id, timeout)
        sent_type, sent_payload = self._submitted.pop(req_id, (None, b""))
        if type_ == MsgType.ERROR:
            raise XsClientError(_text_reply(payload), sent_type, payload=sent_payload)
        if sent_type is not None and type_ != sent_type:
            self._broken = f"reply of type {_type_name(type_)} to {_type_name(sent_type)}"
            raise ClientConnectionError(self._broken)
        return payload

    def request(self, type_: int, payload: bytes = b"", tx_id: int = 0) -> bytes:
        """Send one request and return its reply payload (ERROR raises)."""
        return self.collect(self.submit(type_, payload, tx_id))

    def _call(self, type_: int, payload: bytes) -> bytes:
        return self.request(type_, payload, 0)

    def _pump(self, timeout: float | None) -> bool:
        """Take what the transport has (waiting up to ``timeout``) and sort it; False if nothing."""
        self._check_usable()
        try:
            data = self.transport.receive(timeout)
        except ClientConnectionError as exc:
            self._broken = str(exc)
            raise
        if not data:
            return False
        buf = self._inbuf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            type_, req_id, _tx_id, length = HEADER.unpack_from(buf, pos)
            if length > PAYLOAD_MAX:
                self._broken = f"xenstored sent a message of {length} bytes (limit {PAYLOAD_MAX})"
                raise ClientConnectionError(self._broken)
            stop = pos + HEADER_SIZE + length
            if stop > end:
                break
            payload = bytes(buf[pos + HEADER_SIZE : stop])
            pos = stop
            if type_ == MsgType.WATCH_EVENT:
                self._events.append(_parse_event(payload))
            else:
                queue = self._replies.get(req_id)
                if queue is None:
                    self._replies[req_id] = deque([(type_, payload)])
                else:
                    queue.append((type_, payload))
        del buf[:pos]
        return True

    # --- watches ----------------------------------------------------------------

    def watch(self, path: str | bytes, token: str | bytes, depth: int | None = None) -> None:
        """Register a watch; the daemon at once sends one event for it."""
        payload = _arg(path) + _arg(token)
        if depth is not None:
            payload += _arg(depth)
        self._call(MsgType.WATCH, payload)

    def unwatch(self, path: str | bytes, token: str | bytes) -> None:
        self._call(MsgType.UNWATCH, _arg(path) + _arg(token))

    def reset_watches(self) -> None:
        """Drop all watches (and, as the daemon does, all transactions) of this connection."""
        self._call(MsgType.RESET_WATCHES, b"")

    def next_event(self, timeout: float | None = None) -> WatchEvent | None:
        """The next watch event, or None if none comes within ``timeout`` (None = for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._pump(remaining)
        return self._events.popleft()

    def events(self) -> Iterator[WatchEvent]:
        """Watch events as they come, for ever."""
        while True:
            event = self.next_event()
            if event is not None:
                yield event

    def pending_events(self) -> list[WatchEvent]:
        """Take the events already received or readable now, without waiting."""
        while self._pump(0):
            pass
        events = list(self._events)
        self._events.clear()
        return events

    # --- transactions -------------------------------------------------------------

    def start_transaction(self) -> Transaction:
        reply = self._call(MsgType.TRANSACTION_START, b"\0")
        return Transaction(self, _int_reply(reply, MsgType.TRANSACTION_START))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A transaction committed when the block ends, aborted if it raises.

        A conflict shows as :class:`XsClientError` ``EAGAIN`` when leaving the
        block; :meth:`run_transaction` retries for you.
        """
        tx = self.start_transaction()
        try:
            yield tx
        except BaseException:
            if not tx.ended:
                with contextlib.suppress(XsClientError, ClientConnectionError, TimeoutError):
                    tx.abort()
            raise
        if not tx.ended:
            tx.commit()

    def run_transaction(
        self, fn: Callable[[Transaction], T], retries: int = DEFAULT_TRANSACTION_RETRIES
    ) -> T:
        """Run ``fn(tx)`` in a transaction, again (up to ``retries`` times) on EAGAIN."""
        attempt = 0
        while True:
            try:
                with self.transaction() as tx:
                    result = fn(tx)
                return result
            except XsClientError as exc:
                if exc.name != "EAGAIN" or attempt >= retries:
                    raise
                attempt += 1

    # --- domains ----------------------------------------------------------------------

    def get_domain_path(self, domid: int) -> str:
        return _text_reply(self._call(MsgType.GET_DOMAIN_PATH, _arg(domid)))

    def introduce(self, domid: int, mfn: int, port: int) -> None:
        """INTRODUCE a domain: its ring page (frame ``mfn``) and event-channel ``port``."""
        self._call(MsgType.INTRODUCE, _arg(domid) + _arg(mfn) + _arg(port))

    def release(self, domid: int) -> None:
        self._call(MsgType.RELEASE, _arg(domid))

    def resume(self, domid: int) -> None:
        self._call(MsgType.RESUME, _arg(domid))

    def is_domain_introduced(self, domid: int) -> bool:
        # libxenstore reads anything but "F" as true.
        return not self._call(MsgType.IS_DOMAIN_INTRODUCED, _arg(domid)).startswith(b"F")

    def set_target(self, domid: int, target: int) -> None:
        self._call(MsgType.SET_TARGET, _arg(domid) + _arg(target))

    def get_feature(self, domid: int | None = None) -> int:
        """The feature bitmap of ``domid``, or of this connection when None."""
        payload = b"" if domid is None else _arg(domid)
        return _int_reply(self._call(MsgType.GET_FEATURE, payload), MsgType.GET_FEATURE)

    def set_feature(self, domid: int, value: int) -> None:
        self._call(MsgType.SET_FEATURE, _arg(domid) + _arg(value))

    def quota_names(self) -> list[str]:
        return _text_reply(self._call(MsgType.GET_QUOTA, b"")).split()

    def get_quota(self, name: str, domid: int | None = None) -> int:
        """A quota value: the global default, or domain ``domid``'s own."""
        payload = _arg(name) if domid is None else _arg(domid) + _arg(name)
        return _int_reply(self._call(MsgType.GET_QUOTA, payload), MsgType.GET_QUOTA)

    def set_quota(self, name: str, value: int, domid: int | None = None) -> None:
        prefix = b"" if domid is None else _arg(domid)
        self._call(MsgType.SET_QUOTA, prefix + _arg(name) + _arg(value))

    def control(self, *args: str | bytes) -> str:
        """A CONTROL command (``control("quota")``, ``control("print", "hi")``); its text reply."""
        return _text_reply(self._call(MsgType.CONTROL, b"".join(_arg(a) for a in args)))

    # --- ring only ------------------------------------------------------------------------

    def reconnect(self, timeout: float | None = 10.0) -> None:
        """Reset a ring connection through its connection-state field (feature bit 0).

        Replies still awaited are lost, as are this connection's watches and
        transactions; events already received stay queued.
        """
        if not isinstance(self.transport, RingTransport):
            raise ClientConnectionError("reconnection exists only on a shared ring")
        self.transport.reconnect(timeout)
        self._inbuf.clear()
        self._replies.clear()
        self._submitted.clear()
        self._broken = None


def _parse_event(payload: bytes) -> WatchEvent:
    parts = split_strings(payload)
    path = _dec(parts[0]) if parts else ""
    token = _dec(parts[1]) if len(parts) > 1 else ""
    return WatchEvent(path, token)
