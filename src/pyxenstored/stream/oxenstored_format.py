"""oxenstored's live-update state dump (``$xenstored-dump-format``): lines in, lines out.

oxenstored (the OCaml xenstored of ``tools/ocaml/xenstored`` in xen.git)
keeps its state across a live update in a text file, not in the migration
stream.  ``xenstored.ml:DB.to_channel`` writes it and
``xenstored.ml:DB.from_channel_f`` reads it; docs/oxenstored-format.md
describes every line.  In short, after the header line
``$xenstored-dump-format`` come comma-separated lines, strings in lower-case
hex (``utils.ml:hexify``)::

    global,<listening socket fd or -1>
    evtchn-dev,<event-channel fd>,<DOM_EXC VIRQ port>
    dom,<domid>,<ring mfn>,<guest's port>,<oxenstored's port>
    socket,<fd>
    watch,<domid, or -fd of a socket>,<hex path>,<hex token>
    store,<hex path>,<hex permissions>,<hex value>

This module is the sans-I/O core: :func:`parse_dump` turns bytes into an
:class:`OxDump` of frozen line records and :func:`format_dump` turns one back
into bytes.  Nothing is lost on the way: a line oxenstored would ignore
(unknown type, wrong field count, bad hex, a number or permission list it
cannot parse) is kept verbatim as an :class:`IgnoredLine` naming the rule it
breaks, and whether the file ends with a newline is recorded, so
``format_dump(parse_dump(data)) == data`` for every input that has the
header.  The reader is stricter than oxenstored in one way: numbers must be
plain decimal and hex lower-case, as oxenstored writes them (OCaml's
``int_of_string`` would also take ``0x10`` or ``1_0``); such lines are kept
as ignored lines and the checker reports them.

The meaning of the lines (which node needs which parent, which watch needs
which connection) is the checker's business (:mod:`.oxenstored_check`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .text import quote

#: The first line of every dump (``xenstored.ml:DB.dump_format_header``).
HEADER = b"$xenstored-dump-format"

#: Permission letters (``perms.ml:char_of_permty``): none, read, write, both.
PERM_LETTERS = "nrwb"

# OCaml's int is 63 bits on 64-bit hosts; nativeint (the mfn) is 64.
_INT_MIN, _INT_MAX = -(1 << 62), (1 << 62) - 1
_NATIVE_MIN, _NATIVE_MAX = -(1 << 63), (1 << 63) - 1
_DECIMAL = re.compile(rb"0|-?[1-9][0-9]*")
_UNSIGNED = re.compile(rb"0|[1-9][0-9]*")
_HEX = re.compile(rb"(?:[0-9a-f]{2})*")


class OxenstoredFormatError(ValueError):
    """The data is not an oxenstored dump at all (no header line).

    ``line`` is the 1-based line number of the problem.
    """

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(slots=True, frozen=True)
class GlobalLine:
    """``global``: the listening socket oxenstored hands over (-1: none).

    ``extra`` keeps fields after the first; oxenstored ignores them (an older
    version wrote a read-only socket there).
    """

    socket_fd: int
    extra: tuple[bytes, ...] = ()


@dataclass(slots=True, frozen=True)
class EvtchnDevLine:
    """``evtchn-dev``: the open event-channel device and its DOM_EXC VIRQ port."""

    fd: int
    domexc_port: int


@dataclass(slots=True, frozen=True)
class DomLine:
    """``dom``: a domain connection on a shared ring (``domain.ml:dump``).

    ``mfn`` is the ring page's frame (0 for dom0, whose page comes from
    ``xenstored-kva``), ``remote_port`` the guest's end of the event channel
    and ``local_port`` oxenstored's end, bound on the kept event-channel
    device.  Dumps from before Xen 4.17 have no ``local_port`` (None).
    ``extra`` keeps fields after it, which oxenstored ignores.
    """

    domid: int
    mfn: int
    remote_port: int
    local_port: int | None = None
    extra: tuple[bytes, ...] = ()


@dataclass(slots=True, frozen=True)
class SocketLine:
    """``socket``: an accepted unix-socket connection, by its descriptor."""

    fd: int


@dataclass(slots=True, frozen=True)
class WatchLine:
    """``watch``: a watch of the connection before it (``connection.ml:dump``).

    ``conn`` is the domid of a domain connection or minus the descriptor of
    a socket connection.  ``path`` is as the client gave it, relative paths
    included.
    """

    conn: int
    path: bytes
    token: bytes

    @property
    def socket_fd(self) -> int | None:
        """The socket's descriptor when ``conn`` names a socket, else None."""
        return -self.conn if self.conn < 0 else None


