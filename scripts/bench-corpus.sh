#!/usr/bin/env bash
# Measures bigsmall on the benchmark corpus and prints the BENCHMARKS.md tables.
#   scripts/bench-corpus.sh [CORPUS_DIR]      (default: corpus/, built by scripts/fetch-corpus.sh)
# For every file and mode: ratio (% of the source file), whole-file compress and decompress
# wall time (median of 3) and peak RSS (/usr/bin/time, max of 3), byte identity of the round trip (sha256), and the
# in-process decode-to-memory throughput from `bigsmall benchmark --json`. Also the entropy
# bounds from `bigsmall scan --json` and the time `cp` needs to write the same file.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-corpus}
cargo build --release --quiet
B=target/release/bigsmall
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bigsmall-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
FILES=(
  "$CORPUS/minilm-bf16.safetensors"
  "$CORPUS/minilm-f16.safetensors"
  "$CORPUS/minilm-f32/model.safetensors"
  "$CORPUS/minilm-fp8.safetensors"
  "$CORPUS/smollm2-135m-bf16/model.safetensors"
  "$CORPUS/smollm2-135m-fp8block.safetensors"
)
timed() { # "median_wall_s max_rss_kb" over 3 runs (wall from the clock, RSS from time(1));
          # the output named by the command's last argument is removed before each run
  local t0 t1 walls=() rss=0 r
  for _ in 1 2 3; do
    rm -f "${@: -1}"
    t0=$(date +%s%N)
    /usr/bin/time -f "%M" -o "$WORK/t" "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    walls+=("$(( (t1 - t0) / 1000 ))")
    r=$(cat "$WORK/t"); (( r > rss )) && rss=$r
  done
  printf '%s\n' "${walls[@]}" | sort -n | sed -n 2p | awk -v r="$rss" '{printf "%se-6 %s\n", $1, r}'
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "bigsmall $($B --version | cut -d' ' -f2), $(date -u +%Y-%m-%d)"
echo
echo "| file | size | bound H(s,e)+H(m|e) | bound H(e)+raw | mode | ratio | compress MB/s | compress peak RSS | decompress MB/s | decompress peak RSS | cp s | decompress / cp | decode to memory MB/s | identical |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for f in "${FILES[@]}"; do
  [ -f "$f" ] || { echo "missing $f (run scripts/fetch-corpus.sh)" >&2; continue; }
  size=$(stat -c %s "$f")
  sha=$(sha256sum "$f" | cut -d' ' -f1)
  read -r bc be < <($B scan "$f" --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print("%.2f %.2f" % (s["bound_conditional_pct"], s["bound_exponent_raw_pct"]))')
  cat "$f" > /dev/null
  read -r cps _ < <(timed cp "$f" "$WORK/cp"); rm -f "$WORK/cp"
  for mode in storage balanced inference; do
    rm -f "$WORK/x.bs" "$WORK/x.back"
    read -r cs cr < <(timed $B compress "$f" --$mode --no-progress -o "$WORK/x.bs")
    out=$(stat -c %s "$WORK/x.bs")
    read -r ds dr < <(timed $B decompress "$WORK/x.bs" --no-progress -o "$WORK/x.back")
    same=$([ "$(sha256sum "$WORK/x.back" | cut -d' ' -f1)" = "$sha" ] && echo yes || echo NO)
    mem=$($B benchmark "$f" --$mode --runs 10 --json --no-progress | python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["decode_memory_mb_s"])')
    python3 - "$f" "$size" "$bc" "$be" "$mode" "$out" "$cs" "$cr" "$ds" "$dr" "$cps" "$mem" "$same" <<'PY'
import sys
f,size,bc,be,mode,out,cs,cr,ds,dr,cps,mem,same=sys.argv[1:]
size=int(size); out=int(out); cs=float(cs); ds=float(ds); cps=float(cps)
mb=lambda s: size/max(s,1e-3)/1e6
print(f"| {f.split('/',1)[-1]} | {size/1e6:.1f} MB | {bc}% | {be}% | {mode} | {out*100/size:.2f}% | {mb(cs):.0f} | {int(cr)/1024:.0f} MiB | {mb(ds):.0f} | {int(dr)/1024:.0f} MiB | {cps:.3f} | {ds/max(cps,1e-3):.2f}x | {mem} | {same} |")
PY
  done
done
