"""oxenstored's quota settings and their C-family quota names.

oxenstored does not put its quota in its state dump: the limits come from
its configuration file (``oxenstored.conf``, read by
``xenstored.ml:parse_config`` through ``config.ml``) and apply to every
domain alike.  This module reads the quota keys of such a file (text in,
settings out: no I/O), writes them back, and maps them to and from the
names the migration stream's GLOBAL_QUOTA_DATA uses (the C daemon's
``GET_QUOTA``/``SET_QUOTA`` names, as ``store/quota.py`` has them).

The mapping, and where the two families count differently, is in
docs/oxenstored-format.md.  What has no place on the other side is returned
as a list of readable items; callers decide whether that is acceptable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

from .records import QuotaValue

#: An oxenstored-only setting carried in GLOBAL_QUOTA_DATA under an
#: implementation-specific name (the spec allows them; other readers
#: ignore names they do not know).
OX_MAXWATCHEVENTS = "oxenstored-maxwatchevents"
#: What an oxenstored dump holds that the stream has no field for, carried
#: under private names by ``xenstore-stream convert`` (:mod:`.oxenstored_extras`).
DOMEXC_PORT = "oxenstored:domexc-port"
RING_MFN_LOW = "oxenstored:ring-mfn-low"
RING_MFN_HIGH = "oxenstored:ring-mfn-high"
REMOTE_PORT = "oxenstored:remote-port"
#: Every quota name with an oxenstored-only meaning (the checker knows them).
PRIVATE_QUOTA_NAMES = frozenset(
    {OX_MAXWATCHEVENTS, DOMEXC_PORT, RING_MFN_LOW, RING_MFN_HIGH, REMOTE_PORT}
)

_U32_MAX = 0xFFFFFFFF
_OCAML_INT = re.compile(r"[-+]?[0-9]+")


@dataclass(slots=True, frozen=True)
class OxenstoredQuota:
    """The quota keys of ``oxenstored.conf``, with oxenstored's built-in defaults.

    ``activate`` is ``quota-activate`` (off: no node, size or watch limit;
    the transaction limit stays).  ``path_max``'s built-in default is 2048
    (``define.ml``); the configuration file Xen ships sets 1024.
    """

    activate: bool = True
    maxentity: int = 1000
    maxsize: int = 2048
    maxwatch: int = 100
    transaction: int = 10
    maxrequests: int = 1024
    maxoutstanding: int = 1024
    maxwatchevents: int = 1024
    path_max: int = 2048


#: ``oxenstored.conf`` key -> field of :class:`OxenstoredQuota`.
CONFIG_KEYS: dict[str, str] = {
    "quota-activate": "activate",
    "quota-maxentity": "maxentity",
    "quota-maxsize": "maxsize",
    "quota-maxwatch": "maxwatch",
    "quota-transaction": "transaction",
    "quota-maxrequests": "maxrequests",
    "quota-maxoutstanding": "maxoutstanding",
    "quota-maxwatchevents": "maxwatchevents",
    "quota-path-max": "path_max",
}
_KEY_OF_FIELD = {f: k for k, f in CONFIG_KEYS.items()}


def _set(quota: OxenstoredQuota, name: str, value: int) -> OxenstoredQuota:
    changes: dict[str, Any] = {name: value}
    return replace(quota, **changes)


def parse_config(text: str) -> tuple[OxenstoredQuota, list[str]]:
    """The quota settings of an ``oxenstored.conf`` text and the problems found.

    Lines as ``config.ml:parse_line`` reads them: blanks trimmed, empty
    lines and ``#`` comments skipped, ``key = value`` split at the first
    ``=``; a later key wins.  Keys other than the quota ones are not looked
    at.  A value oxenstored could not read leaves the setting as it was
    (oxenstored prints an error and goes on) and is reported.
    """
    quota = OxenstoredQuota()
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip(" \t")
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = (part.strip(" \t") for part in line.split("=", 1))
        name = CONFIG_KEYS.get(key)
        if name is None:
            continue
        if name == "activate":
            if value not in ("true", "false"):
                problems.append(f"line {number}: {key}: expected true or false, got {value!r}")
                continue
            quota = replace(quota, activate=value == "true")
        elif _OCAML_INT.fullmatch(value):
            quota = _set(quota, name, int(value))
        else:
            problems.append(f"line {number}: {key}: expected an integer, got {value!r}")
    return quota, problems


def format_config(quota: OxenstoredQuota) -> str:
    """``oxenstored.conf`` lines setting every quota key of ``quota``."""
    out = []
    for f in fields(quota):
        value = getattr(quota, f.name)
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out.append(f"{_KEY_OF_FIELD[f.name]} = {text}\n")
    return "".join(out)


def quota_to_c(quota: OxenstoredQuota) -> tuple[tuple[QuotaValue, ...], list[str]]:
    """GLOBAL_QUOTA_DATA per-domain values for ``quota``, and what has no place there.

    oxenstored has no memory and no permission-count limit: both are given
    as 0 (unlimited) so that the receiving daemon does not put its own
    defaults in their place.
    """
    values: list[QuotaValue] = []
    dropped: list[str] = []

    def put(name: str, value: int, key: str) -> None:
        if 0 <= value <= _U32_MAX:
            values.append(QuotaValue(name, value))
        else:
            dropped.append(f"{key} = {value} (out of the stream's 32-bit range)")

    def limit(name: str, value: int, key: str, meaning: str) -> None:
        # A positive limit maps as it is; 0 or less means something C's
        # 0 (unlimited) cannot say.
        if value > 0:
            put(name, value, key)
        else:
            dropped.append(f"{key} = {value} ({meaning}; C-family 0 means unlimited)")

    if quota.activate:
        limit("nodes", quota.maxentity, "quota-maxentity", "no domain may create a node")
        limit("node-size", quota.maxsize, "quota-maxsize", "no node may hold a value")
        put("watches", max(quota.maxwatch, 0), "quota-maxwatch")
    else:
        values += [QuotaValue("nodes", 0), QuotaValue("node-size", 0), QuotaValue("watches", 0)]
    put("transactions", max(quota.transaction, 0), "quota-transaction")
    if quota.maxrequests < 0:
        values.append(QuotaValue("transaction-nodes", 0))
    else:
        limit(
            "transaction-nodes",
            quota.maxrequests,
            "quota-maxrequests",
            "every transaction is over quota",
        )
    limit("outstanding", quota.maxoutstanding, "quota-maxoutstanding", "no request can be answered")
    limit("path-max", quota.path_max, "quota-path-max", "no path is valid")
    values += [QuotaValue("memory", 0), QuotaValue("node-permissions", 0)]
    limit(
        OX_MAXWATCHEVENTS,
        quota.maxwatchevents,
        "quota-maxwatchevents",
        "no watch event can be queued",
    )
    return tuple(values), dropped


# C name -> (field, value meaning "unlimited" in oxenstored or None if it has none).
_FROM_C: dict[str, tuple[str, int | None]] = {
    "nodes": ("maxentity", None),
    "node-size": ("maxsize", None),
    "watches": ("maxwatch", 0),
    "transactions": ("transaction", 0),
    "transaction-nodes": ("maxrequests", -1),
    "outstanding": ("maxoutstanding", None),
    "path-max": ("path_max", None),
    OX_MAXWATCHEVENTS: ("maxwatchevents", None),
}
# Limits oxenstored does not have: fine only when unlimited (or, for soft
# values, absent: C's "disabled" is all ones).
_ABSENT_IN_OX = frozenset({"memory", "node-permissions"})


def quota_from_c(
    values: Iterable[QuotaValue], base: OxenstoredQuota | None = None
) -> tuple[OxenstoredQuota, list[str]]:
    """oxenstored settings for GLOBAL_QUOTA_DATA per-domain ``values``, and what is lost.

    Settings the values do not name keep their value from ``base``
    (oxenstored's defaults when None).  Unlimited node, size and watch
    quota together become ``quota-activate = false``; oxenstored cannot
    lift one of the first two alone.
    """
    quota = base or OxenstoredQuota()
    dropped: list[str] = []
    given = {v.name: v.value for v in values}
    if given.get("nodes") == 0 and given.get("node-size") == 0 and given.get("watches") == 0:
        quota = replace(quota, activate=False)
        given = {k: v for k, v in given.items() if k not in ("nodes", "node-size", "watches")}
    for name, value in given.items():
        if name in _FROM_C:
            field_name, unlimited = _FROM_C[name]
            if value != 0:
                quota = _set(quota, field_name, value)
            elif unlimited is not None:
                quota = _set(quota, field_name, unlimited)
            else:
                dropped.append(f"quota {name} 0 (unlimited): oxenstored has no unlimited {name}")
        elif name in _ABSENT_IN_OX or name.startswith("soft-"):
            if value not in (0, _U32_MAX):
                dropped.append(f"quota {name} {value}: oxenstored has no such limit")
        else:
            dropped.append(f"quota {name} {value}: unknown to oxenstored")
    return quota, dropped


__all__ = [
    "CONFIG_KEYS",
    "DOMEXC_PORT",
    "OX_MAXWATCHEVENTS",
    "PRIVATE_QUOTA_NAMES",
    "REMOTE_PORT",
    "RING_MFN_HIGH",
    "RING_MFN_LOW",
    "OxenstoredQuota",
    "format_config",
    "parse_config",
    "quota_from_c",
    "quota_to_c",
]
