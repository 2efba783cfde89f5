"""The semantic difference of two streams (``xenstore-stream diff``).

:func:`state_of` reduces a stream to what it means -- nodes, pending nodes,
watches, connections, transactions, global data, quota, domains, unknown
records; pyxenstored's transaction marks with the transactions, not the
quota -- independent of record order and byte order; :func:`diff_states`
describes how one such state differs from another, one line per
difference: ``-`` only in the first, ``+`` only in the second, ``~``
changed.  :func:`diff_changes` gives the same differences as
:class:`Change` values, which :func:`change_text` shows in the notation of
``xenstore-stream dump`` and :func:`change_json` turns into the objects of
``diff --json``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from .byteorder import swap_pending
from .ndjson import perm_to_json, put_bytes
from .records import (
    DEPTH_UNLIMITED,
    ConnectionData,
    DomainData,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    OpaqueSpec,
    Record,
    RingSpec,
    SocketSpec,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    type_name,
)
from .text import quote
from .txmarks import is_marks_name_valid, parse_marks_name

PermKey = tuple[tuple[str, int, int], ...]
PendingKey = tuple[int, bytes, PermKey]


@dataclasses.dataclass(slots=True)
class StreamState:
    """The semantic content of a stream, for :func:`diff_states`."""

    nodes: dict[str, tuple[bytes, PermKey]] = dataclasses.field(default_factory=dict)
    pending: dict[tuple[int, int, str], PendingKey] = dataclasses.field(default_factory=dict)
    watches: Counter[tuple[int, str, str, int | None]] = dataclasses.field(default_factory=Counter)
    conns: dict[int, tuple[object, ...]] = dataclasses.field(default_factory=dict)
    transactions: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    # pyxenstored's transaction marks (stream.txmarks), out of the domains' quota.
    marks: dict[tuple[int, int], tuple[tuple[int, ...], int]] = dataclasses.field(
        default_factory=dict
    )
    global_data: tuple[int, int] | None = None
    global_quota: dict[str, int] | None = None
    global_only_quota: dict[str, int] | None = None
    domains: dict[int, tuple[int, dict[str, int]]] = dataclasses.field(default_factory=dict)
    unknown: Counter[tuple[int, bytes]] = dataclasses.field(default_factory=Counter)

    def add(self, r: Record) -> None:
        """Take one record in."""
        if isinstance(r, NodeData):
            if r.conn_id:
                self.pending[(r.conn_id, r.tx_id, r.path)] = (r.access, r.value, _perm_key(r.perms))
            else:
                self.nodes[r.path] = (r.value, _perm_key(r.perms))
        elif isinstance(r, WatchDataExtended):
            depth = None if r.depth == DEPTH_UNLIMITED else r.depth
            self.watches[(r.conn_id, r.wpath, r.token, depth)] += 1
        elif isinstance(r, WatchData):
            self.watches[(r.conn_id, r.wpath, r.token, None)] += 1
        elif isinstance(r, ConnectionData):
            self.conns[r.conn_id] = (
                r.conn_type,
                r.spec,
                r.unique_id,
                r.in_data,
                r.out_data,
                r.out_resp_len,
            )
        elif isinstance(r, TransactionData):
            self.transactions.add((r.conn_id, r.tx_id))
        elif isinstance(r, GlobalData):
            self.global_data = (r.socket_fd, r.evtchn_fd)
        elif isinstance(r, GlobalQuotaData):
            self.global_quota = {q.name: q.value for q in r.domain_quota}
            self.global_only_quota = {q.name: q.value for q in r.global_quota}
        elif isinstance(r, DomainData):
            quota = {}
            for q in r.quota:
                if is_marks_name_valid(q.name):
                    conn_id, tx_id, nodes = parse_marks_name(q.name)
                    self.marks[(conn_id, tx_id)] = (nodes, q.value)
                else:
                    quota[q.name] = q.value
            self.domains[r.domid] = (r.features, quota)
        elif isinstance(r, UnknownRecord):
            self.unknown[(r.type, r.body)] += 1


def _perm_key(perms: tuple[NodePerm, ...]) -> PermKey:
    return tuple((p.perm, p.flags, p.domid) for p in perms)


def state_of(records: Iterable[Record], big_endian: bool) -> StreamState:
    """The semantic content of a stream's records (``big_endian``: the stream's byte order)."""
    st = StreamState()
    for r in records:
        if big_endian:
            # compare pending wire messages in one byte order
            r = swap_pending(r, True)
        st.add(r)
    return st


# --- one difference -------------------------------------------------------------

#: The kinds of :class:`Change`, in the order :func:`diff_changes` gives them.
KINDS = (
    "node",
    "pending-node",
    "watch",
    "connection",
    "transaction",
    "transaction-marks",
    "global-data",
    "global-quota",
    "global-only-quota",
    "domain",
    "domain-features",
    "domain-quota",
    "record",
)


@dataclasses.dataclass(slots=True, frozen=True)
class Change:
    """One difference: ``sign`` (``-``, ``+``, ``~``), what ``kind`` of thing, which one, and its two sides.

    ``key`` names the thing (``(("path", "/a"),)``); ``a`` and ``b`` are its
    content in the first and second stream (None: absent there), in the
    shapes of the ``_side_*`` functions below.
    """

    sign: str
    kind: str
    key: tuple[tuple[str, object], ...]
    a: object = None
    b: object = None


def _perms_text(perms: PermKey) -> str:
    return "(" + ",".join(f"{p}{d}" + ("!" if f & 1 else "") for p, f, d in perms) + ")"


def _node_text(value: bytes, perms: PermKey) -> str:
    return f"{quote(value)} {_perms_text(perms)}"


def _access_text(access: int) -> str:
    return "".join(c for bit, c in ((1, "r"), (2, "w")) if access & bit) or "-"


def _pending_text(p: PendingKey) -> str:
    access, value, perms = p
    if not perms:
        return "deleted"
    return f"{_node_text(value, perms)} access={_access_text(access)}"


def _conn_text(c: tuple[object, ...]) -> str:
    ctype, spec, unique_id, in_data, out_data, resp = c
    if isinstance(spec, RingSpec):
        text = f"conn-type=ring domid={spec.domid} tdomid={spec.tdomid:#x} evtchn={spec.evtchn}"
    elif isinstance(spec, SocketSpec):
        text = f"conn-type=socket socket-fd={spec.socket_fd}"
    else:
        assert isinstance(spec, OpaqueSpec)
        text = f"conn-type={ctype} conn-spec={quote(spec.raw)}"
    if unique_id is not None:
        assert isinstance(unique_id, int)
        text += f" unique-id={unique_id:#x}"
    assert isinstance(in_data, bytes) and isinstance(out_data, bytes)
    return text + f" in={quote(in_data)} out={quote(out_data)} out-resp-len={resp}"


def _marks_text(m: tuple[tuple[int, ...], int]) -> str:
    return f"marks={''.join(str(n) for n in m[0]) or '-'} flags={m[1]:#x}"


def _quota_text(q: dict[str, int] | None) -> str:
    if q is None:
        return "none"
    return " ".join(f"{k}={v}" for k, v in q.items()) or "-"


def _global_text(g: tuple[int, int] | None) -> str:
    return "none" if g is None else f"rw-socket-fd={g[0]} evtchn-fd={g[1]}"


_SIDE_TEXT: dict[str, Any] = {
    "node": lambda v: _node_text(*v),
    "pending-node": _pending_text,
    "connection": _conn_text,
    "transaction-marks": _marks_text,
    "global-data": _global_text,
    "global-quota": _quota_text,
    "global-only-quota": _quota_text,
    "domain": lambda v: f"features={v[0]:#x} quota: {_quota_text(v[1])}",
    "domain-features": lambda v: f"{v:#x}",
    "domain-quota": _quota_text,
    "record": lambda v: f"len={len(v)} body={quote(v)}",
}


def _key_text(c: Change) -> str:
    key = dict(c.key)
    match c.kind:
        case "node":
            return f"node {key['path']}"
        case "pending-node":
            return f"pending node {key['path']} conn-id={key['conn-id']} tx-id={key['tx-id']}"
        case "watch":
            depth = "" if key["depth"] is None else f" depth={key['depth']}"
            return (
                f"watch conn-id={key['conn-id']} wpath={quote(str(key['wpath']))}"
                f" token={quote(str(key['token']))}{depth}"
            )
        case "connection":
            return f"connection conn-id={key['conn-id']}"
        case "transaction" | "transaction-marks":
            return f"transaction conn-id={key['conn-id']} tx-id={key['tx-id']}"
        case "global-data":
            return "global data"
        case "global-quota":
            return "global quota"
        case "global-only-quota":
            return "global-only quota"
        case "domain" | "domain-features" | "domain-quota":
            what = c.kind.partition("-")[2]
            return f"domain {key['domid']}" + (f" {what}" if what else "")
    return f"record {key['type']}"


def change_text(c: Change) -> str:
    """One line for ``c`` in the notation of ``xenstore-stream dump``."""
    label = _key_text(c)
    if c.kind in ("watch", "transaction"):
        if c.a is not None and c.b is not None:  # a count that changed
            return f"{c.sign} {label} (x{c.a} -> x{c.b})"
        return f"{c.sign} {label}"
    show = _SIDE_TEXT[c.kind]
    if c.kind == "node" and c.sign == "~":
        assert isinstance(c.a, tuple) and isinstance(c.b, tuple)
        va, pa = c.a
        vb, pb = c.b
        parts = []
        if va != vb:
            parts.append(f"value {quote(va)} -> {quote(vb)}")
        if pa != pb:
            parts.append(f"perms {_perms_text(pa)} -> {_perms_text(pb)}")
        return f"~ {label}: " + "; ".join(parts)
    if c.sign == "~":
        sep = ": " if c.kind in ("pending-node", "connection", "global-data") else " "
        return f"~ {label}{sep}{show(c.a)} -> {show(c.b)}"
    side = c.b if c.sign == "+" else c.a
    sep = {"node": " = ", "transaction-marks": " ", "record": " "}.get(c.kind, ": ")
    return f"{c.sign} {label}{sep}{show(side)}"


# --- JSON ------------------------------------------------------------------------


def _perms_json(perms: PermKey) -> list[object]:
    return [perm_to_json(NodePerm(p, f, d)) for p, f, d in perms]


def _side_json(kind: str, v: Any) -> object:
    out: dict[str, Any] = {}
    match kind:
        case "node":
            put_bytes(out, "value", v[0])
            out["perms"] = _perms_json(v[1])
        case "pending-node":
            out["access"] = v[0]
            put_bytes(out, "value", v[1])
            out["perms"] = _perms_json(v[2])
        case "connection":
            ctype, spec, unique_id, in_data, out_data, resp = v
            if isinstance(spec, RingSpec):
                out.update({"conn-type": "ring", "domid": spec.domid})
                out.update({"tdomid": spec.tdomid, "evtchn": spec.evtchn})
            elif isinstance(spec, SocketSpec):
                out.update({"conn-type": "socket", "socket-fd": spec.socket_fd})
            else:
                out["conn-type"] = ctype
                put_bytes(out, "conn-spec", spec.raw)
            if unique_id is not None:
                out["unique-id"] = unique_id
            put_bytes(out, "in", in_data)
            put_bytes(out, "out", out_data)
            out["out-resp-len"] = resp
        case "transaction-marks":
            out = {"marks": "".join(str(n) for n in v[0]), "flags": v[1]}
        case "global-data":
            out = {"rw-socket-fd": v[0], "evtchn-fd": v[1]}
        case "domain":
            out = {"features": v[0], "quota": dict(v[1])}
        case "record":
            put_bytes(out, "body", v)
        case _:
            return v  # counts, features, quota dicts: JSON already
    return out


def change_json(c: Change) -> dict[str, Any]:
    """``c`` as one object of ``diff --json``: change, kind, the key's fields, a, b."""
    out: dict[str, Any] = {"change": c.sign, "kind": c.kind}
    out.update(c.key)
    if c.a is not None:
        out["a"] = _side_json(c.kind, c.a)
    if c.b is not None:
        out["b"] = _side_json(c.kind, c.b)
    return out


