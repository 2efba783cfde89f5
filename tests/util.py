"""Shared test helpers.

Tests that need something outside the package (Debian's xenstore-utils, the
Xen 4.17 tools, pyxs, the C reference daemon) call :func:`require`: locally
they skip with the reason when it is missing, but in CI (``CI`` set) a missing
requirement is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
PEERS = SHARED / "peers"
REFERENCE_RUNNER = PEERS / "reference-xenstored"
REFERENCE_OXENSTORED = PEERS / "reference-oxenstored"
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
    shim = shim_library()
    require(shim.exists(), f"the xsshim library {shim} (built by {REFERENCE_RUNNER} install)")
    return shim


def require_module(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        require(False, f"python module {name} not installed (pip install -e '.[test]')")
