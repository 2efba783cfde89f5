"""Live update's session: CONTROL ``live-update``, the switch, the restore.

This module is the session state machine and the server's side of the
state (its connections, sockets and the exec).  What the state becomes as
records, and back, is :mod:`pyxenstored.migrate.lu_records`; the check the
successor runs before the exec is :mod:`.successor`.

The session's states and the requests that move it (C's texts for every
refusal, ``lu.c`` / 4.17 ``xenstored_control.c:do_control_lu``):

==============  =====================  =========================================
state           request / event        next state, answer
==============  =====================  =========================================
none            ``-f <file>``          open (bound to the requesting
                                       connection), ``OK``; refused when
                                       ``<file>`` is not there or not
                                       executable; pyxenstored's check run
                                       starts (:mod:`.successor`)
open            ``-c <cmdline>``       open, ``OK`` (the new arguments)
open            ``-s [-F] [-t] [-v]``  starting, no answer yet
open, starting  ``-a``                 none, ``OK`` (a pending ``-s`` gets
                                       "Cancellation was requested")
starting        every loop turn        switching when no transaction is open,
                                       or with ``-F`` every open one is older
                                       than ``-t``; after ``-t`` without that:
                                       open, ``-s`` answered with C's reason
switching       dump, check, exec      the exec: the new daemon answers ``-s``
                                       ``OK``; any failure: open, ``-s``
                                       answered with the reason
any             owner closes           none
none            ``-c``/``-s``/``-a``   none, C's "not in session" texts
==============  =====================  =========================================

Other connections, while a session exists: a TRANSACTION_START from a
connection with no open transaction is held back (the connection stalls,
the request stays in its pending input; the new daemon runs it); they go
on when the session ends.  A second ``-f`` is refused while one is open.

The switch: the state goes to ``<rundir>/state_dump`` (0600) with the ``OK``
for ``-s`` queued last on its connection; sockets become inheritable (and
blocking, as C creates them); the new program is exec'd with the original
arguments (or the ``-c`` line) plus ``-U``.  Towards pyxenstored the dump is
checked by the successor first; towards another program (the C daemon) the
stream is written as that reader needs it and anything it cannot carry is
refused unless ``-F`` (then logged) -- see :mod:`~pyxenstored.migrate.lu_records`.

The new daemon's side: :meth:`LiveUpdate.restore` reads the dump, recreates
every connection on its inherited socket (ring connections through
:attr:`LiveUpdate.ring_restorer`, or kept dormant when there is none),
restores the store, deletes the file and runs requests that were pending.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pyxenstored.migrate import (
    DumpError,
    Preserved,
    RestoreError,
    restore_stream,
)
from pyxenstored.migrate.lu_records import (
    C_DOM0_PORT,
    Records,
    c_target_losses,
    connection_record,
    live_update_records,
    renumber_connections,
    split_messages,
    split_output,
    write_state,
)
from pyxenstored.server.connection import Connection
from pyxenstored.server.control_hooks import ServerControlHooks
from pyxenstored.server.loop import Server
from pyxenstored.server.socket_transport import SocketTransport
from pyxenstored.server.storeapi import ResultLike
from pyxenstored.server.successor import (
    CHECK_PIPE_SIZE,
    CHECK_TIMEOUT,
    SuccessorCheck,
    is_pyxenstored,
    run_check,
)
from pyxenstored.server.transport import Transport
from pyxenstored.store import Store
from pyxenstored.stream import (
    ConnectionData,
    GlobalData,
    RingSpec,
    SocketSpec,
    StreamWriteError,
)
from pyxenstored.wire import DOMID_INVALID, HEADER, MsgType, XsError

# Importable from here as before the split (users outside this module).
__all__ = [
    "CHECK_PIPE_SIZE",
    "CHECK_TIMEOUT",
    "C_DOM0_PORT",
    "DOMID_INVALID",
    "STATE_FILE",
    "LiveUpdate",
    "RingRestorer",
    "Session",
    "SuccessorCheck",
    "Switch",
    "c_target_losses",
    "is_pyxenstored",
    "renumber_connections",
    "run_check",
    "split_messages",
    "write_state",
]

log = logging.getLogger("pyxenstored.liveupdate")

STATE_FILE = "state_dump"

_CONTROL = int(MsgType.CONTROL)
_TX_START = int(MsgType.TRANSACTION_START)
# Request types the interceptor sees: CONTROL always, TRANSACTION_START
# only while a session is open (it may be held back then).
_QUIET = frozenset({_CONTROL})
_IN_SESSION = frozenset({_CONTROL, _TX_START})
_OK = b"OK\0"

# C's texts (lu.c / 4.17 xenstored_control.c).
TXT_ACTIVE = b"live-update session already active.\0"
TXT_NOT_ACCESSIBLE = b"File not accessible.\0"
TXT_NOT_EXECUTABLE = b"File not executable.\0"
TXT_NOT_IN_SESSION = b"Not in live-update session.\0"
TXT_NO_SESSION = b"No live-update session active.\0"
TXT_BAD_VERSION = b"Migration stream version not supported.\0"
TXT_CANCELLED = "Cancellation was requested"
TXT_OVERLAPPING = "Overlapping transactions"
TXT_LONG_RUNNING = "Domains with long running transactions:"
TXT_EXEC_FAILED = "Error activating new binary."
TXT_DUMP_OPEN = "Dump state open error"
TXT_DUMP_WRITE = "Dump write error"

RingRestorer = Callable[[ConnectionData], Transport | None]
"""Recreates a ring connection's transport from its record (None: cannot, keep it dormant)."""


