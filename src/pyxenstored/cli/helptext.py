"""Help sections shared by ``--help`` and the man pages: exit status, environment, files.

A command module states each such section once, as a :class:`Section` of
(term, meaning) items; :func:`epilog` lays the sections out for argparse's
``--help`` and :mod:`pyxenstored.tools.manpage` writes the same items as
the man page's EXIT STATUS, ENVIRONMENT and FILES, so the two cannot say
different things.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

# --help is laid out for this width whatever the terminal: the same text
# everywhere (and in the tests).
WIDTH = 79
# A term longer than this gets its meaning on the lines below it.
TERM_COLUMN = 24


@dataclass(slots=True, frozen=True)
class Section:
    """A titled list of terms and what they mean (``exit status``: ``0`` ...)."""

    title: str
    items: tuple[tuple[str, str], ...]
    # The man page section it becomes ("EXIT STATUS"); "" for none.
    man: str = ""


def epilog(*sections: Section, note: str = "") -> str:
    """The sections laid out as argparse's ``--help`` lays out its own, then ``note``."""
    blocks = [_section_text(section) for section in sections]
    if note:
        blocks.append(textwrap.fill(" ".join(note.split()), WIDTH))
    return "\n\n".join(blocks) + "\n"


def _section_text(section: Section) -> str:
    width = min(max(len(term) for term, _ in section.items), TERM_COLUMN)
    lines = [f"{section.title}:"]
    for term, text in section.items:
        indent = " " * (2 + width + 2)
        body = textwrap.wrap(" ".join(text.split()), WIDTH - len(indent))
        if len(term) > width:
            lines.append(f"  {term}")
        else:
            lines.append(f"  {term:<{width}}  {body.pop(0)}")
        lines.extend(indent + line for line in body)
    return "\n".join(lines)
