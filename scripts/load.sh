#!/usr/bin/env bash
# End-to-end load run: traceloom (release) pinned to core 1, the shared otlpgen load generator
# pinned to core 0. Prints otlpgen's result line, then traceloom's CPU use and peak RSS.
#
#   scripts/load.sh [PIPELINE] [-- OTLPGEN SEND ARGS...]
#   OTLPGEN=/path/to/otlpgen scripts/load.sh pipelines/discard.yaml -- --protocol http-proto \
#       --endpoint http://127.0.0.1:4318/v1/traces --traces 500000
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline=${1:-pipelines/discard.yaml}
shift || true
[ "${1:-}" = "--" ] && shift
otlpgen=${OTLPGEN:-../shared/tools/otlpgen/target/release/otlpgen}
[ -x "$otlpgen" ] || { echo "build otlpgen first (see ../shared/tools/otlpgen/README.md) or set OTLPGEN" >&2; exit 1; }
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--endpoint grpc://127.0.0.1:4317 --traces 500000)

cargo build --release --locked --bin traceloom >/dev/null
taskset -c 1 target/release/traceloom --log-level warn run --config "$pipeline" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:8888/health >/dev/null 2>&1 && break
  ss -ltn | grep -q ':4317 ' && break
  sleep 0.1
done
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks)
result=$(taskset -c 0 "$otlpgen" send --pregen "${args[@]}")
echo "$result"
t1=$(ticks)
elapsed=$(printf '%s' "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["elapsed_s"])')
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
kill -TERM $pid; wait $pid || true
trap - EXIT
# traceloom is idle while otlpgen pre-generates, so its CPU time all falls in the send phase.
awk -v t="$((t1 - t0))" -v hz="$hz" -v e="$elapsed" -v peak="$peak" 'BEGIN {
  printf "traceloom: %.2f cpu-s over %.2f s of sending = %.0f%% of one core; peak RSS %.1f MiB\n", t / hz, e, 100 * t / hz / e, peak / 1024 }'
