"""``pyxenstored --check-state``: restore a live-update dump into a scratch store.

The successor's pre-exec check (see ``server/successor.py``).  It needs the
store and the stream only, so the check run does not import the server: its
start-up is part of every live update's blackout.
"""

from __future__ import annotations

import sys
import time

from ..store import Store, StoreConfig
from .restore import RestoreError, StoreOnlySink, restore_stream

#: What ``--check-state`` prints on its first output line when the state is good.
CHECK_OK = "pyxenstored check-state: OK"
CHECK_FAILED = "pyxenstored check-state: FAILED"


def check_state_main(path: str, config: StoreConfig | None = None) -> int:
    """``pyxenstored --check-state FILE``: restore into a scratch store and say so.

    ``-`` reads the stream from standard input (the old daemon feeds it
    while writing the dump).  Only a restore error fails the check; the
    store's full consistency check would add its own walk of the tree to
    every live update's blackout.
    """
    store = Store(config or StoreConfig())
    started = time.monotonic()
    try:
        source = sys.stdin.buffer if path == "-" else path
        restored = restore_stream(source, store, StoreOnlySink(store), verify=False)
    except RestoreError as exc:
        print(f"{CHECK_FAILED}: {exc}", flush=True)
        return 1
    print(
        f"{CHECK_OK} ({restored.records} records, {restored.connections} connections,"
        f" {restored.nodes} nodes, {restored.transactions} transactions,"
        f" {time.monotonic() - started:.3f} s)",
        flush=True,
    )
    return 0
