"""pyxenstored's transaction marks: the quota entries that carry what the spec does not.

Names are written out by hand from the grammar in docs/stream.md.
"""

from __future__ import annotations

import pytest

from pyxenstored.stream import DomainData, End, TransactionData
from pyxenstored.stream.records import QuotaValue
from pyxenstored.stream.txmarks import (
    NODE_CHANGED,
    NODE_EVENT_EXACT,
    NODE_EVENT_SUBTREE,
    TX_FAILED,
    TransactionMarks,
    is_marks_name,
    is_marks_name_valid,
    parse_marks,
)
from pyxenstored.stream.writer import adapt_for_target


def test_marks_as_a_quota_entry() -> None:
    marks = TransactionMarks(
        3, 17, (0, NODE_EVENT_SUBTREE, NODE_CHANGED | NODE_EVENT_EXACT, NODE_CHANGED), TX_FAILED
    )
    entry = marks.to_quota()
    assert entry == QuotaValue("pyxenstored:transaction:3:17:0431", 1)
    assert parse_marks(entry) == marks
    assert parse_marks(entry).failed


def test_a_transaction_without_pending_nodes() -> None:
    entry = QuotaValue("pyxenstored:transaction:1:2:", 0)
    assert parse_marks(entry) == TransactionMarks(1, 2, (), 0)


@pytest.mark.parametrize(
    "name",
    [
        "pyxenstored:transaction:1:2",  # no marks field
        "pyxenstored:transaction:1:2:3:4",
        "pyxenstored:transaction:x:2:0",
        "pyxenstored:transaction:1:-2:0",
        "pyxenstored:transaction:1:2:8",  # no such bit
        "pyxenstored:transaction:1:2:6",  # exact and subtree at once
        "pyxenstored:transaction:1:2:a",
    ],
)
def test_malformed_names(name: str) -> None:
    assert is_marks_name(name)
    assert not is_marks_name_valid(name)
    with pytest.raises(ValueError):
        parse_marks(QuotaValue(name, 0))


def test_unknown_flags() -> None:
    with pytest.raises(ValueError, match="flags"):
        parse_marks(QuotaValue("pyxenstored:transaction:1:2:0", 2))


def test_other_names_are_not_marks() -> None:
    for name in ("nodes", "soft-memory", "pyxenstored", "transaction:1:2:0"):
        assert not is_marks_name(name)


@pytest.mark.parametrize("target", ["c-head", "c-4.17"])
def test_c_targets_drop_the_marks_with_the_transactions(target: str) -> None:
    marks = QuotaValue("pyxenstored:transaction:1:2:0", 0)
    records = [
        TransactionData(1, 2),
        DomainData(0, 0, (QuotaValue("nodes", 9), marks)),
        End(),
    ]
    out, dropped = adapt_for_target(records, 1 if target == "c-4.17" else 2, target, lossy=True)
    assert "transaction 2 of connection 1" in dropped
    assert not any(is_marks_name(v.name) for r in out if isinstance(r, DomainData) for v in r.quota)
    spec, _ = adapt_for_target(records, 2, "spec", lossy=False)
    assert spec == records
