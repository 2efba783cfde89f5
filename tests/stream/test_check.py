"""The checker: hand-built streams that break one rule each, and clean streams.

Bytes come from the spec-table builders of ``conftest.py`` (never from the
project's writer), so each test says exactly which bytes break which rule.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.stream.conftest import (
    DATA_DIR,
    HEAD_QUOTA_DEFAULTS,
    WORKED_EXAMPLE,
    body_connection,
    body_domain,
    body_global,
    body_global_quota,
    body_node,
    body_transaction,
    body_watch,
    body_watch_ext,
    end_record,
    frame,
    preamble,
    ring_spec,
    socket_spec,
    stream,
)

from pyxenstored.stream import (
    StreamReader,
    WatchDataExtended,
    decode_record,
    inspect_record,
    read_records,
    watch_ext_layouts,
)
from pyxenstored.stream.check import RULES, Severity, check_all, check_stream
from pyxenstored.stream.pathtrack import PathTracker
from pyxenstored.stream.synth import SynthConfig, write_synth

LE = False
N0 = [(b"n", 0, 0)]


def rules(data: bytes) -> list[str]:
    return [d.rule for d in check_all(data)[0]]


def node(
    path: bytes,
    value: bytes = b"",
    perms: list[tuple[bytes, int, int]] | None = None,
    conn: int = 0,
    tx: int = 0,
    access: int = 0,
    big: bool = LE,
) -> bytes:
    return frame(
        big, 5, body_node(big, conn, tx, access, N0 if perms is None else perms, path, value)
    )


def ring(conn_id: int, domid: int, big: bool = LE, conn_type: int = 0, fields: int = 1) -> bytes:
    return frame(
        big,
        2,
        body_connection(
            big,
            conn_id,
            conn_type,
            fields,
            ring_spec(big, domid, 0x7FF4, 9),
            b"",
            b"",
            0,
            0 if fields & 1 else None,
        ),
    )


def sock(conn_id: int, fd: int = 7, big: bool = LE) -> bytes:
    return frame(
        big, 2, body_connection(big, conn_id, 1, 0, socket_spec(big, fd), b"", b"", 0, None)
    )


def v2(*records: bytes) -> bytes:
    return stream(2, LE, *records)


def v1(*records: bytes) -> bytes:
    return stream(1, LE, *records)


# --- clean streams ----------------------------------------------------------------


def test_worked_example_is_clean() -> None:
    diags, summary = check_all(WORKED_EXAMPLE)
    assert diags == []
    assert summary.records == 6 and summary.ended and summary.version == 2


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("version", [1, 2])
def test_small_tree_clean_both_orders_and_versions(big: bool, version: int) -> None:
    data = stream(
        version,
        big,
        frame(big, 1, body_global(big, 3, 4)),
        frame(big, 2, body_connection(big, 1, 0, 1, ring_spec(big, 0, 0x7FF4, 2), b"", b"", 0, 0)),
        frame(big, 3, body_watch(big, 1, b"/a", b"t")),
        node(b"/", big=big),
        node(b"/a", b"x", big=big),
        node(b"/a/b", b"\0\1", [(b"b", 1, 0), (b"r", 1, 5)], big=big),
        node(b"@releaseDomain", big=big),
    )
    assert rules(data) == []


C_DUMPS = sorted(DATA_DIR.glob("*.state"))


def test_real_c_dumps_are_present() -> None:
    assert any(p.name == "basic.state" for p in C_DUMPS), "the C 4.17 dumps are in the repository"


@pytest.mark.parametrize("path", C_DUMPS, ids=[p.name for p in C_DUMPS])
def test_real_c_dump_is_clean(path: Path) -> None:
    diags, summary = check_all(str(path))
    assert [str(d) for d in diags] == []
    assert summary.ended


def test_unpadded_len_is_only_a_warning() -> None:
    data = v2(frame(LE, 5, body_node(LE, 0, 0, 0, N0, b"/a", b"xyz"), padded=False))
    diags, _ = check_all(data)
    assert [d.rule for d in diags] == ["unpadded-len"]
    assert diags[0].severity is Severity.WARNING


def test_file_object_and_path_agree(tmp_path: pytest.TempPathFactory) -> None:
    data = v2(node(b"/a/b"))
    p = tmp_path / "s"  # type: ignore[operator]
    p.write_bytes(data)
    assert rules(data) == rules(io.BytesIO(data)) == [d.rule for d in check_all(str(p))[0]]


# --- preamble and framing ---------------------------------------------------------


def test_bad_ident_stops() -> None:
    d, _ = check_all(b"xenstorf" + bytes(8) + end_record(LE))
    assert [x.rule for x in d] == ["bad-ident"]
    assert d[0].offset == 0 and d[0].record is None


def test_bad_version_and_reserved_flags() -> None:
    data = b"xenstore" + struct.pack(">II", 3, 0x10) + end_record(LE)
    assert rules(data) == ["bad-version", "reserved-flags"]


def test_truncated_preamble() -> None:
    assert rules(b"xenst") == ["truncated"]


def test_truncation_inside_a_body_reports_offset_and_stops() -> None:
    good = v2(node(b"/a", b"hello"))
    cut = good[:-8][:-5]  # drop END and the end of the node record
    d, s = check_all(cut)
    assert [x.rule for x in d] == ["truncated"]
    assert d[0].offset == 16 and d[0].record == 0 and d[0].record_type == 5
    assert not s.ended


def test_truncated_record_header() -> None:
    data = v2(node(b"/a"))[:-4]
    assert rules(data) == ["truncated", "end-missing"]


def test_end_missing() -> None:
    data = preamble(2, LE) + node(b"/a")
    assert rules(data) == ["end-missing"]


def test_end_not_last_and_data_after_end() -> None:
    assert rules(v2() + node(b"/a")) == ["end-not-last"]
    assert rules(v2() + b"\xff\xff\xff\xff") == ["data-after-end"]


def test_end_nonempty() -> None:
    data = preamble(2, LE) + frame(LE, 0, bytes(8))
    assert rules(data) == ["end-nonempty"]


def test_nonzero_padding_inside_and_after_len() -> None:
    rec = bytearray(node(b"/a", b"x"))  # body 16+4+3+1 = 24: add padding
    body = body_node(LE, 0, 0, 0, N0, b"/ab", b"x")  # 16+4+4+1 = 25 -> 7 pad bytes
    rec = bytearray(frame(LE, 5, body))
    rec[-1] = 0xAA
    assert rules(v2(bytes(rec))) == ["nonzero-padding"]
    rec2 = bytearray(frame(LE, 5, body, padded=False))
    rec2[-1] = 0xAA
    assert rules(v2(bytes(rec2))) == ["unpadded-len", "nonzero-padding"]


def test_c_head_quota_records_with_garbage_padding_are_only_warned() -> None:
    quota = [(name.encode(), value) for name, value in HEAD_QUOTA_DEFAULTS]
    gq = bytearray(frame(LE, 6, body_global_quota(LE, quota, [])))
    assert struct.unpack_from("<II", gq)[1] == 160  # domain.c:dump_state_glb_quota
    gq[-4:] = b"\xde\xad\xbe\xef"  # C does not clear the padding
    dom = bytearray(frame(LE, 7, body_domain(LE, 0, 14, [(b"nodes", 5)])))  # 18 + 6 padding
    dom[-1] = 0x55
    diags, summary = check_all(v2(ring(1, 0), bytes(gq), bytes(dom)))
    assert [d.rule for d in diags] == ["nonzero-padding", "nonzero-padding"]
    assert summary.errors == 0 and diags[0].offset == 16 + 40 + 8 + 156  # after the ring record


def test_unknown_record_type_is_skipped() -> None:
    assert rules(v2(frame(LE, 9, b"whatever"), node(b"/a"))) == ["unknown-record-type"]


# --- sizes and strings -----------------------------------------------------------


def test_body_too_short() -> None:
    assert rules(v2(frame(LE, 1, b"\0\0\0\0", padded=False))) == ["unpadded-len", "body-too-short"]


def test_string_overrun() -> None:
    body = bytearray(body_watch(LE, 1, b"/a", b"t"))
    struct.pack_into("<H", body, 4, 200)  # wpath-len far beyond the record
    assert "string-overrun" in rules(v2(sock(1), frame(LE, 3, bytes(body))))


def test_len_larger_than_fields() -> None:
    body = body_global(LE, 3, 4) + bytes(16)
    assert rules(v2(frame(LE, 1, body))) == ["len-mismatch"]


def test_missing_nul_and_embedded_nul() -> None:
    body = bytearray(body_watch(LE, 1, b"/a", b"t"))
    body[8 + 2] = ord("x")  # wpath terminator
    assert "missing-nul" in rules(v2(sock(1), frame(LE, 3, bytes(body))))
    emb = body_node(LE, 0, 0, 0, N0, b"/a\0b", b"")
    assert "embedded-nul" in rules(v2(frame(LE, 5, emb)))


def test_bad_string_encoding() -> None:
    bad_token = frame(LE, 3, body_watch(LE, 1, b"/a", b"\xff\xfe"))
    assert rules(v2(sock(1), bad_token)) == ["bad-string-encoding"]
    bad_name = frame(LE, 6, body_global_quota(LE, [(b"n\xe9", 1)], []))
    assert rules(v2(bad_name)) == ["bad-string-encoding", "unknown-quota-name"]


def test_record_not_in_version() -> None:
    data = v1(sock(1), frame(LE, 8, body_watch_ext(LE, 1, b"/a", b"t", 2)))
    assert rules(data) == ["type-not-in-version"]
    assert rules(v2(sock(1), frame(LE, 8, body_watch_ext(LE, 1, b"/a", b"t", 2)))) == []


# --- once-only records and connections -----------------------------------------------


def test_duplicate_global_records() -> None:
    g = frame(LE, 1, body_global(LE, 3, 4))
    q = frame(LE, 6, body_global_quota(LE, [(b"nodes", 1)], []))
    assert rules(v2(g, g, q, q)) == ["duplicate-global-data", "duplicate-global-quota-data"]


def test_conn_id_zero_duplicate_and_unknown_type() -> None:
    assert rules(v2(sock(0))) == ["conn-id-zero"]
    assert rules(v2(sock(1), sock(1))) == ["conn-id-duplicate"]
    assert rules(v2(ring(1, 0, conn_type=2))) == ["unknown-conn-type"]


def test_connection_field_rules() -> None:
    b = body_connection(LE, 1, 1, 2, socket_spec(LE, 7), b"", b"ab", 3, None)
    assert rules(v2(frame(LE, 2, b))) == ["reserved-conn-fields", "out-resp-len-too-big"]
    pad = bytearray(body_connection(LE, 1, 1, 0, socket_spec(LE, 7), b"", b"", 0, None))
    pad[12] = 1
    assert rules(v2(frame(LE, 2, bytes(pad)))) == ["nonzero-pad-field"]


def test_pending_data_messages() -> None:
    msg = struct.pack("<IIII", 15, 0, 0, 3) + b"ab\0"
    ok = body_connection(LE, 1, 1, 0, socket_spec(LE, 7), msg + msg[:10], b"xy" + msg, 2, None)
    assert rules(v2(frame(LE, 2, ok))) == []
    cut = body_connection(LE, 1, 1, 0, socket_spec(LE, 7), b"", msg[:-1], 0, None)
    assert rules(v2(frame(LE, 2, cut))) == ["out-data-not-messages"]
    huge = struct.pack("<IIII", 2, 0, 0, 5000)
    big = body_connection(LE, 1, 1, 0, socket_spec(LE, 7), huge, b"", 0, None)
    assert rules(v2(frame(LE, 2, big))) == ["pending-message-too-long"]


def test_watch_and_transaction_need_an_earlier_connection() -> None:
    w = frame(LE, 3, body_watch(LE, 4, b"/a", b"t"))
    t = frame(LE, 4, body_transaction(LE, 4, 1))
    assert rules(v2(w, t)) == ["watch-unknown-conn", "transaction-unknown-conn"]
    assert rules(v2(sock(4), w, t)) == []
    assert rules(v2(sock(4), t, t)) == ["transaction-duplicate"]


def test_bad_watch_path() -> None:
    assert rules(v2(sock(1), frame(LE, 3, body_watch(LE, 1, b"/a//b", b"t")))) == ["bad-watch-path"]
    # relative and special watch paths are fine
    assert (
        rules(
            v2(
                sock(1),
                frame(LE, 3, body_watch(LE, 1, b"device", b"t")),
                frame(LE, 3, body_watch(LE, 1, b"@releaseDomain", b"t")),
            )
        )
        == []
    )


# --- WATCH_DATA_EXTENDED layouts (docs/stream.md; watch.c) ------------------------


def test_c_head_writer_defect_is_reported_and_resynchronised() -> None:
    # watch.c:dump_state_watches, path /a, token t, conn 1, a depth: len 24, 16 bytes written
    bad = bytes.fromhex("080000001800000001000000030002002f61007400000000")
    data = v2(sock(1))[:-8] + bad + node(b"/a") + end_record(LE)
    got = rules(data)
    assert got == ["c-head-watch-ext-defect"]


def test_ambiguous_watch_ext_layout() -> None:
    # spec layout, depth 0x2f ("/" as bytes), path "/", empty token: the bytes
    # also read as the C HEAD writer's layout (path "/" at offset 8)
    body = struct.pack("<IHHHH", 1, 2, 1, 0x2F, 0) + b"/\0" + b"\0"
    assert rules(v2(sock(1), frame(LE, 8, body))) == ["watch-ext-ambiguous"]


def test_c_reader_layout_is_a_warning() -> None:
    body = struct.pack("<IHHH", 1, 3, 2, 1) + b"/a\0t\0"  # path at offset 10
    data = v2(sock(1), frame(LE, 8, body))
    assert rules(data) == ["watch-ext-c-reader-layout"]


def test_empty_watch_path_fits_no_watch_ext_layout() -> None:
    """xenstore.txt forbids the empty path: a wpath-len of 1 (the NUL alone) fits no layout.

    The bytes below would read as the C reader's layout (depth 1 at 8, the
    empty path's NUL at 10, token "t" at 11) if an empty path counted; the
    reader and the checker agree that it does not, and both take the spec
    layout, whose pad (bytes 10-11) is then not zero.
    """
    body = struct.pack("<IHHH", 1, 1, 2, 1) + b"\0t\0"
    data = v2(sock(1), frame(LE, 8, body))
    reader = StreamReader(data)
    raws = list(reader.iter_raw())
    assert watch_ext_layouts(raws[1], reader.header) == []
    assert raws[1].quirk is None
    info = inspect_record(raws[1], reader.header)
    assert info.record == WatchDataExtended(1, "", "\0", 1)
    assert info.reserved == ("pad",)
    assert rules(data) == ["nonzero-pad-field", "embedded-nul", "bad-watch-path"]
    # One path character more, and the same bytes are the C reader's layout for both.
    body = struct.pack("<IHHH", 1, 2, 2, 1) + b"a\0t\0"
    data = v2(sock(1), frame(LE, 8, body))
    reader = StreamReader(data)
    raws = list(reader.iter_raw())
    assert watch_ext_layouts(raws[1], reader.header) == ["c-reader"]
    assert decode_record(raws[1], reader.header) == WatchDataExtended(1, "a", "t", 1)
    assert rules(data) == ["watch-ext-c-reader-layout"]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 6),
    st.integers(0, 4),
    st.binary(min_size=0, max_size=14),
)
def test_reader_and_checker_agree_on_the_watch_ext_layout(
    plen: int, tlen: int, rest: bytes
) -> None:
    """Whatever the bytes, the layout the reader picks is the one the checker reports."""
    body = struct.pack("<IHH", 1, plen, tlen) + rest
    data = v2(sock(1), frame(LE, 8, body))
    reader = StreamReader(data)
    raw = list(reader.iter_raw())[1]
    fits = watch_ext_layouts(raw, reader.header)
    got = set(rules(data))
    assert ("watch-ext-c-reader-layout" in got) == (fits[:1] == ["c-reader"])
    assert ("c-head-watch-ext-defect" in got) == (fits[:1] == ["c-head-writer"])
    assert ("watch-ext-ambiguous" in got) == (len(fits) > 1)


# --- nodes -------------------------------------------------------------------------


def test_committed_node_parent_missing() -> None:
    d, _ = check_all(v2(node(b"/a/b")))
    assert [x.rule for x in d] == ["node-parent-missing"]
    assert d[0].record == 0 and d[0].offset == 16


def test_parent_earlier_but_not_in_tree_order_is_fine() -> None:
    assert rules(v2(node(b"/a"), node(b"/b"), node(b"/a/c"), node(b"/b/d"), node(b"/a/c/e"))) == []


def test_duplicate_committed_paths_in_and_out_of_tree_order() -> None:
    assert rules(v2(node(b"/a"), node(b"/a"))) == ["node-duplicate"]
    assert rules(v2(node(b"/a"), node(b"/a/b"), node(b"/c"), node(b"/a/b"))) == ["node-duplicate"]
    assert rules(v2(node(b"/"), node(b"/"))) == ["node-duplicate"]
    assert rules(v2(node(b"@releaseDomain"), node(b"@releaseDomain"))) == ["node-duplicate"]


@pytest.mark.parametrize("path", [b"/a/", b"/a//b", b"a/b", b"/a b", b"/\xc3\xa9", b""])
def test_bad_paths(path: bytes) -> None:
    got = rules(v2(node(path)))
    assert got in (["bad-path"], ["missing-nul"]) if path == b"" else got == ["bad-path"]


def test_path_too_long() -> None:
    long = b"/" + b"a" * 3072
    assert rules(v2(node(long))) == ["path-too-long"]


def test_permission_rules() -> None:
    assert rules(v2(node(b"/a", perms=[(b"x", 0, 0)]))) == ["bad-perm-letter"]
    assert rules(v2(node(b"/a", perms=[(b"n", 4, 0)]))) == ["reserved-perm-flags"]
    assert rules(v2(node(b"/a", perms=[]))) == ["perm-count-zero"]


def test_committed_node_with_transaction_fields() -> None:
    assert rules(v2(node(b"/a", tx=3))) == ["committed-node-tx-fields"]


def test_pending_nodes() -> None:
    t = frame(LE, 4, body_transaction(LE, 1, 5))
    ok = node(b"/x/y", b"v", [(b"n", 0, 0)], conn=1, tx=5, access=3)
    deleted = node(b"/x/z", b"", [], conn=1, tx=5, access=0)
    assert rules(v2(sock(1), t, ok, deleted)) == []
    assert rules(v2(sock(1), ok)) == ["node-unknown-transaction"]
    assert rules(v2(sock(1), t, ok, ok)) == ["pending-node-duplicate"]
    bits = node(b"/x/y", b"", [(b"n", 0, 0)], conn=1, tx=5, access=8)
    assert rules(v2(sock(1), t, bits)) == ["reserved-access-bits"]
    odd = node(b"/x/q", b"v", [], conn=1, tx=5, access=0)
    assert rules(v2(sock(1), t, odd)) == ["deleted-node-inconsistent"]
    # No permissions and access "read": read while it did not exist, not deleted.
    absent = node(b"/x/r", b"", [], conn=1, tx=5, access=1)
    assert rules(v2(sock(1), t, absent)) == []
    # ... but "written" without permissions says neither.
    written = node(b"/x/w", b"", [], conn=1, tx=5, access=2)
    assert rules(v2(sock(1), t, written)) == ["deleted-node-inconsistent"]


def test_node_owner_unknown_to_c_is_a_warning() -> None:
    d, _ = check_all(v2(node(b"/a", perms=[(b"n", 0, 5)])))
    assert [x.rule for x in d] == ["node-owner-unknown-to-c"]
    assert d[0].severity is Severity.WARNING
    assert rules(v2(ring(1, 5), node(b"/a", perms=[(b"n", 0, 5)]))) == []


# --- quota and domains -------------------------------------------------------------


def test_quota_count_mismatch_and_duplicates() -> None:
    body = struct.pack("<HHII", 2, 0, 1, 2) + b"nodes\0"
    assert rules(v2(frame(LE, 6, body))) == ["quota-count-mismatch"]
    dup = body_global_quota(LE, [(b"nodes", 1), (b"nodes", 2)], [])
    assert rules(v2(frame(LE, 6, dup))) == ["quota-duplicate-name"]
    unknown = body_global_quota(LE, [(b"nodes", 1)], [(b"frobs", 2)])
    assert rules(v2(frame(LE, 6, unknown))) == ["unknown-quota-name"]


def test_transaction_marks_are_known_quota_names() -> None:
    """pyxenstored's own entries (docs/stream.md) are known; malformed ones are not."""
    marks = b"pyxenstored:transaction:1:5:0140"
    dom = frame(LE, 7, body_domain(LE, 0, 0, [(b"nodes", 5), (marks, 1)]))
    assert rules(v2(dom)) == []
    for bad in (b"pyxenstored:transaction:1:5:08", b"pyxenstored:transaction:1:x:0"):
        dom = frame(LE, 7, body_domain(LE, 0, 0, [(bad, 0)]))
        assert rules(v2(dom)) == ["unknown-quota-name"]


