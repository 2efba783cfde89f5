"""The event loop: one thread, one poller (selectors' model over epoll), every fd.

:class:`Server` accepts unix-socket clients, reads whatever each connection
has, hands complete requests to the store one at a time, queues replies
(request order) and watch events, and writes them out without ever blocking
on one client.  Back pressure is per connection (see :mod:`.connection`): a
connection that stops reading only stops its own requests.

Signals arrive through ``signal.set_wakeup_fd`` on a socket pair registered
like any other fd, so SIGTERM/SIGINT stop the loop between two events and
SIGHUP reopens the trace file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from pyxenstored.server.connection import Charge, Connection, PendingRequest
from pyxenstored.server.framing import Message, MessageReader, OversizedMessage
from pyxenstored.server.log import Tracer
from pyxenstored.server.poller import EVENT_READ, EVENT_WRITE, Poller
from pyxenstored.server.socket_transport import READ_SIZE, SocketTransport, listen_unix
from pyxenstored.server.storeapi import EventLike, ResultLike, StoreLike
from pyxenstored.server.transport import Transport
from pyxenstored.store.messages import LIMIT_CHANGING_TYPES, QUICK_READ_TYPES
from pyxenstored.wire import HEADER, HEADER_SIZE, PAYLOAD_MAX, MsgType

log = logging.getLogger("pyxenstored.server")


_WATCH_EVENT = int(MsgType.WATCH_EVENT)
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from


class Interceptor(Protocol):
    """Looks at some requests around the store (live update, server/liveupdate.py)."""

    def before(self, conn: Connection, type_: int, req_id: int, tx_id: int, payload: bytes) -> bool:
        """True: hold the request back (it stays in the input; the connection stalls)."""
        ...

    def after(
        self, conn: Connection, type_: int, req_id: int, tx_id: int, result: ResultLike
    ) -> bool:
        """True: do not send the store's reply now (the connection stalls)."""
        ...


@dataclass(slots=True, frozen=True)
class _ErrorResult:
    reply_type: int
    payload: bytes
    events: tuple[()] = ()
    events_before_reply: bool = False


_INTERNAL_ERROR = _ErrorResult(int(MsgType.ERROR), b"EIO\0")

# From the message-type table (store/messages.py): the plain reads the quick
# path first offers to the store's ``quick_read``, and the requests after
# which per-connection limits are looked up again (they may change quota
# values or a connection's domain or privilege; never on the quick path).
_PLAIN_READS = QUICK_READ_TYPES
_LIMIT_CHANGERS = LIMIT_CHANGING_TYPES


@dataclass(slots=True)
class ServerConfig:
    """Tunables of the event loop (quota values come from the store)."""

    store_domid: int = 0
    # Output queue bound for connections without a memory quota (privileged
    # and socket clients): C has none, but a client that never reads must
    # not grow the daemon without bound.
    max_output_bytes: int = 4 * 1024 * 1024
    # Seconds an event for an unprivileged receiver may wait (``-w
    # watch-event=``); 0 disables.
    watch_event_timeout: float = 20.0
    listen_backlog: int = 128


