"""Live update across implementations: C 4.17 -> pyxenstored -> C -> pyxenstored.

The C reference daemon (Debian's Xen 4.17 build under the LD_PRELOAD shim,
``reference-xenstored`` of ``PYXENSTORED_PEERS``) is started by its runner; every
update is driven by Debian's ``xenstore-control``.  C execs pyxenstored with
its own arguments plus ``-U`` (``-N -F <pidfile> -U``) and the environment
the runner gave it (``XENSTORED_RUNDIR``, ``LD_PRELOAD``); pyxenstored execs
C back with the same arguments and writes the version-1 stream C 4.17 reads.
Clients stay connected all along, and nothing is lost.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from tests.launcher import start_reference
from tests.liveupdate.conftest import LineReader, write_successor
from tests.util import (
    REFERENCE_RUNNER,
    XEN_BIN,
    require,
    require_module,
    require_peer,
    require_tool,
    shim_library,
)

from pyxenstored.client import Client


def _env(run: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XENSTORED_RUNDIR", None)
    env.pop("LD_PRELOAD", None)
    env["XENSTORED_PATH"] = str(run / "socket")
    return env


def _which_daemon(pid: int) -> str:
    exe = os.readlink(f"/proc/{pid}/exe")
    return "c" if exe.endswith("xenstored") else "py"


@pytest.mark.reference
def test_c_to_pyxenstored_to_c_to_pyxenstored(tmp_path: Path) -> None:
    require_peer()
    require((XEN_BIN / "xenstore-control").exists(), "xen-utils-4.17 xenstore-control")
    require_module("pyxs")
    import pyxs

    watch_tool = require_tool("xenstore-watch")
    run = tmp_path / "ref"
    env = _env(run)
    ref = start_reference(run, env=env, optional=True)
    pid = ref.pid
    successor = write_successor(tmp_path / "pyxenstored-successor", run, tmp_path / "dumps")
    watcher = None
    try:
        assert _which_daemon(pid) == "c"
        own = Client.connect_socket(str(run / "socket"), timeout=30)
        own.write("/ci/start", "from-c")
        own.watch("/ci", "own")
        assert own.next_event(5) is not None
        watcher = subprocess.Popen(
            [watch_tool, "/ci"], env=env, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        lines = LineReader(watcher)
        lines.wait_for("/ci")
        pyxs_client = pyxs.Client(unix_socket_path=str(run / "socket"))
        pyxs_client.connect()
        pyxs_client.write(b"/ci/pyxs", b"pyxs")
        # A client that sends header and payload in separate writes, with a pause
        # (pyxs does the former): the daemon must wait for the payload.
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(str(run / "socket"))
        acked = {"/ci/start": b"from-c", "/ci/pyxs": b"pyxs"}

        stages = [("py", str(successor)), ("c", str(XEN_BIN / "xenstored")), ("py", str(successor))]
        for n, (expect, program) in enumerate(stages):
            done = subprocess.run(
                [str(XEN_BIN / "xenstore-control"), "live-update", "-t", "10", program],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            log = (run / "xenstored.out").read_text(errors="replace")
            assert done.returncode == 0, (done.stdout, done.stderr, log)
            assert os.path.exists(f"/proc/{pid}"), log
            assert _which_daemon(pid) == expect, log
            # Everything acknowledged so far is there, for every client.
            for path, value in acked.items():
                assert own.read(path) == value
                assert pyxs_client.read(path.encode()) == value
            payload = b"/ci/start\0"
            raw.sendall(struct.pack("<IIII", 2, 100 + n, 0, len(payload)))
            time.sleep(0.2)
            raw.sendall(payload)
            raw.settimeout(10)
            reply = b""
            while len(reply) < 16 + len(b"from-c"):
                chunk = raw.recv(100)
                assert chunk, f"stage {n}: the daemon closed the connection"
                reply += chunk
            assert reply[16:] == b"from-c" and struct.unpack("<IIII", reply[:16])[1] == 100 + n
            own.write(f"/ci/stage{n}", expect)
            pyxs_client.write(f"/ci/pyxs{n}".encode(), b"x")
            acked[f"/ci/stage{n}"] = expect.encode()
            acked[f"/ci/pyxs{n}"] = b"x"
            lines.wait_for(f"/ci/stage{n}")
            lines.wait_for(f"/ci/pyxs{n}")
            seen = set()
            while (ev := own.next_event(5)) is not None:
                seen.add(ev.path)
                if f"/ci/pyxs{n}" in seen:
                    break
            assert {f"/ci/stage{n}", f"/ci/pyxs{n}"} <= seen
        assert own.control("check") in ("OK", "")
        # C's dump of the second step was read by pyxenstored, and ours by C.
        assert len(list((tmp_path / "dumps").iterdir())) == 2
        pyxs_client.close()
        own.close()
        raw.close()
    finally:
        if watcher is not None:
            watcher.kill()
            watcher.wait()
        ref.stop()


@pytest.mark.reference
def test_pyxenstored_to_c_to_pyxenstored(tmp_path: Path) -> None:
    """pyxenstored started like the runner starts C (C's options, its environment with
    the shim preloaded) hands over to C 4.17 and takes back over from it."""
    require_peer()
    require((XEN_BIN / "xenstored").exists(), "xen-utils-4.17 xenstored")
    installed = subprocess.run([str(REFERENCE_RUNNER), "install"], capture_output=True, text=True)
    require(installed.returncode == 0 and shim_library().exists(), "the xsshim LD_PRELOAD library")
    from tests.liveupdate.conftest import start_lu_daemon

    run = tmp_path / "run"
    daemon_env = dict(os.environ, XENSTORED_RUNDIR=str(run), LD_PRELOAD=str(shim_library()))
    daemon_env.setdefault("XS_SHIM_DOMAINS", "0")
    daemon_env.pop("XENSTORED_PATH", None)
    d = start_lu_daemon(
        tmp_path, "-N", "-F", str(run / "xenstored.pid"), env=daemon_env, rundir_option=False
    )
    try:
        pid = d.proc.pid
        own = Client.connect_socket(d.socket, timeout=30)
        own.write("/pc/start", "py")
        own.watch("/pc", "w")
        assert own.next_event(5) is not None
        for n, (expect, program) in enumerate(
            [("c", str(XEN_BIN / "xenstored")), ("py", str(d.program))]
        ):
            done = d.live_update("-t", "10", program=program)
            assert done.returncode == 0, (done.stdout, done.stderr, d.output())
            assert d.alive() and _which_daemon(pid) == expect, d.output()
            assert own.read("/pc/start") == b"py"
            own.write(f"/pc/stage{n}", expect)
            seen = set()
            while (ev := own.next_event(5)) is not None:
                seen.add(ev.path)
                if f"/pc/stage{n}" in seen:
                    break
            assert f"/pc/stage{n}" in seen
        own.close()
    finally:
        d.stop()
