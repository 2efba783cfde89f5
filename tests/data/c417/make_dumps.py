"""Regenerate the C 4.17 state dumps of this directory (see README.md).

Starts the C reference xenstored (``reference-xenstored`` of ``PYXENSTORED_PEERS``,
``tests/util.py``)
with two ring guests, fills it with nodes, permissions, watches and pending
bytes, saves ``xenstore-ls -p /`` and drives a live update; the state file the
old daemon wrote is copied here.  Needs the reference daemon and
xenstore-utils; run from the repository root:

    python tests/data/c417/make_dumps.py [PEERS-DIRECTORY]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.util import PEERS, peer_missing  # noqa: E402

HERE = Path(__file__).resolve().parent
HDR = struct.Struct("<IIII")
WATCH, INTRODUCE, WRITE, SET_PERMS = 4, 8, 11, 14


class RawClient:
    """A bare-bones socket client that can also leave a request half sent."""

    def __init__(self, path: str, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(path)
        self.rid = 0

    def send(self, mtype: int, payload: bytes) -> None:
        self.rid += 1
        self.sock.sendall(HDR.pack(mtype, self.rid, 0, len(payload)) + payload)

    def reply(self) -> tuple[int, bytes]:
        while True:
            head = self._recv(16)
            mtype, _rid, _tx, length = HDR.unpack(head)
            body = self._recv(length)
            if mtype != 15:  # skip watch events
                return mtype, body

    def _recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def call(self, mtype: int, payload: bytes) -> bytes:
        self.send(mtype, payload)
        rtype, body = self.reply()
        if rtype == 16:
            raise RuntimeError(f"xenstored error {body!r} for type {mtype} {payload!r}")
        return body


def main() -> None:
    peers = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else PEERS
    if not (peers / "reference-xenstored").exists():
        raise SystemExit(peer_missing(peers / "reference-xenstored"))
    sys.path.insert(0, str(peers))
    from ring_guest import RingClient  # type: ignore[import-not-found]

    ref = peers / "reference-xenstored"
    run = Path(tempfile.mkdtemp(prefix="c417dump-"))
    rings = run / "rings"
    rings.mkdir()
    env = dict(os.environ, XS_SHIM_RINGDIR=str(rings), XS_SHIM_DOMAINS="0,1,2")
    env["XENSTORED_PATH"] = str(run / "socket")
    subprocess.run([str(ref), "start", str(run)], env=env, check=True, capture_output=True)
    watcher = None
    try:

        def xs(tool: str, *args: str) -> str:
            done = subprocess.run(
                [f"xenstore-{tool}", *args], env=env, check=True, capture_output=True, text=True
            )
            return done.stdout

        # The toolstack's part: dom0 tree, domain directories, permissions.
        xs("write", "/tool/name", "c417 fixture", "/tool/empty", "", "/tool/long", "x" * 300)
        xs("write", "/vm/00000000-0000-0000-0000-000000000001/name", "guest1")
        xs("write", "/vm/00000000-0000-0000-0000-000000000002/name", "guest2")
        for dom in (1, 2):
            base = f"/local/domain/{dom}"
            xs("write", f"{base}/name", f"guest{dom}", f"{base}/domid", str(dom))
            xs("write", f"{base}/control/shutdown", "", f"{base}/device/vif/0/state", "1")
            xs("chmod", "-r", base, f"n{dom}", "r0")
            xs("write", f"/local/domain/0/backend/vif/{dom}/0/state", "2")
            xs("chmod", "-r", f"/local/domain/0/backend/vif/{dom}", "n0", f"r{dom}")
        xs("chmod", "/tool/name", "r0", "w1", "n2")

        sock = str(run / "socket")
        tool = RawClient(sock)
        tool.call(WRITE, b"/tool/binary\0" + b"\x00\x01\xfe\xff bin\0ary")
        tool.call(WRITE, b"/big/x\0" + b"0")
        for dom, port in ((1, 11), (2, 12)):
            tool.call(INTRODUCE, f"{dom}\0{1000 + dom}\0{port}\0".encode())

        # A guest on a ring: watches (absolute and relative), a write, then
        # events it does not read, then half a request.
        guest = RingClient(str(rings), 1)
        for path, token in ((b"/local/domain/1/control/shutdown", b"ctl"), (b"device", b"dev")):
            rtype, _ = guest.call(WATCH, path + b"\0" + token + b"\0")
            assert rtype == WATCH, rtype
        rtype, _ = guest.call(WRITE, b"data/x\0hello from dom1")
        assert rtype == WRITE, rtype
        for i in range(60):  # ~40 bytes each: more than the 1024-byte ring holds
            tool.call(WRITE, f"/local/domain/1/control/shutdown\0poweroff{i}".encode())
        guest.send_raw(HDR.pack(2, 99, 0, 20)[:10])
        guest2 = RingClient(str(rings), 2)
        rtype, _ = guest2.call(WATCH, b"@releaseDomain\0rel\0")
        assert rtype == WATCH, rtype

        # xenstore-watch stays connected with a watch on /tool.
        watcher = subprocess.Popen(
            ["xenstore-watch", "/tool"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # A socket client that stops reading: its watch events pile up in C.
        slow = RawClient(sock, rcvbuf=2048)
        slow.call(WATCH, b"/big\0bigwatch\0")
        for i in range(3000):
            tool.call(WRITE, f"/big/x\0{i}".encode())
        # A socket client with a request half sent.
        partial = RawClient(sock)
        partial.call(WATCH, b"/vm\0vmtok\0")
        partial.sock.sendall(HDR.pack(2, 7, 0, 8) + b"/too")
        time.sleep(0.5)

        (HERE / "basic.ls").write_text(xs("ls", "-p", "/"))
        done = subprocess.run(
            [str(ref), "live-update", str(run)], env=env, capture_output=True, text=True, timeout=60
        )
        print("live-update:", done.returncode, done.stdout.strip(), done.stderr.strip())
        dumps = sorted((run / "dumps").glob("state_dump.*"))
        if not dumps:
            raise SystemExit("no state dump was written")
        shutil.copy(dumps[0], HERE / "basic.state")
        print("wrote", HERE / "basic.state", (HERE / "basic.state").stat().st_size, "bytes")
    finally:
        if watcher is not None:
            watcher.kill()
            watcher.wait()
        subprocess.run([str(ref), "stop", str(run)], env=env, check=False)
        print("rundir", run)


if __name__ == "__main__":
    main()
