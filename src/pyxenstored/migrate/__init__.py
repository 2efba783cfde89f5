"""migrate: store state <-> migration-stream records (see DESIGN.md).

The only package that knows both :mod:`pyxenstored.store` and
:mod:`pyxenstored.stream`.  :func:`dump_state` writes a store (plus the
connections the server describes) as records; :func:`restore_state` reads
them back into a fresh store.  :mod:`.lu_records` fits those records to a
live update's successor (pyxenstored, C 4.17, C HEAD) and writes the state
file; :mod:`.domain` moves one domain between daemons.
"""

from .dump import (
    DumpError,
    Preserved,
    dump_state,
    quota_values,
    stream_perms,
)
from .restore import (
    ConnectionSink,
    Restored,
    RestoreError,
    StoreOnlySink,
    restore_state,
    restore_stream,
    store_perms,
)

__all__ = [
    "ConnectionSink",
    "DumpError",
    "Preserved",
    "RestoreError",
    "Restored",
    "StoreOnlySink",
    "dump_state",
    "quota_values",
    "restore_state",
    "restore_stream",
    "store_perms",
    "stream_perms",
]