# --- the differences -------------------------------------------------------------


def _sided(kind: str, key: tuple[tuple[str, object], ...], a: object, b: object) -> Change:
    sign = "+" if a is None else "-" if b is None else "~"
    return Change(sign, kind, key, a, b)


def diff_states(a: StreamState, b: StreamState) -> Iterator[str]:
    """Lines describing how ``b`` differs from ``a`` (``-`` only in a, ``+`` only in b, ``~`` changed)."""
    for change in diff_changes(a, b):
        yield change_text(change)


def diff_changes(a: StreamState, b: StreamState) -> Iterator[Change]:
    """How ``b`` differs from ``a``, one :class:`Change` per difference, in :data:`KINDS` order."""
    yield from _diff_nodes(a, b)
    yield from _diff_pending(a, b)
    yield from _diff_watches(a, b)
    yield from _diff_connections(a, b)
    for t in sorted(a.transactions ^ b.transactions):
        tkey: tuple[tuple[str, object], ...] = (("conn-id", t[0]), ("tx-id", t[1]))
        yield Change("+" if t in b.transactions else "-", "transaction", tkey)
    yield from _diff_marks(a, b)
    for kind, va, vb in (
        ("global-data", a.global_data, b.global_data),
        ("global-quota", a.global_quota, b.global_quota),
        ("global-only-quota", a.global_only_quota, b.global_only_quota),
    ):
        if va != vb:
            yield _sided(kind, (), va, vb)
    yield from _diff_domains(a, b)
    for u in sorted((a.unknown | b.unknown).keys()):
        if a.unknown[u] != b.unknown[u]:
            key: tuple[tuple[str, object], ...] = (("type", type_name(u[0])),)
            if b.unknown[u] > a.unknown[u]:
                yield Change("+", "record", key, None, u[1])
            else:
                yield Change("-", "record", key, u[1], None)


