"""Success and error replies of the node operations (xenstore.txt, C's ``core.c``)."""

from __future__ import annotations

import pytest

from pyxenstored.store import Store, StoreConfig
from pyxenstored.wire import MsgType as M

from .conftest import Client, ClientFactory, assert_consistent


def test_initial_tree(dom0: Client) -> None:
    assert dom0.ls("/") == ["tool"]
    assert dom0.ls("/tool") == ["xenstored"]
    assert dom0.ls("/tool/xenstored") == []
    assert dom0.get_perms("/") == ["n0"]
    assert dom0.get_perms("@releaseDomain") == ["n0", "r32757"]
    assert dom0.get_perms("@introduceDomain") == ["n0"]
    assert dom0.store.domains[0].usage[0] == 5  # nodes charged to dom0


def test_initial_tree_other_priv_domid() -> None:
    store = Store(StoreConfig(priv_domid=7, store_domid=7))
    store.connect(1, 0, is_socket=True)
    r = store.handle(1, M.GET_PERMS, 0, b"/tool\0")
    assert r.payload == b"n7\0"


# --- dispatch (core.c:process_message) -----------------------------------------------


@pytest.mark.parametrize("msg_type", [15, 16, 20, 27, 100, 0xFFFF])
def test_unknown_or_reply_only_types_are_enosys(dom0: Client, msg_type: int) -> None:
    r = dom0.store.handle(dom0.conn_id, msg_type, 0, b"x\0")
    assert (r.reply_type, r.payload) == (M.ERROR, b"ENOSYS\0")


@pytest.mark.parametrize(
    "msg_type",
    [
        M.CONTROL,
        M.INTRODUCE,
        M.RELEASE,
        M.IS_DOMAIN_INTRODUCED,
        M.RESUME,
        M.SET_TARGET,
        M.SET_FEATURE,
        M.GET_QUOTA,
        M.SET_QUOTA,
    ],
)
def test_privileged_types_refused_to_guests(connect: ClientFactory, msg_type: M) -> None:
    guest = connect(domid=5)
    assert guest.err(msg_type, b"5\0") == "EACCES"


def test_unknown_tx_id_is_enoent_except_watch(dom0: Client) -> None:
    assert dom0.err(M.READ, b"/\0", tx=9) == "ENOENT"
    assert dom0.err(M.GET_DOMAIN_PATH, b"1\0", tx=9) == "ENOENT"
    assert dom0.ok(M.WATCH, b"/\0t\0", tx=9) == b"OK\0"
    assert dom0.ok(M.UNWATCH, b"/\0t\0", tx=9) == b"OK\0"


def test_unknown_connection_gets_an_error(store: Store) -> None:
    r = store.handle(99, M.READ, 0, b"/\0")
    assert r.reply_type == M.ERROR


# --- paths (core.c:canonicalize) -------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"/a/\0",
        b"/a//b\0",
        b"\0",
        b"/a b\0",
        b"/a.b\0",
        b"@foo\0",
        b"/a\xff\0",
        b"/a",
        b"/a\0b\0",
        b"",
    ],
)
def test_bad_paths_and_args_are_einval(dom0: Client, payload: bytes) -> None:
    assert dom0.err(M.READ, payload) == "EINVAL"


def test_relative_paths_on_sockets_resolve_under_store_domain(dom0: Client) -> None:
    dom0.write("/local/domain/0/x", b"v")
    assert dom0.read("x") == b"v"


def test_relative_paths_of_guests(dom0: Client, connect: ClientFactory) -> None:
    dom0.mkdir("/local/domain/5")
    dom0.set_perms("/local/domain/5", "n5")
    guest = connect(domid=5)
    guest.write("data/x", b"1")
    assert dom0.read("/local/domain/5/data/x") == b"1"


def test_path_max_only_for_unprivileged_domains(dom0: Client, connect: ClientFactory) -> None:
    dom0.mkdir("/local/domain/5")
    dom0.set_perms("/local/domain/5", "n5")
    guest = connect(domid=5)
    # "< path-max" below /local/domain/5/: 2047 is the longest accepted.
    # (Several components: one 2047-byte name would break node-size instead.)
    ok_name = "a" * 1000 + "/" + "b" * 1046
    guest.write(ok_name, b"")
    assert guest.err(M.WRITE, ok_name.encode() + b"c\0") == "EINVAL"
    assert guest.err(M.READ, b"/" + b"b" * 2047 + b"\0") == "EINVAL"
    # Privileged sockets are not length checked at all.
    dom0.write("/" + "c" * 3500, b"")


