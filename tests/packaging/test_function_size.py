"""Short functions: none in ``src/`` over 80 lines without saying why it must be one piece.

A function longer than ``LIMIT`` lines (``def`` to its last line) must say
"one piece" -- in a comment or its docstring -- within its first
``WITHIN`` lines, next to the reason (a hot loop that keeps its state in
locals, say).  Anything else is split along its steps.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "pyxenstored"
LIMIT = 80
WITHIN = 25


def unexplained_long_functions(source: str, name: str) -> list[str]:
    """``name:function (N lines)`` for each long function that does not say why."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        end = node.end_lineno if node.end_lineno is not None else node.lineno
        size = end - node.lineno + 1
        if size <= LIMIT:
            continue
        head = lines[node.lineno - 1 : node.lineno - 1 + WITHIN]
        if not any("one piece" in line.lower() for line in head):
            found.append(f"{name}:{node.name} ({size} lines)")
    return found


def test_no_unexplained_long_function() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        found += unexplained_long_functions(path.read_text(), str(path.relative_to(SRC)))
    assert not found, "split these, or say at their top why each must be one piece"


def _function(size: int, note: str) -> str:
    body = "".join(f"    x{i} = {i}\n" for i in range(size - 3))
    return f"def f():\n    {note}\n{body}    return 0\n"


def test_the_scan_finds_a_long_function() -> None:
    assert unexplained_long_functions(_function(LIMIT, "pass"), "m.py") == []
    assert unexplained_long_functions(_function(LIMIT + 1, "pass"), "m.py") == ["m.py:f (81 lines)"]
    explained = _function(LIMIT + 1, "# One piece: the hot loop keeps its state in locals.")
    assert unexplained_long_functions(explained, "m.py") == []
    docstring = _function(LIMIT + 1, '"""Hot.\n\n    One piece: a call per node costs."""')
    assert unexplained_long_functions(docstring, "m.py") == []
