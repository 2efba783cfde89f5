"""The one launcher of the daemons the tests run: pyxenstored, the C reference, oxenstored.

Every test, fixture and harness that needs a running daemon starts it here:

* :func:`start_pyxenstored` builds the command line (:func:`pyxenstored_command`:
  always ``-N``, the run dir, the hypervisor backend, the ring dir, extra
  options), starts it as our child, waits until it is ready and hands back a
  :class:`Launched`.  Its output goes either to a log file (ready: its socket
  accepts a connection) or to pipes the test reads (ready: its first stdout
  line announces ``XENSTORED_PATH=<socket>``, as the daemon documents).
* :func:`start_reference` and :func:`start_oxenstored` run the C reference
  daemons through their runners in ``PYXENSTORED_PEERS`` (``tests/util.py``),
  which put them in the background and print their pid.

A daemon that does not come up raises :class:`LaunchError` carrying its
output.  :meth:`Launched.stop` sends SIGTERM, waits, then kills; a
:class:`Launched` is also a context manager that stops it on exit.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.util import (
    REFERENCE_OXENSTORED,
    REFERENCE_RUNNER,
    REPO,
    XEN_BIN,
    require,
    require_peer,
    require_shim,
    require_tool,
)

from pyxenstored.client import Client

#: The daemons a test may ask :func:`start_daemon` for: the C reference
#: (under the shim), pyxenstored on its simulated hypervisor, and on its Xen
#: backend under the same shim.
KINDS = ("reference", "pyxenstored", "pyxenstored-xen")
#: How ``python -m pyxenstored`` is run unless a test gives its own program.
PYXENSTORED = (sys.executable, "-m", "pyxenstored")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
#: How long a daemon started by a runner gets to go after the runner's stop.
PEER_STOP_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
#: Tail of a log quoted in a start failure.
LOG_TAIL = 4000


class LaunchError(Exception):
    """A daemon did not start; the message carries what it said."""


def clean_env(
    drop: Iterable[str] = (),
    base: Mapping[str, str] | None = None,
    add: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A copy of ``base`` (the process environment by default) without ``drop``, with ``add``."""
    env = dict(os.environ if base is None else base)
    for name in drop:
        env.pop(name, None)
    env.update(add or {})
    return env