@dataclass(slots=True)
class Session:
    """One live-update session, owned by the connection that opened it."""

    conn: Connection
    file: str
    cmdline: list[str] | None = None
    # Set by ``-s``: the request to answer, and its options.
    start: tuple[int, int] | None = None  # (req_id, tx_id)
    force: bool = False
    timeout: int = 0
    version: int | None = None
    started_at: float = 0.0
    # The successor's check run, started with the session (pyxenstored only).
    checker: SuccessorCheck | None = None


@dataclass(slots=True)
class Switch:
    """Figures of the last switch attempt (for benchmarks and logs)."""

    dump_seconds: float = 0.0
    check_seconds: float = 0.0
    bytes: int = 0
    target: str = ""
    lost: list[str] = field(default_factory=list)
    version: int = 0


class LiveUpdate:
    """Live update for one running :class:`Server` and its store."""

    def __init__(
        self,
        server: Server,
        store: Store,
        *,
        rundir: str,
        sock_path: str,
        argv: Sequence[str],
        program: str | None = None,
    ) -> None:
        self.server = server
        self.store = store
        self.rundir = rundir
        self.sock_path = sock_path
        # Arguments after the program name, as this daemon was started.
        self.argv = list(argv)
        self.program = program or sys.argv[0]
        self.session: Session | None = None
        self.preserved = Preserved()
        # Connections restored from a stream whose transport cannot be
        # recreated here (rings without a ring restorer): kept as records.
        self.dormant: dict[int, ConnectionData] = {}
        # The partial first output message of a restored connection.
        self._fragments: dict[int, bytes] = {}
        # Start of the oldest open transaction, per connection (C's ta_start_time).
        self._current: tuple[Connection, int, int] | None = None
        self._deferred = False
        self.ring_restorer: RingRestorer | None = None
        # Quota as given on the command line: the baseline a C target gets.
        self.startup_quota = store.config.quota.copy()
        self.evtchn_fd = -1
        self.last_switch = Switch()
        # Loop turns to wait, after a restore, before the cyclic collector
        # runs again (see restore()); 0: nothing deferred.
        self._gc_turns = 0

    def install(self, hooks: ServerControlHooks) -> None:
        """Hook into the server (interceptor, ticker) and the CONTROL hooks."""
        self.server.interceptor = self
        # TRANSACTION_START only while a session holds new transactions back.
        self.server.intercepted = _QUIET
        self.server.ticker = self.tick
        hooks.live_updater = self.control

    # --- interceptor ---------------------------------------------------------------

    def before(self, conn: Connection, type_: int, req_id: int, tx_id: int, payload: bytes) -> bool:
        if type_ == _CONTROL:
            self._current = (conn, req_id, tx_id)
            return False
        session = self.session
        if session is None or tx_id:
            return False
        if session.conn.closed:
            self._end_session()
            return False
        store_conn = self.store.conns.get(conn.conn_id)
        # C delays TRANSACTION_START only for connections without a transaction.
        return store_conn is not None and not store_conn.transactions

    def after(
        self, conn: Connection, type_: int, req_id: int, tx_id: int, result: ResultLike
    ) -> bool:
        if type_ == _TX_START:
            return False
        self._current = None
        deferred, self._deferred = self._deferred, False
        return deferred

    # --- CONTROL live-update ---------------------------------------------------------

    def control(self, args: list[bytes]) -> bytes:
        """CONTROL ``live-update <args>`` (digest 11.1)."""
        if self._current is None:
            raise XsError("EINVAL", "live-update needs a connection")
        conn, req_id, tx_id = self._current
        if self.session is not None and self.session.conn.closed:
            self._end_session()
        if not args:
            raise XsError("EINVAL", "live-update needs a sub-command")
        cmd, rest = args[0], args[1:]
        if cmd == b"-f":
            if len(rest) != 1:
                raise XsError("EINVAL", "-f takes a file")
            return self._open(conn, os.fsdecode(rest[0]))
        if cmd == b"-c":
            if len(rest) != 1:
                raise XsError("EINVAL", "-c takes a command line")
            session = self._own_session(conn)
            if session is None:
                return TXT_NOT_IN_SESSION
            session.cmdline = os.fsdecode(rest[0]).split()
            return _OK
        if cmd == b"-a":
            if rest:
                raise XsError("EINVAL", "-a takes no argument")
            if self.session is None:
                return TXT_NO_SESSION
            self._cancel()
            return _OK
        if cmd == b"-s":
            return self._start(conn, req_id, tx_id, rest)
        raise XsError("EINVAL", "unknown live-update sub-command")

    def _open(self, conn: Connection, file: str) -> bytes:
        if self.session is not None:
            return TXT_ACTIVE
        path = os.path.abspath(file)
        try:
            st = os.stat(path)
        except OSError:
            return TXT_NOT_ACCESSIBLE
        if not st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
            return TXT_NOT_EXECUTABLE
        self.session = Session(conn, path)
        self.server.intercepted = _IN_SESSION
        if is_pyxenstored(path):
            # Started now, so that its start-up is not part of the blackout;
            # it reads the dump from a pipe while it is being written.
            try:
                self.session.checker = SuccessorCheck(path)
            except OSError as exc:
                log.warning("live update: cannot start %s --check-state: %s", path, exc)
        log.info("live update: session opened by connection %d for %s", conn.conn_id, path)
        return _OK

    def _own_session(self, conn: Connection) -> Session | None:
        session = self.session
        return session if session is not None and session.conn is conn else None

    def _start(self, conn: Connection, req_id: int, tx_id: int, rest: list[bytes]) -> bytes:
        force = False
        timeout = 0
        version: int | None = None
        i = 0
        while i < len(rest):
            opt = rest[i]
            if opt == b"-F":
                force = True
            elif opt in (b"-t", b"-v") and i + 1 < len(rest):
                i += 1
                value = _atoi(rest[i])
                if opt == b"-t":
                    timeout = value
                else:
                    version = value
            else:
                raise XsError("EINVAL", f"bad -s option {opt!r}")
            i += 1
        session = self._own_session(conn)
        if session is None or session.start is not None:
            return TXT_NOT_IN_SESSION
        if version is not None and not 1 <= version <= 2:
            return TXT_BAD_VERSION
        session.start = (req_id, tx_id)
        session.force = force
        session.timeout = max(timeout, 0)
        session.version = version
        session.started_at = time.monotonic()
        self._deferred = True  # the reply comes later (or from the new daemon)
        return _OK

    def _cancel(self) -> None:
        session = self.session
        if session is not None and session.start is not None:
            self._answer(session, TXT_CANCELLED)
        self._end_session()

    def _end_session(self) -> None:
        """Forget the session; connections held back for it go on."""
        if self.session is not None and self.session.checker is not None:
            self.session.checker.cancel()
        self.session = None
        self.server.intercepted = _QUIET
        for conn in list(self.server.stalled):
            self.server.release(conn)

    def _answer(self, session: Session, text: str) -> None:
        """Answer the pending ``-s`` with ``text`` and let its connection go on."""
        assert session.start is not None
        req_id, tx_id = session.start
        session.start = None
        conn = session.conn
        if not conn.closed:
            conn.queue_reply(_CONTROL, req_id, tx_id, text.encode("utf-8", "replace") + b"\0")
            self.server.release(conn)

    # --- the ticker: evaluate a pending -s ---------------------------------------------

    def tick(self, timeout: float | None) -> float | None:
        if self._gc_turns:
            self._gc_turns -= 1
            if not self._gc_turns:
                gc.enable()
        session = self.session
        if session is None:
            return timeout
        if session.conn.closed:
            log.info("live update: the session's connection closed; session ended")
            self._end_session()
            return timeout
        if session.start is None:
            return timeout if timeout is not None and timeout < 1.0 else 1.0
        now = time.monotonic()
        verdict = self._transactions_verdict(session)
        if verdict is None:
            self._switch(session)
            return 0.0
        if now - session.started_at < session.timeout:
            wait = 1.0
            return wait if timeout is None else min(timeout, wait)
        self._answer(session, verdict)
        return 0.0

    def _transactions_verdict(self, session: Session) -> str | None:
        """None when the update may go on; else C's reason for refusing it."""
        total = 0
        long_running = 0
        lines = []
        now = self.store.config.clock()  # the clock of the connections' busy_since
        for conn in self.store.conns.values():
            if not conn.transactions:
                continue
            total += 1
            if not conn.busy_since:
                conn.busy_since = now  # restored transactions: from now on
            age = now - conn.busy_since
            if age >= session.timeout:
                long_running += 1
                lines.append(f"Domain {conn.domid}: {int(age)} s")
        if not total or (session.force and long_running == total):
            return None
        if lines:
            return "\n".join([TXT_LONG_RUNNING, *lines])
        return TXT_OVERLAPPING

    # --- the switch -----------------------------------------------------------------

    def state_path(self) -> str:
        return os.path.join(self.rundir, STATE_FILE)

    def _switch(self, session: Session) -> None:
        """Dump, check, exec; on any failure answer ``-s`` with the reason and serve on."""
        path = self.state_path()
        if not self._dump_and_check(session, path):
            return
        argv = self.new_argv(session)
        log.info(
            "live update: %d bytes of state (%s, v%d) dumped in %.3f s, checked in %.3f s;"
            " exec at monotonic %.6f: %s",
            self.last_switch.bytes,
            self.last_switch.target,
            self.last_switch.version,
            self.last_switch.dump_seconds,
            self.last_switch.check_seconds,
            time.monotonic(),
            _shlex_join(argv),
        )
        self._exec(session, path, argv)

    def _dump_and_check(self, session: Session, path: str) -> bool:
        """Write the state to ``path`` and have the successor check it; False: ``-s`` answered."""
        started = time.monotonic()
        is_py = is_pyxenstored(session.file)
        try:
            records, target, version, lost = self.build_records(session, pyxenstored=is_py)
        except (DumpError, StreamWriteError) as exc:
            self._answer(session, f"Dump state error: {exc}")
            return False
        if lost:
            if not session.force:
                shown = "; ".join(lost[:5]) + (
                    f" (and {len(lost) - 5} more)" if len(lost) > 5 else ""
                )
                self._answer(
                    session,
                    f"Live update to {os.path.basename(session.file)} (stream version {version},"
                    f" {target}) would lose: {shown}. Use -F to go on anyway.",
                )
                return False
            for item in lost:
                log.warning("live update (forced): %s is lost", item)
        checker = session.checker if is_py else None
        session.checker = None
        try:
            size = write_state(path, records, version, target, checker)
        except (StreamWriteError, DumpError) as exc:
            _remove(path)
            if checker is not None:
                checker.cancel()
            self._answer(session, f"{TXT_DUMP_WRITE}: {exc}")
            return False
        except OSError as exc:
            _remove(path)
            if checker is not None:
                checker.cancel()
            self._answer(session, f"{TXT_DUMP_OPEN}: {exc.strerror}")
            return False
        dumped = time.monotonic()
        self.last_switch = Switch(dumped - started, 0.0, size, target, lost, version)
        if is_py:
            problem = checker.result() if checker is not None else run_check(session.file, path)
            self.last_switch.check_seconds = time.monotonic() - dumped
            if problem is not None:
                _remove(path)
                log.error("live update refused by the new program: %s", problem)
                self._answer(session, f"New program refused the state: {problem}")
                return False
        return True

    def _exec(self, session: Session, path: str, argv: list[str]) -> None:
        """Hand the sockets over and exec ``argv``; if the exec fails, serve on."""
        self.server.inherit_fds()
        # Hand the sockets over in blocking mode, as the C daemon creates them:
        # O_NONBLOCK belongs to the open file and survives exec, and C 4.17
        # takes a read that would block for the peer having closed.
        sockets = _server_sockets(self.server)
        for sock in sockets:
            sock.setblocking(True)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        for hook in self.server.before_exec:
            hook()
        try:
            os.execv(session.file, argv)
        except OSError as exc:
            for hook in self.server.exec_failed:
                hook()
            for sock in sockets:
                sock.setblocking(False)
            log.error("live update: exec of %s failed: %s", session.file, exc)
            _remove(path)
            self._answer(session, f"{TXT_EXEC_FAILED} ({exc.strerror})")

    def new_argv(self, session: Session) -> list[str]:
        """C's rule: the ``-c`` line or the original arguments, ``-U`` appended, argv[0] the file."""
        args = list(session.cmdline) if session.cmdline is not None else list(self.argv)
        if "-U" not in args and "--live-update" not in args:
            args.append("-U")
        return [session.file, *args]

    def connection_records(self, session: Session | None) -> list[ConnectionData]:
        """One CONNECTION_DATA per connection in creation order (dormant ones included)."""
        out = []
        server_conns = {c.conn_id: c for c in self.server.connections}
        for conn_id in self.store.conns:
            conn = server_conns.get(conn_id)
            if conn is None:
                dormant = self.dormant.get(conn_id)
                if dormant is not None:
                    out.append(dormant)
                continue
            out.append(self._connection_record(conn, session))
        return out

    def _connection_record(self, conn: Connection, session: Session | None) -> ConnectionData:
        """One live connection as CONNECTION_DATA (the pending ``-s`` OK queued last)."""
        in_data = conn.pending_input()
        out_data = conn.pending_output()
        resp_len = 0
        queue = conn._out  # the queue's head decides out-resp-len
        if queue:
            head = queue[0][0]
            if conn._out_offset or head is self._fragments.get(conn.conn_id):
                resp_len = len(head) - conn._out_offset
        if session is not None and session.conn is conn and session.start is not None:
            req_id, tx_id = session.start
            out_data += HEADER.pack(_CONTROL, req_id, tx_id, len(_OK)) + _OK
        transport = conn.transport
        if isinstance(transport, SocketTransport):
            spec: SocketSpec | RingSpec = SocketSpec(transport.fileno())
            unique_id = None
        else:
            describe = getattr(transport, "migration_spec", None)
            if describe is None:
                raise DumpError(f"connection {conn.conn_id}: its transport cannot be migrated")
            described, unique_id = describe()
            if not isinstance(described, RingSpec):
                raise DumpError(f"connection {conn.conn_id}: unknown transport spec {described!r}")
            spec = described
        return connection_record(conn.conn_id, spec, in_data, out_data, resp_len, unique_id)

    def build_records(
        self, session: Session | None, *, pyxenstored: bool = True
    ) -> tuple[Records, str, int, list[str]]:
        """The records to write, their target and version, and what the target loses.

        See :func:`~pyxenstored.migrate.lu_records.live_update_records`.
        """
        return live_update_records(
            self.store,
            self.connection_records(session),
            global_data=GlobalData(_listener_fd(self.server), self.evtchn_fd),
            preserved=self.preserved,
            version=session.version if session is not None and session.version else None,
            pyxenstored=pyxenstored,
            startup_quota=self.startup_quota,
        )

    # --- the new daemon: restore ----------------------------------------------------------

    def restore(self, path: str | None = None) -> None:
        """Restore from the state file (``-U``), delete it and run pending requests.

        Raises :class:`RestoreError`; the caller exits non-zero with its text.
        """
        started = time.monotonic()
        path = path or self.state_path()
        if not os.path.exists(path):
            raise RestoreError(f"no state file {path}")
        # The cyclic collector stays paused until the loop has turned once
        # (replies restored as pending, the -s OK among them, are sent):
        # its first pass after a restore walks every new object (~10 ms for
        # 100 000 nodes) and would come first.  The ticker resumes it.
        if gc.isenabled() and self.server.ticker == self.tick:
            gc.disable()
            self._gc_turns = 2  # ticks: before the first turn, after it
        try:
            restored = restore_stream(path, self.store, self, verify=False)
        except BaseException:
            if self._gc_turns:
                self._gc_turns = 0
                gc.enable()
            raise
        self.preserved = restored.preserved
        gd = restored.global_data
        if gd is not None and gd.socket_fd >= 0:
            try:
                sock = socket.socket(fileno=gd.socket_fd)
                self.server.adopt_listener(sock, self.sock_path)
            except OSError as exc:
                raise RestoreError(f"inherited listening socket {gd.socket_fd}: {exc}") from None
        else:
            self.server.listen(self.sock_path)
        if gd is not None:
            self.evtchn_fd = gd.evtchn_fd
        _remove(path)
        log.info(
            "live update: restored %d records (%d connections, %d nodes, %d transactions)"
            " in %.3f s, from monotonic %.6f",
            restored.records,
            restored.connections,
            restored.nodes,
            restored.transactions,
            time.monotonic() - started,
            started,
        )
        self.server.refresh_limits()
        for conn in list(self.server.connections):
            self.server.release(conn)

    def restore_connection(self, record: ConnectionData) -> None:
        """ConnectionSink: recreate one connection on its inherited descriptor."""
        spec = record.spec
        transport: Transport | None = None
        domid = self.store.config.store_domid
        if isinstance(spec, SocketSpec):
            fd = spec.socket_fd
            try:
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    raise RestoreError(f"connection {record.conn_id}: fd {fd} is not a socket")
                sock = socket.socket(fileno=fd)
            except OSError as exc:
                raise RestoreError(
                    f"connection {record.conn_id}: fd {fd}: {exc.strerror}"
                ) from None
            transport = SocketTransport(sock)
        elif isinstance(spec, RingSpec):
            domid = spec.domid
            if self.ring_restorer is not None:
                transport = self.ring_restorer(record)
            if transport is None:
                # No ring here: keep the record so the next dump carries it on.
                self.store.connect(record.conn_id, domid, is_socket=False)
                self.dormant[record.conn_id] = record
                return
        else:
            raise RestoreError(f"connection {record.conn_id}: conn-type {record.conn_type} unknown")
        conn = self.server.add_connection(transport, domid, conn_id=record.conn_id)
        if record.in_data:
            conn.reader.feed(record.in_data)
        fragment, messages = split_output(record)
        if record.out_resp_len:
            conn.restore_output(fragment)
            self._fragments[conn.conn_id] = fragment
        for message in messages:
            conn.restore_output(message)


# --- helpers ---------------------------------------------------------------------------


def _server_sockets(server: Server) -> list[socket.socket]:
    """The listening sockets and every socket connection of ``server``."""
    out = [entry[0] for entry in server._listeners]
    for conn in server.connections:
        if isinstance(conn.transport, SocketTransport):
            out.append(conn.transport.socket)
    return out


def _listener_fd(server: Server) -> int:
    listeners = server._listeners  # GLOBAL_DATA carries the first one
    return listeners[0][0].fileno() if listeners else -1


def _atoi(raw: bytes) -> int:
    digits = raw.strip()
    sign = 1
    if digits[:1] in (b"-", b"+"):
        sign = -1 if digits[:1] == b"-" else 1
        digits = digits[1:]
    n = 0
    for ch in digits:
        if not 48 <= ch <= 57:
            break
        n = n * 10 + ch - 48
    return sign * n


def _shlex_join(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
