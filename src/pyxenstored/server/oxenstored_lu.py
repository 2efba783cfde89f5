"""Live update to and from oxenstored (docs/migration.md), the daemon's side.

From oxenstored, pyxenstored is the successor oxenstored execs:

oxenstored's live update (``process.ml:LiveUpdate``, ``xenstored.ml``)
first runs ``<binary> --live --restart <its arguments> --help`` and goes on
only when that exits 0; then it writes its state to ``/var/run/xenstored/db``
and execs ``<binary> --live --restart <its arguments>`` with the listening
socket, the event-channel descriptor and every accepted socket left open.

* :func:`help_check` answers the ``--help`` run: 0 only when the arguments
  are accepted and the dump present there (if any) restores cleanly into a
  scratch store, so that a state pyxenstored cannot take fails *before*
  oxenstored execs it (docs/compat.md D61).
* :func:`prepare` reads and checks the dump at start-up, before any
  descriptor is touched; when it cannot be taken, :func:`fall_back` execs
  the oxenstored that wrote it (``/tool/xenstored`` in the dump) with the
  same arguments, so the host keeps a xenstore.
* :func:`adopt` restores the checked state through the ordinary live-update
  restore (sockets on their inherited descriptors, rings on the inherited
  event channel) and leaves ``OK`` for the ``live-update -s`` that
  ``xenstore-control`` sends again, as oxenstored does after its own
  restart.

To oxenstored, :class:`OxenstoredSuccessor` is installed as
:attr:`.LiveUpdate.foreign`: pyxenstored's own live update with oxenstored
as the new program (its check at ``-f``, its dump and exec at ``-s``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyxenstored.migrate import DumpError, RestoreError, dump_state
from pyxenstored.migrate.oxenstored import (
    FORCED_ARGS,
    OXENSTORED_DB,
    OxenstoredState,
    check_state,
    config_file,
    oxenstored_args,
    read_state,
    write_state,
)
from pyxenstored.stream import GlobalData, StreamWriter
from pyxenstored.stream.oxenstored import (
    HEADER,
    DomainRing,
    OxenstoredExtras,
    OxenstoredQuota,
    parse_config,
)

if TYPE_CHECKING:
    from pyxenstored.server.liveupdate import LiveUpdate, Session
    from pyxenstored.server.ring_domains import RingDomains
    from pyxenstored.store import StoreConfig

log = logging.getLogger("pyxenstored.oxenstored")

#: Where the checked state goes as a migration stream for the restore (run directory).
ADOPTED_STREAM = "oxenstored-state"


def config_quota(argv: Sequence[str]) -> OxenstoredQuota:
    """oxenstored's quota settings from the configuration file ``argv`` names.

    A missing file gives oxenstored's built-in defaults, as oxenstored
    starts without one.
    """
    path = config_file(argv)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        log.info("oxenstored configuration %s: %s; built-in quota defaults", path, exc.strerror)
        return OxenstoredQuota()
    quota, problems = parse_config(text)
    for problem in problems:
        log.warning("oxenstored configuration %s: %s", path, problem)
    return quota


def config_pid_file(path: str) -> str | None:
    """The ``pid-file`` key of oxenstored's configuration file (the last one), if any."""
    found = None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, eq, value = line.strip().partition("=")
                if eq and key.strip() == "pid-file" and value.strip():
                    found = value.strip()
    except OSError:
        return None
    return found