# --- READ / WRITE / MKDIR ------------------------------------------------------------


def test_write_creates_ancestors_and_read_returns_raw_value(dom0: Client) -> None:
    dom0.write("/a/b/c", b"v\0w")  # values may hold NULs
    assert dom0.read("/a/b/c") == b"v\0w"
    assert dom0.read("/a/b") == b""
    assert dom0.ls("/a") == ["b"]
    dom0.write("/a/b/c", b"")
    assert dom0.read("/a/b/c") == b""


def test_write_without_nul_is_einval(dom0: Client) -> None:
    assert dom0.err(M.WRITE, b"/a") == "EINVAL"


def test_read_missing_is_enoent(dom0: Client) -> None:
    assert dom0.err(M.READ, b"/nothing\0") == "ENOENT"
    assert dom0.err(M.READ, b"/no/thing\0") == "ENOENT"


def test_mkdir_keeps_existing_value(dom0: Client) -> None:
    dom0.write("/a", b"keep")
    dom0.mkdir("/a")
    assert dom0.read("/a") == b"keep"
    dom0.mkdir("/x/y/z")
    assert dom0.ls("/x/y") == ["z"]


def test_children_listed_in_creation_order(dom0: Client) -> None:
    for name in ("zeta", "alpha", "mid"):
        dom0.write("/d/" + name)
    assert dom0.ls("/d") == ["zeta", "alpha", "mid"]
    dom0.rm("/d/alpha")
    dom0.write("/d/alpha")
    assert dom0.ls("/d") == ["zeta", "mid", "alpha"]


def test_directory_too_big_is_e2big(dom0: Client) -> None:
    for i in range(300):
        dom0.write(f"/big/child-number-{i:04d}")
    assert dom0.err(M.DIRECTORY, b"/big\0") == "E2BIG"


# --- DIRECTORY_PART (core.c:send_directory_part) ----------------------------------------


def test_directory_part_small_list(dom0: Client) -> None:
    dom0.write("/d/a")
    dom0.write("/d/bb")
    r = dom0.ok(M.DIRECTORY_PART, b"/d\x000\0")
    gen, rest = r.split(b"\0", 1)
    assert gen.isdigit()
    assert rest == b"a\0bb\0\0"
    # Offsets are bytes into the list; the slice may start mid-name.
    assert dom0.ok(M.DIRECTORY_PART, b"/d\x002\0") == gen + b"\0bb\0\0"
    assert dom0.ok(M.DIRECTORY_PART, b"/d\x005\0") == gen + b"\0\0"
    assert dom0.ok(M.DIRECTORY_PART, b"/d\x0099\0") == gen + b"\0\0"
    assert dom0.ok(M.DIRECTORY_PART, b"/d\x00-1\0") == gen + b"\0\0"  # unsigned offset


def test_directory_part_generation_changes(dom0: Client) -> None:
    dom0.write("/d/a")
    g1 = dom0.ok(M.DIRECTORY_PART, b"/d\x000\0").split(b"\0")[0]
    dom0.write("/d/b")
    g2 = dom0.ok(M.DIRECTORY_PART, b"/d\x000\0").split(b"\0")[0]
    assert g1 != g2


def test_directory_part_pages_through_a_big_list(dom0: Client) -> None:
    names = [f"child-number-{i:04d}" for i in range(400)]
    for name in names:
        dom0.write("/big/" + name)
    collected = b""
    offset = 0
    while True:
        r = dom0.ok(M.DIRECTORY_PART, b"/big\0" + str(offset).encode() + b"\0")
        assert len(r) <= 4096
        gen, chunk = r.split(b"\0", 1)
        if chunk.endswith(b"\0\0") or chunk == b"\0":
            collected += chunk[:-1]
            break
        collected += chunk
        offset += len(chunk)
    assert collected.split(b"\0")[:-1] == [n.encode() for n in names]


