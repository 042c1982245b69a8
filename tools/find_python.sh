#!/usr/bin/env bash
# Prints the path of a CPython 3.12 that can create a virtual environment
# (what `make` builds .venv with), or says in one line on stderr what to
# install or set, and exits 1:
#
#   bash tools/find_python.sh
#
# Tried in order: $PYTHON, then python3.12, python3 and python on the PATH.
# A pyenv shim that cannot run (its selected version is not installed, or
# is not a 3.12) is named with the fix: PYENV_VERSION=<an installed 3.12>,
# or `pyenv install 3.12`.
set -u
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  exec bash "$(dirname "$0")/help.sh" "$0"
fi

# The interpreter's own path if it is CPython 3.12; nothing otherwise.
python_312() {
  "$1" -c 'import sys, platform
if sys.version_info[:2] == (3, 12) and platform.python_implementation() == "CPython":
  print(sys.executable)' 2>/dev/null
}

fail() {
  echo "error: $*" >&2
  exit 1
}

found_non_312=()
shims=()
for name in ${PYTHON:+"$PYTHON"} python3.12 python3 python; do
  path=$(command -v "$name") || continue
  executable=$(python_312 "$path")
  if [[ -n "$executable" ]]; then
    if ! "$executable" -c 'import ensurepip, venv' 2>/dev/null; then
      fail "$executable is CPython 3.12 without venv/ensurepip: install" \
        "them (Debian, Ubuntu: apt install python3.12-venv), or set" \
        "PYTHON=/path/to/another/python3.12."
    fi
    echo "$executable"
    exit 0
  fi
  if [[ -n "${PYTHON:-}" && "$name" == "$PYTHON" ]]; then
    fail "PYTHON=$PYTHON is not a working CPython 3.12; unset it or point" \
      "it at one."
  fi
  if command -v pyenv >/dev/null &&
    [[ "${path%/*}" == "$(pyenv root 2>/dev/null)/shims" ]]; then
    shims+=("$path")
  else
    found_non_312+=("$path")
  fi
done

if ((${#shims[@]})); then
  # Why the shim does not give a 3.12 here (pyenv's own first line).
  IFS= read -r why < <("${shims[0]}" --version 2>&1)
  installed=""
  while read -r version; do
    [[ "$version" =~ ^3\.12\.[0-9]+$ ]] && installed=$version
  done < <(pyenv versions --bare 2>/dev/null)
  if [[ -n "$installed" ]]; then
    fail "${shims[0]} is a pyenv shim that gives no CPython 3.12 here" \
      "($why); pyenv has $installed: rerun with PYENV_VERSION=$installed" \
      "(e.g. PYENV_VERSION=$installed make quickstart)."
  fi
  fail "${shims[0]} is a pyenv shim and pyenv has no CPython 3.12 ($why):" \
    "run pyenv install 3.12, or set PYTHON=/path/to/python3.12."
fi
not_312=${found_non_312[*]:+; ${found_non_312[*]} are not 3.12}
fail "no CPython 3.12 found (tried \$PYTHON, python3.12, python3, python" \
  "on the PATH$not_312): install it (python.org, apt install python3.12" \
  "python3.12-venv, pyenv install 3.12) or set PYTHON=/path/to/python3.12."
