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

log "system packages (librdkafka is built from the rdkafka crate's bundled source)"
# librdkafka's configure/make build needs a C toolchain, pkg-config and OpenSSL's headers (TLS
# and SASL/SCRAM to brokers). Debian's own librdkafka is too old for some brokers and is not used.
missing=()
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v make >/dev/null || missing+=(make)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

log "Kafka-protocol broker for the Kafka tests (tansu 0.6.0)"
export PATH="$HOME/.cargo/bin:$PATH"
if ! tansu --version 2>/dev/null | grep -qx 'tansu 0.6.0'; then
  # About 11 minutes on 2 cores, once per machine.
  cargo install tansu --version 0.6.0 --locked --features dynostore
fi
tansu --version

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
