"""Live update's records: what a running daemon's state becomes, and back.

The server-free half of a live update (``server/liveupdate.py`` runs the
session and the exec, ``server/successor.py`` the successor's check):

* **state -> records**: :func:`connection_record` shapes one connection
  (its transport's spec, the bytes it has pending) as CONNECTION_DATA;
  :func:`live_update_records` adds the store (:func:`~.dump.dump_state`)
  and fits the whole to the program that reads it next;
  :func:`write_state` writes the stream to the state file, feeding the
  same bytes to the successor's check run as they are written.
* **records -> state**: :func:`split_output` cuts a restored connection's
  pending output into the messages to queue again.

The rules by target (the successor, known from the program being exec'd):

==================  =======  =====================================================
successor           version  what the records are
==================  =======  =====================================================
pyxenstored         2        everything, committed nodes in runs (no record per
                             node), produced while they are written
pyxenstored ``-v1`` 1        what version 1 carries; the rest is a loss
C 4.17 (``-v1``)    1        a placeholder ring connection for the privileged
                             domain when it has none (4.17 builds its database
                             while restoring it, and crashes without one);
                             connection ids renumbered 1, 2, 3... as C writes
                             them; losses: open transactions, watch depths,
                             quota and features other than the command line's,
                             unknown records, connections' unique ids
C HEAD (``-v2``)    2        as for 4.17; losses: open transactions only
==================  =======  =====================================================

A loss refuses the update unless ``-F`` (the session's business): the lists
made here say what would be lost, in words for the reply.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import BinaryIO, Protocol

from ..store import Store
from ..store import quota as q
from ..store.features import SUPPORTED_FEATURES
from ..stream import (
    CommittedNode,
    ConnectionData,
    DomainData,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    Record,
    RingSpec,
    SocketSpec,
    StreamWriter,
    TransactionData,
    UnknownRecord,
    WatchData,
    WatchDataExtended,
    adapt_for_target,
)
from ..stream.records import CONN_FIELD_UNIQUE_ID, CONN_TYPE_RING, CONN_TYPE_SOCKET
from ..stream.text import quote
from ..stream.txmarks import is_marks_name
from ..wire import DOMID_INVALID, HEADER_SIZE, iter_frames
from .dump import DumpError, Preserved, dump_state, quota_values

#: Local event-channel port named in the placeholder ring connection of the
#: privileged domain that a C successor needs (the shim's first bound port).
C_DOM0_PORT = 2
#: The most pending input a CONNECTION_DATA record carries (its length is a u16).
MAX_PENDING_INPUT = 0xFFFF

Records = Iterable[Record | list[CommittedNode]]


# --- state -> records ----------------------------------------------------------------


def connection_record(
    conn_id: int,
    spec: SocketSpec | RingSpec,
    in_data: bytes,
    out_data: bytes,
    out_resp_len: int,
    unique_id: int | None = None,
) -> ConnectionData:
    """One connection as CONNECTION_DATA; :class:`DumpError` if its input does not fit.

    ``unique_id`` (rings only): the domain's unique id, when known.
    """
    if len(in_data) > MAX_PENDING_INPUT:
        raise DumpError(
            f"connection {conn_id} has {len(in_data)} bytes of pending input"
            f" (max {MAX_PENDING_INPUT})"
        )
    if isinstance(spec, SocketSpec):
        return ConnectionData(conn_id, CONN_TYPE_SOCKET, 0, spec, in_data, out_data, out_resp_len)
    return ConnectionData(
        conn_id,
        CONN_TYPE_RING,
        CONN_FIELD_UNIQUE_ID if unique_id is not None else 0,
        spec,
        in_data,
        out_data,
        out_resp_len,
        unique_id,
    )


def live_update_records(
    store: Store,
    conns: list[ConnectionData],
    *,
    global_data: GlobalData,
    preserved: Preserved,
    version: int | None,
    pyxenstored: bool,
    startup_quota: q.QuotaTable,
) -> tuple[Records, str, int, list[str]]:
    """The records to write, their target and version, and what the target loses.

    ``version``: the one asked for (``-v``), None for the target's default;
    ``startup_quota``: the quota the successor starts with (the command
    line's), which a C target need not be given.  Towards pyxenstored
    (version 2) the records are produced while they are written (the
    successor's check reads them meanwhile); a :class:`DumpError` may then
    come from the writing.
    """
    if pyxenstored:
        if version != 1:
            # Committed nodes in runs: no record object per node.
            runs = dump_state(
                store, conns, global_data=global_data, preserved=preserved, node_runs=True
            )
            return runs, "spec", version or 2, []
        lazy = dump_state(store, conns, global_data=global_data, preserved=preserved)
        # Asked for explicitly: what version 1 cannot carry is a loss.
        adapted, lost = adapt_for_target(lazy, 1, "spec", lossy=True)
        return adapted, "spec", 1, lost
    version = version or 1
    target = "c-4.17" if version == 1 else "c-head"
    conns = with_c_placeholder(conns, store.config.priv_domid)
    records = list(dump_state(store, conns, global_data=global_data, preserved=preserved))
    lost = c_target_losses(records, target, startup_quota)
    out, _dropped = adapt_for_target(records, version, target, lossy=True)
    return renumber_connections(out), target, version, lost


def with_c_placeholder(conns: list[ConnectionData], priv: int) -> list[ConnectionData]:
    """``conns``, led by a placeholder ring connection of ``priv`` if it has none.

    The C daemon builds its database when it restores the privileged
    domain's ring connection, and 4.17 crashes without one (no hypervisor
    here: the port is a stand-in).
    """
    if any(isinstance(c.spec, RingSpec) and c.spec.domid == priv for c in conns):
        return conns
    spare = max((c.conn_id for c in conns), default=0) + 1
    placeholder = ConnectionData(
        spare, CONN_TYPE_RING, 0, RingSpec(priv, DOMID_INVALID, C_DOM0_PORT)
    )
    return [placeholder, *conns]


def renumber_connections(records: Iterable[Record]) -> list[Record]:
    """Connection ids 1, 2, 3... in stream order, as C numbers them when it dumps.

    The ids only link watches (and transactions) to their connection; a C
    reader gets them the way C itself writes them.
    """
    ids: dict[int, int] = {}
    out: list[Record] = []
    for r in records:
        if isinstance(r, ConnectionData):
            ids[r.conn_id] = len(ids) + 1
            r = replace(r, conn_id=ids[r.conn_id])
        elif isinstance(r, (WatchData, WatchDataExtended, TransactionData)) or (
            isinstance(r, NodeData) and r.conn_id
        ):
            r = replace(r, conn_id=ids.get(r.conn_id, r.conn_id))
        out.append(r)
    return out


def c_target_losses(records: Sequence[Record], target: str, baseline: q.QuotaTable) -> list[str]:
    """What a C daemon (``c-4.17`` or ``c-head``) started with our arguments would lose.

    Quota equal to the command-line values and the default feature mask are
    not losses: the new daemon starts with them anyway.
    """
    lost: list[str] = []
    base = {v.name: v.value for v in quota_values(baseline)}
    for r in records:
        if isinstance(r, TransactionData):
            lost.append(f"transaction {r.tx_id} of connection {r.conn_id}")
        elif isinstance(r, NodeData) and r.conn_id:
            continue  # reported with its transaction
        elif target == "c-4.17":
            lost.extend(_c417_losses(r, base))
    return lost


def _c417_losses(r: Record, base: dict[str, int]) -> list[str]:
    """What C 4.17 cannot carry of one record (beyond open transactions)."""
    if isinstance(r, WatchDataExtended):
        return [f"depth {r.depth} of watch {quote(r.wpath)} of connection {r.conn_id}"]
    if isinstance(r, GlobalQuotaData):
        return [
            f"global quota {v.name}={v.value}"
            for v in r.domain_quota + r.global_quota
            if base.get(v.name) != v.value
        ]
    if isinstance(r, DomainData):
        lost = []
        if r.features != SUPPORTED_FEATURES:
            lost.append(f"features {r.features:#x} of domain {r.domid}")
        for v in r.quota:
            if is_marks_name(v.name):
                continue  # a transaction's marks: reported with it
            if base.get(v.name) != v.value:
                lost.append(f"quota {v.name}={v.value} of domain {r.domid}")
        return lost
    if isinstance(r, UnknownRecord):
        return [f"record of unknown type {r.type}"]
    if isinstance(r, ConnectionData) and r.unique_id:
        return [f"unique-id of connection {r.conn_id}"]
    return []


# --- writing the state file -------------------------------------------------------------


class StreamFeed(Protocol):
    """Where the stream's bytes also go as they are written (the successor's check)."""

    def feed(self, data: bytes) -> None: ...

    def done(self) -> None:
        """No more data."""
        ...


class _Tee:
    """A binary file that also feeds everything written to a :class:`StreamFeed`."""

    def __init__(self, f: BinaryIO, feed: StreamFeed | None) -> None:
        self.f = f
        self.checker = feed
        self.size = 0
        self._chunks: list[bytes] = []
        self._pending = 0

    def write(self, data: bytes) -> int:
        self._chunks.append(data)
        self._pending += len(data)
        if self._pending >= 1 << 16:
            self._push()
        return len(data)

    def _push(self) -> None:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._pending = 0
        self.size += len(data)
        self.f.write(data)
        if self.checker is not None:
            self.checker.feed(data)

    def flush(self) -> None:
        self._push()
        self.f.flush()


def write_state(
    path: str,
    records: Records,
    version: int,
    target: str,
    checker: StreamFeed | None = None,
) -> int:
    """Write the stream to ``path`` (created 0600, replaced); returns its size.

    With ``checker`` the same bytes go to the successor's check run as they
    are written, so that writing and checking overlap.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            tee = _Tee(f, checker)
            writer = StreamWriter(tee, version=version, target=target)  # type: ignore[arg-type]
            writer.write_all(records)
            writer.close()
            if checker is not None:
                checker.done()
            return tee.size
    finally:
        if fd >= 0:
            os.close(fd)


# --- records -> state ------------------------------------------------------------------


def split_messages(data: bytes) -> list[bytes]:
    """Complete messages (header + payload) of ``data``; a torn tail stays one piece."""
    out = []
    pos = 0
    end = len(data)
    for start, _type, _req, _tx, length in iter_frames(data):
        pos = min(start + HEADER_SIZE + length, end)
        out.append(data[start:pos])
    if pos < end:
        out.append(data[pos:])
    return out


def split_output(record: ConnectionData) -> tuple[bytes, list[bytes]]:
    """A restored connection's pending output: (the partly sent first reply, whole messages).

    ``out-resp-len`` bytes at the start are what is left of a reply the old
    daemon had begun to send (empty when none); the rest is cut into
    messages, to be queued again one by one.
    """
    out = record.out_data
    fragment = out[: record.out_resp_len] if record.out_resp_len else b""
    return fragment, split_messages(out[record.out_resp_len :])
