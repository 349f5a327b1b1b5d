#!/usr/bin/env bash
# Compares the two polynomial protocols (dealer powers vs ESPN share powers) with `polypi bench`:
# one polynomial layer of degree 2, 3, 4, 6 on 65,536 elements, and NET-C with PILLAR's degree-4
# polynomial and with x^2 (random weights). Prints the markdown table of docs/polynomials.md.
#   scripts/poly-protocols.sh              # RUNS=15 per micro row, 5 per NET-C row, no link
#   RUNS=101 NET_RUNS=31 scripts/poly-protocols.sh                    # the table in the docs
#   RUNS=9 NET_RUNS=5 LINK=wan DEGREES="2 4" NET_ACTS=pillar scripts/poly-protocols.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUNS="${RUNS:-15}"
NET_RUNS="${NET_RUNS:-5}"
LINK="${LINK:-none}"
DEGREES="${DEGREES:-2 3 4 6}"
NET_ACTS="${NET_ACTS:-pillar square}"
cargo build --release -p polypi-cli >/dev/null
BIN="$ROOT/target/release/polypi"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
run() { # label protocol args...
  local label="$1" proto="$2"
  shift 2
  echo "bench $label $proto" >&2
  "$BIN" bench --poly-protocol "$proto" --link "$LINK" --json "$@" >"$TMP/out.json" 2>/dev/null
  python3 - "$label" "$proto" "$TMP/out.json" <<'EOF'
import json, sys
label, proto, path = sys.argv[1:4]
s = json.load(open(path))[0]["summary"]
poly = [l for l in s["median_report"]["layers"] if l["kind"] == "Poly"]
mb = lambda b: b / 1e6
cs = sum(l["bytes_client_to_server"] for l in poly)
sc = sum(l["bytes_server_to_client"] for l in poly)
de = sum(l.get("bytes_from_dealer", l.get("bytes_dealer_to_client", 0)) for l in poly)
rounds = sum(l["rounds"] for l in poly)
lay_ms = sum(l["online_ms"] for l in poly)
o = s["online_ms"]
print(f"| {label} | {proto} | {mb(cs):.3f} | {mb(sc):.3f} | {mb(de):.3f} | {rounds} | "
      f"{lay_ms:.2f} | {o['median']:.2f} ({o['min']:.2f}-{o['max']:.2f}) | "
      f"{s['offline_ms']['median']:.2f} | {s['rounds']} |")
EOF
}
echo "| case | protocol | poly MB c->s | poly MB s->c | poly dealer MB | poly rounds | poly online ms (median run) | total online ms median (min-max) | total offline ms | total rounds |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for d in $DEGREES; do
  for p in dealer-powers share-powers; do
    run "degree $d, 65,536 el." "$p" --poly-degree "$d" --elements 65536 --runs "$RUNS"
  done
done
for act in $NET_ACTS; do
  for p in dealer-powers share-powers; do
    run "NET-C $act" "$p" --net NET-C --act "$act" --runs "$NET_RUNS"
  done
done
