"""The README's set-up and test commands, .ci/run, and what scripts/setup.sh does.

setup.sh runs here in a copy of the project among fake commands (dpkg-query,
apt-get, sudo, id, python3 and the venv's python, the C reference's runner)
that log what they are asked to do, so the test sees which packages it would
install, when it asks, and how it makes the virtual environment, without
touching this machine.
"""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS_NEED = ["xenstore-utils", "xen-utils-4.17", "groff-base"]
SHIM_NEEDS = ["libxen-dev", "gcc", "libc6-dev"]

FAKES = {
    # dpkg-query -W -f=FORMAT PACKAGE: installed if listed in $FAKE/installed
    "dpkg-query": """
pkg=${@: -1}
grep -qx "$pkg" "$FAKE/installed" || exit 1
echo "install ok installed"
""",
    "apt-get": """
echo "apt-get $*" >> "$FAKE/log"
[ "$1" = install ] && for a in "$@"; do case $a in -*|install) ;; *) echo "$a" >> "$FAKE/installed";; esac; done
exit 0
""",
    "sudo": """
echo "sudo $1" >> "$FAKE/log"
exec "$@"
""",
    "id": """
echo "${FAKE_UID:-0}"
""",
    # Debian's python3: ensurepip only once python3-venv is installed
    "python3": """
case "$1" in
  -V) echo "Python 3.11.2" ;;
  -c) case "$2" in
        *ensurepip*) grep -qx python3-venv "$FAKE/installed" ;;
        *) exit 0 ;;
      esac ;;
  -m) echo "python3 $*" >> "$FAKE/log"
      dir=${@: -1}
      mkdir -p "$dir/bin"
      cp "$FAKE/venv-python" "$dir/bin/python" ;;
esac
""",
}

VENV_PYTHON = """
case "$1" in
  -V) echo "Python 3.11.2" ;;
  -c) exit 0 ;;
  *) echo "venv-python $*" >> "$FAKE/log" ;;
esac
"""

RUNNER = """#!/bin/sh
echo "runner $*" >> "$FAKE/log"
"""


