"""The restore's fast paths against the step-by-step way, on any node and watch list.

The bulk node path of ``migrate.restore`` (parent looked up once per run of
siblings, names validated and interned through one table, duplicates caught
by ``setdefault``) must install exactly what a restore through
``store.state.import_node`` record by record installs, with the same quota
usage, or fail on the same record with the same kind of error.  The
reader's inline WATCH_DATA decoding in ``iter_node_runs`` must give what
plain iteration gives, or the same error.
"""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.liveupdate.test_restore_bulk import flatten

from pyxenstored.migrate import RestoreError, StoreOnlySink, restore_state, restore_stream
from pyxenstored.migrate.restore import store_perms
from pyxenstored.store import Store
from pyxenstored.store.state import (
    StateError,
    clear_tree,
    ensure_base_tree,
    import_node,
    import_watch,
    rebuild_counters,
)
from pyxenstored.store.watch import Watch
from pyxenstored.stream import (
    ConnectionData,
    End,
    NodeData,
    NodePerm,
    Record,
    SocketSpec,
    StreamError,
    StreamReader,
    StreamWriteError,
    StreamWriter,
    WatchData,
    write_stream,
)
from pyxenstored.stream.records import CONN_TYPE_SOCKET
from pyxenstored.wire import XsError, canonicalize, implicit_path

VALID_PATH = re.compile(r"/|(?:/[A-Za-z0-9_@\-]+)+|@[A-Za-z0-9_@/\-]+").fullmatch

PERMS = [
    (NodePerm("n", 0, 0),),
    (NodePerm("b", 0, 5), NodePerm("r", 0, 0)),
    (NodePerm("r", 1, 7),),
    (),
]
# Components, some invalid ("", "ü", "a b"), some only valid in "@" paths.
COMPONENTS = ["a", "b", "c-d", "e_f", "@g", "0", "", "ü", "a b"]

path_st = st.one_of(
    st.lists(st.sampled_from(COMPONENTS), min_size=0, max_size=4).map(
        lambda parts: "/" + "/".join(parts)
    ),
    st.sampled_from(
        ["/", "@releaseDomain", "@introduceDomain", "@x/y", "relative", "x", "//a", "/a/", "@"]
    ),
)
node_st = st.tuples(path_st, st.integers(0, len(PERMS) - 1), st.binary(max_size=3))


def reference_restore(nodes: list[tuple[str, tuple[NodePerm, ...], bytes]]) -> Store:
    """Record by record through the store's import API; StateError names the index."""
    store = Store()
    clear_tree(store)
    for i, (path, perms, value) in enumerate(nodes):
        try:
            if VALID_PATH(path) is None:
                raise StateError(f"node path {path!r} is not valid")
            import_node(store, path, value, store_perms(perms))
        except StateError as exc:
            raise RestoreError(str(exc), i) from None
    ensure_base_tree(store)
    rebuild_counters(store)
    return store


def snapshot(store: Store) -> list[object]:
    """Everything the restore builds for nodes, in dict order (generations aside)."""
    out: list[object] = []
    for path, node in store.nodes.items():
        children = node.children
        out.append((path, node.value, node.perms, list(children), node.clen))
    out.append(sorted((domid, list(d.usage)) for domid, d in store.domains.items()))
    return out


def error_kind(message: str) -> str:
    for kind in ("not valid", "no permissions", "missing"):
        if kind in message:
            return kind
    return message


def compare(nodes: list[tuple[str, tuple[NodePerm, ...], bytes]]) -> None:
    try:
        expected: object = snapshot(reference_restore(nodes))
    except RestoreError as exc:
        expected = (exc.index, error_kind(exc.message))
    records: list[Record] = [NodeData(0, 0, 0, perms, path, value) for path, perms, value in nodes]
    records.append(End())
    data = write_stream(records)
    for how in ("bulk", "records"):
        store = Store()
        try:
            if how == "bulk":
                restore_stream(data, store, StoreOnlySink(store), verify=False)
            else:
                restore_state(records, store, StoreOnlySink(store), verify=False)
            got: object = snapshot(store)
        except RestoreError as exc:
            got = (exc.index, error_kind(exc.message))
        assert got == expected, how


@settings(max_examples=400, deadline=None)
@given(st.lists(node_st, max_size=25), st.booleans())
def test_bulk_nodes_restore_like_import_node(
    drawn: list[tuple[str, int, bytes]], rooted: bool
) -> None:
    nodes = [(path, PERMS[p], value) for path, p, value in drawn]
    if rooted:
        nodes.insert(0, ("/", PERMS[0], b""))
        nodes += [("@releaseDomain", PERMS[0], b""), ("@introduceDomain", PERMS[0], b"")]
    compare(nodes)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.sampled_from(COMPONENTS[:6]), max_size=3), st.binary(max_size=2))
    )
)
def test_valid_trees_restore_like_import_node(drawn: list[tuple[list[str], bytes]]) -> None:
    # Mostly valid: every prefix of every path first (parents before children).
    nodes = [("/", PERMS[0], b"")]
    for parts, value in drawn:
        for n in range(1, len(parts) + 1):
            nodes.append(("/" + "/".join(parts[:n]), PERMS[n % 3], value))
    # Both special nodes: the restore keeps the usage it counted (no walk).
    nodes.append(("@releaseDomain", PERMS[0], b""))
    nodes.append(("@introduceDomain", PERMS[0], b""))
    compare(nodes)


