"""Write the bash completion of ``pyxenstored`` and ``xenstore-stream`` from the argparse definitions.

Usage (from the top of the source tree; the scripts are committed in
``contrib/completion/``, one per command, named as bash-completion loads
them from ``/usr/share/bash-completion/completions/``)::

    python -m pyxenstored.tools.completion            # rewrite them
    python -m pyxenstored.tools.completion --check    # exit 1 if they are stale

Each script is one function with the command's options, sub-commands and
option values as data (from :mod:`~pyxenstored.tools.argspec`): it completes
option names, the sub-command, the choices of an option that has them, and
file or directory names where a file or directory is expected.  It needs
bash only, not the bash-completion package.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pyxenstored.tools.argspec import Command, Option, commands
from pyxenstored.tools.manpage import tool_main

HEADER = """\
# bash completion for {prog}
# Written by "python -m pyxenstored.tools.completion" from the argparse
# definitions: do not edit.  Install as
# /usr/share/bash-completion/completions/{prog}, or source it.
"""

# cur/prev with "--opt=value" split at "=" as bash's COMP_WORDBREAKS does.
PROLOGUE = """\
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} sub="" i
    COMPREPLY=()
    if [[ $cur == "=" ]]; then
        cur=""
    elif [[ $prev == "=" ]]; then
        prev=${COMP_WORDS[COMP_CWORD-2]}
    fi
"""

# The commands' sub-command: the first word that is neither an option nor
# an option's value.
FIND_SUBCOMMAND = """\
    local skip=0 word
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ $word == "=" ]]; then
            skip=1
            continue
        fi
        if ((skip)); then
            skip=0
            continue
        fi
        case $word in
{value_options}            -*) ;;
            *)
                sub=$word
                break
                ;;
        esac
    done
"""


def function_name(prog: str) -> str:
    return "_" + prog.replace("-", "_")


def script(command: Command) -> str:
    """The completion script of ``command``."""
    out = [HEADER.format(prog=command.prog), f"{function_name(command.prog)}() {{\n", PROLOGUE]
    if command.subcommand_first:
        names = "|".join(sub.name for sub in command.subcommands)
        out.append(
            f"    case ${{COMP_WORDS[1]}} in {names}) ((COMP_CWORD > 1)) && "
            "sub=${COMP_WORDS[1]} ;; esac\n"
        )
    elif command.subcommands:
        valued = _flags([o for o in command.options if o.metavar is not None and o.flags])
        value_options = f"            {valued}) skip=1 ;;\n" if valued else ""
        out.append(FIND_SUBCOMMAND.replace("{value_options}", value_options))
    out.append("    case $sub in\n")
    out.append(_branch('""', command, top=command))
    for sub in command.subcommands:
        out.append(_branch(sub.name, sub, top=command))
    out.append("    esac\n}\n")
    out.append(f"complete -F {function_name(command.prog)} {command.prog}\n")
    return "".join(out)


def _branch(label: str, command: Command, top: Command) -> str:
    """The completion once ``command`` is known: an option's value, an option, or an argument."""
    lines = [f"    {label})\n"]
    values = [o for o in command.options if o.metavar is not None and o.flags]
    if values:
        # Options whose values complete alike share one arm.
        arms: dict[str, list[Option]] = {}
        for option in values:
            arms.setdefault(_reply(option), []).append(option)
        lines.append("        case $prev in\n")
        for reply, options in arms.items():
            lines.append(f"            {_flags(options)})\n")
            lines.append(f"                {reply}\n                return\n")
            lines.append("                ;;\n")
        lines.append("        esac\n")
    words = " ".join(flag for option in command.options for flag in option.flags)
    lines.append("        if [[ $cur == -* ]]; then\n")
    lines.append(f"            {_words(words)}\n")
    argument = _argument(command, top)
    if argument:
        lines.append("        else\n")
        lines.append(f"            {argument}\n")
    lines.append("        fi\n        ;;\n")
    return "".join(lines)


def _argument(command: Command, top: Command) -> str:
    """What a word that is not an option completes to, in ``command``."""
    if command is top and command.subcommands:
        names = _words(" ".join(sub.name for sub in command.subcommands))
        return f"((COMP_CWORD == 1)) && {names}" if command.subcommand_first else names
    positionals = [o for o in command.options if o.positional]
    if not positionals:
        return ""
    # Any positional argument: they all name files (see argspec).
    return _reply(positionals[0])


def _reply(option: Option) -> str:
    if option.completes == "choices":
        return _words(" ".join(option.choices))
    if option.completes == "file":
        return 'compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$cur")'
    if option.completes == "dir":
        return 'compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -d -- "$cur")'
    return ":"  # a number or a name: nothing to offer


def _words(words: str) -> str:
    return f"mapfile -t COMPREPLY < <(compgen -W '{words}' -- \"$cur\")"


def _flags(options: Sequence[Option]) -> str:
    return "|".join(flag for option in options for flag in option.flags)


def scripts() -> dict[str, str]:
    """Every completion script: file name (the command's) -> bash."""
    return {command.prog: script(command) for command in commands()}


def main(argv: Sequence[str] | None = None) -> int:
    return tool_main(argv, scripts(), "contrib/completion", "bash completion scripts")


if __name__ == "__main__":
    sys.exit(main())
