"""Debian's ``test-xenstore`` (Xen 4.17) passes against both daemons.

4.17's program exits 0 even when a test fails (xen.git
``tools/tests/xenstore/test-xenstore.c`` at 4.17), so the output is
checked too: every test line must carry a timing, none may say ``failed``.
"""

from __future__ import annotations

import os
import re
import subprocess

from tests.conformance.daemons import Daemon
from tests.util import require_tool

TEST_XENSTORE = "/usr/lib/xen-4.17/bin/test-xenstore"
_TIMED = re.compile(r"^.{10}: (avg: )?\d+ ns")


def test_test_xenstore_passes(any_daemon: Daemon) -> None:
    tool = require_tool(TEST_XENSTORE)
    listed = subprocess.run([tool, "-l"], capture_output=True, text=True, timeout=30)
    names = [line.split(":")[0].strip() for line in listed.stdout.splitlines() if ":" in line]
    assert len(names) >= 10
    env = dict(os.environ, XENSTORED_PATH=any_daemon.socket)
    out = subprocess.run([tool, "-i", "3"], env=env, capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stdout + out.stderr
    assert not [line for line in lines if "failed" in line], out.stdout
    timed = [line for line in lines if _TIMED.match(line)]
    assert len(timed) == len(names), out.stdout
    assert any_daemon.alive()
