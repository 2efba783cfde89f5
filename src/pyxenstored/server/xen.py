"""The daemon on a real Xen host: :class:`XenHypervisor`, through the Xen libraries.

A second implementation of :class:`~pyxenstored.server.hypervisor.Hypervisor`,
doing what the C daemon does with the same libraries (``domain.c``,
``posix.c``; ``xenstored_domain.c`` in 4.17), through :mod:`.xenlib`:

* event channels (libxenevtchn): one handle opened with
  ``XENEVTCHN_NO_CLOEXEC`` so that it survives a live update's exec, its
  descriptor in the daemon's loop, ``VIRQ_DOM_EXC`` bound on it; a readable
  descriptor is drained with ``xenevtchn_pending``, then each port read is
  unmasked once (before its ring is served, so that a kick meanwhile wakes
  us again); the library's advice is followed: each ``pending`` call after
  the first is preceded by a zero-timeout ``poll`` of the descriptor, never
  a blind read;
* ring pages: ``xengnttab_map_grant_ref`` of grant reference 1
  (``GNTTAB_RESERVED_XENSTORE``) read-write; when that fails and INTRODUCE
  named the page's frame, a foreign mapping of that frame
  (``xenforeignmemory_map``, else libxenctrl's ``xc_map_foreign_range``),
  as oxenstored does and C did up to 4.12 without a grant table handle.
  The store domain's own page is ``/proc/xen/xsd_kva`` mapped shared, its
  port read from ``/proc/xen/xsd_port`` (``posix.c:xenbus_map``,
  ``get_xenbus_evtchn``).  Library memory is handed out as a byte
  ``memoryview``; it is unmapped when the last view of it is gone, so that
  a view kept by mistake never reads unmapped memory;
* dom0less / hyperlaunch domains: the port Xen wrote into the page at offset
  2076 (mapped for the look, then unmapped);
* domains: libxenmanage when present (state and unique id, as C master),
  else libxenctrl 4.17's ``xc_domain_getinfo`` with its ``xc_dominfo_t``
  (no unique ids: 4.17 has none).  A dying domain is gone for xenstore (C
  4.17's ``check_domains`` destroys it), so :meth:`XenHypervisor.domains`
  leaves it out and :meth:`XenHypervisor.domain_info` flags it;
* live update: the event channel descriptor is handed over (every channel
  stays bound on it, the dump carries their local ports);
  ``VIRQ_DOM_EXC`` is unbound just before the exec (``domain_deinit``) so
  the successor can bind it; the successor adopts the descriptor with
  ``xenevtchn_fdopen`` and maps the pages again.

Every library function is resolved in the process's global symbol scope,
so that a library in ``LD_PRELOAD`` answers for the hypervisor exactly as it
does for the C daemon (see :mod:`.xenlib`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
import select
import weakref
from collections.abc import Callable

from pyxenstored.server.hypervisor import DomainInfo, RingMemory, release_ring_memory
from pyxenstored.server.xenlib import (
    DOMID_FIRST_RESERVED,
    DOMINFO_BUFFER,
    GNTTAB_RESERVED_XENSTORE,
    PROT_READ_WRITE,
    VIRQ_DOM_EXC,
    XENEVTCHN_NO_CLOEXEC,
    CFunction,
    HypervisorDominfo,
    XenLib,
    XenLibraryError,
    parse_xc_dominfo,
    parse_xenmanage,
)
from pyxenstored.wire import RING_EVTCHN_PORT, RING_PAGE_SIZE

log = logging.getLogger("pyxenstored.xen")

XSD_PORT = "/proc/xen/xsd_port"
XSD_KVA = "/proc/xen/xsd_kva"
EVTCHN_DEVICE = "/dev/xen/evtchn"
GNTTAB_DEVICE = "/dev/xen/gntdev"
PRIVCMD_DEVICE = "/dev/xen/privcmd"
# Ports taken from the event channel per readable wake-up; more wait for
# the next loop turn (the descriptor stays readable).
_PENDING_MAX = 64
_PAGE = ctypes.c_char * RING_PAGE_SIZE
_PAGE_SIZE = mmap.PAGESIZE


class HypervisorUnavailable(Exception):
    """The Xen backend cannot start here; the message is one line naming what is missing."""


class _Handles:
    """The library handles the mappings' finalizers need (cleared at close)."""

    __slots__ = ("gnttab", "fmem")

    def __init__(self, gnttab: int | None, fmem: int | None) -> None:
        self.gnttab = gnttab
        self.fmem = fmem


