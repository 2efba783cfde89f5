"""Run the daemon where a host runs it, without touching the host.

A Xen host's xenstored listens on ``/var/run/xenstored/socket`` and writes
its pid file under ``/run``.  The tests here run such start-ups in a private
mount namespace (``unshare -m``) whose ``/run`` (and, where asked, a
``/etc/default``) is an empty tmpfs: the daemon, the init script and the
clients see the real paths, and nothing of them outlives the namespace.
Where the machine does not let root lower OOM scores or raise file limits
(a container without CAP_SYS_RESOURCE), ``choom`` and ``prlimit`` are
replaced inside the namespace by stand-ins that run the command unchanged.
Mounts are made with ``mount -n`` so that not even ``/run/mount/utab`` is
written on the host.  This needs root; elsewhere the tests skip.

Every daemon a script starts through :data:`PYXENSTORED_WRAPPER` carries
``PYXS_SANDBOX=$TMP`` in its environment (forked daemons too), so that
:func:`kill_leftovers` finds and stops it if the script failed half-way.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.util import REPO

# The launcher a host's configuration names (XENSTORED=...): runs this
# checkout's pyxenstored, marked as started by this test.
PYXENSTORED_WRAPPER = """#!/bin/sh
PYXS_SANDBOX="{tmp}" PYTHONPATH="{src}" exec "{python}" -m pyxenstored "$@"
"""


# Stand-ins for the two tools init scripts use to give xenstored more than
# other processes (``choom -n -1000 CMD -- ARGS``, ``prlimit --nofile=N CMD
# ARGS``), for machines (containers) without CAP_SYS_RESOURCE: they run the
# command as the real tools would, without the change they may not make.
_STANDINS = {
    "choom": '#!/bin/sh\nshift 2\ncmd=$1\nshift\n[ "${1:-}" = -- ] && shift\nexec "$cmd" "$@"\n',
    "prlimit": '#!/bin/sh\nshift\nexec "$@"\n',
}
CAP_SYS_RESOURCE = 24


def may_raise_limits() -> bool:
    """Whether this process may lower OOM scores and raise hard limits."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def _standins(tmp: Path) -> str:
    """Script lines that bind stand-ins over choom and prlimit when needed."""
    if may_raise_limits():
        return ""
    lines = []
    for name, text in _STANDINS.items():
        real = shutil.which(name)
        if real is None:
            continue
        standin = tmp / f"{name}.standin"
        standin.write_text(text)
        standin.chmod(0o755)
        lines.append(f"mount -n --bind {standin} {real}\n")
    return "".join(lines)


@functools.cache
def _namespace_error() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a private mount namespace"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not installed"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -n -t tmpfs tmpfs /var/run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"no private mount namespace here: {probe.stderr.strip()}"
    return None


def require_namespace() -> None:
    """Skip unless a private mount namespace with a tmpfs /run can be made.

    A plain skip, also in CI (not ``tests.util.require``): CI does not
    promise root (``scripts/setup.sh`` uses ``sudo`` unless it runs as root),
    and CI containers commonly refuse ``unshare -m``: a namespace is a
    property of where the tests run, not something the set-up can install.
    The reason says which part is missing.
    """
    error = _namespace_error()
    if error is not None:
        pytest.skip(error)


def write_wrapper(tmp: Path) -> Path:
    path = tmp / "pyxenstored"
    path.write_text(PYXENSTORED_WRAPPER.format(tmp=tmp, src=REPO / "src", python=sys.executable))
    path.chmod(0o755)
    return path


def run_private(
    script: str,
    tmp: Path,
    env: dict[str, str] | None = None,
    private_dirs: tuple[str, ...] = ("/var/run",),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the ``sh`` ``script`` with each of ``private_dirs`` an empty tmpfs.

    ``$TMP`` is ``tmp`` (outside the tmpfs: the test reads what the script
    leaves there).  ``XENSTORED_PATH``, ``XENSTORED_RUNDIR``,
    ``XDG_RUNTIME_DIR`` and ``NOTIFY_SOCKET`` are removed from the
    environment unless ``env`` sets them: the clients look where a host's do.
    """
    require_namespace()
    mounts = "".join(f"mount -n -t tmpfs -o mode=755 tmpfs {d}\n" for d in private_dirs)
    mounts += _standins(tmp)
    full_env = dict(os.environ if env is None else env)
    for name in ("XENSTORED_PATH", "XENSTORED_RUNDIR", "XDG_RUNTIME_DIR", "NOTIFY_SOCKET"):
        if env is None or name not in env:
            full_env.pop(name, None)
    full_env["TMP"] = str(tmp)
    try:
        return subprocess.run(
            ["unshare", "-m", "sh", "-c", mounts + script],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        kill_leftovers(tmp)


def kill_leftovers(tmp: Path) -> None:
    """SIGKILL every process started through the wrapper of ``tmp`` that still runs."""
    tag = f"PYXS_SANDBOX={tmp}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if tag not in f.read().split(b"\0"):
                    continue
            os.kill(int(entry), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
