#!/usr/bin/env bash
# Set-up of a machine for pyxenstored, run once (again at will):
#  1. the Debian packages the tests use: xenstore-utils and xen-utils-4.17 (the
#     real clients), groff-base (the man pages are rendered), and, when the C reference daemons are there (the
#     directory $PYXENSTORED_PEERS, default ../shared/peers from the top of
#     the repository; the tests use the same variable), what their runner
#     builds its shim with; it says which
#     are missing and asks before apt-get installs them (CI set: no question);
#  2. a virtual environment in .venv (made with the python3 on PATH, or
#     $PYTHON; reused when it is there), with this package installed editable
#     and its test tools (pip install -e '.[test]', from PyPI);
#  3. the C reference's shim, built by its runner when that is there.
# Afterwards, in each shell: . .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv
peers=${PYXENSTORED_PEERS:-../shared/peers} # the C reference daemons, when present
runner=$peers/reference-xenstored

say() { printf 'setup: %s\n' "$*"; }
die() {
  say "$*" >&2
  exit 1
}

have_python() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; }

"$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null ||
  die "pyxenstored needs Python 3.11 or later; $python is $("$python" -V 2>&1 || echo missing) (set PYTHON=...)"

# --- 1. Debian packages ------------------------------------------------------
wanted=(xenstore-utils xen-utils-4.17 groff-base)
[ -x "$runner" ] && wanted+=(libxen-dev gcc libc6-dev)
# Debian's python3 makes virtual environments only with python3-venv (ensurepip).
have_python || "$python" -c 'import ensurepip' 2>/dev/null || wanted+=(python3-venv)

missing_packages() {
  local p
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q ' installed$' || echo "$p"
  done
}

install_packages() {
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || {
      say "not root and no sudo: as root, run: apt-get install $*"
      return 0
    }
    sudo=(sudo)
  fi
  local as=${sudo[*]:+sudo }
  say "running: ${as}apt-get update && ${as}apt-get install --no-install-recommends $*"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

debian=
command -v dpkg-query >/dev/null && command -v apt-get >/dev/null && debian=yes
if [ -z "$debian" ]; then
  say "no dpkg/apt-get here: install ${wanted[*]} (or your system's equivalents) yourself;"
  say "the tests that need them skip without them (and fail when CI is set)"
else
  mapfile -t missing < <(missing_packages)
  if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages present: ${wanted[*]}"
  else
    say "Debian packages missing: ${missing[*]}"
    if [ -n "${CI:-}" ]; then
      say "CI is set: installing them without asking"
      answer=y
    elif [ -t 0 ]; then
      read -r -p "setup: install them now with apt-get? [y/N] " answer || answer=n
    else
      say "no terminal to ask on, so not installing them"
      answer=n
    fi
    case $answer in
      [yY]*) install_packages "${missing[@]}" ;;
      *) say "not installed; tests that need them will skip (later: apt-get install ${missing[*]})" ;;
    esac
  fi
fi

# --- 2. the virtual environment ------------------------------------------------
if have_python; then
  say "reusing the virtual environment $venv ($("$venv/bin/python" -V))"
else
  "$python" -c 'import ensurepip' 2>/dev/null ||
    die "$python cannot make a virtual environment: install Debian's python3-venv (apt-get install python3-venv)"
  [ -e "$venv" ] && say "$venv is not a usable virtual environment of Python 3.11+: making it again"
  say "making a virtual environment in $venv with $("$python" -V) ($(command -v "$python"))"
  "$python" -m venv --clear "$venv"
fi
say "installing pyxenstored (editable) and its test tools into $venv: pip install -e '.[test]'"
"$venv/bin/python" -m pip install -q -e '.[test]'

# --- 3. the C reference daemon's shim --------------------------------------------
if [ -x "$runner" ]; then
  # Its install step would run apt-get itself for what is missing: only call
  # it when nothing is, so that nothing is installed without the question above.
  if [ -n "$debian" ] && [ -z "$(missing_packages)" ]; then
    say "building the C reference daemon's shim: $runner install"
    "$runner" install
  else
    say "not building the C reference daemon's shim ($runner): its packages are missing"
  fi
fi
say "done; in each shell: . $venv/bin/activate"
