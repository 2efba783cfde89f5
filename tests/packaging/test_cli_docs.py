"""What the commands say of themselves: --version, --help, the man pages, bash completion.

The man pages (``man/``) and the completion scripts (``contrib/completion/``)
are written from the argparse definitions by ``pyxenstored.tools``; these
tests regenerate them and compare with the committed files, so that an
option added without regenerating fails here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.util import require_tool

import pyxenstored
from pyxenstored.cli import daemon, migrate_cmd, stream_tool
from pyxenstored.cli.helptext import Section, epilog
from pyxenstored.tools import completion, manpage
from pyxenstored.tools.argspec import Command, commands, describe

REPO = Path(__file__).resolve().parents[2]


def all_commands() -> list[Command]:
    found = []
    for command in commands():
        found.append(command)
        found.extend(command.subcommands)
    return found


# --- the committed files are current ------------------------------------------


@pytest.mark.parametrize("name", sorted(manpage.pages()))
def test_man_page_is_current(name: str) -> None:
    committed = (REPO / "man" / name).read_text(encoding="utf-8")
    assert committed == manpage.pages()[name], (
        f"man/{name} is stale: run python -m pyxenstored.tools.manpage"
    )


@pytest.mark.parametrize("name", sorted(completion.scripts()))
def test_completion_script_is_current(name: str) -> None:
    committed = (REPO / "contrib" / "completion" / name).read_text(encoding="utf-8")
    assert committed == completion.scripts()[name], (
        f"contrib/completion/{name} is stale: run python -m pyxenstored.tools.completion"
    )


@pytest.mark.parametrize("tool", [manpage, completion])
def test_check_mode_finds_stale_files_and_writing_makes_them_current(
    tool: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = tool.main  # type: ignore[attr-defined]
    assert main(["--check", "--output", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []  # --check writes nothing
    assert main(["--output", str(tmp_path)]) == 0
    assert main(["--check", "--output", str(tmp_path)]) == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(
        {"pyxenstored.8", "xenstore-stream.1"}
        if tool is manpage
        else {"pyxenstored", "xenstore-stream"}
    )
    (tmp_path / written[0]).write_text("edited by hand\n")
    assert main(["--check", "--output", str(tmp_path)]) == 1
    assert "is not current" in capsys.readouterr().err


def test_generators_read_the_options_a_parser_has_when_they_run() -> None:
    parser = argparse.ArgumentParser(prog="toy", description="a toy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    grow = sub.add_parser("grow", help="make it grow")
    grow.add_argument("--colour", choices=("red", "green"), help="its colour, %(choices)s")
    grow.add_argument("--into", metavar="DIR", help="where it grows")
    grow.add_argument("seed", help="the seed")
    grow.add_argument("path", nargs="?", help="a xenstore path")
    toy = describe(
        parser,
        summary="a toy",
        sections=(Section("exit status", (("0", "grown"),), man="EXIT STATUS"),),
    )
    page = manpage.Page("toy", 1, "User Commands", ("A toy.",), ("ls(1)",), "nothing")
    roff = manpage.render(page, toy)
    assert "\\fB\\-\\-colour\\fR \\fI{red,green}\\fR\nits colour, red, green" in roff
    assert '.SS "toy grow"' in roff and "Make it grow." in roff
    assert ".SH EXIT STATUS\n.TP\n\\fB0\\fR\ngrown" in roff
    assert [o.completes for o in toy.subcommands[0].options if o.positional] == ["file", "none"]
    bash = completion.script(toy)
    assert "--colour)\n                mapfile -t COMPREPLY < <(compgen -W 'red green'" in bash
    assert (
        "--into)\n                compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -d"
        in bash
    )


# --- the man pages -------------------------------------------------------------


def test_man_pages_name_every_option_and_subcommand() -> None:
    pages = manpage.pages()
    for command, name in zip(commands(), ("pyxenstored.8", "xenstore-stream.1"), strict=True):
        roff = pages[name]
        for each in (command, *command.subcommands):
            assert manpage.esc(each.prog) in roff
            for option in each.options:
                for flag in option.flags:
                    assert f"\\fB{manpage.esc(flag)}\\fR" in roff, (name, flag)


def test_man_page_sections() -> None:
    pages = manpage.pages()
    for name, roff in pages.items():
        for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SEE ALSO"):
            assert f"\n.SH {heading}\n" in roff, (name, heading)
    daemon_page = pages["pyxenstored.8"]
    assert "\n.TH PYXENSTORED 8 " in daemon_page
    for heading in ("ENVIRONMENT", "FILES", "COMMANDS"):
        assert f"\n.SH {heading}\n" in daemon_page
    environment = daemon_page.split(".SH ENVIRONMENT\n")[1].split(".SH ")[0]
    for variable in (
        "XENSTORED_PATH",
        "XENSTORED_RUNDIR",
        "PYXENSTORED_HYPERVISOR",
        "NOTIFY_SOCKET",
        "XS_SHIM_RINGDIR",
    ):
        assert f"\\fB{manpage.esc(variable)}\\fR" in environment
    assert "pyxenstored migrate" in daemon_page
    assert ".BR xenstore\\-stream (1)" in daemon_page


def test_escaping_keeps_roff_requests_out_of_text() -> None:
    assert (
        manpage.esc(".hidden\n'also\nback\\slash -x") == "\\&.hidden\n\\&'also\nback\\eslash \\-x"
    )


@pytest.mark.parametrize("name", sorted(manpage.pages()))
def test_man_page_renders_without_warnings(name: str) -> None:
    groff = require_tool("groff")
    out = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z", str(REPO / "man" / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stderr) == (0, "")


# --- --help and --version ------------------------------------------------------------


def test_every_option_and_subcommand_has_help() -> None:
    for command in all_commands():
        assert command.summary or command.description, command.prog
        for option in command.options:
            assert option.help.strip(), (command.prog, option.flags or option.metavar)


def parsers() -> list[argparse.ArgumentParser]:
    stream = stream_tool.build_parser()
    subs = [a for a in stream._actions if isinstance(a, argparse._SubParsersAction)]
    return [daemon.build_parser(), migrate_cmd.build_parser(), stream, *subs[0].choices.values()]


@pytest.mark.parametrize("parser", parsers(), ids=lambda p: p.prog)
def test_every_help_ends_with_the_exit_statuses(parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    statuses = text.split("\nexit status:\n", 1)[1]
    assert statuses.startswith("  0  ") and "\n  2  " in statuses


def test_stream_tool_help_sections_say_what_each_command_returns() -> None:
    assert "1" in dict(stream_tool.exit_status("check").items)
    assert "1" not in dict(stream_tool.exit_status("dump").items)
    whole = dict(stream_tool.exit_status(None).items)
    assert "check: errors found" in whole["1"] and "diff: the streams differ" in whole["1"]


def test_epilog_layout() -> None:
    section = Section("exit status", (("0", "fine " * 30), ("a-rather-long-term-here-yes", "x")))
    text = epilog(section, note="See more.")
    lines = text.splitlines()
    assert lines[0] == "exit status:"
    assert lines[1].startswith("  " + "0".ljust(24) + "  fine")
    assert all(len(line) <= 79 for line in lines)
    assert "  a-rather-long-term-here-yes" in lines
    assert text.endswith("\n\nSee more.\n")


def test_stream_tool_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        stream_tool.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"xenstore-stream {pyxenstored.__version__}\n"


def test_stream_tool_version_as_installed() -> None:
    script = require_tool("xenstore-stream")
    out = subprocess.run(
        [script, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
    )
    assert (out.returncode, out.stdout) == (0, f"xenstore-stream {pyxenstored.__version__}\n")


def test_python_m_pyxenstored_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pyxenstored", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
    )
    assert (out.returncode, out.stdout) == (0, f"pyxenstored {pyxenstored.__version__}\n")


@pytest.mark.parametrize("spelling", ["--stream-version", "--version"])
def test_stream_version_and_its_old_spelling(spelling: str, tmp_path: Path) -> None:
    from pyxenstored.stream.reader import StreamReader

    synth = tmp_path / "s.xs"
    out = tmp_path / "v1.xs"
    assert stream_tool.main(["synth", str(synth), "--domains", "1", spelling, "1"]) == 0
    with StreamReader(str(synth)) as reader:
        assert reader.header.version == 1
    assert stream_tool.main(["convert", str(synth), str(out), spelling, "2"]) == 0
    with StreamReader(str(out)) as reader:
        assert reader.header.version == 2


# --- bash completion ------------------------------------------------------------------


def complete(command: str, *words: str, cwd: Path) -> list[str]:
    """What the committed completion function offers for ``command WORDS`` (the last word: being typed)."""
    bash = require_tool("bash")
    function = completion.function_name(command)
    script = (
        f'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); '
        f'{function}; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    out = subprocess.run(
        [
            bash,
            "--norc",
            "-c",
            script,
            "bash",
            str(REPO / "contrib" / "completion" / command),
            command,
            *words,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert out.returncode == 0, out.stderr
    return sorted(line for line in out.stdout.splitlines() if line)


def test_bash_completes_stream_commands_options_and_values(tmp_path: Path) -> None:
    (tmp_path / "dump-a.xs").touch()
    (tmp_path / "dump-b.xs").touch()
    assert complete("xenstore-stream", "con", cwd=tmp_path) == ["convert"]
    assert complete("xenstore-stream", "--ver", cwd=tmp_path) == ["--version"]
    assert complete("xenstore-stream", "convert", "--e", cwd=tmp_path) == ["--endian"]
    assert complete("xenstore-stream", "convert", "--endian", "", cwd=tmp_path) == [
        "big",
        "little",
        "same",
    ]
    assert complete("xenstore-stream", "convert", "--endian", "=", "b", cwd=tmp_path) == ["big"]
    assert complete("xenstore-stream", "synth", "out", "--stream-version", "", cwd=tmp_path) == [
        "1",
        "2",
    ]
    assert complete("xenstore-stream", "dump", "du", cwd=tmp_path) == ["dump-a.xs", "dump-b.xs"]
    # After an option's value, the next word is a file again.
    assert complete("xenstore-stream", "convert", "--endian", "big", "dump-a", cwd=tmp_path) == [
        "dump-a.xs"
    ]


def test_bash_completes_the_daemon_and_migrate(tmp_path: Path) -> None:
    (tmp_path / "rundir").mkdir()
    (tmp_path / "run.sock").touch()
    assert complete("pyxenstored", "mig", cwd=tmp_path) == ["migrate"]
    assert complete("pyxenstored", "-N", "mig", cwd=tmp_path) == []  # migrate only comes first
    assert complete("pyxenstored", "--hyp", cwd=tmp_path) == ["--hypervisor"]
    assert complete("pyxenstored", "--hypervisor", "s", cwd=tmp_path) == ["sim"]
    assert complete("pyxenstored", "--rundir", "ru", cwd=tmp_path) == ["rundir"]  # directories only
    assert complete("pyxenstored", "migrate", "--st", cwd=tmp_path) == ["--state-file"]
    assert complete("pyxenstored", "migrate", "--from", "run", cwd=tmp_path) == [
        "run.sock",
        "rundir",
    ]
