"""Property tests: random request sequences keep the store consistent, and
committed transactions are serialisable (checked against brute-force serial orders)."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyxenstored.store import Store, StoreConfig
from pyxenstored.wire import MsgType as M

PATHS = ["/a", "/a/b", "/a/b/c", "/b", "/a/d", "/local/domain/5/x", "/local/domain/5/x/y"]
RELS = ["x", "x/y", "z"]
PERMS = [b"n0\0", b"n5\0", b"n0\0r5\0", b"b5\0", b"n5\0w6\0", b"n0\0r32757\0"]

path_bytes = st.sampled_from([p.encode() for p in PATHS + RELS])
value = st.binary(max_size=6)

request = st.one_of(
    st.tuples(st.just(M.WRITE), st.builds(lambda p, v: p + b"\0" + v, path_bytes, value)),
    st.tuples(st.just(M.READ), path_bytes.map(lambda p: p + b"\0")),
    st.tuples(st.just(M.MKDIR), path_bytes.map(lambda p: p + b"\0")),
    st.tuples(st.just(M.RM), path_bytes.map(lambda p: p + b"\0")),
    st.tuples(st.just(M.DIRECTORY), path_bytes.map(lambda p: p + b"\0")),
    st.tuples(
        st.just(M.SET_PERMS),
        st.builds(lambda p, q: p + b"\0" + q, path_bytes, st.sampled_from(PERMS)),
    ),
    st.tuples(
        st.just(M.WATCH),
        st.builds(lambda p, t: p + b"\0" + t + b"\0", path_bytes, st.sampled_from([b"t", b"u"])),
    ),
    st.tuples(
        st.just(M.UNWATCH),
        st.builds(lambda p, t: p + b"\0" + t + b"\0", path_bytes, st.sampled_from([b"t", b"u"])),
    ),
    st.tuples(st.just(M.TRANSACTION_START), st.just(b"\0")),
    st.tuples(st.just(M.TRANSACTION_END), st.sampled_from([b"T\0", b"F\0"])),
    st.tuples(st.just(M.RESET_WATCHES), st.just(b"")),
)

# (connection index, tx slot or None, request); connection 0 is dom0's socket.
step = st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(1, 3)), request)


def _new_store() -> Store:
    store = Store(StoreConfig())
    store.connect(0, 0, is_socket=True)
    store.connect(1, 5, is_socket=False)
    store.connect(2, 6, is_socket=False)
    store.connect(3, 0, is_socket=True)
    store.handle(0, M.MKDIR, 0, b"/local/domain/5\0")
    store.handle(0, M.SET_PERMS, 0, b"/local/domain/5\0n5\0r6\0")
    store.handle(0, M.SET_QUOTA, 0, b"5\0nodes\x006\0")
    store.handle(0, M.SET_QUOTA, 0, b"6\0transaction-nodes\x005\0")
    return store


def assert_quick_reads_agree(store: Store) -> None:
    """``quick_read`` either declines or answers as ``handle`` does, event-free."""
    for conn_id in store.conns:
        for raw in PATHS + RELS + ["@releaseDomain", "/a//b", "/nonexistent"]:
            payload = raw.encode() + b"\0"
            for msg_type in (M.READ, M.DIRECTORY, M.GET_PERMS):
                quick = store.quick_read(conn_id, msg_type, payload)
                if quick is None:
                    continue
                result = store.handle(conn_id, msg_type, 0, payload)
                assert (result.reply_type, result.payload, result.events) == (msg_type, quick, ())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=40))
def test_random_sequences_keep_the_store_consistent(
    steps: list[tuple[int, int | None, tuple[M, bytes]]],
) -> None:
    store = _new_store()
    for conn_id, slot, (msg_type, payload) in steps:
        conn = store.conns[conn_id]
        open_ids = sorted(conn.transactions)
        tx_id = 0
        if slot is not None and open_ids:
            tx_id = open_ids[(slot - 1) % len(open_ids)]
        result = store.handle(conn_id, msg_type, tx_id, payload)
        assert result.reply_type in (msg_type, M.ERROR)
        assert len(result.payload) <= 4096
        for event in result.events:
            assert event.conn_id in store.conns
        assert store.check() == [], (msg_type, payload)
        assert_quick_reads_agree(store)
    # A connection going away leaves nothing behind.
    store.disconnect(1)
    store.disconnect(2)
    assert store.check() == []
    assert sum(len(c.watches) for c in store.conns.values()) == store.watches.count


# --- serialisability ----------------------------------------------------------------------

TX_PATHS = [b"/a", b"/a/b", b"/b", b"/a/c"]
tx_op = st.one_of(
    st.tuples(st.just(M.READ), st.sampled_from(TX_PATHS).map(lambda p: p + b"\0")),
    st.tuples(st.just(M.DIRECTORY), st.sampled_from(TX_PATHS).map(lambda p: p + b"\0")),
    st.tuples(
        st.just(M.WRITE),
        st.builds(
            lambda p, v: p + b"\0" + v,
            st.sampled_from(TX_PATHS),
            st.sampled_from([b"1", b"2", b"3"]),
        ),
    ),
    st.tuples(st.just(M.RM), st.sampled_from(TX_PATHS).map(lambda p: p + b"\0")),
    st.tuples(st.just(M.MKDIR), st.sampled_from(TX_PATHS).map(lambda p: p + b"\0")),
)


def _snapshot(
    store: Store,
) -> dict[str, tuple[bytes, tuple[tuple[int, int], ...], tuple[str, ...]]]:
    return {p: (n.value, n.perms, tuple(n.children)) for p, n in store.nodes.items()}


def _setup(store: Store, initial: list[tuple[M, bytes]]) -> None:
    for msg_type, payload in initial:
        store.handle(0, msg_type, 0, payload)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.lists(tx_op, max_size=4),
    programs=st.lists(st.lists(tx_op, min_size=1, max_size=4), min_size=2, max_size=3),
    data=st.data(),
)
def test_committed_transactions_are_serialisable(
    initial: list[tuple[M, bytes]], programs: list[list[tuple[M, bytes]]], data: st.DataObject
) -> None:
    store = Store(StoreConfig())
    for i in range(len(programs)):
        store.connect(i, 0, is_socket=True)
    _setup(store, initial)
    # An interleaving: each transaction's start, operations and commit in program order.
    queue = [[("start", None)] + [("op", op) for op in prog] + [("end", None)] for prog in programs]
    positions = [0] * len(programs)
    tx_ids = [0] * len(programs)
    replies: list[list[tuple[int, bytes]]] = [[] for _ in programs]
    committed: list[int] = []
    while any(positions[i] < len(queue[i]) for i in range(len(programs))):
        ready = [i for i in range(len(programs)) if positions[i] < len(queue[i])]
        i = data.draw(st.sampled_from(ready))
        kind, op = queue[i][positions[i]]
        positions[i] += 1
        if kind == "start":
            tx_ids[i] = int(store.handle(i, M.TRANSACTION_START, 0, b"\0").payload[:-1])
        elif kind == "op":
            assert op is not None
            r = store.handle(i, op[0], tx_ids[i], op[1])
            replies[i].append((r.reply_type, r.payload))
        else:
            r = store.handle(i, M.TRANSACTION_END, tx_ids[i], b"T\0")
            assert r.payload in (b"OK\0", b"EAGAIN\0")
            if r.payload == b"OK\0":
                committed.append(i)
    assert committed, "the first transaction to commit never conflicts"
    assert store.check() == []
    final = _snapshot(store)
    # Some serial order of the committed transactions gives the same state and replies.
    for order in itertools.permutations(committed):
        serial = Store(StoreConfig())
        serial.connect(0, 0, is_socket=True)
        _setup(serial, initial)
        ok = True
        for i in order:
            tx = int(serial.handle(0, M.TRANSACTION_START, 0, b"\0").payload[:-1])
            got = [
                (r.reply_type, r.payload)
                for r in (serial.handle(0, t, tx, p) for t, p in programs[i])
            ]
            if (
                serial.handle(0, M.TRANSACTION_END, tx, b"T\0").payload != b"OK\0"
                or got != replies[i]
            ):
                ok = False
                break
        if ok and _snapshot(serial) == final:
            return
    raise AssertionError(f"no serial order of {committed} reproduces the interleaved result")
