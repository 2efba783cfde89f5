"""Debian's test-xenstore (Xen 4.17) passes every test against the daemon."""

from __future__ import annotations

import re
import subprocess

import pytest
from tests.launcher import Launched
from tests.util import XEN_BIN, require_tool

pytestmark = pytest.mark.clients


def test_every_test_passes(daemon: Launched) -> None:
    tool = require_tool(str(XEN_BIN / "test-xenstore"))
    listed = subprocess.run(
        [tool, "-l"], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    names = [line.split(None, 1)[0] for line in listed.stdout.splitlines() if line.strip()]
    assert len(names) >= 10, listed.stdout
    out = subprocess.run(
        [tool, "-i", "5"], env=daemon.env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "failed" not in out.stdout, out.stdout
    timed = [line for line in out.stdout.splitlines() if re.search(r": avg: \d+ ns", line)]
    assert len(timed) == 12, out.stdout
    assert "Exhaustive transaction retries" not in out.stdout
