"""store/messages.py: the one table of message types, and the sets derived from it."""

from __future__ import annotations

import pytest

from pyxenstored.server import loop
from pyxenstored.store import Store, StoreConfig
from pyxenstored.store.messages import (
    HANDLERS,
    LIMIT_CHANGING_TYPES,
    MESSAGE_TYPES,
    PRIVILEGED_TYPES,
    QUICK_READ_TYPES,
    TX_IGNORED_TYPES,
    WRL_WRITE_TYPES,
)
from pyxenstored.wire import TYPE_COUNT, MsgType

from .conftest import Client

# Hand-copied from the C daemon's wire_funcs[] (core.c): the types flagged
# XS_FLAG_PRIV, XS_FLAG_NOTID, and those without a function.
C_PRIVILEGED = {0, 8, 9, 17, 18, 19, 24, 25, 26}
C_NOTID = {4, 5}
C_NO_FUNCTION = {15, 16, 20}


def test_every_message_type_has_one_row() -> None:
    assert set(MESSAGE_TYPES) == set(MsgType)
    assert len(MESSAGE_TYPES) == TYPE_COUNT


def test_the_flags_are_the_c_daemons() -> None:
    assert PRIVILEGED_TYPES == C_PRIVILEGED
    assert TX_IGNORED_TYPES == C_NOTID
    assert set(range(TYPE_COUNT)) - set(HANDLERS) == C_NO_FUNCTION
    C_WRL = {11, 12, 13, 14}  # WRITE, MKDIR, RM, SET_PERMS
    assert WRL_WRITE_TYPES == C_WRL
    PLAIN_READS = {1, 2, 3}  # DIRECTORY, READ, GET_PERMS
    assert QUICK_READ_TYPES == PLAIN_READS
    # Whatever may change a connection's limits is privileged.
    assert LIMIT_CHANGING_TYPES <= PRIVILEGED_TYPES


def test_the_derived_sets_hold_plain_ints() -> None:
    for derived in (
        PRIVILEGED_TYPES,
        TX_IGNORED_TYPES,
        WRL_WRITE_TYPES,
        LIMIT_CHANGING_TYPES,
        QUICK_READ_TYPES,
    ):
        assert all(type(t) is int for t in derived)


def test_the_server_uses_the_tables_sets() -> None:
    assert loop._PLAIN_READS is QUICK_READ_TYPES
    assert loop._LIMIT_CHANGERS is LIMIT_CHANGING_TYPES


def test_every_handler_is_a_store_method() -> None:
    store = Store()
    for msg_type, name in HANDLERS.items():
        assert callable(getattr(store, name)), (msg_type, name)
    assert set(store._handlers) == set(HANDLERS)


def guest_and_dom0() -> tuple[Client, Client]:
    store = Store(StoreConfig(existing_domids=frozenset({5})))
    store.connect(1, 0, is_socket=True)
    store.connect(2, 5, is_socket=False)
    return Client(store, 1), Client(store, 2)


@pytest.mark.parametrize("msg_type", sorted(PRIVILEGED_TYPES))
def test_privileged_types_refuse_a_guest(msg_type: int) -> None:
    _dom0, guest = guest_and_dom0()
    assert guest.err(MsgType(msg_type), b"5\0") == "EACCES"


@pytest.mark.parametrize("msg_type", [*sorted(C_NO_FUNCTION), TYPE_COUNT, 0xFFFF])
def test_types_without_a_handler_are_enosys(msg_type: int) -> None:
    dom0, _guest = guest_and_dom0()
    reply = dom0.store.handle(dom0.conn_id, msg_type, 0, b"/\0")
    assert (reply.reply_type, reply.payload) == (MsgType.ERROR, b"ENOSYS\0")


def test_only_the_notid_types_ignore_an_unknown_transaction() -> None:
    dom0, _guest = guest_and_dom0()
    assert dom0.ok(MsgType.WATCH, b"/a\0t\0", tx=77) == b"OK\0"
    assert dom0.ok(MsgType.UNWATCH, b"/a\0t\0", tx=77) == b"OK\0"
    assert dom0.err(MsgType.READ, b"/\0", tx=77) == "ENOENT"
    assert dom0.err(MsgType.WRITE, b"/a\0v", tx=77) == "ENOENT"
