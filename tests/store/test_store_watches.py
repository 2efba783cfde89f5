"""Watches: registration, which changes fire, depth, special watches, filtering (watch.c)."""

from __future__ import annotations

import pytest

from pyxenstored.wire import MsgType as M

from .conftest import Client, ClientFactory, assert_consistent, events_of


def test_watch_fires_once_at_once(dom0: Client) -> None:
    r = dom0.watch("/a", "tok")
    assert r.payload == b"OK\0"
    assert events_of(r) == [(dom0.conn_id, b"/a", b"tok")]
    assert not r.events_before_reply  # the initial event follows the OK
    assert r.events[0].payload == b"/a\0tok\0"


def test_watch_errors(dom0: Client) -> None:
    dom0.watch("/a", "tok")
    assert dom0.err(M.WATCH, b"/a\0tok\0") == "EEXIST"
    assert dom0.err(M.WATCH, b"/a\0tok\x003\0") == "EEXIST"  # depth not compared
    assert dom0.err(M.WATCH, b"/a\0") == "EINVAL"
    assert dom0.err(M.WATCH, b"/a\0t\x001\x00x\0") == "EINVAL"
    assert dom0.err(M.WATCH, b"/a\0t2\x00-1\0") == "EINVAL"
    assert dom0.err(M.WATCH, b"/a/\0t3\0") == "EINVAL"
    assert dom0.err(M.UNWATCH, b"/a\0other\0") == "ENOENT"
    assert dom0.err(M.UNWATCH, b"/a\0") == "EINVAL"
    assert dom0.ok(M.UNWATCH, b"/a\0tok\0") == b"OK\0"


def test_depth_needs_the_feature(dom0: Client, connect: ClientFactory) -> None:
    dom0.ok(M.SET_FEATURE, b"5\x002\0")  # ERROR only
    guest = connect(domid=5)
    assert guest.err(M.WATCH, b"/a\0t\x001\0") == "EINVAL"
    assert guest.ok(M.WATCH, b"/a\0t\0") == b"OK\0"


def test_write_fires_subtree_watches_not_below(dom0: Client) -> None:
    dom0.watch("/", "root")
    dom0.watch("/a", "a")
    dom0.watch("/a/b/c", "below")
    dom0.watch("/ab", "sibling")
    r = dom0.req(M.WRITE, b"/a/b\0v")
    assert r.events_before_reply
    assert events_of(r) == [(1, b"/a/b", b"root"), (1, b"/a/b", b"a")]


@pytest.mark.parametrize(
    ("event", "watched", "depth", "fires"),
    [
        ("/a", "/a", 0, True),
        ("/a/b", "/a", 0, False),
        ("/a/b", "/a", 1, True),
        ("/a/b/c", "/a", 1, False),
        ("/a/b/c", "/a", 2, True),
        ("/x", "/", 0, False),
        ("/x", "/", 1, True),
        ("/x/y", "/", 1, False),
        ("/x/y", "/", 2, True),
    ],
)
def test_depth_table(dom0: Client, event: str, watched: str, depth: int, fires: bool) -> None:
    dom0.watch(watched, "t", depth)
    r = dom0.req(M.WRITE, event.encode() + b"\0")
    assert bool(r.events) == fires


def test_mkdir_fires_only_when_created(dom0: Client) -> None:
    dom0.watch("/m", "t")
    assert events_of(dom0.req(M.MKDIR, b"/m\0")) == [(1, b"/m", b"t")]
    assert not dom0.req(M.MKDIR, b"/m\0").events


def test_rm_events_post_order_and_exact(dom0: Client) -> None:
    dom0.write("/a/b/c")
    dom0.write("/a/b/d")
    dom0.write("/a/e")
    for path in ("/a/b/c", "/a/b/d", "/a/b", "/a/e", "/a/missing"):
        dom0.watch(path, path)
    dom0.watch("/", "root")
    r = dom0.req(M.RM, b"/a\0")
    got = [(p.decode(), t.decode()) for _, p, t in events_of(r)]
    # Children before parents, siblings in order; descendants exact only;
    # the removed node itself as a subtree event (the "/" watch sees it).
    assert got == [
        ("/a/b/c", "/a/b/c"),
        ("/a/b/d", "/a/b/d"),
        ("/a/b", "/a/b"),
        ("/a/e", "/a/e"),
        ("/a", "root"),
    ]


def test_relative_watch_reports_relative_paths(dom0: Client, connect: ClientFactory) -> None:
    dom0.mkdir("/local/domain/5")
    dom0.set_perms("/local/domain/5", "n5")
    guest = connect(domid=5)
    r = guest.watch("dev", "t")
    assert events_of(r) == [(guest.conn_id, b"dev", b"t")]
    r = guest.req(M.WRITE, b"dev/x\0")
    assert events_of(r) == [(guest.conn_id, b"dev/x", b"t")]
    # Same watch, absolute event from somebody else.
    r = dom0.req(M.WRITE, b"/local/domain/5/dev\0v")
    assert events_of(r) == [(guest.conn_id, b"dev", b"t")]
    # An absolute watch of the same place reports absolute paths.
    guest.watch("/local/domain/5/dev", "abs")
    r = dom0.req(M.WRITE, b"/local/domain/5/dev/y\0")
    assert [e.path for e in r.events] == [b"dev/y", b"/local/domain/5/dev/y"]


def test_events_filtered_by_read_permission(dom0: Client, connect: ClientFactory) -> None:
    guest = connect(domid=5)
    guest.watch("/", "all")
    dom0.write("/secret/x", b"s")
    r = dom0.req(M.WRITE, b"/secret/x\0t")
    assert not r.events  # neither node nor parent readable
    dom0.set_perms("/secret", "n0", "r5")
    r = dom0.req(M.WRITE, b"/secret/x\0u")  # /secret/x itself has no read: parent has
    assert events_of(r) == [(guest.conn_id, b"/secret/x", b"all")]


