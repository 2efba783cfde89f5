"""Every example of docs/client.md, run against a fresh pyxenstored.

The page's ``pycon`` blocks are one doctest session, in the order they are
written, so their outputs are checked and later blocks use what earlier ones
made.  The page's daemon lives in ``/tmp/xs``; the test runs pyxenstored the
same way (``--rundir DIR --ring-dir DIR``, domains 0 and 5 listed in
``DIR/domains``) in a temp dir of its own and reads ``/tmp/xs`` as that dir.
"""

from __future__ import annotations

import doctest
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.client.daemons import run_daemon
from tests.launcher import Launched

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
DOC_DIR = "/tmp/xs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, line number, body) of each fenced block."""
    return [
        (m.group(1), text.count("\n", 0, m.start()) + 2, m.group(2)) for m in FENCE.finditer(text)
    ]


@pytest.fixture
def ring_daemon() -> Iterator[Launched]:
    yield from run_daemon("pyxenstored", ring=True)


def test_every_python_example_is_a_checked_session() -> None:
    # A ```python block would not be run (and its output not checked).
    languages = {lang for lang, _, _ in blocks(DOC.read_text())}
    assert languages <= {"pycon", "sh"}, languages


def test_the_examples_run_as_written(
    ring_daemon: Launched, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XENSTORED_PATH", ring_daemon.socket)
    monkeypatch.delenv("XENSTORED_RUNDIR", raising=False)
    text = DOC.read_text()
    parser = doctest.DocTestParser()
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs: dict[str, object] = {}
    examples = 0
    try:
        for lang, line, body in blocks(text):
            if lang != "pycon":
                continue
            body = body.replace(DOC_DIR, str(ring_daemon.rundir))
            test = parser.get_doctest(body, globs, f"client.md:{line}", str(DOC), line - 1)
            examples += len(test.examples)
            runner.run(test, out=report.write, clear_globs=False)
            globs = test.globs  # get_doctest copied them: carry this block's names on
    finally:
        for value in globs.values():  # the clients the page opened and did not close
            close = getattr(value, "close", None)
            if callable(close) and type(value).__module__.startswith("pyxenstored"):
                close()
    assert runner.failures == 0, report.getvalue()
    assert examples >= 60, f"only {examples} examples found in {DOC}"
