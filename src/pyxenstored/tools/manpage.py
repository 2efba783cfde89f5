"""Write the man pages ``pyxenstored(8)`` and ``xenstore-stream(1)`` from the argparse definitions.

Usage (from the top of the source tree; the pages are committed in ``man/``)::

    python -m pyxenstored.tools.manpage            # rewrite man/*.1, man/*.8
    python -m pyxenstored.tools.manpage --check    # exit 1 if they are stale

Options, sub-commands and their help come from the parsers the commands
build (:mod:`~pyxenstored.tools.argspec`); exit status, environment and
files from the same :class:`~pyxenstored.cli.helptext.Section` items their
``--help`` ends with.  What only a man page says (the longer description,
SEE ALSO) is here.  The roff uses only the classic ``man`` macros, without
a date, so the output depends on nothing but the parsers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyxenstored import __version__
from pyxenstored.cli.helptext import Section
from pyxenstored.tools.argspec import Command, Option, commands

GENERATED = (
    '.\\" Written by "python -m pyxenstored.tools.manpage" from the argparse '
    "definitions: do not edit."
)


@dataclass(slots=True, frozen=True)
class Page:
    """What a man page says beyond ``--help``."""

    command: str
    section: int
    manual: str
    description: tuple[str, ...]
    see_also: tuple[str, ...]
    # Where to read more, by name (documents in the source tree or xen.git).
    documents: str

    @property
    def filename(self) -> str:
        return f"{self.command}.{self.section}"


PAGES = (
    Page(
        command="pyxenstored",
        section=8,
        manual="System Administration",
        description=(
            "pyxenstored serves the Xenstore protocol of xenstore.txt on a unix "
            "socket and, through its hypervisor backend, to guest domains on the "
            "shared ring pages of xenstore-ring.txt.  It takes the command line of "
            "the C xenstored (Xen 4.17 and later), so that a host's init script can "
            "start it in the C daemon's place; options it does not know are ignored "
            "with a warning, as the C daemon does.",
            "As the C daemon, it forks into the background unless -N is given.  "
            "Unlike it, the command returns only once the daemon listens (or with "
            "the reason it did not start, and a status that is not 0), and a second "
            "daemon never takes over the socket of a live one.  Once it listens it "
            "prints XENSTORED_PATH=socket on standard output.",
            "A live update (xenstore-control live-update) hands the whole state, "
            "as a migration stream (xenstore-migration.md), to a new pyxenstored or "
            "to the C xenstored, and back.  pyxenstored migrate moves one domain's "
            "state from one daemon to another.",
        ),
        see_also=(
            "xenstore-stream(1)",
            "xenstored(8)",
            "oxenstored(8)",
            "xenstore-control(1)",
            "xenstore-ls(1)",
            "sd_notify(3)",
        ),
        documents="docs/xen-host.md, docs/compat.md and docs/migration.md in the "
        "source; xenstore.txt, xenstore-ring.txt and xenstore-migration.md in "
        "docs/misc and docs/designs of xen.git.",
    ),
    Page(
        command="xenstore-stream",
        section=1,
        manual="User Commands",
        description=(
            "xenstore-stream reads, checks, compares, converts and writes the "
            "Xenstore migration stream of xenstore-migration.md, versions 1 and 2 "
            "in either byte order: the state a xenstored hands on in a live update "
            "and the one domain-state-save writes for a domain's migration.",
            "Where a command reads a stream, - stands for standard input.  Errors "
            "are one line on standard error, never a traceback; a progress line is "
            "shown on a terminal when a command takes more than a second.",
        ),
        see_also=("pyxenstored(8)", "xenstored(8)", "xenstore-ls(1)"),
        documents="docs/stream.md in the source; xenstore-migration.md in docs/designs of xen.git.",
    ),
)


def render(page: Page, command: Command) -> str:
    """The man page, as roff."""
    out = [
        GENERATED,
        f'.TH {page.command.upper()} {page.section} "" "pyxenstored {__version__}" "{page.manual}"',
        ".SH NAME",
        f"{esc(page.command)} \\- {esc(command.summary)}",
        ".SH SYNOPSIS",
    ]
    out += _synopsis(command)
    for sub in command.subcommands:
        out += [".br", *_synopsis(sub)]
    out.append(".SH DESCRIPTION")
    for paragraph in page.description:
        out += [".PP", esc(paragraph)]
    out.append(".SH OPTIONS")
    for group in command.groups:
        if group.title != "options":  # argparse's own group, first: no heading
            out.append(f'.SS "{esc(group.title)}"')
        out += _option_list(group.options)
    if command.subcommands:
        out += [".SH COMMANDS", *_commands(command)]
    for section in command.sections:
        if section.man:
            out += [f".SH {section.man}", *_items(section)]
    out += [
        ".SH SEE ALSO",
        ",\n".join(_reference(name) for name in page.see_also),
        ".PP",
        esc(page.documents),
    ]
    return "\n".join(out) + "\n"


def _synopsis(command: Command) -> list[str]:
    others = [o for o in command.options if not o.required and "--help" not in o.flags]
    words = ["[\\fIOPTION\\fR]..."] if [o for o in others if not o.positional] else []
    # Required options before the positional arguments, as usage lines go.
    words += [_label(o, long_only=True) for o in command.options if o.required and o.flags]
    words += [_label(o) for o in command.options if o.positional]
    if command.subcommands and not command.subcommand_first:
        words.append("\\fICOMMAND\\fR [\\fIARG\\fR]...")
    return [f".B {esc(command.prog)}", " ".join(words)] if words else [f".B {esc(command.prog)}"]


def _commands(command: Command) -> list[str]:
    out: list[str] = []
    for sub in command.subcommands:
        out.append(f'.SS "{esc(sub.prog)}"')
        description = " ".join(sub.description.split())
        for paragraph in dict.fromkeys(p for p in (sub.summary, description) if p):
            out += [".PP", esc(_sentence(paragraph))]
        options = [o for o in sub.options if "--help" not in o.flags]
        if options:
            out += _option_list(tuple(options))
        for section in sub.sections:
            out += [".PP", esc(_sentence(section.title)[:-1] + ":"), *_items(section)]
    return out


def _option_list(options: Sequence[Option]) -> list[str]:
    out: list[str] = []
    for option in options:
        out += [".TP", _label(option), esc(option.help)]
    return out


def _label(option: Option, long_only: bool = False) -> str:
    """``\\fB--entry-nb\\fR \\fIN\\fR``: the option's spellings and its value."""
    if option.positional:
        return f"\\fI{esc(option.metavar or '')}\\fR"
    flags = option.flags
    if long_only:
        flags = tuple(flag for flag in flags if flag.startswith("--"))[:1] or flags[:1]
    label = ", ".join(f"\\fB{esc(flag)}\\fR" for flag in flags)
    if option.metavar is not None:
        value = f"\\fI{esc(option.metavar)}\\fR"
        label += f" [{value}]" if option.value_optional else f" {value}"
    return label


