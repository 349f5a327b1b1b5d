#!/usr/bin/env bash
# Load test of a deployed polypi (certs + dealer + server on free loopback ports, then N
# concurrent clients x Q queries each, one `polypi query --json` process per query); prints a
# markdown table (ok/failed, queries/s, p50/p95 latency, peak RSS of server/dealer/client).
#   scripts/load.sh                                        # NET-M x2act, N = 1 2 4 8 32 128, Q = 20
#   scripts/load.sh --model models/netm-relu-fmnist.safetensors --n 1 8 --queries 10
#   scripts/load.sh --server-opt=--max-concurrent --server-opt=128 --json-out load.json
#   scripts/load.sh --help                                 # all options
# Uses target/release/polypi (build it first, or pass --binary PATH). See docs/serving.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v python3 >/dev/null || { echo "error: python3 is needed" >&2; exit 2; }
exec python3 "$ROOT/scripts/load.py" "$@"
