#!/usr/bin/env bash
# Two `polypi serve` replicas behind HAProxy (L4 TLS passthrough, leastconn, HTTP health check on
# each replica's --health-listen port), one dealer, and QUERIES private inferences through the
# balancer. Shows that both replicas served sessions and that every query succeeded; stops
# everything on exit. Everything on 127.0.0.1 (the default `polypi certs` names), free ports.
#   scripts/haproxy-demo.sh                       # 40 queries, 4 at a time
#   QUERIES=100 PARALLEL=8 scripts/haproxy-demo.sh
#   KEEP=1 scripts/haproxy-demo.sh                # keep the work directory (logs, haproxy.cfg)
# Needs haproxy (Debian/Ubuntu: apt-get install -y haproxy) and target/release/polypi (or BIN=...).
# Exit: 0 all queries ok and both replicas served, 1 otherwise, 2 missing haproxy or binary.
# See docs/deployment.md ("Load balancer").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-$ROOT/target/release/polypi}"
MODEL="${MODEL:-$ROOT/models/netm-x2act-fmnist.safetensors}"
QUERIES="${QUERIES:-40}"
PARALLEL="${PARALLEL:-4}"

if ! command -v haproxy >/dev/null 2>&1; then
  echo "haproxy is not installed: install it with \`sudo apt-get install -y haproxy\`" \
    "(Debian/Ubuntu; \`dnf install haproxy\` on Fedora/RHEL), then rerun $0" >&2
  exit 2
fi
if [ ! -x "$BIN" ]; then
  echo "no polypi binary at $BIN: build it with \`cargo build --release -p polypi-cli\`" \
    "or set BIN=/path/to/polypi" >&2
  exit 2