def _items(section: Section) -> list[str]:
    out: list[str] = []
    for term, text in section.items:
        out += [".TP", f"\\fB{esc(term)}\\fR", esc(" ".join(text.split()))]
    return out


def _reference(name: str) -> str:
    title, _, section = name.partition("(")
    return f".BR {esc(title)} ({section}"


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def esc(text: str) -> str:
    """``text`` as roff: backslashes and minus signs escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [line.strip() for line in text.split("\n")]
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in lines)


def pages() -> dict[str, str]:
    """Every man page: file name -> roff."""
    by_name = {command.prog: command for command in commands()}
    return {page.filename: render(page, by_name[page.command]) for page in PAGES}


def write_or_check(files: dict[str, str], directory: Path, check: bool) -> list[str]:
    """Write ``files`` into ``directory`` (or only compare); returns the names that differed."""
    stale = []
    for name, text in files.items():
        path = directory / name
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old == text:
            continue
        stale.append(name)
        if not check:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return stale


def tool_main(
    argv: Sequence[str] | None, files: dict[str, str], default_dir: str, what: str
) -> int:
    """The command line of this tool and of :mod:`~pyxenstored.tools.completion`."""
    parser = argparse.ArgumentParser(description=f"Write the {what} from the argparse definitions.")
    parser.add_argument(
        "--output", default=default_dir, metavar="DIR", help=f"default: {default_dir}"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is not current"
    )
    args = parser.parse_args(argv)
    stale = write_or_check(files, Path(args.output), args.check)
    for name in stale:
        verb = "is not current" if args.check else "written"
        print(f"{Path(args.output) / name}: {verb}", file=sys.stderr)
    return 1 if args.check and stale else 0


def main(argv: Sequence[str] | None = None) -> int:
    return tool_main(argv, pages(), "man", "man pages")


if __name__ == "__main__":
    sys.exit(main())