@pytest.mark.parametrize("payload", [b"/d\0", b"/d\x000\x00x\0", b"/d\x000"])
def test_directory_part_needs_exactly_two_strings(dom0: Client, payload: bytes) -> None:
    dom0.write("/d/a")
    assert dom0.err(M.DIRECTORY_PART, payload) == "EINVAL"


# --- RM ---------------------------------------------------------------------------------


def test_rm_subtree_and_missing(dom0: Client) -> None:
    dom0.write("/a/b/c")
    dom0.rm("/a")
    assert dom0.err(M.READ, b"/a/b/c\0") == "ENOENT"
    assert dom0.ls("/") == ["tool"]
    dom0.rm("/a")  # missing, parent exists: OK
    assert dom0.err(M.RM, b"/a/b\0") == "ENOENT"  # parent missing too
    assert dom0.err(M.RM, b"/\0") == "EINVAL"
    assert_consistent(dom0.store)


# --- permissions (core.c:perm_for_conn, errno_from_parents) ------------------------------


def test_get_perms_and_set_perms_roundtrip(dom0: Client) -> None:
    dom0.write("/a")
    dom0.set_perms("/a", "n0", "r5", "w6", "b7")
    assert dom0.get_perms("/a") == ["n0", "r5", "w6", "b7"]
    # strtol base 0: hex and octal domids.
    dom0.set_perms("/a", "n0", "r0x10", "b017")
    assert dom0.get_perms("/a") == ["n0", "r16", "b15"]


@pytest.mark.parametrize("perms", [b"", b"x0\0", b"r\0", b"r5z\0", b"\0"])
def test_set_perms_bad_entries(dom0: Client, perms: bytes) -> None:
    dom0.write("/a")
    assert dom0.err(M.SET_PERMS, b"/a\0" + perms) == "EINVAL"


def test_set_perms_missing_node_is_enoent(dom0: Client) -> None:
    assert dom0.err(M.SET_PERMS, b"/nothing\0n0\0") == "ENOENT"


def test_set_perms_owner_of_missing_domain_is_enoent() -> None:
    store = Store(StoreConfig(existing_domids=frozenset({0, 5})))
    store.connect(1, 0, is_socket=True)
    store.handle(1, M.WRITE, 0, b"/a\0")
    assert store.handle(1, M.SET_PERMS, 0, b"/a\0n9\0").payload == b"ENOENT\0"
    # A stale non-owner entry is kept and listed.
    assert store.handle(1, M.SET_PERMS, 0, b"/a\0n5\0r9\0").payload == b"OK\0"
    assert store.handle(1, M.GET_PERMS, 0, b"/a\0").payload == b"n5\0r9\0"


def test_special_paths_only_for_perms_and_watches(dom0: Client) -> None:
    for t in (M.READ, M.WRITE, M.MKDIR, M.RM, M.DIRECTORY):
        assert dom0.err(t, b"@releaseDomain\0") == "EINVAL"
    dom0.set_perms("@introduceDomain", "n0", "r5")
    assert dom0.get_perms("@introduceDomain") == ["n0", "r5"]
    assert dom0.err(M.GET_PERMS, b"@other\0") == "ENOENT"


@pytest.fixture
def guest5(dom0: Client, connect: ClientFactory) -> Client:
    dom0.mkdir("/local/domain/5")
    dom0.set_perms("/local/domain/5", "n5")
    return connect(domid=5)


def test_guest_missing_vs_forbidden(dom0: Client, guest5: Client) -> None:
    # Nearest existing ancestor "/" gives no read: EACCES, not ENOENT.
    assert guest5.err(M.READ, b"/nothing\0") == "EACCES"
    assert guest5.err(M.READ, b"/local/domain/5/nothing\0") == "ENOENT"
    dom0.write("/secret", b"s")
    assert guest5.err(M.READ, b"/secret\0") == "EACCES"
    assert guest5.err(M.WRITE, b"/secret\0x") == "EACCES"
    assert guest5.err(M.RM, b"/secret\0") == "EACCES"
    assert guest5.err(M.RM, b"/x/y\0") == "EACCES"


