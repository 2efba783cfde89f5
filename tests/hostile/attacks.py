"""The memory attacks of one guest, shared by the hostile tests and ``bench/guest_memory.py``.

Each function plays one way an unprivileged guest (the arena's attacker)
makes a daemon hold memory, with the daemon's default quotas, and leaves the
daemon holding it (nothing is released): the caller measures, checks, then
lets the arena go.  They work against pyxenstored and the C reference alike
(no CONTROL command, no pyxenstored-only request) and return what the
daemon answered, for the caller to check or print.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.hostile.harness import HOME, Arena, RawRing, call, message, parse_messages

from pyxenstored.client import Transaction, XsClientError
from pyxenstored.wire import MsgType

M = MsgType
# The largest value a guest's node takes with one permission entry (node-size
# 2048: 16 + 8 + value, rejected at 2048 by HEAD; 4.17 counts differently).
VALUE = 1900


def until_refused(step: Callable[[int], object], limit: int) -> tuple[int, str]:
    """Call ``step(i)`` until it raises an xenstore error: (successful steps, error name)."""
    for i in range(limit):
        try:
            step(i)
        except XsClientError as exc:
            return i, exc.name
    return limit, ""


def nested(i: int, fanout: int = 20) -> str:
    """Spread nodes over directories: a parent's child list counts in its node size."""
    return f"d{i // fanout}/n{i % fanout}"


def nodes(a: Arena) -> tuple[int, str]:
    """Nodes with 1 900-byte paths and values until refused (the ``memory`` quota)."""
    g = a.attacker
    return until_refused(lambda i: g.write(nested(i) + "/" + "p" * 1900, b"v" * VALUE), 1000)


def transactions(a: Arena) -> tuple[int, str]:
    """9 transactions (the most), each writing 1 800-byte values until refused (XSA-326)."""
    g = a.attacker
    txs = [g.start_transaction() for _ in range(9)]
    return until_refused(lambda i: txs[i % 9].write(f"t{i % 9}/{nested(i)}", b"x" * 1800), 12_000)


def _read_absent(tx: Transaction, name: str) -> None:
    try:
        tx.read(name)
    except XsClientError as exc:
        if exc.name != "ENOENT":
            raise


def transaction_accesses(a: Arena, length: int = 12) -> tuple[int, str]:
    """9 transactions, each reading absent nodes with ``length``-byte names until refused.

    Every access is remembered (``transaction-nodes``: 1023 per
    transaction); with names of about 2 000 bytes that is C's largest
    uncharged holding.
    """
    g = a.attacker
    total = 0
    error = ""
    pad = "q" * max(0, length - 12)
    for k in range(9):
        tx = g.start_transaction()
        count, error = until_refused(lambda i, tx=tx, k=k: _read_absent(tx, f"x{k}-{i}{pad}"), 2000)
        total += count
    return total, error


def watches(a: Arena) -> tuple[int, str]:
    """Watches with the longest path and token a message carries, until refused."""
    g = a.attacker
    return until_refused(lambda i: g.watch(b"w%03d" % i + b"p" * 2040, b"t" * 2040), 200)


def own_events(a: Arena, token: int = 3000, writes: int = 400) -> RawRing:
    """127 watches with ``token``-byte tokens on the home, then writes whose events are never read.

    Returns the attacker's raw ring (its output still unread).
    """
    g = a.attacker
    for i in range(127):
        g.watch(HOME, b"t%03d" % i + b"x" * token)
    g.pending_events()
    raw = a.raw_attacker()
    raw.push_all(b"".join(message(M.WRITE, b"e%04d\0" % i, req_id=i) for i in range(writes)), 1.0)
    return raw


def unread_replies(a: Arena, count: int = 300, prepare: bool = True) -> RawRing:
    """READs of a 2 000-byte value, replies never read (the ``outstanding`` quota stops it).

    ``prepare``: write the node first (else the caller did).
    """
    if prepare:
        a.attacker.write("big", b"r" * 2000)
    raw = a.raw_attacker()
    raw.push_all(b"".join(message(M.READ, b"big\0", req_id=i + 1) for i in range(count)), 0.5)
    return raw


def partial_input(a: Arena) -> RawRing:
    """A message announced with 4 096 payload bytes, 3 000 bytes of it sent, then silence."""
    raw = a.raw_attacker()
    whole = message(M.WRITE, b"big\0" + b"v" * 4092, req_id=77)
    raw.push_all(whole[:3000])
    return raw


def many_paths(a: Arena, count: int = 3000) -> list[bytes]:
    """READs of distinct 4 000-byte paths (each answered ENOENT); the distinct answers."""
    g = a.attacker
    return sorted({call(g, M.READ, b"%06d" % i + b"q" * 3994 + b"\0")[1] for i in range(count)})


def replies(raw: RawRing) -> list[tuple[int, int, int, bytes]]:
    """Read the attacker's ring until quiet: the whole messages in it."""
    return parse_messages(raw.drain())