@pytest.mark.parametrize(
    "nodes",
    [
        # A name valid as a component, then the special node of that name.
        [
            ("/", PERMS[0], b""),
            ("/@releaseDomain", PERMS[0], b""),
            ("@releaseDomain", PERMS[0], b""),
        ],
        # Names without a slash after a child of "/" (same empty-prefix trap).
        [("/", PERMS[0], b""), ("/a", PERMS[0], b""), ("x", PERMS[0], b"")],
        [("/", PERMS[0], b""), ("/a", PERMS[0], b""), ("//a", PERMS[0], b"")],
        # A duplicate inside a run replaces the node and keeps its children.
        [
            ("/", PERMS[0], b""),
            ("/a", PERMS[0], b"1"),
            ("/a/b", PERMS[1], b""),
            ("/a", PERMS[2], b"2"),
        ],
        # A node first, then its special namesake, both children-free.
        [("@x/y", PERMS[0], b""), ("/", PERMS[0], b""), ("/a", PERMS[0], b"")],
    ],
)
def test_fast_path_traps(nodes: list[tuple[str, tuple[NodePerm, ...], bytes]]) -> None:
    compare(nodes)


def test_restored_watch_is_the_one_a_watch_request_makes() -> None:
    store = Store()
    store.connect(4, 3, is_socket=False)
    import_watch(store, 4, "rel/path", b"tok", 2)
    (watch,) = store.conns[4].watches.values()
    expected = Watch(
        4, store.conns[4].seq, store._watch_seq, "/local/domain/3/rel/path", b"tok", 2, 16
    )
    assert watch == expected
    assert hash(watch) == hash(expected)


# --- the reader's inline WATCH_DATA -------------------------------------------------------

SOCKET = ConnectionData(1, CONN_TYPE_SOCKET, 0, SocketSpec(5))


def watch_body(conn_id: int, wpath: bytes, token: bytes, plen: int, tlen: int) -> bytes:
    body = conn_id.to_bytes(4, "little") + plen.to_bytes(2, "little") + tlen.to_bytes(2, "little")
    return body + wpath + token


@st.composite
def raw_watch(draw: st.DrawFn) -> bytes:
    """A WATCH_DATA record, often well formed, sometimes lying about its lengths."""
    wpath = draw(st.sampled_from([b"/a\0", b"rel\0", b"@introduceDomain\0", b"/\xff\0", b"/a"]))
    token = draw(st.sampled_from([b"t\0", b"\0", b"\xc3\0", b"tok"]))
    plen = len(wpath) + draw(st.sampled_from([0, 0, 0, -1, 1, 40]))
    tlen = len(token) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    body = watch_body(1, wpath, token, max(plen, 0), max(tlen, 0))
    length = len(body) + draw(st.sampled_from([0, 0, 3, -2]))
    length = max(length, 0)
    body = body[:length].ljust(length, b"\0")
    pad = -length & 7
    return (3).to_bytes(4, "little") + length.to_bytes(4, "little") + body + b"\0" * pad


def outcome(data: bytes, bulk: bool) -> object:
    try:
        with StreamReader(data) as reader:
            return flatten(list(reader.iter_node_runs() if bulk else reader))
    except StreamError as exc:
        return (exc.offset, exc.record_index, exc.code)


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_watch(), max_size=6), st.booleans())
def test_inline_watches_read_like_plain_iteration(watches: list[bytes], nodes_after: bool) -> None:
    head = write_stream([SOCKET])
    tail: list[Record] = []
    if nodes_after:
        tail += [NodeData(0, 0, 0, PERMS[0], "/", b""), NodeData(0, 0, 0, PERMS[0], "/a", b"")]
    tail.append(End())
    data = head + b"".join(watches) + write_stream(tail)[16:]
    assert outcome(data, True) == outcome(data, False)


def test_inline_watches_restore_like_records() -> None:
    records: list[Record] = [SOCKET]
    records += [WatchData(1, f"/w{i}", f"t{i}") for i in range(50)]
    records += [WatchData(1, "rel", "r"), NodeData(0, 0, 0, PERMS[0], "/", b""), End()]
    data = write_stream(records)
    with StreamReader(data) as reader:
        assert flatten(list(reader.iter_node_runs())) == records
    bulk, plain = Store(), Store()
    restore_stream(data, bulk, StoreOnlySink(bulk))
    restore_state(records, plain, StoreOnlySink(plain))
    assert list(bulk.conns[1].watches.values()) == list(plain.conns[1].watches.values())


