"""The two commands' command lines as plain data, read from their argparse parsers.

The man pages (:mod:`~pyxenstored.tools.manpage`) and the shell completion
(:mod:`~pyxenstored.tools.completion`) are written from this description,
which is read from the parsers the commands themselves build, whatever
options they have when it runs: neither can drift from ``--help``.

argparse has no public way to list a parser's options, groups or
sub-commands; this module (and only this one) reads its attributes
``_actions``, ``_action_groups``, ``_group_actions`` and
``_choices_actions``, present unchanged since Python 3.2.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from pyxenstored.cli import daemon, migrate_cmd, stream_tool
from pyxenstored.cli.helptext import Section

# How a value is completed, from its metavar: a file name, a directory name.
FILE_METAVARS = frozenset({"FILE", "PATH", "SOCKET"})
DIR_METAVARS = frozenset({"DIR"})
# A positional argument of these names is a xenstore path, not a file.
XENSTORE_PATH_NAMES = frozenset({"path", "PATH", "node", "NODE"})


@dataclass(slots=True, frozen=True)
class Option:
    """One option or positional argument."""

    flags: tuple[str, ...]  # ("-E", "--entry-nb"); () for a positional argument
    metavar: str | None  # the value's name; None: takes no value
    help: str
    choices: tuple[str, ...] = ()
    completes: str = "none"  # the value: "file", "dir", "choices" or "none"
    required: bool = False
    value_optional: bool = False  # nargs="?": [VALUE]

    @property
    def positional(self) -> bool:
        return not self.flags


@dataclass(slots=True, frozen=True)
class Group:
    """Options under one title, as ``--help`` lists them."""

    title: str
    options: tuple[Option, ...]


@dataclass(slots=True, frozen=True)
class Command:
    """A command or sub-command: what ``--help`` says of it, and its sub-commands."""

    prog: str  # "xenstore-stream dump"
    summary: str  # one line
    description: str
    groups: tuple[Group, ...]
    subcommands: tuple[Command, ...] = ()
    # pyxenstored takes "migrate" only as its first word.
    subcommand_first: bool = False
    sections: tuple[Section, ...] = ()

    @property
    def name(self) -> str:
        return self.prog.rsplit(" ", 1)[-1]

    @property
    def options(self) -> tuple[Option, ...]:
        return tuple(option for group in self.groups for option in group.options)


def commands() -> tuple[Command, ...]:
    """``pyxenstored`` (with ``migrate``) and ``xenstore-stream``, as they are now."""
    migrate = describe(
        migrate_cmd.build_parser(),
        summary="",  # its description says it
        sections=(migrate_cmd.EXIT_STATUS,),
    )
    pyxenstored = describe(
        daemon.build_parser(),
        summary="Xenstore daemon, started and configured as the C xenstored",
        sections=(daemon.EXIT_STATUS, daemon.ENVIRONMENT, daemon.FILES),
    )
    pyxenstored = replace(pyxenstored, subcommands=(migrate,), subcommand_first=True)
    stream = describe(
        stream_tool.build_parser(),
        summary="read, check, compare and convert Xenstore migration streams",
        sections=(stream_tool.exit_status(None),),
    )
    return (pyxenstored, stream)


def describe(
    parser: argparse.ArgumentParser, summary: str, sections: tuple[Section, ...] = ()
) -> Command:
    """The command ``parser`` parses, with its sub-commands if it has any."""
    groups: list[Group] = []
    subcommands: list[Command] = []
    for group in parser._action_groups:
        options: list[Option] = []
        for action in group._group_actions:
            if isinstance(action, argparse._SubParsersAction):
                subcommands.extend(_subcommands(action))
            elif action.help != argparse.SUPPRESS:
                options.append(_option(action, parser.prog))
        if options:
            groups.append(Group(group.title or "options", tuple(options)))
    return Command(
        prog=parser.prog,
        summary=summary,
        description=parser.description or "",
        groups=tuple(groups),
        subcommands=tuple(subcommands),
        sections=sections,
    )


def _subcommands(action: argparse._SubParsersAction[argparse.ArgumentParser]) -> list[Command]:
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return [
        describe(parser, summary=helps.get(name, ""), sections=())
        for name, parser in action.choices.items()
    ]


def _option(action: argparse.Action, prog: str) -> Option:
    takes_value = action.nargs != 0
    metavar: str | None = None
    choices = tuple(str(choice) for choice in action.choices or ())
    if takes_value:
        if isinstance(action.metavar, str):
            metavar = action.metavar
        elif choices:
            metavar = "{" + ",".join(choices) + "}"
        else:
            metavar = action.dest if not action.option_strings else action.dest.upper()
    return Option(
        flags=tuple(action.option_strings),
        metavar=metavar,
        help=_expand_help(action, prog),
        choices=choices,
        completes=_completes(action, metavar, choices),
        required=action.required,
        value_optional=action.nargs == "?",
    )


def _completes(action: argparse.Action, metavar: str | None, choices: tuple[str, ...]) -> str:
    if metavar is None:
        return "none"
    if choices:
        return "choices"
    if metavar in DIR_METAVARS:
        return "dir"
    if metavar in FILE_METAVARS and action.option_strings:
        return "file"
    # The commands' other positional arguments all name files.
    if not action.option_strings and metavar not in XENSTORE_PATH_NAMES:
        return "file"
    return "none"


def _expand_help(action: argparse.Action, prog: str) -> str:
    """The help text with argparse's ``%(default)s``-style fields filled in, as --help shows it."""
    text = action.help or ""
    if "%" not in text:
        return text
    fields: dict[str, object] = dict(vars(action), prog=prog)
    if action.choices is not None:
        fields["choices"] = ", ".join(str(choice) for choice in action.choices)
    return text % fields
