#!/usr/bin/env bash
# Checks that `cargo run --release -p polypi-train` resolves every dependency with the same
# features as `cargo test --release --workspace`, so that one build serves both (otherwise cargo
# builds a second variant of the crates that differ and of everything above them: burn, ~5 min on
# 2 cores). On a mismatch it prints the crates whose features differ; add them, with the
# workspace's features, to the "feature unification" block of crates/polypi-train/Cargo.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
tree() { cargo tree "$@" -f "{p} {f}" --prefix none | sed 's/ (\*)$//' | sort -u; }
ws=$(mktemp) tr=$(mktemp)
trap 'rm -f "$ws" "$tr"' EXIT
tree --workspace -e normal,build,dev >"$ws"
tree -p polypi-train -e normal,build >"$tr"
diff=$(comm -23 "$tr" "$ws")
if [ -n "$diff" ]; then
    echo "check-one-build: polypi-train alone resolves these crates with other features than the workspace:" >&2
    echo "$diff" >&2
    exit 1
fi
echo "check-one-build: polypi-train resolves its $(wc -l <"$tr") crates with the workspace's features"
