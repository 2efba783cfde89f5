"""Records as JSON objects: ``xenstore-stream dump --json`` and ``build``.

A stream is one JSON object per line.  Line 1 is the header::

    {"type": "HEADER", "format": 2, "version": 2, "flags": 0}

``format`` is the version of this encoding (:data:`NDJSON_FORMAT`); a
header without it is the first form, read by :mod:`.ndjson_v1`.  Every
other line is one record: ``"type"`` is the spec's record name
(``UNKNOWN(n)`` for reserved types) and the other keys are the names the
text dump (:func:`.text.record_line`) shows, which are the spec's field
names: ``conn-id``, ``tx-id``, ``rw-socket-fd``, ``out-resp-len``, ...

* **Bytes** (``value``, ``in``, ``out``, ``body``, ``conn-spec``) are the
  string itself when the bytes are valid UTF-8, else their base64 with
  ``"<key>-encoding": "base64"`` beside them.
* **Permissions** are strings in ``xenstore-ls`` notation, ``"n0"``,
  ``"r5"``, with ``!`` after a stale entry (``"r5!"``); an entry with other
  flag bits is an object ``{"perm", "domid", "flags"}``.
* **Quota** is an object ``{"name": value, ...}`` (a list of ``{"name",
  "value"}`` objects when a name repeats).
* CONNECTION_DATA's ``conn-type`` is ``"ring"`` (with ``domid``,
  ``tdomid``, ``evtchn``), ``"socket"`` (with ``socket-fd``) or the number
  of a reserved type (with ``conn-spec``, its 8 raw bytes).
* WATCH_DATA_EXTENDED's ``depth`` is a number or ``"unlimited"``.

:data:`DEFAULTS` lists what ``build`` fills in when a key is left out; a
missing key without a default is an error naming it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from ..wire import DOMID_INVALID
from . import ndjson_v1
from .records import (
    CONN_FIELD_UNIQUE_ID,
    CONN_TYPE_RING,
    CONN_TYPE_SOCKET,
    DEPTH_UNLIMITED,
    PERM_FLAG_STALE,
    ConnectionData,
    DomainData,
    End,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    OpaqueSpec,
    QuotaValue,
    Record,
    RecordType,
    RingSpec,
    SocketSpec,
    StreamHeader,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    type_name,
)

#: The ``"type"`` of the header object.
HEADER_TYPE = "HEADER"
#: The version of this encoding, in the header's ``format`` key.
NDJSON_FORMAT = 2
#: Encodings a bytes field may name in ``<key>-encoding``.
ENCODINGS = ("utf-8", "base64")

#: What ``build`` fills in for a key left out, per record type (documented
#: in docs/stream.md).  A key that is neither given nor listed here is an
#: error naming it.
DEFAULTS: dict[str, dict[str, object]] = {
    HEADER_TYPE: {"version": 2, "flags": 0},
    "GLOBAL_DATA": {"rw-socket-fd": -1, "evtchn-fd": -1},
    "CONNECTION_DATA": {
        "tdomid": DOMID_INVALID,
        "fields": "1 when unique-id is given, else 0",
        "in": "",
        "out": "",
        "out-resp-len": 0,
    },
    "WATCH_DATA": {},
    "WATCH_DATA_EXTENDED": {"depth": "unlimited"},
    "TRANSACTION_DATA": {},
    "NODE_DATA": {"conn-id": 0, "tx-id": 0, "access": 0, "perms": ["n0"], "value": ""},
    "GLOBAL_QUOTA_DATA": {"domain-quota": {}, "global-quota": {}},
    "DOMAIN_DATA": {"features": 0, "quota": {}},
    "UNKNOWN(n)": {"body": ""},
}


# --- encoding -------------------------------------------------------------------


def header_to_json(header: StreamHeader) -> dict[str, Any]:
    """The header object of a stream."""
    return {
        "type": HEADER_TYPE,
        "format": NDJSON_FORMAT,
        "version": header.version,
        "flags": header.flags,
    }


def put_bytes(out: dict[str, Any], key: str, value: bytes) -> None:
    """Set ``out[key]`` to ``value`` as text, or base64 with ``<key>-encoding``."""
    try:
        out[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        out[key] = base64.b64encode(value).decode("ascii")
        out[f"{key}-encoding"] = "base64"


def perm_to_json(p: NodePerm) -> str | dict[str, Any]:
    """``"r5"``, ``"r5!"`` (stale), or an object when other flag bits are set."""
    if p.flags & ~PERM_FLAG_STALE:
        return {"perm": p.perm, "domid": p.domid, "flags": p.flags}
    return f"{p.perm}{p.domid}" + ("!" if p.stale else "")


def quota_to_json(quota: tuple[QuotaValue, ...]) -> dict[str, int] | list[dict[str, Any]]:
    """``{"name": value}``; a list of objects when a name repeats (kept as is)."""
    as_map = {q.name: q.value for q in quota}
    if len(as_map) == len(quota):
        return as_map
    return [{"name": q.name, "value": q.value} for q in quota]


def _connection_to_json(r: ConnectionData, out: dict[str, Any]) -> None:
    out["conn-id"] = r.conn_id
    spec = r.spec
    if isinstance(spec, RingSpec):
        out["conn-type"] = "ring"
        out.update(domid=spec.domid, tdomid=spec.tdomid, evtchn=spec.evtchn)
    elif isinstance(spec, SocketSpec):
        out["conn-type"] = "socket"
        out["socket-fd"] = spec.socket_fd
    else:
        out["conn-type"] = r.conn_type
        put_bytes(out, "conn-spec", spec.raw)
    out["fields"] = r.fields
    if r.unique_id is not None:
        out["unique-id"] = r.unique_id
    put_bytes(out, "in", r.in_data)
    put_bytes(out, "out", r.out_data)
    out["out-resp-len"] = r.out_resp_len


def record_to_json(r: Record) -> dict[str, Any]:
    """A record as a JSON-able dict (see the module docstring)."""
    if isinstance(r, UnknownRecord):
        out: dict[str, Any] = {"type": type_name(r.type)}
        put_bytes(out, "body", r.body)
        return out
    out = {"type": _NAME_OF[type(r)]}
    match r:
        case GlobalData():
            out.update({"rw-socket-fd": r.socket_fd, "evtchn-fd": r.evtchn_fd})
        case ConnectionData():
            _connection_to_json(r, out)
        case WatchDataExtended():
            depth: int | str = "unlimited" if r.depth == DEPTH_UNLIMITED else r.depth
            out.update({"conn-id": r.conn_id, "wpath": r.wpath, "token": r.token, "depth": depth})
        case WatchData():
            out.update({"conn-id": r.conn_id, "wpath": r.wpath, "token": r.token})
        case TransactionData():
            out.update({"conn-id": r.conn_id, "tx-id": r.tx_id})
        case NodeData():
            out["path"] = r.path
            put_bytes(out, "value", r.value)
            out["perms"] = [perm_to_json(p) for p in r.perms]
            out.update({"conn-id": r.conn_id, "tx-id": r.tx_id, "access": r.access})
        case GlobalQuotaData():
            out["domain-quota"] = quota_to_json(r.domain_quota)
            out["global-quota"] = quota_to_json(r.global_quota)
        case DomainData():
            out.update({"domid": r.domid, "features": r.features})
            out["quota"] = quota_to_json(r.quota)
    return out


_NAME_OF: dict[type, str] = {
    End: "END",
    GlobalData: "GLOBAL_DATA",
    ConnectionData: "CONNECTION_DATA",
    WatchData: "WATCH_DATA",
    WatchDataExtended: "WATCH_DATA_EXTENDED",
    TransactionData: "TRANSACTION_DATA",
    NodeData: "NODE_DATA",
    GlobalQuotaData: "GLOBAL_QUOTA_DATA",
    DomainData: "DOMAIN_DATA",
}


# --- decoding -------------------------------------------------------------------


def is_header(obj: object) -> bool:
    """Whether ``obj`` is a header object (its fields not checked yet)."""
    return isinstance(obj, dict) and obj.get("type") == HEADER_TYPE


def header_format(obj: dict[str, Any]) -> int:
    """The encoding version a header object announces (1 when it has no ``format``)."""
    fmt = obj.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt not in (1, NDJSON_FORMAT):
        raise ValueError(
            f"HEADER: format {fmt!r} is not one this version reads (1 or {NDJSON_FORMAT})"
        )
    return fmt


def header_from_json(obj: dict[str, Any]) -> StreamHeader:
    """The stream header of a header object, ``version`` 2 and ``flags`` 0 by default.

    Reserved ``flags`` bits are not refused here: see :attr:`StreamHeader.reserved_flags`.
    """
    fields = _Fields(obj, HEADER_TYPE)
    fields.allow("type", "format", "version", "flags")
    return StreamHeader(fields.integer("version"), fields.integer("flags"))


class _Fields:
    """The keys of one JSON object, read with the record type's defaults and named errors."""

    def __init__(self, obj: dict[str, Any], name: str, defaults: str | None = None) -> None:
        self.obj = obj
        self.name = name
        self.defaults = DEFAULTS.get(defaults or name, {})

    def allow(self, *keys: str) -> None:
        extra = sorted(set(self.obj) - set(keys))
        if extra:
            raise ValueError(f"{self.name} has no field {', '.join(map(repr, extra))}")

    def get(self, key: str) -> object:
        if key in self.obj:
            return self.obj[key]
        if key in self.defaults:
            return self.defaults[key]
        raise ValueError(f"{self.name}: missing field {key!r}")

    def integer(self, key: str) -> int:
        v = self.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{self.name}: field {key!r} must be an integer, not {v!r}")
        return v

    def text(self, key: str) -> str:
        v = self.get(key)
        if not isinstance(v, str):
            raise ValueError(f"{self.name}: field {key!r} must be a string")
        return v

    def raw(self, key: str) -> bytes:
        text = self.text(key)
        encoding = self.obj.get(f"{key}-encoding", "utf-8")
        if encoding == "utf-8":
            try:
                return text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{self.name}: field {key!r} has a lone surrogate") from None
        if encoding == "base64":
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{self.name}: field {key!r} is not valid base64") from None
        raise ValueError(
            f"{self.name}: {key}-encoding {encoding!r} is not one of {', '.join(ENCODINGS)}"
        )


