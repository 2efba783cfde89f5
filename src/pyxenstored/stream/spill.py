"""Spill-to-disk building blocks for the bounded-memory stream tools.

``diff`` and ``convert`` must handle streams far larger than memory (a
gigabyte of NODE_DATA): what they cannot hold is written to temporary files
and read back in order.  Two structures do that:

* :class:`Spool` -- a first-in first-out list of items (``convert`` keeps the
  nodes in input order while it collects the records C wants first);
* :class:`ExternalSorter` -- sorted runs merged on the way out (``diff``
  compares nodes by path, ``convert`` groups watches with their connection).

Both hold at most a fixed number of items in memory, whatever the input
size: a sorter keeps up to ``cap`` items before it writes a sorted run, and
merges runs ``fan_in`` at a time (levelled, so each item is rewritten about
``log(runs) / log(fan_in)`` times), reading each run ``chunk`` items at a
time.  :attr:`peak_held` counts what was held, for the tests.

I/O rule: this package does no I/O of its own.  The files are made by a
factory the caller passes in (the command line passes
:func:`tempfile.TemporaryFile`, tests pass :class:`io.BytesIO`); these
classes only write, seek and read the file objects it returns.  Items are
pickled: they are tuples of the caller's own values (records, strings,
bytes, ints) and never leave this process.
"""

from __future__ import annotations

import dataclasses
import heapq
import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

# A new empty binary file, readable and writable (``w+b``), e.g. tempfile.TemporaryFile.
SpillFactory = Callable[[], IO[bytes]]
Item = tuple[Any, ...]


@dataclasses.dataclass(slots=True, frozen=True)
class SpillLimits:
    """How much the spilling structures may hold in memory.

    ``cap``: items a sorter (or a diff side) buffers before it writes a run;
    ``cap_bytes``: the same bound in an estimate of the payload bytes, so that
    large values spill sooner; ``fan_in``: runs merged at once; ``chunk``:
    items per pickled block (what a reader of one run holds).
    """

    cap: int = 100_000
    cap_bytes: int = 24 << 20
    fan_in: int = 16
    chunk: int = 512

    def __post_init__(self) -> None:
        if self.cap < 1 or self.cap_bytes < 1 or self.fan_in < 2 or self.chunk < 1:
            raise ValueError(f"spill limits out of range: {self}")


DEFAULT_LIMITS = SpillLimits()


def _write_blocks(f: IO[bytes], items: Iterable[Item], chunk: int) -> None:
    block: list[Item] = []
    for item in items:
        block.append(item)
        if len(block) >= chunk:
            pickle.dump(block, f, pickle.HIGHEST_PROTOCOL)
            block = []
    if block:
        pickle.dump(block, f, pickle.HIGHEST_PROTOCOL)


def _read_blocks(f: IO[bytes]) -> Iterator[Item]:
    f.seek(0)
    while True:
        try:
            # one unpickler per block: an unpickler's memo outlives a load()
            block = pickle.load(f)
        except EOFError:
            return
        yield from block


class Spool:
    """Items kept in the order they were added, spilled in blocks of ``chunk``."""

    def __init__(self, new_file: SpillFactory, limits: SpillLimits = DEFAULT_LIMITS) -> None:
        self._new_file = new_file
        self._chunk = limits.chunk
        self._file: IO[bytes] | None = None
        self._block: list[Item] = []
        self.count = 0
        self.peak_held = 0

    def add(self, item: Item) -> None:
        self._block.append(item)
        self.count += 1
        if len(self._block) > self.peak_held:
            self.peak_held = len(self._block)
        if len(self._block) >= self._chunk:
            if self._file is None:
                self._file = self._new_file()
            pickle.dump(self._block, self._file, pickle.HIGHEST_PROTOCOL)
            self._block = []

    def __iter__(self) -> Iterator[Item]:
        """Every item in order (once; the file is closed at the end)."""
        if self._file is not None:
            self._file.flush()
            yield from _read_blocks(self._file)
            self._file.close()
            self._file = None
        block, self._block = self._block, []
        yield from block


class ExternalSorter:
    """Items in sorted order, with at most ``limits.cap`` of them in memory.

    Items are tuples compared as tuples: callers make a prefix unique (e.g.
    a sequence number), so that the comparison never reaches a payload that
    has no order.  :meth:`add_run` takes an already sorted batch (``diff``
    sorts its own batches); :meth:`add` buffers and sorts.
    """

    def __init__(self, new_file: SpillFactory, limits: SpillLimits = DEFAULT_LIMITS) -> None:
        self._new_file = new_file
        self._limits = limits
        self._buffer: list[Item] = []
        # _levels[n]: runs that are the merge of fan_in ** n batches
        self._levels: list[list[IO[bytes]]] = []
        self.count = 0
        self.peak_held = 0
        self.runs_written = 0

    def add(self, item: Item) -> None:
        self._buffer.append(item)
        self.count += 1
        if len(self._buffer) > self.peak_held:
            self.peak_held = len(self._buffer)
        if len(self._buffer) >= self._limits.cap:
            self._buffer.sort()
            self.add_run(self._buffer)
            self._buffer = []

    def add_run(self, items: Iterable[Item]) -> None:
        """Write ``items`` (already sorted) as one run; merge a full level."""
        self._put(0, self._write(items))

    def _write(self, items: Iterable[Item]) -> IO[bytes]:
        f = self._new_file()
        _write_blocks(f, items, self._limits.chunk)
        f.flush()
        self.runs_written += 1
        return f

    def _put(self, level: int, run: IO[bytes]) -> None:
        while len(self._levels) <= level:
            self._levels.append([])
        runs = self._levels[level]
        runs.append(run)
        if len(runs) >= self._limits.fan_in:
            self._levels[level] = []
            merged = self._write(heapq.merge(*(_read_blocks(r) for r in runs)))
            for r in runs:
                r.close()
            self._put(level + 1, merged)

    def __iter__(self) -> Iterator[Item]:
        """Every item in order (once; the runs are closed at the end)."""
        self._buffer.sort()
        runs = [r for level in self._levels for r in level]
        self._levels = []
        buffer, self._buffer = self._buffer, []
        try:
            yield from heapq.merge(buffer, *(_read_blocks(r) for r in runs))
        finally:
            for r in runs:
                r.close()