class Server:
    """Owns the selector, the listening sockets and every connection."""

    def __init__(
        self, store: StoreLike, config: ServerConfig | None = None, tracer: Tracer | None = None
    ) -> None:
        self.store = store
        self.config = config or ServerConfig()
        self.tracer = tracer or Tracer()
        self._sel: Poller[Connection | Callable[[int], None]] = Poller()
        self._conns: dict[int, Connection] = {}
        self._masks: dict[int, int] = {}
        self._listeners: list[tuple[socket.socket, str, tuple[int, int]]] = []
        self._next_conn_id = 1
        self._accept_paused = False
        self._running = False
        self._dirty: set[Connection] = set()
        self._woken: set[Connection] = set()
        self._timed: set[Connection] = set()
        self._signal_socks: tuple[socket.socket, socket.socket] | None = None
        self._old_wakeup_fd = -1
        self.stop_signal: int | None = None
        # Live update (server/liveupdate.py): the interceptor sees requests of
        # the types in ``intercepted`` before and after the store; it may hold
        # one back or take over its reply.  A stalled connection takes no
        # further requests (they stay in its input) until released.
        # ``ticker(timeout)`` runs once per loop iteration and may shorten
        # the wait.
        self.interceptor: Interceptor | None = None
        self._intercepted: frozenset[int] = frozenset()
        # Types the quick path leaves to the general one (see _serve_quick).
        self._not_quick = _LIMIT_CHANGERS
        self.stalled: set[Connection] = set()
        self.ticker: Callable[[float | None], float | None] | None = None
        # Called at the end of every loop turn (rings re-check guests held
        # back by their memory quota, as C does on every main-loop pass).
        self.after_turn: list[Callable[[], None]] = []
        # Called just before a live-update exec, and after an exec that
        # failed (the hypervisor backend leaves and retakes VIRQ_DOM_EXC).
        self.before_exec: list[Callable[[], None]] = []
        self.exec_failed: list[Callable[[], None]] = []
        # Monotonic time by which the loop must take a turn (see wake_in).
        self._wake_at: float | None = None

    @property
    def intercepted(self) -> frozenset[int]:
        """Request types the interceptor sees before and after the store."""
        return self._intercepted

    @intercepted.setter
    def intercepted(self, types: frozenset[int]) -> None:
        self._intercepted = types
        self._not_quick = types | _LIMIT_CHANGERS

    # --- set-up --------------------------------------------------------------

    def listen(self, path: str) -> socket.socket:
        """Listen on a unix socket at ``path``; it is removed again by :meth:`close`."""
        return self.adopt_listener(listen_unix(path, self.config.listen_backlog), path)

    def adopt_listener(self, sock: socket.socket, path: str) -> socket.socket:
        """Serve an already listening socket (e.g. inherited across a live update)."""
        sock.setblocking(False)
        st = os.stat(path)
        self._listeners.append((sock, path, (st.st_dev, st.st_ino)))
        self._sel.register(sock, EVENT_READ, self._accept_ready)
        return sock

    def inherit_fds(self) -> dict[str, int]:
        """Mark every socket inheritable for an exec; returns their fds by role.

        Keys are ``listener:<path>`` and ``conn:<conn_id>`` (socket clients).
        """
        fds: dict[str, int] = {}
        for sock, path, _ident in self._listeners:
            sock.set_inheritable(True)
            fds[f"listener:{path}"] = sock.fileno()
        for conn in self._conns.values():
            transport = conn.transport
            if isinstance(transport, SocketTransport):
                transport.socket.set_inheritable(True)
                fds[f"conn:{conn.conn_id}"] = transport.fileno()
        return fds

    @property
    def connections(self) -> Iterator[Connection]:
        return iter(list(self._conns.values()))

    def connection(self, conn_id: int) -> Connection | None:
        return self._conns.get(conn_id)

    @property
    def listeners(self) -> list[socket.socket]:
        """The listening sockets, in the order they were added (a live update passes them on)."""
        return [entry[0] for entry in self._listeners]

    def add_connection(
        self, transport: Transport, domid: int, conn_id: int | None = None
    ) -> Connection:
        """Register a new client on any transport and tell the store about it."""
        if conn_id is None:
            conn_id = self._next_conn_id
        self._next_conn_id = max(self._next_conn_id, conn_id + 1)
        conn = Connection(
            conn_id, domid, transport, out_limit=self.config.max_output_bytes, wake=self._wake
        )
        self.store.connect(conn_id, domid, is_socket=transport.is_socket)
        self._conns[conn_id] = conn
        self._masks[conn_id] = 0
        self._apply_limits(conn)
        self.tracer.obj("CREATE", "connection", conn_id)
        self._update_mask(conn)
        return conn

    def _apply_limits(self, conn: Connection) -> None:
        quota = self.store.quota_for_conn
        memory = quota(conn.conn_id, "memory")
        conn.out_limit = memory if memory else self.config.max_output_bytes
        outstanding = quota(conn.conn_id, "outstanding")
        conn.outstanding_limit = outstanding if outstanding else None
        # The watch-event timeout applies to unprivileged receivers only;
        # the store tells us who those are by giving them quota.
        limited = outstanding is not None
        if limited and conn.charge is None and not conn.has_output:
            # Decided once, on an empty queue, so every charge is undone.
            conn.charge = self._charger(conn.conn_id)
        conn.event_timeout = self.config.watch_event_timeout if limited else 0.0
        if conn.event_timeout > 0:
            self._timed.add(conn)
        else:
            self._timed.discard(conn)

    def _charger(self, conn_id: int) -> Charge:
        store_charge = self.store.charge

        def charge(name: str, delta: int, check: bool) -> bool:
            return store_charge(conn_id, name, delta, check=check)

        return charge

    def refresh_limits(self) -> None:
        for conn in list(self._conns.values()):
            self._apply_limits(conn)
            self._update_mask(conn)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the loop, SIGHUP reopens the trace file."""
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        self._signal_socks = (rsock, wsock)
        self._old_wakeup_fd = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        self._sel.register(rsock, EVENT_READ, self._signal_ready)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        self.stop_signal = signum
        self._running = False

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self.tracer.reopen()

    def _signal_ready(self, _mask: int) -> None:
        assert self._signal_socks is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._signal_socks[0].recv(64):
                pass

    # --- main loop -------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until :meth:`stop` or a stop signal."""
        self._running = True
        if on_ready is not None:
            on_ready()
        while self._running:
            timeout = self._select_timeout()
            if self.ticker is not None:
                timeout = self.ticker(timeout)
            if self._woken:
                timeout = 0.0
            self.run_once(timeout)

    def stop(self) -> None:
        self._running = False

    def wake_in(self, seconds: float) -> None:
        """Take a loop turn (and run the ``after_turn`` hooks) within ``seconds`` at the latest."""
        at = time.monotonic() + seconds
        if self._wake_at is None or at < self._wake_at:
            self._wake_at = at

    def _select_timeout(self) -> float | None:
        """Until the earliest event deadline or :meth:`wake_in` time; None: no limit."""
        if not self._timed and self._wake_at is None:
            return None  # the usual case, on every turn
        deadlines = [d for d in (c.next_deadline() for c in self._timed) if d]
        if self._wake_at is not None:
            deadlines.append(self._wake_at)
            self._wake_at = None  # one turn then; whoever still waits asks again
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def run_once(self, timeout: float | None = None) -> None:
        """Wait for readiness once and handle everything that is ready."""
        stalled = self.stalled
        for target, mask in self._sel.poll(timeout):
            if isinstance(target, Connection):
                if (
                    mask == EVENT_READ
                    and target.out_bytes == 0
                    and target.charge is None
                    and target.outstanding_limit is None
                    and not target.reader.buffered()
                    and target not in stalled
                    and not self.tracer.io_on
                ):
                    self._serve_quick(target)
                else:
                    self._connection_ready(target, mask)
            else:
                target(mask)
        if self._woken:
            self._resume_woken()
        if self._timed:
            now = time.monotonic()
            for conn in list(self._timed):
                if conn.expire_events(now):
                    self._update_mask(conn)
        for hook in self.after_turn:
            hook()

    def _accept_ready(self, _mask: int) -> None:
        for sock, _path, _ident in self._listeners:
            while True:
                try:
                    client, _addr = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        raise
                    # Out of descriptors: keep serving the others, and stop
                    # polling the listener (it would stay ready and spin)
                    # until a connection goes away.
                    log.error("cannot accept a connection: %s; pausing accept", exc)
                    self._pause_accept()
                    return
                self.add_connection(SocketTransport(client), self.config.store_domid)

    def _pause_accept(self) -> None:
        if self._accept_paused:
            return
        self._accept_paused = True
        for sock, _path, _ident in self._listeners:
            self._sel.unregister(sock)

    def _resume_accept(self) -> None:
        self._accept_paused = False
        for sock, _path, _ident in self._listeners:
            self._sel.register(sock, EVENT_READ, self._accept_ready)

    def _connection_ready(self, conn: Connection, mask: int) -> None:
        if mask & EVENT_WRITE:
            self._flush(conn)
            if conn.closed:
                return
        if mask & EVENT_READ:
            data = conn.transport.read()
            if data is not None:
                if not data:
                    self.close_connection(conn, "closed by peer")
                    return
                self._take_input(conn, data)
                return
        self._after_io(conn)

    def _take_input(self, conn: Connection, data: bytes) -> None:
        """Buffer ``data``, run the requests it completes, send what is ready."""
        conn.reader.feed(data)
        self._process_input(conn)
        if conn.closed:
            return
        self._flush(conn)
        self._after_io(conn)

    def _after_io(self, conn: Connection) -> None:
        """Send events queued for others meanwhile; watch ``conn`` for what it needs now."""
        if self._dirty:
            self._flush_dirty()
        if not conn.closed:
            self._update_mask(conn)

    def _serve_quick(self, conn: Connection) -> None:
        """The common case in few steps: one whole request read, its reply written at once.

        Only for a connection that is only readable, has nothing queued
        either way, no accounting (privileged clients), is not stalled, and
        while nothing is traced (see :meth:`run_once`).  Anything else --
        several or partial messages, watch events, an intercepted or
        limit-changing type, a reply the socket does not take whole --
        continues on the general path from where this one stopped, so the
        result is the same.
        """
        transport = conn.transport
        # A socket's own methods save a call level on every request.
        sock = transport if isinstance(transport, SocketTransport) else None
        if sock is not None:
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""  # ECONNRESET and friends: the peer is gone
        else:
            got = transport.read()
            if got is None:
                return
            data = got
        if not data:
            self.close_connection(conn, "closed by peer")
            return
        size = len(data)
        if size >= HEADER_SIZE:
            type_, req_id, tx_id, length = _unpack_header(data, 0)
            if (
                size == HEADER_SIZE + length
                and length <= PAYLOAD_MAX
                and type_ not in self._not_quick
            ):
                body = data[HEADER_SIZE:]
                payload = None
                if not tx_id and type_ in _PLAIN_READS:
                    # A plain read needs no Result: the store answers with
                    # the payload alone, under the request's type.
                    try:
                        payload = self.store.quick_read(conn.conn_id, type_, body)
                    except Exception:
                        # A bug there must not stop the daemon: handle() decides.
                        log.exception("connection %d: quick read failed", conn.conn_id)
                if payload is not None and len(payload) <= PAYLOAD_MAX:
                    reply_type = type_
                else:
                    try:
                        result = self.store.handle(conn.conn_id, type_, tx_id, body)
                    except Exception:
                        log.exception("connection %d: request type %d failed", conn.conn_id, type_)
                        result = _INTERNAL_ERROR
                    payload = result.payload
                    if result.events or len(payload) > PAYLOAD_MAX:
                        self._queue_result(conn, req_id, tx_id, result)
                        self._flush(conn)
                        self._after_io(conn)
                        return
                    reply_type = result.reply_type
                out = _pack_header(reply_type, req_id, tx_id, len(payload)) + payload
                try:
                    sent = sock.send(out) if sock is not None else transport.write((out,))
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    self.close_connection(conn, f"write failed: {exc}")
                    return
                if sent == len(out):
                    return  # nothing queued, nothing changed: same interest
                conn.queue_reply(reply_type, req_id, tx_id, payload)
                conn.consume_sent(sent)
                self._after_io(conn)
                return
        self._take_input(conn, data)

    def service(self, conn: Connection, mask: int) -> None:
        """Serve ``conn`` as if its transport were ready for ``mask``.

        For transports without a descriptor (``fileno() < 0``): their owner
        learns readiness elsewhere (a ring's event channel) and calls this.
        """
        if not conn.closed:
            self._connection_ready(conn, mask)

    def deliver_events(self, events: Sequence[EventLike]) -> None:
        """Queue and send watch events raised outside a request (a domain's death)."""
        if events:
            self._deliver(events, None)
            self._flush_dirty()

    def watch_fd(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(mask)`` from the loop whenever ``fd`` is readable."""
        self._sel.register(fd, EVENT_READ, callback)

    def unwatch_fd(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)

    def _resume_woken(self) -> None:
        # Connections unblocked by output progress: run their buffered
        # requests, then let the selector watch them again.
        while self._woken:
            conn = self._woken.pop()
            if conn.closed:
                continue
            if conn.reader.buffered():
                self._process_input(conn)
                if not conn.closed:
                    self._flush(conn)
            if self._dirty:
                self._flush_dirty()
            if not conn.closed:
                self._update_mask(conn)

    def _wake(self, conn: Connection) -> None:
        self._woken.add(conn)

    # --- requests ----------------------------------------------------------------

    def _process_input(self, conn: Connection) -> None:
        """Handle the complete requests buffered for ``conn`` while allowed."""
        if conn in self.stalled:
            return
        reader = conn.reader
        handle = self.store.handle
        conn_id = conn.conn_id
        tracer = self.tracer
        refresh = False
        take = reader.take
        intercepted = self.intercepted
        held = False
        while True:
            allowance = conn.allowance()
            if not allowance:
                break
            try:
                batch = take(allowance)
            except OversizedMessage as exc:
                log.warning("connection %d: %s; closing it", conn_id, exc)
                self.close_connection(conn, "oversized message")
                return
            if not batch:
                break
            for msg in batch:
                type_, req_id, tx_id, payload = msg
                if type_ in intercepted and self._intercept(conn, batch, msg, None):
                    held = True
                    break
                if tracer.io_on:
                    tracer.message("IN", conn_id, conn.domid, type_, payload)
                try:
                    result = handle(conn_id, type_, tx_id, payload)
                except Exception:
                    # A store bug must not take every client down with it.
                    log.exception("connection %d: request type %d failed", conn_id, type_)
                    result = _INTERNAL_ERROR
                if type_ in intercepted and self._intercept(conn, batch, msg, result):
                    held = True
                    break
                self._queue_result(conn, req_id, tx_id, result)
                if type_ in _LIMIT_CHANGERS:
                    refresh = True
            if held or len(batch) < allowance:
                break  # the input holds no further complete message
            # More requests are waiting: send what is ready first, so that a
            # pipelining client gets replies (and sends more) while we work.
            self._flush(conn)
            if conn.closed:
                return
        if refresh:
            self.refresh_limits()

    def _queue_result(self, conn: Connection, req_id: int, tx_id: int, result: ResultLike) -> None:
        """Queue the reply and the watch events of one request.

        Events for the requester itself go before its reply when the store
        says so (C queues them while it works, and the reply when done).
        """
        events = result.events
        if events and result.events_before_reply:
            mine = [ev for ev in events if ev.conn_id == conn.conn_id]
            if mine:
                token = conn.open_request()
                self._deliver(mine, token)
                conn.queue_reply(
                    result.reply_type, req_id, tx_id, result.payload, token, opened=True
                )
                self._deliver([ev for ev in events if ev.conn_id != conn.conn_id], token)
                self._trace_reply(conn, result)
                return
        token = conn.queue_reply(result.reply_type, req_id, tx_id, result.payload)
        self._trace_reply(conn, result)
        if events:
            self._deliver(events, token)

    def _trace_reply(self, conn: Connection, result: ResultLike) -> None:
        if self.tracer.io_on:
            self.tracer.message("OUT", conn.conn_id, conn.domid, result.reply_type, result.payload)

    def _intercept(
        self, conn: Connection, batch: list[Message], msg: Message, result: ResultLike | None
    ) -> bool:
        """Ask the interceptor about ``msg`` (before the store, or after with its result).

        True when the connection is now stalled: ``msg`` (before) or the
        messages after it (after) are put back in front of its input.
        """
        interceptor = self.interceptor
        if interceptor is None:
            return False
        type_, req_id, tx_id, payload = msg
        if result is None:
            if not interceptor.before(conn, type_, req_id, tx_id, payload):
                return False
            first = 0
        else:
            if not interceptor.after(conn, type_, req_id, tx_id, result):
                return False
            first = 1
        index = next(i for i, m in enumerate(batch) if m is msg)
        self.stall(conn, batch[index + first :])
        return True

    def stall(self, conn: Connection, unprocessed: Sequence[Message] = ()) -> None:
        """Take no more requests from ``conn``; ``unprocessed`` go back before its input."""
        if unprocessed:
            data = b"".join(_pack_header(t, r, x, len(p)) + p for t, r, x, p in unprocessed)
            reader = MessageReader()
            reader.feed(data + conn.reader.pending())
            conn.reader = reader
        self.stalled.add(conn)

    def release(self, conn: Connection) -> None:
        """Let a stalled connection go on with its buffered requests."""
        self.stalled.discard(conn)
        if not conn.closed:
            self._wake(conn)

    def flush_soon(self, conn: Connection) -> None:
        """Write ``conn``'s queued output on this loop turn (it was queued from outside a request)."""
        self._dirty.add(conn)

    def _deliver(self, events: Sequence[EventLike], token: PendingRequest | None) -> None:
        conns = self._conns
        dirty = self._dirty
        now = time.monotonic() if self._timed else 0.0
        tracer = self.tracer
        for ev in events:
            target = conns.get(ev.conn_id)
            if target is not None and target.queue_event(ev.payload, token, now):
                dirty.add(target)
                if tracer.io_on:
                    tracer.message("OUT", target.conn_id, target.domid, _WATCH_EVENT, ev.payload)

    # --- output ------------------------------------------------------------------

    def _flush(self, conn: Connection) -> None:
        try:
            conn.flush()
        except OSError as exc:
            self.close_connection(conn, f"write failed: {exc}")

    def _flush_dirty(self) -> None:
        dirty = self._dirty
        while dirty:
            conn = dirty.pop()
            if conn.closed:
                continue
            self._flush(conn)
            if not conn.closed:
                self._update_mask(conn)

    def _update_mask(self, conn: Connection) -> None:
        want = (EVENT_READ if conn.can_process() else 0) | (EVENT_WRITE if conn.has_output else 0)
        conn_id = conn.conn_id
        if conn.transport.fileno() < 0:
            # No descriptor (shared rings): the transport's owner drives it
            # through service(); tell it what the connection waits for.
            self._masks[conn_id] = want
            interest = getattr(conn.transport, "interest", None)
            if interest is not None:
                interest(want)
            return
        have = self._masks[conn_id]
        if want == have:
            return
        if have == 0:
            self._sel.register(conn.transport.fileno(), want, conn)
        elif want == 0:
            self._sel.unregister(conn.transport.fileno())
        else:
            self._sel.modify(conn.transport.fileno(), want, conn)
        self._masks[conn_id] = want

    # --- teardown ----------------------------------------------------------------

    def close_connection(self, conn: Connection, reason: str) -> None:
        """Drop a client: its watches and transactions go with it."""
        if conn.closed:
            return
        log.debug("connection %d: %s", conn.conn_id, reason)
        # Flush what can go without blocking, as C does on destruction.
        with contextlib.suppress(OSError):
            conn.flush()
        conn.closed = True
        conn.close_accounting()
        conn_id = conn.conn_id
        if self._masks.pop(conn_id, 0):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.transport.fileno())
        conn.transport.close()
        del self._conns[conn_id]
        self.stalled.discard(conn)
        self._dirty.discard(conn)
        self._woken.discard(conn)
        self._timed.discard(conn)
        conn.discard_output()
        self.store.disconnect(conn_id)
        self.tracer.obj("DESTROY", "connection", conn_id)
        if self._accept_paused and self._listeners:
            self._resume_accept()

    def close(self) -> None:
        """Close every connection and listening socket; remove our socket files."""
        for conn in list(self._conns.values()):
            self.close_connection(conn, "daemon stopping")
        self._accept_paused = True  # nothing may re-register the listeners now
        for sock, path, ident in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            sock.close()
            # Only remove the file if it is still ours (not a successor's).
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == ident:
                    os.unlink(path)
        self._listeners.clear()
        if self._signal_socks is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            for s in self._signal_socks:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(s)
                s.close()
            self._signal_socks = None
        self._sel.close()
