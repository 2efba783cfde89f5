"""Pending connection data in the other byte order (``convert --endian``, ``diff``).

CONNECTION_DATA's pending data holds wire messages (``struct xsd_sockmsg``:
four u32 -- type, req_id, tx_id, len -- then the payload) in the byte order
of the host that wrote the stream, which is the stream's own.  Neither the
spec nor the C daemon says so; a byte-order conversion must swap them too
(docs/stream.md).
"""

from __future__ import annotations

import dataclasses

from pyxenstored.wire import HEADER_SIZE, iter_frames

from .records import ConnectionData, Record

_FIELD = 4  # each header field is a u32


def _swap_fields(out: bytearray, data: bytes, start: int, stop: int) -> None:
    """Reverse each whole u32 of ``data[start:stop]`` into ``out``."""
    for field in range(start, stop - _FIELD + 1, _FIELD):
        out[field : field + _FIELD] = data[field : field + _FIELD][::-1]


def swap_messages(data: bytes, skip: int, src_big: bool) -> bytes:
    """Byte-swap the header fields of the wire messages in ``data[skip:]``.

    Whole fields of a partial header at the end are swapped; payloads and
    the first ``skip`` bytes (a partly sent response) are left as they are.
    ``src_big`` is the byte order the messages are in now.
    """
    out = bytearray(data)
    end = len(data)
    nxt = skip
    for pos, _type, _req, _tx, length in iter_frames(data, skip, end, ">" if src_big else "<"):
        _swap_fields(out, data, pos, pos + HEADER_SIZE)
        nxt = pos + HEADER_SIZE + length
    if nxt < end:  # a torn header
        _swap_fields(out, data, nxt, end)
    return bytes(out)


def swap_pending(record: Record, src_big: bool) -> Record:
    """A CONNECTION_DATA with its pending messages in the other byte order."""
    if not isinstance(record, ConnectionData) or not (record.in_data or record.out_data):
        return record
    return dataclasses.replace(
        record,
        in_data=swap_messages(record.in_data, 0, src_big),
        out_data=swap_messages(
            record.out_data, min(record.out_resp_len, len(record.out_data)), src_big
        ),
    )
