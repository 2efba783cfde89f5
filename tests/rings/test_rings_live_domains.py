"""Domains nobody announced: libxl's order of building a guest, on rings, without a VIRQ kick.

On Xen a domain's creation raises no ``VIRQ_DOM_EXC``: the toolstack creates
the domain, makes its home and gives it rights (``MKDIR``, ``SET_PERMS``),
then ``INTRODUCE``s it.  The daemon must ask the hypervisor at each of
those requests whether the domain exists (``domain.c:domain_alloc_permrefs``,
``find_or_alloc_existing_domain``), and rights given before the introduction
must hold after it (``domain.c:chk_domain_generation``: the write that sets
them takes a new generation first).  A domain that dies and a new one that
reuses its domid must not inherit the old rights.

Domain 6 exists from the start for every daemon (the C reference's shim
fixes its domains at start): the same script runs against the C reference
and pyxenstored on both its backends, and must get the same replies.  A
domain that appears later is played on both pyxenstored backends: on the
simulated one it is added to ``DIR/domains`` with no kick; the shim's list
is fixed, so on the Xen backend it is listed from the start and only
introduced late -- rights before INTRODUCE all the same, with the
backend's own answer to "does it exist" at each request.  Domains that die
or are replaced can only be played on the simulated backend (its
``DIR/domains`` file is read when asked).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.client.daemons import EXISTING_DOMAINS, run_daemon
from tests.launcher import Launched
from tests.rings.conftest import (
    PY_DAEMONS,
    SHIM_FIXED_DOMAINS,
    Guest,
    kick,
    make_guest,
    sim_only,
    wait_for,
)

from pyxenstored.client import Client, Perm, WatchEvent, create_ring_page
from pyxenstored.server.hypervisor import VIRQ_DOM_EXC_PORT
from pyxenstored.wire import MsgType

M = MsgType
HOMES = {"owner": ("n{d}", "r0"), "dom0-owned": ("n0", "r{d}")}

Transcript = list[tuple[str, bytes]]


def call(client: Client, type_: int, payload: bytes) -> tuple[str, bytes]:
    """(reply type name, payload) of one request, errors included."""
    rt, data = client.collect_message(client.submit(type_, payload))
    return MsgType(rt).name, data


def gcall(guest: Guest, type_: int, payload: bytes) -> tuple[str, bytes]:
    rt, data = guest.call(type_, payload)
    return MsgType(rt).name, data


def libxl_build(dom0: Client, ring_dir: str, domid: int, port: int, home: str) -> Transcript:
    """What libxl does for a new domain, as dom0, before the guest runs."""
    create_ring_page(ring_dir, domid)
    d = domid
    path = f"/local/domain/{d}".encode()
    perms = b"".join(p.format(d=d).encode() + b"\0" for p in HOMES[home])
    steps = [
        (M.MKDIR, path + b"\0"),
        (M.SET_PERMS, path + b"\0" + perms),
        (M.MKDIR, path + b"/data\0"),
        (M.SET_PERMS, path + b"/data\0n%d\0" % d),
        (M.WRITE, b"/vm/pre%d\0made before" % d),
        (M.SET_PERMS, b"/vm/pre%d\0n0\0r%d\0" % (d, d)),
        (M.INTRODUCE, b"%d\x001\x00%d\0" % (d, port)),
    ]
    return [call(dom0, t, p) for t, p in steps]


def guest_session(guest: Guest, domid: int) -> Transcript:
    """The guest's first requests: its home, the node made for it, its rights."""
    d = domid
    steps = [
        (M.READ, b"/vm/pre%d\0" % d),
        (M.READ, b"/local/domain/%d\0" % d),
        (M.WRITE, b"data/x\0from the guest"),
        (M.READ, b"/local/domain/%d/data/x\0" % d),
        (M.WRITE, b"y\0in the home"),
        (M.DIRECTORY, b"/local/domain/%d\0" % d),
        (M.GET_PERMS, b"data\0"),
        (M.WRITE, b"/vm/pre%d\0overwritten" % d),
    ]
    return [gcall(guest, t, p) for t, p in steps]


ALL_OK = [("MKDIR", b"OK\0"), ("SET_PERMS", b"OK\0")] * 2 + [
    ("WRITE", b"OK\0"),
    ("SET_PERMS", b"OK\0"),
    ("INTRODUCE", b"OK\0"),
]


def expected_session(domid: int, home: str) -> Transcript:
    owner = home == "owner"
    return [
        ("READ", b"made before"),
        ("READ", b""),
        ("WRITE", b"OK\0"),
        ("READ", b"from the guest"),
        ("WRITE", b"OK\0") if owner else ("ERROR", b"EACCES\0"),
        ("DIRECTORY", b"data\0y\0" if owner else b"data\0"),
        ("GET_PERMS", b"n%d\0" % domid),
        ("ERROR", b"EACCES\0"),
    ]


@pytest.mark.parametrize("home", sorted(HOMES))
def test_libxl_order_same_replies_as_c(
    ring_daemon: Launched, dom0: Client, driver: str, home: str
) -> None:
    """Domain 6 exists but was never introduced; both daemons answer alike."""
    assert ring_daemon.ring_dir is not None
    assert libxl_build(dom0, ring_daemon.ring_dir, 6, 8, home) == ALL_OK
    guest = make_guest(driver, ring_daemon.ring_dir, 6, 8)
    try:
        assert guest_session(guest, 6) == expected_session(6, home)
    finally:
        guest.close()


