#!/usr/bin/env bash
# Measures the private latency of every model of an architecture-search sweep folder with
# `polypi bench` (server, client and dealer in one process over loopback TCP, batch 1) and prints
# a markdown table: point, link, online ms median (min-max over the runs), online MB, dealer MB,
# rounds, offline ms.
#
#   scripts/search-bench.sh runs/netm              # links none and wan, 5 runs each
#   RUNS=9 LINKS="none lan wan" scripts/search-bench.sh runs/netm
#
# Needs target/release/polypi (cargo build --release -p polypi-cli) and python3 (stdlib only).
set -euo pipefail
DIR="${1:?usage: scripts/search-bench.sh SWEEP_DIR}"
RUNS="${RUNS:-5}"
LINKS="${LINKS:-none wan}"
POLYPI="${POLYPI:-target/release/polypi}"
[ -x "$POLYPI" ] || { echo "error: $POLYPI not found; run cargo build --release -p polypi-cli" >&2; exit 1; }
echo "| point | link | online ms median (min-max) | online MB | dealer MB | rounds | offline ms |"
echo "|---|---|---|---|---|---|---|"
for m in "$DIR"/*/model.safetensors; do
  point="$(basename "$(dirname "$m")")"
  for l in $LINKS; do
    "$POLYPI" bench --model "$m" --runs "$RUNS" --link "$l" --json 2>/dev/null |
      python3 -c '
import json, sys
point, link = sys.argv[1], sys.argv[2]
s = json.load(sys.stdin)[0]["summary"]
o = s["online_ms"]
mb = (s["bytes_client_to_server"] + s["bytes_server_to_client"]) / 1e6
cells = [point, link, "%.2f (%.2f-%.2f)" % (o["median"], o["min"], o["max"]), "%.3f" % mb,
         "%.3f" % (s["dealer_bytes"] / 1e6), str(s["rounds"]), "%.1f" % s["offline_ms"]["median"]]
print("| " + " | ".join(cells) + " |")
' "$point" "$l"
  done
done
