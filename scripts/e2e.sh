#!/usr/bin/env bash
# End-to-end load run: like load.sh (traceloom on core 1, otlpgen on core 0), but the clock runs
# until every span sent has gone all the way through: written by every sink
# (traceloom_sink_written_spans_total), or dropped or removed by a stage
# (traceloom_stage_dropped_spans_total, traceloom_stage_spans_removed_total). traceloom runs in a
# fresh temporary directory, so the pipeline's relative paths (./data/...) start empty.
#
#   scripts/e2e.sh PIPELINE [-- OTLPGEN SEND ARGS...]   (the admin server must be on 127.0.0.1:8888)
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline=$1
shift
[ "${1:-}" = "--" ] && shift
otlpgen=${OTLPGEN:-../shared/tools/otlpgen/target/release/otlpgen}
sinks=$(python3 -c 'import sys,re; t=open(sys.argv[1]).read(); print(len(re.findall(r"^\s+type: (parquet|kafka|debug|discard)", t, re.M)))' "$pipeline")
# TRACELOOM_CPUS: the cores traceloom may use (default 1; otlpgen always runs on core 0).
cpus=${TRACELOOM_CPUS:-1}
# TRACELOOM_BIN runs a prebuilt binary instead (to compare builds in interleaved runs).
bin=${TRACELOOM_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --bin traceloom >/dev/null
  bin=$PWD/target/release/traceloom
fi
work=$(mktemp -d)
config=$(realpath "$pipeline")
(cd "$work" && exec taskset -c "$cpus" "$bin" --log-level warn run --config "$config") &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
until curl -fs http://127.0.0.1:8888/health >/dev/null 2>&1; do sleep 0.1; done
# Sinks' written spans, plus every sink's share of the spans stages dropped or removed.
through() {
  curl -fs http://127.0.0.1:8888/metrics | awk -v k="$sinks" '
    /^traceloom_sink_written_spans_total/ {s += $2}
    /^traceloom_stage_(dropped_spans|spans_removed)_total/ {s += k * $2}
    END {printf "%d\n", s}'
}
result=$(taskset -c 0 "$otlpgen" send "$@")
returned=$(date +%s.%N)
echo "$result"
sent=$(printf '%s' "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["spans_sent"])')
# otlpgen's clock starts at its first request (after --pregen): count from there.
start=$(printf '%s' "$result" | python3 -c "import json,sys; print($returned - json.load(sys.stdin)['elapsed_s'])")
until [ "$(through)" -ge $((sent * sinks)) ]; do sleep 0.05; done
end=$(date +%s.%N)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")  # utime + stime, every thread
kill -TERM $pid; wait $pid || true
trap - EXIT
rm -rf "$work"
awk -v s="$start" -v e="$end" -v n="$sent" -v peak="$peak" -v cpu="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {
  printf "end to end: %d spans in every sink in %.2f s = %.0f spans/s; peak RSS %.1f MiB; traceloom CPU %.1f s = %.2f us/span\n",
    n, e - s, n / (e - s), peak / 1024, cpu / hz, 1e6 * cpu / hz / n }'
