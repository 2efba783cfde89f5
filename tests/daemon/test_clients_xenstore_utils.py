"""Debian's xenstore-utils, unchanged, against the daemon through XENSTORED_PATH."""

from __future__ import annotations

import subprocess

import pytest
from tests.launcher import Launched
from tests.util import require_tool

pytestmark = pytest.mark.clients


def xs(
    daemon: Launched, tool: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    path = require_tool(tool)
    return subprocess.run(
        [path, *args], env=daemon.env, capture_output=True, text=True, timeout=30, check=check
    )


def test_write_read_ls(daemon: Launched) -> None:
    xs(daemon, "xenstore-write", "/vm/one", "hello", "/vm/two", "world")
    assert xs(daemon, "xenstore-read", "/vm/one").stdout == "hello\n"
    assert xs(daemon, "xenstore-read", "/vm/one", "/vm/two").stdout == "hello\nworld\n"
    out = xs(daemon, "xenstore-ls", "-p", "/vm").stdout.splitlines()
    assert [line.split(" = ")[0].strip() for line in out] == ["one", "two"]
    assert all(line.rstrip().endswith("(n0)") for line in out)
    assert '"hello"' in out[0]


def test_list_exists_rm(daemon: Launched) -> None:
    xs(daemon, "xenstore-write", "/d/a", "1", "/d/b", "2", "/d/c", "3")
    assert xs(daemon, "xenstore-list", "/d").stdout.split() == ["a", "b", "c"]
    assert xs(daemon, "xenstore-exists", "/d/a").returncode == 0
    assert xs(daemon, "xenstore-exists", "/d/zz", check=False).returncode != 0
    xs(daemon, "xenstore-rm", "/d/b")
    assert xs(daemon, "xenstore-list", "/d").stdout.split() == ["a", "c"]
    failed = xs(daemon, "xenstore-read", "/d/b", check=False)
    assert failed.returncode != 0


def test_chmod_shows_in_ls(daemon: Launched) -> None:
    xs(daemon, "xenstore-write", "/perm/node", "x")
    xs(daemon, "xenstore-chmod", "/perm/node", "n0", "r5", "b7")
    line = xs(daemon, "xenstore-ls", "-p", "/perm").stdout
    assert line.rstrip().endswith("(n0,r5,b7)")


def test_relative_paths_resolve_under_domain_0(daemon: Launched) -> None:
    xs(daemon, "xenstore-write", "rel/key", "v")
    assert xs(daemon, "xenstore-read", "/local/domain/0/rel/key").stdout == "v\n"


def test_watch_reports_changes(daemon: Launched) -> None:
    path = require_tool("xenstore-watch")
    xs(daemon, "xenstore-write", "/w/x", "0")
    proc = subprocess.Popen(
        [path, "-n", "3", "/w"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # The first line is the initial event of the registration.
        assert proc.stdout.readline() == "/w\n"
        xs(daemon, "xenstore-write", "/w/x", "1")
        assert proc.stdout.readline() == "/w/x\n"
        xs(daemon, "xenstore-rm", "/w/x")
        assert proc.stdout.readline() == "/w/x\n"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
