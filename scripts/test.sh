#!/usr/bin/env bash
# The one test command (README "Run the tests"): installs what the tests need when it is
# missing, then runs formatting, lints and every test. Safe to run again; fast when everything
# is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

log "toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version

# mkfifo (coreutils) and kill (procps) are used by the back-pressure and shutdown tests.
for tool in mkfifo kill; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

log "python environment (MLflow, the oracle of the compatibility tests)"
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-venv; }
TRACELOOM_PYTHON=$(scripts/python-env.sh)
export TRACELOOM_PYTHON
"$TRACELOOM_PYTHON" -c 'import mlflow; print("mlflow", mlflow.__version__)'

log "format"
cargo fmt --all -- --check

log "lint"
cargo clippy --all-targets --locked -- -D warnings

log "tests (unit, integration, benchmarks in test mode)"
cargo test --all-targets --locked
