#!/usr/bin/env bash
# Calibrates trained model files on their training split and runs them privately: `polypi eval
# --private` on the test images (agreement with the plaintext f32 and fixed-point predictions,
# guard refusals, undetected garbage) and `polypi bench` on links none and wan. Prints one
# markdown row per model and keeps the JSON documents next to the calibrated copies.
#
#   scripts/private-eval.sh OUT_DIR MODEL...                     # CIFAR-10 subset, all 932 images
#   DATASET=fashion-mnist DATA=data/fetched PRIVATE=1000 scripts/private-eval.sh OUT_DIR MODEL...
#
# Environment: DATASET (cifar10), DATA (data/fetched: run scripts/fetch-data.sh cifar10 first, or
# data/cifar10-subset, the compressed copy in the repository), PRIVATE (932 test images
# run privately), RUNS (5 bench runs per link), EXTRA (more `polypi eval` flags, e.g.
# "--guard-retries 1" or "--range-check warn"). The input model files are not modified: the
# calibrated copies go to OUT_DIR/<name>.safetensors.
# Needs target/release/polypi (cargo build --release -p polypi-cli) and python3 (stdlib only).
set -euo pipefail
OUT="${1:?usage: scripts/private-eval.sh OUT_DIR MODEL...}"
shift
DATASET="${DATASET:-cifar10}"
DATA="${DATA:-data/fetched}"
PRIVATE="${PRIVATE:-932}"
RUNS="${RUNS:-5}"
EXTRA="${EXTRA:-}"
POLYPI="${POLYPI:-target/release/polypi}"
[ -x "$POLYPI" ] || { echo "error: $POLYPI not found; run cargo build --release -p polypi-cli" >&2; exit 1; }
mkdir -p "$OUT"
echo "| model | plaintext acc % | private == f32 | private == fixed-point twin | refused (logits) | retries (recovered) | near-tie flips | undetected garbage | max logit err | online ms (eval mean) | bench none ms | bench wan ms | online MB | dealer MB | rounds |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for m in "$@"; do
  name="$(basename "$m" .safetensors)"
  cal="$OUT/$name.safetensors"
  "$POLYPI" calibrate --model "$m" --data "$DATA" --dataset "$DATASET" --split train --out "$cal" \
    --json >"$OUT/$name.calibrate.json"
  # shellcheck disable=SC2086
  "$POLYPI" eval --model "$cal" --data "$DATA" --dataset "$DATASET" --private "$PRIVATE" $EXTRA \
    --json >"$OUT/$name.eval.json"
  for l in none wan; do
    "$POLYPI" bench --model "$cal" --runs "$RUNS" --link "$l" --json >"$OUT/$name.bench-$l.json"
  done
  python3 - "$OUT" "$name" <<'PY'
import json, sys
out, name = sys.argv[1], sys.argv[2]
e = json.load(open(f"{out}/{name}.eval.json"))
p = e["private"]
b = {l: json.load(open(f"{out}/{name}.bench-{l}.json"))[0]["summary"] for l in ("none", "wan")}
s = b["none"]
mb = (s["bytes_client_to_server"] + s["bytes_server_to_client"]) / 1e6
n = p["images"]
cells = [
    name,
    "%.2f" % (100 * e["plaintext_accuracy"]),
    "%d/%d" % (p["agree"], n),
    "%d/%d" % (p["agree_fixed_twin"], n),
    str(p["guard_refused_logits"]),
    "%d (%d)" % (p["guard_retries"], p["recovered_by_retry"]),
    str(p["near_tie_flips"]),
    str(p["undetected_garbage"]),
    "%.2e" % p["max_abs_logit_error"],
    "%.2f" % p["mean_online_ms"],
    "%.2f" % b["none"]["online_ms"]["median"],
    "%.1f" % b["wan"]["online_ms"]["median"],
    "%.2f" % mb,
    "%.2f" % (s["dealer_bytes"] / 1e6),
    str(s["rounds"]),
]
print("| " + " | ".join(cells) + " |")
PY
done
