"""Fixtures of the hostile-guest suite: a fresh pyxenstored arena per test (see harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.hostile.harness import Arena, arena


@pytest.fixture
def hostile() -> Iterator[Arena]:
    """pyxenstored serving dom0, the attacker (domain 5) and the bystander (domain 6)."""
    with arena("pyxenstored") as a:
        yield a