# --- pyxenstored only: domains that appear, die and are replaced ----------------------

LATE = 9  # the domain created while the daemon runs


@pytest.fixture(params=PY_DAEMONS)
def late_daemon(request: pytest.FixtureRequest) -> Iterator[Launched]:
    """pyxenstored; on the Xen backend domain 9 is in the shim's fixed list from the start."""
    domains = EXISTING_DOMAINS + ((LATE,) if request.param == "pyxenstored-xen" else ())
    yield from run_daemon(request.param, ring=True, domains=domains)


@pytest.fixture
def pdom0(py_daemon: Launched) -> Iterator[Client]:
    with py_daemon.connect() as client:
        yield client


def domains_file(daemon: Launched) -> Path:
    assert daemon.ring_dir is not None
    return Path(daemon.ring_dir) / "domains"


def set_domains(daemon: Launched, text: str) -> None:
    """Change which domains exist (atomically, as the daemon may read it any time)."""
    path = domains_file(daemon)
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.mark.parametrize("home", sorted(HOMES))
def test_libxl_order_for_a_domain_created_without_a_kick(
    late_daemon: Launched, driver: str, home: str
) -> None:
    assert late_daemon.ring_dir is not None
    simulated = late_daemon.kind == "pyxenstored"
    with late_daemon.connect() as dom0:
        dom0.mkdir("/local")
        assert call(dom0, M.SET_PERMS, b"/local\0n0\0r9\0") == ("SET_PERMS", b"OK\0")
        if simulated:
            set_domains(late_daemon, "0\n5\n6\n9 0x900\n")  # domain 9 is created: no VIRQ_DOM_EXC
        assert libxl_build(dom0, late_daemon.ring_dir, LATE, 19, home) == ALL_OK
        guest = make_guest(driver, late_daemon.ring_dir, LATE, 19)
        try:
            assert guest_session(guest, LATE) == expected_session(LATE, home)
            # An r9 given to /local before domain 9 existed stays void
            # (domain.c:domain_alloc_permrefs); under the shim it existed, the
            # backend said so, and it holds.
            expected = ("ERROR", b"EACCES\0") if simulated else ("DIRECTORY", b"domain\0")
            assert gcall(guest, M.DIRECTORY, b"/local\0") == expected
        finally:
            guest.close()


@sim_only(SHIM_FIXED_DOMAINS)
def test_a_reused_domid_nobody_announced_inherits_nothing(
    py_daemon: Launched, pdom0: Client, driver: str
) -> None:
    """Domain 9 dies and a new domain 9 appears, and no VIRQ kick tells the daemon."""
    assert py_daemon.ring_dir is not None
    set_domains(py_daemon, "0\n5\n6\n9 100\n")
    assert libxl_build(pdom0, py_daemon.ring_dir, 9, 19, "owner") == ALL_OK
    pdom0.write("/vm/old", b"secret")
    pdom0.set_perms("/vm/old", [Perm("n", 0), Perm("r", 9)])
    old = make_guest(driver, py_daemon.ring_dir, 9, 19)
    assert gcall(old, M.READ, b"/vm/old\0") == ("READ", b"secret")
    old.close()
    pdom0.watch("@releaseDomain", "rel")
    assert pdom0.next_event(10) == WatchEvent("@releaseDomain", "rel")
    set_domains(py_daemon, "0\n5\n6\n9 101\n")
    # The new domain's toolstack introduces it (home left over by the old one).
    pdom0.introduce(9, 1, 29)
    assert pdom0.next_event(10) == WatchEvent("@releaseDomain", "rel")  # the old 9 is gone
    assert not pdom0.exists("/local/domain/9")  # it owned its home
    assert pdom0.get_perms("/vm/old") == [Perm("n", 0)]
    new = make_guest(driver, py_daemon.ring_dir, 9, 29)
    try:
        assert gcall(new, M.READ, b"/vm/old\0") == ("ERROR", b"EACCES\0")
    finally:
        new.close()


@sim_only(SHIM_FIXED_DOMAINS)
def test_a_domain_that_died_before_introduction_leaves_nothing(
    py_daemon: Launched, pdom0: Client, driver: str
) -> None:
    """Death is kicked, rebirth is not: the new domain 9 starts from scratch."""
    assert py_daemon.ring_dir is not None
    set_domains(py_daemon, "0\n5\n6\n9 100\n")
    pdom0.mkdir("/local/domain/9")
    pdom0.set_perms("/local/domain/9", [Perm("n", 9)])
    pdom0.write("/vm/old", b"secret")
    pdom0.set_perms("/vm/old", [Perm("n", 0), Perm("r", 9)])
    set_domains(py_daemon, "0\n5\n6\n")
    kick(py_daemon.ring_dir, VIRQ_DOM_EXC_PORT)
    # Never introduced: no @releaseDomain; the tree is cleaned all the same.
    assert wait_for(lambda: not pdom0.exists("/local/domain/9"))
    assert pdom0.get_perms("/vm/old") == [Perm("n", 0)]
    set_domains(py_daemon, "0\n5\n6\n9 101\n")
    assert libxl_build(pdom0, py_daemon.ring_dir, 9, 19, "owner") == ALL_OK
    guest = make_guest(driver, py_daemon.ring_dir, 9, 19)
    try:
        assert gcall(guest, M.READ, b"/vm/old\0") == ("ERROR", b"EACCES\0")
        assert guest_session(guest, 9) == expected_session(9, "owner")
    finally:
        guest.close()
