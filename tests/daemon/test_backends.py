"""Choosing the hypervisor backend (server/backends.py)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from pyxenstored.server import backends
from pyxenstored.server.backends import (
    BackendChoice,
    BackendUnavailable,
    choose_backend,
    open_backend,
    open_hypervisor,
)
from pyxenstored.server.hypervisor import SimulatedHypervisor


@pytest.fixture
def device(tmp_path: Path) -> str:
    path = tmp_path / "evtchn"
    path.write_text("")
    return str(path)


def test_auto(tmp_path: Path, device: str) -> None:
    absent = str(tmp_path / "absent")
    shim = {"XS_SHIM_RINGDIR": "/shim"}
    assert choose_backend("auto", None, {}, absent).kind == "none"
    assert choose_backend("auto", None, {}, device).kind == "xen"
    assert choose_backend("auto", None, shim, absent) == BackendChoice(
        "sim", "/shim", "$XS_SHIM_RINGDIR is set"
    )
    # The device wins over the shim's variable (passed on by a live update)...
    assert choose_backend("auto", None, shim, device).kind == "xen"
    # ...an explicit --ring-dir wins over the device.
    assert choose_backend("auto", "/rings", shim, device) == BackendChoice(
        "sim", "/rings", "--ring-dir given"
    )


def test_explicit_kinds(device: str) -> None:
    assert choose_backend("xen", None, {}, "/absent").kind == "xen"
    assert choose_backend("none", None, {"XS_SHIM_RINGDIR": "/s"}, device).kind == "none"
    assert choose_backend("sim", None, {"XS_SHIM_RINGDIR": "/s"}).ring_dir == "/s"
    assert choose_backend("sim", "/r", {"XS_SHIM_RINGDIR": "/s"}).ring_dir == "/r"
    for kind, ring_dir in (("sim", None), ("xen", "/r"), ("none", "/r"), ("kvm", None)):
        with pytest.raises(ValueError):
            choose_backend(kind, ring_dir, {})


def test_open_none_and_sim(tmp_path: Path) -> None:
    assert open_hypervisor("none", None, {}) is None
    hv = open_hypervisor("sim", str(tmp_path), {})
    try:
        assert isinstance(hv, SimulatedHypervisor)
        assert (tmp_path / "evtchn").exists()
    finally:
        assert hv is not None
        hv.close()
    with pytest.raises(BackendUnavailable, match="cannot serve rings in"):
        open_backend(BackendChoice("sim", str(tmp_path / "no" / "dir"), "test"))


def test_xen_without_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "XEN_MODULE", "pyxenstored.server.no_such_backend")
    with pytest.raises(BackendUnavailable) as exc:
        open_backend(BackendChoice("xen", None, "test"))
    assert str(exc.value) == (
        "this pyxenstored has no Xen backend (no module pyxenstored.server.no_such_backend)"
    )


def test_xen_unavailable_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Xen module's own reason (library or device, and its package) is the line."""
    fake = types.ModuleType("fake_xen")

    class HypervisorUnavailable(Exception):
        pass

    class XenHypervisor:
        @classmethod
        def open(cls, *, store_domid: int = 0) -> XenHypervisor:
            raise HypervisorUnavailable(
                "libxenevtchn.so.1 not found (Debian package libxenevtchn1)"
            )

    fake.HypervisorUnavailable = HypervisorUnavailable  # type: ignore[attr-defined]
    fake.XenHypervisor = XenHypervisor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_xen", fake)
    monkeypatch.setattr(backends, "XEN_MODULE", "fake_xen")
    with pytest.raises(BackendUnavailable) as exc:
        open_backend(BackendChoice("xen", None, "test"))
    assert str(exc.value) == (
        "cannot use Xen: libxenevtchn.so.1 not found (Debian package libxenevtchn1)"
    )
