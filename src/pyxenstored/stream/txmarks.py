"""pyxenstored's own transaction state, carried where the spec lets implementations add.

A pending transaction needs more than TRANSACTION_DATA and its NODE_DATA
records say for a restore to behave as the dumped daemon would have: which
nodes changed outside the transaction since it first saw them (its commit
fails with EAGAIN), which watch events its commit fires (on the exact path
or on the path and its ancestors), and whether it failed earlier (its
commit answers ENOMEM).  ``xenstore-migration.md`` reserves every bit of
NODE_DATA ``access`` but read and written, and leaves one extension point:
quota names beyond those of ``xenstore.txt`` are allowed ("implementation
specific ones"), and a reader that does not know a name ignores it.

So each open transaction gets one such quota entry in the DOMAIN_DATA of
the domain its connection acts for (docs/stream.md)::

    pyxenstored:transaction:<conn-id>:<tx-id>:<marks>   = <flags>

``marks`` has one digit per pending NODE_DATA record of the transaction, in
stream order: the OR of :data:`NODE_CHANGED`, :data:`NODE_EVENT_EXACT` and
:data:`NODE_EVENT_SUBTREE` (the two event bits exclusive).  ``flags`` is
:data:`TX_FAILED` or 0.  A spec-following reader, the C daemon included,
skips the entry; pyxenstored reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import QuotaValue

PREFIX = "pyxenstored:transaction:"

#: Node marks: the committed node changed since the transaction first saw it.
NODE_CHANGED = 1
#: The commit fires a watch event for this node, on the watches of the exact path.
NODE_EVENT_EXACT = 2
#: The commit fires a watch event for this node, on the path and its ancestors.
NODE_EVENT_SUBTREE = 4
_NODE_MARKS = NODE_CHANGED | NODE_EVENT_EXACT | NODE_EVENT_SUBTREE

#: Transaction flags: an operation in it failed; its commit answers ENOMEM.
TX_FAILED = 1


@dataclass(slots=True, frozen=True)
class TransactionMarks:
    """What one transaction carries beyond the spec: a mark per pending node, and flags."""

    conn_id: int
    tx_id: int
    nodes: tuple[int, ...]
    flags: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.flags & TX_FAILED)

    def to_quota(self) -> QuotaValue:
        """The quota entry that carries these marks."""
        marks = "".join(str(m) for m in self.nodes)
        return QuotaValue(f"{PREFIX}{self.conn_id}:{self.tx_id}:{marks}", self.flags)


def is_marks_name(name: str) -> bool:
    """Whether a quota name is in this module's namespace (well formed or not)."""
    return name.startswith(PREFIX)


def parse_marks_name(name: str) -> tuple[int, int, tuple[int, ...]]:
    """``(conn-id, tx-id, node marks)`` of an entry's name; ValueError if malformed."""
    fields = name[len(PREFIX) :].split(":")
    if len(fields) != 3 or not (fields[0].isdigit() and fields[1].isdigit()):
        raise ValueError(f"quota name {name!r}: not {PREFIX}<conn-id>:<tx-id>:<marks>")
    nodes = []
    for digit in fields[2]:
        mark = ord(digit) - ord("0")
        if not 0 <= mark <= _NODE_MARKS or mark & NODE_EVENT_EXACT and mark & NODE_EVENT_SUBTREE:
            raise ValueError(f"quota name {name!r}: bad node mark {digit!r}")
        nodes.append(mark)
    return int(fields[0]), int(fields[1]), tuple(nodes)


def parse_marks(entry: QuotaValue) -> TransactionMarks:
    """The marks a quota entry of :func:`is_marks_name` carries; ValueError if malformed."""
    conn_id, tx_id, nodes = parse_marks_name(entry.name)
    if entry.value & ~TX_FAILED:
        raise ValueError(f"quota entry {entry.name!r}: flags {entry.value:#x} unknown")
    return TransactionMarks(conn_id, tx_id, nodes, entry.value)


def is_marks_name_valid(name: str) -> bool:
    """Whether ``name`` is a well-formed name of this module's entries."""
    if not is_marks_name(name):
        return False
    try:
        parse_marks_name(name)
    except ValueError:
        return False
    return True
