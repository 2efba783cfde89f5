"""Feature and quota operations: GET_FEATURE, SET_FEATURE, GET_QUOTA, SET_QUOTA.

The feature bitmap rules are in :mod:`.features`, the quota tables in
:mod:`.quota`; here the requests read and set them, globally or for one
domain.

State (:class:`~.base.StoreBase`): reads and writes ``config.quota`` (the
global table) and the features and quota of the domain records it finds
through ``_existing_domain``.  Calls nothing of the other groups
(:mod:`.groups`).
"""

from __future__ import annotations

from ..wire import OK, MsgType, XsError, c_atoi, parse_domid, split_strings
from . import quota as q
from .base import Result, StoreBase
from .connection import Connection
from .features import feature_reply, parse_feature_value
from .transaction import Transaction


class FeatureQuotaOps(StoreBase):
    """Reading and setting features and quota."""

    # --- features ------------------------------------------------------------

    def op_get_feature(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if not parts:
            return Result(MsgType.GET_FEATURE, feature_reply(conn.features))
        if not conn.privileged:
            raise XsError("EACCES", "GET_FEATURE with domid")
        if len(parts) > 1:
            raise XsError("EINVAL", "GET_FEATURE takes one domid")
        dom = self._existing_domain(parse_domid(parts[0]))
        return Result(MsgType.GET_FEATURE, feature_reply(dom.features))

    def op_set_feature(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if len(parts) != 2:
            raise XsError("EINVAL", "SET_FEATURE needs domid and value")
        domid = parse_domid(parts[0])
        dom = self._existing_domain(domid)
        if dom.introduced:
            raise XsError("EBUSY", "domain already introduced")
        dom.features = parse_feature_value(parts[1])
        return Result(MsgType.SET_FEATURE, OK)

    # --- quota ---------------------------------------------------------------

    def op_get_quota(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if len(parts) > 2:
            raise XsError("EINVAL", "GET_QUOTA takes at most two arguments")
        if not parts:
            return Result(
                MsgType.GET_QUOTA, " ".join(self.config.quota.names()).encode("ascii") + b"\0"
            )
        table = self.config.quota
        if len(parts) == 2:
            table = self._existing_domain(parse_domid(parts[0])).quota
        index, kind = q.parse_quota_name(table, parts[-1].decode("latin-1"))
        return Result(MsgType.GET_QUOTA, b"%d\0" % table.get(index, kind))

    def op_set_quota(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        parts = split_strings(payload)
        if not 2 <= len(parts) <= 3:
            raise XsError("EINVAL", "SET_QUOTA takes two or three arguments")
        table = self.config.quota
        if len(parts) == 3:
            table = self._existing_domain(parse_domid(parts[0])).quota
        index, kind = q.parse_quota_name(table, parts[-2].decode("latin-1"))
        value = c_atoi(parts[-1]) & 0xFFFFFFFF
        if value == q.DISABLED:
            raise XsError("EINVAL", "quota value out of range")
        table.set(index, kind, value)
        return Result(MsgType.SET_QUOTA, OK)
