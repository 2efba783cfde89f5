"""Scripted request sequences ("scenarios") as data, and their execution.

A scenario file (``scenarios/<area>.json``) holds::

    {"area": "...", "sources": ["core.c:do_read", "xenstore.txt ...", ...],
     "targets": ["reference", "pyxenstored"],      # v2 files: ["pyxenstored"]
     "scenarios": [{"name": "...", "fresh": false, "steps": [STEP, ...]}]}

A STEP is a dict:

* ``c``: connection name (default ``"a"``); connections open on first use.
* ``op``: message type name (``"READ"``) or number (``27``, ``65535``).
* ``p``: payload in the readable escape of :func:`unescape` (``|`` is NUL),
  or a list of such strings and ``{"repeat": "x", "n": 5000}`` pieces.
* ``tx``: name of a transaction saved by an earlier step, or an integer sent
  as it is (unknown ids); ``save``: name under which a TRANSACTION_START
  reply id is kept.
* ``len``: a lying header ``len`` (oversized messages); ``req_id``: a chosen
  request id.
* ``close``: true closes the connection instead of sending anything.
* ``split``: send the message in pieces of this many bytes (framing).
* ``batch``: a list of steps (``op``, ``p``, ``tx``, ``save``) sent in one
  write on the connection before any reply is read (pipelining).
* ``for``: ``[start, stop]`` repeats the step with ``{i}`` (also ``{i/K}``,
  ``{i%K}``) replaced in ``p``;
  the repetitions are recorded as one step with counted distinct replies.
* ``expect`` / ``expect_events``: the expected record fields, for files whose
  expected replies are written by hand from C HEAD's source (targets without
  reference).
* ``daemon_args`` (file level): extra daemon options; such scenarios always
  get a fresh daemon.
* ``guests`` (file level): domids that exist and may run on rings; the
  daemons start in ring mode and connection ``dom<N>`` is that guest (port
  100 + N).
* ``label``: a name for the step (default: its index) used by compat entries.

Recording: each step gives a :class:`StepRecord` with the reply rendered as
``"<TYPE> <escaped payload>"`` (or ``CLOSED`` / ``NO REPLY``), header echo
mismatches appended, and the watch events every open connection received.
Normalisation replaces only what is arbitrary: transaction ids (``<T1>``,
``<T2>``… per connection in order of creation) and DIRECTORY_PART generation
counts (``<G1>``… by first appearance).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conformance.rawclient import (
    ConnectionClosed,
    Message,
    RawClient,
    ReplyTimeout,
    RingClient,
)

from pyxenstored.wire import HEADER, MsgType

HERE = Path(__file__).resolve().parent
SCENARIO_DIR = HERE / "scenarios"
GOLDEN_DIR = HERE / "golden"

STEP_TIMEOUT = 5.0

# Connection ``dom<N>`` is guest domain N on its ring (files with ``guests``);
# it kicks event channel port 100 + N, so a scenario introduces it with
# ``INTRODUCE N|1|<100+N>|``.
_GUEST_NAME = re.compile(r"dom(\d+)")
GUEST_PORT_BASE = 100


def guest_port(domid: int) -> int:
    return GUEST_PORT_BASE + domid


# --- the readable escape ------------------------------------------------------------


def escape(data: bytes) -> str:
    r"""Bytes as text: NUL is ``|``, ``|`` is ``\|``, ``\`` is ``\\``, others ``\xHH``."""
    out: list[str] = []
    for byte in data:
        if byte == 0:
            out.append("|")
        elif byte == 0x7C:
            out.append("\\|")
        elif byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        elif byte == 0x0A:
            out.append("\\n")
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


_UNESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})|\\n|\\\||\\\\|\||[^\\|]+")


def unescape(text: str) -> bytes:
    """Inverse of :func:`escape`."""
    out = bytearray()
    pos = 0
    while pos < len(text):
        m = _UNESCAPE.match(text, pos)
        if m is None:
            raise ValueError(f"bad escape at {pos} in {text!r}")
        tok = m.group(0)
        if m.group(1) is not None:
            out.append(int(m.group(1), 16))
        elif tok == "\\n":
            out.append(0x0A)
        elif tok == "\\|":
            out.append(0x7C)
        elif tok == "\\\\":
            out.append(0x5C)
        elif tok == "|":
            out.append(0)
        else:
            out += tok.encode("latin-1")
        pos = m.end()
    return bytes(out)


_INDEX = re.compile(r"\{i(?:([/%])(\d+))?\}")


def _substitute_index(text: str, index: int) -> str:
    """``{i}`` is the repetition index, ``{i/K}`` and ``{i%K}`` its quotient and rest."""

    def value(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return str(index)
        k = int(m.group(2))
        return str(index // k if m.group(1) == "/" else index % k)

    return _INDEX.sub(value, text)


def build_payload(spec: Any, index: int | None = None) -> bytes:
    """The payload of a step: a string, or a list of strings and repeat pieces."""
    pieces = spec if isinstance(spec, list) else [spec]
    out = bytearray()
    for piece in pieces:
        if isinstance(piece, dict):
            out += unescape(piece["repeat"]) * int(piece["n"])
        else:
            text = str(piece)
            if index is not None:
                text = _substitute_index(text, index)
            out += unescape(text)
    return bytes(out)


def type_number(op: str | int) -> int:
    return op if isinstance(op, int) else int(MsgType[op])


def type_name(value: int) -> str:
    try:
        return MsgType(value).name
    except ValueError:
        return str(value)


# --- records ----------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class StepRecord:
    """What one step produced, normalised."""

    label: str
    op: str
    payload: str
    reply: str
    events: dict[str, list[str]]

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "op": self.op,
            "payload": self.payload,
            "reply": self.reply,
            "events": self.events,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepRecord:
        return cls(data["label"], data["op"], data["payload"], data["reply"], data["events"])


@dataclass(slots=True, frozen=True)
class Scenario:
    file: str
    name: str
    steps: list[dict[str, Any]]
    targets: tuple[str, ...]
    fresh: bool = False
    daemon_args: tuple[str, ...] = ()
    guests: tuple[int, ...] = ()

    @property
    def ident(self) -> str:
        return f"{self.file}:{self.name}"


def load_scenarios(directory: Path = SCENARIO_DIR) -> list[Scenario]:
    found: list[Scenario] = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        targets = tuple(data.get("targets", ["reference", "pyxenstored"]))
        daemon_args = tuple(data.get("daemon_args", ()))
        guests = tuple(int(d) for d in data.get("guests", ()))
        for item in data["scenarios"]:
            fresh = bool(item.get("fresh", False) or daemon_args or guests)
            found.append(
                Scenario(
                    path.stem, item["name"], item["steps"], targets, fresh, daemon_args, guests
                )
            )
    return found


def step_label(step: dict[str, Any], index: int) -> str:
    return str(step.get("label", index))


# --- execution --------------------------------------------------------------------


@dataclass(slots=True)
class _Normaliser:
    """Maps arbitrary numbers to stable symbols within one scenario run."""

    tx_symbols: dict[tuple[str, int], str] = field(default_factory=dict)
    tx_counts: Counter[str] = field(default_factory=Counter)
    gen_symbols: dict[bytes, str] = field(default_factory=dict)

    def new_tx(self, conn: str, tx_id: int) -> str:
        self.tx_counts[conn] += 1
        symbol = f"<T{self.tx_counts[conn]}>"
        self.tx_symbols[(conn, tx_id)] = symbol
        return symbol

    def tx(self, conn: str, tx_id: int) -> str:
        return self.tx_symbols.get((conn, tx_id), str(tx_id))

    def gen(self, raw: bytes) -> str:
        if raw not in self.gen_symbols:
            self.gen_symbols[raw] = f"<G{len(self.gen_symbols) + 1}>"
        return self.gen_symbols[raw]


@dataclass(slots=True)
class Runner:
    """Runs steps against one daemon socket and records normalised results."""

    socket: str
    conns: dict[str, RawClient] = field(default_factory=dict)
    saved_tx: dict[str, int] = field(default_factory=dict)
    norm: _Normaliser = field(default_factory=_Normaliser)
    watchers: set[str] = field(default_factory=set)

    def conn(self, name: str) -> RawClient:
        client = self.conns.get(name)
        if client is None:
            guest = _GUEST_NAME.fullmatch(name)
            if guest is None:
                client = RawClient(self.socket, timeout=STEP_TIMEOUT)
            else:
                domid = int(guest.group(1))
                ring_dir = os.path.dirname(self.socket)
                client = RingClient(ring_dir, domid, guest_port(domid), timeout=STEP_TIMEOUT)
            self.conns[name] = client
        return client

    def close(self) -> None:
        for client in self.conns.values():
            client.close()
        self.conns.clear()

    def _tx_id(self, step: dict[str, Any]) -> int:
        ref = step.get("tx", 0)
        if isinstance(ref, int):
            return ref
        if ref not in self.saved_tx:
            raise KeyError(f"transaction {ref!r} was never saved")
        return self.saved_tx[ref]

    def render_reply(self, conn: str, msg: Message, req_id: int, tx_id: int) -> str:
        name = type_name(msg.type)
        payload = msg.payload
        if msg.type == MsgType.TRANSACTION_START and re.fullmatch(rb"\d+\0", payload):
            text = self.norm.new_tx(conn, int(payload[:-1])) + "|"
        elif msg.type == MsgType.DIRECTORY_PART and b"\0" in payload:
            gen, rest = payload.split(b"\0", 1)
            text = self.norm.gen(gen) + "|" + escape(rest)
        else:
            text = escape(payload)
        rendered = f"{name} {text}"
        if msg.req_id != req_id:
            rendered += f" !req_id={msg.req_id}"
        if msg.tx_id != tx_id:
            rendered += f" !tx_id={self.norm.tx(conn, msg.tx_id)}"
        return rendered

    def send_one(self, step: dict[str, Any], payload: bytes) -> str:
        cname = step.get("c", "a")
        client = self.conn(cname)
        if client.closed:
            return "CLOSED"
        tx_id = self._tx_id(step)
        msg_type = type_number(step["op"])
        if msg_type == MsgType.WATCH:
            self.watchers.add(cname)
        try:
            req_id = client.send(
                msg_type,
                payload,
                tx_id=tx_id,
                req_id=step.get("req_id"),
                length=step.get("len"),
                chunk=int(step.get("split", 0)),
            )
            msg = client.read_reply()
        except ConnectionClosed:
            return "CLOSED"
        except ReplyTimeout:
            return "NO REPLY"
        rendered = self.render_reply(cname, msg, req_id, tx_id)
        if "save" in step and msg.type == MsgType.TRANSACTION_START:
            self.saved_tx[step["save"]] = int(msg.payload.rstrip(b"\0") or b"0")
        return rendered

    def collect_events(self) -> dict[str, list[str]]:
        events: dict[str, list[str]] = {}
        for name in sorted(self.conns):
            client = self.conns[name]
            try:
                if name in self.watchers:
                    got = client.sync()
                else:
                    # only a connection that has registered a watch can be
                    # sent events; anything else met on the way is kept too
                    got, client.events = client.events, []
            except (ConnectionClosed, ReplyTimeout):
                got, client.events = client.events, []
            rendered = []
            for msg in got:
                text = escape(msg.payload)
                if msg.req_id or msg.tx_id:
                    text += f" !hdr={msg.req_id},{msg.tx_id}"
                rendered.append(text)
            if rendered:
                events[name] = rendered
        return events

    def send_batch(self, step: dict[str, Any]) -> str:
        """Send every request of ``batch`` at once on one connection, then read."""
        cname = step.get("c", "a")
        client = self.conn(cname)
        if any(sub.get("op") == "WATCH" for sub in step["batch"]):
            self.watchers.add(cname)
        sent: list[tuple[int, int, dict[str, Any]]] = []
        try:
            data = bytearray()
            for sub in step["batch"]:
                tx_id = self._tx_id(sub)
                req_id = client._next_req
                client._next_req += 1
                body = build_payload(sub.get("p", ""))
                data += HEADER.pack(type_number(sub["op"]), req_id, tx_id, len(body)) + body
                sent.append((req_id, tx_id, sub))
            client.send_bytes(bytes(data))
            replies = []
            for req_id, tx_id, sub in sent:
                msg = client.read_reply()
                replies.append(self.render_reply(cname, msg, req_id, tx_id))
                if "save" in sub and msg.type == MsgType.TRANSACTION_START:
                    self.saved_tx[sub["save"]] = int(msg.payload.rstrip(b"\0") or b"0")
        except ConnectionClosed:
            return "CLOSED"
        except ReplyTimeout:
            return "NO REPLY"
        return " ; ".join(replies)

    def run_step(self, step: dict[str, Any], index: int) -> StepRecord:
        label = step_label(step, index)
        if "batch" in step:
            shown = " ; ".join(
                f"{s['op']} {escape(build_payload(s.get('p', '')))}" for s in step["batch"]
            )
            return StepRecord(
                label, "batch", shown[:200], self.send_batch(step), self.collect_events()
            )
        op = str(step.get("op", "close"))
        if step.get("close"):
            self.watchers.discard(step.get("c", "a"))
            client = self.conns.pop(step.get("c", "a"), None)
            if client is not None:
                client.close()
            return StepRecord(label, "close", "", "", self.collect_events())
        if "for" in step:
            start, stop = step["for"]
            counts: Counter[str] = Counter()
            for i in range(start, stop):
                counts[self.send_one(step, build_payload(step.get("p", ""), i))] += 1
            reply = "; ".join(f"{n}x {r}" for r, n in sorted(counts.items()))
            shown = escape(build_payload(step.get("p", ""), start)) + " ..."
            return StepRecord(label, op, shown, reply, self.collect_events())
        payload = build_payload(step.get("p", ""))
        shown = escape(payload)
        if len(shown) > 120:
            shown = shown[:100] + f"...({len(payload)} bytes)"
        reply = self.send_one(step, payload)
        return StepRecord(label, op, shown, reply, self.collect_events())

    def run(self, steps: list[dict[str, Any]]) -> list[StepRecord]:
        try:
            return [self.run_step(step, i) for i, step in enumerate(steps)]
        finally:
            self.close()


def run_scenario(socket: str, scenario: Scenario) -> list[StepRecord]:
    return Runner(socket).run(scenario.steps)


# --- putting a shared daemon back to its initial state ----------------------------

_INITIAL_PERMS = b"n0\0"


def list_children(client: RawClient, path: bytes) -> list[bytes] | None:
    """Child names of ``path`` (via DIRECTORY_PART when DIRECTORY is too big)."""
    reply = client.request(MsgType.DIRECTORY, path + b"\0")
    if reply.type == MsgType.DIRECTORY:
        return reply.payload.split(b"\0")[:-1]
    if reply.payload != b"E2BIG\0":
        return None
    names: list[bytes] = []
    offset = 0
    while True:
        part = client.request(MsgType.DIRECTORY_PART, path + b"\0" + str(offset).encode() + b"\0")
        if part.type != MsgType.DIRECTORY_PART:
            return None
        body = part.payload.split(b"\0", 1)[1]
        chunk = body.split(b"\0")
        done = body.endswith(b"\0\0") or body == b"\0"
        chunk = [c for c in chunk if c]
        names += chunk
        offset += sum(len(c) + 1 for c in chunk)
        if done or not chunk:
            return names


def reset_daemon(socket: str) -> None:
    """Remove everything but the initial tree and restore its values/permissions.

    Used between scenarios that share a daemon; scenarios that change global
    state (quotas, special nodes, domains) are marked ``fresh`` and get their own.
    """
    client = RawClient(socket, timeout=STEP_TIMEOUT)
    try:
        keep = {b"/": b"tool", b"/tool": b"xenstored", b"/tool/xenstored": b""}
        for path, child in keep.items():
            for name in list_children(client, path) or []:
                if name != child:
                    prefix = path if path != b"/" else b""
                    client.request(MsgType.RM, prefix + b"/" + name + b"\0")
            if client.request(MsgType.READ, path + b"\0").payload != b"":
                client.request(MsgType.WRITE, path + b"\0")
            if client.request(MsgType.GET_PERMS, path + b"\0").payload != _INITIAL_PERMS:
                client.request(MsgType.SET_PERMS, path + b"\0" + _INITIAL_PERMS)
        for path in (b"/tool", b"/tool/xenstored"):
            if client.request(MsgType.READ, path + b"\0").type == MsgType.ERROR:
                client.request(MsgType.MKDIR, path + b"\0")
                client.request(MsgType.SET_PERMS, path + b"\0" + _INITIAL_PERMS)
    finally:
        client.close()
