"""Records and the committed tree as text: ``xenstore-stream dump`` and ``dump --tree``.

Values are shown as ``xenstore-ls`` shows them (printable ASCII as is, the
rest escaped); :func:`record_line` is one line per record, and the tree
functions print the committed nodes exactly as ``xenstore-ls -p /`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .records import (
    DEPTH_UNLIMITED,
    ConnectionData,
    DomainData,
    End,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    QuotaValue,
    Record,
    RingSpec,
    SocketSpec,
    StreamHeader,
    TransactionData,
    WatchData,
    WatchDataExtended,
    type_name,
)


def sanitise(value: bytes) -> str:
    """Bytes as ``xenstore-ls`` shows them: printable ASCII as is, the rest escaped."""
    out = []
    for c in value:
        if 0x20 <= c <= 0x7E and c != 0x5C:
            out.append(chr(c))
        elif c == 0x09:
            out.append("\\t")
        elif c == 0x0A:
            out.append("\\n")
        elif c == 0x0D:
            out.append("\\r")
        elif c == 0x5C:
            out.append("\\\\")
        elif c < 0o10:
            out.append(f"\\{c:03o}")
        else:
            out.append(f"\\x{c:02x}")
    return "".join(out)


def quote(value: bytes | str) -> str:
    """A value or string shown by :func:`sanitise`, in double quotes."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return '"' + sanitise(raw) + '"'


def perms_text(perms: Iterable[NodePerm]) -> str:
    """``n0,r5!`` (``!``: stale)."""
    return ",".join(f"{p.perm}{p.domid}" + ("!" if p.stale else "") for p in perms)


def quota_text(quota: Iterable[QuotaValue]) -> str:
    """``name=value ...``, or ``-`` for none."""
    return " ".join(f"{q.name}={q.value}" for q in quota) or "-"


def record_line(r: Record) -> str:
    """One readable line for a record."""
    if isinstance(r, End):
        return "END"
    if isinstance(r, GlobalData):
        return f"GLOBAL_DATA rw-socket-fd={r.socket_fd} evtchn-fd={r.evtchn_fd}"
    if isinstance(r, ConnectionData):
        spec = r.spec
        if isinstance(spec, RingSpec):
            where = (
                f"conn-type=ring domid={spec.domid} tdomid={spec.tdomid:#x} evtchn={spec.evtchn}"
            )
        elif isinstance(spec, SocketSpec):
            where = f"conn-type=socket socket-fd={spec.socket_fd}"
        else:
            where = f"conn-type={r.conn_type} conn-spec={quote(spec.raw)}"
        text = f"CONNECTION_DATA conn-id={r.conn_id} {where} fields={r.fields:#x}"
        if r.unique_id is not None:
            text += f" unique-id={r.unique_id:#x}"
        if r.in_data:
            text += f" in={quote(r.in_data)}"
        if r.out_data:
            text += f" out={quote(r.out_data)} out-resp-len={r.out_resp_len}"
        return text
    if isinstance(r, WatchDataExtended):
        depth = "unlimited" if r.depth == DEPTH_UNLIMITED else str(r.depth)
        return f"WATCH_DATA_EXTENDED conn-id={r.conn_id} wpath={quote(r.wpath)} token={quote(r.token)} depth={depth}"
    if isinstance(r, WatchData):
        return f"WATCH_DATA conn-id={r.conn_id} wpath={quote(r.wpath)} token={quote(r.token)}"
    if isinstance(r, TransactionData):
        return f"TRANSACTION_DATA conn-id={r.conn_id} tx-id={r.tx_id}"
    if isinstance(r, NodeData):
        text = f"NODE_DATA {quote(r.path)} = {quote(r.value)} ({perms_text(r.perms)})"
        if r.conn_id:
            access = "".join(c for bit, c in ((1, "r"), (2, "w")) if r.access & bit) or "-"
            state = " deleted" if not r.perms else ""
            text += f" conn-id={r.conn_id} tx-id={r.tx_id} access={access}{state}"
        return text
    if isinstance(r, GlobalQuotaData):
        return (
            f"GLOBAL_QUOTA_DATA domain-quota: {quota_text(r.domain_quota)}"
            f" global-quota: {quota_text(r.global_quota)}"
        )
    if isinstance(r, DomainData):
        return f"DOMAIN_DATA domid={r.domid} features={r.features:#x} quota: {quota_text(r.quota)}"
    return f"{type_name(r.type)} len={len(r.body)} body={quote(r.body)}"


def header_line(h: StreamHeader) -> str:
    """The first line of ``dump``."""
    order = "big-endian" if h.big_endian else "little-endian"
    return f"xenstore migration stream version {h.version}, {order} (flags {h.flags:#010x})"


# --- the committed tree, as xenstore-ls -p / prints it ------------------------


class TreeNode:
    """A committed node of :func:`build_tree`: value, permissions, child names in order."""

    __slots__ = ("value", "perms", "children")

    def __init__(self, value: bytes, perms: tuple[NodePerm, ...]) -> None:
        self.value = value
        self.perms = perms
        self.children: list[str] = []


