"""Live update across oxenstored and pyxenstored (docs/migration.md).

The unit part needs nothing: oxenstored's dumps in tests/data/oxenstored
(written by the real oxenstored 4.17) are read, checked and written back;
the ``--live ... --help`` check is run as oxenstored runs it.  The end-to-end
part runs Debian's oxenstored under the shim (``reference-oxenstored``):
oxenstored -> pyxenstored -> oxenstored -> pyxenstored, with socket clients
and a ring guest carrying on, then refusals that leave the daemon serving.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.client.daemons import introduce_guest
from tests.launcher import start_oxenstored
from tests.liveupdate.conftest import LineReader
from tests.util import (
    REFERENCE_OXENSTORED,
    XEN_BIN,
    peer_missing,
    require,
    require_module,
    require_shim,
    require_tool,
)

from pyxenstored.client import Client, WatchEvent
from pyxenstored.client.ring import RingTransport
from pyxenstored.migrate import quota_values
from pyxenstored.migrate.oxenstored import (
    check_state,
    oxenstored_args,
    predecessor_of,
    quota_losses,
    read_state,
    write_state,
)
from pyxenstored.migrate.restore import RestoreError
from pyxenstored.store import StoreConfig
from pyxenstored.store import quota as q
from pyxenstored.stream import (
    GlobalQuotaData,
    QuotaValue,
    TransactionData,
    WatchDataExtended,
)
from pyxenstored.stream.oxenstored import OxenstoredExtras, OxenstoredQuota, parse_dump
from pyxenstored.wire import HEADER, RING_REQ_OFFSET, RING_REQ_PROD, MsgType

DATA = Path(__file__).resolve().parent.parent / "data" / "oxenstored"
OXENSTORED = XEN_BIN / "oxenstored"
HOME = "/local/domain/5"


# --- without the reference ---------------------------------------------------------------


def test_a_real_dump_is_read_and_restores() -> None:
    data = (DATA / "basic.db").read_bytes()
    state = read_state(data, OxenstoredQuota())
    restored = check_state(state)
    assert restored.connections == 6 and restored.nodes == 43
    assert state.predecessor == "/usr/lib/xen-4.17/bin/oxenstored"
    assert predecessor_of(data) == state.predecessor
    assert {r.domid: (r.mfn, r.remote_port) for r in state.extras.rings} == {
        0: (0, 1),
        1: (1001, 11),
        2: (1002, 12),
    }


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda d: d[: d.index(b"\nstore")] + b"\nstore,2f,zz,00\n", "line"),
        (lambda d: d + b"frobnicate,1\n", "line"),
        (lambda d: b"junk\n" + d, "not an oxenstored dump"),
    ],
)
def test_a_dump_that_cannot_be_taken_whole_is_refused(mutate: object, why: str) -> None:
    data = mutate((DATA / "basic.db").read_bytes())  # type: ignore[operator]
    with pytest.raises(RestoreError, match=why):
        read_state(data)


def test_only_oxenstored_options_are_handed_to_it() -> None:
    argv = ["--live", "--restart", "-N", "--no-fork", "--config-file", "/x", "-v", "--pid-file=/p"]
    assert oxenstored_args(argv) == ["--no-fork", "--config-file", "/x", "--pid-file", "/p"]


def test_what_oxenstored_cannot_take_is_named() -> None:
    state = read_state((DATA / "basic.db").read_bytes(), OxenstoredQuota())
    records = [r for r in state.records if not isinstance(r, GlobalQuotaData)]
    startup = StoreConfig().quota
    defaults = GlobalQuotaData(quota_values(startup))
    base = write_state([defaults, *records], state.extras, OxenstoredQuota(), startup)
    # The dump of a fresh pyxenstored's defaults: its memory quota is lost.
    assert any("quota memory=" in item for item in base.lost)
    values = [QuotaValue("nodes", 1000), QuotaValue("memory", 0), QuotaValue("watches", 100)]
    assert quota_losses([GlobalQuotaData(tuple(values))], OxenstoredQuota(), startup) == []
    extra = [
        TransactionData(1, 7),
        WatchDataExtended(1, "/tool", "t", 2),
        GlobalQuotaData((QuotaValue("nodes", 77),)),
    ]
    lost = write_state(
        [*records[:-1], *extra, records[-1]], state.extras, OxenstoredQuota(), startup
    ).lost
    assert "transaction 7 of connection 1" in lost
    assert any(item.startswith('depth 2 of watch "/tool"') for item in lost)
    assert any(item.startswith("quota nodes=77") for item in lost)
    # Nothing lost: the dump reads back as the same lines.
    again = write_state(state.records, state.extras, OxenstoredQuota(), q.QuotaTable())
    if not again.lost:
        assert parse_dump(again.data).lines


def test_a_guest_ring_without_its_frame_cannot_be_written() -> None:
    state = read_state((DATA / "basic.db").read_bytes(), OxenstoredQuota())
    out = write_state(state.records, OxenstoredExtras(1, ()), OxenstoredQuota(), q.QuotaTable())
    assert any("ring frame and port are not known" in item for item in out.lost)


def _help(dump: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pyxenstored", "--live", "--restart", "--no-fork"]
    argv += ["--config-file", "/nonexistent.conf", "--oxenstored-dump", str(dump), "--help"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_the_help_check_proves_the_dump_restores(tmp_path: Path) -> None:
    good = _help(DATA / "basic.db")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "accepts oxenstored's live update" in good.stdout
    bad = tmp_path / "db"
    bad.write_bytes((DATA / "basic.db").read_bytes() + b"dom,5,1\n")
    refused = _help(bad)
    assert refused.returncode == 1
    assert "cannot take oxenstored's dump" in refused.stdout
    assert _help(tmp_path / "absent").returncode == 0


# --- against the real oxenstored -------------------------------------------------------------


def _put_unannounced(guest: Client, data: bytes) -> None:
    """Put ``data`` in the guest's request queue without kicking the daemon."""
    transport = guest.transport
    assert isinstance(transport, RingTransport)
    page = transport.page
    prod = page.word(RING_REQ_PROD)
    start = prod % 1024
    assert start + len(data) <= 1024
    page.mem[RING_REQ_OFFSET + start : RING_REQ_OFFSET + start + len(data)] = data
    page.set_word(RING_REQ_PROD, prod + len(data))