def bytes_field(obj: dict[str, Any], key: str, what: str) -> bytes:
    """The bytes of field ``key`` of ``obj`` (text, or base64 with ``<key>-encoding``).

    ValueError naming ``what`` and the field when it is missing or malformed.
    """
    return _Fields(obj, what, defaults="-").raw(key)


def _perm_from_json(v: object, where: str) -> NodePerm:
    if isinstance(v, dict):
        fields = _Fields(v, f"{where}: permission", defaults="-")
        fields.allow("perm", "domid", "flags")
        perm = fields.text("perm")
        domid, flags = fields.integer("domid"), fields.integer("flags")
    elif isinstance(v, str):
        stale = v.endswith("!")
        perm, digits = v[:1], v[1 : len(v) - stale]
        if not digits.isdecimal() or not digits.isascii():
            raise ValueError(f"{where}: permission {v!r} is not a letter and a domid, like r5")
        domid, flags = int(digits), PERM_FLAG_STALE if stale else 0
    else:
        raise ValueError(f"{where}: a permission is a string like 'r5' or an object")
    if len(perm) != 1:
        raise ValueError(f"{where}: permission letter {perm!r} must be one character")
    return NodePerm(perm, flags, domid)


def _perms(fields: _Fields) -> tuple[NodePerm, ...]:
    v = fields.get("perms")
    if not isinstance(v, list):
        raise ValueError(f"{fields.name}: field 'perms' must be a list")
    return tuple(_perm_from_json(p, fields.name) for p in v)


