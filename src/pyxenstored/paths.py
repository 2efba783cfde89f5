"""Where the daemon's socket lives: one rule for the daemon and for its clients.

libxenstore (``xs.c:xs_daemon_socket`` in xen.git, ``xs_lib.c`` in 4.17)
looks for the daemon at ``$XENSTORED_PATH``, else ``$XENSTORED_RUNDIR/socket``,
else ``/var/run/xenstored/socket``, and the C daemon listens where its
clients look.  pyxenstored does the same when it runs as a system daemon
(as root), so that every libxenstore tool finds it unconfigured.  An
unprivileged developer cannot create ``/var/run/xenstored``, so the daemon
then uses a directory of its own user: ``$XDG_RUNTIME_DIR/pyxenstored``, else
``/tmp/pyxenstored-$UID``.  The project's client tries libxenstore's place
first and that per-user place after it, so it finds whichever daemon runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SYSTEM_RUNDIR = "/var/run/xenstored"
SOCKET_NAME = "socket"


def user_rundir(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The per-user run directory: ``$XDG_RUNTIME_DIR/pyxenstored``, else ``/tmp/pyxenstored-$UID``."""
    env = os.environ if environ is None else environ
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "pyxenstored")
    return f"/tmp/pyxenstored-{os.getuid() if uid is None else uid}"


def daemon_rundir(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The daemon's run directory when none is given on its command line.

    ``$XENSTORED_RUNDIR`` as libxenstore; else, for root, libxenstore's
    compiled-in ``/var/run/xenstored``; else :func:`user_rundir`.
    """
    env = os.environ if environ is None else environ
    if env.get("XENSTORED_RUNDIR"):
        return env["XENSTORED_RUNDIR"]
    if (os.geteuid() if uid is None else uid) == 0:
        return SYSTEM_RUNDIR
    return user_rundir(env, uid)


def client_socket_candidates(
    environ: Mapping[str, str] | None = None, uid: int | None = None
) -> list[str]:
    """The sockets a client tries, in order.

    ``$XENSTORED_PATH`` or ``$XENSTORED_RUNDIR/socket`` alone when set (the
    caller said where); otherwise libxenstore's ``/var/run/xenstored/socket``
    and then the per-user socket of an unprivileged pyxenstored.
    """
    env = os.environ if environ is None else environ
    if env.get("XENSTORED_PATH"):
        return [env["XENSTORED_PATH"]]
    if env.get("XENSTORED_RUNDIR"):
        return [os.path.join(env["XENSTORED_RUNDIR"], SOCKET_NAME)]
    system = os.path.join(SYSTEM_RUNDIR, SOCKET_NAME)
    user = os.path.join(user_rundir(env, uid), SOCKET_NAME)
    return [system] if user == system else [system, user]
