"""Live update: CONTROL ``live-update``, the state dump, the exec, the restore.

The old daemon's side (C's ``lu.c:do_control_lu`` and ``lu.c:do_lu_start``):

* ``-f <file>`` opens a session bound to the requesting connection (one at a
  time); ``-c <cmdline>`` replaces the new program's arguments; ``-a`` ends
  the session; ``-s [-F] [-t <sec>] [-v <version>]`` starts the update.  The
  C texts are kept for every refusal.
* While a session is open, a TRANSACTION_START from a connection without an
  open transaction is held back: the connection stalls and the request stays
  in its pending input (the new daemon runs it).
* ``-s`` is not answered at once: the loop's ticker evaluates it on every
  iteration (never blocking) until no transaction is open, or, with ``-F``,
  every open transaction is older than the timeout; after the timeout
  without ``-F`` it answers C's reason.
* Then the switch: the state goes to ``<rundir>/state_dump`` (0600) with the
  ``OK`` for ``-s`` queued last on its connection; sockets become
  inheritable (and blocking, as C creates them); the new program is exec'd
  with the original arguments (or the ``-c`` line) plus ``-U``.

Safer than C: when the new program is pyxenstored (a script that names it,
see :func:`is_pyxenstored`) it is started as ``<file> --check-state -`` when
the session opens, reads the dump through a pipe while it is written, and
only its clean restore leads to the exec; otherwise ``-s`` answers why and
this daemon serves on (an exec that fails leaves it serving too).  Towards
another program (the C daemon) the stream is written as that reader needs
it (version 1 for 4.17 unless ``-v 2``, with a placeholder ring connection
for the privileged domain), and anything it cannot carry is refused unless
``-F`` (then logged).

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    # Only the old daemon's side of a switch uses these (imported there): a
    # new daemon's start-up, part of the blackout, does without them.
    import queue


from pyxenstored.migrate import (
    DumpError,
    Preserved,
    RestoreError,
    dump_state,
    quota_values,
    restore_stream,
)
from pyxenstored.migrate.check import CHECK_FAILED, CHECK_OK
from pyxenstored.server.connection import Connection
from pyxenstored.server.control_hooks import ServerControlHooks
from pyxenstored.server.loop import Server
from pyxenstored.server.socket_transport import SocketTransport
from pyxenstored.server.storeapi import ResultLike
from pyxenstored.server.transport import Transport
from pyxenstored.store import Store
from pyxenstored.store import quota as q
from pyxenstored.store.features import SUPPORTED_FEATURES
from pyxenstored.stream import (
    CommittedNode,
    ConnectionData,
    DomainData,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    Record,
    RingSpec,
    SocketSpec,
    StreamWriteError,
    StreamWriter,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    adapt_for_target,
)
from pyxenstored.stream.records import CONN_FIELD_UNIQUE_ID, CONN_TYPE_RING, CONN_TYPE_SOCKET
from pyxenstored.stream.txmarks import is_marks_name
from pyxenstored.wire import HEADER, HEADER_SIZE, MsgType, XsError, iter_frames

log = logging.getLogger("pyxenstored.liveupdate")

STATE_FILE = "state_dump"
#: Seconds the check run of the new program may take.
CHECK_TIMEOUT = 120.0
#: Pipe size asked for the check run's standard input (Linux allows 1 MiB unprivileged).
CHECK_PIPE_SIZE = 1 << 20

#: Local event-channel port named in the placeholder ring connection of the
#: privileged domain that a C successor needs (the shim's first bound port).
C_DOM0_PORT = 2
DOMID_INVALID = 0x7FF4

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
        """CONTROL ``live-update <args>`` (C's ``lu.c:do_control_lu``)."""
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
        started = time.monotonic()
        path = self.state_path()
        is_py = is_pyxenstored(session.file)
        try:
            records, target, version, lost = self.build_records(session, pyxenstored=is_py)
        except (DumpError, StreamWriteError) as exc:
            self._answer(session, f"Dump state error: {exc}")
            return
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
                return
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
            return
        except OSError as exc:
            _remove(path)
            if checker is not None:
                checker.cancel()
            self._answer(session, f"{TXT_DUMP_OPEN}: {exc.strerror}")
            return
        dumped = time.monotonic()
        self.last_switch = Switch(dumped - started, 0.0, size, target, lost)
        if is_py:
            problem = checker.result() if checker is not None else run_check(session.file, path)
            self.last_switch.check_seconds = time.monotonic() - dumped
            if problem is not None:
                _remove(path)
                log.error("live update refused by the new program: %s", problem)
                self._answer(session, f"New program refused the state: {problem}")
                return
        argv = self.new_argv(session)
        log.info(
            "live update: %d bytes of state (%s, v%d) dumped in %.3f s, checked in %.3f s;"
            " exec at monotonic %.6f: %s",
            size,
            target,
            version,
            self.last_switch.dump_seconds,
            self.last_switch.check_seconds,
            time.monotonic(),
            _shlex_join(argv),
        )
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
        if len(in_data) > 0xFFFF:
            raise DumpError(
                f"connection {conn.conn_id} has {len(in_data)} bytes of pending input (max 65535)"
            )
        transport = conn.transport
        if isinstance(transport, SocketTransport):
            return ConnectionData(
                conn.conn_id,
                CONN_TYPE_SOCKET,
                0,
                SocketSpec(transport.fileno()),
                in_data,
                out_data,
                resp_len,
            )
        describe = getattr(transport, "migration_spec", None)
        if describe is None:
            raise DumpError(f"connection {conn.conn_id}: its transport cannot be migrated")
        spec, unique_id = describe()
        if not isinstance(spec, RingSpec):
            raise DumpError(f"connection {conn.conn_id}: unknown transport spec {spec!r}")
        return ConnectionData(
            conn.conn_id,
            CONN_TYPE_RING,
            CONN_FIELD_UNIQUE_ID if unique_id is not None else 0,
            spec,
            in_data,
            out_data,
            resp_len,
            unique_id,
        )

    def build_records(
        self, session: Session | None, *, pyxenstored: bool = True
    ) -> tuple[Iterable[Record | list[CommittedNode]], str, int, list[str]]:
        """The records to write, their target and version, and what the target loses.

        Towards pyxenstored (version 2) the records are produced while they
        are written (the successor's check reads them meanwhile); a
        :class:`DumpError` may then come from the writing.
        """
        listener = _listener_fd(self.server)
        global_data = GlobalData(listener, self.evtchn_fd)
        conns = self.connection_records(session)
        version = session.version if session is not None and session.version else None
        if pyxenstored:
            if version != 1:
                # Committed nodes in runs: no record object per node.
                runs = dump_state(
                    self.store,
                    conns,
                    global_data=global_data,
                    preserved=self.preserved,
                    node_runs=True,
                )
                return runs, "spec", version or 2, []
            lazy = dump_state(self.store, conns, global_data=global_data, preserved=self.preserved)
            # Asked for explicitly: what version 1 cannot carry is a loss.
            adapted, lost = adapt_for_target(lazy, 1, "spec", lossy=True)
            return adapted, "spec", 1, lost
        version = version or 1
        target = "c-4.17" if version == 1 else "c-head"
        priv = self.store.config.priv_domid
        if not any(isinstance(c.spec, RingSpec) and c.spec.domid == priv for c in conns):
            # The C daemon builds its database when it restores the privileged
            # domain's ring connection, and 4.17 crashes without one: give it a
            # placeholder (no hypervisor here: the port is a stand-in).
            spare = max((c.conn_id for c in conns), default=0) + 1
            placeholder = ConnectionData(
                spare, CONN_TYPE_RING, 0, RingSpec(priv, DOMID_INVALID, C_DOM0_PORT)
            )
            conns = [placeholder, *conns]
        records = list(
            dump_state(self.store, conns, global_data=global_data, preserved=self.preserved)
        )
        lost = c_target_losses(records, target, self.startup_quota)
        out, _dropped = adapt_for_target(records, version, target, lossy=True)
        return renumber_connections(out), target, version, lost

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
        out = record.out_data
        if record.out_resp_len:
            fragment = out[: record.out_resp_len]
            conn.restore_output(fragment)
            self._fragments[conn.conn_id] = fragment
            out = out[record.out_resp_len :]
        for message in split_messages(out):
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


def split_messages(data: bytes) -> list[bytes]:
    """Complete messages (header + payload) of ``data``; a torn tail stays one piece."""
    out = []
    pos = 0
    end = len(data)
    for start, _type, _req, _tx, length in iter_frames(data):
        pos = min(start + HEADER_SIZE + length, end)
        out.append(data[start:pos])
    if pos < end:
        out.append(data[pos:])
    return out


def is_pyxenstored(path: str) -> bool:
    """Whether ``path`` looks like pyxenstored: a script that names it, or is named so.

    Compiled programs (the C daemon) never are.  A wrong guess towards
    pyxenstored is caught by its check run, which then refuses the update.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if not head.startswith(b"#!"):
        return False
    return b"pyxenstored" in head or os.path.basename(path).startswith("pyxenstored")


class _Tee:
    """A binary file that also feeds everything written to a checker's pipe."""

    def __init__(self, f: BinaryIO, checker: SuccessorCheck | None) -> None:
        self.f = f
        self.checker = checker
        self.size = 0
        self._chunks: list[bytes] = []
        self._pending = 0

    def write(self, data: bytes) -> int:
        self._chunks.append(data)
        self._pending += len(data)
        if self._pending >= 1 << 16:
            self._push()
        return len(data)

    def _push(self) -> None:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._pending = 0
        self.size += len(data)
        self.f.write(data)
        if self.checker is not None:
            self.checker.feed(data)

    def flush(self) -> None:
        self._push()
        self.f.flush()


def write_state(
    path: str,
    records: Iterable[Record | list[CommittedNode]],
    version: int,
    target: str,
    checker: SuccessorCheck | None = None,
) -> int:
    """Write the stream to ``path`` (created 0600, replaced); returns its size.

    With ``checker`` the same bytes go to the successor's check run as they
    are written, so that writing and checking overlap.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            tee = _Tee(f, checker)
            writer = StreamWriter(tee, version=version, target=target)  # type: ignore[arg-type]
            writer.write_all(records)
            writer.close()
            if checker is not None:
                checker.done()
            return tee.size
    finally:
        if fd >= 0:
            os.close(fd)


class SuccessorCheck:
    """``<program> --check-state -``: the successor restores the dump read from a pipe.

    Started when the session opens; :meth:`feed` gives it the stream as it is
    written, :meth:`result` waits for its verdict.  A thread writes to the
    pipe, so that the dump never waits for the check run to read: both work
    at the same time (a pipe holds only 64 KiB, and writing into it directly
    made the two processes take turns).
    """

    def __init__(self, program: str) -> None:
        import fcntl
        import queue
        import subprocess
        import tempfile
        import threading

        self.program = program
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by result()/cancel()
        self.proc = subprocess.Popen(
            [program, "--check-state", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        self.broken = False
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._closed = False
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, AttributeError):
                # Fewer wake-ups of both sides; a smaller pipe works too.
                fcntl.fcntl(self.proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, CHECK_PIPE_SIZE)
        self._feeder = threading.Thread(target=self._feed_pipe, name="check-feeder", daemon=True)
        self._feeder.start()

    def _feed_pipe(self) -> None:
        """The feeder thread: queued chunks into the pipe, then close it."""
        stdin = self.proc.stdin
        while (data := self._queue.get()) is not None:
            if self.broken or stdin is None:
                continue
            try:
                stdin.write(data)
            except (BrokenPipeError, ValueError, OSError):
                self.broken = True  # it stopped reading: its verdict says why
        if stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()

    def feed(self, data: bytes) -> None:
        if not self._closed:
            self._queue.put(data)

    def done(self) -> None:
        """No more data: the pipe is closed once everything queued is written."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def result(self, timeout: float = CHECK_TIMEOUT) -> str | None:
        """None when the successor restored the state cleanly, else why not.

        Its verdict is read as soon as it comes: the check run prints it and
        exits, closing its output.  (``Popen.wait`` with a timeout polls,
        sleeping up to 50 ms at a time: that much added to every blackout.)
        """
        import select
        import subprocess

        self.done()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        # Its exit counts too (something it started may keep the pipe open).
        pidfd = -1
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(self.proc.pid)
        chunks = []
        # poll, not select: a daemon with many connections has descriptors
        # above select's limit of 1024.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if pidfd >= 0:
            poller.register(pidfd, select.POLLIN)
        try:
            while True:
                left = deadline - time.monotonic()
                ready = [r for r, _ in poller.poll(max(left, 0) * 1000)] if left > 0 else []
                if not ready:
                    raise subprocess.TimeoutExpired(self.program, timeout)
                if fd not in ready:
                    # It exited: what it wrote is in the pipe already.
                    os.set_blocking(fd, False)
                    with contextlib.suppress(BlockingIOError):
                        while chunk := os.read(fd, 1 << 16):
                            chunks.append(chunk)
                    break
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            self.proc.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self.cancel()
            return f"{self.program} --check-state did not finish within {timeout:.0f} s"
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        self._feeder.join()
        out = b"".join(chunks).decode("utf-8", "replace")
        self.proc.stdout.close()
        self._err.seek(0)
        err = self._err.read().decode("utf-8", "replace")
        self._err.close()
        return _verdict(self.program, self.proc.returncode, out, err)

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.done()
        self.proc.wait()
        # The process is gone: the feeder's writes fail at once and it ends.
        self._feeder.join()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


def run_check(program: str, path: str) -> str | None:
    """Run ``program --check-state path``; None when it restored cleanly, else why not."""
    import subprocess

    try:
        done = subprocess.run(
            [program, "--check-state", path],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHECK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{program} --check-state did not finish within {CHECK_TIMEOUT:.0f} s"
    except OSError as exc:
        return f"{program} cannot start: {exc.strerror}"
    return _verdict(
        program,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def _verdict(program: str, status: int, out: str, err: str) -> str | None:
    if status == 0 and out.startswith(CHECK_OK):
        return None
    for line in out.splitlines():
        if line.startswith(CHECK_FAILED):
            return line[len(CHECK_FAILED) :].lstrip(": ")
    lines = err.strip().splitlines()
    detail = lines[-1] if lines else "no answer"
    return f"{program} --check-state exited with status {status}: {detail}"


def renumber_connections(records: Iterable[Record]) -> list[Record]:
    """Connection ids 1, 2, 3... in stream order, as C numbers them when it dumps.

    The ids only link watches (and transactions) to their connection; a C
    reader gets them the way C itself writes them.
    """
    ids: dict[int, int] = {}
    out: list[Record] = []
    for r in records:
        if isinstance(r, ConnectionData):
            ids[r.conn_id] = len(ids) + 1
            r = replace(r, conn_id=ids[r.conn_id])
        elif isinstance(r, (WatchData, WatchDataExtended, TransactionData)) or (
            isinstance(r, NodeData) and r.conn_id
        ):
            r = replace(r, conn_id=ids.get(r.conn_id, r.conn_id))
        out.append(r)
    return out


def c_target_losses(records: Sequence[Record], target: str, baseline: q.QuotaTable) -> list[str]:
    """What a C daemon (``c-4.17`` or ``c-head``) started with our arguments would lose.

    Quota equal to the command-line values and the default feature mask are
    not losses: the new daemon starts with them anyway.
    """
    lost: list[str] = []
    base = {v.name: v.value for v in quota_values(baseline)}
    for r in records:
        if isinstance(r, TransactionData):
            lost.append(f"transaction {r.tx_id} of connection {r.conn_id}")
        elif isinstance(r, NodeData) and r.conn_id:
            continue  # reported with its transaction
        elif target == "c-4.17":
            if isinstance(r, WatchDataExtended):
                lost.append(f"depth {r.depth} of watch {r.wpath!r} of connection {r.conn_id}")
            elif isinstance(r, GlobalQuotaData):
                for v in r.domain_quota + r.global_quota:
                    if base.get(v.name) != v.value:
                        lost.append(f"global quota {v.name}={v.value}")
            elif isinstance(r, DomainData):
                if r.features != SUPPORTED_FEATURES:
                    lost.append(f"features {r.features:#x} of domain {r.domid}")
                for v in r.quota:
                    if is_marks_name(v.name):
                        continue  # a transaction's marks: reported with it
                    if base.get(v.name) != v.value:
                        lost.append(f"quota {v.name}={v.value} of domain {r.domid}")
            elif isinstance(r, UnknownRecord):
                lost.append(f"record of unknown type {r.type}")
            elif isinstance(r, ConnectionData) and r.unique_id:
                lost.append(f"unique-id of connection {r.conn_id}")
    return lost
