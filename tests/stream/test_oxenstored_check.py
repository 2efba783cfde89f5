"""The oxenstored dump checker: one hand-built bad dump per rule, real dumps clean."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxenstored.stream.check import Severity
from pyxenstored.stream.oxenstored import (
    HEADER,
    RULES,
    OxenstoredQuota,
    analyse_dump,
    check_dump,
    parse_dump,
)
from pyxenstored.stream.oxenstored_check import node_components, watch_key

DATA = Path(__file__).resolve().parent.parent / "data" / "oxenstored"


def h(text: str) -> str:
    return text.encode().hex()


def dump(*lines: str, newline: bool = True) -> bytes:
    return "\n".join([HEADER.decode(), *lines]).encode() + (b"\n" if newline else b"")


HEAD = ("global,3", "evtchn-dev,5,1", "dom,0,0,1,2")
ROOT = f"store,{h('/')},{h('n0')},"
A = f"store,{h('/a')},{h('n0')},"
GUEST = "dom,1,1001,11,3"


def ok(*middle: str) -> bytes:
    """A sound dump with ``middle`` between the connections and the tree."""
    return dump(*HEAD, *middle, ROOT)


# rule -> (a dump breaking it, line number of the finding, quota or None)
CASES: dict[str, tuple[bytes, int, OxenstoredQuota | None]] = {
    "bad-header": (b"$xenstored-dump-format2\n", 1, None),
    "truncated": (dump(*HEAD, ROOT, newline=False), 5, None),
    "no-nodes": (dump(*HEAD), 4, None),
    "no-root": (dump(*HEAD, A), 5, None),
    "no-global": (dump(*HEAD[1:], ROOT), 4, None),
    "unknown-line": (ok("frobnicate,1"), 5, None),
    "bad-field-count": (ok("socket,7,8"), 5, None),
    "bad-number": (ok("socket,0x7"), 5, None),
    "bad-hex": (ok(f"store,{h('/a').upper()},{h('n0')},"), 5, None),
    "bad-perms": (ok(f"store,{h('/a')},,"), 5, None),
    "extra-fields": (dump("global,3,4", *HEAD[1:], ROOT), 2, None),
    "duplicate-global": (ok("global,6"), 5, None),
    "duplicate-evtchn-dev": (ok("evtchn-dev,6,7"), 5, None),
    "evtchn-dev-late": (dump("global,3", "dom,0,0,1,2", "evtchn-dev,5,1", ROOT), 4, None),
    "bad-fd": (ok("socket,0"), 5, None),
    "fd-clash": (ok("socket,5"), 5, None),
    "no-evtchn-dev": (dump("global,3", "dom,0,0,1,2", ROOT), 3, None),
    "bad-domid": (ok("dom,-1,0,1,9"), 5, None),
    "reserved-domid": (ok("dom,32753,100,1,9"), 5, None),
    "duplicate-dom": (ok("dom,0,0,1,9"), 5, None),
    "dom-no-ring": (ok("dom,1,0,11,3"), 5, None),
    "dom-no-local-port": (ok("dom,1,1001,11"), 5, None),
    "bad-port": (ok("dom,1,1001,0,3"), 5, None),
    "duplicate-port": (ok("dom,1,1001,11,2"), 5, None),
    "duplicate-socket": (ok("socket,7", "socket,7"), 6, None),
    "watch-unknown-connection": (ok(f"watch,4,{h('/a')},{h('t')}"), 5, None),
    "bad-watch-path": (ok(f"watch,0,{h('/a/')},{h('t')}"), 5, None),
    # a relative path and its absolute form are one watch (connection.ml:get_watch_path)
    "duplicate-watch": (
        ok(GUEST, f"watch,1,{h('data')},{h('t')}", f"watch,1,{h('/local/domain/1/data')},{h('t')}"),
        7,
        None,
    ),
    # connection.ml:add_watch refuses when a guest already has more than maxwatch
    "watch-over-quota": (
        ok(GUEST, *(f"watch,1,{h('/w')},{h(str(i))}" for i in range(3))),
        8,
        OxenstoredQuota(maxwatch=1),
    ),
    "bad-path": (dump(*HEAD, ROOT, f"store,{h('/a/')},{h('n0')},"), 6, None),
    "noncanonical-path": (dump(*HEAD, ROOT, f"store,{h('@x')},{h('n0')},"), 6, None),
    "duplicate-node": (dump(*HEAD, ROOT, A, A), 7, None),
    "node-parent-missing": (dump(*HEAD, ROOT, f"store,{h('/a/b')},{h('n0')},"), 6, None),
    "node-too-big": (
        dump(*HEAD, ROOT, f"store,{h('/a')},{h('n0')},{h('abc')}"),
        6,
        OxenstoredQuota(maxsize=2),
    ),
}


def test_every_rule_has_a_case() -> None:
    assert set(CASES) == set(RULES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule(rule: str) -> None:
    data, line, quota = CASES[rule]
    found = check_dump(data, quota)
    hits = [d for d in found if d.rule == rule]
    assert hits, f"{rule} not reported; got {[str(d) for d in found]}"
    assert hits[0].line == line
    assert hits[0].severity is RULES[rule][0]
    assert rule in str(hits[0]) and f"line {line}" in str(hits[0])


def test_a_sound_dump_has_no_findings() -> None:
    sound = ok(GUEST, f"watch,1,{h('data')},{h('t')}", "socket,7", f"watch,-7,{h('@x')},{h('t')}")
    assert check_dump(sound) == []


@pytest.mark.parametrize("name", ["basic.db", "minimal.db"])
def test_real_dumps_are_clean(name: str) -> None:
    data = (DATA / name).read_bytes()
    assert check_dump(data) == []
    # the daemon that wrote them ran with Xen's shipped quota settings
    assert check_dump(data, OxenstoredQuota(path_max=1024)) == []


def test_quota_checks_need_quota_activate() -> None:
    data, _, _ = CASES["node-too-big"]
    assert not [d for d in check_dump(data, OxenstoredQuota(maxsize=2, activate=False))]


def test_dropped_lines_follow_oxenstored_restore() -> None:
    data = dump(
        *HEAD,
        ROOT,
        f"store,{h('/a/b')},{h('n0')},",  # 6: parent missing
        f"store,{h('/a/b/c')},{h('n0')},",  # 7: its parent was skipped as well
        A,  # 8: loaded
        f"store,{h('/a/b')},{h('n0')},",  # 9: now its parent exists
        A,  # 10: overwrites line 8
        f"watch,9,{h('/a')},{h('t')}",  # 11: no such connection
        "mystery",  # 12: unknown line
    )
    analysis = analyse_dump(parse_dump(data))
    assert sorted(analysis.dropped) == [6, 7, 11, 12]
    assert analysis.duplicates == {10: 8}
    assert [d.rule for d in analysis.errors] == [
        "node-parent-missing",
        "node-parent-missing",
        "duplicate-node",
        "watch-unknown-connection",
    ]
    assert [d.severity for d in analysis.diagnostics][-1] is Severity.WARNING


def test_truncated_real_dump() -> None:
    data = (DATA / "basic.db").read_bytes()
    cut = data[: len(data) // 2]
    rules = {d.rule for d in check_dump(cut)}
    assert "truncated" in rules


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        (b"/", ()),
        (b"/a/b-c_d@e", (b"a", b"b-c_d@e")),
        (b"@introduceDomain", (b"@introduceDomain",)),
        (b"@a/b", (b"@a/b",)),  # store.ml: an @ path is one name
        (b"", None),
        (b"a", None),
        (b"/a//b", None),
        (b"/a/", None),
        (b"/a b", None),
        (b"/\xc3\xa9", None),
    ],
)
def test_node_components(path: bytes, parts: tuple[bytes, ...] | None) -> None:
    assert node_components(path) == parts


def test_watch_key_resolves_relative_paths() -> None:
    assert watch_key(3, b"data") == b"/local/domain/3/data"
    assert watch_key(-8, b"data") == b"/local/domain/0/data"  # sockets are dom0
    assert watch_key(3, b"@releaseDomain") == b"@releaseDomain"
    assert watch_key(3, b"") is None
    assert watch_key(3, b"a//b") is None


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_checker_never_raises(data: bytes) -> None:
    for candidate in (data, HEADER + b"\n" + data):
        for d in check_dump(candidate, OxenstoredQuota(maxsize=4, maxwatch=1)):
            assert d.rule in RULES


_piece = st.sampled_from(
    [
        *HEAD,
        ROOT,
        A,
        GUEST,
        "socket,7",
        f"watch,1,{h('x')},{h('t')}",
        f"watch,-7,{h('/a')},{h('t')}",
    ]
    + [f"store,{h('/a/b')},{h('n1')},{h('v')}", "dom,1,0,11", "evtchn-dev,6,2", "global,-1", ""]
)


@settings(max_examples=300)
@given(st.lists(_piece, max_size=12), st.booleans())
def test_checker_on_shuffled_plausible_lines(lines: list[str], newline: bool) -> None:
    found = check_dump(dump(*lines, newline=newline))
    assert all(d.rule in RULES for d in found)
    assert [d.line for d in found] == sorted(d.line for d in found)
