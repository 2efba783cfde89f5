"""Test-only launcher: pyxenstored's daemon with the Xen backend.

Until the daemon chooses its backend itself (``--hypervisor xen``), this runs
``pyxenstored.cli.daemon.main`` with the name it builds its ring backend
through (``hypervisor.SimulatedHypervisor``, used when a ring dir is given:
``--ring-dir`` or ``XS_SHIM_RINGDIR``) bound to :meth:`XenHypervisor.open`,
so that every ring goes through the Xen libraries -- in the tests, the C
reference's shim in ``LD_PRELOAD`` answers them.  A failed open prints its
one line and exits 1.  Everything else (options, live update, -U) is the
daemon's own.

    python tests/xen/launch_xen.py --rundir DIR [daemon options]
"""

from __future__ import annotations

import sys

from pyxenstored.server import hypervisor
from pyxenstored.server.xen import HypervisorUnavailable, XenHypervisor


def xen_backend(_ring_dir: str) -> XenHypervisor:
    try:
        return XenHypervisor.open()
    except HypervisorUnavailable as exc:
        print(f"pyxenstored: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def main() -> int:
    hypervisor.SimulatedHypervisor = xen_backend  # type: ignore[misc,assignment]
    from pyxenstored.cli import daemon

    return daemon.main()


if __name__ == "__main__":
    sys.exit(main())
