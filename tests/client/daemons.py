"""Starting daemons for the client tests: the C reference (``PYXENSTORED_PEERS``) and pyxenstored.

Each daemon runs in its own short temp dir (unix socket paths are limited to
108 bytes).  For ring tests the same dir is the ring dir: the C reference's
shim maps ``ring-dom<N>`` there and reads kicks from ``evtchn``; pyxenstored
gets ``--ring-dir`` and a ``domains`` file listing the domains that exist.

``pyxenstored-xen`` is pyxenstored on its Xen backend (``XenHypervisor``,
through the Xen libraries) under the same shim as the C reference, with the
same ring dir conventions: the shim maps the pages and owns the FIFO.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator, Sequence

from tests.launcher import Launched, start_daemon

from pyxenstored.client import Client, Perm, create_ring_page

GUEST = 5  # the domain that plays a guest on a ring
SPARE = 6  # a second existing domain, for introduce/release events
GUEST_PORT = 7
EXISTING_DOMAINS = (0, GUEST, SPARE)
REQUEST_TIMEOUT = 10.0


def start(
    kind: str,
    rundir: str,
    ring: bool,
    args: Sequence[str] = (),
    domains: Sequence[int] = EXISTING_DOMAINS,
) -> Launched:
    """Start ``kind`` (one of :data:`KINDS`) in ``rundir``; with ``ring``, that is its ring dir.

    ``domains``: the domains that exist at start (``DIR/domains`` for the
    simulated hypervisor, ``XS_SHIM_DOMAINS`` for the shim, whose list stays
    fixed).  ``args``: extra daemon arguments (the reference runner passes
    them on).
    """
    return start_daemon(kind, rundir, *args, ring_dir=rundir if ring else None, domains=domains)


def run_daemon(
    kind: str, ring: bool, args: Sequence[str] = (), domains: Sequence[int] = EXISTING_DOMAINS
) -> Generator[Launched, None, None]:
    """Start ``kind`` in a fresh short temp dir, yield it, stop it and clean up.

    Kinds: ``reference`` (C, shim), ``pyxenstored`` (simulated hypervisor),
    ``pyxenstored-xen`` (Xen backend, shim); arguments as for :func:`start`.
    """
    rundir = tempfile.mkdtemp(prefix="xsc-", dir="/tmp")
    try:
        with start(kind, rundir, ring, args, domains) as daemon:
            yield daemon
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def introduce_guest(dom0: Client, ring_dir: str, domid: int, port: int) -> None:
    """What a toolstack does: the guest's page exists, its home is made, then INTRODUCE."""
    create_ring_page(ring_dir, domid)
    home = f"/local/domain/{domid}"
    dom0.mkdir(home)
    dom0.set_perms(home, [Perm("n", domid)])
    dom0.introduce(domid, 1, port)


def set_domains(daemon: Launched, text: str) -> None:
    """Replace pyxenstored's ``DIR/domains``: the domains its simulated hypervisor knows."""
    assert daemon.ring_dir is not None
    path = os.path.join(daemon.ring_dir, "domains")
    with open(path + ".new", "w") as f:
        f.write(text)
    os.replace(path + ".new", path)
