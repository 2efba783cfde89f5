"""Domain records: what the store knows about one domid.

A record exists for every domain the store has reason to know (introduced
domains, node owners, domains named in permissions, targets of the quota and
feature requests; digest 6.5).  It carries the domain's features, its quota
(copied from the global defaults when the record is created) and its usage
counters with the maxima seen.
"""

from __future__ import annotations

from typing import Protocol

from .features import SUPPORTED_FEATURES
from .quota import QUOTA_COUNT, QuotaTable


class Domain:
    """Mutable per-domain state (slots, no dataclass: counters change all the time)."""

    __slots__ = (
        "domid",
        "introduced",
        "target",
        "features",
        "quota",
        "usage",
        "maxima",
        "unique_id",
        "generation",
        "shutdown",
        "soft_warned",
        "hard_warned",
        "mem_warned_at",
        "io_usage",
    )

    def __init__(self, domid: int, quota: QuotaTable, generation: int, unique_id: int = 0) -> None:
        self.domid = domid
        self.introduced = False
        self.target: int | None = None
        self.features = SUPPORTED_FEATURES
        self.quota = quota
        self.usage = [0] * QUOTA_COUNT
        self.maxima = [0] * QUOTA_COUNT
        self.unique_id = unique_id
        self.generation = generation
        self.shutdown = False
        self.soft_warned = False
        self.hard_warned = False
        # Clock reading of the last memory quota message (store/base.py, _memory_over).
        self.mem_warned_at = float("-inf")
        # The part of ``usage`` the server charges (queued output, outstanding
        # requests): the consistency check cannot recount it from the tree.
        self.io_usage = [0] * QUOTA_COUNT

    def add(self, index: int, delta: int) -> None:
        value = self.usage[index] + delta
        self.usage[index] = value
        if value > self.maxima[index]:
            self.maxima[index] = value

    def note_max(self, index: int, value: int) -> None:
        """Record a per-request value (path length, node size...) in the maxima."""
        if value > self.maxima[index]:
            self.maxima[index] = value


class DomainHooks(Protocol):
    """What the server does when a domain is introduced or released.

    ``introduce`` maps the ring and binds the event channel (raise
    ``wire.XsError`` on failure); ``release`` drops the domain's ring
    connection.  Without hooks the store only keeps its records.
    """

    def introduce(self, domid: int, gfn: int, evtchn: int) -> None: ...

    def release(self, domid: int) -> None: ...
