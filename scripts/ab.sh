#!/usr/bin/env bash
# Compares two builds, environments or pipeline files end to end despite this VM's speed drift: runs
# scripts/e2e.sh for A and B in interleaved rounds and prints each run and the medians of
# throughput and traceloom CPU per span. CPU per span is the steadier figure.
#
#   scripts/ab.sh BIN_A BIN_B PIPELINE ROUNDS [-- OTLPGEN SEND ARGS...]
#   (an environment for one side: BIN_A='env MIMALLOC_PURGE_DELAY=-1 target/release/traceloom';
#   two pipeline files, A's then B's: PIPELINE=a.yaml,b.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=$4
pipeline_a=${3%%,*} pipeline_b=${3#*,}
shift 4
[ "${1:-}" = "--" ] && shift
results=$(mktemp)
trap 'rm -f "$results"' EXIT
run() {  # label, command, pipeline, otlpgen args...
  local label=$1 wrapper=$2 pipeline=$3 line out
  shift 3
  # e2e.sh execs TRACELOOM_BIN directly, so an `env ...` prefix goes through a wrapper script.
  local bin
  bin=$(mktemp)
  printf '#!/bin/sh\nexec %s "$@"\n' "$wrapper" >"$bin"
  chmod +x "$bin"
  out=$(TRACELOOM_BIN=$bin scripts/e2e.sh "$pipeline" -- "$@" 2>&1 | tail -2)
  rm -f "$bin"
  line=$(echo "$out" | tail -1)
  echo "$label: $line; p99 $(echo "$out" | head -1 | sed -E 's/.*"p99_ms":([0-9.]+).*/\1/') ms"
  echo "$label $(echo "$line" | sed -E 's/.* = ([0-9]+) spans\/s.* = ([0-9.]+) us\/span/\1 \2/')" >>"$results"
}
for _ in $(seq "$rounds"); do
  run A "$a" "$pipeline_a" "$@"
  run B "$b" "$pipeline_b" "$@"
done
median() {  # side, column
  awk -v s="$1" -v c="$2" '$1 == s {print $c}' "$results" | sort -n |
    awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}
for side in A B; do
  echo "$side median: $(median "$side" 2) spans/s, $(median "$side" 3) us/span ($rounds runs)"
done
