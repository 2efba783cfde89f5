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
from tests.conformance.daemons import PYXENSTORED, REFERENCE, Daemon, available
from tests.conformance.scenario import (
    SCENARIO_DIR,
    Runner,
    StepRecord,
    escape,
    guest_port,
    reset_daemon,
)
from tests.util import require

# Three privileged socket connections and one unprivileged guest, domain 5
# on its ring (connection name ``dom5``, see scenario.py).
GUEST = 5
SOCKET_CONNS = ("a", "b", "c")
CONNS = (*SOCKET_CONNS, f"dom{GUEST}")
# The sequence's first steps, compared like the rest: the guest's home and
# (re-)introduction, which also drops what the guest had from the sequence
# before (domain.c:domain_conn_reset).
GUEST_SETUP: tuple[dict[str, Any], ...] = (
    {"c": "a", "op": "MKDIR", "p": f"/local/domain/{GUEST}|"},
    {"c": "a", "op": "SET_PERMS", "p": f"/local/domain/{GUEST}|n{GUEST}|"},
    {"c": "a", "op": "INTRODUCE", "p": f"{GUEST}|1|{guest_port(GUEST)}|"},
)
STEPS_PER_SEQUENCE = 50
REGRESSIONS = SCENARIO_DIR / "regressions.json"

# --- strategies -------------------------------------------------------------------

_segment = st.sampled_from(["a", "b", "c"])
# Mostly shallow paths, so that writes, watches and reads meet often.
_abs_path = st.one_of(
    st.lists(_segment, min_size=1, max_size=2), st.lists(_segment, min_size=3, max_size=3)
).map(lambda s: "/" + "/".join(s))
_rel_path = st.lists(_segment, min_size=1, max_size=2).map("/".join)
_odd_path = st.sampled_from(
    ["/", "/a/", "//a", "/a//b", "/a b", "", "/a.b", "@releaseDomain", "@introduceDomain", "@x"]
)
paths = st.one_of(_abs_path, _rel_path, _odd_path) | _abs_path | _abs_path | _abs_path
# SET_PERMS leaves the special nodes alone: their permissions differ between
# 4.17 and HEAD (compat C03) and are not restored between sequences.
node_paths = st.one_of(_abs_path, _abs_path, _rel_path, _odd_path.filter(lambda p: p[:1] != "@"))
values = st.binary(max_size=6)
tokens = st.sampled_from(["t1", "t2", ""])
conns = st.sampled_from(CONNS)
socket_conns = st.sampled_from(SOCKET_CONNS)
tx_choice = st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3, 4])
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
        for step in GUEST_SETUP:
            self.do(dict(step))

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

    # --- operations ---------------------------------------------------------------
    # One rule draws a weighted operation: hypothesis would pick among separate
    # rules uniformly, and resets or odd types would then drown the writes and
    # watches that make events happen.

    @rule(data=st.data())
    def operation(self, data: st.DataObject) -> None:
        kind = data.draw(OPERATIONS, label="operation")
        getattr(self, kind)(data)

    def write(self, data: st.DataObject) -> None:
        conn, path, value = data.draw(st.tuples(conns, paths, values))
        tx = self.tx_ref(conn, data.draw(tx_choice))
        self.do(self.step(conn, "WRITE", _text(path) + "|" + escape(value), tx))

    def one_path(self, data: st.DataObject) -> None:
        conn, path = data.draw(st.tuples(conns, paths))
        op = data.draw(st.sampled_from(["READ", "DIRECTORY", "GET_PERMS", "MKDIR", "RM"]))
        self.do(self.step(conn, op, _text(path) + "|", self.tx_ref(conn, data.draw(tx_choice))))

    def directory_part(self, data: st.DataObject) -> None:
        conn, path, offset = data.draw(st.tuples(conns, paths, offsets))
        tx = self.tx_ref(conn, data.draw(tx_choice))
        self.do(self.step(conn, "DIRECTORY_PART", f"{_text(path)}|{offset}|", tx))

    def set_perms(self, data: st.DataObject) -> None:
        conn, path, perms = data.draw(st.tuples(conns, node_paths, perm_lists))
        payload = _text(path) + "|" + "".join(p + "|" for p in perms)
        self.do(self.step(conn, "SET_PERMS", payload, self.tx_ref(conn, data.draw(tx_choice))))

    def watch(self, data: st.DataObject) -> None:
        conn, path, token = data.draw(st.tuples(conns, paths, tokens))
        self.do(self.step(conn, "WATCH", f"{_text(path)}|{token}|"))

    def unwatch(self, data: st.DataObject) -> None:
        conn, path, token = data.draw(st.tuples(conns, paths, tokens))
        self.do(self.step(conn, "UNWATCH", f"{_text(path)}|{token}|"))

    def reset_watches(self, data: st.DataObject) -> None:
        conn = data.draw(conns)
        self.do(self.step(conn, "RESET_WATCHES", ""))
        self.open_tx[conn].clear()

    def transaction_start(self, data: st.DataObject) -> None:
        conn = data.draw(conns)
        self.tx_counter += 1
        name = f"t{self.tx_counter}"
        step = self.step(conn, "TRANSACTION_START", "|", self.tx_ref(conn, data.draw(tx_choice)))
        step["save"] = name
        self.do(step)
        if name in self.ref.saved_tx and name in self.py.saved_tx:
            self.open_tx[conn].append(name)

    def transaction_end(self, data: st.DataObject) -> None:
        conn = data.draw(conns)
        tx = self.tx_ref(conn, data.draw(st.sampled_from([1, 1, 2, 3, 0, 4])))
        end = data.draw(st.sampled_from(["T", "T", "F", "X"]))
        self.do(self.step(conn, "TRANSACTION_END", f"{end}|", tx))
        if isinstance(tx, str) and end in "TF" and tx in self.open_tx[conn]:
            self.open_tx[conn].remove(tx)

    def domain_query(self, data: st.DataObject) -> None:
        conn, domid = data.draw(st.tuples(conns, domids))
        op = data.draw(st.sampled_from(["GET_DOMAIN_PATH", "IS_DOMAIN_INTRODUCED"]))
        self.do(self.step(conn, op, f"{domid}|"))

    def raw_payload(self, data: st.DataObject) -> None:
        conn, op, payload = data.draw(st.tuples(conns, raw_types, junk))
        tx = self.tx_ref(conn, data.draw(tx_choice))
        self.do(self.step(conn, op, escape(payload), tx))

    def reconnect(self, data: st.DataObject) -> None:
        # closing drops the connection's watches and transactions; the next
        # operation on that name opens a new connection
        conn = data.draw(socket_conns)  # a guest's ring stays
        self.do({"c": conn, "close": True})
        self.open_tx[conn].clear()

    def control(self, data: st.DataObject) -> None:
        conn = data.draw(conns)
        payload = data.draw(st.sampled_from(["check|", "print|fuzz|", "bogus|", "check|x|"]))
        self.do(self.step(conn, "CONTROL", payload, self.tx_ref(conn, data.draw(tx_choice))))

    def split_write(self, data: st.DataObject) -> None:
        # a message cut into small pieces: framing across reads
        conn, path, value = data.draw(st.tuples(conns, paths, values))
        step = self.step(conn, "WRITE", _text(path) + "|" + escape(value))
        step["split"] = data.draw(st.sampled_from([1, 3, 7, 16]))
        self.do(step)

    def no_such_type(self, data: st.DataObject) -> None:
        conn, op = data.draw(st.tuples(conns, st.sampled_from([15, 16, 20, 27, 1000])))
        self.do(self.step(conn, op, "/a|"))  # type: ignore[arg-type]


