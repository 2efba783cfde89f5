"""Regenerate the oxenstored 4.17 state dumps of this directory (see README.md).

Starts Debian's oxenstored through ``reference-oxenstored`` (in the peers
directory) with two ring guests, fills it with nodes, permissions and
watches, saves ``xenstore-ls -p /`` and drives two live updates (oxenstored
to itself): the first writes ``basic.db`` from the state built here, the
second writes the state the new oxenstored read back (identical, checked).
A second daemon, left as it starts, gives ``minimal.db``.  Needs the
reference runner, its shim and xenstore-utils; run from the repository root:

    python tests/data/oxenstored/make_dumps.py [OUTDIR]

``tests/stream/test_oxenstored_real.py`` calls :func:`generate` to compare
fresh dumps with the committed ones.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent.parent))
from tests.util import PEERS, REFERENCE_OXENSTORED  # noqa: E402

RUNNER = REFERENCE_OXENSTORED
HDR = struct.Struct("<IIII")
WATCH, INTRODUCE, WRITE, SET_PERMS, WATCH_EVENT, ERROR = 4, 8, 11, 14, 15, 16
#: Ports the shim hands out, in bind order: DOM_EXC VIRQ 1, dom0 2, then the
#: guests in INTRODUCE order.  A guest kicks oxenstored's (local) port.
GUEST_PORTS = {1: 3, 2: 4}


class RawClient:
    """A bare-bones xenstore socket client."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.rid = 0

    def call(self, mtype: int, payload: bytes) -> bytes:
        self.rid += 1
        self.sock.sendall(HDR.pack(mtype, self.rid, 0, len(payload)) + payload)
        while True:
            rtype, _rid, _tx, length = HDR.unpack(self._recv(16))
            body = self._recv(length)
            if rtype == WATCH_EVENT:
                continue
            if rtype == ERROR:
                raise RuntimeError(f"oxenstored error {body!r} for type {mtype} {payload!r}")
            return body

    def _recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out


def _open_fds(run: Path) -> int:
    pid = int((run / "oxenstored.pid").read_text())
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_fds(run: Path, at_most: int | None = None) -> int:
    """Wait until oxenstored has closed the connections of exited clients.

    The dump names socket connections by descriptor number, and oxenstored
    hands out the lowest free one: the fixture's own clients only get the
    same numbers every time once the short-lived ``xenstore-*`` clients'
    descriptors are closed.  Waits for the count to reach ``at_most`` (or
    to hold still for half a second) and returns it.
    """
    last, still = _open_fds(run), 0
    for _ in range(200):
        time.sleep(0.05)
        now = _open_fds(run)
        still = still + 1 if now == last else 0
        last = now
        if (at_most is not None and now <= at_most) or (at_most is None and still >= 10):
            return now
    raise RuntimeError(f"oxenstored still holds {last} descriptors (expected {at_most})")


