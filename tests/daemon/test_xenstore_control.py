"""Xen 4.17's xenstore-control against the daemon."""

from __future__ import annotations

import subprocess

import pytest
from tests.launcher import Launched
from tests.util import XEN_BIN, require_tool

pytestmark = pytest.mark.clients


def control(daemon: Launched, *args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool(str(XEN_BIN / "xenstore-control"))
    return subprocess.run([tool, *args], env=daemon.env, capture_output=True, text=True, timeout=30)


def test_help_lists_every_command(daemon: Launched) -> None:
    out = control(daemon, "help")
    assert out.returncode == 0, out.stderr
    names = [
        line.split()[0] for line in out.stdout.splitlines() if line and not line.startswith(" ")
    ]
    assert names == [
        "check",
        "log",
        "live-update",
        "logfile",
        "memreport",
        "print",
        "quota",
        "quota-soft",
        "domain-state-save",
        "domain-state-restore",
        "help",
    ]


def test_quota_prints_settings(daemon: Launched) -> None:
    out = control(daemon, "quota")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Quota settings:"
    assert lines[1] == "nodes            :     1000 Nodes per domain"


def test_check_succeeds_after_some_work(daemon: Launched) -> None:
    tool = require_tool("xenstore-write")
    subprocess.run([tool, "/c/a", "1", "/c/b", "2"], env=daemon.env, check=True, timeout=30)
    out = control(daemon, "check")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("", "OK")


def test_log_switches_and_logfile(daemon: Launched) -> None:
    out = control(daemon, "log")
    assert out.stdout.splitlines()[:3] == ["Log switch settings:", "obj     : on", "io      : on"]
    trace = daemon.rundir / "trace.log"
    assert control(daemon, "logfile", str(trace)).returncode == 0
    require_tool("xenstore-write")
    subprocess.run(["xenstore-write", "/traced", "yes"], env=daemon.env, check=True, timeout=30)
    control(daemon, "log", "off")
    text = trace.read_text()
    assert "io: IN " in text and "WRITE (/traced yes)" in text
    assert control(daemon, "memreport").returncode == 0
    assert "connection" in trace.read_text()