def test_domain_rules() -> None:
    dom = frame(LE, 7, body_domain(LE, 1, 0, [(b"nodes", 5)]))
    assert rules(v2(ring(1, 1), dom)) == []
    assert rules(v2(ring(1, 1), dom, dom)) == ["domain-duplicate"]
    assert rules(v2(dom)) == ["domain-unknown-to-c"]
    feat = frame(LE, 7, body_domain(LE, 1, 6, []))
    assert rules(v1(ring(1, 1), feat)) == ["features-in-v1"]
    assert rules(v2(ring(1, 1), feat)) == []


def test_many_errors_are_reported_not_just_the_first() -> None:
    data = v2(node(b"/a/b"), node(b"/c//d"), sock(0), node(b"/e", perms=[(b"q", 0, 0)]))
    assert rules(data) == ["node-parent-missing", "bad-path", "conn-id-zero", "bad-perm-letter"]


def test_every_rule_has_severity_and_text() -> None:
    for name, (sev, text) in RULES.items():
        assert name == name.lower() and " " not in name
        assert isinstance(sev, Severity) and text


# --- bounded-memory tree tracking -------------------------------------------------


def test_path_tracker_switches_to_bloom_and_keeps_certain_answers() -> None:
    t = PathTracker(exact_limit=10)
    for i in range(50):
        assert t.add(b"/n%d" % i) == (True, False)
    assert t.exact is None and t.bloom is not None
    # in tree order: still exact
    assert t.add(b"/n49/x") == (True, False)
    assert t.add(b"/n49/x") == (True, True)
    # out of tree order, parent never seen: certain
    assert t.add(b"/zz/y")[0] is False
    # out of tree order duplicate: only "maybe"
    assert t.add(b"/m") == (True, False)
    assert t.add(b"/n49/x") == (True, None)


