"""The source distribution as a user gets it.

Built from this tree with ``python -m build --sdist`` (the pinned backend
fetched from PyPI), it must carry the licence, changelog, docs and tests, and
declare its metadata; ``pip install``ed with its test extras into a fresh
virtual environment, the tests it carries that need no reference daemon must
pass there against the installed package, not this tree's ``src/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from tests.util import require_module

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# What the installed package is tested with: the pure layers, and the client
# examples against a pyxenstored it starts (reference-daemon tests deselected).
SUBSET = ["tests/wire", "tests/stream", "tests/store", "tests/client/test_client_docs.py"]
PIP_TIMEOUT = 900
TEST_TIMEOUT = 900


def run(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if out.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-4000:]}{out.stderr[-4000:]}"
        )
    return out.stdout


def clean_env() -> dict[str, str]:
    """The environment without what would point Python at this tree or its venv."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "XENSTORED_PATH", "XENSTORED_RUNDIR", "PYTHONHOME"):
        env.pop(name, None)
    return env


# Left out of the copy the sdist is built from: an egg-info made by an
# editable install lists the files of an earlier build, and setuptools would
# put them in this sdist whatever MANIFEST.in says.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".*_cache", ".hypothesis"
)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("build")
    tree = tmp_path_factory.mktemp("tree") / "pyxenstored"
    shutil.copytree(REPO, tree, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(tree)], PIP_TIMEOUT)
    [path] = out.glob("pyxenstored-*.tar.gz")
    return path


def members(sdist: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(sdist) as tar:
        return {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}


def test_sdist_carries_licence_changelog_docs_and_tests(sdist: Path) -> None:
    names = members(sdist)
    for name in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"):
        assert name in names
    expected = [
        path.relative_to(REPO).as_posix()
        for top in ("docs", "tests", "bench", "man", "contrib")
        for path in (REPO / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    ]
    assert "docs/client.md" in expected and "tests/util.py" in expected
    assert "man/pyxenstored.8" in expected
    assert "contrib/completion/xenstore-stream" in expected
    assert [name for name in expected if name not in names] == []
    assert "src/pyxenstored/py.typed" in names


def test_sdist_metadata(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(sdist.name.removesuffix(".tar.gz") + "/PKG-INFO")
        assert member is not None
        headers = member.read().decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
    assert not [h for h in headers if h.startswith("Classifier: License ::")]  # PEP 639
    assert "Classifier: Programming Language :: Python :: 3.11" in headers
    assert "Classifier: Typing :: Typed" in headers
    assert [h for h in headers if h.startswith("Project-URL: ")]


def test_installed_sdist_passes_its_tests_in_a_fresh_venv(sdist: Path, tmp_path: Path) -> None:
    env = clean_env()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], 120, env=env)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", f"{sdist}[test]"], PIP_TIMEOUT, env=env)

    unpacked = tmp_path / "src"
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(unpacked, filter="data")
        else:  # Python before 3.11.4
            tar.extractall(unpacked)
    [top] = unpacked.iterdir()
    # From the unpacked tree (on sys.path as pytest puts it), the package
    # still comes from the venv: the tree keeps it under src/.
    where = run(
        [python, "-c", "import pyxenstored; print(pyxenstored.__file__)"],
        60,
        env=env | {"PYTHONPATH": "."},
        cwd=top,
    )
    assert where.startswith(str(venv)), where

    report = tmp_path / "report.xml"
    cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-m", "not reference"]
    run([*cmd, f"--junit-xml={report}", *SUBSET], TEST_TIMEOUT, env=env, cwd=top)
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == 0, counts
    assert counts["tests"] - counts["skipped"] >= 500, counts
