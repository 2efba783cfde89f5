"""Server features (``xs_wire.h``, ``domain.c:feature_available``): bitmap and per-domain mask."""

from __future__ import annotations

from ..wire import FEATURE_DOMID_ANY, FEATURE_ERROR, FEATURE_WATCHDEPTH, XsError, c_atoi

# What this daemon offers, like C HEAD: no RECONNECTION (bit 0).
SUPPORTED_FEATURES = FEATURE_ERROR | FEATURE_WATCHDEPTH | FEATURE_DOMID_ANY


def feature_reply(mask: int) -> bytes:
    return b"%d\0" % mask


def parse_feature_value(arg: bytes) -> int:
    """SET_FEATURE value: ``atoi``; a bit outside the supported set is EINVAL."""
    value = c_atoi(arg) & 0xFFFFFFFF
    if value & ~SUPPORTED_FEATURES:
        raise XsError("EINVAL", f"unsupported feature bits {value:#x}")
    return value