@dataclass(slots=True, frozen=True)
class OxPerm:
    """One permission entry: letter ``n``, ``r``, ``w`` or ``b`` and a domid."""

    letter: str
    domid: int

    def __str__(self) -> str:
        return f"{self.letter}{self.domid}"


@dataclass(slots=True, frozen=True)
class StoreLine:
    """``store``: one node, parents before children (``store.ml:traversal``).

    ``perms[0]`` is the owner with the permission everyone else gets, the
    rest are the access list (``perms.ml:Node``).
    """

    path: bytes
    perms: tuple[OxPerm, ...]
    value: bytes


@dataclass(slots=True, frozen=True)
class IgnoredLine:
    """A line oxenstored would skip, kept byte for byte.

    ``rule`` is the checker rule it breaks (``unknown-line``,
    ``bad-field-count``, ``bad-number``, ``bad-hex``, ``bad-perms``) and
    ``detail`` says what is wrong.
    """

    text: bytes
    rule: str
    detail: str


DumpLine = GlobalLine | EvtchnDevLine | DomLine | SocketLine | WatchLine | StoreLine | IgnoredLine


@dataclass(slots=True, frozen=True)
class OxDump:
    """A whole dump: its lines after the header, in file order.

    ``final_newline`` is False when the last line has no newline (oxenstored
    writes one after every line; a file without it was most likely cut
    short, although oxenstored still reads the last line).
    """

    lines: tuple[DumpLine, ...] = ()
    final_newline: bool = True

    def numbered(self) -> Iterator[tuple[int, DumpLine]]:
        """``(line number, line)`` pairs; the header is line 1."""
        for index, line in enumerate(self.lines):
            yield index + 2, line


def _int(field: bytes, what: str, low: int = _INT_MIN, high: int = _INT_MAX) -> int:
    if not _DECIMAL.fullmatch(field):
        raise _LineError("bad-number", f"{what} {_show(field)} is not a decimal number")
    value = int(field)
    if not low <= value <= high:
        raise _LineError("bad-number", f"{what} {value} is out of range")
    return value


def _hex(field: bytes, what: str) -> bytes:
    if not _HEX.fullmatch(field):
        raise _LineError("bad-hex", f"{what} {_show(field)} is not lower-case hex of whole bytes")
    return bytes.fromhex(field.decode("ascii"))


def parse_perms(raw: bytes) -> tuple[OxPerm, ...]:
    """The entries of a NUL-separated permission string such as ``b"n0\\x00r1"``.

    The form ``perms.ml:Node.to_string`` writes: at least one entry, each a
    letter and a non-negative decimal domid, no trailing NUL.  Raises
    :class:`ValueError` otherwise.
    """
    perms = []
    for entry in raw.split(b"\0"):
        letter = entry[:1].decode("latin-1")
        digits = entry[1:]
        if not letter or letter not in PERM_LETTERS:
            raise ValueError(f"permission {_show(entry)} does not start with n, r, w or b")
        if not _UNSIGNED.fullmatch(digits) or int(digits) > _INT_MAX:
            raise ValueError(f"permission {_show(entry)} has no plain decimal domid")
        perms.append(OxPerm(letter, int(digits)))
    return tuple(perms)


def format_perms(perms: tuple[OxPerm, ...]) -> bytes:
    """The NUL-separated permission string of ``perms``."""
    return b"\0".join(f"{p.letter}{p.domid}".encode() for p in perms)


class _LineError(Exception):
    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


def _show(field: bytes, limit: int = 40) -> str:
    text = quote(field[:limit])
    return text + ("..." if len(field) > limit else "")


def _expect(fields: list[bytes], count: int, kind: str) -> None:
    if len(fields) != count:
        raise _LineError(
            "bad-field-count", f"{kind} line has {len(fields)} fields, oxenstored reads {count}"
        )


def _parse_global(fields: list[bytes]) -> DumpLine:
    if len(fields) < 2:
        raise _LineError("bad-field-count", "global line without its socket field")
    return GlobalLine(_int(fields[1], "socket fd"), tuple(fields[2:]))


def _parse_evtchn(fields: list[bytes]) -> DumpLine:
    _expect(fields, 3, "evtchn-dev")
    return EvtchnDevLine(_int(fields[1], "fd"), _int(fields[2], "DOM_EXC port"))


def _parse_dom(fields: list[bytes]) -> DumpLine:
    if len(fields) < 4:
        raise _LineError(
            "bad-field-count", f"dom line has {len(fields)} fields, oxenstored reads 4 or 5"
        )
    domid = _int(fields[1], "domid")
    mfn = _int(fields[2], "mfn", _NATIVE_MIN, _NATIVE_MAX)
    remote = _int(fields[3], "remote port")
    local = _int(fields[4], "local port") if len(fields) > 4 else None
    return DomLine(domid, mfn, remote, local, tuple(fields[5:]))


