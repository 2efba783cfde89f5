"""Domain records: what the store knows about one domid.

A record exists for every domain the store has reason to know (introduced
domains, node owners, domains named in permissions, targets of the quota and
feature requests; ``domain.c:find_or_alloc_existing_domain``).  It carries
the domain's features, its quota
(copied from the global defaults when the record is created) and its usage
counters with the maxima seen.

Which domains exist is the hypervisor's to say, at the moment the store asks
(:class:`DomainOracle`): a domain's creation is announced to nobody, so a
list kept from an earlier look could be wrong.
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


class DomainFacts(Protocol):
    """What the hypervisor says about one existing domain."""

    @property
    def unique_id(self) -> int:
        """Given by Xen at creation, never reused within a boot (0: unknown)."""
        ...

    @property
    def shutdown(self) -> bool: ...

    @property
    def dying(self) -> bool:
        """Xen is destroying it."""
        ...


class DomainOracle(Protocol):
    """The hypervisor as the store asks it: C's ``xenmanage_get_domain_info``.

    Asked at the moment a request needs to know about a domain the store has
    no record of (SET_PERMS entries and owner, the quota and feature
    requests with a domid, INTRODUCE), never kept: the answer may change
    between two requests without anybody being told.  The server passes its
    hypervisor backend; tests pass a fake.
    """

    def domain_info(self, domid: int) -> DomainFacts | None:
        """The domain ``domid`` now, or None when there is no such domain."""
        ...


class _Exists:
    """The facts of a domain of a fixed list (no hypervisor): it exists, nothing more."""

    __slots__ = ()
    unique_id = 0
    shutdown = False
    dying = False


EXISTS: DomainFacts = _Exists()
