"""End to end: ten consecutive live updates pyxenstored -> pyxenstored, clients connected.

Debian's ``xenstore-control`` drives each update; ``xenstore-watch``, a pyxs
client and the project's client stay connected throughout, and so does a
raw socket that left half a request in the daemon before the update.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from tests.liveupdate.conftest import LineReader, LuDaemon
from tests.util import require_module, require_tool

from pyxenstored.cli.stream_tool import load_state
from pyxenstored.client import Client
from pyxenstored.client.core import XsClientError
from pyxenstored.stream import ConnectionData, read_records
from pyxenstored.stream.diff import diff_states
from pyxenstored.wire import MsgType

UPDATES = 10
HEADER = struct.Struct("<IIII")


def raw_request(type_: int, req_id: int, payload: bytes) -> bytes:
    return HEADER.pack(type_, req_id, 0, len(payload)) + payload


def recv_message(sock: socket.socket, timeout: float = 20.0) -> tuple[int, int, bytes]:
    sock.settimeout(timeout)
    buf = b""
    while len(buf) < 16:
        chunk = sock.recv(16 - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    type_, req_id, _tx, length = HEADER.unpack(buf)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "connection closed"
        body += chunk
    return type_, req_id, body


def semantic_diff(a: Path, b: Path) -> list[str]:
    """``xenstore-stream diff`` lines about nodes, watches, quota and domains."""
    lines = list(diff_states(load_state(str(a)), load_state(str(b))))
    keep = ("node ", "watch ", "global quota", "global-only quota", "domain ")
    return [ln for ln in lines if ln[2:].startswith(keep) and "pending node" not in ln]


@pytest.mark.slow
def test_ten_live_updates_keep_every_client(lu_daemon: LuDaemon) -> None:
    require_module("pyxs")
    import pyxs

    d = lu_daemon
    env = d.client_env()
    pid = d.proc.pid
    watch_tool = require_tool("xenstore-watch")
    write_tool = require_tool("xenstore-write")

    own = Client.connect_socket(d.socket, timeout=30)
    other = Client.connect_socket(d.socket, timeout=30)
    third = Client.connect_socket(d.socket, timeout=30)  # never has a transaction open
    own.write("/e2e", "")
    own.watch("/e2e", "depth1", depth=1)
    assert own.next_event(5) is not None  # the initial event
    own.set_quota("nodes", 4321, domid=0)
    own.control("quota", "set", "watches", "99")
    quota_before = own.control("quota")
    features_before = own.get_feature(0)

    watcher = subprocess.Popen(
        [watch_tool, "/e2e"], env=env, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    lines = LineReader(watcher)
    lines.wait_for("/e2e")
    pyxs_client = pyxs.Client(unix_socket_path=d.socket)
    pyxs_client.connect()
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(d.socket)

    acked: dict[str, str] = {}
    try:
        for k in range(UPDATES):
            # Acknowledged writes from every client before the update.
            own.write(f"/e2e/own{k}", f"own-{k}")
            acked[f"/e2e/own{k}"] = f"own-{k}"
            pyxs_client.write(f"/e2e/pyxs{k}".encode(), f"pyxs-{k}".encode())
            acked[f"/e2e/pyxs{k}"] = f"pyxs-{k}"
            subprocess.run([write_tool, f"/e2e/tool{k}", f"tool-{k}"], env=env, check=True)
            acked[f"/e2e/tool{k}"] = f"tool-{k}"
            # Half a READ request stays in the daemon across the update.
            request = raw_request(MsgType.READ, 1000 + k, f"/e2e/own{k}\0".encode())
            raw.sendall(request[:20])
            # Every third update: transactions open across it (one clean, one doomed).
            tx_ok = tx_doomed = None
            if k % 3 == 0:
                tx_ok = own.start_transaction()
                tx_ok.write(f"/e2e/tx{k}", "in-tx")
                tx_doomed = other.start_transaction()
                tx_doomed.read(f"/e2e/own{k}")
                own.write(f"/e2e/own{k}", f"own-{k}")  # rewritten outside: doomed
            while own.pending_events():
                pass
            # A transaction start sent while the update runs: held, then answered.
            held_req = None
            update = subprocess.Popen(
                [
                    "/usr/lib/xen-4.17/bin/xenstore-control",
                    "live-update",
                    "-F",
                    "-t",
                    "1",
                    str(d.program),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            if k % 3 == 0:
                time.sleep(0.5)  # the session is open and -s waits for the transactions
                # Held back by the session (no transaction open on `third`):
                # it stays in the dumped input and the new daemon answers it.
                held_req = third.submit(MsgType.TRANSACTION_START, b"\0")
            out, err = update.communicate(timeout=60)
            assert update.returncode == 0, (out, err, d.output())
            assert d.alive() and d.proc.pid == pid
            raw.sendall(request[20:])
            assert recv_message(raw) == (MsgType.READ, 1000 + k, f"own-{k}".encode())
            if held_req is not None:
                tx_held = int(third.collect(held_req)[:-1])
                third.request(MsgType.TRANSACTION_END, b"F\0", tx_held)
            if tx_ok is not None and tx_doomed is not None:
                tx_ok.commit()
                acked[f"/e2e/tx{k}"] = "in-tx"
                with pytest.raises(XsClientError, match="EAGAIN"):
                    tx_doomed.commit()
            # Everything acknowledged is there, for every client.
            for path, value in acked.items():
                assert own.read(path) == value.encode()
            assert pyxs_client.read(f"/e2e/tool{k}".encode()) == f"tool-{k}".encode()
            # Events after the update: xenstore-watch and the depth watch.
            own.write(f"/e2e/after{k}", "x")
            own.write(f"/e2e/deep/a/b{k}", "x")
            lines.wait_for(f"/e2e/after{k}")
            lines.wait_for(f"/e2e/deep/a/b{k}")
            got = []
            while (ev := own.next_event(2)) is not None:
                got.append(ev.path)
                if ev.path == f"/e2e/after{k}":
                    break
            assert f"/e2e/after{k}" in got
            assert f"/e2e/deep/a/b{k}" not in got + [e.path for e in own.pending_events()]
            acked[f"/e2e/after{k}"] = "x"
            assert own.control("quota") == quota_before
            assert own.get_quota("nodes", domid=0) == 4321
            assert own.get_feature(0) == features_before
        assert own.control("check") == "OK"
    finally:
        watcher.kill()
        watcher.wait()
        raw.close()
        pyxs_client.close()
        own.close()
        other.close()
        third.close()

    dumps = d.dump_files()
    assert len(dumps) == UPDATES
    # The held TRANSACTION_START travelled as pending input of its connection,
    # and so did the half-sent READ.
    inputs = [
        r.in_data
        for dump in dumps
        for r in read_records(str(dump))[1]
        if isinstance(r, ConnectionData) and r.in_data
    ]
    assert any(HEADER.unpack_from(i)[0] == MsgType.TRANSACTION_START for i in inputs), inputs
    assert any(HEADER.unpack_from(i)[:2] == (MsgType.READ, 1000) for i in inputs), inputs
    for previous, current in zip(dumps, dumps[1:], strict=False):
        lines_diff = semantic_diff(previous, current)
        # Only the nodes written between the two updates differ.
        assert lines_diff, "each round writes nodes"
        assert all(ln.startswith(("+ node /e2e", "~ node /e2e")) for ln in lines_diff), lines_diff


def test_dump_file_is_private_and_removed(lu_daemon: LuDaemon) -> None:
    d = lu_daemon
    done = d.live_update("-t", "5")
    assert done.returncode == 0, (done.stdout, done.stderr, d.output())
    assert not (d.rundir / "state_dump").exists()
    (dump,) = d.dump_files()
    assert dump.exists()
    # The successor copied it (cp keeps the 0600 the daemon created it with).
    assert dump.stat().st_mode & 0o777 == 0o600
    out = subprocess.run(
        ["xenstore-stream", "check", str(dump)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
