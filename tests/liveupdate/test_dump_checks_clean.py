"""The project's own live-update dumps check clean: 0 errors, 0 warnings.

A daemon with everything a dump can carry -- a guest on its ring, open
transactions (clean, doomed, failed, with reads of absent nodes and
deletions) on a socket and on the ring, depth watches, per-domain and
global quota, features -- is live-updated (``-F``: the transactions go
along), and ``xenstore-stream check`` must find nothing in its dump.  What
pyxenstored keeps beyond the spec rides where the spec lets it (the
transaction marks of ``stream.txmarks``), and the new daemon commits the
transactions as the old one would have.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from tests.client.daemons import introduce_guest
from tests.liveupdate.conftest import LuDaemon, start_on_rings

from pyxenstored.client import Client
from pyxenstored.client.core import XsClientError
from pyxenstored.stream import DomainData, NodeData, read_records
from pyxenstored.stream.check import check_all
from pyxenstored.stream.txmarks import NODE_CHANGED, is_marks_name, parse_marks

HOME = "/local/domain/5"


@pytest.fixture(params=["sim", "xen"])
def ring_lu(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[LuDaemon, Path]:
    """pyxenstored on either backend (``xen``: under the C reference's shim)."""
    return start_on_rings(tmp_path, request.param, "0\n5 1234\n")


def test_live_update_dump_with_everything_checks_clean(ring_lu: tuple[LuDaemon, Path]) -> None:
    d, ring_dir = ring_lu
    try:
        dom0 = Client.connect_socket(d.socket, timeout=20)
        dom0.set_feature(5, 6)  # (before the introduction, as a toolstack does)
        introduce_guest(dom0, str(ring_dir), 5, 7)
        guest = Client.connect_ring(str(ring_dir), 5, 7, timeout=20)
        # Quota, global and per domain.
        dom0.set_quota("nodes", 300, domid=5)
        dom0.control("quota", "set", "watches", "77")
        # Committed nodes; watches with and without a depth, relative ones.
        for i in range(4):
            dom0.write(f"/tree/{i}/leaf", b"v%d" % i)
        guest.write("data/x", b"guest data")
        dom0.watch("/tree", "t-depth", depth=1)
        dom0.watch("@releaseDomain", "rel")
        guest.watch("data", "g-depth", depth=2)
        guest.watch("data", "g-plain")
        # A clean transaction: reads, writes, a node read while absent, a deletion.
        clean = dom0.start_transaction()
        assert clean.read("/tree/0/leaf") == b"v0"
        clean.write("/tree/new/deep", b"created")
        clean.rm("/tree/2")
        with pytest.raises(XsClientError):
            clean.read("/absent")
        # A doomed one: what it read changes outside.
        doomed = dom0.start_transaction()
        assert doomed.read("/tree/3/leaf") == b"v3"
        doomed.write("/tree/1/leaf", b"from-doomed")
        dom0.write("/tree/3/leaf", b"outside")
        # A failed one: the guest's transaction-nodes quota runs out inside it.
        dom0.set_quota("transaction-nodes", 2, domid=5)
        failed = guest.start_transaction()
        with pytest.raises(XsClientError, match="ENOSPC"):
            for i in range(4):
                failed.write(f"data/z{i}", b"z")
        dom0.set_quota("transaction-nodes", 1024, domid=5)
        # And an ordinary one on the ring.
        plain = guest.start_transaction()
        plain.write("data/w", b"tx-w")
        time.sleep(1.2)  # -F -t 1: transactions older than a second go along
        done = d.live_update("-F", "-t", "1")
        assert done.returncode == 0, (done.stdout, done.stderr, d.output())

        (dump,) = d.dump_files()
        diags, summary = check_all(str(dump))
        assert [str(x) for x in diags] == []
        assert summary.errors == summary.warnings == 0
        out = subprocess.run(
            ["xenstore-stream", "check", str(dump)], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0 and " 0 errors, 0 warnings" in out.stdout, out.stdout
        # Only the spec's access bits; the rest rides in the domains' quota entries.
        _, records = read_records(str(dump))
        assert all(r.access & ~3 == 0 for r in records if isinstance(r, NodeData) and r.conn_id)
        marks = [
            parse_marks(v)
            for r in records
            if isinstance(r, DomainData)
            for v in r.quota
            if is_marks_name(v.name)
        ]
        assert len(marks) == 4
        assert sum(m.failed for m in marks) == 1
        assert any(n & NODE_CHANGED for m in marks for n in m.nodes)

        # The new daemon: the same answers at commit as the old one would give.
        with pytest.raises(XsClientError, match="EAGAIN"):
            doomed.commit()
        with pytest.raises(XsClientError, match="ENOMEM"):
            failed.commit()
        clean.commit()
        plain.commit()
        assert dom0.read("/tree/new/deep") == b"created"
        assert not dom0.exists("/tree/2")
        assert dom0.read(f"{HOME}/data/w") == b"tx-w"
        assert dom0.read("/tree/1/leaf") == b"v1"
        guest.close()
        dom0.close()
    finally:
        d.stop()