def _fill(env: dict[str, str], sock: str, rings: Path, run: Path, baseline: int) -> list[object]:
    """Build the state; returns the clients that must stay connected."""
    from ring_guest import RingClient  # type: ignore[import-not-found]

    def xs(tool: str, *args: str) -> None:
        subprocess.run([f"xenstore-{tool}", *args], env=env, check=True, capture_output=True)

    xs("write", "/tool/name", "oxenstored fixture", "/tool/empty", "", "/tool/long", "x" * 2048)
    xs("write", "/vm/00000000-0000-0000-0000-000000000001/name", "guest1")
    for dom in (1, 2):
        base = f"/local/domain/{dom}"
        xs("write", f"{base}/name", f"guest{dom}", f"{base}/domid", str(dom))
        xs("write", f"{base}/control/shutdown", "", f"{base}/device/vif/0/state", "1")
        xs("chmod", "-r", base, f"n{dom}", "r0")
        xs("write", f"/local/domain/0/backend/vif/{dom}/0/state", "2")
        xs("chmod", "-r", f"/local/domain/0/backend/vif/{dom}", "n0", f"b{dom}")
    xs("chmod", "/tool/name", "r0", "w1", "n2", "b3")

    _settled_fds(run, at_most=baseline)
    tool = RawClient(sock)
    # Bytes the text format must survive: NUL, comma, newline, high bytes.
    tool.call(WRITE, b"/tool/binary\0" + b"\x00\x01,\n\xfe\xff bin\0ary")
    for dom in (1, 2):
        tool.call(INTRODUCE, f"{dom}\0{1000 + dom}\0{10 + dom}\0".encode())
    # Watches of a socket connection: special path, relative path, odd token.
    tool.call(WATCH, b"@introduceDomain\0intro\0")
    tool.call(WATCH, b"backend\0rel,tok\0")

    guest1 = RingClient(str(rings), 1, GUEST_PORTS[1])
    for path, token in ((b"/local/domain/1/control/shutdown", b"ctl"), (b"device", b"dev")):
        rtype, body = guest1.call(WATCH, path + b"\0" + token + b"\0")
        assert rtype == WATCH, (rtype, body)
    rtype, body = guest1.call(WRITE, b"data/x\0hello from dom1")
    assert rtype == WRITE, (rtype, body)
    guest2 = RingClient(str(rings), 2, GUEST_PORTS[2])
    rtype, body = guest2.call(WATCH, b"@releaseDomain\0rel\0")
    assert rtype == WATCH, (rtype, body)

    watcher = subprocess.Popen(
        ["xenstore-watch", "/tool"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.3)  # let it register and read its first event
    return [tool, guest1, guest2, watcher]


def _live_update(run: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(RUNNER), "live-update", str(run)], env=env, capture_output=True, text=True, timeout=90
    )
    if done.returncode != 0:
        raise RuntimeError(f"live update failed: {done.stdout} {done.stderr}")
    time.sleep(0.5)  # the new oxenstored reads the dump back


def _run(rich: bool) -> dict[str, bytes]:
    """One daemon: filled in (``rich``) or as it starts; two live updates."""
    sys.path.insert(0, str(PEERS))
    run = Path(tempfile.mkdtemp(prefix="oxdump-"))
    rings = run / "rings"
    rings.mkdir()
    env = dict(os.environ, XS_SHIM_RINGDIR=str(rings), XS_SHIM_DOMAINS="0,1,2")
    sock = str(run / "run" / "xenstored" / "socket")
    env["XENSTORED_PATH"] = sock
    subprocess.run([str(RUNNER), "start", str(run)], env=env, check=True, capture_output=True)
    keep: list[object] = []
    out: dict[str, bytes] = {}
    try:
        if rich:
            keep = _fill(env, sock, rings, run, _settled_fds(run))
        ls = subprocess.run(
            ["xenstore-ls", "-p", "/"], env=env, check=True, capture_output=True, text=True
        )
        out["ls"] = ls.stdout.encode()
        _live_update(run, env)
        _live_update(run, env)
        out["db"] = (run / "dumps" / "db.0").read_bytes()
        out["relive"] = (run / "dumps" / "db.1").read_bytes()
        return out
    finally:
        for obj in keep:
            if isinstance(obj, subprocess.Popen):
                obj.kill()
                obj.wait()
        subprocess.run([str(RUNNER), "stop", str(run)], env=env, check=False)
        for _ in range(50):  # it removes its pid file on the way out
            if not (run / "oxenstored.pid").exists():
                break
            time.sleep(0.1)
        shutil.rmtree(run, ignore_errors=True)


def generate() -> dict[str, bytes]:
    """Run both scenarios; file name -> contents, plus each ``*.relive``.

    ``basic.db``/``basic.ls``: the filled-in daemon; ``minimal.db``: a
    daemon as it starts (dom0 and the xenstore-control socket only).
    ``NAME.relive`` is the dump the second live update wrote, after
    oxenstored had read ``NAME.db`` back.
    """
    basic, minimal = _run(rich=True), _run(rich=False)
    return {
        "basic.db": basic["db"],
        "basic.ls": basic["ls"],
        "basic.relive": basic["relive"],
        "minimal.db": minimal["db"],
        "minimal.relive": minimal["relive"],
    }


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    files = generate()
    for name in ("basic.db", "basic.ls", "minimal.db"):
        (out / name).write_bytes(files[name])
        print("wrote", out / name, len(files[name]), "bytes")
    for name in ("basic", "minimal"):
        same = files[f"{name}.relive"] == files[f"{name}.db"]
        print(
            f"{name}: oxenstored wrote the restored state back",
            "identically" if same else "DIFFERENTLY",
        )


if __name__ == "__main__":
    main()