# --- the node rules against a plain reference model ---------------------------------

_components = st.sampled_from(["a", "b", "c"])
_paths = st.lists(_components, min_size=1, max_size=3).map(lambda c: "/" + "/".join(c))
_nodes = st.tuples(_paths, st.integers(1, 2), st.sampled_from(list("nrwbx")))


@settings(max_examples=150, deadline=None)
@given(nodes=st.lists(_nodes, max_size=30), exact_limit=st.sampled_from([0, 3, 200_000]))
def test_node_rules_match_a_reference_model(
    nodes: list[tuple[str, int, str]], exact_limit: int
) -> None:
    records = []
    expected: list[str] = []
    seen: set[str] = set()
    for path, nperm, letter in nodes:
        perms = [(letter.encode(), 0, 0)] + [(b"r", 0, 0)] * (nperm - 1)
        records.append(node(path.encode(), b"v", perms))
        if letter == "x":
            expected.append("bad-perm-letter")
        parent = path.rsplit("/", 1)[0] or "/"
        if parent != "/" and parent not in seen:
            expected.append("node-parent-missing")
        if path in seen:
            # with the Bloom filter an out-of-order duplicate is only "maybe"
            expected.append("node-duplicate")
        seen.add(path)
    got = [d.rule for d in check_stream(v2(*records), exact_limit=exact_limit)]
    got = ["node-duplicate" if r == "node-maybe-duplicate" else r for r in got]
    assert got == expected


# --- checker and reader agree ----------------------------------------------------------


def _synth_bytes() -> bytes:
    buf = io.BytesIO()
    write_synth(buf, SynthConfig(domains=1, seed=11))
    return buf.getvalue()


_VALID = _synth_bytes()


@settings(max_examples=300, deadline=None)
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(_VALID) - 1), st.integers(1, 255)), min_size=1, max_size=3
    )
)
def test_a_stream_without_errors_is_readable(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID)
    for pos, xor in flips:
        data[pos] ^= xor
    diags, summary = check_all(bytes(data))
    if summary.errors == 0:
        read_records(bytes(data))  # must not raise StreamError
