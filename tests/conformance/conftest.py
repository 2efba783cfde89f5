"""Fixtures of the conformance suite: the two daemons side by side.

``daemons`` is a session-wide pool holding one C reference and one
pyxenstored, each in its own temp run dir, started on first use, restarted if
one died, stopped at the end.  Tests that need a daemon call
``daemons.get(kind)``, which goes through :func:`tests.util.require`: it
skips locally when the daemon cannot run and fails in CI.

``--long`` makes the differential fuzzer run far longer (by hand, not in CI);
``XS_FUZZ_EXAMPLES`` sets its number of sequences directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.conformance.daemons import KINDS, Daemon, available
from tests.conformance.scenario import reset_daemon
from tests.launcher import LaunchError
from tests.util import require


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="long differential fuzzing run against the C reference (by hand)",
    )


class DaemonPool:
    """One shared daemon per kind, plus fresh ones on request."""

    def __init__(self) -> None:
        self._shared: dict[str, Daemon] = {}
        self._fresh: list[Daemon] = []

    def _require(self, kind: str) -> None:
        ok, reason = available(kind)
        require(ok, f"{kind} daemon unavailable: {reason}")

    def _start(self, kind: str, args: tuple[str, ...] = (), guests: tuple[int, ...] = ()) -> Daemon:
        try:
            return Daemon(kind, extra_args=args, guests=guests).start()
        except LaunchError as exc:
            pytest.fail(str(exc))

    def get(self, kind: str) -> Daemon:
        """The shared daemon of ``kind``, reset to the initial tree."""
        self._require(kind)
        daemon = self._shared.get(kind)
        if daemon is not None and not daemon.alive():
            daemon.stop()
            daemon = None
        if daemon is None:
            daemon = self._start(kind)
            self._shared[kind] = daemon
        else:
            reset_daemon(daemon.socket)
        return daemon

    def fresh(self, kind: str, args: tuple[str, ...] = (), guests: tuple[int, ...] = ()) -> Daemon:
        """A daemon of its own for a scenario that changes global state."""
        self._require(kind)
        daemon = self._start(kind, args, guests)
        self._fresh.append(daemon)
        return daemon

    def release(self, daemon: Daemon) -> None:
        if daemon in self._fresh:
            self._fresh.remove(daemon)
            daemon.stop()

    def close(self) -> None:
        for daemon in [*self._shared.values(), *self._fresh]:
            daemon.stop()
        self._shared.clear()
        self._fresh.clear()


@pytest.fixture(scope="session")
def daemons() -> Iterator[DaemonPool]:
    pool = DaemonPool()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(params=KINDS)
def any_daemon(request: pytest.FixtureRequest, daemons: DaemonPool) -> Daemon:
    """Each daemon in turn (for checks both must pass on their own)."""
    return daemons.get(str(request.param))