def _parse_socket(fields: list[bytes]) -> DumpLine:
    _expect(fields, 2, "socket")
    return SocketLine(_int(fields[1], "fd"))


def _parse_watch(fields: list[bytes]) -> DumpLine:
    _expect(fields, 4, "watch")
    return WatchLine(
        _int(fields[1], "connection"), _hex(fields[2], "path"), _hex(fields[3], "token")
    )


def _parse_store(fields: list[bytes]) -> DumpLine:
    _expect(fields, 4, "store")
    path = _hex(fields[1], "path")
    raw_perms = _hex(fields[2], "permissions")
    value = _hex(fields[3], "value")
    try:
        perms = parse_perms(raw_perms)
    except ValueError as exc:
        raise _LineError("bad-perms", str(exc)) from None
    return StoreLine(path, perms, value)


_PARSERS = {
    b"global": _parse_global,
    b"evtchn-dev": _parse_evtchn,
    b"dom": _parse_dom,
    b"socket": _parse_socket,
    b"watch": _parse_watch,
    b"store": _parse_store,
}


def parse_line(text: bytes) -> DumpLine:
    """One line (without its newline) as a line record; never raises."""
    fields = text.split(b",")
    parser = _PARSERS.get(fields[0])
    if parser is None:
        return IgnoredLine(text, "unknown-line", f"unknown line type {_show(fields[0], 20)}")
    try:
        return parser(fields)
    except _LineError as exc:
        return IgnoredLine(text, exc.rule, exc.detail)


def parse_dump(data: bytes) -> OxDump:
    """The dump in ``data``.

    Raises :class:`OxenstoredFormatError` only when the first line is not
    the header (oxenstored refuses such a file, ``Bad_format "header"``);
    every other problem is kept in the result for the checker.
    """
    if not data:
        raise OxenstoredFormatError(1, "empty file, expected the header " + HEADER.decode())
    raw = data.split(b"\n")
    final_newline = raw[-1] == b""
    if final_newline:
        raw.pop()
    if raw[0] != HEADER:
        raise OxenstoredFormatError(
            1, f"first line is {_show(raw[0])}, not the header {HEADER.decode()}"
        )
    return OxDump(tuple(parse_line(text) for text in raw[1:]), final_newline)


def looks_like_dump(data: bytes) -> bool:
    """True when ``data`` starts with the header line (for format sniffing)."""
    return data.startswith(HEADER) and data[len(HEADER) : len(HEADER) + 1] in (b"\n", b"")


def format_line(line: DumpLine) -> bytes:
    """One line record as oxenstored writes it (no newline)."""
    if isinstance(line, StoreLine):
        return b"store,%s,%s,%s" % (
            line.path.hex().encode(),
            format_perms(line.perms).hex().encode(),
            line.value.hex().encode(),
        )
    if isinstance(line, WatchLine):
        return b"watch,%d,%s,%s" % (line.conn, line.path.hex().encode(), line.token.hex().encode())
    if isinstance(line, DomLine):
        fields = [b"dom", b"%d" % line.domid, b"%d" % line.mfn, b"%d" % line.remote_port]
        if line.local_port is not None:
            fields.append(b"%d" % line.local_port)
        return b",".join(fields + list(line.extra))
    if isinstance(line, SocketLine):
        return b"socket,%d" % line.fd
    if isinstance(line, GlobalLine):
        return b",".join([b"global", b"%d" % line.socket_fd, *line.extra])
    if isinstance(line, EvtchnDevLine):
        return b"evtchn-dev,%d,%d" % (line.fd, line.domexc_port)
    return line.text


def format_dump(dump: OxDump) -> bytes:
    """The bytes of ``dump``: the header, then each line."""
    parts = [HEADER, *(format_line(line) for line in dump.lines)]
    return b"\n".join(parts) + (b"\n" if dump.final_newline else b"")


__all__ = [
    "HEADER",
    "PERM_LETTERS",
    "DomLine",
    "DumpLine",
    "EvtchnDevLine",
    "GlobalLine",
    "IgnoredLine",
    "OxDump",
    "OxPerm",
    "OxenstoredFormatError",
    "SocketLine",
    "StoreLine",
    "WatchLine",
    "format_dump",
    "format_line",
    "format_perms",
    "looks_like_dump",
    "parse_dump",
    "parse_line",
    "parse_perms",
]
