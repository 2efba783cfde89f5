"""CONTROL commands (xenstore.txt "Miscellaneous"; C's ``control.c``) and the consistency check."""

from __future__ import annotations

import pytest

from pyxenstored.store import Store
from pyxenstored.store.node import Node
from pyxenstored.wire import MsgType as M

from .conftest import Client, ClientFactory

HELP = (
    "check           \n"
    "log             [on|off|+<switch>|-<switch>]\n"
    "live-update     [-c <cmdline>] [-F] [-t <timeout>] [-v <version>] <file>\n"
    "    Default timeout is 60 seconds, default version is 2.\n"
    "logfile         <file>\n"
    "memreport       [<file>]\n"
    "print           <string>\n"
    "quota           [set <name> <val>|<domid>|max [-r]]\n"
    "quota-soft      [set <name> <val>]\n"
    "domain-state-save <domid> <file>\n"
    "domain-state-restore <file> <domid>\n"
    "help            \n"
)


def test_help(dom0: Client) -> None:
    assert dom0.ok(M.CONTROL, b"help\0") == HELP.encode() + b"\0"
    assert dom0.err(M.CONTROL, b"help\0x\0") == "EINVAL"


@pytest.mark.parametrize("payload", [b"", b"check", b"\0", b"bogus\0", b"debug\0"])
def test_bad_commands(dom0: Client, payload: bytes) -> None:
    assert dom0.err(M.CONTROL, payload) == "EINVAL"


def test_check(dom0: Client) -> None:
    assert dom0.ok(M.CONTROL, b"check\0") == b"OK\0"
    assert dom0.err(M.CONTROL, b"check\0now\0") == "EINVAL"


def test_log_switches(dom0: Client) -> None:
    expected = "Log switch settings:\nobj     : on\nio      : on\nwrl     : off\nacc     : off\ntdb     : off\n"
    assert dom0.ok(M.CONTROL, b"log\0") == expected.encode() + b"\0"
    assert dom0.ok(M.CONTROL, b"log\0+wrl\0") == b"OK\0"
    assert dom0.ok(M.CONTROL, b"log\0-obj\0") == b"OK\0"
    text = dom0.ok(M.CONTROL, b"log\0").decode()
    assert "wrl     : on\n" in text and "obj     : off\n" in text
    assert dom0.ok(M.CONTROL, b"log\0on\0") == b"OK\0"
    assert dom0.err(M.CONTROL, b"log\0+bogus\0") == "EINVAL"
    assert dom0.err(M.CONTROL, b"log\0on\0off\0") == "EINVAL"


def test_logfile_memreport_print(dom0: Client) -> None:
    assert dom0.err(M.CONTROL, b"memreport\0") == "EINVAL"  # no trace file: C's EBADF
    assert dom0.ok(M.CONTROL, b"memreport\0/tmp/report\0") == b"OK\0"
    assert dom0.err(M.CONTROL, b"logfile\0") == "EINVAL"
    assert dom0.ok(M.CONTROL, b"logfile\0trace.log\0") == b"OK\0"
    assert dom0.ok(M.CONTROL, b"memreport\0") == b"OK\0"
    assert dom0.ok(M.CONTROL, b"print\0hello\0") == b"OK\0"
    assert dom0.err(M.CONTROL, b"print\0") == "EINVAL"


def test_live_update_not_yet_supported(dom0: Client) -> None:
    r = dom0.req(M.CONTROL, b"live-update\0-s\0")
    assert r.reply_type == M.CONTROL  # a text reply, not an ERROR
    assert r.payload == b"live-update is not yet supported\0"


def test_hooks_receive_commands() -> None:
    seen: list[tuple[str, object]] = []

    class Hooks:
        def log(self, args: list[bytes]) -> bytes:
            seen.append(("log", args))
            return b"OK\0"

        def logfile(self, name: bytes) -> None:
            seen.append(("logfile", name))

        def memreport(self, name: bytes | None) -> None:
            seen.append(("memreport", name))

        def live_update(self, args: list[bytes]) -> bytes:
            seen.append(("live-update", args))
            return b"OK\0"

    store = Store(hooks=Hooks())
    store.connect(1, 0, is_socket=True)
    c = Client(store, 1)
    c.ok(M.CONTROL, b"log\0+io\0")
    c.ok(M.CONTROL, b"logfile\0f\0")
    c.ok(M.CONTROL, b"memreport\0")
    # Only the command and 6 arguments are split: a binary chunk keeps its NULs.
    c.ok(M.CONTROL, b"live-update\0-c\x0010\0a\0b\0c\0d\0e\0f\0")
    c.ok(M.CONTROL, b"live-update\0-d\x005\0a\0b\0c\0")
    c.ok(M.CONTROL, b"live-update\0-s\0")
    assert seen == [
        ("log", [b"+io"]),
        ("logfile", b"f"),
        ("memreport", None),
        ("live-update", [b"-c", b"10", b"a", b"b", b"c", b"d\0e\0f"]),
        ("live-update", [b"-d", b"5", b"a\0b\0c"]),
        ("live-update", [b"-s"]),
    ]


def test_guest_may_not_control(connect: ClientFactory) -> None:
    assert connect(domid=3).err(M.CONTROL, b"help\0") == "EACCES"


def test_check_finds_problems(dom0: Client) -> None:
    store = dom0.store
    dom0.write("/a/b")
    assert store.check() == []
    store.domains[0].usage[0] += 1
    assert any("counters" in p for p in store.check())
    store.domains[0].usage[0] -= 1
    store.nodes["/orphan"] = Node(b"", ((0, 0),), 1)
    assert any("not reachable" in p for p in store.check())
    del store.nodes["/orphan"]
    del store.nodes["/a/b"]
    problems = store.check()
    assert any("child b missing" in p for p in problems)
