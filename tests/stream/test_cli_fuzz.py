"""Fuzzing the toolkit: bad input gives exit 1 or 2 and one line on stderr, never a traceback.

Most runs call ``main(argv)`` in-process (fast); two run the installed
``xenstore-stream`` console script as a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.stream.conftest import WORKED_EXAMPLE

from pyxenstored.cli.stream_tool import main
from pyxenstored.stream.check import check_all
from pyxenstored.stream.synth import SynthConfig, write_synth

COMMANDS = ("check", "dump", "stats")


def _valid_stream() -> bytes:
    buf = io.BytesIO()
    write_synth(buf, SynthConfig(domains=1, seed=7))
    return buf.getvalue()


VALID = _valid_stream()
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_clean_failure(path: Path, must_fail: bool) -> None:
    for cmd in COMMANDS:
        extra = ["--json"] if cmd == "dump" else []
        code, _, err = run_main([cmd, *extra, str(path)])
        assert "Traceback" not in err
        if must_fail:
            assert code in (1, 2), (cmd, code, err)
        if code:
            assert code in (1, 2)
            assert len(err.splitlines()) == 1, (cmd, err)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fz") / "r.xs"
    path.write_bytes(data)
    assert_clean_failure(path, must_fail=True)


@FUZZ
@given(prefix=st.binary(max_size=40))
def test_random_after_a_valid_preamble(
    tmp_path_factory: pytest.TempPathFactory, prefix: bytes
) -> None:
    path = tmp_path_factory.mktemp("fz") / "p.xs"
    data = WORKED_EXAMPLE[:16] + prefix
    path.write_bytes(data)
    # without an END record at the right place the stream is incomplete
    _, summary = check_all(data)
    assert_clean_failure(path, must_fail=not summary.ended)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=len(VALID) - 1))
def test_truncations(tmp_path_factory: pytest.TempPathFactory, cut: int) -> None:
    path = tmp_path_factory.mktemp("fz") / "t.xs"
    path.write_bytes(VALID[:cut])
    assert_clean_failure(path, must_fail=True)


def test_every_truncation_of_the_worked_example(tmp_path: Path) -> None:
    for cut in range(len(WORKED_EXAMPLE)):
        path = tmp_path / f"t{cut}.xs"
        path.write_bytes(WORKED_EXAMPLE[:cut])
        assert_clean_failure(path, must_fail=True)


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(1, 255)),
        min_size=1,
        max_size=4,
    )
)
def test_byte_flips(tmp_path_factory: pytest.TempPathFactory, flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, xor in flips:
        data[pos] ^= xor
    path = tmp_path_factory.mktemp("fz") / "f.xs"
    path.write_bytes(bytes(data))
    # a flip may leave a valid stream (e.g. inside a value): then exit 0 is right
    assert_clean_failure(path, must_fail=False)


def _console_script() -> list[str]:
    exe = shutil.which("xenstore-stream")
    if exe is not None:
        return [exe]
    return [
        sys.executable,
        "-c",
        "import sys; from pyxenstored.cli.stream_tool import main; sys.exit(main())",
    ]


@pytest.mark.parametrize("cmd", ["check", "dump"])
def test_console_script_on_garbage(tmp_path: Path, cmd: str) -> None:
    path = tmp_path / "g.xs"
    path.write_bytes(b"xenstore\0\0\0\x02\0\0\0\0" + os.urandom(64))
    res = subprocess.run(
        [*_console_script(), cmd, str(path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode in (1, 2)
    assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr
