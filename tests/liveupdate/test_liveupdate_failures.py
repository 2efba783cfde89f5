"""Live update sessions and failures: the old daemon serves on and says why.

CONTROL ``live-update`` texts are C's (``lu.c:do_control_lu``,
``do_lu_start``; docs/compat.md S31); the refusals this
daemon adds (check run of the successor, what a C target would lose) are
plain sentences in the ``-s`` reply.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.liveupdate.conftest import LuDaemon, write_successor
from tests.util import XEN_BIN

from pyxenstored.client import Client
from pyxenstored.stream import End, GlobalData, NodeData, encode_record, read_records, write_stream
from pyxenstored.wire import MsgType


def script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def assert_serves_on(d: LuDaemon, pid: int) -> None:
    assert d.alive() and d.proc.pid == pid
    assert not (d.rundir / "state_dump").exists()
    c = Client.connect_socket(d.socket, timeout=10)
    c.write("/still/here", "yes")
    assert c.read("/still/here") == b"yes"
    c.close()


def test_successor_that_cannot_start(lu_daemon: LuDaemon, tmp_path: Path) -> None:
    d = lu_daemon
    pid = d.proc.pid
    c = Client.connect_socket(d.socket, timeout=10)
    c.write("/before", "1")
    broken = script(tmp_path / "broken", "#!/bin/sh\n# pretends to be pyxenstored\nexit 3\n")
    done = d.live_update("-t", "5", program=broken)
    assert done.returncode == 3
    assert "Starting live update failed:" in done.stdout + done.stderr
    assert "New program refused the state" in done.stdout + done.stderr
    assert "status 3" in done.stdout + done.stderr
    assert_serves_on(d, pid)
    assert c.read("/before") == b"1"
    # xenstore-control sent -a after the failure: a new update works.
    done = d.live_update("-t", "5")
    assert done.returncode == 0, (done.stdout, done.stderr, d.output())
    assert c.read("/before") == b"1"


def test_exec_failure_keeps_the_old_daemon(lu_daemon: LuDaemon, tmp_path: Path) -> None:
    d = lu_daemon
    pid = d.proc.pid
    # Not pyxenstored (no check run), and exec fails: the interpreter is missing.
    bad = script(tmp_path / "bad-interp", "#!/nonexistent/interpreter\n")
    done = d.live_update("-F", "-t", "5", program=bad)
    assert done.returncode == 3
    assert "Error activating new binary." in done.stdout + done.stderr
    assert_serves_on(d, pid)


def test_successor_refuses_the_dump(lu_daemon: LuDaemon, tmp_path: Path) -> None:
    d = lu_daemon
    pid = d.proc.pid
    refusing = script(
        tmp_path / "refusing",
        "#!/bin/sh\n# a pyxenstored that finds fault\n"
        'echo "pyxenstored check-state: FAILED: record 7 (NODE_DATA), offset 0x1f0: nope"\n'
        "exit 1\n",
    )
    done = d.live_update("-t", "5", program=refusing)
    assert done.returncode == 3
    assert "record 7 (NODE_DATA), offset 0x1f0: nope" in done.stdout + done.stderr
    assert_serves_on(d, pid)


def test_corrupt_dump_is_refused_by_check_and_restore(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    # The C dump's tree without its connections (their descriptors are not ours),
    # cut in the middle of record 17.
    _, records = read_records(str(Path(__file__).parent.parent / "data" / "c417" / "basic.state"))
    kept = [GlobalData(-1, -1)] + [r for r in records if isinstance(r, (NodeData, End))]
    data = write_stream(kept, version=1)
    offsets = [16]
    for r in kept:
        offsets.append(offsets[-1] + len(encode_record(r, version=1)))
    dump = rundir / "state_dump"
    dump.write_bytes(data[: offsets[17] + 12])
    check = subprocess.run(
        [sys.executable, "-m", "pyxenstored", "--check-state", str(dump)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1
    assert check.stdout.startswith("pyxenstored check-state: FAILED")
    assert "record 17 (NODE_DATA)" in check.stdout and "offset 0x" in check.stdout
    restore = subprocess.run(
        [sys.executable, "-m", "pyxenstored", "--rundir", str(rundir), "-U"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert restore.returncode != 0
    assert "live update restore failed" in restore.stderr
    assert "record 17 (NODE_DATA)" in restore.stderr and "offset 0x" in restore.stderr
    # A missing state file is as clear.
    dump.unlink()
    restore = subprocess.run(
        [sys.executable, "-m", "pyxenstored", "--rundir", str(rundir), "-U"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert restore.returncode != 0 and "no state file" in restore.stderr


def test_check_state_accepts_a_real_c_dump() -> None:
    dump = Path(__file__).parent.parent / "data" / "c417" / "basic.state"
    check = subprocess.run(
        [sys.executable, "-m", "pyxenstored", "--check-state", str(dump)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("pyxenstored check-state: OK (63 records, 8 connections")


def test_sessions(lu_daemon: LuDaemon) -> None:
    d = lu_daemon
    a = Client.connect_socket(d.socket, timeout=10)
    b = Client.connect_socket(d.socket, timeout=10)
    prog = str(d.program)
    assert a.control("live-update", "-a") == "No live-update session active."
    assert a.control("live-update", "-f", "/nonexistent/file") == "File not accessible."
    plain = d.rundir.parent / "not-executable"
    plain.write_text("data\n")
    plain.chmod(0o644)
    assert a.control("live-update", "-f", str(plain)) == "File not executable."
    assert a.control("live-update", "-s") == "Not in live-update session."
    assert a.control("live-update", "-c", "x") == "Not in live-update session."
    assert a.control("live-update", "-f", prog) == "OK"
    # One session at a time, bound to its connection.
    assert b.control("live-update", "-f", prog) == "live-update session already active."
    assert b.control("live-update", "-c", "-N") == "Not in live-update session."
    assert b.control("live-update", "-s", "-t", "5") == "Not in live-update session."
    assert a.control("live-update", "-s", "-v", "3") == "Migration stream version not supported."
    for bad in (("-s", "-X"), ("-s", "-t"), ("-f",), ("-f", "a", "b"), ("-a", "x"), ("-b", "1")):
        with pytest.raises(Exception, match="EINVAL"):
            a.control("live-update", *bad)
    # -a may come from any connection and ends the session.
    assert b.control("live-update", "-a") == "OK"
    assert b.control("live-update", "-f", prog) == "OK"
    # The session's connection closing ends it.
    b.close()
    deadline = time.monotonic() + 5
    while True:
        reply = a.control("live-update", "-f", prog)
        if reply == "OK" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert reply == "OK"
    assert a.control("live-update", "-a") == "OK"
    a.close()


def test_transaction_start_held_during_a_session(lu_daemon: LuDaemon) -> None:
    d = lu_daemon
    a = Client.connect_socket(d.socket, timeout=10)
    b = Client.connect_socket(d.socket, timeout=10)
    assert a.control("live-update", "-f", str(d.program)) == "OK"
    req = b.submit(MsgType.TRANSACTION_START, b"\0")
    with pytest.raises(TimeoutError):
        b.collect(req, timeout=0.5)
    assert a.control("live-update", "-a") == "OK"
    tx = int(b.collect(req, timeout=5)[:-1])
    assert tx > 0
    b.request(MsgType.TRANSACTION_END, b"F\0", tx)


def test_waiting_for_transactions_and_cancel(lu_daemon: LuDaemon) -> None:
    d = lu_daemon
    pid = d.proc.pid
    a = Client.connect_socket(d.socket, timeout=10)
    b = Client.connect_socket(d.socket, timeout=10)
    tx = b.start_transaction()
    tx.write("/in-tx", "1")
    # Without -F: after the timeout, C's reason naming the connection's domain.
    assert a.control("live-update", "-f", str(d.program)) == "OK"
    reply = a.control("live-update", "-s", "-t", "1")
    assert reply.startswith("Domains with long running transactions:\nDomain 0: ")
    assert reply.endswith(" s")
    # The loop never blocked: b's transaction still works.
    assert tx.read("/in-tx") == b"1"
    # -a from another connection cancels a waiting -s.
    req = a.submit(MsgType.CONTROL, b"live-update\0-s\0-t\x0030\0")
    time.sleep(1.0)  # the daemon takes the -s before the -a below
    assert b.control("live-update", "-a") == "OK"
    assert a.collect(req, timeout=5) == b"Cancellation was requested\0"
    tx.commit()
    assert b.read("/in-tx") == b"1"
    assert d.proc.pid == pid and d.alive()


def test_c_target_refused_when_it_would_lose_state(lu_daemon: LuDaemon) -> None:
    """Towards the 4.17 daemon a depth watch and changed quota cannot go: refused without -F."""
    d = lu_daemon
    pid = d.proc.pid
    c = Client.connect_socket(d.socket, timeout=10)
    c.watch("/x", "deep", depth=2)
    c.set_quota("nodes", 77, domid=0)
    done = d.live_update("-t", "5", program=XEN_BIN / "xenstored")
    assert done.returncode == 3
    text = done.stdout + done.stderr
    assert "would lose" in text and 'depth 2 of watch "/x"' in text
    assert "quota nodes=77 of domain 0" in text
    assert_serves_on(d, pid)


def test_successor_script_helper(tmp_path: Path) -> None:
    """The launcher used by these tests is recognised as pyxenstored."""
    from pyxenstored.server.liveupdate import is_pyxenstored

    prog = write_successor(tmp_path / "p", tmp_path / "run", tmp_path / "dumps")
    assert is_pyxenstored(str(prog))
    assert not is_pyxenstored(str(XEN_BIN / "xenstored"))
    assert not is_pyxenstored(str(tmp_path / "missing"))


def test_version_1_to_pyxenstored_refuses_losses(lu_daemon: LuDaemon) -> None:
    """``-s -v 1`` (sent by our client: 4.17's xenstore-control never sends -v)."""
    d = lu_daemon
    c = Client.connect_socket(d.socket, timeout=10)
    c.watch("/v1", "deep", depth=1)
    assert c.control("live-update", "-f", str(d.program)) == "OK"
    reply = c.control("live-update", "-s", "-t", "5", "-v", "1")
    assert "would lose" in reply and "depth 1 of connection" in reply
    assert c.control("live-update", "-a") == "OK"
    assert_serves_on(d, d.proc.pid)


def test_transaction_age_counts_from_when_the_connection_last_had_none(
    lu_daemon: LuDaemon,
) -> None:
    """C's ta_start_time: an earlier, finished transaction does not make a new one old."""
    d = lu_daemon
    a = Client.connect_socket(d.socket, timeout=10)
    b = Client.connect_socket(d.socket, timeout=10)
    b.start_transaction().commit()
    time.sleep(4.0)
    tx = b.start_transaction()
    tx.write("/young", "1")
    assert a.control("live-update", "-f", str(d.program)) == "OK"
    reply = a.control("live-update", "-s", "-t", "1")
    # Waited for the timeout (1 s, checked about once a second): the open
    # transaction is 1-3 s old then, not the 5 s since the first one.
    first, line = reply.split("\n")
    assert first == "Domains with long running transactions:"
    seconds = int(line.removeprefix("Domain 0: ").removesuffix(" s"))
    assert 1 <= seconds < 4, reply
    tx.commit()
    assert b.read("/young") == b"1"
