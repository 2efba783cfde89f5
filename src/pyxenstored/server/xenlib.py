"""Raw ``ctypes`` bindings to the Xen libraries a xenstored uses, and their layouts.

The C daemon is linked against libxenevtchn, libxengnttab, libxenctrl (4.17;
libxenmanage on newer Xen) and reaches the hypervisor only through them.
:class:`XenLib` loads the same shared objects with ``RTLD_GLOBAL`` and looks
every function up in the process's global symbol scope (``dlopen(NULL)``),
the scope the dynamic linker searches for the C daemon: a library given in
``LD_PRELOAD`` answers our calls exactly as it answers the C daemon's (that
is how the daemon is tested without a hypervisor).  A library that cannot be
loaded is not an error by itself when its functions are found in that scope
anyway; a function found nowhere is, with the library's Debian package named.

Only one structure is read field by field: ``xc_dominfo_t`` of
``xc_domain_getinfo`` (libxenctrl 4.17, ``xenctrl.h``).  Its layout belongs
to the library version, so :data:`XC_DOMINFO_LAYOUTS` knows it per
``libxenctrl`` soname and nothing else is guessed: libxenmanage, when
present, answers the same questions through plain integers instead.

No policy here: :mod:`.xen` decides what to open, when, and what a failure
means.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pyxenstored.xen")

# xen/include/public/xen.h, grant_table.h; xenevtchn.h
VIRQ_DOM_EXC = 3
GNTTAB_RESERVED_XENSTORE = 1
XENEVTCHN_NO_CLOEXEC = 1
DOMID_FIRST_RESERVED = 0x7FF0
PROT_READ_WRITE = 0x1 | 0x2  # PROT_READ | PROT_WRITE (<sys/mman.h>)

# xenmanage.h: XENMANAGE_GETDOMSTATE_STATE_* and _CAP_*
XM_STATE_EXIST = 0x1
XM_STATE_SHUTDOWN = 0x2
XM_STATE_DYING = 0x4
XM_STATE_DEAD = 0x8
XM_CAP_CONTROL = 0x1
XM_CAP_XENSTORE = 0x4

_P = ctypes.c_void_p
_U32 = ctypes.c_uint32
_INT = ctypes.c_int
_UINT = ctypes.c_uint

# A C function as ctypes gives it (the return value's Python type depends on
# its restype).
CFunction = Callable[..., Any]


class XenLibraryError(Exception):
    """A library or one of its functions is missing; the message says which and where from."""


@dataclass(slots=True, frozen=True)
class Library:
    """One shared object: its soname, the Debian package that ships it, what we call in it."""

    soname: str
    package: str
    functions: tuple[tuple[str, Any, tuple[Any, ...]], ...]  # (name, restype, argtypes)


EVTCHN = Library(
    "libxenevtchn.so.1",
    "libxenevtchn1",
    (
        ("xenevtchn_open", _P, (_P, _UINT)),
        ("xenevtchn_fdopen", _P, (_P, _INT, _UINT)),
        ("xenevtchn_close", _INT, (_P,)),
        ("xenevtchn_fd", _INT, (_P,)),
        ("xenevtchn_notify", _INT, (_P, _U32)),
        ("xenevtchn_bind_interdomain", _INT, (_P, _U32, _U32)),
        ("xenevtchn_bind_virq", _INT, (_P, _UINT)),
        ("xenevtchn_unbind", _INT, (_P, _U32)),
        ("xenevtchn_pending", _INT, (_P,)),
        ("xenevtchn_unmask", _INT, (_P, _U32)),
    ),
)
GNTTAB = Library(
    "libxengnttab.so.1",
    "libxengnttab1",
    (
        ("xengnttab_open", _P, (_P, _UINT)),
        ("xengnttab_close", _INT, (_P,)),
        ("xengnttab_set_max_grants", _INT, (_P, _U32)),
        ("xengnttab_map_grant_ref", _P, (_P, _U32, _U32, _INT)),
        ("xengnttab_unmap", _INT, (_P, _P, _U32)),
    ),
)
FOREIGNMEMORY = Library(
    "libxenforeignmemory.so.1",
    "libxenforeignmemory1",
    (
        ("xenforeignmemory_open", _P, (_P, _UINT)),
        ("xenforeignmemory_close", _INT, (_P,)),
        # (handle, domid, prot, pages, const xen_pfn_t arr[], int err[])
        ("xenforeignmemory_map", _P, (_P, _U32, _INT, ctypes.c_size_t, _P, _P)),
        ("xenforeignmemory_unmap", _INT, (_P, _P, ctypes.c_size_t)),
    ),
)
MANAGE = Library(
    "libxenmanage.so.1",
    "libxenmanage1",
    (
        ("xenmanage_open", _P, (_P, _UINT)),
        ("xenmanage_close", _INT, (_P,)),
        # (handle, domid, *state, *caps, *unique_id)
        ("xenmanage_get_domain_info", _INT, (_P, _UINT, _P, _P, _P)),
        # (handle, *domid, *state, *caps, *unique_id)
        ("xenmanage_poll_changed_domain", _INT, (_P, _P, _P, _P, _P)),
    ),
)


def _ctrl(version: str) -> Library:
    return Library(
        f"libxenctrl.so.{version}",
        f"libxenmisc{version}",  # Debian ships libxenctrl in libxenmisc<version>
        (
            ("xc_interface_open", _P, (_P, _P, _UINT)),
            ("xc_interface_close", _INT, (_P,)),
            # (handle, first_domid, max_doms, xc_dominfo_t *info)
            ("xc_domain_getinfo", _INT, (_P, _U32, _UINT, _P)),
            # (handle, domid, size, prot, mfn)
            ("xc_map_foreign_range", _P, (_P, _U32, _INT, _INT, ctypes.c_ulong)),
        ),
    )


@dataclass(slots=True, frozen=True)
class DominfoLayout:
    """Where one libxenctrl version's ``xc_dominfo_t`` keeps what a xenstored reads.

    ``domid`` is a u32 at its offset; ``dying``, ``crashed``, ``shutdown``
    and ``xenstore`` are bit-fields of the unsigned int at ``flags`` (the
    first field of the group is its least significant bit on the
    little-endian ABIs Xen's tools run on).  ``size`` is ``sizeof`` on
    x86_64, for reference: one structure is read per call, into a buffer of
    :data:`DOMINFO_BUFFER` bytes, so a larger one elsewhere still fits.
    """

    version: str
    domid: int
    flags: int
    dying: int
    crashed: int
    shutdown: int
    xenstore: int
    size: int


# xenctrl.h of Xen 4.17: domid, ssidref, then the bit-fields dying:1,
# crashed:1, shutdown:1, paused:1, blocked:1, running:1, hvm:1, debugged:1,
# xenstore:1, hap:1 in one unsigned int.
XC_DOMINFO_LAYOUTS = {
    "4.17": DominfoLayout("4.17", 0, 8, 1 << 0, 1 << 1, 1 << 2, 1 << 8, 112),
}
DOMINFO_BUFFER = 4096
_WORD = struct.Struct("=I")


@dataclass(slots=True, frozen=True)
class HypervisorDominfo:
    """One domain as the hypervisor library reported it (its dominfo, cut to what xenstored uses)."""

    domid: int
    dying: bool = False
    shutdown: bool = False  # shut down or crashed
    xenstore: bool = False  # the hypervisor gave it the xenstore capability
    unique_id: int = 0  # 0: the library does not say


def parse_xc_dominfo(
    layout: DominfoLayout, data: bytes | bytearray | memoryview
) -> HypervisorDominfo:
    """Read one ``xc_dominfo_t`` (at least ``flags + 4`` bytes)."""
    if len(data) < layout.flags + 4:
        raise ValueError(f"an xc_dominfo_t is at least {layout.flags + 4} bytes, not {len(data)}")
    domid: int = _WORD.unpack_from(data, layout.domid)[0]
    flags: int = _WORD.unpack_from(data, layout.flags)[0]
    return HypervisorDominfo(
        domid,
        dying=bool(flags & layout.dying),
        shutdown=bool(flags & (layout.shutdown | layout.crashed)),
        xenstore=bool(flags & layout.xenstore),
    )


def parse_xenmanage(domid: int, state: int, caps: int, unique_id: int) -> HypervisorDominfo | None:
    """What ``xenmanage_get_domain_info`` says; None for a domain that no longer exists."""
    if not state & XM_STATE_EXIST or state & XM_STATE_DEAD:
        return None
    return HypervisorDominfo(
        domid,
        dying=bool(state & XM_STATE_DYING),
        shutdown=bool(state & XM_STATE_SHUTDOWN),
        xenstore=bool(caps & XM_CAP_XENSTORE),
        unique_id=unique_id & 0xFFFFFFFFFFFFFFFF,
    )


# --- a logger that keeps the libraries off stderr ----------------------------------

# struct xentoollog_logger (xentoollog.h): vmessage, progress, destroy.  The
# libraries log to stderr without one; ours passes their complaints to the
# daemon's log at debug level (the format string only: the va_list is not
# portable to read), and the daemon reports failures itself, in one line.
_VMESSAGE = ctypes.CFUNCTYPE(None, _P, _INT, _INT, ctypes.c_char_p, ctypes.c_char_p, _P)
_PROGRESS = ctypes.CFUNCTYPE(
    None, _P, ctypes.c_char_p, ctypes.c_char_p, _INT, ctypes.c_ulong, ctypes.c_ulong
)
_DESTROY = ctypes.CFUNCTYPE(None, _P)


class _Logger(ctypes.Structure):
    _fields_ = [("vmessage", _VMESSAGE), ("progress", _PROGRESS), ("destroy", _DESTROY)]


def _vmessage(
    _logger: int | None,
    level: int,
    errnoval: int,
    context: bytes | None,
    fmt: bytes | None,
    _al: int | None,
) -> None:
    log.debug(
        "libxen %s (level %d, errno %d): %s",
        (context or b"?").decode(errors="replace"),
        level,
        errnoval,
        (fmt or b"").decode(errors="replace"),
    )


def _progress(*_args: object) -> None:
    pass


# --- the libraries -------------------------------------------------------------------------


class XenLib:
    """The Xen libraries' functions, resolved in the global symbol scope.

    Required: libxenevtchn and libxengnttab, and either libxenmanage or a
    libxenctrl whose ``xc_dominfo_t`` is in :data:`XC_DOMINFO_LAYOUTS`.
    Optional: libxenforeignmemory (foreign mapping when a grant cannot be
    mapped).  Raises :class:`XenLibraryError` naming what is missing.
    """

    def __init__(
        self,
        *,
        evtchn: Library = EVTCHN,
        gnttab: Library = GNTTAB,
        foreignmemory: Library = FOREIGNMEMORY,
        manage: Library = MANAGE,
        ctrl_versions: tuple[str, ...] = tuple(XC_DOMINFO_LAYOUTS),
    ) -> None:
        if sys.byteorder != "little":
            raise XenLibraryError("the Xen backend knows the libraries' little-endian layouts only")
        self._scope = ctypes.CDLL(None, use_errno=True)
        self.loaded: list[str] = []
        self.evtchn = self._require(evtchn)
        self.gnttab = self._require(gnttab)
        self.foreignmemory = self._optional(foreignmemory)
        self.manage = self._optional(manage)
        self.ctrl: dict[str, CFunction] | None = None
        self.dominfo_layout: DominfoLayout | None = None
        for version in ctrl_versions:
            ctrl = self._optional(_ctrl(version))
            if ctrl is not None and _ctrl(version).soname in self.loaded:
                self.ctrl = ctrl
                self.dominfo_layout = XC_DOMINFO_LAYOUTS[version]
                break
        if self.manage is None and self.ctrl is None:
            raise XenLibraryError(_no_domain_info(ctrl_versions))
        self.munmap: CFunction = self._function("munmap", _INT, (_P, ctypes.c_size_t))
        # One logger for every handle; kept alive as long as the functions are.
        self._callbacks = (_VMESSAGE(_vmessage), _PROGRESS(_progress), _DESTROY(_progress))
        self.logger = _Logger(*self._callbacks)

    @staticmethod
    def errno() -> int:
        """errno as the last library call left it."""
        return ctypes.get_errno()

    def logger_ref(self) -> Any:
        """The argument to pass as a ``xentoollog_logger *``."""
        return ctypes.byref(self.logger)

    def _load(self, library: Library) -> bool:
        try:
            ctypes.CDLL(library.soname, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            log.debug("cannot load %s: %s", library.soname, exc)
            return False
        self.loaded.append(library.soname)
        return True

    def _function(self, name: str, restype: Any, argtypes: tuple[Any, ...]) -> CFunction:
        fn = getattr(self._scope, name)  # AttributeError: not in the global scope
        fn.restype = restype
        fn.argtypes = argtypes
        f: CFunction = fn
        return f

    def _resolve(self, library: Library) -> dict[str, CFunction]:
        return {name: self._function(name, res, args) for name, res, args in library.functions}

    def _require(self, library: Library) -> dict[str, CFunction]:
        loaded = self._load(library)
        try:
            return self._resolve(library)
        except AttributeError as exc:
            name = str(exc).split(":")[-1].strip() or str(exc)
            if not loaded:
                raise XenLibraryError(
                    f"{library.soname} not found: install the Debian package {library.package}"
                ) from None
            raise XenLibraryError(
                f"{library.soname} has no {name}: a newer {library.package} is needed"
            ) from None

    def _optional(self, library: Library) -> dict[str, CFunction] | None:
        self._load(library)
        try:
            return self._resolve(library)
        except AttributeError:
            return None


def _no_domain_info(known: tuple[str, ...]) -> str:
    """Why neither libxenmanage nor a known libxenctrl is there, in one line."""
    found = ctypes.util.find_library("xenctrl")
    wanted = ", ".join(f"libxenctrl.so.{v} (Debian package libxenmisc{v})" for v in known)
    if found:
        return (
            f"{found} is installed, but pyxenstored knows the domain information layout of"
            f" {wanted} only, and libxenmanage.so.1 (Xen 4.20 and later) is not there"
        )
    return f"libxenctrl not found: install {wanted}, or libxenmanage.so.1 on Xen 4.20 and later"