class XenHypervisor:
    """Xen through its libraries (see the module docstring)."""

    def __init__(
        self,
        lib: XenLib,
        xce: int,
        gnttab: int,
        *,
        xc: int | None = None,
        xm: int | None = None,
        fmem: int | None = None,
        store_domid: int = 0,
        bind_virq: bool = True,
    ) -> None:
        """Take over opened handles; binds ``VIRQ_DOM_EXC``.  Use :meth:`open`.

        ``bind_virq`` False: an inherited descriptor with the virq bound is
        taken over right after (:meth:`adopt_evtchn` with its port).
        """
        self._lib = lib
        self._ev = lib.evtchn
        # Looked up once: they are called per kick.
        self._pending = lib.evtchn["xenevtchn_pending"]
        self._unmask = lib.evtchn["xenevtchn_unmask"]
        self._xce = xce
        self._xc = xc
        self._xm = xm
        self._handles = _Handles(gnttab, fmem)
        self.store_domid = store_domid
        self._fd = -1
        self._poll = select.poll()
        self._virq = 0
        # xenmanage: domains as last reported (None: not read yet).
        self._known: dict[int, HypervisorDominfo] | None = None
        self._use_evtchn(xce, None if bind_virq else 0)

    # --- opening ------------------------------------------------------------------

    @classmethod
    def open(
        cls, *, store_domid: int = 0, lib: XenLib | None = None, bind_virq: bool = True
    ) -> XenHypervisor:
        """Load the libraries and open their handles, as C's ``domain_init`` does.

        Raises :class:`HypervisorUnavailable` with one line naming the
        missing library (and its Debian package) or device.
        """
        try:
            lib = lib or XenLib()
        except XenLibraryError as exc:
            raise HypervisorUnavailable(str(exc)) from None
        logger = lib.logger_ref()
        privcmd = f"cannot reach the hypervisor through {PRIVCMD_DEVICE}"
        with contextlib.ExitStack() as opened:
            xce = _open(
                lib,
                opened,
                lib.evtchn,
                "xenevtchn",
                (logger, XENEVTCHN_NO_CLOEXEC),
                f"cannot open the event channel device {EVTCHN_DEVICE}",
                "xen_evtchn",
            )
            gnttab = _open(
                lib,
                opened,
                lib.gnttab,
                "xengnttab",
                (logger, 0),
                f"cannot open the grant table device {GNTTAB_DEVICE}",
                "xen_gntdev",
            )
            # One mapping per domain at most (as C).
            lib.gnttab["xengnttab_set_max_grants"](gnttab, DOMID_FIRST_RESERVED)
            xm = xc = fmem = None
            if lib.manage is not None:
                xm = _open(
                    lib, opened, lib.manage, "xenmanage", (logger, 0), privcmd, "xen_privcmd"
                )
            else:
                assert lib.ctrl is not None
                xc = _open(
                    lib,
                    opened,
                    lib.ctrl,
                    "xc_interface",
                    (logger, logger, 0),
                    privcmd,
                    "xen_privcmd",
                )
            if lib.foreignmemory is not None:
                with contextlib.suppress(HypervisorUnavailable):  # for the fallback only
                    fmem = _open(
                        lib, opened, lib.foreignmemory, "xenforeignmemory", (logger, 0), "", ""
                    )
            try:
                hv = cls(
                    lib,
                    xce,
                    gnttab,
                    xc=xc,
                    xm=xm,
                    fmem=fmem,
                    store_domid=store_domid,
                    bind_virq=bind_virq,
                )
            except OSError as exc:
                raise HypervisorUnavailable(exc.strerror or str(exc)) from None
            opened.pop_all()  # the handles are the hypervisor's now
            return hv

    def _use_evtchn(self, xce: int, virq_port: int | None = None) -> None:
        """Make ``xce`` the event channel handle: its descriptor, ``VIRQ_DOM_EXC`` on it."""
        ev = self._ev
        fd = ev["xenevtchn_fd"](xce)
        if fd < 0:
            raise OSError(errno.EBADF, f"the event channel handle has no descriptor ({fd})")
        self._xce = xce
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        if virq_port is not None:
            # oxenstored hands the descriptor over with the virq still bound
            # (its evtchn-dev line): binding it again would fail on Xen.
            self._virq = virq_port
        else:
            self._bind_virq()

    def _bind_virq(self) -> None:
        port = self._ev["xenevtchn_bind_virq"](self._xce, VIRQ_DOM_EXC)
        if port < 0:
            err = self._lib.errno()
            raise OSError(
                err, f"cannot bind VIRQ_DOM_EXC: {os.strerror(err)} (another xenstored running?)"
            )
        self._virq = port

    # --- event channels ----------------------------------------------------------------

    @property
    def virq_port(self) -> int:
        return self._virq

    def fileno(self) -> int:
        return self._fd

    def pending_ports(self) -> list[int]:
        pending = self._pending
        poll = self._poll.poll
        xce = self._xce
        ports: list[int] = []
        try:
            # The loop saw the descriptor readable: the first read does not
            # block; each further one only after poll says there is more
            # (xenevtchn.h: a non-blocking descriptor may block all the same).
            while True:
                port = pending(xce)
                if port < 0:
                    err = self._lib.errno()
                    if err in (0, errno.EAGAIN, errno.EINTR):
                        break
                    raise OSError(err, f"reading the event channel: {os.strerror(err)}")
                ports.append(port)
                if len(ports) >= _PENDING_MAX or not poll(0):
                    break
        finally:
            self._unmask_all(ports)
        return ports

    def _unmask_all(self, ports: list[int]) -> None:
        """One unmask per port read, after the drain and before the rings are served.

        A port ``xenevtchn_pending`` returns stays masked until it is
        unmasked; kicks meanwhile are held and delivered once on unmask
        (``xenevtchn.h``), so on Xen a port cannot come twice in one drain
        and each read is answered by one unmask.  Unmasking during the drain
        instead would let a port come again after its unmask, and skipping
        the second unmask would leave it masked for good.  Before serving: a
        kick while the ring is served wakes us again.  (The C reference's
        test shim hands out every kick, masked or not: there a port may
        repeat, and one unmask is enough since its unmask does nothing.)
        """
        unmask = self._unmask
        xce = self._xce
        for port in dict.fromkeys(ports):
            unmask(xce, port)

    def bind_interdomain(self, domid: int, remote_port: int) -> int:
        port: int = self._ev["xenevtchn_bind_interdomain"](self._xce, domid, remote_port)
        if port < 0:
            err = self._lib.errno()
            raise OSError(err, os.strerror(err))
        return port

    def unbind(self, local_port: int) -> None:
        if local_port and self._ev["xenevtchn_unbind"](self._xce, local_port) < 0:
            log.debug("unbinding port %d: errno %d", local_port, self._lib.errno())

    def notify(self, local_port: int) -> None:
        self._ev["xenevtchn_notify"](self._xce, local_port)

    # --- ring pages ----------------------------------------------------------------------

    def map_ring(self, domid: int, gfn: int) -> RingMemory:
        if domid == self.store_domid:
            return self._map_kva()
        handles = self._handles
        gnttab = self._lib.gnttab
        addr = gnttab["xengnttab_map_grant_ref"](
            handles.gnttab, domid, GNTTAB_RESERVED_XENSTORE, PROT_READ_WRITE
        )
        if addr:

            def unmap_grant(addr: int = addr) -> None:
                if handles.gnttab is not None:
                    gnttab["xengnttab_unmap"](handles.gnttab, addr, 1)

            return _wrap(addr, unmap_grant)
        err = self._lib.errno()
        if gfn > 0:
            foreign = self._map_foreign(domid, gfn)
            if foreign is not None:
                return foreign
        raise OSError(
            err, f"grant {GNTTAB_RESERVED_XENSTORE} of domain {domid}: {os.strerror(err)}"
        )

    def _map_foreign(self, domid: int, gfn: int) -> memoryview | None:
        handles = self._handles
        fmem = self._lib.foreignmemory
        if fmem is not None and handles.fmem is not None:
            frames = (ctypes.c_uint64 * 1)(gfn)  # xen_pfn_t: unsigned long
            errors = (ctypes.c_int * 1)()
            addr = fmem["xenforeignmemory_map"](
                handles.fmem, domid, PROT_READ_WRITE, 1, frames, errors
            )
            if addr and not errors[0]:

                def unmap_foreign(addr: int = addr) -> None:
                    if handles.fmem is not None and fmem is not None:
                        fmem["xenforeignmemory_unmap"](handles.fmem, addr, 1)

                return _wrap(addr, unmap_foreign)
            if addr:
                fmem["xenforeignmemory_unmap"](handles.fmem, addr, 1)
        ctrl = self._lib.ctrl
        if ctrl is not None and self._xc is not None:
            addr = ctrl["xc_map_foreign_range"](self._xc, domid, _PAGE_SIZE, PROT_READ_WRITE, gfn)
            if addr:
                munmap = self._lib.munmap

                def unmap_range(addr: int = addr) -> None:
                    munmap(addr, _PAGE_SIZE)

                return _wrap(addr, unmap_range)
        log.debug("no foreign mapping of frame %#x of domain %d", gfn, domid)
        return None

    def _map_kva(self) -> mmap.mmap:
        """The store domain's own page, from its kernel (``posix.c:xenbus_map``)."""
        fd = os.open(XSD_KVA, os.O_RDWR | os.O_CLOEXEC)
        try:
            return mmap.mmap(fd, RING_PAGE_SIZE, mmap.MAP_SHARED)
        finally:
            os.close(fd)

    def unmap_ring(self, domid: int, page: RingMemory) -> None:
        release_ring_memory(page)  # library memory goes with its last view (_wrap)

    # --- domains ---------------------------------------------------------------------------

    def domains(self) -> dict[int, DomainInfo]:
        states = self._xenmanage_states() if self._xm is not None else self._xenctrl_states()
        return {d.domid: _info(d) for d in states if not d.dying}

    def domain_info(self, domid: int) -> DomainInfo | None:
        """What the hypervisor says of ``domid`` now; None if it does not exist."""
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            return None
        state = self._xenmanage_one(domid) if self._xm is not None else self._xenctrl_one(domid)
        return _info(state) if state is not None else None

    def _xenctrl_one(self, domid: int) -> HypervisorDominfo | None:
        """C 4.17's ``get_domain_info``: the first domain from ``domid`` on must be it."""
        state = self._xenctrl_from(domid)
        return state if state is not None and state.domid == domid else None

    def _xenctrl_from(self, first: int) -> HypervisorDominfo | None:
        lib = self._lib
        assert lib.ctrl is not None and lib.dominfo_layout is not None
        buf = ctypes.create_string_buffer(DOMINFO_BUFFER)
        if lib.ctrl["xc_domain_getinfo"](self._xc, first, 1, buf) != 1:
            return None
        return parse_xc_dominfo(lib.dominfo_layout, memoryview(buf))

    def _xenctrl_states(self) -> list[HypervisorDominfo]:
        states = []
        domid = 0
        while domid < DOMID_FIRST_RESERVED:
            state = self._xenctrl_from(domid)
            if state is None or state.domid < domid:
                break
            states.append(state)
            domid = state.domid + 1
        return states

    def _xenmanage_one(self, domid: int) -> HypervisorDominfo | None:
        manage = self._lib.manage
        assert manage is not None
        state, caps, unique = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint64()
        if manage["xenmanage_get_domain_info"](
            self._xm, domid, ctypes.byref(state), ctypes.byref(caps), ctypes.byref(unique)
        ):
            return None
        return parse_xenmanage(domid, state.value, caps.value, unique.value)

    def _xenmanage_states(self) -> list[HypervisorDominfo]:
        """Every domain: one sweep the first time, then the changes Xen reports.

        libxenmanage has no list; ``xenmanage_poll_changed_domain`` reports
        each domain whose state changed since it was last reported (to
        anyone: after a live update the predecessor has taken the earlier
        ones), hence the first sweep.
        """
        known = self._known
        if known is None:
            known = {}
            for domid in range(DOMID_FIRST_RESERVED):
                state = self._xenmanage_one(domid)
                if state is not None:
                    known[domid] = state
            self._known = known
        manage = self._lib.manage
        assert manage is not None
        c_domid, c_state, c_caps, c_unique = (
            ctypes.c_uint(),
            ctypes.c_uint(),
            ctypes.c_uint(),
            ctypes.c_uint64(),
        )
        refs = [ctypes.byref(c) for c in (c_domid, c_state, c_caps, c_unique)]
        poll = manage["xenmanage_poll_changed_domain"]
        for _ in range(DOMID_FIRST_RESERVED):  # bounded: each domain once per change
            if poll(self._xm, *refs):
                break
            changed = parse_xenmanage(c_domid.value, c_state.value, c_caps.value, c_unique.value)
            if changed is None:
                known.pop(c_domid.value, None)
            else:
                known[c_domid.value] = changed
        return list(known.values())

    def store_port(self) -> int:
        """``/proc/xen/xsd_port`` (``posix.c:get_xenbus_evtchn``); 0 when unreadable."""
        try:
            with open(XSD_PORT, "rb") as f:
                text = f.read(19)
            return int(text.strip(b"\0 \n") or b"0", 0)
        except (OSError, ValueError) as exc:
            log.warning("no store domain ring: cannot read %s: %s", XSD_PORT, exc)
            return 0

    def preset_port(self, domid: int) -> int:
        if domid == self.store_domid:
            return 0
        try:
            page = self.map_ring(domid, 0)
        except OSError:
            return 0  # no page granted (yet): not a dom0less domain
        try:
            port: int = memoryview(page)[RING_EVTCHN_PORT : RING_EVTCHN_PORT + 4].cast("I")[0]
        finally:
            self.unmap_ring(domid, page)
        return port

    # --- live update -------------------------------------------------------------------------

    def inheritable_fds(self) -> dict[str, int]:
        os.set_inheritable(self._fd, True)
        return {"evtchn": self._fd}

    def adopt_evtchn(self, fd: int, virq_port: int | None = None) -> None:
        """The predecessor's event channel descriptor, with its channels bound (``xenevtchn_fdopen``).

        Ours, opened at start, has only ``VIRQ_DOM_EXC`` on it: it is
        closed, and the virq bound on the inherited one instead.
        """
        if fd < 0 or fd == self._fd:
            return
        ev = self._ev
        xce = ev["xenevtchn_fdopen"](self._lib.logger_ref(), fd, 0)
        if not xce:
            err = self._lib.errno()
            raise OSError(err, f"the inherited event channel descriptor {fd}: {os.strerror(err)}")
        self.unbind(self._virq)
        ev["xenevtchn_close"](self._xce)
        self._use_evtchn(xce, virq_port)

    def restored_port(self, domid: int, local_port: int) -> int:
        return local_port  # bound on the descriptor adopt_evtchn takes over

    def prepare_exec(self) -> None:
        """As C's ``domain_deinit``: the successor binds ``VIRQ_DOM_EXC`` itself."""
        self.unbind(self._virq)
        with contextlib.suppress(OSError):
            os.set_inheritable(self._fd, True)

    def exec_failed(self) -> None:
        try:
            self._bind_virq()
        except HypervisorUnavailable as exc:
            log.error("after the failed exec: %s; domain deaths go unnoticed", exc)

    def close(self) -> None:
        lib = self._lib
        handles = self._handles
        gnttab, fmem = handles.gnttab, handles.fmem
        # Closing a handle unmaps what it mapped: finalizers left must not
        # use it any more.
        handles.gnttab = handles.fmem = None
        if gnttab is not None:
            lib.gnttab["xengnttab_close"](gnttab)
        if fmem is not None and lib.foreignmemory is not None:
            lib.foreignmemory["xenforeignmemory_close"](fmem)
        if self._xm is not None and lib.manage is not None:
            lib.manage["xenmanage_close"](self._xm)
            self._xm = None
        if self._xc is not None and lib.ctrl is not None:
            lib.ctrl["xc_interface_close"](self._xc)
            self._xc = None
        if self._xce:
            self._ev["xenevtchn_close"](self._xce)
            self._xce = 0
            self._fd = -1


