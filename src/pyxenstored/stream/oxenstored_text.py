"""oxenstored's state dump as text and as JSON: ``xenstore-stream dump`` and ``build``.

:func:`line_text` shows one line of the dump (:mod:`.oxenstored_format`) in
the notation of ``xenstore-stream dump``: the line type, then ``name=value``
fields, strings quoted and escaped as ``xenstore-ls`` shows them.

:func:`line_to_json` / :func:`line_from_json` are the NDJSON form of a line
(the same field names; strings and values as in :mod:`.ndjson`: UTF-8 text,
or base64 with ``<key>-encoding``).  The header object of such NDJSON is
``{"type": "HEADER", "format": 2, "kind": "oxenstored-dump",
"final-newline": true}``; a line oxenstored would skip is kept as
``{"type": "ignored", "rule": ..., "text": ...}`` so that ``build`` gives
back the same bytes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .ndjson import NDJSON_FORMAT, bytes_field, put_bytes
from .oxenstored_convert import dump_to_records
from .oxenstored_format import (
    HEADER,
    DomLine,
    DumpLine,
    EvtchnDevLine,
    GlobalLine,
    IgnoredLine,
    OxDump,
    SocketLine,
    StoreLine,
    WatchLine,
    format_line,
    parse_line,
    parse_perms,
)
from .records import NodeData
from .text import TreeNode, build_tree, quote

#: The ``kind`` of the header object of an oxenstored dump's NDJSON.
KIND = "oxenstored-dump"


def header_text(dump: OxDump) -> str:
    """The first line of ``dump`` for such a file."""
    end = "" if dump.final_newline else ", no newline at the end"
    return f"oxenstored state dump ({HEADER.decode()}), {len(dump.lines)} lines{end}"


def _conn_text(conn: int) -> str:
    return f"socket-fd={-conn}" if conn < 0 else f"domid={conn}"


def _extra_text(extra: tuple[bytes, ...]) -> str:
    return f" extra={quote(b','.join(extra))}" if extra else ""


def line_text(line: DumpLine) -> str:
    """One line of the dump, readable."""
    match line:
        case StoreLine():
            perms = ",".join(str(p) for p in line.perms)
            return f"store {quote(line.path)} = {quote(line.value)} ({perms})"
        case WatchLine():
            return (
                f"watch {_conn_text(line.conn)} wpath={quote(line.path)} token={quote(line.token)}"
            )
        case DomLine():
            local = "none" if line.local_port is None else str(line.local_port)
            return (
                f"dom domid={line.domid} mfn={line.mfn:#x} remote-port={line.remote_port}"
                f" local-port={local}{_extra_text(line.extra)}"
            )
        case SocketLine():
            return f"socket socket-fd={line.fd}"
        case GlobalLine():
            return f"global socket-fd={line.socket_fd}{_extra_text(line.extra)}"
        case EvtchnDevLine():
            return f"evtchn-dev fd={line.fd} domexc-port={line.domexc_port}"
    return f"ignored ({line.rule}: {line.detail}) {quote(line.text)}"


def ls_tree(dump: OxDump) -> dict[str, TreeNode]:
    """The tree ``xenstore-ls`` shows of oxenstored after it loaded ``dump``.

    As oxenstored loads it (:func:`.dump_to_records`: skipped lines left
    out), with oxenstored's listing: ``@introduceDomain`` and
    ``@releaseDomain`` are children of ``/``, and a node's children come
    sorted by name (``store.ml``'s children are a sorted map).
    """
    records = dump_to_records(dump, lossy=True).records
    nodes = build_tree(
        replace(r, path="/" + r.path) if isinstance(r, NodeData) and r.path[:1] == "@" else r
        for r in records
    )
    for node in nodes.values():
        node.children.sort(key=lambda name: name.encode())
    return nodes


def header_to_json(dump: OxDump) -> dict[str, Any]:
    """The header object of a dump's NDJSON."""
    return {
        "type": "HEADER",
        "format": NDJSON_FORMAT,
        "kind": KIND,
        "final-newline": dump.final_newline,
    }


def _extra_json(out: dict[str, Any], extra: tuple[bytes, ...]) -> None:
    if extra:
        put_bytes(out, "extra", b",".join(extra))


def line_to_json(line: DumpLine) -> dict[str, Any]:
    """One line as a JSON-able dict."""
    out: dict[str, Any] = {}
    match line:
        case StoreLine():
            out["type"] = "store"
            put_bytes(out, "path", line.path)
            put_bytes(out, "value", line.value)
            out["perms"] = [str(p) for p in line.perms]
        case WatchLine():
            out["type"] = "watch"
            out.update({"socket-fd": -line.conn} if line.conn < 0 else {"domid": line.conn})
            put_bytes(out, "wpath", line.path)
            put_bytes(out, "token", line.token)
        case DomLine():
            out.update(type="dom", domid=line.domid, mfn=line.mfn)
            out["remote-port"] = line.remote_port
            out["local-port"] = line.local_port
            _extra_json(out, line.extra)
        case SocketLine():
            out.update({"type": "socket", "socket-fd": line.fd})
        case GlobalLine():
            out.update({"type": "global", "socket-fd": line.socket_fd})
            _extra_json(out, line.extra)
        case EvtchnDevLine():
            out.update({"type": "evtchn-dev", "fd": line.fd, "domexc-port": line.domexc_port})
        case IgnoredLine():
            out.update(type="ignored", rule=line.rule)
            put_bytes(out, "text", line.text)
    return out


def _text_of(obj: dict[str, Any], key: str, kind: str) -> bytes:
    return bytes_field(obj, key, kind)


def _int_of(obj: dict[str, Any], key: str, kind: str) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(
            f"{kind}: field {key!r} must be an integer"
            if key in obj
            else f"{kind}: missing field {key!r}"
        )
    return v


def line_from_json(obj: object) -> DumpLine:
    """The dump line of one JSON object; ValueError naming what is wrong.

    The line is formatted and read back, so that what oxenstored could not
    read (an invalid path, say) becomes the same :class:`.IgnoredLine` the
    reader makes of it.
    """
    if not isinstance(obj, dict):
        raise ValueError("a line must be a JSON object")
    kind = obj.get("type")
    line: DumpLine
    match kind:
        case "store":
            perms = obj.get("perms", ["n0"])
            if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
                raise ValueError("store: field 'perms' must be a list like ['n0', 'r1']")
            try:
                parsed = parse_perms("\0".join(perms).encode())
            except ValueError as exc:
                raise ValueError(f"store: {exc}") from None
            value = _text_of(obj, "value", "store") if "value" in obj else b""
            line = StoreLine(_text_of(obj, "path", "store"), parsed, value)
        case "watch":
            if "socket-fd" in obj:
                conn = -_int_of(obj, "socket-fd", "watch")
            else:
                conn = _int_of(obj, "domid", "watch")
            line = WatchLine(conn, _text_of(obj, "wpath", "watch"), _text_of(obj, "token", "watch"))
        case "dom":
            local = obj.get("local-port")
            extra = _text_of(obj, "extra", "dom").split(b",") if "extra" in obj else []
            line = DomLine(
                _int_of(obj, "domid", "dom"),
                _int_of(obj, "mfn", "dom"),
                _int_of(obj, "remote-port", "dom"),
                None if local is None else _int_of(obj, "local-port", "dom"),
                tuple(extra),
            )
        case "socket":
            line = SocketLine(_int_of(obj, "socket-fd", "socket"))
        case "global":
            extra = _text_of(obj, "extra", "global").split(b",") if "extra" in obj else []
            line = GlobalLine(_int_of(obj, "socket-fd", "global"), tuple(extra))
        case "evtchn-dev":
            line = EvtchnDevLine(
                _int_of(obj, "fd", "evtchn-dev"), _int_of(obj, "domexc-port", "evtchn-dev")
            )
        case "ignored":
            return parse_line(_text_of(obj, "text", "ignored"))
        case _:
            raise ValueError(f"unknown line type {kind!r}")
    return parse_line(format_line(line))


__all__ = [
    "KIND",
    "header_text",
    "header_to_json",
    "line_from_json",
    "line_text",
    "line_to_json",
    "ls_tree",
]
