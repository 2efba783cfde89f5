"""Node permissions: entries, their wire strings, and who gets which right.

A permission list is a tuple of ``(domid, bits)`` pairs; entry 0 names the
owner and its bits are the default for everybody without an own entry
(``xenstore.txt``; C's ``core.c:perm_for_conn``).  The bits are C's internal
ones (``xenstore_lib.h``), so the
"stale" flag (``PERM_IGNORE``) lives beside the rights.
"""

from __future__ import annotations

from ..wire import XsError, c_strtol0

PERM_NONE = 0x00
PERM_READ = 0x01
PERM_WRITE = 0x02
PERM_OWNER = 0x08
PERM_IGNORE = 0x10  # stale entry: kept in the node, ignored by checks
PERM_RW = PERM_READ | PERM_WRITE
PERM_ALL = PERM_READ | PERM_WRITE | PERM_OWNER

Perms = tuple[tuple[int, int], ...]

_LETTER_BITS = {ord("n"): PERM_NONE, ord("r"): PERM_READ, ord("w"): PERM_WRITE, ord("b"): PERM_RW}
_BITS_LETTER = {PERM_NONE: "n", PERM_READ: "r", PERM_WRITE: "w", PERM_RW: "b"}


def parse_perm(raw: bytes) -> tuple[int, int]:
    """One ``<letter><domid>`` string; the domid is read like ``strtol(s, 0)``."""
    if not raw or raw[0] not in _LETTER_BITS:
        raise XsError("EINVAL", f"bad permission {raw!r}")
    value = c_strtol0(raw[1:])
    if value is None:
        raise XsError("EINVAL", f"bad permission {raw!r}")
    # C stores the id in an unsigned int; domids are 16-bit in practice.
    return value & 0xFFFFFFFF, _LETTER_BITS[raw[0]]


def perm_to_string(domid: int, bits: int) -> str:
    """``w5``; the domid printed as C's signed ``%d`` would."""
    signed = domid - (1 << 32) if domid >= 1 << 31 else domid
    return f"{_BITS_LETTER[bits & PERM_RW]}{signed}"


def perms_payload(perms: Perms) -> bytes:
    """GET_PERMS reply: one NUL-terminated string per entry (stale ones too)."""
    payload = _PAYLOADS.get(perms)
    if payload is None:
        payload = "".join(perm_to_string(d, b) + "\0" for d, b in perms).encode("ascii")
        if len(_PAYLOADS) >= _INTERN_MAX:
            _PAYLOADS.clear()
        _PAYLOADS[perms] = payload
    return payload


# GET_PERMS replies of the lists asked for lately (few lists are common).
_PAYLOADS: dict[Perms, bytes] = {}


# Most nodes carry one of a handful of permission lists; equal lists built
# separately (a guest's creations, SET_PERMS) share one tuple.  Bounded so that
# a guest cycling through distinct lists cannot grow it without limit.
_INTERNED: dict[Perms, Perms] = {}
_INTERN_MAX = 4096


def intern_perms(perms: Perms) -> Perms:
    """The shared tuple equal to ``perms`` (``perms`` itself when new or the table is full)."""
    shared = _INTERNED.get(perms)
    if shared is not None:
        return shared
    if len(_INTERNED) < _INTERN_MAX:
        _INTERNED[perms] = perms
    return perms