def _quota(fields: _Fields, key: str) -> tuple[QuotaValue, ...]:
    v = fields.get(key)
    where = f"{fields.name}: {key}"
    if isinstance(v, dict):
        items = list(v.items())
    elif isinstance(v, list):
        items = []
        for q in v:
            if not isinstance(q, dict) or set(q) != {"name", "value"}:
                raise ValueError(f"{where}: each entry of the list needs a name and a value")
            items.append((q["name"], q["value"]))
    else:
        raise ValueError(f"{where} must be an object of name: value")
    out = []
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{where}: {name!r} must have an integer value")
        out.append(QuotaValue(name, value))
    return tuple(out)


def _global_data(f: _Fields) -> Record:
    f.allow("type", "rw-socket-fd", "evtchn-fd")
    return GlobalData(f.integer("rw-socket-fd"), f.integer("evtchn-fd"))


def _connection(f: _Fields) -> Record:
    common = ("type", "conn-id", "conn-type", "fields", "unique-id", "in", "out", "out-resp-len")
    kind = f.obj.get("conn-type")
    if kind is None:  # let the spec's keys say which
        kind = "socket" if "socket-fd" in f.obj else "ring" if "domid" in f.obj else None
        if kind is None:
            raise ValueError(f"{f.name}: missing field 'conn-type'")
    spec: RingSpec | SocketSpec | OpaqueSpec
    if kind == "ring":
        f.allow(*common, "domid", "tdomid", "evtchn")
        conn_type, spec = (
            CONN_TYPE_RING,
            RingSpec(f.integer("domid"), f.integer("tdomid"), f.integer("evtchn")),
        )
    elif kind == "socket":
        f.allow(*common, "socket-fd")
        conn_type, spec = CONN_TYPE_SOCKET, SocketSpec(f.integer("socket-fd"))
    elif isinstance(kind, int) and not isinstance(kind, bool):
        f.allow(*common, "conn-spec", "conn-spec-encoding")
        conn_type, spec = kind, OpaqueSpec(f.raw("conn-spec"))
    else:
        raise ValueError(f"{f.name}: conn-type {kind!r} is not 'ring', 'socket' or a number")
    unique = f.obj.get("unique-id")
    if unique is not None:
        unique = f.integer("unique-id")
    if "fields" in f.obj:
        flags = f.integer("fields")
    else:
        flags = CONN_FIELD_UNIQUE_ID if unique is not None else 0
    return ConnectionData(
        f.integer("conn-id"),
        conn_type,
        flags,
        spec,
        f.raw("in"),
        f.raw("out"),
        f.integer("out-resp-len"),
        unique,
    )


