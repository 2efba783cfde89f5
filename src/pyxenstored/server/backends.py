"""Choosing and opening the hypervisor backend (``--hypervisor auto|xen|sim|none``).

* ``xen``: the real hypervisor, through Xen's libraries
  (:mod:`pyxenstored.server.xen`, imported only when chosen);
* ``sim``: :class:`~pyxenstored.server.hypervisor.SimulatedHypervisor`, guests
  on ring pages in a directory (``--ring-dir``, or ``$XS_SHIM_RINGDIR`` as
  for the C reference under its test shim);
* ``none``: no guests, the unix socket only;
* ``auto`` (the default): ``sim`` when ``--ring-dir`` is given, else ``xen``
  when ``/dev/xen/evtchn`` exists (a Xen host's dom0), else ``sim`` when
  ``$XS_SHIM_RINGDIR`` is set, else ``none``.  An explicit ``--ring-dir`` wins
  over the device because it has no other meaning; the variable does not,
  because a live update from the C daemon under the shim passes it on.

A backend that cannot be opened is one line for the user, naming what is
missing (:class:`BackendUnavailable`); contradictory options are a
:class:`ValueError`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from pyxenstored.server.hypervisor import Hypervisor, SimulatedHypervisor

KINDS = ("auto", "xen", "sim", "none")
XEN_EVTCHN_DEVICE = "/dev/xen/evtchn"
XEN_MODULE = "pyxenstored.server.xen"


class BackendUnavailable(Exception):
    """The chosen backend cannot be opened; ``str()`` is the one-line reason."""


@dataclass(slots=True, frozen=True)
class BackendChoice:
    """The backend to open, and why it was chosen (for the log)."""

    kind: str  # "xen", "sim" or "none"
    ring_dir: str | None
    reason: str


def choose_backend(
    kind: str,
    ring_dir: str | None,
    environ: Mapping[str, str] | None = None,
    evtchn_device: str = XEN_EVTCHN_DEVICE,
) -> BackendChoice:
    """Resolve ``--hypervisor KIND`` with ``--ring-dir`` (None: not given)."""
    env = os.environ if environ is None else environ
    shim_dir = env.get("XS_SHIM_RINGDIR") or None
    if kind not in KINDS:
        raise ValueError(f"unknown hypervisor backend {kind!r} (choose from {', '.join(KINDS)})")
    if kind == "xen":
        if ring_dir:
            raise ValueError("--ring-dir is for the simulated hypervisor, not --hypervisor xen")
        return BackendChoice("xen", None, "--hypervisor xen")
    if kind == "none":
        if ring_dir:
            raise ValueError("--ring-dir serves guests; --hypervisor none serves none")
        return BackendChoice("none", None, "--hypervisor none")
    if kind == "sim":
        where = ring_dir or shim_dir
        if not where:
            raise ValueError("--hypervisor sim needs --ring-dir DIR (or $XS_SHIM_RINGDIR)")
        return BackendChoice("sim", where, "--hypervisor sim")
    if ring_dir:
        return BackendChoice("sim", ring_dir, "--ring-dir given")
    if os.path.exists(evtchn_device):
        return BackendChoice("xen", None, f"{evtchn_device} exists")
    if shim_dir:
        return BackendChoice("sim", shim_dir, "$XS_SHIM_RINGDIR is set")
    return BackendChoice("none", None, f"no {evtchn_device} and no ring directory")


def open_backend(
    choice: BackendChoice, store_domid: int = 0, *, bind_virq: bool = True
) -> Hypervisor | None:
    """Open the chosen backend; None for ``none``.  Raises :class:`BackendUnavailable`.

    ``store_domid`` is the domain the store runs in (``--master-domid``): on
    Xen its ring is the one ``/proc/xen/xsd_kva`` maps.  ``bind_virq`` False:
    Xen's ``VIRQ_DOM_EXC`` comes bound on an inherited descriptor (oxenstored's).
    """
    if choice.kind == "none":
        return None
    if choice.kind == "sim":
        assert choice.ring_dir is not None
        try:
            return SimulatedHypervisor(choice.ring_dir)
        except OSError as exc:
            raise BackendUnavailable(f"cannot serve rings in {choice.ring_dir}: {exc}") from None
    return _open_xen(store_domid, bind_virq)


def open_hypervisor(
    kind: str, ring_dir: str | None, environ: Mapping[str, str] | None = None
) -> Hypervisor | None:
    """:func:`choose_backend` then :func:`open_backend`."""
    return open_backend(choose_backend(kind, ring_dir, environ))


def _open_xen(store_domid: int, bind_virq: bool = True) -> Hypervisor:
    # Imported by name and only here: the module loads Xen's libraries, and a
    # pyxenstored without it must still serve the other backends.
    try:
        xen = importlib.import_module(XEN_MODULE)
    except ImportError as exc:
        if exc.name == XEN_MODULE:
            raise BackendUnavailable(
                f"this pyxenstored has no Xen backend (no module {XEN_MODULE})"
            ) from None
        raise BackendUnavailable(f"the Xen backend cannot be loaded: {exc}") from None
    try:
        return cast(
            Hypervisor,
            xen.XenHypervisor.open(
                store_domid=store_domid, **({} if bind_virq else {"bind_virq": False})
            ),
        )
    except xen.HypervisorUnavailable as exc:
        raise BackendUnavailable(f"cannot use Xen: {exc}") from None
