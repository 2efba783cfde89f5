"""Where the daemon listens and where clients look (pyxenstored.paths).

Root listens where libxenstore looks (/var/run/xenstored/socket, tested in a
private mount namespace by test_host_start.py); another user in a directory
of its own; the project's client tries both, so the README's
``Client.connect_socket()`` finds whichever daemon runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.launcher import start_pyxenstored
from tests.util import REPO

from pyxenstored.client.transport import default_socket_path, socket_candidates
from pyxenstored.paths import client_socket_candidates, daemon_rundir, user_rundir
from pyxenstored.server.process import live_daemon_on, socket_path

NOBODY = 65534


def test_daemon_rundir_rules() -> None:
    assert daemon_rundir({"XENSTORED_RUNDIR": "/r"}, uid=0) == "/r"
    assert daemon_rundir({"XENSTORED_RUNDIR": "/r"}, uid=1000) == "/r"
    assert daemon_rundir({"XDG_RUNTIME_DIR": "/run/user/0"}, uid=0) == "/var/run/xenstored"
    assert daemon_rundir({}, uid=0) == "/var/run/xenstored"
    assert daemon_rundir({"XDG_RUNTIME_DIR": "/x"}, uid=1000) == "/x/pyxenstored"
    assert daemon_rundir({}, uid=1000) == "/tmp/pyxenstored-1000"
    assert user_rundir({}, uid=7) == "/tmp/pyxenstored-7"


def test_daemon_socket_rules() -> None:
    env = {"XENSTORED_PATH": "/p/s", "XENSTORED_RUNDIR": "/r"}
    assert socket_path(None, None, env) == ("/r", "/p/s")
    assert socket_path("/d", None, env) == ("/d", "/d/socket")
    assert socket_path("/d", "/s", env) == ("/d", "/s")
    assert socket_path(None, None, {"XENSTORED_RUNDIR": "/r"}) == ("/r", "/r/socket")


def test_client_candidates_agree_with_the_daemon() -> None:
    assert client_socket_candidates({"XENSTORED_PATH": "/p/s", "XENSTORED_RUNDIR": "/r"}) == [
        "/p/s"
    ]
    assert client_socket_candidates({"XENSTORED_RUNDIR": "/r"}) == ["/r/socket"]
    assert client_socket_candidates({"XDG_RUNTIME_DIR": "/x"}, uid=1000) == [
        "/var/run/xenstored/socket",
        "/x/pyxenstored/socket",
    ]
    assert client_socket_candidates({}, uid=1000) == [
        "/var/run/xenstored/socket",
        "/tmp/pyxenstored-1000/socket",
    ]
    # The client's public names: libxenstore's first, then the per-user one.
    assert default_socket_path({}) == "/var/run/xenstored/socket"
    assert socket_candidates({"XENSTORED_PATH": "/p/s"}) == ["/p/s"]
    # Whatever a daemon of this user chooses by default, the client tries it.
    for env in ({}, {"XDG_RUNTIME_DIR": "/x"}):
        for uid in (0, 1000):
            rundir = daemon_rundir(env, uid)
            assert os.path.join(rundir, "socket") in client_socket_candidates(env, uid)


def test_live_daemon_probe(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "s")
    assert not live_daemon_on(path)  # no file
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(path)
        listening.listen()
        assert live_daemon_on(path)
    assert not live_daemon_on(path)  # the file of a closed socket: stale
    (tmp_path / "f").write_text("")
    assert not live_daemon_on(str(tmp_path / "f"))


def _unprivileged(src: Path) -> tuple[str, Callable[[], None] | None]:
    """An interpreter and a pre-exec hook that run code as a non-root user.

    ``src``: a copy of the package nobody can read (a checkout under /root
    or a 0700 temporary directory is not).
    """
    if os.geteuid() != 0:
        return sys.executable, None

    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    # The test's own interpreter may live where nobody may not read (/root);
    # Debian's python3 runs the daemon, which needs only the standard library.
    python = "/usr/bin/python3"
    probe = (
        subprocess.run(
            [python, "-c", "import sys, pyxenstored; assert sys.version_info >= (3, 11)"],
            env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
            preexec_fn=drop,
            capture_output=True,
            timeout=60,
            cwd="/",
        )
        if os.path.exists(python)
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("no python3 >= 3.11 that an unprivileged user can run with this checkout")
    return python, drop


@pytest.fixture
def readable_src() -> Iterator[Path]:
    """The package copied where any user may read it (as root), else the checkout's."""
    if os.geteuid() != 0:
        yield REPO / "src"
        return
    path = Path(tempfile.mkdtemp(prefix="pyxs-src-", dir="/tmp"))
    try:
        shutil.copytree(
            REPO / "src" / "pyxenstored",
            path / "pyxenstored",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for item in [path, *path.rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """An XDG_RUNTIME_DIR the unprivileged user owns (tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pyxs-xdg-", dir="/tmp"))
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_unprivileged_daemon_and_client_meet_without_configuration(
    runtime_dir: Path, readable_src: Path
) -> None:
    python, drop = _unprivileged(readable_src)
    env = {
        "PYTHONPATH": str(readable_src),
        "PATH": "/usr/bin:/bin",
        "XDG_RUNTIME_DIR": str(runtime_dir),
    }
    expected = runtime_dir / "pyxenstored" / "socket"
    # Ready once it printed XENSTORED_PATH=<expected>: found without any option.
    daemon = start_pyxenstored(
        expected.parent,
        program=(python, "-m", "pyxenstored"),
        rundir_option=False,
        sock=str(expected),
        env=env,
        preexec=drop,
        cwd="/",
    )
    try:
        client = subprocess.run(
            [
                python,
                "-c",
                "from pyxenstored.client import Client\n"
                "with Client.connect_socket(timeout=10) as xs:\n"
                "    xs.write('/vm/demo', b'hello')\n"
                "    print(xs.transport.path, xs.read('/vm/demo').decode())\n",
            ],
            env=env,
            preexec_fn=drop,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout == f"{expected} hello\n"
    finally:
        assert daemon.stop(timeout=20) == 0, daemon.output()
