"""The few things the daemon needs from Xen, behind one small interface.

A xenstored talks to the hypervisor for five things only: map a domain's ring
page, bind event channels to it (and to ``VIRQ_DOM_EXC``), notify and receive
on those channels, and learn which domains exist, which shut down, which died
and their unique ids.  The last comes two ways: :meth:`Hypervisor.domains`
lists them all, read when ``VIRQ_DOM_EXC`` fires (a domain shut down or
died); :meth:`Hypervisor.domain_info` answers for one domain at the moment
the store asks (C's ``xenmanage_get_domain_info``), because a domain's
*creation* raises no ``VIRQ_DOM_EXC``: a toolstack makes a domain's home and
gives it rights before anybody told the daemon it exists.  The store asks
only when a request needs it (SET_PERMS naming a domain it has no record of,
the quota and feature requests with a domid, INTRODUCE), never per plain
read or write.  :class:`Hypervisor` is that interface;
:class:`SimulatedHypervisor` implements it with plain files so that the daemon
serves guests on a machine without Xen, following the conventions of the C
reference under its test shim (``xsshim.c``, beside the reference daemons the
tests find through ``PYXENSTORED_PEERS``), so that one guest
harness drives both daemons:

* ``DIR/ring-dom<domid>``: the domain's ring page, a 4096-byte file both sides
  map shared (created zeroed if missing, as the shim does);
* ``DIR/evtchn``: the FIFO that is the daemon's event channel; the daemon
  creates it and holds it open read-write; a guest kicks by writing a native
  u32 port number;
* ``DIR/notify-dom<domid>``: if this FIFO exists (a guest creates it and holds
  it open), the daemon notifies the guest by writing the port to it, without
  blocking; a guest that polls its page works without it;
* ``DIR/domains``: the domains that exist, one per line: ``<domid>
  [<unique-id>] [shutdown] [dying]`` (without the file, ``$XS_SHIM_DOMAINS``
  as for the shim, default ``0``), read again at every question, so
  that adding a line is a domain's creation, announced to nobody, as on
  Xen.  Removing a line (or adding ``dying``) and kicking
  :data:`VIRQ_DOM_EXC_PORT` is the domain's death; adding ``shutdown`` and
  kicking is its shutdown; a line with a different unique id is a new domain
  that reuses the domid (kicked or not: INTRODUCE notices it too).

At start the daemon serves the store domain's own ring (``ring-dom0``, port
``$XS_SHIM_DOM0_PORT``, default 1, as the shim's ``/proc/xen/xsd_port``) and
every existing domain whose page file already holds a port at offset 2076
(dom0less guests), as C HEAD introduces them (``domain.c:init_domains``).

Ports: in the simulation an interdomain channel's local port is the port the
guest was introduced with (the guest kicks with the number it knows), and the
``VIRQ_DOM_EXC`` channel is port 1, the port the C reference binds first
under the shim.  A port that is bound twice (two guests introduced with the
same number) wakes both.

The real one is :class:`pyxenstored.server.xen.XenHypervisor` (libxenevtchn,
libxengnttab, libxenctrl or libxenmanage through ``ctypes``); it fits the
same methods.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import stat
import struct
import time
from dataclasses import dataclass
from typing import Protocol

from pyxenstored.wire import RING_EVTCHN_PORT, RING_PAGE_SIZE

log = logging.getLogger("pyxenstored.hypervisor")

VIRQ_DOM_EXC_PORT = 1
_PORT = struct.Struct("=I")
# Kicks read from the event channel FIFO in one go (1024 ports).
_KICK_READ = 4096
_KICK_READS = 16
# Seconds between attempts to open a guest's notify FIFO that is missing.
_NOTIFY_RETRY = 0.1


@dataclass(slots=True, frozen=True)
class DomainInfo:
    """What the hypervisor says about one existing domain.

    ``dying``: Xen is destroying it (libxenmanage's DYING or DEAD state,
    libxenctrl's ``dying`` flag); the daemon treats it as dead.
    """

    domid: int
    unique_id: int = 0  # 0: unknown
    shutdown: bool = False
    dying: bool = False  # being destroyed: gone for xenstore (C 4.17 check_domains)


# A mapped ring page: an ``mmap`` (files, ``/proc/xen/xsd_kva``) or a byte
# ``memoryview`` of memory a Xen library mapped (grant or foreign mapping).
RingMemory = mmap.mmap | memoryview


def release_ring_memory(page: RingMemory) -> None:
    """Let go of a mapped ring page (both backends' ``unmap_ring``)."""
    with contextlib.suppress(BufferError):
        # A view still exported elsewhere keeps it; the GC frees it later
        # (library memory is unmapped once its last view is gone).
        if isinstance(page, memoryview):
            page.release()
        else:
            page.close()


class Hypervisor(Protocol):
    """What the daemon needs from Xen (event channels, ring pages, domain list)."""

    @property
    def virq_port(self) -> int:
        """The local port bound to ``VIRQ_DOM_EXC`` (domain state changes)."""
        ...

    def fileno(self) -> int:
        """File descriptor that becomes readable when event channels fire."""
        ...

    def pending_ports(self) -> list[int]:
        """Local ports that fired since the last call (may repeat; may be empty)."""
        ...

    def bind_interdomain(self, domid: int, remote_port: int) -> int:
        """Bind a channel to ``domid``'s ``remote_port``; returns the local port."""
        ...

    def unbind(self, local_port: int) -> None: ...

    def notify(self, local_port: int) -> None:
        """Signal the domain at the other end of ``local_port`` (never blocks)."""
        ...

    def map_ring(self, domid: int, gfn: int) -> RingMemory:
        """Map ``domid``'s ring page (4096 bytes, shared, writable).

        ``gfn``: the page frame INTRODUCE named (0: unknown, after a live
        update).  Raises ``OSError`` when it cannot be mapped.
        """
        ...

    def unmap_ring(self, domid: int, page: RingMemory) -> None: ...

    def domains(self) -> dict[int, DomainInfo]:
        """The domains that exist now, by domid (read on ``VIRQ_DOM_EXC``)."""
        ...

    def domain_info(self, domid: int) -> DomainInfo | None:
        """Domain ``domid`` now, or None when there is no such domain.

        Asked by the store at the moment a request needs it; an
        implementation may cache only what cannot change unnoticed.
        """
        ...

    def store_port(self) -> int:
        """The store domain's own event channel port (``/proc/xen/xsd_port``; 0: none)."""
        ...

    def preset_port(self, domid: int) -> int:
        """The port Xen wrote into a domain's page at 2076 (dom0less guests; 0: none)."""
        ...

    def inheritable_fds(self) -> dict[str, int]:
        """Descriptors to keep open across a live-update exec, by role."""
        ...

    def adopt_evtchn(self, fd: int, virq_port: int | None = None) -> None:
        """Take over the event channel descriptor a live update handed over.

        ``virq_port``: ``VIRQ_DOM_EXC`` is still bound on it at that port
        (oxenstored hands it over bound); None: bind it here.
        """
        ...

    def restored_port(self, domid: int, local_port: int) -> int:
        """A channel a live update carried over (its local port); the port to use now."""
        ...

    def prepare_exec(self) -> None:
        """Just before a live-update exec: leave what the successor sets up again."""
        ...

    def exec_failed(self) -> None:
        """The exec failed: undo :meth:`prepare_exec` and serve on."""
        ...

    def close(self) -> None: ...


def parse_domains(text: str) -> dict[int, DomainInfo]:
    """The ``DIR/domains`` file: ``<domid> [<unique-id>] [shutdown] [dying]`` per line.

    Blank lines and ``#`` comments are skipped; commas also separate domids
    (``0,5,6`` as in ``XS_SHIM_DOMAINS``).  A malformed line is skipped with a
    warning: the file is written by people and test harnesses.
    """
    result: dict[int, DomainInfo] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "," in line:
            for item in line.split(","):
                item = item.strip()
                if item.isdigit():
                    result[int(item)] = DomainInfo(int(item))
            continue
        words = line.split()
        try:
            domid = int(words[0], 0)
            unique_id = 0
            shutdown = dying = False
            for word in words[1:]:
                if word.lower() == "shutdown":
                    shutdown = True
                elif word.lower() == "dying":
                    dying = True
                else:
                    unique_id = int(word, 0)
        except ValueError:
            log.warning("ignoring bad line in the domains file: %r", raw)
            continue
        if not 0 <= domid < 0x7FF0:
            log.warning("ignoring bad domid in the domains file: %r", raw)
            continue
        result[domid] = DomainInfo(domid, unique_id & 0xFFFFFFFFFFFFFFFF, shutdown, dying)
    return result


class SimulatedHypervisor:
    """Xen simulated with files in a ring directory (see the module docstring)."""

    def __init__(self, ring_dir: str, evtchn_fd: int | None = None) -> None:
        """Open (creating if needed) ``ring_dir/evtchn``.

        ``evtchn_fd``: an already open descriptor of that FIFO, inherited
        across a live update, so that no kick is lost and guests never find
        the FIFO without a reader.
        """
        self.ring_dir = ring_dir
        self._evtchn_path = os.path.join(ring_dir, "evtchn")
        if evtchn_fd is None:
            try:
                os.mkfifo(self._evtchn_path, 0o600)
            except FileExistsError:
                if not stat.S_ISFIFO(os.stat(self._evtchn_path).st_mode):
                    raise OSError(
                        errno.EEXIST, f"{self._evtchn_path} exists and is not a FIFO"
                    ) from None
            # Read-write: we are a writer too, so the FIFO never reports
            # end-of-file when guests close their ends (no busy loop).
            evtchn_fd = os.open(self._evtchn_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            os.set_blocking(evtchn_fd, False)
        self._evtchn = evtchn_fd
        self._partial = b""
        # local port -> domids bound to it
        self._bound: dict[int, set[int]] = {}
        # domid -> (notify fd or None, time of the last failed open)
        self._notify: dict[int, tuple[int | None, float]] = {}

    @property
    def virq_port(self) -> int:
        return VIRQ_DOM_EXC_PORT

    def fileno(self) -> int:
        return self._evtchn

    def pending_ports(self) -> list[int]:
        chunks: list[bytes] = []
        # Bounded: a guest that kicks without pause cannot keep us here.
        for _ in range(_KICK_READS):
            try:
                data = os.read(self._evtchn, _KICK_READ)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            chunks.append(data)
            if len(data) < _KICK_READ:
                break
        data = self._partial + b"".join(chunks)
        whole = len(data) - len(data) % _PORT.size
        self._partial = data[whole:]
        return [port for (port,) in _PORT.iter_unpack(data[:whole])]

    def bind_interdomain(self, domid: int, remote_port: int) -> int:
        self._bound.setdefault(remote_port, set()).add(domid)
        self._notify.setdefault(domid, (None, 0.0))
        return remote_port

    def unbind(self, local_port: int) -> None:
        domids = self._bound.pop(local_port, set())
        for domid in domids:
            if any(domid in others for others in self._bound.values()):
                continue
            fd, _when = self._notify.pop(domid, (None, 0.0))
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def notify(self, local_port: int) -> None:
        word = _PORT.pack(local_port & 0xFFFFFFFF)
        for domid in self._bound.get(local_port, ()):
            fd = self._notify_fd(domid)
            if fd is None:
                continue
            try:
                os.write(fd, word)
            except (BlockingIOError, InterruptedError):
                pass  # FIFO full: the guest has wake-ups pending already
            except OSError:
                # The guest went away (EPIPE...): open again next time.
                with contextlib.suppress(OSError):
                    os.close(fd)
                self._notify[domid] = (None, time.monotonic())

    def _notify_fd(self, domid: int) -> int | None:
        fd, failed_at = self._notify.get(domid, (None, 0.0))
        if fd is not None:
            return fd
        now = time.monotonic()
        if failed_at and now - failed_at < _NOTIFY_RETRY:
            return None
        path = os.path.join(self.ring_dir, f"notify-dom{domid}")
        try:
            # ENXIO when no guest holds it open, ENOENT when it does not
            # exist: both mean "this guest polls".
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self._notify[domid] = (None, now)
            return None
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            self._notify[domid] = (None, now)
            return None
        self._notify[domid] = (fd, 0.0)
        return fd

    def map_ring(self, domid: int, gfn: int) -> mmap.mmap:
        path = os.path.join(self.ring_dir, f"ring-dom{domid}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < RING_PAGE_SIZE:
                os.ftruncate(fd, RING_PAGE_SIZE)
            return mmap.mmap(fd, RING_PAGE_SIZE, mmap.MAP_SHARED)
        finally:
            os.close(fd)

    def unmap_ring(self, domid: int, page: RingMemory) -> None:
        release_ring_memory(page)

    def domains(self) -> dict[int, DomainInfo]:
        path = os.path.join(self.ring_dir, "domains")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return parse_domains(f.read())
        except FileNotFoundError:
            # As the C reference's shim: $XS_SHIM_DOMAINS, default dom0 only.
            return parse_domains(os.environ.get("XS_SHIM_DOMAINS", "0")) or {0: DomainInfo(0)}
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            return {0: DomainInfo(0)}

    def domain_info(self, domid: int) -> DomainInfo | None:
        # The file is read again each time: it is small, and the store asks
        # only for domains it has no record of (not per read or write).
        return self.domains().get(domid)

    def store_port(self) -> int:
        # As the shim's /proc/xen/xsd_port.
        try:
            return int(os.environ.get("XS_SHIM_DOM0_PORT", "1"), 0)
        except ValueError:
            return 1

    def preset_port(self, domid: int) -> int:
        path = os.path.join(self.ring_dir, f"ring-dom{domid}")
        try:
            with open(path, "rb") as f:
                f.seek(RING_EVTCHN_PORT)
                word = f.read(_PORT.size)
        except OSError:
            return 0
        return _PORT.unpack(word)[0] if len(word) == _PORT.size else 0

    def inheritable_fds(self) -> dict[str, int]:
        os.set_inheritable(self._evtchn, True)
        return {"evtchn": self._evtchn}

    def adopt_evtchn(self, fd: int, virq_port: int | None = None) -> None:
        # The FIFO is one pipe: our own descriptor of it reads the same
        # kicks, so the inherited one is closed.
        if fd >= 0 and fd != self._evtchn:
            with contextlib.suppress(OSError):
                os.close(fd)

    def restored_port(self, domid: int, local_port: int) -> int:
        # Local and remote ports are one number here.
        return self.bind_interdomain(domid, local_port)

    def prepare_exec(self) -> None:
        pass  # the FIFO descriptor is all a successor needs

    def exec_failed(self) -> None:
        pass

    def close(self) -> None:
        for fd, _when in self._notify.values():
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._notify.clear()
        self._bound.clear()
        with contextlib.suppress(OSError):
            os.close(self._evtchn)
