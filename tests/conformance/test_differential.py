"""Differential fuzzing: random request sequences to both daemons at once.

A hypothesis state machine sends the same operations — valid and invalid
paths, values with NULs, permissions, watches, transactions interleaved on
three connections — to the C reference and to pyxenstored, and requires
equal replies and equal watch events after the normalisation of
``scenario.py`` and the allowed differences of ``docs/compat.md``.

CI runs ``XS_FUZZ_EXAMPLES`` (default 200) sequences of 50 operations; by
hand, ``pytest --long`` runs 5 000.  A failing sequence is shrunk by
hypothesis; the minimal one is printed as scenario JSON and, with
``XS_FUZZ_RECORD=1`` (implied by ``--long``), appended to
``scenarios/regressions.json`` so that it stays in the scenario suite (then
re-record the golden files: ``python -m tests.conformance.record``).
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from tests.conformance.compat import CompatEntry, compare_records, load_compat
from tests.conformance.conftest import DaemonPool
from tests.conformance.daemons import PYXENSTORED, REFERENCE, Daemon
from tests.conformance.scenario import (
    SCENARIO_DIR,
    Runner,
    StepRecord,
    escape,
    reset_daemon,
)

CONNS = ("a", "b", "c")
STEPS_PER_SEQUENCE = 50
REGRESSIONS = SCENARIO_DIR / "regressions.json"

# --- strategies -------------------------------------------------------------------

_segment = st.sampled_from(["a", "b", "c"])
_abs_path = st.lists(_segment, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s))
_rel_path = st.lists(_segment, min_size=1, max_size=2).map("/".join)
_odd_path = st.sampled_from(
    ["/", "/a/", "//a", "/a//b", "/a b", "", "/a.b", "@releaseDomain", "@introduceDomain", "@x"]
)
paths = st.one_of(_abs_path, _abs_path, _abs_path, _rel_path, _odd_path)
# SET_PERMS leaves the special nodes alone: their permissions differ between
# 4.17 and HEAD (compat C03) and are not restored between sequences.
node_paths = st.one_of(_abs_path, _abs_path, _rel_path, _odd_path.filter(lambda p: p[:1] != "@"))
values = st.binary(max_size=6)
tokens = st.sampled_from(["t1", "t2", ""])
conns = st.sampled_from(CONNS)
tx_choice = st.integers(0, 4)
_owner = st.sampled_from(["n0", "r0", "w0", "b0", "b0x0"])
_entry = st.sampled_from(
    ["n0", "r0", "w0", "b0", "r1", "w2", "b5", "n7", "r0x1", "w010", "x0", "r"]
)
perm_lists = st.tuples(_owner, st.lists(_entry, max_size=3)).map(lambda t: [t[0], *t[1]])
offsets = st.sampled_from(["0", "1", "2", "4", "100", "x", ""])
domids = st.sampled_from(["0", "7", "65535", "65536", "x", "-1", ""])
junk = st.binary(max_size=8)
# Not the one-argument types (READ, DIRECTORY, GET_PERMS, MKDIR, RM): 4.17
# answers a malformed payload there with a stale errno, and when that errno is
# 0 it sends nothing and aborts on the next message (see docs/compat.md C02).
raw_types = st.sampled_from(
    ["WRITE", "SET_PERMS", "WATCH", "UNWATCH", "TRANSACTION_END", "DIRECTORY_PART"]
)


def _text(path: str) -> str:
    return escape(path.encode())


class DifferentialMachine(RuleBasedStateMachine):
    """Both daemons receive every operation; replies and events must agree."""

    sockets: ClassVar[tuple[str, str]] = ("", "")
    daemons: ClassVar[tuple[Daemon, Daemon] | None] = None
    compat: ClassVar[list[CompatEntry]] = []
    last_failure: ClassVar[list[dict[str, Any]] | None] = None
    sequence_no: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        for sock in self.sockets:
            reset_daemon(sock)
        DifferentialMachine.sequence_no += 1
        self.name = f"fuzz:{DifferentialMachine.sequence_no}"
        self.ref = Runner(self.sockets[0])
        self.py = Runner(self.sockets[1])
        self.steps: list[dict[str, Any]] = []
        self.ref_records: list[StepRecord] = []
        self.py_records: list[StepRecord] = []
        self.open_tx: dict[str, list[str]] = {c: [] for c in CONNS}
        self.tx_counter = 0

    def teardown(self) -> None:
        self.ref.close()
        self.py.close()

    # --- the comparison -----------------------------------------------------------

    def do(self, step: dict[str, Any]) -> None:
        index = len(self.steps)
        self.steps.append(step)
        self.ref_records.append(self.ref.run_step(step, index))
        self.py_records.append(self.py.run_step(step, index))
        result = compare_records(self.name, self.ref_records, self.py_records, self.compat)
        dead = [d.kind for d in self.daemons or () if not d.alive()]
        if dead:
            DifferentialMachine.last_failure = list(self.steps)
            raise AssertionError(f"{', '.join(dead)} died")
        if result.failures:
            DifferentialMachine.last_failure = list(self.steps)
            raise AssertionError("\n".join(result.failures))

    def tx_ref(self, conn: str, choice: int) -> str | int:
        if choice == 4:
            return 999
        open_tx = self.open_tx[conn]
        if choice == 0 or not open_tx:
            return 0
        return open_tx[(choice - 1) % len(open_tx)]

    def step(self, conn: str, op: str, payload: str, tx: str | int = 0) -> dict[str, Any]:
        step: dict[str, Any] = {"c": conn, "op": op, "p": payload}
        if tx:
            step["tx"] = tx
        return step

    # --- rules --------------------------------------------------------------------

    @rule(conn=conns, path=paths, value=values, tx=tx_choice)
    def write(self, conn: str, path: str, value: bytes, tx: int) -> None:
        payload = _text(path) + "|" + escape(value)
        self.do(self.step(conn, "WRITE", payload, self.tx_ref(conn, tx)))

    @rule(
        conn=conns,
        op=st.sampled_from(["READ", "DIRECTORY", "GET_PERMS", "MKDIR", "RM"]),
        path=paths,
        tx=tx_choice,
    )
    def one_path(self, conn: str, op: str, path: str, tx: int) -> None:
        self.do(self.step(conn, op, _text(path) + "|", self.tx_ref(conn, tx)))

    @rule(conn=conns, path=paths, offset=offsets, tx=tx_choice)
    def directory_part(self, conn: str, path: str, offset: str, tx: int) -> None:
        payload = f"{_text(path)}|{offset}|"
        self.do(self.step(conn, "DIRECTORY_PART", payload, self.tx_ref(conn, tx)))

    @rule(conn=conns, path=node_paths, perms=perm_lists, tx=tx_choice)
    def set_perms(self, conn: str, path: str, perms: list[str], tx: int) -> None:
        payload = _text(path) + "|" + "".join(p + "|" for p in perms)
        self.do(self.step(conn, "SET_PERMS", payload, self.tx_ref(conn, tx)))

    @rule(conn=conns, path=paths, token=tokens)
    def watch(self, conn: str, path: str, token: str) -> None:
        self.do(self.step(conn, "WATCH", f"{_text(path)}|{token}|"))

    @rule(conn=conns, path=paths, token=tokens)
    def unwatch(self, conn: str, path: str, token: str) -> None:
        self.do(self.step(conn, "UNWATCH", f"{_text(path)}|{token}|"))

    @rule(conn=conns)
    def reset_watches(self, conn: str) -> None:
        self.do(self.step(conn, "RESET_WATCHES", ""))
        self.open_tx[conn].clear()

    @rule(conn=conns, tx=tx_choice)
    def transaction_start(self, conn: str, tx: int) -> None:
        self.tx_counter += 1
        name = f"t{self.tx_counter}"
        step = self.step(conn, "TRANSACTION_START", "|", self.tx_ref(conn, tx))
        step["save"] = name
        self.do(step)
        if name in self.ref.saved_tx and name in self.py.saved_tx:
            self.open_tx[conn].append(name)

    @rule(conn=conns, tx=tx_choice, end=st.sampled_from(["T", "F", "T", "X"]))
    def transaction_end(self, conn: str, tx: int, end: str) -> None:
        ref = self.tx_ref(conn, tx)
        self.do(self.step(conn, "TRANSACTION_END", f"{end}|", ref))
        if isinstance(ref, str) and end in "TF" and ref in self.open_tx[conn]:
            self.open_tx[conn].remove(ref)

    @rule(conn=conns, op=st.sampled_from(["GET_DOMAIN_PATH", "IS_DOMAIN_INTRODUCED"]), domid=domids)
    def domain_query(self, conn: str, op: str, domid: str) -> None:
        self.do(self.step(conn, op, f"{domid}|"))

    @rule(conn=conns, op=raw_types, payload=junk, tx=tx_choice)
    def raw_payload(self, conn: str, op: str, payload: bytes, tx: int) -> None:
        self.do(self.step(conn, op, escape(payload), self.tx_ref(conn, tx)))

    @rule(conn=conns, op=st.sampled_from([15, 16, 20, 27, 1000]))
    def no_such_type(self, conn: str, op: int) -> None:
        self.do(self.step(conn, op, "/a|"))  # type: ignore[arg-type]


def _record_regression(steps: list[dict[str, Any]]) -> None:
    data: dict[str, Any]
    if REGRESSIONS.exists():
        data = json.loads(REGRESSIONS.read_text())
    else:
        data = {
            "area": "regressions found by the differential fuzzer (shrunk sequences)",
            "sources": ["tests/conformance/test_differential.py"],
            "targets": [REFERENCE, PYXENSTORED],
            "scenarios": [],
        }
    data["scenarios"].append({"name": f"fuzz-{len(data['scenarios']) + 1}", "steps": steps})
    REGRESSIONS.write_text(json.dumps(data, indent=1) + "\n")


def test_differential(daemons: DaemonPool, request: pytest.FixtureRequest) -> None:
    long_run = bool(request.config.getoption("--long"))
    examples = int(os.environ.get("XS_FUZZ_EXAMPLES", "5000" if long_run else "200"))
    ref = daemons.get(REFERENCE)
    py = daemons.get(PYXENSTORED)
    DifferentialMachine.sockets = (ref.socket, py.socket)
    DifferentialMachine.daemons = (ref, py)
    DifferentialMachine.compat = load_compat()
    DifferentialMachine.last_failure = None
    try:
        run_state_machine_as_test(
            DifferentialMachine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=STEPS_PER_SEQUENCE,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            ),
        )
    except AssertionError as exc:
        steps = DifferentialMachine.last_failure
        if steps is not None and (long_run or os.environ.get("XS_FUZZ_RECORD")):
            _record_regression(steps)
        shown = json.dumps(steps)
        raise AssertionError(f"{exc}\nminimal sequence (scenario steps):\n{shown}") from exc
    assert ref.alive(), "reference died"
    assert py.alive(), "pyxenstored died"
