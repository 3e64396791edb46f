#!/usr/bin/env bash
# End-to-end load run: like load.sh (traceloom on core 1, otlpgen on core 0), but the clock runs
# until the pipeline's sinks have written every span (traceloom_sink_written_spans_total, summed
# over sinks and divided by their number), not only until the requests are answered.
#
#   scripts/e2e.sh PIPELINE [-- OTLPGEN SEND ARGS...]   (the admin server must be on 127.0.0.1:8888)
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline=$1
shift
[ "${1:-}" = "--" ] && shift
otlpgen=${OTLPGEN:-../shared/tools/otlpgen/target/release/otlpgen}
sinks=$(python3 -c 'import sys,re; t=open(sys.argv[1]).read(); print(len(re.findall(r"^\s+type: (parquet|kafka|debug|discard)", t, re.M)))' "$pipeline")
cargo build --release --locked --bin traceloom >/dev/null
taskset -c 1 target/release/traceloom --log-level warn run --config "$pipeline" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -fs http://127.0.0.1:8888/health >/dev/null 2>&1; do sleep 0.1; done
written() {
  curl -fs http://127.0.0.1:8888/metrics | awk '/^traceloom_sink_written_spans_total/ {s += $2} END {print s + 0}'
}
result=$(taskset -c 0 "$otlpgen" send "$@")
returned=$(date +%s.%N)
echo "$result"
sent=$(printf '%s' "$result" | python3 -c 'import json,sys; print(json.load(sys.stdin)["spans_sent"])')
# otlpgen's clock starts at its first request (after --pregen): count from there.
start=$(printf '%s' "$result" | python3 -c "import json,sys; print($returned - json.load(sys.stdin)['elapsed_s'])")
until [ "$(written)" -ge $((sent * sinks)) ]; do sleep 0.05; done
end=$(date +%s.%N)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
kill -TERM $pid; wait $pid || true
trap - EXIT
awk -v s="$start" -v e="$end" -v n="$sent" -v peak="$peak" 'BEGIN {
  printf "end to end: %d spans in every sink in %.2f s = %.0f spans/s; peak RSS %.1f MiB\n", n, e - s, n / (e - s), peak / 1024 }'