def load(path: str, argv: Sequence[str]) -> OxenstoredState:
    """Read oxenstored's dump at ``path``; raises RestoreError saying why it cannot be taken."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise RestoreError(f"oxenstored dump {path}: {exc.strerror}") from None
    return read_state(data, config_quota(argv))


def help_check(path: str, argv: Sequence[str], config: StoreConfig) -> int:
    """``--live --restart ... --help``: 0 when this invocation would be accepted."""
    if not os.path.exists(path):
        print(f"pyxenstored: accepts oxenstored's live update (no dump at {path} yet)")
        return 0
    try:
        restored = check_state(load(path, argv), config)
    except RestoreError as exc:
        print(f"pyxenstored: cannot take oxenstored's dump {path}: {exc}")
        return 1
    print(
        f"pyxenstored: accepts oxenstored's live update ({path}: {restored.connections}"
        f" connections, {restored.nodes} nodes)"
    )
    return 0


def prepare(path: str, argv: Sequence[str], config: StoreConfig) -> OxenstoredState:
    """Read and check the dump before anything is touched; on failure fall back, else raise."""
    try:
        state = load(path, argv)
        check_state(state, config)
        return state
    except RestoreError as exc:
        log.error("oxenstored's dump %s cannot be taken: %s", path, exc)
        fall_back(path, argv)
        raise


def fall_back(path: str, argv: Sequence[str]) -> None:
    """Exec the oxenstored that wrote ``path`` (``/tool/xenstored``) on the same state.

    Returns only when that is impossible (no such node, not an executable,
    or pyxenstored itself).  Nothing was touched yet: oxenstored finds its
    descriptors and its dump as it left them.
    """
    from pyxenstored.migrate.oxenstored import predecessor_of
    from pyxenstored.server.liveupdate import is_pyxenstored

    try:
        with open(path, "rb") as f:
            program = predecessor_of(f.read())
    except OSError:
        program = None
    if program is None or not os.access(program, os.X_OK) or is_pyxenstored(program):
        log.error("no oxenstored to fall back to (/tool/xenstored: %r)", program)
        return
    args = [program, *FORCED_ARGS, *oxenstored_args(argv)]
    log.error("falling back to %s", " ".join(args))
    try:
        os.execv(program, args)
    except OSError as exc:
        log.error("exec of %s failed: %s", program, exc.strerror)


def adopt(updater: LiveUpdate, rings: RingDomains | None, state: OxenstoredState) -> None:
    """Restore oxenstored's checked ``state`` into the running daemon (raises RestoreError)."""
    listener = _listener_path(state)
    if listener is not None:
        updater.sock_path = listener
    path = os.path.join(updater.rundir, ADOPTED_STREAM)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        writer = StreamWriter(f, version=2)
        writer.write_all(state.records)
        writer.close()
    updater.restore(path)
    if rings is not None:
        for extra in state.extras.rings:
            ring = rings.ring(extra.domid)
            if ring is not None:
                ring.gfn = extra.mfn
                ring.remote_port = extra.remote_port
    # xenstore-control asks again with "-s" after the exec: as oxenstored
    # answers once it has restarted, so do we.
    updater.result = "OK"
    log.info("took over oxenstored's state (%d records)", len(state.records))


def hands_over_virq(state: OxenstoredState) -> bool:
    """Whether the dump hands an event-channel descriptor over with ``VIRQ_DOM_EXC`` bound.

    Then the successor must not bind the virq on a handle of its own: Xen
    allows one binding.
    """
    return state.extras.domexc_port is not None and any(
        isinstance(r, GlobalData) and r.evtchn_fd >= 0 for r in state.records
    )


def _listener_path(state: OxenstoredState) -> str | None:
    """The path of the inherited listening socket (as it was bound)."""
    for r in state.records:
        if isinstance(r, GlobalData) and r.socket_fd >= 0:
            try:
                sock = socket.socket(fileno=r.socket_fd)
            except OSError:
                return None
            try:
                name = sock.getsockname()
            finally:
                sock.detach()
            return name if isinstance(name, str) and name else None
    return None


# --- to oxenstored: pyxenstored's live update with oxenstored as the new program -------


def is_oxenstored(path: str) -> bool:
    """Whether ``path`` is oxenstored: so named, or a program holding its dump header."""
    from pyxenstored.server.liveupdate import is_pyxenstored

    if is_pyxenstored(path):
        return False
    if "oxenstored" in os.path.basename(path):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            return head == b"\x7fELF" and HEADER in f.read()
    except OSError:
        return False


