"""docs/architecture.md stays true to the code.

* The layer table: every ``import`` of a pyxenstored package in ``src/`` is
  one its row allows.
* The "where is X" tables: every message type, stream record type, quota
  name and CONTROL command has a row, and every ``file.py``: ``name`` the
  page cites exists (the module imports, the name resolves in it).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from pyxenstored.store import control as ctl
from pyxenstored.store import quota as q
from pyxenstored.stream.records import RecordType
from pyxenstored.wire import MsgType

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
SRC = REPO / "src" / "pyxenstored"

# `server/loop.py`: `Server.run_once`, `_take_input` (names after the first
# may also be module-level or, like the first, dotted).
_CITE = re.compile(r"`([\w/]+\.py)`: ((?:`[\w.]+`(?:, )?)+)")
_NAME = re.compile(r"`([\w.]+)`")


def doc() -> str:
    return DOC.read_text()


def section(title: str) -> str:
    """The text under the heading ``title`` (any level) up to the next heading."""
    text = doc()
    match = re.search(rf"^#+ (?:\d+\. )?{re.escape(title)}\n(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    assert match, f"docs/architecture.md has no section {title!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def first_cells(title: str, column: int) -> set[str]:
    return {row[column].strip("`") for row in table_rows(section(title))}


# --- the layers ----------------------------------------------------------------------


def _package_of(module: str) -> str | None:
    """``pyxenstored.store.core`` -> ``store``; ``pyxenstored`` -> ``pyxenstored``."""
    parts = module.split(".")
    if parts[0] != "pyxenstored":
        return None
    return parts[1] if len(parts) > 1 else "pyxenstored"


def _imports(path: Path) -> set[str]:
    """The pyxenstored packages (or top-level modules) that ``path`` imports."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    here = list(rel.parts)[:-1]  # the package the module is in (an __init__'s: its own)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                targets = [".".join([*base, node.module] if node.module else base)]
            else:
                targets = [node.module or ""]
        for target in targets:
            package = _package_of(target)
            if package is not None:
                found.add(package)
    return found


def _layer_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    if len(rel.parts) == 1:
        return "pyxenstored" if rel.stem in ("__init__", "__main__") else rel.stem
    return rel.parts[0]


def test_every_import_is_one_the_layer_table_allows() -> None:
    allowed = {}
    for row in table_rows(section("Layers")):
        allowed[row[0].strip("`")] = set(_NAME.findall(row[1]))
    allowed["pyxenstored"] = {"cli"}  # __main__ starts the command line
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        layer = _layer_of(path)
        assert layer in allowed, f"{path}: package {layer} has no row in the layer table"
        for used in _imports(path) - {layer} - allowed[layer]:
            wrong.append(f"{path.relative_to(SRC)} imports {used}")
    assert not wrong, "imports the layer table of docs/architecture.md does not allow: " + str(
        wrong
    )


# --- the "where is X" tables -----------------------------------------------------------


def test_every_message_type_has_a_row() -> None:
    assert first_cells("Message types", 1) >= {t.name for t in MsgType}


def test_every_record_type_has_a_row() -> None:
    assert first_cells("Stream records", 1) >= {t.name for t in RecordType}


def test_every_quota_name_has_a_row() -> None:
    names = {info.name for info in q.QUOTAS}
    names |= {q.SOFT_PREFIX + info.name for info in q.QUOTAS if info.soft != q.DISABLED}
    assert first_cells("Quota", 0) >= names


def test_every_control_command_has_a_row() -> None:
    assert first_cells("CONTROL commands", 0) >= {name for name, _ in ctl.COMMANDS}


def _citations() -> list[tuple[str, str]]:
    cited = []
    for match in _CITE.finditer(doc()):
        for name in _NAME.findall(match.group(2)):
            cited.append((match.group(1), name))
    return cited


def test_the_page_cites_functions() -> None:
    assert len(_citations()) > 100


@pytest.mark.parametrize("path,name", _citations())
def test_every_cited_name_exists(path: str, name: str) -> None:
    file = SRC / path
    assert file.exists(), f"docs/architecture.md cites {path}, which is not in src/pyxenstored"
    module = importlib.import_module("pyxenstored." + path[:-3].replace("/", "."))
    obj: object = module
    for part in name.split("."):
        assert hasattr(obj, part), f"docs/architecture.md cites {path}: {name}; no {part} there"
        obj = getattr(obj, part)