def build_tree(records: Iterable[Record]) -> dict[str, TreeNode]:
    """Committed nodes as a path -> node map; children in stream order (C's child-list order)."""
    nodes: dict[str, TreeNode] = {"/": TreeNode(b"", ())}
    for r in records:
        if not isinstance(r, NodeData) or r.conn_id or r.path.startswith("@"):
            continue
        if r.path == "/":
            nodes["/"].value = r.value
            nodes["/"].perms = r.perms
            continue
        node = nodes.get(r.path)
        if node is None:
            nodes[r.path] = node = TreeNode(r.value, r.perms)
            cut = r.path.rfind("/")
            parent = nodes.get(r.path[:cut] if cut > 0 else "/")
            if parent is not None:
                parent.children.append(r.path[cut + 1 :])
        else:
            node.value, node.perms = r.value, r.perms
    return nodes


LS_WIDTH = 80  # xenstore-ls when stdout is not a terminal
_TAG_LEN = len(' = "..."')
_DESIRED = 60
_FULL_WIDTH = (2**31 - 1) // 2  # xenstore-ls -f: INT_MAX/2, i.e. no limit


@dataclass(slots=True, frozen=True)
class LsOptions:
    """What ``xenstore-ls`` is asked for (``xenstore_client.c``, MODE_ls).

    ``root`` is the PATH argument: its children are listed, not the node
    itself.  ``full_paths`` is ``-f``: each line starts with the whole path,
    values are never cut and there is no dotted fill.  ``perms`` is ``-p``:
    the permissions in brackets at the end, after the dotted fill.
    """

    root: str = "/"
    full_paths: bool = False
    perms: bool = False


def ls_line(
    name: str,
    depth: int,
    value: bytes,
    perms: Iterable[NodePerm],
    options: LsOptions = LsOptions(perms=True),
) -> str:
    """One line of ``xenstore-ls``: indent, name (``-f``: the full path), quoted value, fill, perms."""
    if options.full_paths:
        max_width, desired = _FULL_WIDTH, 0
        line, width = name, 0  # C counts nothing for the path with -f
    else:
        max_width, desired = LS_WIDTH, _DESIRED
        line = " " * depth + name[: max(0, max_width - _TAG_LEN - depth)]
        width = len(line)
    shown = sanitise(value)
    # C compares the raw length but cuts the escaped text
    if max_width < width + len(value) + _TAG_LEN:
        line += ' = "' + shown[: max(0, max_width - _TAG_LEN - width)] + '\\..."'
    else:
        width += len(' = "') + len(shown) + 1
        line += ' = "' + shown + '"'
        if options.perms:
            line += " "
            width += 1
            line += "".join("." if w & 1 else " " for w in range(width, min(desired, max_width)))
    if not options.perms:
        return line
    return line + "  (" + ",".join(f"{p.perm}{p.domid}" for p in perms) + ")"


def _child_path(parent: str, name: str) -> str:
    return parent + name if parent.endswith("/") else parent + "/" + name


def tree_lines(
    nodes: dict[str, TreeNode], options: LsOptions = LsOptions(perms=True)
) -> Iterator[str]:
    """The lines ``xenstore-ls`` prints for an in-memory tree (KeyError: no ``options.root``)."""
    root = nodes[options.root]
    stack = [(_child_path(options.root, name), 0) for name in reversed(root.children)]
    while stack:
        path, depth = stack.pop()
        node = nodes[path]
        name = path if options.full_paths else path[path.rfind("/") + 1 :]
        yield ls_line(name, depth, node.value, node.perms, options)
        for child in reversed(node.children):
            stack.append((path + "/" + child, depth + 1))


def _listed(r: Record) -> bool:
    """Whether ``xenstore-ls /`` would show this record's node."""
    return isinstance(r, NodeData) and not r.conn_id and r.path[:1] == "/" and r.path != "/"


def in_tree_order(records: Iterable[Record]) -> bool:
    """Whether the listed nodes come depth-first, each new, each right after its
    parent's subtree started: then stream order is the listing order."""
    stack: list[tuple[str, set[str]]] = [("/", set())]
    for r in records:
        if not _listed(r):
            continue
        assert isinstance(r, NodeData)
        path = r.path
        while stack[-1][0] != "/" and not path.startswith(stack[-1][0] + "/"):
            stack.pop()
        cut = path.rfind("/")
        parent, name = path[:cut] or "/", path[cut + 1 :]
        top, kids = stack[-1]
        if top != parent or name in kids:
            return False
        kids.add(name)
        stack.append((path, set()))
    return True


def streamed_tree_lines(
    records: Iterable[Record], options: LsOptions = LsOptions(perms=True)
) -> Iterator[str]:
    """``xenstore-ls`` lines for a stream that is :func:`in_tree_order`, in constant memory."""
    root = options.root.rstrip("/")
    prefix = root + "/"
    base = root.count("/")
    for r in records:
        if _listed(r):
            assert isinstance(r, NodeData)
            path = r.path
            if not path.startswith(prefix):
                continue
            name = path if options.full_paths else path[path.rfind("/") + 1 :]
            yield ls_line(name, path.count("/") - 1 - base, r.value, r.perms, options)