fi
command -v python3 >/dev/null || { echo "python3 is needed (stats socket, free port)" >&2; exit 2; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/polypi-haproxy.XXXXXX")"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "work directory kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_match FILE REGEX SECONDS: prints the first capture group of the first matching line.
wait_match() {
  local file="$1" re="$2" t="$3" i line
  for ((i = 0; i < t * 20; i++)); do
    line="$(grep -m1 -E "$re" "$file" 2>/dev/null || true)"
    if [ -n "$line" ]; then
      sed -E "s/.*$re.*/\\1/" <<<"$line"
      return 0
    fi
    sleep 0.05
  done
  echo "timed out waiting for /$re/ in $file:" >&2
  cat "$file" "${file%.out}.err" 2>/dev/null | tail -20 >&2
  return 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== certificates"
"$BIN" certs --out "$TMP/tls" >/dev/null

echo "== dealer"
"$BIN" dealer --listen 127.0.0.1:0 --tls-dir "$TMP/tls" >"$TMP/dealer.out" 2>"$TMP/dealer.err" &
PIDS+=($!)
DEALER="$(wait_match "$TMP/dealer.out" 'listening on ([0-9.:]+)' 20)"
echo "dealer at $DEALER"

echo "== two server replicas"
declare -a ADDR HEALTH
for r in 1 2; do
  "$BIN" serve --model "$MODEL" --listen 127.0.0.1:0 --dealer "$DEALER" --tls-dir "$TMP/tls" \
    --health-listen 127.0.0.1:0 >"$TMP/replica$r.out" 2>"$TMP/replica$r.err" &
  PIDS+=($!)
  ADDR[$r]="$(wait_match "$TMP/replica$r.out" 'listening on ([0-9.:]+)' 30)"
  HEALTH[$r]="$(wait_match "$TMP/replica$r.err" 'health on ([0-9.:]+)' 30)"
  echo "replica $r: sessions on ${ADDR[$r]}, health on ${HEALTH[$r]}:" \
    "$(curl -s "http://${HEALTH[$r]}/health")"
done

echo "== haproxy"
FRONT_PORT="$(free_port)"
cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn 1024
    stats socket $TMP/haproxy.sock mode 600 level user

defaults
    mode tcp
    timeout connect 5s
    # at least the polypi message timeout (serve/query --timeout-s, default 60 s)
    timeout client 5m
    timeout server 5m

frontend polypi_in
    bind 127.0.0.1:$FRONT_PORT
    default_backend polypi_servers

backend polypi_servers
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
    default-server inter 1s fall 2 rise 1
    server replica1 ${ADDR[1]} check port ${HEALTH[1]##*:}
    server replica2 ${ADDR[2]} check port ${HEALTH[2]##*:}
EOF
haproxy -c -q -f "$TMP/haproxy.cfg"
haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.out" 2>&1 &
PIDS+=($!)

# "show stat" CSV from the stats socket: name,status of each backend server.
backend_status() {
  python3 - "$TMP/haproxy.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1]); s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
lines = data.decode().splitlines()
head = lines[0].lstrip("# ").split(",")
for l in lines[1:]:
    f = dict(zip(head, l.split(",")))
    if f.get("pxname") == "polypi_servers" and f.get("svname") not in ("BACKEND", "FRONTEND"):
        print(f"{f['svname']}={f['status']}")
PY
}
up=0
for ((i = 0; i < 100; i++)); do
  st="$(backend_status 2>/dev/null || true)"
  if [ "$(grep -c '=UP$' <<<"$st" || true)" = 2 ]; then up=1; break; fi
  sleep 0.1
done
echo "haproxy on 127.0.0.1:$FRONT_PORT, backends:" $st
[ "$up" = 1 ] || { echo "haproxy did not report both replicas UP" >&2; exit 1; }

echo "== $QUERIES queries through haproxy ($PARALLEL at a time)"
mapfile -t SAMPLES < <(ls "$ROOT"/data/samples/*.png)
mkdir -p "$TMP/q"
one_query() { # index
  local i="$1" img="${SAMPLES[$(($1 % ${#SAMPLES[@]}))]}"
  if "$BIN" query --connect "127.0.0.1:$FRONT_PORT" --dealer "$DEALER" --tls-dir "$TMP/tls" \
    --input "$img" --json >"$TMP/q/$i.json" 2>"$TMP/q/$i.err"; then
    echo ok >"$TMP/q/$i.rc"
  else
    echo "fail $?" >"$TMP/q/$i.rc"
  fi
}
t0=$(date +%s.%N)
running=0
for ((i = 0; i < QUERIES; i++)); do
  one_query "$i" &
  running=$((running + 1))
  if [ "$running" -ge "$PARALLEL" ]; then wait -n || true; running=$((running - 1)); fi
done
wait_queries() { local j; for j in $(jobs -p); do
  case " ${PIDS[*]} " in *" $j "*) ;; *) wait "$j" || true ;; esac; done; }
wait_queries
t1=$(date +%s.%N)
sleep 0.3 # the last session lines

ok="$(cat "$TMP"/q/*.rc | grep -c '^ok$' || true)"
s1="$(grep -c '^session ' "$TMP/replica1.out" || true)"
s2="$(grep -c '^session ' "$TMP/replica2.out" || true)"
f1="$(grep -c -e ', failed:' -e '^refused' "$TMP/replica1.out" || true)"
f2="$(grep -c -e ', failed:' -e '^refused' "$TMP/replica2.out" || true)"
echo "== summary"
printf "queries ok: %s / %s in %.1f s\n" "$ok" "$QUERIES" "$(
  python3 -c "print($t1 - $t0)")"
echo "replica 1 (${ADDR[1]}): $s1 session line(s) ($f1 failed/refused)"
echo "replica 2 (${ADDR[2]}): $s2 session line(s) ($f2 failed/refused)"
echo "dealer: $(grep -c '^session ' "$TMP/dealer.out" || true) session line(s)"
echo "classes: $(cat "$TMP"/q/*.json 2>/dev/null | python3 -c '
import json, sys, collections
docs = sys.stdin.read().replace("}\n{", "}\x00{").split("\x00")
c = collections.Counter(r["label"] for d in docs if d.strip() for r in json.loads(d)["results"])
print(", ".join(f"{k} {v}" for k, v in sorted(c.items())))')"
for r in 1 2; do echo "replica $r health: $(curl -s "http://${HEALTH[$r]}/health")"; done
if [ "$ok" != "$QUERIES" ]; then
  echo "FAILED queries:" >&2
  for f in "$TMP"/q/*.rc; do
    grep -q '^ok$' "$f" || { echo "--- ${f%.rc}.err" >&2; tail -3 "${f%.rc}.err" >&2; }
  done
fi
if [ "$ok" = "$QUERIES" ] && [ "$s1" -gt 0 ] && [ "$s2" -gt 0 ]; then
  echo "OK: all $QUERIES queries succeeded through haproxy and both replicas served sessions"
  exit 0
fi
echo "NOT OK" >&2
exit 1
