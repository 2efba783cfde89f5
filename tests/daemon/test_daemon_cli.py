"""The ``pyxenstored`` command: paths, signals, pid file, readiness, options."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.daemon.wireclient import WATCH, WRITE, call, connect
from tests.launcher import client_env, start_pyxenstored
from tests.util import XEN_BIN, require_tool


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_removes_socket(tmp_path: Path, sig: int) -> None:
    d = start_pyxenstored(tmp_path / "run")
    assert call(connect(d.socket), WRITE, b"/x\0y")[0] == WRITE
    assert os.path.exists(d.socket)
    assert d.stop(sig) == 0
    assert not os.path.exists(d.socket)


def test_xenstored_path_env_is_honoured(tmp_path: Path) -> None:
    env = dict(os.environ)
    sock = tmp_path / "elsewhere.sock"
    env["XENSTORED_PATH"] = str(sock)
    env["XENSTORED_RUNDIR"] = str(tmp_path / "run")  # the socket: XENSTORED_PATH wins
    # Ready once it printed XENSTORED_PATH=<sock>, the socket the variable names.
    d = start_pyxenstored(tmp_path / "run", env=env, rundir_option=False, sock=str(sock))
    try:
        assert call(connect(d.socket), WRITE, b"/x\0y")[0] == WRITE
    finally:
        assert d.stop() == 0


def test_pid_file_written_locked_and_removed(tmp_path: Path) -> None:
    pid_file = tmp_path / "xenstored.pid"
    d = start_pyxenstored(tmp_path / "run", "-F", str(pid_file))
    try:
        assert pid_file.read_text() == f"{d.pid}\n"
        # A second daemon with the same pid file exits silently (as C does).
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "pyxenstored",
                "--rundir",
                str(tmp_path / "run2"),
                "-F",
                str(pid_file),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 0 and second.stdout == ""
        assert pid_file.read_text() == f"{d.pid}\n"
    finally:
        assert d.stop() == 0
    assert not pid_file.exists()


def test_notify_socket_gets_ready(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify = str(tmp_path / "notify")
    listener.bind(notify)
    listener.settimeout(20)
    env = client_env("unused")
    env.pop("XENSTORED_PATH")
    env["NOTIFY_SOCKET"] = notify
    d = start_pyxenstored(tmp_path / "run", env=env)
    try:
        message = listener.recv(4096).decode()
        assert message.split("\n") == ["READY=1", f"MAINPID={d.pid}"]
    finally:
        d.stop()
        listener.close()


def test_trace_file_records_requests(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    d = start_pyxenstored(tmp_path / "run", "-T", str(trace))
    try:
        sock = connect(d.socket)
        call(sock, WATCH, b"/traced\0tok\0")
        call(sock, WRITE, b"/traced\0v")
    finally:
        assert d.stop() == 0
    lines = trace.read_text().splitlines()
    assert any(" IN " in line and line.endswith("WRITE (/traced v)") for line in lines)
    assert any(" OUT " in line and line.endswith("WRITE (OK )") for line in lines)
    assert any(" OUT " in line and line.endswith("WATCH_EVENT (/traced tok )") for line in lines)


def test_quota_options_reach_the_store(tmp_path: Path) -> None:
    tool = require_tool(str(XEN_BIN / "xenstore-control"))
    d = start_pyxenstored(
        tmp_path / "run",
        "-E",
        "77",
        "-Q",
        "watches=9",
        "-q",
        "memory=1234",
        "-N",
        "--priv-domid",
        "0",
    )
    try:
        hard = subprocess.run(
            [tool, "quota"], env=d.env, capture_output=True, text=True, timeout=30
        ).stdout
        soft = subprocess.run(
            [tool, "quota-soft"], env=d.env, capture_output=True, text=True, timeout=30
        ).stdout
    finally:
        assert d.stop() == 0
    assert "nodes            :       77 Nodes per domain" in hard
    assert "watches          :        9 Watches per domain" in hard
    assert "memory           :     1234" in soft


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-U"], "state_dump"),  # a restore without a state dump
        (["-Q", "bogus=1"], "bogus"),
        (["-w", "nonsense"], "watch-event"),
        (["--log-level", "chatty"], "chatty"),
    ],
)
def test_bad_or_unsupported_options_fail_clearly(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pyxenstored", "--rundir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "socket").exists()


def test_help_mentions_c_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pyxenstored", "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    for option in ("--rundir", "--socket", "-T", "-F", "-E", "-Q", "--priv-domid", "-U"):
        assert option in out.stdout


def test_private_dir_check(tmp_path: Path) -> None:
    from pyxenstored.cli.daemon import _private_dir

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert _private_dir(str(private))
    assert not _private_dir(str(shared))
