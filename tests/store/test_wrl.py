"""store/wrl.py: the C daemon's write-rate credits, figures worked out from domain.c's rules."""

from __future__ import annotations

import logging

import pytest
from tests.store.conftest import Client

from pyxenstored.store import Store, StoreConfig
from pyxenstored.store.wrl import (
    DOMAIN_BURST,
    FACTOR,
    GLOBAL_BURST,
    NEW_DOMAINS_DEBT,
    WriteRateLimit,
)
from pyxenstored.wire import MsgType


def test_new_domains_borrow_a_burst_from_the_reserve_down_to_its_floor() -> None:
    w = WriteRateLimit()
    for domid in range(1, 8):
        w.add_domain(domid, 0)
    # The reserve starts empty and may go 50 credits into debt: five domains
    # get their 10, the sixth and seventh nothing.
    assert [w.credit(d) for d in range(1, 8)] == [DOMAIN_BURST] * 5 + [0, 0]
    assert w.reserve == -NEW_DOMAINS_DEBT
    w.add_domain(1, 0)  # already there: nothing changes
    assert w.credit(1) == DOMAIN_BURST and w.reserve == -NEW_DOMAINS_DEBT


def test_debit_and_delay_until_the_credit_is_back() -> None:
    w = WriteRateLimit()
    w.add_domain(0, 0)
    w.add_domain(5, 0)
    assert w.credit(5) == DOMAIN_BURST and w.reserve == -2 * DOMAIN_BURST
    w.debit(5, 0, count=13)
    assert w.credit(5) == -3 * FACTOR
    # 200 credits/s shared by two domains: 100/s each, so 3 credits take 30 ms.
    assert w.delay_ms(5, 0) == 30
    assert w.delay_ms(5, 10) == 20  # 10 ms brought one credit
    assert w.credit(5) == -2 * FACTOR
    assert w.delay_ms(5, 30) == 0
    assert w.credit(5) == 0
    # Unknown domains (sockets, dom0 without an account) are never delayed.
    assert w.delay_ms(99, 0) == 0
    w.debit(99, 0)


def test_refill_caps_at_a_burst_and_the_surplus_fills_the_reserve() -> None:
    w = WriteRateLimit()
    w.add_domain(5, 0)  # borrows 10: reserve -10
    # One domain gets the whole rate: 200 credits/s.  After 1 s it would hold
    # 210; it keeps 10, the reserve takes the rest up to its own cap.
    assert w.delay_ms(5, 1000) == 0
    assert w.credit(5) == DOMAIN_BURST
    assert w.reserve == -DOMAIN_BURST + 200 * FACTOR
    w.delay_ms(5, 100_000)
    assert w.reserve == GLOBAL_BURST


def test_the_reserve_tops_up_a_domain_below_zero() -> None:
    w = WriteRateLimit()
    w.add_domain(5, 0)
    w.delay_ms(5, 1000)  # reserve now 190 credits
    # Fifteen nodes in one request are fifteen debits, as in C: the first ten
    # spend the burst, the eleventh goes to -1, and before each of the last
    # four the reserve brings the credit back to zero.
    w.debit(5, 1000, count=15)
    assert w.credit(5) == -FACTOR and w.reserve == 186 * FACTOR
    assert w.delay_ms(5, 1000) == 0  # the next look: the reserve covers the last one
    assert w.credit(5) == 0
    assert w.reserve == 185 * FACTOR


def test_idle_domains_surplus_reaches_the_reserve_before_it_lends() -> None:
    w = WriteRateLimit()
    w.add_domain(1, 0)
    w.add_domain(2, 0)  # both borrow their burst: reserve -20
    # 5 s at 100/s each: domain 1's surplus of 500 goes to the reserve (480).
    # Its burst pays ten debits; from the twelfth on the reserve tops it up,
    # and by then domain 2's 5 s are in the reserve too (C updates every
    # domain on each main-loop pass): 480 + 500 = 980, of which 589 are lent
    # during the request and the last one at the next look.
    w.debit(1, 5_000, count=600)
    assert w.credit(1) == -FACTOR and w.reserve == 391 * FACTOR
    assert w.delay_ms(1, 5_000) == 0
    assert w.credit(1) == 0 and w.credit(2) == DOMAIN_BURST
    assert w.reserve == 390 * FACTOR


def test_whole_milliseconds_only() -> None:
    w = WriteRateLimit()
    for domid in (1, 2, 3):
        w.add_domain(domid, 0)
    w.debit(1, 0, count=11)  # -1 credit
    # 3 domains: 200/3 credits per second each, i.e. 66 fixed-point units per ms.
    assert w.delay_ms(1, 1) == 14  # -934 units left: 934*3000/200000 = 14.01
    assert w.credit(1) == -FACTOR + 66


def test_trace_lines_as_c() -> None:
    # domain.c's trace_wrl formats: the credit update, each debit, a delay.
    lines: list[str] = []
    w = WriteRateLimit()
    w.trace = lines.append
    w.add_domain(5, 0)  # borrows a burst: reserve -10
    w.debit(5, 20, count=11)
    assert w.delay_ms(5, 20) == 5
    assert (
        lines[0] == "dom    5     20 msec     10000 credit      -6000 reserve         0 discard\n"
    )
    assert lines[1] == "domain 5 credit=9000 (reserve=-6000)\n"
    assert lines[21] == "domain 5 credit=-1000 (reserve=-6000)\n"
    assert lines[-1] == "domain 5 credit=-1000 (reserve=-6000) SLEEPING for 5\n"
    assert len(lines) == 2 * 11 + 2  # 11 x (update, debit), then update and delay


