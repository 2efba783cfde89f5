"""pyxenstored started the way Xen hosts start xenstored (docs/xen-host.md).

Each test runs in a private mount namespace whose ``/run`` is an empty
tmpfs (:mod:`tests.daemon.sandbox`): the daemon listens on the real
``/var/run/xenstored/socket``, writes the real pid file, and Debian's
unchanged clients find it there, without touching the host.

* Debian's ``/etc/init.d/xen``: its ``xenstored_start`` function, taken
  verbatim from the installed script, with ``XENSTORED=`` naming pyxenstored
  as ``/etc/default/xen`` would;
* upstream's ``launch-xenstore`` (run by its ``xenstored.service``), as
  installed, with ``XENSTORED=`` in ``/etc/default/xencommons``;
* the command line of ``contrib/systemd/pyxenstored.service``.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import sys
from pathlib import Path

import pytest
from tests.daemon.sandbox import may_raise_limits, require_namespace, run_private, write_wrapper
from tests.util import REPO, require, require_tool

pytestmark = pytest.mark.clients

DEBIAN_INIT = Path("/etc/init.d/xen")
LAUNCH_XENSTORE = Path("/etc/xen/scripts/launch-xenstore")
UNIT = REPO / "contrib" / "systemd" / "pyxenstored.service"

# C 4.17 options that mean nothing to pyxenstored, and one no xenstored knows:
# a host's XENSTORED_ARGS with them must still start it.
HOST_ARGS = "-V -D -R -Ioff --no-such-option -E 2000"


def shell_function(script: Path, name: str) -> str:
    """The text of shell function ``name`` in ``script``, as written there."""
    text = script.read_text()
    start = text.index(f"\n{name}()\n") + 1
    end = text.index("\n}\n", start) + 3
    return text[start:end]


def results(out: str) -> dict[str, str]:
    """``key=value`` lines the scripts print."""
    found = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[a-z0-9_]+", key):
            found[key] = value
    return found


def test_debian_init_script_starts_probes_and_stops_pyxenstored(tmp_path: Path) -> None:
    require(DEBIAN_INIT.exists(), "Debian's xen-utils-common (/etc/init.d/xen)")
    require_tool("start-stop-daemon")
    require_tool("choom")
    require_tool("xenstore-read")
    require_namespace()
    wrapper = write_wrapper(tmp_path)
    script = f"""
log_progress_msg() {{ :; }}
log_failure_msg() {{ echo "failure: $*"; }}
# As /etc/init.d/xen sets them, and /etc/default/xen with pyxenstored chosen.
XENSTORED_DIR=/run/xenstored
XENSTORED_PIDFILE=/run/xenstore.pid
ROOT=$TMP/xen-root
OXENSTORED=$TMP/no-such/oxenstored
CXENSTORED=$TMP/no-such/xenstored
XENSTORED={wrapper}
XENSTORED_ARGS="{HOST_ARGS}"
{shell_function(DEBIAN_INIT, "xenstored_start")}
xenstored_start
echo "start=$?"
pid=$(cat /run/xenstore.pid)
echo "pid=$pid"
echo "comm=$(cat /proc/$pid/comm)"
echo "socket=$(ls /var/run/xenstored/)"
echo "dom0=$(xenstore-read /local/domain/0/name)"
# The script run again (a second 'start'): the pid file's lock keeps one daemon.
xenstored_start
echo "again=$?"
echo "pid_again=$(cat /run/xenstore.pid)"
# Another daemon on the socket, without the pid file: refused with one line.
{wrapper} 2>"$TMP/second.err"
echo "second=$?"
echo "alive=$(xenstore-read /local/domain/0/name)"
start-stop-daemon --stop --quiet --retry=TERM/30/KILL/5 \\
    --pidfile /run/xenstore.pid --name pyxenstored
echo "stop=$?"
echo "left=$(ls -A /var/run/xenstored/)"
echo "pid_file_left=$(ls /run/xenstore.pid 2>/dev/null)"
"""
    out = run_private(script, tmp_path)
    got = results(out.stdout)
    context = f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert got.get("start") == "0", context
    assert got["pid"].isdigit(), context
    assert got["comm"] == "pyxenstored", context
    assert got["socket"] == "socket", context
    assert got["dom0"] == "Domain-0", context
    assert got["again"] == "0" and got["pid_again"] == got["pid"], context
    assert got["second"] == "1", context
    second = (tmp_path / "second.err").read_text().splitlines()
    assert second == [
        "pyxenstored: a xenstored already listens on /var/run/xenstored/socket; "
        "not starting a second one"
    ]
    assert got["alive"] == "Domain-0", context
    assert got["stop"] == "0", context
    assert got["left"] == "" and got["pid_file_left"] == "", context
    # The unknown option was reported, as C's getopt reports it, not refused.
    assert "ignoring unknown option --no-such-option" in out.stderr


def test_upstream_launch_xenstore_starts_pyxenstored(tmp_path: Path) -> None:
    """xen.git's xenstored.service runs launch-xenstore: it forks the daemon and
    waits for its pid file; under systemd (NotifyAccess=all) READY=1 comes
    from the daemon itself."""
    require(LAUNCH_XENSTORE.exists(), "launch-xenstore of xen-utils-common")
    require_tool("prlimit")
    require_tool("xenstore-read")
    require_namespace()
    wrapper = write_wrapper(tmp_path)
    notify = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    script = f"""
