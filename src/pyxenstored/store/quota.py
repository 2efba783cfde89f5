"""Quota: the names, C defaults, hard and soft values, and their text forms.

Every quota is per domain (``domain.c:alloc_domain`` copies the defaults):
:class:`QuotaTable` holds hard and
soft values; the store keeps one global table (the defaults) and gives each
new domain record a copy.  A value of 0 means unlimited; soft values exist
only for ``memory``.  Limits are checked with C's ``>=`` rule: the resulting
value must stay *below* the quota.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire import XsError, c_atoi

NODES = 0
WATCHES = 1
OUTSTANDING = 2
MEMORY = 3
TRANSACTIONS = 4
TRANSACTION_NODES = 5
NODE_PERMISSIONS = 6
PATH_MAX = 7
NODE_SIZE = 8
QUOTA_COUNT = 9

HARD = 0
SOFT = 1
DISABLED = 0xFFFFFFFF  # C's Q_VAL_DISABLED (UINT_MAX): "this soft quota does not exist"
SOFT_PREFIX = "soft-"


@dataclass(slots=True, frozen=True)
class QuotaInfo:
    name: str
    description: str
    hard: int
    soft: int


QUOTAS: tuple[QuotaInfo, ...] = (
    QuotaInfo("nodes", "Nodes per domain", 1000, DISABLED),
    QuotaInfo("watches", "Watches per domain", 128, DISABLED),
    QuotaInfo("outstanding", "Outstanding requests per domain", 20, DISABLED),
    QuotaInfo(
        "memory", "Total Xenstore memory per domain", 2 * 1024 * 1024 + 512 * 1024, 2 * 1024 * 1024
    ),
    QuotaInfo("transactions", "Active transactions per domain", 10, DISABLED),
    QuotaInfo("transaction-nodes", "Max. number of accessed nodes per transaction", 1024, DISABLED),
    QuotaInfo("node-permissions", "Max. number of permissions per node", 5, DISABLED),
    QuotaInfo("path-max", "Max. length of a node path", 2048, DISABLED),
    QuotaInfo("node-size", "Max. size of a node", 2048, DISABLED),
)
_INDEX = {q.name: i for i, q in enumerate(QUOTAS)}

# Short command-line options of the C daemon and the quota each one sets.
SHORT_OPTIONS = {
    "-E": "nodes",
    "--entry-nb": "nodes",
    "-S": "node-size",
    "--entry-size": "node-size",
    "-W": "watches",
    "--watch-nb": "watches",
    "-t": "transactions",
    "--transaction": "transactions",
    "-A": "node-permissions",
    "--perm-nb": "node-permissions",
    "-M": "path-max",
    "--path-max": "path-max",
}


class QuotaTable:
    """Hard and soft values of every quota (u32 like C's ``unsigned int``)."""

    __slots__ = ("values",)

    def __init__(self, values: list[list[int]] | None = None) -> None:
        if values is None:
            values = [[q.hard, q.soft] for q in QUOTAS]
        self.values = values

    def copy(self) -> QuotaTable:
        return QuotaTable([list(v) for v in self.values])

    def hard(self, index: int) -> int:
        return self.values[index][HARD]

    def get(self, index: int, kind: int) -> int:
        return self.values[index][kind]

    def set(self, index: int, kind: int, value: int) -> None:
        self.values[index][kind] = value & 0xFFFFFFFF

    def names(self) -> list[str]:
        """Names that exist (hard, then ``soft-`` variant), in table order."""
        out: list[str] = []
        for i, q in enumerate(QUOTAS):
            if self.values[i][HARD] != DISABLED:
                out.append(q.name)
            if self.values[i][SOFT] != DISABLED:
                out.append(SOFT_PREFIX + q.name)
        return out


def exceeds(quota: int, value: int) -> bool:
    """C's ``domain_quota_val_exceeds``: 0 is unlimited, else reject at ``>=``."""
    return quota != 0 and value >= quota


def parse_quota_name(table: QuotaTable, name: str) -> tuple[int, int]:
    """``name`` or ``soft-name`` -> (index, HARD/SOFT); EINVAL if it is not a quota."""
    kind = HARD
    if name.startswith(SOFT_PREFIX):
        kind = SOFT
        name = name[len(SOFT_PREFIX) :]
    index = _INDEX.get(name)
    if index is None or table.get(index, kind) == DISABLED:
        raise XsError("EINVAL", f"not a quota: {name!r}")
    return index, kind


def quota_index(name: str) -> int:
    index = _INDEX.get(name)
    if index is None:
        raise ValueError(f"unknown quota name {name!r}")
    return index


def _c_int_printf(value: int) -> int:
    """``%d`` of an unsigned int."""
    return value - (1 << 32) if value >= 1 << 31 else value


def format_settings(table: QuotaTable, kind: int) -> str:
    """CONTROL ``quota`` / ``quota-soft`` text (``control.c:do_control_quota``)."""
    lines = ["Quota settings:\n"]
    for i, q in enumerate(QUOTAS):
        value = table.get(i, kind)
        if value == DISABLED:
            continue
        lines.append(f"{q.name:<17}: {_c_int_printf(value):8d} {q.description}\n")
    return "".join(lines)


def format_usage(domid: int, usage: list[int], maxima: list[int]) -> str:
    """CONTROL ``quota <domid>``."""
    lines = [f"Domain {domid}:\n"]
    for i, q in enumerate(QUOTAS):
        lines.append(
            f"{q.name:<17}: {usage[i] & 0xFFFFFFFF:8d} (max {maxima[i] & 0xFFFFFFFF:8d})\n"
        )
    return "".join(lines)


def format_max(maxima: list[int]) -> str:
    """CONTROL ``quota max``."""
    lines = ["Max. seen accounting values:\n"]
    for i, q in enumerate(QUOTAS):
        lines.append(f"{q.name:<17}: {maxima[i] & 0xFFFFFFFF:8d}\n")
    return "".join(lines)


def parse_control_value(arg: bytes) -> int:
    """``quota set <name> <val>``: atoi, and values below 1 are refused."""
    value = c_atoi(arg)
    if value < 1:
        raise XsError("EINVAL", "quota value must be at least 1")
    return value


def _parse_option_value(text: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise ValueError(f"quota value must be a decimal number: {text!r}")
    value = int(text)
    if value > 2**31 - 1:
        raise ValueError(f"quota value too large: {text!r}")
    return value


def apply_quota_option(table: QuotaTable, option: str, argument: str) -> None:
    """Apply one C command-line quota option (``core.c:main``, ``set_quota``) to the global table.

    ``option`` is ``-E -S -W -t -A -M -Q -q`` or a long form; ``-Q`` and
    ``-q`` take ``name=value``.  Raises ``ValueError`` with a clear message
    for an unknown option, name or a bad value (C treats these as fatal).
    """
    if option in ("-Q", "--quota", "-q", "--quota-soft"):
        kind = SOFT if option in ("-q", "--quota-soft") else HARD
        name, sep, value_text = argument.partition("=")
        if not sep:
            raise ValueError(f"quota option needs name=value: {argument!r}")
        index = quota_index(name)
        if table.get(index, kind) == DISABLED:
            raise ValueError(f"no soft quota {name!r}")
        table.set(index, kind, _parse_option_value(value_text))
        return
    short_name = SHORT_OPTIONS.get(option)
    if short_name is None:
        raise ValueError(f"not a quota option: {option!r}")
    value = _parse_option_value(argument)
    if short_name == "path-max":
        value = min(value, 2048)  # C caps -M at XENSTORE_REL_PATH_MAX
    table.set(quota_index(short_name), HARD, value)