def _watch(f: _Fields) -> Record:
    f.allow("type", "conn-id", "wpath", "token")
    return WatchData(f.integer("conn-id"), f.text("wpath"), f.text("token"))


def _watch_extended(f: _Fields) -> Record:
    f.allow("type", "conn-id", "wpath", "token", "depth")
    depth = DEPTH_UNLIMITED if f.get("depth") == "unlimited" else f.integer("depth")
    return WatchDataExtended(f.integer("conn-id"), f.text("wpath"), f.text("token"), depth)


def _transaction(f: _Fields) -> Record:
    f.allow("type", "conn-id", "tx-id")
    return TransactionData(f.integer("conn-id"), f.integer("tx-id"))


def _node(f: _Fields) -> Record:
    f.allow("type", "path", "value", "value-encoding", "perms", "conn-id", "tx-id", "access")
    return NodeData(
        f.integer("conn-id"),
        f.integer("tx-id"),
        f.integer("access"),
        _perms(f),
        f.text("path"),
        f.raw("value"),
    )


def _global_quota(f: _Fields) -> Record:
    f.allow("type", "domain-quota", "global-quota")
    return GlobalQuotaData(_quota(f, "domain-quota"), _quota(f, "global-quota"))


def _domain(f: _Fields) -> Record:
    f.allow("type", "domid", "features", "quota")
    return DomainData(f.integer("domid"), f.integer("features"), _quota(f, "quota"))


def _end(f: _Fields) -> Record:
    f.allow("type")
    return End()


_DECODERS: dict[str, Callable[[_Fields], Record]] = {
    "END": _end,
    "GLOBAL_DATA": _global_data,
    "CONNECTION_DATA": _connection,
    "WATCH_DATA": _watch,
    "WATCH_DATA_EXTENDED": _watch_extended,
    "TRANSACTION_DATA": _transaction,
    "NODE_DATA": _node,
    "GLOBAL_QUOTA_DATA": _global_quota,
    "DOMAIN_DATA": _domain,
}
assert set(_DECODERS) == {t.name for t in RecordType}


def record_from_json(obj: object, fmt: int = NDJSON_FORMAT) -> Record:
    """The record of one JSON object of encoding ``fmt``; ValueError naming what is wrong."""
    if fmt == 1:
        return ndjson_v1.record_from_json(obj)
    if not isinstance(obj, dict):
        raise ValueError("a record must be a JSON object")
    name = obj.get("type")
    if not isinstance(name, str):
        raise ValueError("missing field 'type' (the record type's name, e.g. NODE_DATA)")
    if name.startswith("UNKNOWN(") and name.endswith(")"):
        digits = name[8:-1]
        if not digits.isdecimal() or not digits.isascii() or int(digits) <= max(RecordType):
            raise ValueError(f"bad record type {name!r}")
        f = _Fields(obj, name, defaults="UNKNOWN(n)")
        f.allow("type", "body", "body-encoding")
        return UnknownRecord(int(digits), f.raw("body"))
    decoder = _DECODERS.get(name)
    if decoder is None:
        raise ValueError(f"unknown record type {name!r}")
    return decoder(_Fields(obj, name))


__all__ = [
    "DEFAULTS",
    "bytes_field",
    "HEADER_TYPE",
    "NDJSON_FORMAT",
    "header_format",
    "header_from_json",
    "header_to_json",
    "is_header",
    "perm_to_json",
    "put_bytes",
    "quota_to_json",
    "record_from_json",
    "record_to_json",
]
