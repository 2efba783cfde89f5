"""``xenstore-stream diff`` in bounded memory, whatever the size of the streams.

:mod:`.diff` compares two :class:`~.diff.StreamState` objects held whole in
memory (1.7 GB for a 160 MB stream).  :func:`diff_streams` gives the same
lines for streams of any size:

1. each side is read into a :class:`~.diff.StreamState` *batch* (the same
   ``add`` as the in-memory engine, so a record means the same thing) of at
   most ``limits.cap`` records; a full batch is written out as one sorted run
   per field (nodes by path, pending nodes by key, watches by the order
   ``diff_states`` prints them in, ...) and a fresh batch begins;
2. per field, the runs of each side are merged (:class:`.spill.ExternalSorter`)
   and folded as the in-memory state would have been built: the last record
   wins for nodes, connections, domains, ...; watches and unknown records are
   counted; transactions are a set;
3. the two sorted sides are walked together, and the keys that differ are
   gathered into small :class:`~.diff.StreamState` pairs, one field and one
   key range at a time, which ``diff_states`` (or the ``differ`` passed in)
   turns into lines.  Fields are visited in the order ``diff_states`` prints
   them and each field in its sort order, so the output is the in-memory
   engine's, line for line (tests compare the two).

When neither side outgrows one batch nothing is written and the two batches
go to ``differ`` directly.  Memory: one batch, plus ``fan_in`` x ``chunk``
items per field and side while merging, plus ``chunk_keys`` differing keys.

I/O rule: temporary files come from the ``new_file`` factory the caller
passes (see :mod:`.spill`); this module opens nothing itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .byteorder import swap_pending
from .diff import StreamState, diff_states
from .records import ConnectionData, NodeData, Record, UnknownRecord
from .spill import DEFAULT_LIMITS, ExternalSorter, Item, SpillFactory, SpillLimits

T = TypeVar("T")
Differ = Callable[[StreamState, StreamState], Iterable[T]]

_LAST, _COUNT, _SET = "last", "count", "set"
# The keyed fields of StreamState in the order diff_states prints them, and
# how repeated keys combine.  The global fields (single values) print after
# "marks" and before "domains".
_BEFORE_GLOBALS = (
    ("nodes", _LAST),
    ("pending", _LAST),
    ("watches", _COUNT),
    ("conns", _LAST),
    ("transactions", _SET),
    ("marks", _LAST),
)
_AFTER_GLOBALS = (("domains", _LAST), ("unknown", _COUNT))
_FIELDS = _BEFORE_GLOBALS + _AFTER_GLOBALS
_ABSENT = object()


def _sort_key(field: str, key: Any) -> Any:
    # diff_states orders watches by repr (their keys mix None and int depths)
    return repr(key) if field == "watches" else key


def _weight(r: Record) -> int:
    """A rough size of what ``r`` adds to a batch, to bound batches in bytes."""
    if isinstance(r, NodeData):
        return 160 + 2 * len(r.path) + len(r.value) + 40 * len(r.perms)
    if isinstance(r, ConnectionData):
        return 200 + len(r.in_data) + len(r.out_data)
    if isinstance(r, UnknownRecord):
        return 100 + len(r.body)
    return 200


class _Side:
    """One stream, read into batches that spill to per-field sorted runs."""

    def __init__(self, new_file: SpillFactory, limits: SpillLimits) -> None:
        self.limits = limits
        self.sorters = {name: ExternalSorter(new_file, limits) for name, _ in _FIELDS}
        self.batch = StreamState()
        self.batches = 0  # batches written out
        self.held = 0
        self.held_bytes = 0
        self.peak_held = 0
        # the global fields: one value each, the last record wins
        self.global_data: tuple[int, int] | None = None
        self.global_quota: dict[str, int] | None = None
        self.global_only_quota: dict[str, int] | None = None

    def read(self, records: Iterable[Record], big_endian: bool, other: _Side | None = None) -> None:
        """Take a stream in; ``other``: the side read before, whose batch must go first."""
        for r in records:
            if big_endian:
                # compare pending wire messages in one byte order (as state_of does)
                r = swap_pending(r, True)
            self.batch.add(r)
            self.held += 1
            self.held_bytes += _weight(r)
            if self.held > self.peak_held:
                self.peak_held = self.held
            if self.held >= self.limits.cap or self.held_bytes >= self.limits.cap_bytes:
                if other is not None and other.held:
                    other.spill()  # hold one batch, not one per side
                self.spill()

    def spill(self) -> None:
        """Write the batch as one sorted run per field and start a new one."""
        b, n = self.batch, self.batches
        for name, kind in _FIELDS:
            got = getattr(b, name)
            if not got:
                continue
            if kind == _SET:
                items: list[Item] = [(k, n, k, None) for k in got]
            else:
                items = [(_sort_key(name, k), n, k, v) for k, v in got.items()]
            items.sort()  # sort keys are unique in a batch: payloads are never compared
            self.sorters[name].add_run(items)
        self._keep_globals(b)
        self.batch = StreamState()
        self.batches += 1
        self.held = self.held_bytes = 0

    def _keep_globals(self, b: StreamState) -> None:
        if b.global_data is not None:
            self.global_data = b.global_data
        if b.global_quota is not None:
            self.global_quota = b.global_quota
            self.global_only_quota = b.global_only_quota

    def folded(self, name: str, kind: str) -> Iterator[tuple[Any, Any, Any]]:
        """``(sort key, key, value)`` of one field, as one in-memory state would hold it."""
        group: tuple[Any, Any, Any] | None = None
        for sk, _batch, key, value in self.sorters[name]:
            if group is not None and group[0] == sk:
                if kind == _LAST:
                    group = (sk, key, value)
                elif kind == _COUNT:
                    group = (sk, key, group[2] + value)
                continue
            if group is not None:
                yield group
            group = (sk, key, True if kind == _SET else value)
        if group is not None:
            yield group


def _joined(
    a: Iterator[tuple[Any, Any, Any]], b: Iterator[tuple[Any, Any, Any]]
) -> Iterator[tuple[Any, Any, Any]]:
    """``(key, value in a, value in b)`` for each key of either side whose values differ."""
    end: tuple[Any, Any, Any] = (None, None, _ABSENT)
    x, y = next(a, end), next(b, end)
    while x is not end or y is not end:
        if y is end or (x is not end and x[0] < y[0]):
            yield x[1], x[2], _ABSENT
            x = next(a, end)
        elif x is end or y[0] < x[0]:
            yield y[1], _ABSENT, y[2]
            y = next(b, end)
        else:
            if x[2] != y[2]:
                yield x[1], x[2], y[2]
            x, y = next(a, end), next(b, end)


def _put(state: StreamState, name: str, kind: str, key: Any, value: Any) -> None:
    if value is _ABSENT:
        return
    if kind == _SET:
        state.transactions.add(key)
    else:
        getattr(state, name)[key] = value


def _field_diff(
    a: _Side, b: _Side, name: str, kind: str, differ: Differ[T], chunk_keys: int
) -> Iterator[T]:
    ca, cb, n = StreamState(), StreamState(), 0
    for key, va, vb in _joined(a.folded(name, kind), b.folded(name, kind)):
        _put(ca, name, kind, key, va)
        _put(cb, name, kind, key, vb)
        n += 1
        if n >= chunk_keys:
            yield from differ(ca, cb)
            ca, cb, n = StreamState(), StreamState(), 0
    if n:
        yield from differ(ca, cb)


def _globals_only(side: _Side) -> StreamState:
    return StreamState(
        global_data=side.global_data,
        global_quota=side.global_quota,
        global_only_quota=side.global_only_quota,
    )


@dataclasses.dataclass(slots=True)
class DiffRun:
    """What a :func:`diff_streams` run held, for tests and ``--verbose`` figures."""

    spilled: bool = False
    peak_held: int = 0
    runs_written: int = 0


def diff_streams(
    a: Iterable[Record],
    a_big_endian: bool,
    b: Iterable[Record],
    b_big_endian: bool,
    new_file: SpillFactory,
    *,
    limits: SpillLimits = DEFAULT_LIMITS,
    run: DiffRun | None = None,
) -> Iterator[str]:
    """The lines of ``diff_states(state_of(a), state_of(b))``, in bounded memory.

    ``a``/``b``: each stream's records; ``*_big_endian``: its byte order;
    ``new_file``: a factory of temporary binary files.  ``run``, if given,
    receives what was held.
    """
    return diff_streams_with(
        diff_states, a, a_big_endian, b, b_big_endian, new_file, limits=limits, run=run
    )


def diff_streams_with(
    differ: Differ[T],
    a: Iterable[Record],
    a_big_endian: bool,
    b: Iterable[Record],
    b_big_endian: bool,
    new_file: SpillFactory,
    *,
    limits: SpillLimits = DEFAULT_LIMITS,
    chunk_keys: int = 4096,
    run: DiffRun | None = None,
) -> Iterator[T]:
    """:func:`diff_streams` with another ``differ`` (two states to output items)."""
    run = run if run is not None else DiffRun()
    side_a, side_b = _Side(new_file, limits), _Side(new_file, limits)
    side_a.read(a, a_big_endian)
    if side_a.batches:
        side_a.spill()  # the rest of a too: b is read with one batch in memory
    side_b.read(b, b_big_endian, side_a)
    run.peak_held = max(side_a.peak_held, side_b.peak_held)
    if not side_a.batches and not side_b.batches:
        yield from differ(side_a.batch, side_b.batch)
        return
    run.spilled = True
    for side in (side_a, side_b):
        if side.held:
            side.spill()
    run.runs_written = sum(
        s.runs_written for side in (side_a, side_b) for s in side.sorters.values()
    )
    for name, kind in _BEFORE_GLOBALS:
        yield from _field_diff(side_a, side_b, name, kind, differ, chunk_keys)
    yield from differ(_globals_only(side_a), _globals_only(side_b))
    for name, kind in _AFTER_GLOBALS:
        yield from _field_diff(side_a, side_b, name, kind, differ, chunk_keys)


__all__ = ["DiffRun", "diff_streams", "diff_streams_with"]