class OxenstoredSuccessor:
    """Live update towards oxenstored (installed as :attr:`LiveUpdate.foreign`).

    At ``-f`` it runs oxenstored's own check (``--live --restart ARGS
    --help``); at the switch it writes oxenstored's dump where oxenstored
    reads it, refuses (unless ``-F``) when something would be lost, answers
    the pending ``-s`` with ``BUSY`` (``xenstore-control`` asks again, and
    the new oxenstored answers ``OK``) and execs ``BINARY --live --restart
    ARGS``.  oxenstored cannot carry pending input or output: the loop's
    output is flushed first, and what remains counts as lost.
    """

    def __init__(self, updater: LiveUpdate, rings: RingDomains | None) -> None:
        self.updater = updater
        self.rings = rings
        self.db_path = OXENSTORED_DB

    def accepts(self, program: str) -> bool:
        return is_oxenstored(program)

    def args(self, cmdline: list[str] | None) -> list[str]:
        return oxenstored_args(cmdline if cmdline is not None else self.updater.argv)

    def validate(self, program: str) -> str | None:
        """oxenstored's check of the new program; None when it exits 0."""
        import subprocess

        argv = [program, *FORCED_ARGS, *self.args(None), "--help"]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{program} cannot be checked: {exc}"
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip().splitlines()
            return f"Command {' '.join(argv)} exited with code {done.returncode}" + (
                f": {err[-1]}" if err else ""
            )
        return None

    def extras(self) -> tuple[OxenstoredExtras, list[str]]:
        lost: list[str] = []
        rings: list[DomainRing] = []
        domexc: int | None = None
        if self.rings is not None:
            domexc = self.rings.hv.virq_port
            for ring in self.rings.rings():
                if ring.domid != self.updater.store.config.store_domid and not ring.gfn:
                    lost.append(f"domain {ring.domid}: its ring frame is not known here")
                rings.append(DomainRing(ring.domid, ring.gfn, ring.remote_port))
        return OxenstoredExtras(domexc, tuple(rings)), lost

    def switch(self, session: Session) -> None:
        """Dump, refuse or answer BUSY, exec; on failure the daemon serves on."""
        updater = self.updater
        server = updater.server
        for conn in server.connections:
            try:
                conn.flush()
            except OSError:
                continue  # closed by the loop later; the dump leaves it out
        fds = server.inherit_fds()
        listener = next((fd for key, fd in fds.items() if key.startswith("listener:")), -1)
        try:
            conns = updater.connection_records(None)
            records = list(
                dump_state(
                    updater.store,
                    conns,
                    global_data=GlobalData(listener, updater.evtchn_fd),
                    preserved=updater.preserved,
                )
            )
        except DumpError as exc:
            updater.answer(session, f"Dump state error: {exc}")
            return
        extras, lost = self.extras()
        target = config_quota(self.args(session.cmdline))
        dump = write_state(records, extras, target, updater.startup_quota)
        lost += dump.lost
        if lost and not session.force:
            shown = "; ".join(lost[:5]) + (f" (and {len(lost) - 5} more)" if len(lost) > 5 else "")
            updater.answer(
                session, f"Live update to oxenstored would lose: {shown}. Use -F to go on anyway."
            )
            return
        for item in lost:
            log.warning("live update to oxenstored (forced): %s is lost", item)
        try:
            fd = os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(dump.data)
        except OSError as exc:
            updater.answer(session, f"Dump state open error: {exc.strerror}")
            return
        self._exec(session, list(fds.values()))

    def _exec(self, session: Session, fds: list[int]) -> None:
        updater = self.updater
        server = updater.server
        conn = session.conn
        updater.answer(session, "BUSY")
        with contextlib.suppress(OSError):
            conn.flush()
        argv = [session.file, *FORCED_ARGS, *self.args(session.cmdline)]
        # oxenstored reads and writes its descriptors as blocking ones.
        handed = [*fds, updater.evtchn_fd] if updater.evtchn_fd >= 0 else fds
        for fd in handed:
            os.set_blocking(fd, True)
        skipped = self.rings.hv.prepare_exec if self.rings is not None else None
        for hook in server.before_exec:
            # The event channel's VIRQ_DOM_EXC stays bound: oxenstored takes
            # its port from the dump's evtchn-dev line instead of binding it.
            if hook != skipped:
                hook()
        log.info("live update: exec %s", " ".join(argv))
        try:
            os.execv(session.file, argv)
        except OSError as exc:
            for fd in handed:
                os.set_blocking(fd, False)
            for hook in server.exec_failed:
                if skipped is None or hook != self.rings.hv.exec_failed:  # type: ignore[union-attr]
                    hook()
            log.error("live update: exec of %s failed: %s", session.file, exc.strerror)
            with contextlib.suppress(OSError):
                os.unlink(self.db_path)
            updater.end_session()
            updater.result = f"Error activating new binary. ({exc.strerror})"
