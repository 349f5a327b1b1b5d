#!/usr/bin/env bash
# What TLS 1.3 costs polypi's links: online / offline / setup time and bytes of NET-M (x2act)
# and NET-R18 (x^2), in-process over loopback TCP vs loopback TLS (`polypi bench --transport`).
# Rounds alternate tcp and tls so that a busy machine disturbs both alike; prints the median of
# the per-round medians. Usage: scripts/tls-cost.sh [ROUNDS=5] [RUNS=20]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
RUNS=${2:-20}
cargo build --release -q -p polypi-cli
B=target/release/polypi
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, features: $(grep -o -w 'avx2\|avx512f' /proc/cpuinfo | sort -u | xargs)"
python3 - "$B" "$ROUNDS" "$RUNS" <<'PY'
import json, statistics, subprocess, sys
b, rounds, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
nets = [("NET-M x2act", ["--net", "NET-M", "--act", "x2"]), ("NET-R18 x^2", ["--net", "NET-R18", "--act", "square"])]
res = {}
for name, args in nets:
    for r in range(rounds):
        for t in ["tcp", "tls"]:
            out = subprocess.run([b, "bench", *args, "--runs", runs, "--transport", t, "--json"],
                                 check=True, capture_output=True, text=True).stdout
            s = json.loads(out)[0]["summary"]
            d = res.setdefault((name, t), {"online": [], "offline": [], "setup": []})
            d["online"].append(s["online_ms"]["median"]); d["offline"].append(s["offline_ms"]["median"])
            d["setup"].append(s["setup_ms"]); d["bytes"] = s["bytes_client_to_server"] + s["bytes_server_to_client"]
print("| network | link | online ms | offline ms | setup ms | online payload MB |")
print("|---|---|---|---|---|---|")
for name, _ in nets:
    for t in ["tcp", "tls"]:
        d = res[(name, t)]
        m = statistics.median
        print(f"| {name} | {t} | {m(d['online']):.2f} | {m(d['offline']):.2f} | {m(d['setup']):.2f} | {d['bytes']/1e6:.3f} |")
PY