cat >/etc/default/xencommons <<EOF
XENSTORED={wrapper}
XENSTORED_ARGS="{HOST_ARGS}"
EOF
NOTIFY_SOCKET={notify} {LAUNCH_XENSTORE} >"$TMP/launch.out" 2>&1
echo "launch=$?"
pid=$(cat /var/run/xen/xenstored.pid)
echo "pid=$pid"
echo "oom=$(cat /proc/$pid/oom_score_adj)"
echo "root=$(xenstore-read -s /)"
start-stop-daemon --stop --quiet --retry=TERM/30/KILL/5 \\
    --pidfile /var/run/xen/xenstored.pid --name pyxenstored
echo "stop=$?"
"""
    try:
        out = run_private(script, tmp_path, private_dirs=("/var/run", "/etc/default"))
        listener.setblocking(False)
        ready = listener.recv(4096).decode()
    finally:
        listener.close()
    got = results(out.stdout)
    log = (tmp_path / "launch.out").read_text(errors="replace")
    context = f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}\nlaunch-xenstore:\n{log}"
    assert got.get("launch") == "0", context
    assert got["pid"].isdigit(), context
    if may_raise_limits():
        assert got["oom"] == "-500", context
    assert got["root"] == "", context
    assert got["stop"] == "0", context
    # The daemon (not the starter, which forked it) said READY=1, before the
    # starter returned: the datagram was waiting when the script was done.
    assert ready.split("\n") == ["READY=1", f"MAINPID={got['pid']}"]


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_command_line_serves_and_notifies(tmp_path: Path) -> None:
    """The unit's ExecStart, run as systemd would (Type=notify, main pid)."""
    require_tool("xenstore-read")
    require_namespace()
    unit = unit_settings(UNIT)
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    (command,) = unit["ExecStart"]
    argv = shlex.split(command)
    assert os.path.basename(argv[0]) == "pyxenstored"
    assert "--no-fork" in argv and "--pid-file" in argv
    pid_file = argv[argv.index("--pid-file") + 1]
    wrapper = write_wrapper(tmp_path)
    # systemd expands $XENSTORED_ARGS from the EnvironmentFile into words.
    line = shlex.join([str(wrapper), *argv[1:]]).replace("'$XENSTORED_ARGS'", HOST_ARGS)
    notify = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(60)
    mkdirs = "\n".join(
        shlex.join(shlex.split(pre)) for pre in unit.get("ExecStartPre", []) if "mkdir" in pre
    )
    script = f"""
{mkdirs}
NOTIFY_SOCKET={notify} {line} 2>"$TMP/daemon.err" &
main=$!
echo "main=$main"
n=0
while [ $n -lt 100 ] && ! xenstore-read -s / >/dev/null 2>&1; do n=$((n+1)); sleep 0.1; done
echo "pid=$(cat {pid_file})"
echo "root=$(xenstore-read -s /)"
kill -TERM $main
wait $main
echo "exit=$?"
echo "left=$(ls {pid_file} /var/run/xenstored/socket 2>/dev/null)"
"""
    try:
        out = run_private(script, tmp_path)
        ready = listener.recv(4096).decode()
    finally:
        listener.close()
    got = results(out.stdout)
    context = f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    # No fork: the process systemd started is the daemon and its main pid.
    assert got["pid"] == got["main"], context
    assert got["root"] == "", context
    assert ready.split("\n") == ["READY=1", f"MAINPID={got['main']}"]
    assert got["exit"] == "0" and got["left"] == "", context


def test_root_default_socket_is_libxenstores(tmp_path: Path) -> None:
    """As root, with no run dir given, where every libxenstore client looks,
    and the project's own client finds it there with no configuration."""
    require_tool("xenstore-read")
    require_namespace()
    wrapper = write_wrapper(tmp_path)
    client = (
        f"import sys; sys.path.insert(0, {str(REPO / 'src')!r});"
        "from pyxenstored.client import Client;"
        "xs = Client.connect_socket(timeout=10); xs.write('/own', b'client');"
        "print('found=' + xs.transport.path)"
    )
    script = f"""
{wrapper} -F /run/xenstored.pid >"$TMP/start.out"
echo "start=$?"
echo "printed=$(cat "$TMP/start.out")"
{sys.executable} -c "{client}"
echo "own=$(xenstore-read /own)"
kill -TERM $(cat /run/xenstored.pid)
"""
    out = run_private(script, tmp_path)
    got = results(out.stdout)
    context = f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert got.get("start") == "0", context
    assert got["printed"] == "XENSTORED_PATH=/var/run/xenstored/socket", context
    assert got["found"] == "/var/run/xenstored/socket", context
    assert got["own"] == "client", context