def _open(
    lib: XenLib,
    opened: contextlib.ExitStack,
    functions: dict[str, CFunction],
    prefix: str,
    args: tuple[object, ...],
    what: str,
    module: str,
) -> int:
    """``<prefix>_open(*args)``, closed by ``opened`` unless kept; else why not, in one line."""
    handle: int | None = functions[f"{prefix}_open"](*args)
    if not handle:
        err = lib.errno()
        reason = os.strerror(err) if err else "failed"
        hint = (
            f" (not a Xen host, or the kernel module {module} is not loaded)"
            if err in (errno.ENOENT, errno.ENODEV, errno.ENXIO)
            else ""
        )
        raise HypervisorUnavailable(f"{what}: {reason}{hint}")
    opened.callback(functions[f"{prefix}_close"], handle)
    return handle


def _wrap(addr: int, unmap: Callable[[], object]) -> memoryview:
    """Library memory at ``addr`` as a byte view; ``unmap`` runs once no view is left."""
    page = _PAGE.from_address(addr)
    weakref.finalize(page, unmap)
    return memoryview(page).cast("B")


def _info(state: HypervisorDominfo) -> DomainInfo:
    return DomainInfo(state.domid, state.unique_id, state.shutdown, state.dying)


__all__ = ["HypervisorUnavailable", "XenHypervisor"]
