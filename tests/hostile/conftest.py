"""Fixtures of the hostile-guest suite: a fresh pyxenstored arena per test (see harness.py).

The suite, one module per group of Xen security advisory classes (each
test is named after the advisory it covers; the module docstrings say which
parts of a class do not apply to this daemon and why):

* ``test_xsa_memory.py``: XSA-326, 330, 416 (attacks in ``attacks.py``,
  shared with ``bench/guest_memory.py``);
* ``test_xsa_protocol.py``: XSA-38, 72, 324, 418, 420, 481;
* ``test_xsa_permissions.py``: XSA-115, 322, 352, 353, 417;
* ``test_xsa_accounting.py``: XSA-272, 414, 415, 419, 421, 440, 483, 484;
* ``test_xsa_domains.py``: XSA-206, 233, 325, 425.

``@pytest.mark.daemon_args(...)`` passes arguments to that test's daemon.
With ``HOSTILE_REPORT=1`` in the environment the session ends with each
test's measured memory growth and its bound.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from tests.hostile.harness import Arena, arena


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "daemon_args(*args): arguments of the arena's daemon")


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[Arena]:
    """pyxenstored serving dom0, the attacker (domain 5) and the bystander (domain 6)."""
    marker = request.node.get_closest_marker("daemon_args")
    with arena("pyxenstored", marker.args if marker else ()) as a:
        yield a
        if a.measured is not None:
            request.node.user_properties.append(("memory_kib", a.measured))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not os.environ.get("HOSTILE_REPORT"):
        return
    rows = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            props = dict(getattr(report, "user_properties", ()))
            if getattr(report, "when", "") == "teardown" and "memory_kib" in props:
                growth, bound = props["memory_kib"]
                rows.append((report.nodeid.split("::")[-1], growth, bound))
    if rows:
        terminalreporter.section("daemon memory growth (KiB) / bound (KiB)")
        for name, growth, bound in sorted(rows):
            terminalreporter.write_line(f"{growth:8d} / {bound:6d}  {name}")
