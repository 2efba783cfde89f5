"""tests/launcher.py itself: a daemon that cannot start is reported with what it said."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.launcher import LaunchError, pyxenstored_command, start_pyxenstored


def test_command_line_always_has_no_fork_and_the_backend() -> None:
    cmd = pyxenstored_command("/r", "-v", hypervisor="sim", ring_dir="/g", program=("pyx",))
    assert cmd == ["pyx", "-N", "--rundir", "/r", "--hypervisor", "sim", "-v", "--ring-dir", "/g"]


@pytest.mark.parametrize("logged", [False, True], ids=["pipes", "log-file"])
def test_a_failed_start_carries_the_daemons_words(tmp_path: Path, logged: bool) -> None:
    log = tmp_path / "daemon.log" if logged else None
    with pytest.raises(LaunchError) as info:
        start_pyxenstored(tmp_path / "run", "-Q", "bogus=1", log=log)
    assert "bogus" in str(info.value)
    assert not (tmp_path / "run" / "socket").exists()


def test_stop_reaps_and_reports_the_exit_status(tmp_path: Path) -> None:
    with start_pyxenstored(tmp_path / "run", log=tmp_path / "log") as daemon:
        assert daemon.alive()
        with daemon.connect() as xs:
            assert xs.read("/") == b""
    assert not daemon.alive()
    assert daemon.proc is not None and daemon.proc.returncode == 0