def _diff_nodes(a: StreamState, b: StreamState) -> Iterator[Change]:
    for path in sorted(a.nodes.keys() | b.nodes.keys()):
        na, nb = a.nodes.get(path), b.nodes.get(path)
        if na != nb:
            yield _sided("node", (("path", path),), na, nb)


def _diff_pending(a: StreamState, b: StreamState) -> Iterator[Change]:
    for key in sorted(a.pending.keys() | b.pending.keys()):
        pa, pb = a.pending.get(key), b.pending.get(key)
        if pa != pb:
            names = (("path", key[2]), ("conn-id", key[0]), ("tx-id", key[1]))
            yield _sided("pending-node", names, pa, pb)


def _diff_watches(a: StreamState, b: StreamState) -> Iterator[Change]:
    for w in sorted((a.watches | b.watches).keys(), key=repr):
        na, nb = a.watches[w], b.watches[w]
        if na != nb:
            key = (("conn-id", w[0]), ("wpath", w[1]), ("token", w[2]), ("depth", w[3]))
            sign = "+" if nb > na else "-"
            if na and nb:  # the same watch a different number of times
                yield Change(sign, "watch", key, na, nb)
            else:
                yield Change(sign, "watch", key)


def _diff_connections(a: StreamState, b: StreamState) -> Iterator[Change]:
    for cid in sorted(a.conns.keys() | b.conns.keys()):
        ca, cb = a.conns.get(cid), b.conns.get(cid)
        if ca != cb:
            yield _sided("connection", (("conn-id", cid),), ca, cb)


def _diff_marks(a: StreamState, b: StreamState) -> Iterator[Change]:
    for key in sorted(a.marks.keys() | b.marks.keys()):
        ma, mb = a.marks.get(key), b.marks.get(key)
        if ma != mb:
            yield _sided("transaction-marks", (("conn-id", key[0]), ("tx-id", key[1])), ma, mb)


def _diff_domains(a: StreamState, b: StreamState) -> Iterator[Change]:
    for d in sorted(a.domains.keys() | b.domains.keys()):
        da, db = a.domains.get(d), b.domains.get(d)
        if da == db:
            continue
        key = (("domid", d),)
        if da is None or db is None:
            yield _sided("domain", key, da, db)
            continue
        if da[0] != db[0]:
            yield Change("~", "domain-features", key, da[0], db[0])
        if da[1] != db[1]:
            yield Change("~", "domain-quota", key, da[1], db[1])