def test_remove_returns_at_most_a_burst() -> None:
    w = WriteRateLimit()
    w.add_domain(5, 0)
    w.remove_domain(5)
    assert 5 not in w and w.reserve == 0
    w.remove_domain(5)  # twice: harmless


def test_log_lines_as_c(caplog: pytest.LogCaptureFixture) -> None:
    w = WriteRateLimit()
    w.add_domain(5, 5_000)
    with caplog.at_level(logging.WARNING, logger="pyxenstored.store"):
        w.debit(5, 5_000, count=11)
        w.debit(5, 5_000)  # still limited: nothing new to say
        w.periodic(100_000)  # not yet 120 s
        w.periodic(200_000)
        w.debit(5, 200_000, count=50)
    assert [r.getMessage() for r in caplog.records] == [
        "write rate limit: domain 5 is affected",
        "write rate limit: not in force recently",
        "write rate limit: rate limiting restarts",
    ]


# --- the store's use of it -----------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def guest_store() -> tuple[Store, FakeClock, Client, Client, Client]:
    """dom0 (socket), domain 5 and domain 6 introduced, each with a home."""
    clock = FakeClock()
    store = Store(StoreConfig(existing_domids=frozenset({5, 6}), clock=clock))
    dom0 = Client(store, 1)
    store.connect(1, 0, is_socket=True)
    guests = []
    for conn_id, domid in ((2, 5), (3, 6)):
        dom0.ok(MsgType.INTRODUCE, b"%d\0" % domid + b"1\0" + b"%d\0" % (domid + 10))
        dom0.mkdir(f"/local/domain/{domid}")
        dom0.set_perms(f"/local/domain/{domid}", f"n{domid}")
        store.connect(conn_id, domid, is_socket=False)
        guests.append(Client(store, conn_id))
    return store, clock, dom0, guests[0], guests[1]


def test_guest_writes_cost_credits_only_while_a_transaction_is_open() -> None:
    store, clock, dom0, g5, _g6 = guest_store()
    start = store.wrl.credit(5)
    assert start == DOMAIN_BURST
    for i in range(20):
        g5.write(f"/local/domain/5/free{i}", b"x")
    assert store.wrl.credit(5) == start and store.read_delay(5) == 0.0
    tx = dom0.start()
    g5.write("/local/domain/5/a", b"1")  # a new node and its parent's child list: 2
    assert store.wrl.credit(5) == start - 2 * FACTOR
    g5.write("/local/domain/5/a", b"2")  # rewritten: 1
    g5.rm("/local/domain/5/a")  # the node and its parent: 2
    assert store.wrl.credit(5) == start - 5 * FACTOR
    g5.write("/local/domain/5/b/c/d", b"")  # three new nodes and the parent: 4
    assert store.wrl.credit(5) == start - 9 * FACTOR
    dom0.write("/local/domain/5/by-dom0", b"")  # privileged: free
    g5.err(MsgType.WRITE, b"/local/domain/0/x\0no")  # refused: nothing written, free
    assert store.wrl.credit(5) == start - 9 * FACTOR
    g5.write("/local/domain/5/e", b"")
    g5.write("/local/domain/5/f", b"")  # 13 credits spent: 3 in debt
    assert store.wrl.credit(5) == -3 * FACTOR
    # 200 credits/s shared by the 3 introduced domains (0, which is also the
    # store domain, 5 and 6): 3 credits take 45 ms.
    assert all(d in store.wrl for d in (0, 5, 6))
    assert store.read_delay(5) == pytest.approx(0.045)
    clock.now += 0.030
    assert store.read_delay(5) == pytest.approx(0.015)
    clock.now += 0.015
    assert store.read_delay(5) == 0.0
    dom0.end(tx)
    assert store.check() == []


def test_guest_writes_inside_its_transaction_and_commit_debits() -> None:
    store, clock, dom0, g5, g6 = guest_store()
    mine = g5.start()
    for i in range(12):
        g5.write(f"/local/domain/5/t{i}", b"", tx=mine)  # inside: free
    assert store.wrl.credit(5) == DOMAIN_BURST
    assert g5.end(mine).reply_type == MsgType.TRANSACTION_END  # alone: free
    assert store.wrl.credit(5) == DOMAIN_BURST
    mine = g5.start()
    other = g6.start()
    g5.write("/local/domain/5/u", b"", tx=mine)
    assert g5.end(mine).reply_type == MsgType.TRANSACTION_END  # another is open: 1
    assert store.wrl.credit(5) == DOMAIN_BURST - FACTOR
    g6.end(other, commit=False)
    assert store.open_transactions() == 0


def test_open_transactions_follow_disconnects_and_releases() -> None:
    store, _clock, dom0, g5, g6 = guest_store()
    g5.start()
    g5.start()
    g6.start()
    dom0.start()
    assert store.open_transactions() == 4
    store.disconnect(g5.conn_id)
    assert store.open_transactions() == 2
    dom0.ok(MsgType.RELEASE, b"6\0")
    assert store.open_transactions() == 1
    assert 6 not in store.wrl and 5 in store.wrl
    assert store.check() == []
    store.transactions_restored()  # counted again from the connections
    assert store.open_transactions() == 1
