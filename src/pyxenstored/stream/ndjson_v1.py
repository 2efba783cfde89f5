"""The first NDJSON form (before ``"format": 2``), kept so that ``build`` still reads it.

Releases before the ``format`` key wrote this form; :mod:`.ndjson` writes
the current one and hands a header without ``format`` to this module.
One JSON object per record: ``"type"`` the spec's record name
(``UNKNOWN(n)`` for reserved types), the other keys the field names of
:mod:`.records`.  Byte strings (node values, pending connection data,
unknown bodies, opaque conn-specs) are JSON strings in which each character
U+0000..U+00FF stands for one byte (ISO-8859-1): lossless, and plain ASCII
stays readable.  Permissions are ``{"perm", "flags", "domid"}`` objects,
quota values ``{"name", "value"}`` objects, ``spec`` is ``{"domid",
"tdomid", "evtchn"}`` (ring), ``{"socket_fd"}`` (socket) or ``{"raw"}``
(reserved type).  A stream is its header object
(``{"type": "HEADER", "version": V, "flags": F}``) then its records, one per
line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .records import (
    RECORD_TYPES,
    NodePerm,
    OpaqueSpec,
    QuotaValue,
    Record,
    RingSpec,
    SocketSpec,
    StreamHeader,
    UnknownRecord,
    type_name,
)

#: The ``"type"`` of the header object.
HEADER_TYPE = "HEADER"


def header_to_json(header: StreamHeader) -> dict[str, Any]:
    """The header object of a stream."""
    return {"type": HEADER_TYPE, "version": header.version, "flags": header.flags}


def is_header(obj: object) -> bool:
    """Whether ``obj`` is a header object (its fields not checked yet)."""
    return isinstance(obj, dict) and obj.get("type") == HEADER_TYPE


def header_from_json(obj: dict[str, Any]) -> StreamHeader:
    """Inverse of :func:`header_to_json`; ValueError if a field is not an integer.

    Reserved ``flags`` bits are not refused here: see :attr:`StreamHeader.reserved_flags`.
    """
    return StreamHeader(
        int_field(obj, "version", HEADER_TYPE), int_field(obj, "flags", HEADER_TYPE)
    )


_CLASS_BY_NAME: dict[str, type] = {rt.name: cls for cls, rt in RECORD_TYPES.items()}
_BYTES_FIELDS = frozenset({"value", "in_data", "out_data", "body", "raw"})
_QUOTA_FIELDS = frozenset({"domain_quota", "global_quota", "quota"})


def _b2j(value: bytes) -> str:
    return value.decode("latin-1")


def _j2b(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string of byte characters")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} has a character above U+00FF (not a byte)") from None


def record_to_json(r: Record) -> dict[str, Any]:
    """A record as a JSON-able dict (see the module docstring)."""
    if isinstance(r, UnknownRecord):
        return {"type": type_name(r.type), "body": _b2j(r.body)}
    out: dict[str, Any] = {"type": RECORD_TYPES[type(r)].name}
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        if isinstance(v, bytes):
            out[f.name] = _b2j(v)
        elif f.name == "perms":
            out[f.name] = [{"perm": p.perm, "flags": p.flags, "domid": p.domid} for p in v]
        elif f.name in _QUOTA_FIELDS:
            out[f.name] = [{"name": q.name, "value": q.value} for q in v]
        elif f.name == "spec":
            if isinstance(v, OpaqueSpec):
                out[f.name] = {"raw": _b2j(v.raw)}
            else:
                out[f.name] = dataclasses.asdict(v)
        else:
            out[f.name] = v
    return out


def int_field(obj: dict[str, Any], key: str, what: str) -> int:
    """``obj[key]`` if it is an integer (not a bool), else ValueError naming it."""
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{what}: {key!r} must be an integer")
    return v


def _spec_from_json(v: object) -> RingSpec | SocketSpec | OpaqueSpec:
    if not isinstance(v, dict):
        raise ValueError("spec must be an object")
    keys = set(v)
    if keys == {"domid", "tdomid", "evtchn"}:
        return RingSpec(
            int_field(v, "domid", "spec"),
            int_field(v, "tdomid", "spec"),
            int_field(v, "evtchn", "spec"),
        )
    if keys == {"socket_fd"}:
        return SocketSpec(int_field(v, "socket_fd", "spec"))
    if keys == {"raw"}:
        return OpaqueSpec(_j2b(v["raw"], "spec.raw"))
    raise ValueError(f"spec with keys {sorted(keys)} is neither ring, socket nor raw")


def record_from_json(obj: object) -> Record:
    """Inverse of :func:`record_to_json`; raises ValueError on anything malformed."""
    if not isinstance(obj, dict):
        raise ValueError("a record must be a JSON object")
    name = obj.get("type")
    if not isinstance(name, str):
        raise ValueError("missing string key 'type'")
    if name.startswith("UNKNOWN(") and name.endswith(")"):
        try:
            number = int(name[8:-1])
        except ValueError:
            raise ValueError(f"bad record type {name!r}") from None
        if set(obj) != {"type", "body"}:
            raise ValueError(f"{name} takes exactly the keys type and body")
        return UnknownRecord(number, _j2b(obj["body"], "body"))
    cls = _CLASS_BY_NAME.get(name)
    if cls is None:
        raise ValueError(f"unknown record type {name!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    extra = set(obj) - names - {"type"}
    if extra:
        raise ValueError(f"{name} has no field(s) {', '.join(sorted(extra))}")
    kwargs = {key: _field_from_json(obj, key, name) for key in obj if key != "type"}
    try:
        record: Record = cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return record


def _perms_from_json(v: object) -> tuple[NodePerm, ...]:
    if not isinstance(v, list):
        raise ValueError("perms must be a list")
    perms = []
    for p in v:
        if not isinstance(p, dict) or set(p) != {"perm", "flags", "domid"}:
            raise ValueError("each permission needs exactly perm, flags, domid")
        if not isinstance(p["perm"], str) or len(p["perm"]) != 1:
            raise ValueError("perm must be one letter")
        perms.append(
            NodePerm(p["perm"], int_field(p, "flags", "perm"), int_field(p, "domid", "perm"))
        )
    return tuple(perms)


def _quota_from_json(key: str, v: object) -> tuple[QuotaValue, ...]:
    if not isinstance(v, list):
        raise ValueError(f"{key} must be a list")
    quota = []
    for q in v:
        if not isinstance(q, dict) or set(q) != {"name", "value"} or not isinstance(q["name"], str):
            raise ValueError("each quota needs exactly a string name and a value")
        quota.append(QuotaValue(q["name"], int_field(q, "value", "quota")))
    return tuple(quota)


def _field_from_json(obj: dict[str, Any], key: str, name: str) -> object:
    """The value of field ``key`` of a ``name`` record from its JSON form."""
    v = obj[key]
    if key in _BYTES_FIELDS:
        return _j2b(v, key)
    if key == "perms":
        return _perms_from_json(v)
    if key in _QUOTA_FIELDS:
        return _quota_from_json(key, v)
    if key == "spec":
        return _spec_from_json(v)
    if key in ("wpath", "token", "path"):
        if not isinstance(v, str):
            raise ValueError(f"{key} must be a string")
        return v
    if key == "unique_id" and v is None:
        return None
    return int_field(obj, key, name)
