"""CONTROL ``domain-state-save`` / ``domain-state-restore``: the daemon's half of domain migration.

``domain-state-save <domid> <file>`` writes the migration stream of one
introduced domain (``migrate.domain.save_domain``) with its ring
connection's pending data as the server holds it; the domain is not
touched.  ``domain-state-restore <file> <domid>`` loads such a stream for a
domain introduced here (``migrate.domain.import_domain``), queues the
carried output on its ring connection (watch-event paths moved to the new
domid), feeds it the carried input, and writes its features to the ring
page.  Relative file names resolve in the daemon's run directory.

Replies: ``OK``, or a one-line error text saying why nothing was done (as
the live-update command does); malformed arguments are ``EINVAL``.  The
sequence around these commands is in ``docs/migration.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from pyxenstored.migrate.domain import (
    DomainMigrationError,
    check_saveable,
    find_connection,
    import_domain,
    save_domain,
)
from pyxenstored.server.connection import Connection
from pyxenstored.server.control_hooks import ServerControlHooks
from pyxenstored.server.loop import Server
from pyxenstored.server.ring_domains import RING_FEATURES, RingDomains
from pyxenstored.store import Store
from pyxenstored.stream.reader import StreamError, StreamReader
from pyxenstored.stream.records import CONN_TYPE_RING, ConnectionData, Record, RingSpec
from pyxenstored.stream.writer import StreamWriteError, StreamWriter
from pyxenstored.wire import (
    DOMID_INVALID,
    FEATURE_ERROR,
    RING_SERVER_FEATURES,
    XsError,
    parse_domid,
)

log = logging.getLogger("pyxenstored.server")

_NATIVE_BIG = sys.byteorder == "big"


def _text(message: str) -> bytes:
    return message.encode("utf-8", "replace") + b"\0"


class DomainStateControl:
    """The domain-state CONTROL commands for one server, its store and (optionally) its rings."""

    def __init__(
        self, server: Server, store: Store, base_dir: str, rings: RingDomains | None = None
    ) -> None:
        self.server = server
        self.store = store
        self.base_dir = base_dir
        self.rings = rings

    def install(self, hooks: ServerControlHooks) -> None:
        hooks.domain_stater = self.control

    def _path(self, raw: bytes) -> str:
        path = os.fsdecode(raw)
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)

    def control(self, command: str, args: list[bytes]) -> bytes:
        if len(args) != 2:
            raise XsError("EINVAL", f"{command} takes two arguments")
        try:
            if command == "domain-state-save":
                return self.save(parse_domid(args[0]), self._path(args[1]))
            return self.restore(self._path(args[0]), parse_domid(args[1]))
        except DomainMigrationError as exc:
            log.warning("%s: %s", command, exc)
            return _text(f"{command}: {exc}")

    # --- save ------------------------------------------------------------------------

    def connection_record(self, domid: int) -> ConnectionData:
        """The domain's ring connection with what the server holds for it."""
        conn_id = find_connection(self.store, domid)
        conn = self.server.connection(conn_id)
        dom = self.store.domains.get(domid)
        target = dom.target if dom is not None and dom.target is not None else DOMID_INVALID
        if conn is None:
            return ConnectionData(conn_id, CONN_TYPE_RING, 0, RingSpec(domid, target, 0))
        queued = conn.output_head()
        if queued is not None and queued[1]:  # a message half written to the ring
            raise DomainMigrationError(
                f"domain {domid}: a reply is half written to its ring; retry when the guest "
                "has read it"
            )
        spec: RingSpec = RingSpec(domid, target, 0)
        describe = getattr(conn.transport, "migration_spec", None)
        if describe is not None:
            described = describe()[0]
            if isinstance(described, RingSpec):
                spec = described
        return ConnectionData(
            conn_id, CONN_TYPE_RING, 0, spec, conn.pending_input(), conn.pending_output()
        )

    def save(self, domid: int, path: str) -> bytes:
        check_saveable(self.store, domid)
        records = save_domain(self.store, domid, self.connection_record(domid))
        _write(records, path)
        log.info("domain-state-save: domain %d to %s (%d records)", domid, path, len(records))
        return b"OK\0"

    # --- restore ---------------------------------------------------------------------

    def restore(self, path: str, domid: int) -> bytes:
        try:
            with StreamReader(path) as reader:
                header = reader.header
                records: list[Record] = list(reader)
        except StreamError as exc:
            raise DomainMigrationError(f"{path}: not a readable stream: {exc}") from None
        except OSError as exc:
            raise DomainMigrationError(f"{path}: {exc.strerror or exc}") from None
        first = records[0] if records else None
        if (
            isinstance(first, ConnectionData)
            and (first.in_data or first.out_data)
            and header.big_endian != _NATIVE_BIG
        ):
            raise DomainMigrationError(
                f"{path}: pending data in the other byte order (convert the stream first)"
            )
        done = import_domain(self.store, records, domid, version=header.version)
        conn = self.server.connection(done.conn_id)
        if conn is not None:
            self._resume(conn, done.in_data, done.out_data)
        ring = self.rings.ring(domid) if self.rings is not None else None
        if ring is not None:
            # The page's feature word is the domain's (its page moved with it),
            # and the error field is written only with feature ERROR
            # (domain.c:ignore_connection).
            ring.page.set_word(RING_SERVER_FEATURES, done.features | RING_FEATURES)
            transport = ring.transport
            if transport is not None:
                transport.report_errors = bool(done.features & FEATURE_ERROR)
        self.server.refresh_limits()
        log.info(
            "domain-state-restore: domain %d (was %d) from %s: %d nodes, %d watches, "
            "%d transactions",
            domid,
            done.old_domid,
            path,
            done.nodes,
            done.watches,
            done.transactions,
        )
        return b"OK\0"

    def _resume(self, conn: Connection, in_data: bytes, out_data: bytes) -> None:
        """Queue the carried output and input on the domain's connection here."""
        if out_data:
            conn.restore_output(out_data)
            self.server.flush_soon(conn)
        if in_data:
            conn.reader.feed(in_data)
            self.server.release(conn)


def _write(records: list[Record], path: str) -> None:
    """Write the stream next to ``path`` and rename it into place (never half a file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with StreamWriter(tmp, version=2) as writer:
            writer.write_all(records)
        os.replace(tmp, path)
    except (OSError, StreamWriteError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise DomainMigrationError(f"cannot write {path}: {exc}") from None
