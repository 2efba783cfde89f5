"""``xenstore-stream convert`` in bounded memory, whatever the size of the stream.

:func:`.writer.adapt_for_target` converts a list of records held whole in
memory; :class:`BoundedConverter` gives the same records, in the same order,
with the same descriptions of what was dropped, while holding a fixed number
of them:

* target ``spec`` keeps the input order, so each record is converted
  (byte order of pending messages, version, :func:`.writer.adapt_record`) and
  passed on as it is read: nothing is held;
* the C targets put records in the C writer's order: GLOBAL_DATA,
  GLOBAL_QUOTA_DATA, each connection followed by its watches, watches of
  unknown connections, the rest (nodes) in input order, DOMAIN_DATA, one END.
  The fixed-order groups go to :class:`.spill.Spool` files; connections and
  watches are sorted by connection id (:class:`.spill.ExternalSorter`) to
  find each watch's connection, then sorted again into output order.
  Target ``c-head`` then drops the DOMAIN_DATA its reader cannot place, by
  the same rule as the in-memory path (:func:`.writer.c_head_domain_loss`).

Without ``lossy``, a loss raises :class:`.writer.StreamWriteError` with the
first five losses and their count, as the in-memory path does; the error
comes once the input has been read (the records before it may already have
been passed on, so the caller writes to a temporary file).

I/O rule: temporary files come from the ``new_file`` factory the caller
passes (see :mod:`.spill`); this module opens nothing itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from .byteorder import swap_pending
from .records import (
    ConnectionData,
    DomainData,
    End,
    GlobalData,
    GlobalQuotaData,
    Record,
    WatchData,
    WatchDataExtended,
)
from .spill import DEFAULT_LIMITS, ExternalSorter, SpillFactory, SpillLimits, Spool
from .writer import (
    TARGET_C_HEAD,
    TARGET_SPEC,
    DomainTracker,
    adapt_record,
    c_head_domain_loss,
    lossy_refusal,
)

_SHOWN = 5  # losses named in the refusal


class BoundedConverter:
    """Converts a stream's records for ``version``/``target`` (see the module doc).

    ``src_big_endian``/``big_endian``: byte order of the input and of the
    output (pending messages are swapped when they differ); ``on_drop``
    receives each loss as it is found when ``lossy``.
    """

    def __init__(
        self,
        *,
        version: int,
        target: str,
        lossy: bool,
        src_big_endian: bool,
        big_endian: bool,
        new_file: SpillFactory,
        limits: SpillLimits = DEFAULT_LIMITS,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.version = version
        self.target = target
        self.lossy = lossy
        self._swap = src_big_endian != big_endian
        self._src_big = src_big_endian
        self._new_file = new_file
        self._limits = limits
        self._on_drop = on_drop
        self.dropped = 0
        self.first_dropped: list[str] = []
        self.peak_held = 0

    def _lost(self, what: list[str]) -> None:
        for text in what:
            self.dropped += 1
            if len(self.first_dropped) < _SHOWN:
                self.first_dropped.append(text)
            if self.lossy and self._on_drop is not None:
                self._on_drop(text)
        what.clear()

    def _adapted(self, records: Iterable[Record]) -> Iterator[Record]:
        lost: list[str] = []
        for r in records:
            if self._swap:
                r = swap_pending(r, self._src_big)
            got = adapt_record(r, self.version, self.target, lost)
            if lost:
                self._lost(lost)
            if got is not None:
                yield got

    def convert(self, records: Iterable[Record]) -> Iterator[Record]:
        """The converted records in output order; raises at the end on a refused loss."""
        out = self._in_order(records) if self.target == TARGET_SPEC else self._c_order(records)
        for r in out:
            if self.dropped and not self.lossy:
                continue  # refused: count the rest of the losses, pass nothing more on
            yield r
        if self.dropped and not self.lossy:
            raise lossy_refusal(self.version, self.target, self.first_dropped, self.dropped)

    def _in_order(self, records: Iterable[Record]) -> Iterator[Record]:
        return self._adapted(records)

    def _c_order(self, records: Iterable[Record]) -> Iterator[Record]:
        first = Spool(self._new_file, self._limits)
        quota = Spool(self._new_file, self._limits)
        middle = Spool(self._new_file, self._limits)
        domains = Spool(self._new_file, self._limits)
        by_conn = ExternalSorter(self._new_file, self._limits)
        end: Record | None = None
        for seq, r in enumerate(self._adapted(records)):
            if isinstance(r, GlobalData):
                first.add((r,))
            elif isinstance(r, GlobalQuotaData):
                quota.add((r,))
            elif isinstance(r, ConnectionData):
                # connections sort before the watches of their id
                by_conn.add((r.conn_id, 0, seq, r))
            elif isinstance(r, (WatchData, WatchDataExtended)):
                by_conn.add((r.conn_id, 1, seq, r))
            elif isinstance(r, DomainData):
                domains.add((r,))
            elif isinstance(r, End):
                end = r if end is None else end
            else:
                middle.add((r,))
        sections = self._connection_sections(by_conn)
        tracker = DomainTracker() if self.target == TARGET_C_HEAD else None
        for spool in (first, quota):
            yield from self._released(spool, tracker)
        for item in sections:
            yield self._seen(item[-1], tracker)
        yield from self._released(middle, tracker)
        yield from self._released(domains, tracker)
        if end is not None:
            yield end
        parts = (first, quota, middle, domains, by_conn, sections)
        self.peak_held = sum(p.peak_held for p in parts)

    def _connection_sections(self, by_conn: ExternalSorter) -> ExternalSorter:
        """Connections and watches keyed by their place in the output.

        Each connection keeps its input place; the watches of a connection id
        follow the first connection with that id, in input order; watches
        whose connection never comes follow all connections, grouped by id,
        the groups in the order of their first watch.
        """
        out = ExternalSorter(self._new_file, self._limits)
        group: int | None = None
        owner: int | None = None  # place of the group's first connection
        orphans: int | None = None  # place of the group's first watch, without a connection
        for conn_id, kind, seq, r in by_conn:
            if conn_id != group:
                group, owner, orphans = conn_id, None, None
            if kind == 0:
                out.add((0, seq, 0, 0, r))
                owner = seq if owner is None else owner
            elif owner is not None:
                out.add((0, owner, 1, seq, r))
            else:
                orphans = seq if orphans is None else orphans
                out.add((1, orphans, seq, 0, r))
        return out

    def _seen(self, r: Record, tracker: DomainTracker | None) -> Record:
        if tracker is not None:
            tracker.see(r)
        return r

    def _released(self, spool: Spool, tracker: DomainTracker | None) -> Iterator[Record]:
        for (r,) in spool:
            if tracker is not None:
                loss = c_head_domain_loss(r, tracker)
                if loss is not None:
                    self._lost([loss])
                    continue
            yield r


__all__ = ["BoundedConverter"]
