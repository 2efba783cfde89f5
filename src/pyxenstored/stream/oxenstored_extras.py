"""oxenstored's extras carried inside a migration stream, under private quota names.

Three facts of an oxenstored dump have no field in the migration stream
(:class:`.OxenstoredExtras`): each domain's ring frame and its own event
channel port, and the DOM_EXC VIRQ port.  ``xenstore-stream convert`` keeps
them in the stream it writes, so that converting back gives the same dump,
using the stream's one extension point: quota names that are
implementation specific, which ``xenstore-migration.md`` allows and which a
reader that does not know them ignores.

* the DOM_EXC port: ``oxenstored:domexc-port`` among GLOBAL_QUOTA_DATA's
  global-only values;
* each domain's ring: ``oxenstored:ring-mfn-low``, ``oxenstored:ring-mfn-high``
  (the 64-bit frame in two 32-bit halves) and ``oxenstored:remote-port`` in
  the DOMAIN_DATA of that domain.

:func:`attach_extras` adds them to records, :func:`detach_extras` takes them
out again.  :data:`PRIVATE_QUOTA_NAMES` lists every oxenstored-specific name,
these and ``oxenstored-maxwatchevents``, for the checker (it lives in
:mod:`.oxenstored_quota`, beside that name).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from .oxenstored_convert import DomainRing, OxenstoredExtras
from .oxenstored_quota import (
    DOMEXC_PORT,
    PRIVATE_QUOTA_NAMES,
    REMOTE_PORT,
    RING_MFN_HIGH,
    RING_MFN_LOW,
)
from .records import DomainData, End, GlobalQuotaData, QuotaValue, Record

_RING_NAMES = (RING_MFN_LOW, RING_MFN_HIGH, REMOTE_PORT)

_U32 = 0xFFFFFFFF


def _ring_quota(ring: DomainRing) -> tuple[QuotaValue, ...]:
    mfn = ring.mfn & 0xFFFFFFFFFFFFFFFF  # two's complement: a nativeint may be negative
    return (
        QuotaValue(RING_MFN_LOW, mfn & _U32),
        QuotaValue(RING_MFN_HIGH, mfn >> 32),
        QuotaValue(REMOTE_PORT, ring.remote_port & _U32),
    )


def attach_extras(records: Iterable[Record], extras: OxenstoredExtras) -> list[Record]:
    """``records`` with ``extras`` added: in GLOBAL_QUOTA_DATA and in one DOMAIN_DATA per ring."""
    out: list[Record] = []
    domexc = () if extras.domexc_port is None else (QuotaValue(DOMEXC_PORT, extras.domexc_port),)
    rings = {ring.domid: ring for ring in extras.rings}
    for r in records:
        if isinstance(r, GlobalQuotaData) and domexc:
            r = replace(r, global_quota=r.global_quota + domexc)
            domexc = ()
        elif isinstance(r, DomainData) and r.domid in rings:
            r = replace(r, quota=r.quota + _ring_quota(rings.pop(r.domid)))
        elif isinstance(r, End):
            if domexc:
                out.append(GlobalQuotaData((), domexc))
            out += [DomainData(d, 0, _ring_quota(ring)) for d, ring in rings.items()]
            domexc, rings = (), {}
        out.append(r)
    return out


def _mfn(low: int, high: int) -> int:
    mfn = (high << 32) | low
    return mfn - (1 << 64) if mfn >> 63 else mfn


def detach_extras(records: Iterable[Record]) -> tuple[list[Record], OxenstoredExtras]:
    """``records`` without the extras' quota names, and the extras they carried.

    A GLOBAL_QUOTA_DATA or DOMAIN_DATA record left with nothing in it is
    taken out (it was there for the extras only).
    """
    out: list[Record] = []
    domexc: int | None = None
    rings: list[DomainRing] = []
    for r in records:
        if isinstance(r, GlobalQuotaData):
            kept = tuple(q for q in r.global_quota if q.name != DOMEXC_PORT)
            for q in r.global_quota:
                if q.name == DOMEXC_PORT:
                    domexc = q.value
            if not kept and not r.domain_quota and len(kept) != len(r.global_quota):
                continue
            r = replace(r, global_quota=kept)
        elif isinstance(r, DomainData):
            found = {q.name: q.value for q in r.quota if q.name in _RING_NAMES}
            if len(found) == len(_RING_NAMES):
                mfn = _mfn(found[RING_MFN_LOW], found[RING_MFN_HIGH])
                rings.append(DomainRing(r.domid, mfn, found[REMOTE_PORT]))
            if found:
                kept = tuple(q for q in r.quota if q.name not in _RING_NAMES)
                if not kept and not r.features:
                    continue
                r = replace(r, quota=kept)
        out.append(r)
    return out, OxenstoredExtras(domexc, tuple(rings))


__all__ = [
    "DOMEXC_PORT",
    "PRIVATE_QUOTA_NAMES",
    "REMOTE_PORT",
    "RING_MFN_HIGH",
    "RING_MFN_LOW",
    "attach_extras",
    "detach_extras",
]
