"""The message-type table: every fact about one request type, in one row.

Like the C daemon's ``wire_funcs[]`` (``core.c``, read by
``process_message``), one row per :class:`~pyxenstored.wire.MsgType` says:

``handler``
    the :class:`~.core.Store` method that serves the request (None: the
    type is not a request, and the store answers ENOSYS);
``privileged``
    only a privileged connection may send it, others get EACCES (C's
    ``XS_FLAG_PRIV``);
``ignores_tx``
    the header's transaction id is not looked up (C's ``XS_FLAG_NOTID``);
``wrl_write``
    outside a transaction, the committed nodes it writes cost the sending
    domain write-rate credit (``store/wrl.py``);
``changes_limits``
    it may change quota values or a connection's domain or privilege, so
    the server looks up its connections' limits again after it, and never
    serves it on the quick path (``server/loop.py``);
``quick_read``
    outside a transaction the server's quick path first offers it to
    ``Store.quick_read``, which answers with the reply payload alone.

The hot path does not read the rows: the frozensets of plain ints below are
derived from the table once, at import, and are what ``Store.handle`` and
the server's loop test a request's type against.  A test checks that every
``MsgType`` has a row (tests/store/test_messages.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..wire import MsgType


@dataclass(slots=True, frozen=True)
class MsgSpec:
    """One row of :data:`MESSAGE_TYPES` (see the module docstring for each field)."""

    handler: str | None
    privileged: bool = False
    ignores_tx: bool = False
    wrl_write: bool = False
    changes_limits: bool = False
    quick_read: bool = False


_M = MsgType

MESSAGE_TYPES: dict[MsgType, MsgSpec] = {
    _M.CONTROL: MsgSpec("op_control", privileged=True, changes_limits=True),
    _M.DIRECTORY: MsgSpec("op_directory", quick_read=True),
    _M.READ: MsgSpec("op_read", quick_read=True),
    _M.GET_PERMS: MsgSpec("op_get_perms", quick_read=True),
    _M.WATCH: MsgSpec("op_watch", ignores_tx=True),
    _M.UNWATCH: MsgSpec("op_unwatch", ignores_tx=True),
    _M.TRANSACTION_START: MsgSpec("op_transaction_start"),
    _M.TRANSACTION_END: MsgSpec("op_transaction_end"),
    _M.INTRODUCE: MsgSpec("op_introduce", privileged=True, changes_limits=True),
    _M.RELEASE: MsgSpec("op_release", privileged=True, changes_limits=True),
    _M.GET_DOMAIN_PATH: MsgSpec("op_get_domain_path"),
    _M.WRITE: MsgSpec("op_write", wrl_write=True),
    _M.MKDIR: MsgSpec("op_mkdir", wrl_write=True),
    _M.RM: MsgSpec("op_rm", wrl_write=True),
    _M.SET_PERMS: MsgSpec("op_set_perms", wrl_write=True),
    _M.WATCH_EVENT: MsgSpec(None),  # sent by the daemon only
    _M.ERROR: MsgSpec(None),  # a reply type
    _M.IS_DOMAIN_INTRODUCED: MsgSpec("op_is_domain_introduced", privileged=True),
    _M.RESUME: MsgSpec("op_resume", privileged=True, changes_limits=True),
    _M.SET_TARGET: MsgSpec("op_set_target", privileged=True, changes_limits=True),
    _M.RESTRICT: MsgSpec(None),  # removed from the protocol (C has no handler either)
    _M.RESET_WATCHES: MsgSpec("op_reset_watches"),
    _M.DIRECTORY_PART: MsgSpec("op_directory_part"),
    _M.GET_FEATURE: MsgSpec("op_get_feature"),
    _M.SET_FEATURE: MsgSpec("op_set_feature", privileged=True),
    _M.GET_QUOTA: MsgSpec("op_get_quota", privileged=True),
    _M.SET_QUOTA: MsgSpec("op_set_quota", privileged=True, changes_limits=True),
}


def _types_where(flag: str) -> frozenset[int]:
    # Plain ints, not enum members: the hot path tests every request's type
    # (an int from the header) against these sets.
    return frozenset(int(t) for t, spec in MESSAGE_TYPES.items() if getattr(spec, flag))


PRIVILEGED_TYPES = _types_where("privileged")
TX_IGNORED_TYPES = _types_where("ignores_tx")
WRL_WRITE_TYPES = _types_where("wrl_write")
LIMIT_CHANGING_TYPES = _types_where("changes_limits")
QUICK_READ_TYPES = _types_where("quick_read")
HANDLERS: dict[int, str] = {
    int(t): spec.handler for t, spec in MESSAGE_TYPES.items() if spec.handler is not None
}
