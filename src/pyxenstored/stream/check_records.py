"""The checker's record rules: one handler per record type, and what they remember.

:class:`RecordRules` holds the state of one check (connections,
transactions, domains, committed paths seen so far) and a handler per record
type.  The framing loop of :mod:`.check` calls the handler with the body in
place in its read buffer; the handler reports what breaks the rules of
:data:`.rules.RULES` and returns how many bytes of the body the record's
fields use.  Byte positions come from :mod:`.layout`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pyxenstored.wire import (
    ABS_PATH_MAX,
    DOMID_ANY,
    DOMID_FIRST_RESERVED,
    DOMID_INVALID,
    HEADER_SIZE,
    PAYLOAD_MAX,
    iter_frames,
)

from . import layout as L
from .oxenstored_quota import PRIVATE_QUOTA_NAMES
from .pathtrack import PathTracker
from .records import (
    ACCESS_READ,
    ACCESS_WRITTEN,
    CONN_FIELD_UNIQUE_ID,
    CONN_TYPE_SOCKET,
    KNOWN_QUOTA_NAMES,
    PERM_FLAG_STALE,
)
from .rules import RULES, CheckSummary, Diagnostic, Severity
from .text import quote
from .txmarks import is_marks_name_valid

# A node path: '/' alone or '/'-separated non-empty components of valid characters.
_PERM_LETTERS = frozenset(b"nrwb")
_NAME = re.compile(rb"[A-Za-z0-9_@\-]+")
_NODE_PATH = re.compile(rb"/|(?:/[A-Za-z0-9_@\-]+)+")
_SPECIAL_PATH = re.compile(rb"@[A-Za-z0-9_@\-/]*")
# A domain's home, the top of a domain-migration stream's nodes.
_HOME_PATH = re.compile(rb"/local/domain/[0-9]+")
# Watch paths may also be relative (resolved against the connection's home).
_WATCH_PATH = re.compile(rb"/|(?:/?[A-Za-z0-9_@\-]+)(?:/[A-Za-z0-9_@\-]+)*")

#: A handler: (buffer, body start, len) -> bytes of the body the fields use
#: (negative: the record really ends that many bytes after the body start,
#: before ``len`` says -- the C HEAD writer's WATCH_DATA_EXTENDED).
Handler = Callable[[bytes, int, int], int]


def _show(raw: bytes, limit: int = 80) -> str:
    text = raw[:limit].decode("ascii", "backslashreplace")
    return repr(text + ("..." if len(raw) > limit else ""))


class RecordRules:
    """State of one check: what the rules need to remember, nothing more."""

    def __init__(self, summary: CheckSummary, exact_limit: int) -> None:
        self.summary = summary
        self.out: list[Diagnostic] = []
        self.version = 2
        self.index: int | None = None
        self.offset = 0
        self.rtype: int | None = None
        self.seen_global = False
        self.seen_global_quota = False
        self.conns: dict[int, int] = {}  # conn-id -> conn-type
        self.transactions: set[tuple[int, int]] = set()
        self.pending_paths: dict[tuple[int, int], set[int]] = {}
        self.domains_c_knows: set[int] = {0}  # the privileged domain (domain.c:init_domains)
        self.domain_data_seen: set[int] = set()
        self.paths = PathTracker(exact_limit)
        self.specials: set[bytes] = set()
        self.handlers: list[Handler | None] = []
        self.setup(False)

    def setup(self, big_endian: bool) -> None:
        """Take the byte order of the stream (``flags`` bit 0)."""
        lay = L.layout_for(big_endian)
        self.layout = lay
        self.order = lay.order
        self.node_perm = lay.struct(L.NODE_DATA, L.NODE_PERM)
        self.handlers = [
            None,  # END is handled by the framing loop
            self.global_data,
            self.connection_data,
            self.watch_data,
            self.transaction_data,
            self.node_data,
            self.global_quota_data,
            self.domain_data,
            self.watch_data_extended,
        ]

    # -- reporting -----------------------------------------------------------

    def report(self, rule: str, message: str, offset: int | None = None) -> None:
        severity = RULES[rule][0]
        if severity is Severity.ERROR:
            self.summary.errors += 1
        else:
            self.summary.warnings += 1
        self.out.append(
            Diagnostic(
                rule,
                severity,
                self.index,
                self.offset if offset is None else offset,
                message,
                self.rtype,
            )
        )

    def at(self, body_offset: int) -> int:
        """Stream offset of a byte of the current record's body."""
        return self.offset + L.RECORD_HEADER_SIZE + body_offset

    # -- shared pieces -------------------------------------------------------

    def fixed(self, length: int, need: int) -> bool:
        if length < need:
            self.report(
                "body-too-short", f"len {length} is less than the fixed part ({need} bytes)"
            )
            return False
        return True

    def sized(self, length: int, need: int, what: str) -> bool:
        """Whether the body's own lengths (``need`` bytes) fit in ``len``."""
        if need > length:
            self.report("string-overrun", f"{what} need {need} bytes but len is {length}")
            return False
        self.not_oversized(length, need)
        return True

    def not_oversized(self, length: int, used: int) -> None:
        """``len`` may exceed the fields only by padding to the next multiple of 8."""
        if length >= L.padded(used) + L.ALIGNMENT:
            self.report(
                "len-mismatch", f"len {length} but the fields account for {used} bytes (+ padding)"
            )

    def cstring(self, buf: bytes, start: int, at: int, n: int, what: str) -> bytes | None:
        """The string of ``n`` bytes (with NUL) at body offset ``at``, or None if malformed."""
        a = start + at
        if n == 0:
            self.report("missing-nul", f"{what} has length 0 (no NUL terminator)", self.at(at))
            return None
        if buf[a + n - 1] != 0:
            self.report("missing-nul", f"{what} is not NUL-terminated", self.at(at + n - 1))
            return None
        s = buf[a : a + n - 1]
        if 0 in s:
            self.report(
                "embedded-nul", f"{what} contains a NUL before its end", self.at(at + s.index(0))
            )
            return None
        return s

    def token(self, buf: bytes, start: int, at: int, n: int) -> None:
        text = self.cstring(buf, start, at, n, "token")
        if text is not None:
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.report("bad-string-encoding", "token is not UTF-8", self.at(at + exc.start))

    def quota_block(self, buf: bytes, start: int, at: int, n: int, length: int) -> int:
        """Check ``n`` u32 values then ``n`` names at body offset ``at``; returns bytes used."""
        names_at = at + L.QUOTA_VALUE_SIZE * n
        if names_at > length:
            self.report(
                "string-overrun", f"{n} quota values need {names_at} bytes but len is {length}"
            )
            return length
        names_end = names_at
        seen: set[bytes] = set()
        count = 0
        end = start + length
        pos = start + names_at
        while count < n and pos < end:
            nul = buf.find(b"\0", pos, end)
            if nul < 0:
                break
            name = buf[pos:nul]
            if not name:
                # an empty string here is padding, not a name
                break
            count += 1
            self._quota_name(name, pos - start, seen)
            pos = nul + 1
            names_end = pos - start
        if count != n:
            self.report("quota-count-mismatch", f"{n} quota values but {count} names")
        return names_end

    def _quota_name(self, name: bytes, at: int, seen: set[bytes]) -> None:
        if name in seen:
            self.report(
                "quota-duplicate-name", f"quota name {quote(name)} appears twice", self.at(at)
            )
        seen.add(name)
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.report("bad-string-encoding", "quota name is not UTF-8", self.at(at + exc.start))
            text = name.decode("ascii", "replace")
        known = text in KNOWN_QUOTA_NAMES or text in PRIVATE_QUOTA_NAMES
        if not known and not is_marks_name_valid(text):
            self.report(
                "unknown-quota-name",
                f"quota name {quote(name)} is not known to the C daemon",
                self.at(at),
            )

    def check_domid(self, domid: int, what: str) -> None:
        if domid >= DOMID_FIRST_RESERVED and domid != DOMID_ANY:
            self.report("reserved-domid", f"{what} {domid:#x} is a reserved domid")

    def migration_top(self, path: bytes) -> bool:
        """A domain's home as the first node of a migration stream (no GLOBAL_DATA, no ``/``).

        Its parent is in the target's database, which the spec allows
        (NODE_DATA: "in the node database before the stream was started").
        """
        tracker = self.paths
        exact = tracker.exact
        return (
            not self.seen_global
            and not tracker.root_seen
            and exact is not None
            and len(exact) == 1
            and _HOME_PATH.fullmatch(path) is not None
        )

    # -- record handlers: each returns the bytes it used (the record's true extent) --

    def global_data(self, buf: bytes, start: int, length: int) -> int:
        if self.seen_global:
            self.report("duplicate-global-data", "second GLOBAL_DATA record")
        self.seen_global = True
        if not self.fixed(length, L.GLOBAL_DATA_SIZE):
            return length
        self.sized(length, L.GLOBAL_DATA_SIZE, "GLOBAL_DATA")
        return L.GLOBAL_DATA_SIZE

    def connection_data(self, buf: bytes, start: int, length: int) -> int:
        if not self.fixed(length, L.CONNECTION_DATA_OFFSET):
            return length
        in_len: int
        out_len: int
        conn_id, ctype, fields, domid, tdomid, _evtchn, in_len, resp_len, out_len = (
            self.layout.connection.unpack_from(buf, start)
        )
        if conn_id == 0:
            self.report("conn-id-zero", "conn-id 0 is reserved for committed nodes")
        elif conn_id in self.conns:
            self.report("conn-id-duplicate", f"conn-id {conn_id} was already defined")
        if ctype > CONN_TYPE_SOCKET:
            self.report("unknown-conn-type", f"conn-type {ctype}")
        if fields & ~CONN_FIELD_UNIQUE_ID:
            self.report("reserved-conn-fields", f"fields {fields:#06x}")
        has_uid = bool(fields & CONN_FIELD_UNIQUE_ID)
        if ctype == CONN_TYPE_SOCKET:
            self._socket_spec(buf, start, has_uid)
        else:
            self.check_domid(domid, "ring domid")
            self.domains_c_knows.add(domid)
            if tdomid != DOMID_INVALID:
                self.check_domid(tdomid, "tdomid")
                self.domains_c_knows.add(tdomid)
        if resp_len > out_len:
            self.report("out-resp-len-too-big", f"out-resp-len {resp_len} > out-data-len {out_len}")
        data_end = L.CONNECTION_DATA_OFFSET + in_len + out_len
        need = L.padded(data_end) + L.UNIQUE_ID_SIZE if has_uid else data_end
        if conn_id and conn_id not in self.conns:
            self.conns[conn_id] = ctype
        if not self.sized(length, need, "pending data and unique-id"):
            return length
        if in_len or out_len:
            self.pending_messages(buf, start, in_len, out_len, min(resp_len, out_len))
        if has_uid:
            # padding between the data and the 8-aligned unique-id
            gap = need - L.UNIQUE_ID_SIZE - data_end
            if gap and buf.count(0, start + data_end, start + data_end + gap) != gap:
                self.report(
                    "nonzero-padding", "padding before unique-id is not zero", self.at(data_end)
                )
        return need

    def _socket_spec(self, buf: bytes, start: int, has_uid: bool) -> None:
        pad = self.layout.socket_spec.unpack_from(buf, start + L.CONN_SPEC_OFFSET)[1]
        if pad:
            self.report(
                "nonzero-pad-field",
                "socket conn-spec pad is not zero",
                self.at(L.CONN_SPEC_OFFSET + 4),
            )
        if has_uid:
            self.report("unique-id-on-socket", "socket connection with fields bit 0 (unique-id)")

    def pending_messages(
        self, buf: bytes, start: int, in_len: int, out_len: int, resp: int
    ) -> None:
        """Pending data holds wire messages (header, payload; core.c:dump_state_buffered_data).

        They are in the byte order of the host that wrote the stream, which
        is the stream's own.
        """
        data = start + L.CONNECTION_DATA_OFFSET
        # input: complete messages, then possibly a partial one
        for pos, _type, _req, _tx, n in iter_frames(buf, data, data + in_len, self.order):
            if n > PAYLOAD_MAX:
                self.report(
                    "pending-message-too-long",
                    f"input message of {n} payload bytes",
                    self.at(pos - start),
                )
                break
        # output: a partial response (out-resp-len bytes), then whole messages
        base = data + in_len
        end = base + out_len
        nxt = base + resp
        for pos, _type, _req, _tx, n in iter_frames(buf, nxt, end, self.order):
            if n > PAYLOAD_MAX:
                self.report(
                    "pending-message-too-long",
                    f"output message of {n} payload bytes",
                    self.at(pos - start),
                )
                return
            nxt = pos + HEADER_SIZE + n
            if nxt > end:
                self.report(
                    "out-data-not-messages",
                    f"output message of {n} payload bytes runs past out-data-len",
                    self.at(pos - start),
                )
                return
        if nxt < end:
            self.report(
                "out-data-not-messages",
                f"{end - nxt} bytes left where a message header should be",
                self.at(nxt - start),
            )

    def _watch(self, conn_id: int, wpath: bytes | None) -> None:
        if conn_id not in self.conns:
            self.report("watch-unknown-conn", f"conn-id {conn_id} has no earlier CONNECTION_DATA")
        if (
            wpath is not None
            and _WATCH_PATH.fullmatch(wpath) is None
            and _SPECIAL_PATH.fullmatch(wpath) is None
        ):
            self.report("bad-watch-path", f"watch path {_show(wpath)}")

    def _watch_strings(
        self, buf: bytes, start: int, length: int, at: int, conn_id: int, plen: int, tlen: int
    ) -> int:
        """wpath and token at body offset ``at`` (their layout unknown); returns bytes used."""
        need = at + plen + tlen
        if not self.sized(length, need, "wpath and token"):
            self._watch(conn_id, None)
            return length
        wpath = self.cstring(buf, start, at, plen, "wpath")
        self.token(buf, start, at + plen, tlen)
        self._watch(conn_id, wpath)
        return need

    def watch_data(self, buf: bytes, start: int, length: int) -> int:
        if not self.fixed(length, L.WATCH_DATA_SIZE):
            return length
        conn_id, plen, tlen = self.layout.watch.unpack_from(buf, start)
        return self._watch_strings(buf, start, length, L.WATCH_DATA_SIZE, conn_id, plen, tlen)

    def watch_data_extended(self, buf: bytes, start: int, length: int) -> int:
        if self.version < 2:
            self.report(
                "type-not-in-version",
                "WATCH_DATA_EXTENDED needs version 2 (C HEAD writes it anyway)",
            )
        if not self.fixed(length, L.WATCH_DATA_SIZE):
            return length
        plen: int
        tlen: int
        conn_id, plen, tlen = self.layout.watch.unpack_from(buf, start)
        fits = L.watch_ext_fits(buf, start, start + length, plen, tlen)
        if not fits:
            # Report against the spec layout.
            if not self.fixed(length, L.WATCH_DATA_EXTENDED_SIZE):
                self._watch(conn_id, None)
                return length
            pad = start + L.WATCH_PAD_OFFSET
            if buf[pad] or buf[pad + 1]:
                self.report(
                    "nonzero-pad-field",
                    "WATCH_DATA_EXTENDED pad is not zero",
                    self.at(L.WATCH_PAD_OFFSET),
                )
            return self._watch_strings(
                buf, start, length, L.WATCH_DATA_EXTENDED_SIZE, conn_id, plen, tlen
            )
        at = L.WATCH_EXT_PATH_AT[fits[0]]
        if len(fits) > 1:
            offsets = [L.WATCH_EXT_PATH_AT[f] for f in fits]
            self.report(
                "watch-ext-ambiguous",
                f"body fits layouts with the path at offsets {offsets}; using {at}",
            )
        self._watch(conn_id, buf[start + at : start + at + plen - 1])
        self.token(buf, start, at + plen, tlen)
        used = at + plen + tlen
        if fits[0] == L.WATCH_EXT_C_READER:
            self.report(
                "watch-ext-c-reader-layout",
                "path at offset 10 (C HEAD reader layout, no pad field)",
            )
        elif fits[0] == L.WATCH_EXT_C_HEAD_WRITER:
            self.report(
                "c-head-watch-ext-defect", "no depth field: the C HEAD writer bug; depth is lost"
            )
            true_end = L.c_head_writer_extent(plen, tlen)
            if true_end < length:
                # The C writer wrote only this much; the next record starts here.
                return -true_end
            return used
        self.not_oversized(length, used)
        return used

    def transaction_data(self, buf: bytes, start: int, length: int) -> int:
        if not self.fixed(length, L.TRANSACTION_DATA_SIZE):
            return length
        conn_id, tx_id = self.layout.transaction.unpack_from(buf, start)
        self.sized(length, L.TRANSACTION_DATA_SIZE, "TRANSACTION_DATA")
        if conn_id not in self.conns:
            self.report(
                "transaction-unknown-conn", f"conn-id {conn_id} has no earlier CONNECTION_DATA"
            )
        key = (conn_id, tx_id)
        if key in self.transactions:
            self.report("transaction-duplicate", f"transaction {tx_id} of conn-id {conn_id} twice")
        self.transactions.add(key)
        return L.TRANSACTION_DATA_SIZE

    # -- NODE_DATA -----------------------------------------------------------

    def node_data(self, buf: bytes, start: int, length: int) -> int:
        if length < L.NODE_DATA_SIZE:
            self.report("body-too-short", f"len {length} is less than the fixed part (16 bytes)")
            return length
        conn_id: int
        tx_id: int
        plen: int
        vlen: int
        access: int
        nperm: int
        if length >= L.NODE_DATA_SIZE + L.NODE_PERM_SIZE:
            # the fixed part and the first permission in one go
            conn_id, tx_id, plen, vlen, access, nperm, letter, flag, first_domid = (
                self.node_perm.unpack_from(buf, start)
            )
        else:
            conn_id, tx_id, plen, vlen, access, nperm = self.layout.node.unpack_from(buf, start)
        path_at = L.NODE_DATA_SIZE + L.NODE_PERM_SIZE * nperm
        need = path_at + plen + vlen
        if (
            0 < nperm < 3
            and not conn_id | tx_id | access
            and need <= length < need + 8 + (-need & 7)
            and plen > 1
            and self._in_order_child(buf, start, path_at, plen, nperm, letter, flag, first_domid)
        ):
            # (need <= length and nperm > 0 imply that the first permission was unpacked.)
            return need
        if (need > length or length >= L.padded(need) + L.ALIGNMENT) and not self.sized(
            length, need, "permissions, path and value"
        ):
            return length
        owner = self._node_perms(buf, start, nperm, path_at) if nperm else None
        path = self._node_path(buf, start, path_at, plen)
        if conn_id == 0:
            self._committed_node(tx_id, access, nperm, owner, path)
        else:
            self._pending_node(conn_id, tx_id, access, nperm, vlen, path)
        return need

    def _in_order_child(
        self,
        buf: bytes,
        start: int,
        path_at: int,
        plen: int,
        nperm: int,
        letter: int,
        flag: int,
        owner: int,
    ) -> bool:
        """The common case (C's own streams), checked quickly and recorded.

        A committed node with one or two valid permissions, owned by a
        domain C knows, arriving as a new child of the innermost open node,
        under a valid name.  False (nothing reported, nothing recorded) for
        anything else: the full rules decide then.
        """
        if nperm == 2:
            # fold the second entry's checks into the first one's
            letter2, flag2, _ = self.layout.perm.unpack_from(buf, start + 20)
            if letter2 not in _PERM_LETTERS:
                letter = letter2
            flag |= flag2
        pa = start + path_at
        cut = buf.rfind(b"/", pa, pa + plen - 1) - pa
        if (
            cut < 0
            or buf[pa] != 0x2F  # absolute: the root stays on the tracker's stack
            or letter not in _PERM_LETTERS
            or flag > PERM_FLAG_STALE
            or owner not in self.domains_c_knows
            or buf[pa + plen - 1] != 0
            or plen > ABS_PATH_MAX + 1
        ):
            return False
        path = buf[pa : pa + plen - 1]
        if not _NAME.fullmatch(path, cut + 1):
            return False
        return self.paths.add_in_order(path, cut)

    def _node_perms(self, buf: bytes, start: int, nperm: int, path_at: int) -> int:
        """Check the permission letters and flags; returns the owner (first entry's domid)."""
        perms_at = start + L.NODE_DATA_SIZE
        # fast path: one entry, or every letter valid and every flag 0 or 1
        if nperm == 1:
            bad = buf[perms_at] not in _PERM_LETTERS or buf[perms_at + 1] > PERM_FLAG_STALE
        else:
            perm_bytes = buf[perms_at : start + path_at]
            bad = bool(perm_bytes[0::4].strip(b"nrwb") or perm_bytes[1::4].strip(b"\0\1"))
        if bad:
            for i in range(nperm):
                at = L.NODE_DATA_SIZE + L.NODE_PERM_SIZE * i
                letter, flag, _ = self.layout.perm.unpack_from(buf, start + at)
                if letter not in _PERM_LETTERS:
                    self.report(
                        "bad-perm-letter",
                        f"permission {i} letter {quote(bytes([letter]))}",
                        self.at(at),
                    )
                if flag & ~PERM_FLAG_STALE:
                    self.report(
                        "reserved-perm-flags", f"permission {i} flags {flag:#04x}", self.at(at + 1)
                    )
        owner: int = self.layout.u16.unpack_from(buf, perms_at + 2)[0]
        return owner

    def _node_path(self, buf: bytes, start: int, path_at: int, plen: int) -> bytes | None:
        """The node's path if it follows the path rules (reported otherwise)."""
        pa = start + path_at
        if plen == 0 or buf[pa + plen - 1] != 0:
            path = self.cstring(buf, start, path_at, plen, "path")
        else:
            path = buf[pa : pa + plen - 1]
        if path is None:
            return None
        if plen > ABS_PATH_MAX + 1:
            self.report("path-too-long", f"path of {plen - 1} bytes")
        if (_SPECIAL_PATH if path[:1] == b"@" else _NODE_PATH).fullmatch(path) is None:
            if 0 in path:
                self.report(
                    "embedded-nul",
                    "path contains a NUL before its end",
                    self.at(path_at + path.index(0)),
                )
            else:
                self.report("bad-path", f"path {_show(path)}")
            return None
        return path

    def _committed_node(
        self, tx_id: int, access: int, nperm: int, owner: int | None, path: bytes | None
    ) -> None:
        if tx_id or access:
            self.report(
                "committed-node-tx-fields",
                f"tx-id {tx_id} access {access:#x} on a committed node",
            )
        if nperm == 0:
            self.report("perm-count-zero", "committed node without permissions")
        elif owner is not None and owner not in self.domains_c_knows:
            if owner != DOMID_ANY:
                self.report(
                    "node-owner-unknown-to-c",
                    f"owner domain {owner} has no domain record in a C reader at this point",
                )
            # C counts the node for its owner: that allocates the domain record.
            self.domains_c_knows.add(owner)
        if path is None:
            return
        if path[:1] == b"@":
            if path in self.specials:
                self.report("node-duplicate", f"special node {_show(path)} twice")
            self.specials.add(path)
            return
        parent_ok, dup = self.paths.add(path)
        if not parent_ok and not self.migration_top(path):
            self.report("node-parent-missing", f"parent of {_show(path)} is not an earlier node")
        if dup:
            self.report("node-duplicate", f"path {_show(path)} twice")
        elif dup is None:
            self.report(
                "node-maybe-duplicate",
                f"path {_show(path)} is probably a duplicate (bounded-memory check)",
            )

    def _pending_node(
        self, conn_id: int, tx_id: int, access: int, nperm: int, vlen: int, path: bytes | None
    ) -> None:
        key = (conn_id, tx_id)
        if key not in self.transactions:
            self.report(
                "node-unknown-transaction",
                f"transaction {tx_id} of conn-id {conn_id} has no earlier TRANSACTION_DATA",
            )
        if access & ~(ACCESS_READ | ACCESS_WRITTEN):
            self.report("reserved-access-bits", f"access {access:#06x}")
        # No permissions: deleted in the transaction (access 0), or read while
        # it did not exist (access read).  Neither has a value or was written.
        if nperm == 0 and (vlen or access & ACCESS_WRITTEN):
            self.report(
                "deleted-node-inconsistent",
                "node without permissions (deleted, or read while absent) with a value "
                "or written access",
            )
        if path is not None:
            seen = self.pending_paths.setdefault(key, set())
            h = hash(path)
            if h in seen:
                self.report(
                    "pending-node-duplicate", f"path {_show(path)} twice in transaction {tx_id}"
                )
            seen.add(h)

    # -- quota ---------------------------------------------------------------

    def global_quota_data(self, buf: bytes, start: int, length: int) -> int:
        if self.seen_global_quota:
            self.report("duplicate-global-quota-data", "second GLOBAL_QUOTA_DATA record")
        self.seen_global_quota = True
        if not self.fixed(length, L.GLOBAL_QUOTA_DATA_SIZE):
            return length
        n_dom, n_glob = self.layout.global_quota.unpack_from(buf, start)
        used = self.quota_block(buf, start, L.GLOBAL_QUOTA_DATA_SIZE, n_dom + n_glob, length)
        self.not_oversized(length, used)
        return used

    def domain_data(self, buf: bytes, start: int, length: int) -> int:
        if not self.fixed(length, L.DOMAIN_DATA_SIZE):
            return length
        domid, n, features = self.layout.domain.unpack_from(buf, start)
        self.check_domid(domid, "domain-id")
        if domid in self.domain_data_seen:
            self.report("domain-duplicate", f"second DOMAIN_DATA for domain {domid}")
        self.domain_data_seen.add(domid)
        if domid not in self.domains_c_knows:
            self.report(
                "domain-unknown-to-c",
                f"domain {domid} has no connection, node or target before this record",
            )
        if features and self.version < 2:
            self.report("features-in-v1", f"features {features:#x} in a version 1 stream")
        used = self.quota_block(buf, start, L.DOMAIN_DATA_SIZE, n, length)
        self.not_oversized(length, used)
        return used
