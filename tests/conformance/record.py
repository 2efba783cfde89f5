"""Record the golden files from the C reference daemon.

    python -m tests.conformance.record [FILE_STEM ...]

Runs every scenario file whose targets include the reference (or only the
named ones) against a reference daemon and writes ``golden/<file>.json``:
``{scenario name: [step records]}``.  Scenarios marked ``fresh`` get a
daemon of their own, the others share one that is reset in between.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from tests.conformance.daemons import REFERENCE, Daemon, reference_available
from tests.conformance.scenario import GOLDEN_DIR, load_scenarios, reset_daemon, run_scenario


def main(argv: list[str]) -> int:
    ok, reason = reference_available()
    if not ok:
        print(f"cannot record: {reason}", file=sys.stderr)
        return 1
    wanted = set(argv)
    per_file: dict[str, dict[str, object]] = defaultdict(dict)
    with Daemon(REFERENCE) as shared:
        for scenario in load_scenarios():
            if REFERENCE not in scenario.targets or (wanted and scenario.file not in wanted):
                continue
            if scenario.fresh:
                with Daemon(
                    REFERENCE, extra_args=scenario.daemon_args, guests=scenario.guests
                ) as own:
                    records = run_scenario(own.socket, scenario)
            else:
                reset_daemon(shared.socket)
                records = run_scenario(shared.socket, scenario)
                if not shared.alive():
                    print(f"reference died in {scenario.ident}", file=sys.stderr)
                    return 1
            per_file[scenario.file][scenario.name] = [r.as_json() for r in records]
    GOLDEN_DIR.mkdir(exist_ok=True)
    for stem, data in sorted(per_file.items()):
        path = GOLDEN_DIR / f"{stem}.json"
        path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        print(f"wrote {path} ({len(data)} scenarios)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