# --- the writer's committed-node runs ---------------------------------------------------

committed_st = st.tuples(
    st.text(st.characters(codec="utf-8"), max_size=6),
    st.sampled_from(PERMS),
    st.binary(max_size=9),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(committed_st, max_size=20), st.booleans())
def test_node_runs_write_the_bytes_of_records(
    run: list[tuple[str, tuple[NodePerm, ...], bytes]], big_endian: bool
) -> None:
    records: list[Record] = [NodeData(0, 0, 0, perms, path, value) for path, perms, value in run]
    by_record = io.BytesIO()
    with StreamWriter(by_record, big_endian=big_endian) as writer:
        writer.write_all(records)
    by_run = io.BytesIO()
    with StreamWriter(by_run, big_endian=big_endian) as writer:
        writer.write_all([run[:3], run[3:]])
    assert by_run.getvalue() == by_record.getvalue()


def test_node_runs_refuse_what_records_refuse() -> None:
    for bad in [("/\udc80", PERMS[0], b""), ("/a", PERMS[0], b"x" * 70000)]:
        with pytest.raises(StreamWriteError):
            StreamWriter(io.BytesIO()).write_all([NodeData(0, 0, 0, bad[1], bad[0], bad[2])])
        with pytest.raises(StreamWriteError):
            StreamWriter(io.BytesIO()).write_all([[bad]])


# --- the reader's bulk NODE_DATA -----------------------------------------------------------


@st.composite
def raw_node(draw: st.DrawFn) -> bytes:
    """A NODE_DATA record, often well formed, sometimes lying or unusual.

    ``len`` with or without its padding (C counts it, the spec need not),
    a transaction's node, several or no permission entries, lengths that
    overrun, a path without its NUL or not UTF-8.
    """
    path = draw(st.sampled_from([b"/\0", b"/a\0", b"/a/b\0", b"/\xff\0", b"/a", b"\0"]))
    value = draw(st.sampled_from([b"", b"v", b"value\0with nul"]))
    nperms = draw(st.sampled_from([1, 1, 1, 0, 2, 3]))
    perms = b"".join(
        bytes([draw(st.sampled_from(b"nrwbx")), draw(st.integers(0, 1))])
        + draw(st.sampled_from([0, 5, 0x7FF0])).to_bytes(2, "little")
        for _ in range(nperms)
    )
    conn_id, tx_id = draw(st.sampled_from([(0, 0), (0, 0), (1, 0), (0, 2)]))
    plen = len(path) + draw(st.sampled_from([0, 0, 0, 1, -1, 100]))
    vlen = len(value) + draw(st.sampled_from([0, 0, 0, 1, 100]))
    nperms_field = nperms + draw(st.sampled_from([0, 0, 0, 1, 50]))
    body = (
        conn_id.to_bytes(4, "little")
        + tx_id.to_bytes(4, "little")
        + max(plen, 0).to_bytes(2, "little")
        + vlen.to_bytes(2, "little")
        + b"\0\0"
        + nperms_field.to_bytes(2, "little")
        + perms
        + path
        + value
    )
    length = len(body)
    padded = (length + 7) & ~7
    if draw(st.booleans()):
        length = padded  # C: len counts the padding
    length += draw(st.sampled_from([0, 0, 0, -3, 8]))
    length = max(length, 0)
    body = body[:length].ljust(max(length, padded), b"\0")
    body = body.ljust((len(body) + 7) & ~7, b"\0")
    return (5).to_bytes(4, "little") + length.to_bytes(4, "little") + body


@settings(max_examples=400, deadline=None)
@given(st.lists(raw_node(), max_size=8), st.lists(raw_watch(), max_size=2))
def test_bulk_nodes_read_like_plain_iteration(nodes: list[bytes], watches: list[bytes]) -> None:
    data = write_stream([SOCKET]) + b"".join(watches) + b"".join(nodes)
    data += write_stream([End()])[16:]
    assert outcome(data, True) == outcome(data, False)


# --- import_watch's absolute-path shortcut -------------------------------------------------


def reference_watch(domid: int, wpath: str) -> tuple[str, int] | None:
    """What import_watch installs (canonical path, prefix) by wire.canonicalize, or None."""
    try:
        path = canonicalize(wpath.encode("ascii"), domid, allow_special=True)
    except (XsError, UnicodeEncodeError):
        return None
    relative = not wpath.startswith(("/", "@"))
    return path, (len(implicit_path(domid)) + 1 if relative else 0)


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from("/@a0-_ü \n."), max_size=8), st.sampled_from([0, 7]))
def test_watch_paths_canonical_as_wire(wpath: str, domid: int) -> None:
    store = Store()
    store.connect(1, domid, is_socket=domid == 0)
    expected = reference_watch(domid, wpath)
    try:
        import_watch(store, 1, wpath, b"t", -1)
    except StateError:
        assert expected is None
        return
    (watch,) = store.conns[1].watches.values()
    assert (watch.path, watch.prefix_len) == expected