class Ox:
    """oxenstored (then its successors) run by ``reference-oxenstored`` in ``run``."""

    def __init__(self, tmp: Path) -> None:
        require(REFERENCE_OXENSTORED.exists(), peer_missing(REFERENCE_OXENSTORED))
        require(OXENSTORED.exists(), "xen-utils-4.17 oxenstored")
        require_shim()
        self.run = tmp / "ox"
        self.rings = self.run / "rings"
        self.rings.mkdir(parents=True)
        self.successor = tmp / "pyxenstored-successor"
        src = Path(__file__).resolve().parents[2] / "src"
        self.successor.write_text(
            "#!/bin/sh\n# pyxenstored, on the Xen backend under the shim\n"
            f'exec env PYTHONPATH="{src}" PYXENSTORED_HYPERVISOR=xen "{sys.executable}"'
            ' -m pyxenstored "$@"\n'
        )
        self.successor.chmod(0o755)
        self.env = dict(
            os.environ, XS_SHIM_RINGDIR=str(self.rings), XS_SHIM_DOMAINS="0,5", XS_SHIM_DEBUG="1"
        )
        for name in ("XENSTORED_PATH", "XENSTORED_RUNDIR", "LD_PRELOAD"):
            self.env.pop(name, None)
        self.daemon = start_oxenstored(self.run, env=self.env, optional=True)
        self.socket = self.daemon.socket
        self.pid = self.daemon.pid
        self.client_env = self.daemon.env

    def which(self) -> str:
        return "ox" if os.readlink(f"/proc/{self.pid}/exe").endswith("oxenstored") else "py"

    def log(self) -> str:
        return self.daemon.output()

    def to_py(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REFERENCE_OXENSTORED), "live-update", str(self.run), str(self.successor)],
            env=self.client_env,
            capture_output=True,
            text=True,
            timeout=90,
        )

    def to_ox(self, *opts: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(XEN_BIN / "xenstore-control"), "live-update", *opts, str(OXENSTORED)],
            env=self.client_env,
            capture_output=True,
            text=True,
            timeout=90,
        )

    def ls(self) -> str:
        out = subprocess.run(
            ["xenstore-ls", "-f", "-p", "/"], env=self.client_env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        # /tool/xenstored names the daemon that runs (oxenstored writes it at
        # start); oxenstored lists the special nodes as children of the root
        # and its children in its own order (docs/compat.md D65).
        kept = (
            line
            for line in out.stdout.splitlines()
            if not line.startswith(("/tool/xenstored ", "/@"))
        )
        return "\n".join(sorted(kept))

    def stop(self) -> None:
        self.daemon.stop()


@pytest.mark.reference
def test_oxenstored_to_pyxenstored_and_back_twice(tmp_path: Path) -> None:
    watch_tool = require_tool("xenstore-watch")
    require_module("pyxs")
    import pyxs

    ox = Ox(tmp_path)
    watcher = None
    try:
        own = Client.connect_socket(ox.socket, timeout=30)
        # pyxs, a client on its own connection, kept open across every switch.
        pyxs_client = pyxs.Client(unix_socket_path=str(ox.socket))
        pyxs_client.connect()
        pyxs_client.write(b"/pyxs/start", b"pyxs")
        own.write("/ox/start", "ox")
        own.set_perms("/ox/start", ["b0", "r5"])
        own.watch("/ox", "own")
        assert own.next_event(5) == WatchEvent("/ox", "own")
        watcher = subprocess.Popen(
            [watch_tool, "/ox"], env=ox.client_env, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        lines = LineReader(watcher)
        lines.wait_for("/ox")
        introduce_guest(own, str(ox.rings), 5, 7)
        # The guest kicks the port oxenstored bound for it (the shim: 1 is
        # the DOM_EXC VIRQ, 2 dom0's, 3 the first guest's); every successor keeps it.
        guest = Client.connect_ring(str(ox.rings), 5, 3, timeout=30)
        guest.write("data/a", b"guest")
        guest.watch("data", "g")
        assert guest.next_event(10) == WatchEvent("data", "g")
        before = ox.ls()
        # Half a request in the ring, not announced (no kick): oxenstored
        # leaves it there, and its successor reads it from the page.
        payload = b"data/a\0"
        request = HEADER.pack(MsgType.READ, 4242, 0, len(payload)) + payload
        _put_unannounced(guest, request[:9])
        quota_py = None
        for n, expect in enumerate(["py", "ox", "py"]):
            done = ox.to_py() if expect == "py" else ox.to_ox("-t", "10")
            assert done.returncode == 0, (done.stdout, done.stderr, ox.log())
            assert ox.which() == expect, ox.log()
            assert ox.ls() == before, ox.log()
            if n == 0:
                guest.send_raw(request[9:])
                assert guest.collect(4242, 20) == b"guest"
            if expect == "py":
                quota = own.control("quota")
                assert quota_py is None or quota == quota_py
                quota_py = quota
            own.write(f"/ox/s{n}", expect)
            lines.wait_for(f"/ox/s{n}")
            assert own.next_event(10) == WatchEvent(f"/ox/s{n}", "own")
            own.write(f"{HOME}/data/s{n}", expect)
            assert guest.next_event(10) == WatchEvent(f"data/s{n}", "g")
            guest.write(f"g{n}", expect)
            assert own.read(f"{HOME}/g{n}") == expect.encode()
            assert pyxs_client.read(b"/pyxs/start") == b"pyxs"
            pyxs_client.write(f"/pyxs/s{n}".encode(), expect.encode())
            assert own.read(f"/pyxs/s{n}") == expect.encode()
            pyxs_client.delete(f"/pyxs/s{n}".encode())
            own.rm(f"/ox/s{n}")
            assert own.next_event(10) == WatchEvent(f"/ox/s{n}", "own")
            own.rm(f"{HOME}/data/s{n}")
            assert guest.next_event(10) == WatchEvent(f"data/s{n}", "g")
            own.rm(f"{HOME}/g{n}")
            lines.wait_for(f"/ox/s{n}")
        # The quota pyxenstored took over from oxenstored's configuration.
        assert quota_py is not None and "path-max" in quota_py
        assert len(list((ox.run / "dumps").iterdir())) == 2
        log = ox.log()
        # Each successor took the event channel over with VIRQ_DOM_EXC still
        # bound at oxenstored's port: only the first oxenstored bound it
        # (Xen allows one binding; pyxenstored's own handle binds none).
        assert log.count("[xsshim] xenevtchn_fdopen fd ") == 3
        assert log.count("[xsshim] bind_virq ") == 1
        guest.close()
        pyxs_client.close()
        own.close()
    finally:
        if watcher is not None:
            watcher.kill()
            watcher.wait()
        ox.stop()


@pytest.mark.reference
def test_refused_updates_leave_the_daemon_serving(tmp_path: Path) -> None:
    ox = Ox(tmp_path)
    try:
        own = Client.connect_socket(ox.socket, timeout=30)
        own.write("/r/a", "1")
        # A bad dump where oxenstored writes its own: the --help check fails
        # before oxenstored execs anything.
        db = ox.run / "run" / "xenstored" / "db"
        db.write_bytes(b"$xenstored-dump-format\nstore,2f,zz,00\n")
        done = ox.to_py()
        assert done.returncode != 0
        assert ox.which() == "ox"
        assert own.read("/r/a") == b"1"
        db.unlink()
        done = ox.to_py()
        assert done.returncode == 0, (done.stdout, done.stderr, ox.log())
        assert ox.which() == "py"
        # oxenstored's configuration names the pid file: pyxenstored writes it too.
        assert (ox.run / "oxenstored.pid").read_text().strip() == str(ox.pid)
        # A watch with a depth: oxenstored has none; refused, then forced.
        own.watch("/r", "deep", depth=1)
        assert own.next_event(5) == WatchEvent("/r", "deep")
        done = ox.to_ox("-t", "10")
        assert done.returncode != 0 and ox.which() == "py"
        assert 'would lose: depth 1 of watch "/r"' in done.stdout + done.stderr
        own.write("/r/b", "2")
        assert own.next_event(5) == WatchEvent("/r/b", "deep")
        done = ox.to_ox("-F", "-t", "10")
        assert done.returncode == 0, (done.stdout, done.stderr, ox.log())
        assert ox.which() == "ox" and own.read("/r/b") == b"2"
        assert "is lost" in ox.log()
        done = ox.to_py()
        assert done.returncode == 0, (done.stdout, done.stderr, ox.log())
        assert ox.which() == "py"
        # An open transaction: oxenstored cannot take it; pyxenstored says so and serves on.
        tx = own.start_transaction()
        done = ox.to_ox("-t", "1")
        assert done.returncode != 0
        assert "transaction" in done.stdout + done.stderr
        assert ox.which() == "py" and own.read("/r/a") == b"1"
        tx.abort()
        done = ox.to_ox("-t", "10")
        assert done.returncode == 0, (done.stdout, done.stderr, ox.log())
        assert ox.which() == "ox" and own.read("/r/a") == b"1"
        own.close()
    finally:
        ox.stop()


def test_a_dump_that_cannot_be_taken_falls_back_to_its_oxenstored(tmp_path: Path) -> None:
    """After the exec, a dump pyxenstored cannot take goes back to the oxenstored that wrote it."""
    seen = tmp_path / "argv"
    fake = tmp_path / "oxenstored"
    fake.write_text(f'#!/bin/sh\necho "$@" > "{seen}"\n')
    fake.chmod(0o755)
    line = b"store," + b"/tool/xenstored".hex().encode() + b"," + b"r0".hex().encode() + b","
    dump = tmp_path / "db"
    dump.write_bytes(
        b"$xenstored-dump-format\nglobal,-1\n" + line + str(fake).encode().hex().encode() + b"\n"
        b"watch,9,zz\n"
    )
    argv = [sys.executable, "-m", "pyxenstored", "--live", "--restart", "--no-fork"]
    argv += ["--config-file", "/nonexistent.conf", "--oxenstored-dump", str(dump)]
    argv += ["--rundir", str(tmp_path / "run"), "--hypervisor", "none"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "falling back to" in done.stderr
    assert seen.read_text().split() == [
        "--live",
        "--restart",
        "--no-fork",
        "--config-file",
        "/nonexistent.conf",
    ]
