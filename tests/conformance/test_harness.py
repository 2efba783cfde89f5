"""Tests of the conformance harness itself (no daemon needed).

The escape used in scenario files, the normalisation of arbitrary numbers,
the compat matching and the comparison of records decide what the suite can
see; they are checked here so that a passing differential run means
something.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conformance.compat import CompatEntry, compare_records, load_compat
from tests.conformance.rawclient import Message
from tests.conformance.scenario import (
    SCENARIO_DIR,
    Runner,
    StepRecord,
    build_payload,
    escape,
    load_scenarios,
    unescape,
)

from pyxenstored.wire import MsgType


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_escape_round_trip(data: bytes) -> None:
    assert unescape(escape(data)) == data


def test_escape_is_readable() -> None:
    assert escape(b"/a\0value\0") == "/a|value|"
    assert escape(b"a|b\\c\n\xff") == "a\\|b\\\\c\\n\\xff"
    assert unescape("/p|n0|r\\x30|") == b"/p\0n0\0r0\0"


def test_build_payload_pieces_and_index() -> None:
    assert build_payload(["/v|", {"repeat": "x", "n": 3}]) == b"/v\0xxx"
    assert build_payload("/d/c{i}|", 7) == b"/d/c7\0"


def _runner() -> Runner:
    # render_reply needs no socket; build the object without connecting.
    return Runner("/nonexistent")


def test_transaction_ids_are_symbolic_per_connection() -> None:
    r = _runner()
    start = int(MsgType.TRANSACTION_START)
    first = r.render_reply("a", Message(start, 1, 0, b"17\0"), 1, 0)
    second = r.render_reply("a", Message(start, 2, 0, b"3\0"), 2, 0)
    other = r.render_reply("b", Message(start, 1, 0, b"17\0"), 1, 0)
    assert (first, second, other) == (
        "TRANSACTION_START <T1>|",
        "TRANSACTION_START <T2>|",
        "TRANSACTION_START <T1>|",
    )
    # an echoed tx id that differs from the one sent is shown symbolically
    read = r.render_reply("a", Message(int(MsgType.READ), 5, 3, b"v"), 5, 17)
    assert read == "READ v !tx_id=<T2>"


def test_generations_keep_equality_only() -> None:
    r = _runner()
    part = int(MsgType.DIRECTORY_PART)
    a = r.render_reply("a", Message(part, 1, 0, b"99\0x\0\0"), 1, 0)
    b = r.render_reply("a", Message(part, 2, 0, b"12\0x\0\0"), 2, 0)
    c = r.render_reply("a", Message(part, 3, 0, b"99\0\0"), 3, 0)
    assert (a, b, c) == (
        "DIRECTORY_PART <G1>|x||",
        "DIRECTORY_PART <G2>|x||",
        "DIRECTORY_PART <G1>||",
    )


def test_req_id_mismatch_is_visible() -> None:
    r = _runner()
    assert r.render_reply("a", Message(int(MsgType.READ), 9, 0, b""), 8, 0) == "READ  !req_id=9"


def _rec(
    label: str, op: str, payload: str, reply: str, events: dict[str, list[str]] | None = None
) -> StepRecord:
    return StepRecord(label, op, payload, reply, events or {})


def test_compare_flags_unlisted_differences_only() -> None:
    exp = [_rec("0", "GET_FEATURE", "", "ERROR ENOSYS|"), _rec("1", "READ", "/a|", "READ x")]
    got = [_rec("0", "GET_FEATURE", "", "GET_FEATURE 14|"), _rec("1", "READ", "/a|", "READ y")]
    entry = CompatEntry(id="T1", op="GET_FEATURE", reference="ERROR ENOSYS|")
    result = compare_records("f:s", exp, got, [entry])
    assert len(result.allowed) == 1 and "[T1]" in result.allowed[0]
    assert len(result.failures) == 1 and "READ x" in result.failures[0]


def test_compare_rest_allows_later_steps() -> None:
    exp = [_rec("0", "WATCH", "/a|t|x|", "ERROR EINVAL|"), _rec("1", "WRITE", "/a|", "WRITE OK|")]
    got = [
        _rec("0", "WATCH", "/a|t|x|", "WATCH OK|"),
        _rec("1", "WRITE", "/a|", "WRITE OK|", {"a": ["/a|t|"]}),
    ]
    plain = CompatEntry(id="P", op="WATCH", differs="reply")
    assert compare_records("f:s", exp, got, [plain]).failures
    rest = CompatEntry(id="R", op="WATCH", differs="reply", rest=True)
    assert not compare_records("f:s", exp, got, [rest]).failures


def test_compare_detects_stale_golden() -> None:
    exp = [_rec("0", "READ", "/a|", "READ x")]
    got = [_rec("0", "READ", "/b|", "READ x")]
    assert "out of date" in compare_records("f:s", exp, got, []).failures[0]


def test_payload_regex_of_c02_matches_malformed_onearg_only() -> None:
    c02 = next(e for e in load_compat() if e.id == "C02")
    assert c02.payload_re is not None
    for bad in ("/a", "", "/a|extra|", "/a||"):
        rec = _rec("0", "READ", bad, "ERROR ENOENT|")
        assert c02.matches("x:y", rec, _rec("0", "READ", bad, "ERROR EINVAL|"), "reply"), bad
    good = _rec("0", "READ", "/a|", "ERROR ENOENT|")
    assert not c02.matches("x:y", good, _rec("0", "READ", "/a|", "ERROR EINVAL|"), "reply")


def test_scenario_files_are_well_formed() -> None:
    names = set()
    for path in sorted(SCENARIO_DIR.glob("*.json")):
        data = json.loads(Path(path).read_text())
        assert data.get("sources"), f"{path.name}: name the sources (C functions, specs)"
        for item in data["scenarios"]:
            assert (path.stem, item["name"]) not in names
            names.add((path.stem, item["name"]))
            for step in item["steps"]:
                assert "op" in step or step.get("close") or "batch" in step, (path.name, step)
                for sub in step.get("batch", [step]):
                    if isinstance(sub.get("op"), str):
                        MsgType[sub["op"]]  # a valid type name
    assert load_scenarios()


def test_version2_files_run_on_pyxenstored_only_and_have_expectations() -> None:
    for scenario in load_scenarios():
        if scenario.file.startswith("v2_"):
            assert scenario.targets == ("pyxenstored",)
            assert any("expect" in s or "expect_events" in s for s in scenario.steps)