@dataclass
class Sandbox:
    root: Path
    fake: Path

    def install(self, *packages: str) -> None:
        with open(self.fake / "installed", "a") as f:
            f.write("".join(p + "\n" for p in packages))

    def log(self) -> list[str]:
        path = self.fake / "log"
        return path.read_text().splitlines() if path.exists() else []

    def run(self, answer: str | None = None, **env: str) -> tuple[int, str]:
        """Run setup.sh; ``answer`` is typed on a terminal, else stdin is /dev/null."""
        full_env = {
            "PATH": f"{self.fake / 'bin'}:/usr/bin:/bin",
            "FAKE": str(self.fake),
            "HOME": str(self.root),
            "PYTHON": "python3",
            **env,
        }
        cmd = ["bash", str(self.root / "proj" / "scripts" / "setup.sh")]
        if answer is None:
            out = subprocess.run(
                cmd, env=full_env, stdin=subprocess.DEVNULL, capture_output=True, text=True
            )
            return out.returncode, out.stdout + out.stderr
        controller, terminal = pty.openpty()
        try:
            proc = subprocess.Popen(
                cmd, env=full_env, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            os.write(controller, answer.encode() + b"\n")
            stdout, _ = proc.communicate(timeout=60)
        finally:
            os.close(controller)
            os.close(terminal)
        return proc.returncode, stdout.decode()


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    proj = tmp_path / "proj"
    (proj / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", proj / "scripts" / "setup.sh")
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    (fake / "installed").write_text("")
    for name, body in FAKES.items():
        (fake / "bin" / name).write_text("#!/bin/bash\n" + body)
        (fake / "bin" / name).chmod(0o755)
    (fake / "venv-python").write_text("#!/bin/bash\n" + VENV_PYTHON)
    (fake / "venv-python").chmod(0o755)
    return Sandbox(tmp_path, fake)


def with_runner(sandbox: Sandbox, peers: Path | None = None) -> None:
    peers = peers or sandbox.root / "shared" / "peers"
    peers.mkdir(parents=True)
    (peers / "reference-xenstored").write_text(RUNNER)
    (peers / "reference-xenstored").chmod(0o755)


def installed_by_apt(log: list[str]) -> list[str]:
    return [
        word
        for line in log
        if line.startswith("apt-get install")
        for word in line.split()[2:]
        if not word.startswith("-")
    ]


def test_ci_installs_without_asking_then_makes_the_venv_and_builds_the_shim(
    sandbox: Sandbox,
) -> None:
    with_runner(sandbox)
    code, out = sandbox.run(CI="true")
    assert code == 0, out
    log = sandbox.log()
    assert sorted(installed_by_apt(log)) == sorted([*TESTS_NEED, *SHIM_NEEDS, "python3-venv"])
    assert "apt-get update -qq" in log
    assert "missing: " in out and "CI is set" in out and "[y/N]" not in out
    assert "python3 -m venv --clear .venv" in log
    assert "venv-python -m pip install -q -e .[test]" in log
    assert "runner install" in log
    # apt first (the venv needs python3-venv), then the venv, pip, the shim
    order = [line.split()[0] for line in log if not line.startswith("apt-get update")]
    assert order == ["apt-get", "python3", "venv-python", "runner"]
    assert "virtual environment in .venv" in out and ". .venv/bin/activate" in out


def test_the_reference_is_found_through_pyxenstored_peers(sandbox: Sandbox) -> None:
    elsewhere = sandbox.root / "elsewhere"
    with_runner(sandbox, elsewhere)
    code, out = sandbox.run(CI="true", PYXENSTORED_PEERS=str(elsewhere))
    assert code == 0, out
    assert "runner install" in sandbox.log()
    assert sorted(SHIM_NEEDS) == sorted(set(SHIM_NEEDS) & set(installed_by_apt(sandbox.log())))


def test_without_a_terminal_nothing_is_installed_and_it_says_so(sandbox: Sandbox) -> None:
    with_runner(sandbox)
    sandbox.install("python3-venv")
    code, out = sandbox.run()
    assert code == 0, out
    log = sandbox.log()
    assert installed_by_apt(log) == []
    for package in [*TESTS_NEED, *SHIM_NEEDS]:
        assert package in out
    assert "not installing them" in out
    assert "runner install" not in log  # its own apt-get would install them unasked
    assert "venv-python -m pip install -q -e .[test]" in log


@pytest.mark.parametrize("answer", ["y", "n"])
def test_asks_on_a_terminal(sandbox: Sandbox, answer: str) -> None:
    sandbox.install("python3-venv", "xen-utils-4.17", "groff-base")
    code, out = sandbox.run(answer=answer)
    assert code == 0, out
    assert "install them now with apt-get? [y/N]" in out
    assert installed_by_apt(sandbox.log()) == (["xenstore-utils"] if answer == "y" else [])


def test_not_root_goes_through_sudo(sandbox: Sandbox) -> None:
    sandbox.install("python3-venv", "xen-utils-4.17", "groff-base")
    code, out = sandbox.run(CI="1", FAKE_UID="1000")
    assert code == 0, out
    log = sandbox.log()
    assert "sudo apt-get" in log and "sudo env" in log
    assert installed_by_apt(log) == ["xenstore-utils"]


def test_all_present_no_question_and_the_venv_is_reused(sandbox: Sandbox) -> None:
    with_runner(sandbox)
    sandbox.install("python3-venv", *TESTS_NEED, *SHIM_NEEDS)
    assert sandbox.run()[0] == 0
    code, out = sandbox.run()
    assert code == 0, out
    log = sandbox.log()
    assert installed_by_apt(log) == [] and "[y/N]" not in out
    assert log.count("python3 -m venv --clear .venv") == 1
    assert "reusing the virtual environment .venv" in out
    assert log.count("runner install") == 2


def test_no_venv_module_and_declined_is_a_clear_error(sandbox: Sandbox) -> None:
    sandbox.install(*TESTS_NEED)
    code, out = sandbox.run()
    assert code != 0
    assert "python3-venv" in out and "cannot make a virtual environment" in out


def commands(text: str) -> list[str]:
    """The command lines of a shell text, comments and blank lines left out."""
    lines = (line.split(" #", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def readme_setup_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Set up, run, test", 1)[1]
    return commands(section.split("```sh\n", 1)[1].split("```", 1)[0])


def test_readme_setup_is_two_commands_then_the_daemon_then_the_tests() -> None:
    assert readme_setup_commands() == [
        "bash scripts/setup.sh",
        ". .venv/bin/activate",
        "pyxenstored",
        "python3 -m pytest",
    ]


def test_ci_runs_setup_then_linters_then_the_readme_test_command_in_the_venv() -> None:
    ci = commands((REPO / ".ci" / "run").read_text())
    setup, activate, _daemon, test = readme_setup_commands()
    assert ci == [
        "set -euo pipefail",
        'cd "$(dirname "$0")/.."',
        setup,
        activate,
        "ruff check src tests bench",
        "ruff format --check src tests bench",
        "mypy",
        test,
    ]