def client_env(sock: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a client tool (xenstore-*) talking to the daemon on ``sock``."""
    return clean_env(("XENSTORED_RUNDIR", "LD_PRELOAD"), base, {"XENSTORED_PATH": sock})


def shim_environment(
    ring_dir: str | Path, ids: str, *, debug: bool = True, preload: bool = True
) -> dict[str, str]:
    """What the shim (xsshim.c) needs to play Xen: its ring dir and the domids that exist.

    ``ids``: ``XS_SHIM_DOMAINS`` (:func:`domids`).  ``preload``: also load
    the shim (for pyxenstored's Xen backend; the runners of the C reference
    load it themselves).  ``debug``: its lines in the daemon's log.
    """
    env = {"XS_SHIM_RINGDIR": str(ring_dir), "XS_SHIM_DOMAINS": ids}
    if preload:
        env["LD_PRELOAD"] = str(require_shim())
    if debug:
        env["XS_SHIM_DEBUG"] = "1"
    return env


def taskset(cpus: str | None) -> list[str]:
    """The prefix that pins a daemon to ``cpus`` (none without ``cpus``)."""
    if cpus is None:
        return []
    tool = shutil.which("taskset")
    if tool is None:
        raise LaunchError("taskset not installed")
    return [tool, "-c", cpus]


def pyxenstored_command(
    rundir: str | Path | None,
    *extra: str,
    hypervisor: str | None = None,
    ring_dir: str | Path | None = None,
    program: Sequence[str] = PYXENSTORED,
    cpus: str | None = None,
) -> list[str]:
    """The command line of a pyxenstored server (``-N``: it must not fork from the test).

    ``rundir`` None: no ``--rundir`` (the daemon finds its directory itself);
    ``hypervisor``: ``sim``, ``xen``, ``none`` or ``auto`` (None: its default);
    ``ring_dir``: the simulated hypervisor's directory; ``program``: what
    runs the daemon (a live update's successor script, say).
    """
    cmd = [*taskset(cpus), *map(str, program), "-N"]
    if rundir is not None:
        cmd += ["--rundir", str(rundir)]
    if hypervisor is not None:
        cmd += ["--hypervisor", hypervisor]
    cmd += extra
    if ring_dir is not None:
        cmd += ["--ring-dir", str(ring_dir)]
    return cmd


def accepts(path: str) -> bool:
    """Whether a daemon listens on ``path`` (the file appears at bind, before listen)."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def read_tail(path: str | None) -> str:
    if path is None:
        return ""
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        return f.read()[-LOG_TAIL:]
    return ""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs: a daemon that is not our child may linger as a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass(slots=True)
class Launched:
    """A running daemon: where clients reach it, its pid and output, how to stop it.

    ``proc`` is set for our own child (pyxenstored); a daemon a runner put in
    the background has ``stopper`` (the runner's ``stop``) instead.  ``log``:
    the file its output goes to (None: ``proc``'s pipes).
    """

    kind: str
    rundir: Path
    socket: str
    pid: int
    log: str | None = None
    ring_dir: str | None = None
    #: The environment of a client tool talking to this daemon.
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    stopper: Callable[[], None] | None = field(default=None, repr=False)
    _stderr: str | None = field(default=None, repr=False)

    def connect(self, timeout: float = REQUEST_TIMEOUT) -> Client:
        return Client.connect_socket(self.socket, timeout=timeout)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(self.pid)

    def output(self) -> str:
        """The log so far; with pipes, the daemon's stderr once it has exited."""
        if self.log is not None:
            with contextlib.suppress(OSError), open(self.log, errors="replace") as f:
                return f.read()
            return ""
        if self._stderr is None:
            if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
                return ""
            self._stderr = self.proc.stderr.read()
        return self._stderr

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Signal, wait ``timeout``, then kill; our child's exit status (None for a peer)."""
        if self.proc is not None:
            return _stop_child(self.proc, sig, timeout)
        if self.stopper is not None and self.pid:
            self.stopper()
            deadline = time.monotonic() + min(timeout, PEER_STOP_TIMEOUT)
            while pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if pid_alive(self.pid):
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
        return None

    def __enter__(self) -> Launched:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _stop_child(proc: subprocess.Popen[str], sig: int, timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def start_pyxenstored(
    rundir: str | Path,
    *extra: str,
    hypervisor: str | None = None,
    ring_dir: str | Path | None = None,
    domains: Sequence[int] | str | None = None,
    env: Mapping[str, str] | None = None,
    log: str | Path | None = None,
    program: Sequence[str] = PYXENSTORED,
    rundir_option: bool = True,
    cpus: str | None = None,
    new_session: bool = False,
    preexec: Callable[[], None] | None = None,
    cwd: str | None = None,
    sock: str | None = None,
    kind: str = "pyxenstored",
    timeout: float = START_TIMEOUT,
) -> Launched:
    """Start pyxenstored serving ``rundir/socket`` and wait until it is ready.

    Guests on rings in ``ring_dir``: on the simulated hypervisor (``sim`` or
    the default) it gets ``--ring-dir`` and ``domains`` is written to
    ``ring_dir/domains``; on ``xen`` the shim plays Xen in ``ring_dir`` (the
    run dir when None) with the domids of ``domains`` (see
    :func:`domains_file`).

    ``log``: append its stdout and stderr there and wait for the socket to
    accept; None: give it pipes and wait for its ``XENSTORED_PATH=`` line
    (the test may read the lines after it from ``proc.stdout``).
    ``rundir_option`` False: no ``--rundir`` (the environment names the
    directory).  ``env`` None: the test's own environment.  ``sock``: where
    it must listen when not ``rundir/socket`` (its environment says so).
    """
    sock = sock or os.path.join(rundir, "socket")
    ring_option = None
    if hypervisor == "xen":
        ids = domids((0,) if domains is None else domains)
        env = clean_env(base=env, add=shim_environment(ring_dir or rundir, ids))
    elif ring_dir is not None:
        if domains is not None:
            Path(ring_dir, "domains").write_text(domains_file(domains))
        ring_option = ring_dir
    cmd = pyxenstored_command(
        rundir if rundir_option else None,
        *extra,
        hypervisor=hypervisor,
        ring_dir=ring_option,
        program=program,
        cpus=cpus,
    )
    proc = _spawn(cmd, env, log, preexec, new_session, cwd)
    daemon = Launched(
        kind,
        Path(rundir),
        sock,
        proc.pid,
        None if log is None else str(log),
        None if ring_dir is None else str(ring_dir),
        client_env(sock),
        proc,
    )
    try:
        if log is None:
            _wait_announced(daemon, timeout)
        else:
            _wait_listening(daemon, timeout)
    except BaseException:
        daemon.stop(signal.SIGKILL)
        raise
    return daemon


def domains_file(domains: Sequence[int] | str) -> str:
    """The simulated hypervisor's ``DIR/domains``: a line per domain (``domid [unique-id]``)."""
    return domains if isinstance(domains, str) else "".join(f"{d}\n" for d in domains)


def domids(domains: Sequence[int] | str) -> str:
    """The shim's ``XS_SHIM_DOMAINS``: the domids alone (its list is fixed, without unique ids)."""
    if isinstance(domains, str):
        return ",".join(line.split()[0] for line in domains.splitlines() if line.strip())
    return ",".join(map(str, domains))


def _spawn(
    cmd: list[str],
    env: Mapping[str, str] | None,
    log: str | Path | None,
    preexec: Callable[[], None] | None,
    new_session: bool,
    cwd: str | None,
) -> subprocess.Popen[str]:
    """Start ``cmd``: output appended to ``log``, or in pipes when None."""
    penv = None if env is None else dict(env)
    with contextlib.ExitStack() as stack:
        if log is None:
            stdout: int | IO[bytes] = subprocess.PIPE
            stderr: int = subprocess.PIPE
        else:  # the child keeps its own copy of the descriptor
            stdout, stderr = stack.enter_context(open(log, "ab")), subprocess.STDOUT
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            text=True,
            env=penv,
            preexec_fn=preexec,
            start_new_session=new_session,
            cwd=cwd,
        )


def _wait_announced(daemon: Launched, timeout: float) -> None:
    """Wait for the ``XENSTORED_PATH=`` line the daemon prints once it listens."""
    proc = daemon.proc
    assert proc is not None and proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
    line = proc.stdout.readline() if ready else ""
    if line != f"XENSTORED_PATH={daemon.socket}\n":
        proc.kill()
        proc.wait()
        raise LaunchError(
            f"{daemon.kind} did not start (first line {line!r}); stderr:\n{daemon.output()}"
        )


def _wait_listening(daemon: Launched, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (os.path.exists(daemon.socket) and accepts(daemon.socket)):
        if not daemon.alive():
            why = f"exited with {daemon.proc.returncode}" if daemon.proc else "exited"
            break
        if time.monotonic() > deadline:
            why = f"did not listen on {daemon.socket} in {timeout:g} s"
            break
        time.sleep(0.02)
    else:
        return
    raise LaunchError(f"{daemon.kind} {why}; log {daemon.log}:\n{read_tail(daemon.log)}")


def start_peer(
    runner: Path,
    binary: Path,
    kind: str,
    run: str | Path,
    sock: str,
    log: str,
    *extra: str,
    env: Mapping[str, str] | None = None,
    ring_dir: str | Path | None = None,
    cpus: str | None = None,
    optional: bool = False,
    timeout: float = 300,
) -> Launched:
    """Start a C reference daemon through ``runner start RUN``, which prints its pid.

    ``optional``: a daemon that does not start skips the test locally (and
    fails it in CI, :func:`tests.util.require`) rather than failing it.
    """
    require_peer(runner)
    require_tool(str(binary))
    out = subprocess.run(
        [*taskset(cpus), str(runner), "start", str(run), *extra],
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        message = f"{kind} did not start: {out.stderr}{read_tail(log)}"
        require(not optional, message)
        raise LaunchError(message)

    def stop() -> None:
        subprocess.run([str(runner), "stop", str(run)], capture_output=True, timeout=30)

    return Launched(
        kind,
        Path(run),
        sock,
        int(out.stdout.split()[-1]),
        log,
        None if ring_dir is None else str(ring_dir),
        client_env(sock, env),
        stopper=stop,
    )


def start_reference(
    rundir: str | Path,
    *extra: str,
    env: Mapping[str, str] | None = None,
    ring_dir: str | Path | None = None,
    domains: Sequence[int] | str = (0,),
    debug: bool = False,
    cpus: str | None = None,
    optional: bool = False,
) -> Launched:
    """The C reference xenstored (4.17, under the shim) serving ``rundir/socket``.

    ``ring_dir``: guests' ring pages and the event channel FIFO there, the
    shim's domain list ``domains``.  ``extra``: arguments of xenstored.
    """
    if ring_dir is not None:
        shim = shim_environment(ring_dir, domids(domains), debug=debug, preload=False)
        env = clean_env(base=env, add=shim)
    return start_peer(
        REFERENCE_RUNNER,
        XEN_BIN / "xenstored",
        "reference",
        rundir,
        os.path.join(rundir, "socket"),
        os.path.join(rundir, "xenstored.out"),
        *extra,
        env=env,
        ring_dir=ring_dir,
        cpus=cpus,
        optional=optional,
    )


def start_daemon(
    kind: str,
    rundir: str | Path,
    *extra: str,
    ring_dir: str | Path | None = None,
    domains: Sequence[int] = (0,),
    cpus: str | None = None,
    log: str | Path | None = None,
) -> Launched:
    """Start a daemon of ``kind`` (one of :data:`KINDS`) serving ``rundir/socket``.

    ``ring_dir``: guests' rings there, ``domains`` the domains that exist at
    start (the simulated hypervisor's ``domains`` file, or the shim's fixed
    list).  pyxenstored runs this tree's sources and logs to ``log``
    (``rundir/pyxenstored.log`` by default); none of the test's own
    ``XENSTORED_PATH``, ``NOTIFY_SOCKET`` or ``XS_SHIM_RINGDIR`` reaches it.
    """
    if kind == "reference":
        env = clean_env(("XENSTORED_PATH",))
        return start_reference(
            rundir, *extra, env=env, ring_dir=ring_dir, domains=domains, cpus=cpus
        )
    if kind not in KINDS:
        raise ValueError(f"unknown daemon kind {kind}")
    # this tree's sources, also when bench/compare.py starts it
    path = str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    return start_pyxenstored(
        rundir,
        *extra,
        hypervisor="xen" if kind == "pyxenstored-xen" else None,
        ring_dir=ring_dir,
        domains=domains,
        env=clean_env(
            ("XENSTORED_PATH", "NOTIFY_SOCKET", "XS_SHIM_RINGDIR"), add={"PYTHONPATH": path}
        ),
        log=log or os.path.join(rundir, "pyxenstored.log"),
        cpus=cpus,
        kind=kind,
    )


def start_oxenstored(
    run: str | Path, *extra: str, env: Mapping[str, str] | None = None, optional: bool = False
) -> Launched:
    """oxenstored (4.17, under the shim) in its own mount namespace; socket under ``run/run``."""
    return start_peer(
        REFERENCE_OXENSTORED,
        XEN_BIN / "oxenstored",
        "oxenstored",
        run,
        os.path.join(run, "run", "xenstored", "socket"),
        os.path.join(run, "oxenstored.out"),
        *extra,
        env=env,
        optional=optional,
    )
