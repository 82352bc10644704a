#!/usr/bin/env bash
# Measures fine-tune patches on pairs generated from a real corpus model and prints the
# BENCHMARKS.md table: patch size vs standalone .bs vs the zeroth-order entropy of the XOR and
# difference streams, and the wall time (median of 3) of patch encode and apply.
#   scripts/bench-delta.sh [BASE.safetensors]   (default: corpus/minilm-bf16.safetensors)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-corpus/minilm-bf16.safetensors}
cargo build --release --quiet --example corpus
B=target/release/bigsmall
C=target/release/examples/corpus
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bigsmall-delta.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
med3() { # median wall seconds of a command run 3 times (its last argument is removed first)
  local t0 t1 w=()
  for _ in 1 2 3; do
    rm -f "${@: -1}"
    t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N)
    w+=("$(( (t1 - t0) / 1000 ))")
  done
  printf '%s\n' "${w[@]}" | sort -n | sed -n 2p | awk '{printf "%.3f", $1/1e6}'
}
size=$(stat -c %s "$BASE")
echo "base: $BASE ($size bytes)"
echo
echo "| pair | changed bytes | standalone .bs | patch | H(XOR) | H(diff) | patch / H(XOR) | encode s | encode MB/s | apply s | apply MB/s | identical |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for spec in "ulp 0.01" "ulp 0.1" "ulp 0.5" "ulp 1.0" "replace 0.5" "resize 0.01"; do
  set -- $spec
  f="$WORK/$1-$2.safetensors"
  $C pair "$BASE" "$f" --kind "$1" --frac "$2" >/dev/null
  $B compress "$f" -o "$WORK/alone.bs" -f --no-progress >/dev/null
  enc=$(med3 $B compress "$f" --delta-from "$BASE" --force-delta --no-progress -o "$WORK/patch.bs")
  changed=$($B compress "$f" --delta-from "$BASE" --force-delta --no-progress --json -f -o "$WORK/patch.bs" | python3 -c 'import json,sys; d=json.load(sys.stdin)["delta"]; print("%.1f%%" % (100*d["changed_bytes"]/max(d["matched_bytes"],1)))')
  app=$(med3 $B apply "$BASE" "$WORK/patch.bs" --no-progress -o "$WORK/back.safetensors")
  same=$(cmp -s "$WORK/back.safetensors" "$f" && echo yes || echo NO)
  read -r hx hs < <($B diff "$BASE" "$f" --entropy --json | python3 -c 'import json,sys; e=json.load(sys.stdin)["entropy"]; print("%.0f %.0f" % (e["xor_bytes"], e["sub_bytes"]))')
  fsize=$(stat -c %s "$f"); alone=$(stat -c %s "$WORK/alone.bs"); patch=$(stat -c %s "$WORK/patch.bs")
  python3 - "$1 $2" "$changed" "$alone" "$patch" "$hx" "$hs" "$enc" "$app" "$fsize" "$same" <<'PY'
import sys
name,changed,alone,patch,hx,hs,enc,app,fsize,same=sys.argv[1:]
alone,patch,hx,hs,fsize=int(alone),int(patch),float(hx),float(hs),int(fsize)
enc,app=float(enc),float(app)
print(f"| {name} | {changed} | {alone:,} | {patch:,} | {hx:,.0f} | {hs:,.0f} | {patch/max(hx,1):.2f} | {enc:.2f} | {fsize/enc/1e6:.0f} | {app:.2f} | {fsize/app/1e6:.0f} | {same} |")
PY
done
# Unchanged tensors: an unchanged copy of the base against it (the base itself as its own
# base is refused: such a patch could not be decoded without its input).
cp "$BASE" "$WORK/copy.safetensors"
$B compress "$WORK/copy.safetensors" --delta-from "$BASE" --no-progress -o "$WORK/self.bs" -f >/dev/null
n=$($B info "$WORK/self.bs" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tensor_count"])')
echo
echo "an unchanged copy against the base: $(stat -c %s "$WORK/self.bs") bytes for $n unchanged tensors ($(( $(stat -c %s "$WORK/self.bs") / n )) bytes each, header and trailer included)"
