#!/usr/bin/env bash
# Creates .venv with MLflow (the oracle for MLflow compatibility tests) when it is missing or
# out of date; prints the venv's python. Fast when already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
requirements=tests/python/requirements.txt
stamp=$venv/.installed-$(sha256sum "$requirements" | cut -c1-16)
if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
echo "$PWD/$venv/bin/python"
