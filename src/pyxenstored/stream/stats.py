"""What a stream holds, counted (``xenstore-stream stats``).

Records by type; per owner domain: nodes, value bytes, watches; the
largest nodes; quota defaults and the per-domain values that differ from
them; features.  Constant memory but for the domain records (capped).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator
from typing import Any

from .records import (
    RECORD_TYPES,
    ConnectionData,
    DomainData,
    GlobalQuotaData,
    NodeData,
    Record,
    RingSpec,
    StreamHeader,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    type_name,
)
from .text import quota_text

#: Domain records kept for the quota and features summary.
MAX_DOMAINS = 100_000


class StreamStats:
    """Counts of one stream, fed a record at a time (:meth:`add`), printed by :meth:`lines`."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.by_type: Counter[int] = Counter()
        self.nodes_by_dom: Counter[int] = Counter()
        self.bytes_by_dom: Counter[int] = Counter()
        self.watches_by_dom: Counter[str] = Counter()
        self.conn_owner: dict[int, str] = {}
        self.largest: list[tuple[int, str]] = []  # a heap of the top ``top`` (size, path)
        self.global_quota: GlobalQuotaData | None = None
        self.domains: list[DomainData] = []
        self.total_value = 0

    def add(self, r: Record) -> None:
        if isinstance(r, UnknownRecord):
            self.by_type[r.type] += 1
            return
        self.by_type[RECORD_TYPES[type(r)]] += 1
        if isinstance(r, NodeData):
            if r.conn_id == 0 and r.perms:
                self._node(r)
        elif isinstance(r, ConnectionData):
            spec = r.spec
            self.conn_owner[r.conn_id] = (
                f"dom{spec.domid}" if isinstance(spec, RingSpec) else f"socket conn {r.conn_id}"
            )
        elif isinstance(r, (WatchData, WatchDataExtended)):
            self.watches_by_dom[self.conn_owner.get(r.conn_id, f"unknown conn {r.conn_id}")] += 1
        elif isinstance(r, GlobalQuotaData):
            self.global_quota = r
        elif isinstance(r, DomainData) and len(self.domains) < MAX_DOMAINS:
            self.domains.append(r)

    def _node(self, r: NodeData) -> None:
        owner = r.perms[0].domid
        self.nodes_by_dom[owner] += 1
        self.bytes_by_dom[owner] += len(r.value)
        self.total_value += len(r.value)
        item = (len(r.value), r.path)
        if len(self.largest) < self.top:
            heapq.heappush(self.largest, item)
        elif item > self.largest[0]:
            heapq.heapreplace(self.largest, item)

    def lines(self, header: StreamHeader, size: int) -> Iterator[str]:
        """The report; ``size`` is the stream's size in bytes."""
        order = "big-endian" if header.big_endian else "little-endian"
        total = sum(self.by_type.values())
        yield f"stream: version {header.version}, {order}, {total} records, {size} bytes"
        yield "records by type:"
        for rtype, n in sorted(self.by_type.items()):
            yield f"  {type_name(rtype):<22}{n:>10}"
        yield from self._owner_lines()
        yield f"largest nodes (top {self.top}):"
        for n, path in sorted(self.largest, reverse=True):
            yield f"  {n:>8}  {path}"
        yield from self._quota_lines()

    def to_json(self, header: StreamHeader, size: int) -> dict[str, Any]:
        """The report as one JSON object (``stats --json``), the same facts as :meth:`lines`."""
        defaults = {}
        if self.global_quota is not None:
            defaults = {q.name: q.value for q in self.global_quota.domain_quota}
        owners = [
            {
                "domid": dom,
                "nodes": self.nodes_by_dom[dom],
                "value-bytes": self.bytes_by_dom[dom],
                "watches": self.watches_by_dom.get(f"dom{dom}", 0),
            }
            for dom in sorted(self.nodes_by_dom)
        ]
        features: Counter[int] = Counter(d.features for d in self.domains)
        special = {
            str(d.domid): {q.name: q.value for q in d.quota if defaults.get(q.name) != q.value}
            for d in self.domains
        }
        return {
            "version": header.version,
            "big-endian": header.big_endian,
            "records": sum(self.by_type.values()),
            "bytes": size,
            "records-by-type": {type_name(t): n for t, n in sorted(self.by_type.items())},
            "nodes": sum(self.nodes_by_dom.values()),
            "value-bytes": self.total_value,
            "by-owner": owners,
            "watches-by-connection": dict(sorted(self.watches_by_dom.items())),
            "largest-nodes": [
                {"path": path, "bytes": n} for n, path in sorted(self.largest, reverse=True)
            ],
            "domain-quota": defaults if self.global_quota is not None else None,
            "global-quota": (
                {q.name: q.value for q in self.global_quota.global_quota}
                if self.global_quota is not None
                else None
            ),
            "domain-quota-differences": {d: q for d, q in special.items() if q},
            "domain-features": {f"{f:#x}": n for f, n in sorted(features.items())},
        }

    def _owner_lines(self) -> Iterator[str]:
        nodes_by_dom = self.nodes_by_dom
        yield (
            f"nodes by owner ({sum(nodes_by_dom.values())} nodes, {self.total_value} value bytes):"
        )
        yield f"  {'domain':<10}{'nodes':>10}{'value-bytes':>14}{'watches':>10}"
        for dom in sorted(nodes_by_dom):
            w = self.watches_by_dom.get(f"dom{dom}", 0)
            yield f"  {dom:<10}{nodes_by_dom[dom]:>10}{self.bytes_by_dom[dom]:>14}{w:>10}"
        others = {
            k: v
            for k, v in self.watches_by_dom.items()
            if not (k.startswith("dom") and int(k[3:]) in nodes_by_dom)
        }
        if others:
            yield "watches of other connections:"
            for k, v in sorted(others.items()):
                yield f"  {k:<24}{v:>10}"

    def _quota_lines(self) -> Iterator[str]:
        yield "quota:"
        defaults: dict[str, int] = {}
        if self.global_quota is not None:
            defaults = {q.name: q.value for q in self.global_quota.domain_quota}
            yield f"  per-domain defaults: {quota_text(self.global_quota.domain_quota)}"
            if self.global_quota.global_quota:
                yield f"  global only: {quota_text(self.global_quota.global_quota)}"
        else:
            yield "  no GLOBAL_QUOTA_DATA"
        features: Counter[int] = Counter()
        for d in self.domains:
            features[d.features] += 1
            special = [q for q in d.quota if defaults.get(q.name) != q.value]
            if special:
                yield f"  domain {d.domid}: {quota_text(special)}"
        if features:
            yield "domain features: " + ", ".join(
                f"{f:#x} x{n}" for f, n in sorted(features.items())
            )
