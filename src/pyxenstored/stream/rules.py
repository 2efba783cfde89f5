"""The checker's rules and findings: names, severities, diagnostics, totals.

:data:`RULES` is the table of every rule :func:`.check.check_stream` knows:
a stable name (scripts match on it), a severity and what it means.
docs/stream.md lists the same table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .records import type_name


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


E = Severity.ERROR
W = Severity.WARNING

#: rule name -> (severity, what it means).  Names are stable: scripts match on them.
RULES: dict[str, tuple[Severity, str]] = {
    # preamble and framing
    "bad-ident": (E, "the preamble does not start with 'xenstore'"),
    "bad-version": (E, "version is neither 1 nor 2"),
    "reserved-flags": (E, "flags bits 1-31 are reserved and must be zero"),
    "truncated": (E, "the file ends inside the preamble, a record header, a body or its padding"),
    "unpadded-len": (
        W,
        "len is not a multiple of 8; C readers would lose sync (lu.c:lu_read_state)",
    ),
    "nonzero-padding": (W, "padding bytes are not zero (C leaves them unset in quota records)"),
    "unknown-record-type": (W, "record type is reserved (9 and up); C skips it"),
    "type-not-in-version": (E, "record type not valid in the stream's version"),
    "end-nonempty": (E, "END record with a non-zero len"),
    "end-missing": (E, "the stream stops without an END record"),
    "end-not-last": (E, "records follow the END record (C ignores them)"),
    "data-after-end": (E, "bytes follow the END record"),
    # body sizes and strings
    "body-too-short": (E, "len is smaller than the record's fixed part"),
    "string-overrun": (E, "a length field runs past the end of the record"),
    "len-mismatch": (E, "len is larger than the record's own lengths (plus padding) account for"),
    "missing-nul": (E, "a string does not end with its NUL terminator"),
    "embedded-nul": (E, "a string contains a NUL before its terminator"),
    "bad-string-encoding": (
        E,
        "a token or quota name is not valid UTF-8 (it cannot be decoded as text)",
    ),
    "nonzero-pad-field": (W, "a pad field inside a record is not zero"),
    # once-only records
    "duplicate-global-data": (E, "more than one GLOBAL_DATA record"),
    "duplicate-global-quota-data": (E, "more than one GLOBAL_QUOTA_DATA record"),
    # connections
    "conn-id-zero": (E, "CONNECTION_DATA with conn-id 0"),
    "conn-id-duplicate": (E, "two CONNECTION_DATA records with the same conn-id"),
    "unknown-conn-type": (E, "conn-type is neither 0 (ring) nor 1 (socket); C treats it as a ring"),
    "reserved-conn-fields": (E, "CONNECTION_DATA fields has bits other than 0x0001"),
    "unique-id-on-socket": (W, "a socket connection carries a unique-id"),
    "out-resp-len-too-big": (E, "out-resp-len is larger than out-data-len"),
    "pending-message-too-long": (
        W,
        "a message in the pending data announces more than 4096 payload bytes",
    ),
    "out-data-not-messages": (
        W,
        "out data after out-resp-len does not split into whole messages (C parses it so)",
    ),
    "reserved-domid": (
        W,
        "a domid in the reserved range (0x7FF0 and up) where a real domain is meant",
    ),
    # watches and transactions
    "watch-unknown-conn": (E, "watch of a conn-id without an earlier CONNECTION_DATA (C aborts)"),
    "bad-watch-path": (E, "watch path breaks the path rules of xenstore.txt"),
    "watch-ext-c-reader-layout": (
        W,
        "WATCH_DATA_EXTENDED in the C HEAD reader layout (path at 10)",
    ),
    "c-head-watch-ext-defect": (
        E,
        "WATCH_DATA_EXTENDED as the C HEAD writer emits it: no depth, wrong len "
        "(watch.c:dump_state_watches)",
    ),
    "watch-ext-ambiguous": (W, "WATCH_DATA_EXTENDED body fits more than one layout"),
    "transaction-unknown-conn": (
        E,
        "TRANSACTION_DATA of a conn-id without an earlier CONNECTION_DATA",
    ),
    "transaction-duplicate": (E, "the same (conn-id, tx-id) twice"),
    # nodes
    "node-unknown-transaction": (
        E,
        "pending-transaction NODE_DATA whose (conn-id, tx-id) has no earlier TRANSACTION_DATA",
    ),
    "node-parent-missing": (E, "committed node whose parent is neither '/' nor an earlier node"),
    "node-duplicate": (E, "the same committed path twice"),
    "node-maybe-duplicate": (
        W,
        "out-of-tree-order node that the bounded-memory filter has seen before",
    ),
    "pending-node-duplicate": (E, "the same path twice in one pending transaction"),
    "bad-path": (
        E,
        "node path breaks the rules of xenstore.txt (characters, '//', trailing '/', empty, not absolute)",
    ),
    "path-too-long": (E, "path longer than 3072 bytes (xenstore.txt)"),
    "bad-perm-letter": (E, "permission letter other than n, r, w, b"),
    "reserved-perm-flags": (W, "permission flags other than 0x01 (stale)"),
    "perm-count-zero": (
        E,
        "committed node without permissions (no owner; C reads past the record)",
    ),
    "reserved-access-bits": (W, "NODE_DATA access has bits other than read/written"),
    "committed-node-tx-fields": (
        W,
        "committed node with non-zero tx-id or access (ignored by spec)",
    ),
    "deleted-node-inconsistent": (
        W,
        "pending node with perm-count 0 (deleted, or read while absent) but a value or "
        "the written access bit",
    ),
    "node-owner-unknown-to-c": (
        W,
        "node owner has no domain record yet; the C reader aborts the restore (core.c:read_state_node)",
    ),
    # quota and domains
    "quota-count-mismatch": (E, "number of quota names differs from the number of values"),
    "quota-duplicate-name": (E, "a quota name appears twice in one record"),
    "unknown-quota-name": (
        W,
        "quota name unknown to the C daemon (dropped by it), not pyxenstored's own "
        "transaction marks and not one of oxenstored's private names",
    ),
    "features-in-v1": (E, "DOMAIN_DATA features non-zero in a version 1 stream"),
    "domain-duplicate": (E, "DOMAIN_DATA twice for one domain"),
    "domain-unknown-to-c": (
        W,
        "DOMAIN_DATA for a domain C cannot find at that point; the C reader aborts "
        "(domain.c:read_state_domain)",
    ),
}


@dataclass(slots=True, frozen=True)
class Diagnostic:
    """One finding: a rule broken at a place in the stream."""

    rule: str
    severity: Severity
    record: int | None
    offset: int
    message: str
    record_type: int | None = None

    def __str__(self) -> str:
        where = "header" if self.record is None else f"record {self.record}"
        if self.record_type is not None:
            where += f" ({type_name(self.record_type)})"
        return f"offset {self.offset:#x} {where}: {self.severity} [{self.rule}] {self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "severity": str(self.severity),
            "record": self.record,
            "record_type": None if self.record_type is None else type_name(self.record_type),
            "offset": self.offset,
            "message": self.message,
        }


@dataclass(slots=True)
class CheckSummary:
    """Totals of a finished check (filled in while :func:`check_stream` runs)."""

    records: int = 0
    bytes_read: int = 0
    errors: int = 0
    warnings: int = 0
    version: int | None = None
    big_endian: bool | None = None
    ended: bool = False
