#!/usr/bin/env bash
# Predicted (cost model, CPU profile calibrated at start) vs measured (engine bench over TCP
# loopback, link none and wan) online time of NET-M / NET-C / NET-R18 with x^2 at batch 1.
# Writes docs/cost-model.md. Not a test: timings depend on the machine and its load.
#
# usage: scripts/cost-vs-measured.sh [RUNS] [OUT.md]
#   RUNS     inferences per configuration (default 7; the median is reported)
#   OUT.md   output file (default docs/cost-model.md; '-' prints only)
# env: MAX_LOAD (default: number of cores) and WAIT_S (default 600): wait up to WAIT_S seconds
#      for the 1-minute load average to drop below MAX_LOAD before measuring (the measurement
#      runs anyway after that, and the document records the load).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-7}"
OUT="${2:-docs/cost-model.md}"
CORES="$(nproc)"
MAX_LOAD="${MAX_LOAD:-$CORES}"
WAIT_S="${WAIT_S:-600}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -p polypi-core --example cost_vs_bench
waited=0
while :; do
  load="$(cut -d' ' -f1 /proc/loadavg)"
  if awk -v l="$load" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }'; then break; fi
  if [ "$waited" -ge "$WAIT_S" ]; then
    echo "load $load still >= $MAX_LOAD after ${WAIT_S}s: measuring anyway (noisy)" >&2
    break
  fi
  sleep 10
  waited=$((waited + 10))
done
echo "load average: $(cat /proc/loadavg)" >&2
"$CARGO_TARGET_DIR/release/examples/cost_vs_bench" "$RUNS" "$OUT"
