"""The restore's bulk path: StreamReader.iter_node_runs and errors inside a run.

Runs of committed nodes come as (path, perms, value) tuples; everything else
as the records plain iteration gives.  An error inside a run names the same
record (number, offset) as it would record by record.
"""

from __future__ import annotations

import pytest

from pyxenstored.migrate import RestoreError, StoreOnlySink, restore_state, restore_stream
from pyxenstored.store import Store
from pyxenstored.stream import (
    ConnectionData,
    End,
    NodeData,
    NodePerm,
    Record,
    SocketSpec,
    StreamReader,
    TransactionData,
    WatchData,
    write_stream,
)
from pyxenstored.stream.records import CONN_TYPE_SOCKET

DOM0 = (NodePerm("n", 0, 0),)
GUEST = (NodePerm("b", 0, 5), NodePerm("r", 0, 0))


def sample() -> list[Record]:
    out: list[Record] = [
        ConnectionData(1, CONN_TYPE_SOCKET, 0, SocketSpec(7)),
        WatchData(1, "/a", "tok"),
        NodeData(0, 0, 0, DOM0, "/", b""),
        NodeData(0, 0, 0, DOM0, "/a", b"x"),
    ]
    out += [NodeData(0, 0, 0, GUEST, f"/a/n{i}", b"v%d" % i) for i in range(300)]
    out += [
        NodeData(0, 0, 0, DOM0, "@releaseDomain", b""),
        TransactionData(1, 3),
        NodeData(1, 3, 1, DOM0, "/a", b"x"),
        NodeData(0, 0, 0, DOM0, "/b", b"after a transaction record"),
        End(),
    ]
    return out


def flatten(items: list[Record | list[tuple[str, tuple[NodePerm, ...], bytes]]]) -> list[Record]:
    out: list[Record] = []
    for item in items:
        if isinstance(item, list):
            out += [NodeData(0, 0, 0, perms, path, value) for path, perms, value in item]
        else:
            out.append(item)
    return out


@pytest.mark.parametrize("big_endian", [False, True])
def test_node_runs_carry_the_same_records(big_endian: bool) -> None:
    data = write_stream(sample(), big_endian=big_endian)
    with StreamReader(data) as reader:
        items = list(reader.iter_node_runs())
    assert any(isinstance(i, list) and len(i) > 300 for i in items)
    with StreamReader(data) as reader:
        assert flatten(items) == list(reader)


def test_bulk_and_record_by_record_restore_alike() -> None:
    records = sample()
    data = write_stream(records)
    bulk = Store()
    restore_stream(data, bulk, StoreOnlySink(bulk))
    plain = Store()
    restore_state(records, plain, StoreOnlySink(plain))
    assert bulk.nodes.keys() == plain.nodes.keys()
    for path, node in plain.nodes.items():
        other = bulk.nodes[path]
        assert (other.value, other.perms, list(other.children)) == (
            node.value,
            node.perms,
            list(node.children),
        )
    assert [d.usage for d in bulk.domains.values()] == [d.usage for d in plain.domains.values()]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (NodeData(0, 0, 0, GUEST, "/a/x/y", b""), "parent"),
        (NodeData(0, 0, 0, GUEST, "/a//y", b""), "not valid"),
        (NodeData(0, 0, 0, (), "/a/empty", b""), "no permissions"),
    ],
)
def test_error_inside_a_run_names_its_record(bad: NodeData, message: str) -> None:
    records = sample()
    at = 150  # in the middle of the run of /a/n*
    records.insert(at, bad)
    data = write_stream(records)
    with StreamReader(data) as reader:
        offset = next(r.offset for r in reader.iter_raw() if r.index == at)
    store = Store()
    with pytest.raises(RestoreError, match=message) as info:
        restore_stream(data, store, StoreOnlySink(store))
    assert info.value.index == at
    assert info.value.offset == offset
    assert "NODE_DATA" in str(info.value)
