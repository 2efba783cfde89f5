"""The store's operation groups are composed as store/groups.py says.

Each group stands on ``StoreBase`` alone, ``Store`` lists them side by side
(a flat MRO), no method is defined in two groups, and a group's calls into
another group (``self.name`` where ``name`` is that group's) are all in the
callee's protocol.  mypy checks the signatures (core.py, ``_PROVIDES``).
"""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

from pyxenstored.store import groups
from pyxenstored.store.base import StoreBase
from pyxenstored.store.control_ops import ControlOps
from pyxenstored.store.core import Store
from pyxenstored.store.domain_ops import DomainOps
from pyxenstored.store.feature_quota_ops import FeatureQuotaOps
from pyxenstored.store.node_ops import NodeOps
from pyxenstored.store.node_write import NodeWrites
from pyxenstored.store.transaction_ops import TransactionOps
from pyxenstored.store.watch_ops import WatchOps

# Each group and the protocol that says what the other groups may call of it.
GROUPS: dict[type, type] = {
    NodeOps: groups.NodeGroup,
    NodeWrites: groups.NodeWriteGroup,
    WatchOps: groups.WatchGroup,
    TransactionOps: groups.TransactionGroup,
    DomainOps: groups.DomainGroup,
    FeatureQuotaOps: groups.FeatureQuotaGroup,
    ControlOps: groups.ControlGroup,
}


def own_methods(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if inspect.isfunction(value)}


def protocol_members(proto: type) -> set[str]:
    return {name for name in own_methods(proto) if not name.startswith("__")}


def self_names(cls: type) -> set[str]:
    """Every ``self.name`` the class's own code uses."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


def test_every_group_stands_on_store_base_alone() -> None:
    for group in GROUPS:
        assert group.__bases__ == (StoreBase,), group.__name__


def test_store_mro_is_flat() -> None:
    assert Store.__mro__[-2:] == (StoreBase, object)
    assert set(Store.__mro__[1:-2]) == set(GROUPS)


def test_no_method_in_two_groups() -> None:
    seen: dict[str, str] = {}
    for group in [*GROUPS, StoreBase, Store]:
        for name in own_methods(group) - {"__init__"}:
            assert name not in seen, f"{name} in {seen.get(name)} and {group.__name__}"
            seen[name] = group.__name__


def test_protocols_name_methods_their_group_has() -> None:
    for group, proto in GROUPS.items():
        for name in protocol_members(proto):
            assert name in own_methods(group), f"{proto.__name__}.{name}"
            assert inspect.signature(getattr(group, name)) == inspect.signature(
                getattr(proto, name)
            ), name


@pytest.mark.parametrize("caller", [*GROUPS, Store], ids=lambda c: c.__name__)
def test_calls_between_groups_go_through_protocols(caller: type) -> None:
    used = self_names(caller)
    for group, proto in GROUPS.items():
        if group is caller:
            continue
        called = used & own_methods(group)
        assert called <= protocol_members(proto), (
            f"{caller.__name__} calls {sorted(called - protocol_members(proto))} "
            f"of {group.__name__}, not in {proto.__name__}"
        )


def test_each_protocol_member_is_called_by_another_group() -> None:
    # A member no other group calls would be a promise with no use.
    for group, proto in GROUPS.items():
        callers = [c for c in [*GROUPS, Store] if c is not group]
        used = set().union(*(self_names(c) for c in callers))
        assert protocol_members(proto) <= used, proto.__name__
