"""The old daemon's side of the check run: ``SuccessorCheck`` feeds a program and reads its verdict.

Fake successors (shell scripts) stand in for ``pyxenstored --check-state -``:
the verdict is read from their output as soon as they give it, their exit
ends the wait even if something they started keeps the output open, and
one that never answers is stopped at the timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from pyxenstored.migrate.check import CHECK_FAILED, CHECK_OK
from pyxenstored.server.liveupdate import SuccessorCheck


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "pyxenstored-fake"
    path.write_text("#!/bin/sh\n# pyxenstored\n" + body)
    path.chmod(0o755)
    return str(path)


def test_reads_everything_then_answers(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    checker = SuccessorCheck(script(tmp_path, f'cat > "{seen}"\necho "{CHECK_OK} (fake)"\n'))
    for i in range(50):
        checker.feed(b"%05d" % i * 5000)
    assert checker.result(timeout=60) is None
    assert seen.read_bytes() == b"".join(b"%05d" % i * 5000 for i in range(50))


def test_refusal_is_the_reason(tmp_path: Path) -> None:
    checker = SuccessorCheck(
        script(tmp_path, f'cat > /dev/null\necho "{CHECK_FAILED}: record 3: bad"\n')
    )
    checker.feed(b"x")
    assert checker.result(timeout=60) == "record 3: bad"


def test_exit_ends_the_wait_when_a_child_keeps_the_output(tmp_path: Path) -> None:
    # The background sleeper holds the pipe open far beyond the timeout given.
    pid_file = tmp_path / "sleeper"
    body = f'cat > /dev/null\nsleep 300 &\necho $! > "{pid_file}"\necho "{CHECK_OK}"\nexit 0\n'
    checker = SuccessorCheck(script(tmp_path, body))
    checker.feed(b"x")
    try:
        assert checker.result(timeout=60) is None
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_silent_program_times_out(tmp_path: Path) -> None:
    checker = SuccessorCheck(script(tmp_path, "cat > /dev/null\nexec sleep 300\n"))
    checker.feed(b"x")
    verdict = checker.result(timeout=0.5)
    assert verdict is not None and "did not finish" in verdict


def test_exit_without_verdict(tmp_path: Path) -> None:
    checker = SuccessorCheck(script(tmp_path, "cat > /dev/null\necho oops >&2\nexit 3\n"))
    verdict = checker.result(timeout=60)
    assert verdict is not None and "status 3" in verdict and "oops" in verdict


def test_descriptors_above_1024(tmp_path: Path) -> None:
    """A daemon with many connections: the check run's pipes land above select's limit."""
    import resource

    import pytest

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"hard limit on descriptors is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    spare: list[int] = []
    try:
        base = os.open(os.devnull, os.O_RDONLY)
        spare.append(base)
        while len(spare) < 1100:
            spare.append(os.dup(base))
        checker = SuccessorCheck(script(tmp_path, f'cat > /dev/null\necho "{CHECK_OK}"\n'))
        assert checker.proc.stdout is not None and checker.proc.stdout.fileno() > 1024
        checker.feed(b"x")
        assert checker.result(timeout=60) is None
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