def test_set_perms_event_uses_old_permissions(dom0: Client, connect: ClientFactory) -> None:
    guest = connect(domid=5)
    dom0.write("/p")
    dom0.set_perms("/p", "n0", "r5")
    guest.watch("/p", "t")
    r = dom0.req(M.SET_PERMS, b"/p\0n0\0")  # the guest loses read: still told
    assert events_of(r) == [(guest.conn_id, b"/p", b"t")]
    r = dom0.req(M.SET_PERMS, b"/p\0n0\0")
    assert not r.events


def test_privileged_watchers_see_everything(dom0: Client, connect: ClientFactory) -> None:
    other = connect()
    other.watch("/", "t")
    guest = connect(domid=5)
    dom0.write("/local/domain/5", b"")
    dom0.set_perms("/local/domain/5", "n5")
    r = guest.req(M.WRITE, b"x\0")
    assert events_of(r) == [(other.conn_id, b"/local/domain/5/x", b"t")]


def test_delivery_order_by_connection_then_registration(
    dom0: Client, connect: ClientFactory
) -> None:
    second = connect()
    second.watch("/a", "s1")
    dom0.watch("/a/b", "d1")
    second.watch("/", "s2")
    dom0.watch("/", "d2")
    r = dom0.req(M.WRITE, b"/a/b\0")
    assert [(c, t) for c, _, t in events_of(r)] == [(1, b"d1"), (1, b"d2"), (2, b"s1"), (2, b"s2")]


def test_unwatch_reset_and_disconnect_drop_watches(dom0: Client, connect: ClientFactory) -> None:
    other = connect()
    dom0.watch("/a", "t")
    other.watch("/a", "t")
    dom0.ok(M.UNWATCH, b"/a\0t\0")
    assert [e.conn_id for e in dom0.req(M.WRITE, b"/a\0").events] == [other.conn_id]
    other.ok(M.RESET_WATCHES, b"")
    assert not dom0.req(M.WRITE, b"/a\0").events
    dom0.watch("/a", "t")
    dom0.store.disconnect(dom0.conn_id)
    assert not other.req(M.WRITE, b"/a\0").events
    assert dom0.store.watches.count == 0
    assert_consistent(dom0.store)


def test_watch_on_special_path_other_than_known_only_initial(dom0: Client) -> None:
    r = dom0.watch("@anything", "t")
    assert events_of(r) == [(1, b"@anything", b"t")]
    assert not dom0.req(M.INTRODUCE, b"5\x001\x001\0").events


# --- special watches (domain.c:fire_special_watches) ---------------------------------


def _special_events(dom0: Client, payload_type: M, payload: bytes) -> list[tuple[bytes, bytes]]:
    r = dom0.req(payload_type, payload)
    assert r.reply_type == payload_type, r.payload
    return [(e.path, e.token) for e in r.events]


def test_introduce_fires_both_passes(dom0: Client) -> None:
    dom0.watch("@introduceDomain", "plain")
    dom0.watch("@introduceDomain", "d0", 0)
    dom0.watch("@introduceDomain", "d1", 1)
    dom0.watch("@introduceDomain", "d2", 2)
    got = _special_events(dom0, M.INTRODUCE, b"5\x001\x001\0")
    assert got == [
        (b"@introduceDomain", b"plain"),
        (b"@introduceDomain/5", b"d1"),
        (b"@introduceDomain/5", b"d2"),
    ]
    # A second INTRODUCE of the same domain fires nothing.
    assert _special_events(dom0, M.INTRODUCE, b"5\x001\x001\0") == []


def test_release_fires_per_domain_watches(dom0: Client) -> None:
    dom0.ok(M.INTRODUCE, b"5\x001\x001\0")
    dom0.ok(M.INTRODUCE, b"6\x001\x001\0")
    dom0.watch("@releaseDomain", "plain")
    dom0.watch("@releaseDomain/6", "six")
    dom0.watch("@releaseDomain/5", "five", 0)
    assert _special_events(dom0, M.RELEASE, b"5\0") == [
        (b"@releaseDomain", b"plain"),
        (b"@releaseDomain/5", b"five"),
    ]
    assert _special_events(dom0, M.RELEASE, b"6\0") == [
        (b"@releaseDomain", b"plain"),
        (b"@releaseDomain/6", b"six"),
    ]


def test_special_events_filtered_by_permission(dom0: Client, connect: ClientFactory) -> None:
    guest = connect(domid=7)
    guest.watch("@introduceDomain", "i")
    guest.watch("@releaseDomain", "r")
    got = dom0.req(M.INTRODUCE, b"5\x001\x001\0")
    assert not got.events  # @introduceDomain is privileged-only by default
    got = dom0.req(M.RELEASE, b"5\0")
    assert events_of(got) == [(guest.conn_id, b"@releaseDomain", b"r")]
    dom0.set_perms("@introduceDomain", "n0", "r7")
    got = dom0.req(M.INTRODUCE, b"5\x001\x001\0")
    assert events_of(got) == [(guest.conn_id, b"@introduceDomain", b"i")]


def test_privileged_domain_introduce_fires_nothing(dom0: Client) -> None:
    dom0.watch("@introduceDomain", "t")
    assert not dom0.req(M.INTRODUCE, b"0\x001\x001\0").events


def test_over_long_events_are_dropped(dom0: Client) -> None:
    token = "t" * 3000
    dom0.watch("/", token)
    path = "/" + "p" * 1500
    assert not dom0.req(M.WRITE, path.encode() + b"\0").events