def test_guest_rights_from_entries(dom0: Client, guest5: Client) -> None:
    dom0.write("/shared", b"v")
    dom0.set_perms("/shared", "n0", "r5")
    assert guest5.read("/shared") == b"v"
    assert guest5.err(M.WRITE, b"/shared\0x") == "EACCES"
    dom0.set_perms("/shared", "r0")  # default right for everyone
    assert guest5.read("/shared") == b"v"
    dom0.set_perms("/shared", "n0", "w5")
    guest5.write("/shared", b"x")
    assert guest5.err(M.READ, b"/shared\0") == "EACCES"
    assert guest5.err(M.GET_PERMS, b"/shared\0") == "EACCES"
    # Changing permissions needs ownership.
    assert guest5.err(M.SET_PERMS, b"/shared\0n0\0b5\0") == "EACCES"


def test_guest_creates_own_nodes(dom0: Client, guest5: Client) -> None:
    dom0.set_perms("/local/domain/5", "n0", "b5")
    guest5.write("/local/domain/5/mine/x", b"1")
    # Created by a guest: owner is the creator, other entries inherited.
    assert dom0.get_perms("/local/domain/5/mine/x") == ["n5", "b5"]
    # Created by dom0: inherited unchanged.
    dom0.write("/local/domain/5/theirs")
    assert dom0.get_perms("/local/domain/5/theirs") == ["n0", "b5"]


def test_owner_change_needs_privilege(dom0: Client, guest5: Client) -> None:
    guest5.write("data")
    assert guest5.err(M.SET_PERMS, b"data\0n6\0") == "EPERM"
    guest5.set_perms("data", "n5", "r6")
    assert guest5.get_perms("data") == ["n5", "r6"]
    dom0.set_perms("/local/domain/5/data", "n6")
    assert dom0.get_perms("/local/domain/5/data") == ["n6"]


def test_mkdir_on_existing_unwritable_node_is_eacces(dom0: Client, guest5: Client) -> None:
    dom0.write("/ro")
    dom0.set_perms("/ro", "n0", "r5")
    assert guest5.err(M.MKDIR, b"/ro\0") == "EACCES"


def test_domid_any_entry(dom0: Client, guest5: Client) -> None:
    dom0.write("/pub", b"p")
    dom0.set_perms("/pub", "n0", "r32757")
    assert guest5.read("/pub") == b"p"
    # @releaseDomain is readable by every domain (HEAD).
    assert guest5.get_perms("@releaseDomain") == ["n0", "r32757"]


def test_domid_any_written_without_feature_is_stale(dom0: Client, connect: ClientFactory) -> None:
    dom0.ok(M.SET_FEATURE, b"6\x006\0")  # everything but DOMID_ANY
    dom0.mkdir("/local/domain/6")
    dom0.set_perms("/local/domain/6", "n6")
    guest6 = connect(domid=6)
    guest7 = connect(domid=7)
    guest6.write("x", b"v")
    guest6.set_perms("x", "n6", "r32757")
    assert guest7.err(M.READ, b"/local/domain/6/x\0") == "EACCES"
    assert guest6.get_perms("x") == ["n6", "r32757"]


def test_set_target_grants_target_rights(dom0: Client, connect: ClientFactory) -> None:
    for d in (5, 6):
        dom0.ok(M.INTRODUCE, f"{d}\x001\x001\0".encode())
        dom0.mkdir(f"/local/domain/{d}")
        dom0.set_perms(f"/local/domain/{d}", f"n{d}")
    stub = connect(domid=6)
    assert stub.err(M.READ, b"/local/domain/5\0") == "EACCES"
    assert dom0.ok(M.SET_TARGET, b"6\x005\0") == b"OK\0"
    assert stub.read("/local/domain/5") == b""
    stub.set_perms("/local/domain/5", "n5", "r9")


def test_stale_entry_of_younger_domain_is_ignored(dom0: Client, connect: ClientFactory) -> None:
    # Permission entry for domain 9 written while 9 had a record; then 9 dies
    # and a new domain 9 appears: it must not inherit the old right.
    dom0.ok(M.INTRODUCE, b"9\x001\x001\0")
    dom0.write("/d", b"v")
    dom0.set_perms("/d", "n0", "r9")
    # Release drops the entry altogether (HEAD).
    dom0.ok(M.RELEASE, b"9\0")
    assert dom0.get_perms("/d") == ["n0"]
    assert_consistent(dom0.store)
