"""The Xenstore wire protocol: message header, types, error names, path rules.

Sans-I/O: everything here turns bytes into values and back.  The header is
four native-order u32 (``type``, ``req_id``, ``tx_id``, ``len``), followed by
``len`` payload bytes (at most :data:`PAYLOAD_MAX`).
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

PAYLOAD_MAX = 4096
ABS_PATH_MAX = 3072  # defined by xs_wire.h, never enforced by C (core.c:canonicalize)
REL_PATH_MAX = 2048  # default of the ``path-max`` quota
RING_SIZE = 1024

#: The message header (xs_wire.h ``struct xsd_sockmsg``): type, req_id, tx_id, len.
HEADER = struct.Struct("=IIII")
HEADER_SIZE = HEADER.size
# The header in either byte order, for messages kept in a migration stream
# written on a host of the other order (see iter_frames).
_HEADERS = {"=": HEADER, "<": struct.Struct("<IIII"), ">": struct.Struct(">IIII")}

# Domain ids (xen.h)
DOMID_FIRST_RESERVED = DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4
DOMID_ANY = 0x7FF5
DOMID_IDLE = 0x7FFF

# Server feature bits (xs_wire.h, xenstore-ring.txt)
FEATURE_RECONNECTION = 1
FEATURE_ERROR = 2
FEATURE_WATCHDEPTH = 4
FEATURE_DOMID_ANY = 8

# The shared ring page (xenstore-ring.txt, xs_wire.h
# ``struct xenstore_domain_interface``): byte offsets of each field.  Every
# u32 is native byte order; the indices are free-running and wrap at 2**32.
RING_PAGE_SIZE = 4096
RING_REQ_OFFSET = 0
RING_RSP_OFFSET = RING_SIZE
RING_REQ_CONS = 2048
RING_REQ_PROD = 2052
RING_RSP_CONS = 2056
RING_RSP_PROD = 2060
RING_SERVER_FEATURES = 2064
RING_CONNECTION = 2068
RING_ERROR = 2072
RING_EVTCHN_PORT = 2076  # HEAD xs_wire.h only; not in the ring document
RING_INDEX_MASK = 0xFFFFFFFF

# Ring connection state and error indicator values
RING_CONNECTED = 0
RING_RECONNECT = 1
RING_ERROR_NONE = 0
RING_ERROR_COMM = 1
RING_ERROR_RINGIDX = 2
RING_ERROR_PROTO = 3


class MsgType(enum.IntEnum):
    """Message types 0-26 (xs_wire.h ``enum xsd_sockmsg_type``)."""

    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT = 20  # removed from the protocol; a request gets ENOSYS
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26


TYPE_COUNT = 27
XS_INVALID = 0xFFFF

# The error table is append-only; its order is part of the protocol.
ERROR_NAMES: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)
_ERROR_SET = frozenset(ERROR_NAMES)

OK = b"OK\0"


class XsError(Exception):
    """A protocol error: carries one name of the wire error table."""

    def __init__(self, name: str, detail: str = "") -> None:
        if name not in _ERROR_SET:
            # C maps any errno outside the table to EINVAL (core.c:send_error).
            name = "EINVAL"
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name
        self.detail = detail

    @property
    def payload(self) -> bytes:
        return self.name.encode("ascii") + b"\0"


@dataclass(slots=True, frozen=True)
class Header:
    type: int
    req_id: int
    tx_id: int
    len: int

    def pack(self) -> bytes:
        return HEADER.pack(self.type, self.req_id, self.tx_id, self.len)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> Header:
        return cls(*HEADER.unpack_from(data))


def pack_message(type_: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """One whole message, header and payload."""
    return HEADER.pack(type_, req_id, tx_id, len(payload)) + payload


#: What :func:`iter_frames` yields: offset of the header, type, req_id, tx_id, len.
Frame = tuple[int, int, int, int, int]


def iter_frames(
    data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None, order: str = "="
) -> Iterator[Frame]:
    """The message headers in ``data[pos:end]``, one ``(offset, type, req_id, tx_id, len)`` each.

    The one walk over back-to-back messages: a header at ``offset`` is
    followed by ``len`` payload bytes, and the next header comes right after
    them.  The walk stops when fewer than :data:`HEADER_SIZE` bytes remain
    before ``end`` (a torn header is the caller's to see: it starts at the
    offset after the last frame's payload).  Whether a payload is complete
    (``offset + HEADER_SIZE + len <= end``) and whether ``len`` is acceptable
    is for the caller to decide; after a payload that runs past ``end`` the
    walk ends.  ``order`` is the headers' byte order: ``=`` (native, as on
    the wire), or ``<`` / ``>`` for the pending data of a migration stream.
    """
    unpack = _HEADERS[order].unpack_from
    stop = len(data) if end is None else end
    while stop - pos >= HEADER_SIZE:
        type_, req_id, tx_id, length = unpack(data, pos)
        yield pos, type_, req_id, tx_id, length
        pos += HEADER_SIZE + length


# --- argument parsing (core.c:onearg, get_strings; domain.c:parse_domid) ---


def split_strings(payload: bytes) -> list[bytes]:
    """NUL-terminated strings from the start; bytes after the last NUL are ignored."""
    parts = payload.split(b"\0")
    parts.pop()  # the (possibly empty) tail after the last NUL
    return parts


def onearg(payload: bytes) -> bytes:
    """The single argument of a one-argument request, or EINVAL."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise XsError("EINVAL", "expected exactly one NUL-terminated argument")
    return payload[:-1]


