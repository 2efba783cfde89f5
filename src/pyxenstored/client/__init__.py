"""pyxenstored's own Xenstore client: one API over a unix socket or a shared ring.

Example::

    from pyxenstored.client import Client, Perm

    with Client.connect(timeout=10) as xs:   # the daemon's socket, else /dev/xen/xenbus
        xs.write("/vm/1/name", b"guest")
        assert xs.read("/vm/1/name") == b"guest"
        xs.set_perms("/vm/1", [Perm("n", 0), Perm("r", 1)])
        xs.watch("/vm", "tok", depth=1)
        print(xs.next_event(timeout=1))              # the initial event
        xs.run_transaction(lambda tx: tx.write("/vm/1/state", tx.read("/vm/1/name")))

    # A guest (domain 5, introduced with event channel port 7) on its ring:
    guest = Client.connect_ring("/run/ring-dir", 5, 7, timeout=10)
    guest.write("data/x", b"1")                     # relative: /local/domain/5/data/x

Errors from the daemon raise :class:`XsClientError`, an :class:`OSError` (and a
:class:`pyxenstored.wire.XsError`) whose ``errno`` is the error's number and
``name`` the wire error name; a broken connection raises
:class:`ClientConnectionError` (a :class:`ConnectionError`).  The API with
examples: ``docs/client.md``.
"""

from .core import Client, Perm, Transaction, WatchEvent, XsClientError
from .ring import RingTransport, create_ring_page
from .transport import (
    ClientConnectionError,
    DeviceTransport,
    SocketTransport,
    default_socket_path,
    socket_candidates,
)

__all__ = [
    "Client",
    "ClientConnectionError",
    "DeviceTransport",
    "Perm",
    "RingTransport",
    "SocketTransport",
    "Transaction",
    "WatchEvent",
    "XsClientError",
    "create_ring_page",
    "default_socket_path",
    "socket_candidates",
]
