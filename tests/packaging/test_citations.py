"""The repository stands on its own: everything it cites, a reader can open.

The code, docs, tests, benchmarks and scripts cite the Xen sources by file
and function (``core.c:process_message``), the specs of xen.git
(``xenstore.txt``, ``xenstore-migration.md``, ``xenstore-ring.txt``) or this
repository's own docs (``docs/compat.md`` entries).  The notes of the workshop
this project was written in are not part of it, so nothing may cite them,
and no path may lead outside the repository -- except the default of
``PYXENSTORED_PEERS``, the one variable that says where the C reference
daemons are (``tests/util.py``; scripts and CI set the same variable).

This file names the forbidden word in its patterns, so it does not scan itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from tests.util import PEERS_DEFAULT, PEERS_VARIABLE

REPO = Path(__file__).resolve().parents[2]
TOPS = ("src", "docs", "tests", "bench", "scripts", ".ci", "man", "contrib")
TOP_FILES = ("README.md", "CHANGELOG.md", "pyproject.toml")
SELF = Path(__file__).resolve()
UTIL = REPO / "tests" / "util.py"

# The workshop's notes by their name; ``hexdigest`` and ``h.digest()`` (hashlib)
# are not citations.
NOTES = re.compile(rb"(?<![.a-z])digest(?![a-z(])", re.I)
# A path out of the repository: to a sibling directory or the workshop's tree.
OUTSIDE = re.compile(rb"\.\./shared[\w/.-]*|/work/[\w/.-]*")
COMPAT_ID = re.compile(r"(?:^### |\*\*)([A-Z]\d\d) — ", re.M)
# What a scenario's "sources" entry must name: a C file (with its function),
# a Xen header, a spec of xen.git, a page of docs/ or a file of this repository.
OPENABLE = re.compile(
    r"\b[\w-]+\.c\b|\b[\w/-]+\.h\b|xenstore\.txt|xenstore-migration\.md"
    r"|xenstore-ring\.txt|docs/\w+\.md|tests/[\w/]+\.py"
)


def _generated(path: Path) -> bool:
    """Build output in the tree (byte code, an editable install's metadata)."""
    return "__pycache__" in path.parts or any(p.endswith(".egg-info") for p in path.parts)


def scanned_files() -> Iterator[Path]:
    for top in TOPS:
        if not (REPO / top).is_dir():  # scripts/ and .ci/ are not in the sdist
            continue
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and path != SELF and not _generated(path):
                yield path
    for name in TOP_FILES:
        if (REPO / name).is_file():
            yield REPO / name


def hits(pattern: re.Pattern[bytes]) -> list[tuple[Path, int, str]]:
    found = []
    for path in scanned_files():
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            for match in pattern.finditer(line):
                found.append((path, number, match.group().decode(errors="replace")))
    return found


def where(path: Path, number: int) -> str:
    return f"{path.relative_to(REPO)}:{number}"


def test_the_scan_sees_the_tree() -> None:
    seen = {path.relative_to(REPO).as_posix() for path in scanned_files()}
    assert {"tests/util.py", "docs/compat.md", "src/pyxenstored/wire.py"} <= seen
    assert "tests/packaging/test_citations.py" not in seen


def test_the_patterns_catch_what_they_are_for() -> None:
    for cited in (b"(digest 2.8)", b"# Digest \xc2\xa74.3", b"test_x_digest_10_7"):
        assert NOTES.search(cited), cited
    for fine in (b"sha.hexdigest()", b"h.digest()"):
        assert not NOTES.search(fine), fine
    for outside in (b"../shared/peers/xsshim.c", b"/work/shared/reference/x.md"):
        assert OUTSIDE.search(outside), outside
    assert not OUTSIDE.search(b'dom0.write("/shared/x", b"")')


def test_nothing_cites_the_workshop_notes() -> None:
    found = [f"{where(path, number)}: {text}" for path, number, text in hits(NOTES)]
    assert found == []


def test_no_path_leads_outside_but_the_peers_default() -> None:
    """``../shared/peers`` only as PYXENSTORED_PEERS's default: in tests/util.py,
    or on a line of a script that names the variable."""
    wrong = []
    for path, number, text in hits(OUTSIDE):
        line = path.read_text(errors="replace").splitlines()[number - 1]
        allowed = text == PEERS_DEFAULT and (path == UTIL or PEERS_VARIABLE in line)
        if not allowed:
            wrong.append(f"{where(path, number)}: {text}")
    assert wrong == []


def test_cited_compat_entries_exist() -> None:
    compat = (REPO / "docs" / "compat.md").read_text()
    entries = set(COMPAT_ID.findall(compat))
    assert {"C01", "D05", "S01"} <= entries
    missing = []
    for path in scanned_files():
        text = path.read_bytes().decode(errors="replace")
        for match in re.finditer(r"compat\.md", text):
            # the ids right after the name, up to the end of the clause
            tail = re.split(r"[).;\n]", text[match.end() : match.end() + 60])[0]
            for entry in re.findall(r"\b([A-Z]\d\d)\b", tail):
                if entry not in entries:
                    missing.append(f"{path.relative_to(REPO)}: {entry}")
    assert missing == []


def test_scenario_sources_name_what_a_reader_can_open() -> None:
    vague = []
    for path in sorted((REPO / "tests" / "conformance" / "scenarios").glob("*.json")):
        for source in json.loads(path.read_text())["sources"]:
            if not OPENABLE.search(source):
                vague.append(f"{path.name}: {source}")
    assert vague == []