def parse_domid(arg: bytes) -> int:
    """C's ``parse_domid``: base 10, fully consumed, at most 65535; "" is 0."""
    if arg == b"":
        return 0
    text = arg.decode("latin-1")
    # strtoul accepts leading white space and a sign; keep to what it takes.
    m = re.fullmatch(r"\s*([+-]?)(\d+)", text)
    if m is None:
        raise XsError("EINVAL", f"bad domid {text!r}")
    value = int(m.group(2))
    if m.group(1) == "-":
        value = (-value) & 0xFFFFFFFFFFFFFFFF
    if value > 0xFFFF:
        raise XsError("EINVAL", f"domid out of range {text!r}")
    return value


def c_atoi(arg: bytes) -> int:
    """C ``atoi``: leading blanks, optional sign, digits; garbage gives 0."""
    m = re.match(rb"\s*([+-]?\d+)", arg)
    if m is None:
        return 0
    value = int(m.group(1))
    # atoi's result is an int; clamp like a 32-bit wrap would be undefined.
    return max(min(value, 2**31 - 1), -(2**31))


def c_strtol0(arg: bytes) -> int | None:
    """``strtol(s, &end, 0)`` that must consume the whole non-empty string."""
    text = arg.decode("latin-1")
    m = re.fullmatch(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)", text)
    if m is None:
        return None
    digits = m.group(2)
    if digits[:2] in ("0x", "0X"):
        value = int(digits, 16)
    elif digits.startswith("0"):
        value = int(digits, 8) if len(digits) > 1 else 0
    else:
        value = int(digits)
    return -value if m.group(1) == "-" else value


# --- paths (core.c:canonicalize, valid_chars) --------------------------------

_VALID_PATH = re.compile(rb"[A-Za-z0-9\-/_@]*")


def implicit_path(domid: int) -> str:
    """The home directory that relative paths of ``domid`` resolve under."""
    return f"/local/domain/{domid}"


def canonicalize(raw: bytes, domid: int, allow_special: bool = False) -> str:
    """Validate a request path and make it absolute.

    ``domid`` is the connection's domain (socket connections use the store
    domain, 0).  Raises EINVAL for bad characters, ``//``, a trailing ``/``,
    the empty path, and special ``@`` paths where they are not allowed.
    Length limits depend on quota and privilege and are checked by the store.
    """
    if _VALID_PATH.fullmatch(raw) is None:
        raise XsError("EINVAL", "invalid character in path")
    path = raw.decode("ascii")
    if path.startswith("@"):
        if not allow_special:
            raise XsError("EINVAL", "special path not allowed here")
        return path
    if not path.startswith("/"):
        path = implicit_path(domid) + "/" + path
    if "//" in path or (path.endswith("/") and path != "/"):
        raise XsError("EINVAL", "malformed path")
    return path


_DOMAIN_PREFIX = re.compile(r"/local/domain/\d{1,5}/")


def relative_length(path: str) -> int:
    """Length the ``path-max`` quota measures: a leading domain home is not counted."""
    m = _DOMAIN_PREFIX.match(path)
    return len(path) - (m.end() if m else 0)


def parent_of(path: str) -> str:
    """Parent of an absolute path (``/`` is its own parent)."""
    idx = path.rfind("/")
    return "/" if idx <= 0 else path[:idx]


def basename(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def is_child(path: str, parent: str, depth: int = -1) -> bool:
    """Whether ``path`` is ``parent`` or below it, within ``depth`` levels.

    ``depth`` -1 means unlimited (``watch.c:is_child``).
    """
    if path == parent:
        return True
    if parent == "/":
        if not path.startswith("/"):
            return False
        rest = path[1:]
    else:
        if not path.startswith(parent) or path[len(parent) : len(parent) + 1] != "/":
            return False
        rest = path[len(parent) + 1 :]
    if depth < 0:
        return True
    return rest.count("/") + 1 <= depth
