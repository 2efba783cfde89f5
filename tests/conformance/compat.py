"""The allowed differences of ``docs/compat.md`` and the comparison that uses them.

Each entry of ``docs/compat.md`` carries a fenced block tagged ``compat``
holding one JSON object::

    {"id": "C03", "scenario": "*", "op": ["GET_FEATURE", "SET_FEATURE"],
     "reference": "ERROR ENOSYS|", "differs": "reply"}

``scenario`` (``file:name``; the fuzzer uses ``fuzz:<n>``), ``step`` (label),
``op``, ``payload`` (escaped request payload), ``reference`` and
``pyxenstored`` (the two rendered replies) are shell-style globs or lists of
them (any may match); ``payload_re`` is a regular expression the escaped
payload must match in full.  ``differs`` says which part may differ
(``reply``, ``events`` or ``any``); ``rest`` true also allows every
difference in the later steps of the same scenario (the two daemons' states
have legitimately diverged).  A difference that no entry allows is a failure.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tests.conformance.scenario import StepRecord

COMPAT_MD = Path(__file__).resolve().parents[2] / "docs" / "compat.md"

_BLOCK = re.compile(r"^```compat\n(.*?)^```", re.MULTILINE | re.DOTALL)
_DIFFERS = ("reply", "events", "any")


class CompatError(Exception):
    """docs/compat.md holds a malformed entry."""


Globs = str | list[str]


def _glob(value: str, patterns: Globs) -> bool:
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


@dataclass(slots=True, frozen=True)
class CompatEntry:
    id: str
    scenario: Globs = "*"
    step: Globs = "*"
    op: Globs = "*"
    payload: Globs = "*"
    payload_re: str | None = None
    reference: Globs = "*"
    pyxenstored: Globs = "*"
    differs: str = "reply"
    rest: bool = False

    def matches(self, scenario: str, exp: StepRecord, got: StepRecord, part: str) -> bool:
        if self.differs != "any" and self.differs != part:
            return False
        if self.payload_re is not None and re.fullmatch(self.payload_re, exp.payload) is None:
            return False
        return (
            _glob(scenario, self.scenario)
            and _glob(exp.label, self.step)
            and _glob(exp.op, self.op)
            and _glob(exp.payload, self.payload)
            and _glob(exp.reply, self.reference)
            and _glob(got.reply, self.pyxenstored)
        )


def load_compat(path: Path = COMPAT_MD) -> list[CompatEntry]:
    if not path.exists():
        return []
    entries: list[CompatEntry] = []
    seen: set[str] = set()
    for m in _BLOCK.finditer(path.read_text()):
        try:
            data = json.loads(m.group(1))
            entry = CompatEntry(**data)
        except (ValueError, TypeError) as exc:
            raise CompatError(f"bad compat block {m.group(1)!r}: {exc}") from exc
        if entry.differs not in _DIFFERS:
            raise CompatError(f"{entry.id}: differs must be one of {_DIFFERS}")
        if entry.id in seen:
            raise CompatError(f"duplicate compat id {entry.id}")
        seen.add(entry.id)
        entries.append(entry)
    return entries


@dataclass(slots=True, frozen=True)
class Comparison:
    failures: list[str]
    allowed: list[str]


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def _describe(scenario: str, exp: StepRecord, got: StepRecord, part: str, who: str) -> str:
    if part == "reply":
        return (
            f"{scenario} step {exp.label} {exp.op} {exp.payload!r}: "
            f"reference {_short(exp.reply)!r}, {who} {_short(got.reply)!r}"
        )
    return (
        f"{scenario} step {exp.label} {exp.op} {exp.payload!r}: events "
        f"reference {exp.events!r}, {who} {got.events!r}"
    )


def compare_records(
    scenario: str,
    expected: list[StepRecord],
    actual: list[StepRecord],
    compat: list[CompatEntry],
    who: str = "pyxenstored",
) -> Comparison:
    """Differences between the reference's records and another daemon's."""
    failures: list[str] = []
    allowed: list[str] = []
    diverged_by: str | None = None
    if len(expected) != len(actual):
        failures.append(f"{scenario}: {len(expected)} steps expected, {len(actual)} recorded")
    for exp, got in zip(expected, actual, strict=False):
        if (exp.label, exp.op, exp.payload) != (got.label, got.op, got.payload):
            failures.append(
                f"{scenario} step {exp.label}: recorded request {exp.op} {exp.payload!r} "
                f"differs from {got.op} {got.payload!r} (golden file out of date? "
                "python -m tests.conformance.record)"
            )
            break
        for part, same in (("reply", exp.reply == got.reply), ("events", exp.events == got.events)):
            if same:
                continue
            text = _describe(scenario, exp, got, part, who)
            if diverged_by is not None:
                allowed.append(f"[{diverged_by}, earlier step] {text}")
                continue
            entry = next((e for e in compat if e.matches(scenario, exp, got, part)), None)
            if entry is None:
                failures.append(text)
                continue
            allowed.append(f"[{entry.id}] {text}")
            if entry.rest:
                diverged_by = entry.id
    return Comparison(failures, allowed)


def check_expectations(
    scenario: str, steps: list[dict[str, object]], actual: list[StepRecord]
) -> list[str]:
    """Compare records with the ``expect``/``expect_events`` written in the steps."""
    failures: list[str] = []
    for step, got in zip(steps, actual, strict=True):
        if "expect" in step and step["expect"] != got.reply:
            failures.append(
                f"{scenario} step {got.label} {got.op} {got.payload!r}: "
                f"expected {step['expect']!r}, got {got.reply!r}"
            )
        if "expect_events" in step and step["expect_events"] != got.events:
            failures.append(
                f"{scenario} step {got.label} {got.op} {got.payload!r}: "
                f"expected events {step['expect_events']!r}, got {got.events!r}"
            )
    return failures
