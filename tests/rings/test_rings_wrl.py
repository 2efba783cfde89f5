"""Write-rate limiting of a guest while a transaction is open, end to end.

C's ``domain.c``, the ``wrl_*`` functions; pyxenstored's differences are
docs/compat.md D05.

While dom0 holds a transaction open, each node the guest writes outside a
transaction costs a credit.  Credits come back at 200 per second for all
domains together, a domain holds at most 10, and a global reserve (at most
1000) collects the surplus and tops up domains in debt.  A daemon that has
run for a second or two has little in its reserve, so 600 rewrites of one
node run about 400 credits into debt: the daemon stops reading the guest's
ring until its credit is back, which takes about 2 s -- far longer than the
writes take unlimited.  Without an open transaction nothing is charged.

pyxenstored only: under the shim the C reference's guest polls its page, so
its unlimited rate is near the refill rate and the effect does not show in
a test of this size (and its warnings go to syslog).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.client.daemons import introduce_guest
from tests.launcher import Launched
from tests.rings.conftest import Guest, make_guest, ok

from pyxenstored.client import Client
from pyxenstored.wire import MsgType

WRITES = 600
# A lower bound from the refill rate (about 400 credits at 200/s is 2 s),
# with room for a fuller reserve: a physical limit, not a speed target.
AT_LEAST = 0.5


@pytest.fixture
def setup(py_daemon: Launched) -> Iterator[tuple[Launched, Client, Guest]]:
    assert py_daemon.ring_dir is not None
    with py_daemon.connect() as dom0:
        introduce_guest(dom0, py_daemon.ring_dir, 5, 7)
        guest = make_guest("client", py_daemon.ring_dir, 5, 7)
        try:
            yield py_daemon, dom0, guest
        finally:
            guest.close()


def rewrite(guest: Guest, count: int) -> float:
    started = time.monotonic()
    for i in range(count):
        ok(guest, MsgType.WRITE, b"rate\0%d" % i)
    return time.monotonic() - started


def log_of(daemon: Launched) -> str:
    return Path(daemon.log).read_text(errors="replace")


def test_guest_writes_wait_for_credits_while_a_transaction_is_open(
    setup: tuple[Launched, Client, Guest],
) -> None:
    daemon, dom0, guest = setup
    tx = dom0.start_transaction()
    tx.read("/tool/xenstored")  # nothing the guest changes: the commit succeeds
    elapsed = rewrite(guest, WRITES)
    assert "write rate limit: domain 5 is affected" in log_of(daemon)
    assert elapsed >= AT_LEAST, f"{WRITES} charged writes took {elapsed:.3f} s"
    tx.commit()
    assert dom0.read("/local/domain/5/rate") == b"%d" % (WRITES - 1)
    assert dom0.control("check") == "OK"


def test_wrl_trace_lines(setup: tuple[Launched, Client, Guest], tmp_path: Path) -> None:
    # The "wrl" switch, turned on at run time, writes C's lines (domain.c).
    daemon, dom0, guest = setup
    trace = tmp_path / "trace"
    dom0.control("logfile", str(trace))
    dom0.control("log", "-io")
    dom0.control("log", "+wrl")
    tx = dom0.start_transaction()
    rewrite(guest, 20)
    tx.commit()
    lines = [line for line in trace.read_text().splitlines() if line.startswith("wrl: ")]
    debits = [line for line in lines if line.startswith("wrl: domain 5 credit=")]
    updates = [line for line in lines if line.startswith("wrl: dom    5 ")]
    assert len(debits) >= 20 and updates, lines
    assert all(line.endswith(" discard") for line in updates), updates
    dom0.control("log", "-wrl")
    size = trace.stat().st_size
    tx = dom0.start_transaction()
    rewrite(guest, 5)
    tx.commit()
    assert "wrl: " not in trace.read_text()[size:]


def test_no_open_transaction_no_charge(setup: tuple[Launched, Client, Guest]) -> None:
    daemon, dom0, guest = setup
    rewrite(guest, WRITES)
    assert "write rate limit" not in log_of(daemon)
    assert dom0.control("check") == "OK"
