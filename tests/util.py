"""Shared test helpers.

Tests that need something outside the package (Debian's xenstore-utils, the
Xen 4.17 tools, pyxs, the C reference daemon) call :func:`require`: locally
they skip with the reason when it is missing, but in CI (``CI`` set) a missing
requirement is a failure, never a silent skip.

The C reference daemons (the runners ``reference-xenstored`` and
``reference-oxenstored``, the ring guest ``ring_guest.py`` and the shim that
stands in for the hypervisor) are not part of this repository.  They are found
in ONE directory, named by the environment variable ``PYXENSTORED_PEERS``
(:data:`PEERS_VARIABLE`); a relative value is taken from the repository's top,
and the default is ``../shared/peers``.  Every path below is derived from it,
and every skip for a missing reference names the variable
(:func:`require_peer`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: The one variable that says where the C reference daemons are.
PEERS_VARIABLE = "PYXENSTORED_PEERS"
PEERS_DEFAULT = "../shared/peers"
PEERS = (REPO / (os.environ.get(PEERS_VARIABLE) or PEERS_DEFAULT)).resolve()
REFERENCE_RUNNER = PEERS / "reference-xenstored"
REFERENCE_OXENSTORED = PEERS / "reference-oxenstored"
RING_GUEST = PEERS / "ring_guest.py"
XEN_BIN = Path("/usr/lib/xen-4.17/bin")


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require(ok: bool, reason: str) -> None:
    """Skip locally, fail in CI, when ``ok`` is false."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"required in CI but missing: {reason}")
    pytest.skip(reason)


def peer_missing(path: Path) -> str:
    """The reason given when ``path`` of the C reference daemons is missing."""
    return (
        f"C reference missing: {path} (set {PEERS_VARIABLE} to the directory of the "
        f"reference daemons; default {PEERS_DEFAULT} from the repository)"
    )


def require_peer(path: Path = REFERENCE_RUNNER) -> Path:
    """``path`` inside :data:`PEERS` (the C reference runner by default), or skip/fail."""
    require(path.exists(), peer_missing(path))
    return path


def require_tool(name: str) -> str:
    """Path of an executable (name on PATH or absolute path), or skip/fail."""
    path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
    require(path is not None, f"{name} not installed (bash scripts/setup.sh installs it)")
    assert path is not None
    return path


def shim_library() -> Path:
    """Where ``reference-xenstored install`` builds the LD_PRELOAD shim (xsshim.c)."""
    build = os.environ.get("XSSHIM_BUILD") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xsshim"
    )
    return Path(build) / "libxsshim.so"


def require_shim() -> Path:
    """The shim that answers the Xen libraries' calls without a hypervisor, or skip/fail."""
    require_peer(REFERENCE_RUNNER)
    shim = shim_library()
    require(shim.exists(), f"the xsshim library {shim} (built by {REFERENCE_RUNNER} install)")
    return shim


def require_module(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        require(False, f"python module {name} not installed (pip install -e '.[test]')")
