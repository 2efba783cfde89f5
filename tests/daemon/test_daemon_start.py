"""Starting ``pyxenstored`` as xenstored starts: fork, pid file, readiness,
refusal of a second daemon, every option of the C daemons, --version."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.daemon.wireclient import READ, WRITE, call, connect
from tests.launcher import start_pyxenstored, start_reference
from tests.util import REPO, require, require_tool

import pyxenstored
from pyxenstored.cli.daemon import DaemonOptions, UsageError, parse_args

STOP_TIMEOUT = 20.0


def pyxenstored_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyxenstored", *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("XENSTORED_PATH", "XENSTORED_RUNDIR", "NOTIFY_SOCKET", "XS_SHIM_RINGDIR"):
        env.pop(name, None)
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``pyxenstored ARGS`` to completion (the starter, when it forks)."""
    return subprocess.run(
        pyxenstored_cmd(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env() if env is None else env,
    )


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive(pid):
        assert time.monotonic() < deadline, f"daemon {pid} did not stop"
        time.sleep(0.02)


@pytest.fixture
def background(tmp_path: Path) -> Iterator[list[int]]:
    """Pids of forked daemons a test started: killed at the end if still there."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_forks_once_listening_with_pid_file_written(tmp_path: Path, background: list[int]) -> None:
    run_dir = tmp_path / "run"
    pid_file = tmp_path / "xenstored.pid"
    out = run("--rundir", str(run_dir), "--pid-file", str(pid_file))
    assert out.returncode == 0, out.stderr
    # When the command returns, the pid file names the daemon and it answers.
    pid = int(pid_file.read_text())
    background.append(pid)
    assert out.stdout == f"XENSTORED_PATH={run_dir / 'socket'}\n"
    assert call(connect(str(run_dir / "socket")), WRITE, b"/forked\0yes")[0] == WRITE
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().split(") ")[1].split()
    ppid, session = int(fields[1]), int(fields[3])
    assert ppid != os.getpid() and session != os.getsid(0)
    assert Path(f"/proc/{pid}/comm").read_text() == "pyxenstored\n"
    # Its standard descriptors left the starter's pipes: nothing holds them.
    assert os.readlink(f"/proc/{pid}/fd/1") == os.devnull
    assert os.readlink(f"/proc/{pid}/fd/2") == os.devnull
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert not (run_dir / "socket").exists()
    assert not pid_file.exists()


def test_failure_after_fork_is_reported_by_the_starter(tmp_path: Path) -> None:
    """The socket is made in the daemon, after the fork: its error and status
    still reach whoever ran the command."""
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("")
    out = run("--rundir", str(tmp_path / "run"), "--socket", str(not_a_socket))
    assert out.returncode == 1
    assert out.stderr.startswith(f"pyxenstored: cannot listen on {not_a_socket}: ")
    assert len(out.stderr.splitlines()) == 1
    assert not_a_socket.read_text() == ""


def test_notify_ready_is_sent_before_the_starter_returns(
    tmp_path: Path, background: list[int]
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify = tmp_path / "notify"
    listener.bind(str(notify))
    pid_file = tmp_path / "pid"
    try:
        out = run(
            "--rundir",
            str(tmp_path / "run"),
            "-F",
            str(pid_file),
            env=clean_env(NOTIFY_SOCKET=str(notify)),
        )
        assert out.returncode == 0, out.stderr
        background.append(int(pid_file.read_text()))
        listener.setblocking(False)
        message = listener.recv(4096).decode()  # already there: no wait
    finally:
        listener.close()
    assert message.split("\n") == ["READY=1", f"MAINPID={background[0]}"]


def test_notify_abstract_socket_address(tmp_path: Path) -> None:
    from pyxenstored.server.process import sd_notify

    name = f"pyxenstored-test-{os.getpid()}-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", {})
    assert not sd_notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1"})


def test_locked_pid_file_exit_is_silent_but_explained_under_v(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    d = start_pyxenstored(tmp_path / "run", "-F", str(pid_file))
    try:
        args = ("--rundir", str(tmp_path / "run2"), "-F", str(pid_file))
        quiet = run(*args)
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
        told = run(*args, "-v")
        assert told.returncode == 0 and told.stdout == ""
        assert f"pid file {pid_file} is locked by pid {d.pid}" in told.stderr
        assert not (tmp_path / "run2" / "socket").exists()
    finally:
        assert d.stop() == 0


def test_second_daemon_on_a_live_socket_is_refused(tmp_path: Path) -> None:
    d = start_pyxenstored(tmp_path / "run")
    try:
        call(connect(d.socket), WRITE, b"/first\0here")
        before = os.stat(d.socket).st_ino
        for extra in ((), ("-N",)):
            out = run("--rundir", str(tmp_path / "run"), *extra)
            assert out.returncode == 1
            assert out.stderr == (
                f"pyxenstored: a xenstored already listens on {d.socket}; "
                "not starting a second one\n"
            )
        # The first daemon keeps its socket and its clients.
        assert os.stat(d.socket).st_ino == before
        assert call(connect(d.socket), READ, b"/first\0") == (READ, b"here")
    finally:
        assert d.stop() == 0


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run_dir / "socket"))  # bound, never listening: a dead daemon's file
    stale.close()
    d = start_pyxenstored(run_dir)
    try:
        assert call(connect(d.socket), WRITE, b"/x\0y")[0] == WRITE
    finally:
        assert d.stop() == 0


@pytest.mark.reference
def test_refuses_the_socket_of_a_live_c_daemon(tmp_path: Path) -> None:
    run_dir = tmp_path / "ref"
    env = clean_env()
    with start_reference(run_dir, env=env, optional=True) as ref:
        out = run("-N", "--rundir", str(run_dir), env=env)
        assert out.returncode == 1
        assert "a xenstored already listens on" in out.stderr
        read = require_tool("xenstore-read")
        probe = subprocess.run(
            [read, "-s", "/"], env=dict(env, XENSTORED_PATH=ref.socket), timeout=30
        )
        assert probe.returncode == 0


# Every option of C 4.17 (tools/xenstore/xenstored_core.c) and of C master
# (tools/xenstored/core.c), in their short and long forms, with a value.
C_OPTIONS: list[list[str]] = [
    ["-D"],
    ["--no-domain-init"],
    ["-E", "100"],
    ["--entry-nb", "100"],
    ["-F", "{tmp}/pid"],
    ["--pid-file", "{tmp}/pid"],
    ["--event", "5"],
    ["--master-domid", "0"],
    ["-N"],
    ["--no-fork"],
    ["--priv-domid", "0"],
    ["-P"],
    ["--output-pid"],
    ["-S", "4096"],
    ["--entry-size", "4096"],
    ["-T", "{tmp}/trace"],
    ["--trace-file", "{tmp}/trace"],
    ["--trace-control=+io"],
    ["--trace-control", "-obj"],
    ["-t", "10"],
    ["--transaction", "10"],
    ["-A", "5"],
    ["--perm-nb", "5"],
    ["-M", "1024"],
    ["--path-max", "1024"],
    ["-Q", "nodes=100"],
    ["--quota", "memory=100000"],
    ["-q", "memory=50000"],
    ["--quota-soft", "memory=50000"],
    ["-w", "watch-event=10"],
    ["--timeout", "watch-event=10"],
    ["-R"],
    ["--no-recovery"],
    ["-I"],
    ["-Ion"],
    ["-Ioff"],
    ["--internal-db"],
    ["--internal-db=off"],
    ["-K"],
    ["--keep-orphans"],
    ["-V"],
    ["--verbose"],
    ["-W", "100"],
    ["--watch-nb", "100"],
    ["-U"],
    ["--live-update"],
    # getopt_long takes unambiguous prefixes of long options.
    ["--pid", "{tmp}/pid"],
]


@pytest.mark.parametrize("option", C_OPTIONS, ids=lambda o: " ".join(o))
def test_every_c_option_is_accepted(option: list[str], tmp_path: Path) -> None:
    argv = [part.format(tmp=tmp_path) for part in option]
    args = parse_args(argv)
    options = DaemonOptions.from_args(args, argv)
    assert options.argv == argv


@pytest.mark.parametrize("help_option", [["-h"], ["-H"], ["--help"], ["-Hxyz"]])
def test_help_forms_of_c(help_option: list[str]) -> None:
    out = run(*help_option)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: pyxenstored")


def test_options_without_meaning_start_and_are_logged(tmp_path: Path) -> None:
    d = start_pyxenstored(
        tmp_path / "run", "-V", "-D", "-R", "-Ioff", "--event", "3", "-P", "--no-such=1"
    )
    try:
        assert d.proc.stdout is not None
        assert d.proc.stdout.readline() == f"{d.pid}\n"  # -P: the pid, after the path
        assert call(connect(d.socket), WRITE, b"/ok\0")[0] == WRITE
    finally:
        assert d.stop() == 0
    err = d.output()
    assert "pyxenstored: ignoring unknown option --no-such=1 (as C does)" in err
    for what in ("-D:", "-R:", "-I:", "--event:"):
        assert f"accepted without effect: {what}" in err


def test_positional_argument_is_refused() -> None:
    with pytest.raises(UsageError, match="no arguments wanted"):
        parse_args(["-N", "extra"])
    out = run("-N", "extra")
    assert (out.returncode, out.stderr) == (2, "pyxenstored: no arguments wanted, got 'extra'\n")


def test_version() -> None:
    expected = f"pyxenstored {pyxenstored.__version__}\n"
    assert run("--version").stdout == expected
    script = require_tool("pyxenstored")
    out = subprocess.run(
        [script, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
    )
    assert out.stdout == expected


def test_help_names_migrate_and_the_exit_statuses() -> None:
    text = run("--help").stdout
    assert "pyxenstored migrate" in text
    assert "exit status:" in text
    for status in ("  0  ", "  1  ", "  2  "):
        assert status in text
    # Every option has a help text.
    from pyxenstored.cli.daemon import build_parser

    for action in build_parser()._actions:
        if action.option_strings and action.option_strings != ["-H"]:
            assert action.help, action.option_strings


def test_hypervisor_xen_unavailable_is_one_clear_line(tmp_path: Path) -> None:
    if os.path.exists("/dev/xen/evtchn"):
        pytest.skip("this machine runs on Xen")
    env = clean_env()
    env.pop("LD_PRELOAD", None)  # not under the reference's shim
    out = run("-N", "--rundir", str(tmp_path / "run"), "--hypervisor", "xen", env=env)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyxenstored: "), out.stderr
    assert "xen" in lines[0].lower() and "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "socket").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hypervisor", "sim"], "--hypervisor sim needs --ring-dir"),
        (["--hypervisor", "xen", "--ring-dir", "/tmp"], "--ring-dir is for the simulated"),
        (["--hypervisor", "none", "--ring-dir", "/tmp"], "--hypervisor none serves none"),
        (["--hypervisor", "bogus"], "invalid choice"),
    ],
)
def test_contradictory_backend_options(args: list[str], message: str, tmp_path: Path) -> None:
    out = run("-N", "--rundir", str(tmp_path / "run"), *args)
    assert out.returncode == 2
    assert message in out.stderr


def test_hypervisor_none_ignores_the_shim_ring_dir(tmp_path: Path) -> None:
    ring_dir = tmp_path / "rings"
    ring_dir.mkdir()
    env = clean_env(XS_SHIM_RINGDIR=str(ring_dir))
    d = start_pyxenstored(tmp_path / "run", "--hypervisor", "none", env=env)
    try:
        assert call(connect(d.socket), WRITE, b"/x\0y")[0] == WRITE
        assert not (ring_dir / "evtchn").exists()
    finally:
        assert d.stop() == 0
    auto = start_pyxenstored(tmp_path / "run2", env=env)  # auto: sim, from the variable
    try:
        assert (ring_dir / "evtchn").exists()
    finally:
        assert auto.stop() == 0


def test_background_daemon_live_updates_in_place(tmp_path: Path, background: list[int]) -> None:
    """A forked daemon replaced by a live update: same pid, pid file still
    held, state kept, the successor not forking again."""
    from tests.liveupdate.conftest import write_successor
    from tests.util import XEN_BIN

    control = XEN_BIN / "xenstore-control"
    require(control.exists(), "xen-utils-4.17 xenstore-control")
    run_dir = tmp_path / "run"
    pid_file = tmp_path / "pid"
    program = write_successor(tmp_path / "successor", run_dir, tmp_path / "dumps")
    started = subprocess.run(
        [str(program), "--rundir", str(run_dir), "-F", str(pid_file)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    pid = int(pid_file.read_text())
    background.append(pid)
    sock = str(run_dir / "socket")
    call(connect(sock), WRITE, b"/kept\0before")
    env = clean_env(XENSTORED_PATH=sock)
    done = subprocess.run(
        [str(control), "live-update", str(program)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert len(list((tmp_path / "dumps").iterdir())) == 1
    assert alive(pid) and int(pid_file.read_text()) == pid
    assert call(connect(sock), READ, b"/kept\0") == (READ, b"before")
    again = run("--rundir", str(tmp_path / "run2"), "-F", str(pid_file), "-v")
    assert again.returncode == 0 and f"locked by pid {pid}" in again.stderr
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert not pid_file.exists()
