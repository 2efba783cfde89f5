"""store layer of pyxenstored (see docs/architecture.md): the database, pure logic, no I/O.

``Store.handle(conn_id, msg_type, tx_id, payload) -> Result`` is the one
entry point; see :mod:`.core`.
"""

from .control import ControlHooks, DefaultControlHooks
from .core import Event, Result, Store, StoreConfig
from .domain import DomainHooks
from .quota import QuotaTable, apply_quota_option

__all__ = [
    "ControlHooks",
    "DefaultControlHooks",
    "DomainHooks",
    "Event",
    "QuotaTable",
    "Result",
    "Store",
    "StoreConfig",
    "apply_quota_option",
]
