"""The most memory one guest can make the daemon hold, by resource: pyxenstored vs C.

Each row is one attack of ``tests/hostile/attacks.py`` played by one
unprivileged guest (domain 5 on its ring) against a fresh daemon with the
default quotas: the C reference (Debian's Xen 4.17 xenstored under the
peers' shim) and pyxenstored (``python -m pyxenstored`` from this tree).
The figure is the growth of the daemon's resident set while the guest holds
what it made the daemon keep: the peak (``VmHWM`` of ``/proc/<pid>/status``,
reset through ``clear_refs`` once the guests are set up) minus the resident
set at that moment.  Memory the daemon had touched and freed before (its
start-up) is reused first and does not show: small holdings read as 0.

The ``outcome`` column says how each attack ended (steps done, then the
error that refused the next one).  ``all at once`` combines the uncharged
holdings (transaction accesses with long names, unread replies) with the
charged ones (watches, then nodes up to the ``memory`` quota) and, for
pyxenstored, the path caches.  Run::

    python bench/guest_memory.py               # both daemons, every row
    python bench/guest_memory.py --only py     # pyxenstored only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

from tests.hostile import attacks  # noqa: E402
from tests.hostile.harness import Arena, arena  # noqa: E402

Attack = Callable[[Arena], str]


def outcome(result: tuple[int, str]) -> str:
    count, error = result
    return f"{count} then {error or 'no refusal'}"


def held(what: str) -> Callable[[Arena], str]:
    """An attack whose result is what stays in the guest's ring."""

    def run(a: Arena) -> str:
        raw = getattr(attacks, what)(a)
        time.sleep(0.3)  # what the daemon still takes, it takes by now
        return f"{raw.pending_requests()} B left in the ring"

    return run


def all_at_once(a: Arena) -> str:
    a.attacker.write("big", b"r" * 2000)  # read back unread last, when nothing fits any more
    parts = [
        outcome(attacks.transaction_accesses(a, 2000)),
        outcome(attacks.watches(a)),
        outcome(attacks.nodes(a)),
    ]
    attacks.many_paths(a)
    attacks.unread_replies(a, prepare=False)
    return "; ".join(parts)


ROWS: list[tuple[str, Attack]] = [
    ("nodes: 1900-byte paths and values", lambda a: outcome(attacks.nodes(a))),
    ("transactions: 9 x 1800-byte writes", lambda a: outcome(attacks.transactions(a))),
    ("transaction accesses: 9 x 12-byte names", lambda a: outcome(attacks.transaction_accesses(a))),
    (
        "transaction accesses: 9 x 2000-byte names",
        lambda a: outcome(attacks.transaction_accesses(a, 2000)),
    ),
    ("watches: 4 KiB each", lambda a: outcome(attacks.watches(a))),
    ("queued events: own, 127 x 3 KiB tokens", held("own_events")),
    ("outstanding requests: unread 2 KiB replies", held("unread_replies")),
    ("partial input: 3000 of 4112 bytes", held("partial_input")),
    (
        "distinct 4000-byte paths (3000 READs)",
        lambda a: ", ".join(p.rstrip(b"\0").decode() for p in attacks.many_paths(a)),
    ),
    ("all at once", all_at_once),
]


def measure(kind: str, attack: Attack) -> tuple[str, int, int]:
    """(outcome, growth KiB, resident set at the start KiB) of one attack on a fresh daemon."""
    with arena(kind) as a:
        result = attack(a)
        return result, a.growth_kib(), a.base_kib


def commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("py", "c"), help="one daemon only")
    args = parser.parse_args(argv)
    kinds = [
        k for k, short in (("reference", "c"), ("pyxenstored", "py")) if args.only in (None, short)
    ]
    print(
        f"# guest_memory at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit()}"
    )
    print("# growth of the daemon's resident set (KiB) while one guest holds it; default quotas")
    header = f"| {'attack':<44} |" + "".join(
        f" {k + ' outcome':<34} | {k + ' KiB':>16} |" for k in kinds
    )
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
    bases: dict[str, list[int]] = {k: [] for k in kinds}
    for name, attack in ROWS:
        cells = ""
        for kind in kinds:
            result, growth, base = measure(kind, attack)
            bases[kind].append(base)
            cells += f" {result[:34]:<34} | {growth:>16} |"
        print(f"| {name:<44} |{cells}", flush=True)
    for kind in kinds:
        print(f"# {kind}: resident set at the start {min(bases[kind])}-{max(bases[kind])} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