# Relative weights of the operations (the first is what shrinking tends to).
OPERATIONS = st.sampled_from(
    ["write"] * 8
    + ["one_path"] * 8
    + ["watch"] * 4
    + ["transaction_start"] * 3
    + ["transaction_end"] * 3
    + ["set_perms"] * 3
    + ["directory_part"] * 2
    + ["unwatch"]
    + ["reset_watches"]
    + ["domain_query"]
    + ["raw_payload"]
    + ["no_such_type"]
    + ["reconnect"]
    + ["control"]
    + ["split_write"]
)


def _still_differs(steps: list[dict[str, Any]], sockets: tuple[str, str]) -> bool:
    records = []
    for sock in sockets:
        reset_daemon(sock)
        try:
            records.append(Runner(sock).run(steps))
        except (KeyError, OSError):  # a step names a transaction that was removed
            return False
    return bool(compare_records("fuzz:min", records[0], records[1], load_compat()).failures)


def minimise(steps: list[dict[str, Any]], sockets: tuple[str, str]) -> list[dict[str, Any]]:
    """Drop single steps while the difference stays (hypothesis' shrinking of
    ``st.data()`` draws often leaves redundant steps behind)."""
    if not _still_differs(steps, sockets):
        return steps
    changed = True
    while changed:
        changed = False
        for i in range(len(steps)):
            candidate = steps[:i] + steps[i + 1 :]
            if _still_differs(candidate, sockets):
                steps, changed = candidate, True
                break
    return steps


def _record_regression(steps: list[dict[str, Any]]) -> None:
    data: dict[str, Any]
    if REGRESSIONS.exists():
        data = json.loads(REGRESSIONS.read_text())
    else:
        data = {
            "area": "regressions found by the differential fuzzer (shrunk sequences)",
            "sources": ["tests/conformance/test_differential.py"],
            "targets": [REFERENCE, PYXENSTORED],
            "guests": [GUEST],
            "scenarios": [],
        }
    data["scenarios"].append({"name": f"fuzz-{len(data['scenarios']) + 1}", "steps": steps})
    REGRESSIONS.write_text(json.dumps(data, indent=1) + "\n")


def test_differential(request: pytest.FixtureRequest) -> None:
    long_run = bool(request.config.getoption("--long"))
    examples = int(os.environ.get("XS_FUZZ_EXAMPLES", "5000" if long_run else "200"))
    for kind in (REFERENCE, PYXENSTORED):
        ok, reason = available(kind)
        require(ok, f"{kind} daemon unavailable: {reason}")
    with Daemon(REFERENCE, guests=(GUEST,)) as ref, Daemon(PYXENSTORED, guests=(GUEST,)) as py:
        _run_machine(ref, py, long_run, examples)


def _run_machine(ref: Daemon, py: Daemon, long_run: bool, examples: int) -> None:
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
        if steps is not None and ref.alive() and py.alive():
            steps = minimise(steps, (ref.socket, py.socket))
        if steps is not None and (long_run or os.environ.get("XS_FUZZ_RECORD")):
            _record_regression(steps)
        shown = json.dumps(steps)
        raise AssertionError(f"{exc}\nminimal sequence (scenario steps):\n{shown}") from exc
    assert ref.alive(), "reference died"
    assert py.alive(), "pyxenstored died"
