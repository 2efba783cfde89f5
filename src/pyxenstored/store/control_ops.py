"""CONTROL and the consistency check, as store methods.

The commands themselves are in :mod:`.control`; :class:`ControlOps` gives
them the store, and holds the quota maxima over all domains that
``quota max`` reports.

State (:class:`~.base.StoreBase`): reads ``domains`` and
``config.priv_domid``, writes ``_retired_max`` (``quota max`` reset);
:mod:`.control` reads ``nodes``, ``conns``, ``watches``, ``wrl`` and
``hooks`` through this group.  Calls nothing of the other groups
(:mod:`.groups`).
"""

from __future__ import annotations

from ..wire import MsgType
from . import control as ctl
from . import quota as q
from .base import Result, StoreBase
from .connection import Connection
from .transaction import Transaction


class ControlOps(StoreBase):
    """CONTROL, the quota maxima and the consistency check."""

    # --- CONTROL -------------------------------------------------------------

    def op_control(self, conn: Connection, tx: Transaction | None, payload: bytes) -> Result:
        command, args = ctl.split_control(payload)
        return Result(MsgType.CONTROL, ctl.run_control(self, command, args))

    def global_maxima(self) -> list[int]:
        """Per-quota maximum seen over unprivileged domains (``quota max``)."""
        out = list(self._retired_max)
        for dom in self.domains.values():
            if dom.domid == self.config.priv_domid:
                continue
            for i, value in enumerate(dom.maxima):
                if value > out[i]:
                    out[i] = value
        return out

    def reset_maxima(self) -> None:
        self._retired_max = [0] * q.QUOTA_COUNT
        for dom in self.domains.values():
            dom.maxima = list(dom.usage)

    # --- consistency check ---------------------------------------------------

    def recount(self) -> dict[int, list[int]]:
        """Usage counters recomputed from scratch (see ``control.recount``)."""
        return ctl.recount(self)

    def check(self) -> list[str]:
        """Check the tree and the counters; returns the problems found (empty: fine)."""
        return ctl.check_store(self)
