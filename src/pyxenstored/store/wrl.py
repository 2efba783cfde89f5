"""Write-rate limiting of unprivileged domains, as the C daemon does it (``domain.c``, ``wrl_*``).

Only while some transaction is open anywhere do writes cost anything: then
each node a guest writes or deletes outside a transaction costs one credit,
and so does a commit while other transactions are open.  Credits flow in
at :data:`RATE` per second, shared equally by the domains; a domain keeps
at most :data:`DOMAIN_BURST`, a global reserve takes the surplus up to
:data:`GLOBAL_BURST` and tops up domains that went below zero; a new domain
may borrow its first burst from the reserve (which may go
:data:`NEW_DOMAINS_DEBT` into debt for that).  A domain below zero is not
read until it is back at zero -- its requests wait in its ring.

Everything is in C's fixed point (1000 per credit) and whole milliseconds,
so the same history gives the same credits as there.  Pure logic: the
caller passes the clock (milliseconds) and acts on what it is told, and
may install :attr:`WriteRateLimit.trace` to get C's ``wrl:`` trace lines
(without the prefix).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("pyxenstored.store")

FACTOR = 1000  # fixed point: one credit
WRITE_COST = FACTOR
RATE = 200 * FACTOR  # per second, shared by all domains
DOMAIN_BURST = 10 * FACTOR
GLOBAL_BURST = 1000 * FACTOR
NEW_DOMAINS_DEBT = DOMAIN_BURST * 5  # the reserve's floor when new domains borrow
CREDIT_MAX = 1000 * 1000 * 1000  # saturation, so that sums cannot overflow C's ints
LOG_EVERY_S = 120  # "not in force recently" after this long without a delay


def _move(src: int, floor: int, dst: int, ceil: int) -> tuple[int, int]:
    """As much as possible from ``src`` to ``dst`` keeping ``src >= floor`` and ``dst <= ceil``."""
    amount = min(src - floor, ceil - dst)
    if amount > 0:
        return src - amount, dst + amount
    return src, dst


class _Account:
    __slots__ = ("domid", "credit", "stamp_ms", "delay_logged")

    def __init__(self, domid: int, now_ms: int) -> None:
        self.domid = domid
        self.credit = 0
        self.stamp_ms = now_ms
        self.delay_logged = False


class WriteRateLimit:
    """Credits of every introduced domain, and the global reserve."""

    __slots__ = ("_accounts", "reserve", "_last_warning_s", "_collecting", "trace")

    def __init__(self) -> None:
        self._accounts: dict[int, _Account] = {}
        self.reserve = 0
        self._last_warning_s = 0  # 0: no delay since the last "not in force" line
        self._collecting = False
        # Gets each of C's "wrl" trace lines (domain.c), when installed.
        self.trace: Callable[[str], None] | None = None

    def __contains__(self, domid: int) -> bool:
        return domid in self._accounts

    def credit(self, domid: int) -> int | None:
        """The domain's credit in fixed point (None for a domain without an account)."""
        account = self._accounts.get(domid)
        return None if account is None else account.credit

    def add_domain(self, domid: int, now_ms: int) -> None:
        """A domain is introduced: it borrows up to a burst from the reserve."""
        if domid in self._accounts:
            return
        account = _Account(domid, now_ms)
        self._accounts[domid] = account
        self.reserve, account.credit = _move(
            self.reserve, -NEW_DOMAINS_DEBT, account.credit, DOMAIN_BURST
        )

    def remove_domain(self, domid: int) -> None:
        """A domain goes: what it holds (up to a burst) returns to the reserve."""
        account = self._accounts.pop(domid, None)
        if account is not None:
            account.credit, self.reserve = _move(account.credit, 0, self.reserve, DOMAIN_BURST)

    def _refill(self, account: _Account, now_ms: int) -> None:
        elapsed = min(max(now_ms - account.stamp_ms, 0), CREDIT_MAX)
        # Whole milliseconds only, so that small steps add up without drift.
        gained = elapsed * RATE // (len(self._accounts) * 1000)
        credit = min(account.credit + gained, CREDIT_MAX)
        if credit < 0 and not self._collecting:
            # C brings every domain up to date on each pass of its main loop,
            # so their surplus is in the reserve by now: collect it first.
            account.credit = credit
            account.stamp_ms = now_ms
            self._collecting = True
            try:
                for other in self._accounts.values():
                    if other is not account:
                        self._refill(other, now_ms)
            finally:
                self._collecting = False
            credit = account.credit
        self.reserve, credit = _move(self.reserve, 0, credit, 0)  # back to zero first
        credit, surplus = _move(credit, DOMAIN_BURST, 0, CREDIT_MAX)
        surplus, self.reserve = _move(surplus, 0, self.reserve, GLOBAL_BURST)
        account.credit = credit
        account.stamp_ms = now_ms
        if self.trace is not None:
            self.trace(
                f"dom {account.domid:4d} {elapsed:6d} msec {credit:9d} credit "
                f" {self.reserve:9d} reserve {surplus:9d} discard\n"
            )

    def debit(self, domid: int, now_ms: int, count: int = 1) -> None:
        """``count`` writes of ``domid`` (one credit each) while transactions are open.

        One after the other, as C charges each node written: each first
        brings the credit up to date, so from the second on the reserve
        covers what the previous one took below zero.
        """
        account = self._accounts.get(domid)
        if account is None:
            return
        for _ in range(count):
            self._refill(account, now_ms)
            account.credit -= WRITE_COST
            if self.trace is not None:
                self.trace(f"domain {domid} credit={account.credit} (reserve={self.reserve})\n")
            if account.credit < 0:
                if not account.delay_logged:
                    account.delay_logged = True
                    log.warning("write rate limit: domain %d is affected", domid)
                elif not self._last_warning_s:
                    log.warning("write rate limit: rate limiting restarts")
                self._last_warning_s = now_ms // 1000

    def delay_ms(self, domid: int, now_ms: int) -> int:
        """0 when ``domid`` may be read now, else how long until its credit is back at zero."""
        account = self._accounts.get(domid)
        if account is None:
            return 0
        self._refill(account, now_ms)
        if account.credit >= 0:
            return 0
        # -credit / (RATE / domains), in milliseconds; at least one so that
        # the caller never spins on a zero wait.
        wait = -account.credit * 1000 * len(self._accounts) // RATE
        if self.trace is not None:
            self.trace(
                f"domain {domid} credit={account.credit} (reserve={self.reserve})"
                f" SLEEPING for {wait}\n"
            )
        return max(1, wait)

    def periodic(self, now_ms: int) -> None:
        """Once per loop pass: say when limiting has not been in force for a while."""
        last = self._last_warning_s
        if last and now_ms // 1000 - last > LOG_EVERY_S:
            log.warning("write rate limit: not in force recently")
            self._last_warning_s = 0
