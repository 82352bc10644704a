#!/usr/bin/env bash
# Measures the speed layouts and grouped streams on the corpus and prints the BENCHMARKS.md
# tables. For each file: the balanced .bs, its `transcode --mode speed` .bsr and
# `--mode ratio` .bs, with sizes in % of the source and decode-to-memory MB/s from
# `bigsmall benchmark FILE --json` (all cores, best of 25, checksums verified); then
# `compress --group-streams` against plain compress. Exits non-zero when an acceptance check
# fails (speed >= 1.5x balanced decode at <= +6 pp, ratio never larger, groups never larger).
#   scripts/bench-layout.sh [CORPUS_DIR]   (default: corpus)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-corpus}
cargo build --release --quiet
B=target/release/bigsmall
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bigsmall-layout.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
FILES=()
for f in minilm-bf16.safetensors minilm-f16.safetensors minilm-f32/model.safetensors \
  minilm-fp8.safetensors smollm2-135m-bf16/model.safetensors smollm2-135m-fp8block.safetensors; do
  [ -f "$CORPUS/$f" ] && FILES+=("$CORPUS/$f")
done
[ ${#FILES[@]} -gt 0 ] || { echo "no corpus files under $CORPUS (run scripts/fetch-corpus.sh)" >&2; exit 1; }
decode() { $B benchmark "$1" --json --runs 25 --no-progress | python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["decode_memory_mb_s"])'; }
fail=0
echo "| file | .bs balanced | decode MB/s | .bsr speed | decode MB/s | speed-up | size delta | ratio mode | transcode speed s |"
echo "|---|---|---|---|---|---|---|---|---|"
for f in "${FILES[@]}"; do
  src=$(stat -c %s "$f")
  $B compress "$f" -o "$WORK/m.bs" -f --no-progress >/dev/null
  t0=$(date +%s%N)
  $B transcode "$WORK/m.bs" "$WORK/m.bsr" -f --no-progress --no-measure >/dev/null
  t1=$(date +%s%N)
  $B transcode "$WORK/m.bs" "$WORK/r.bs" --mode ratio -f --no-progress --no-measure >/dev/null
  bs=$(stat -c %s "$WORK/m.bs"); bsr=$(stat -c %s "$WORK/m.bsr"); r=$(stat -c %s "$WORK/r.bs")
  dbs=$(decode "$WORK/m.bs"); dbsr=$(decode "$WORK/m.bsr")
  python3 - "$f" "$src" "$bs" "$dbs" "$bsr" "$dbsr" "$r" "$(( (t1 - t0) / 1000000 ))" <<'PY' || fail=1
import sys
f, src, bs, dbs, bsr, dbsr, r, ms = sys.argv[1:]
src, bs, dbs, bsr, dbsr, r, ms = map(float, (src, bs, dbs, bsr, dbsr, r, ms))
pct = lambda b: 100 * b / src
up, dpp = dbsr / dbs, pct(bsr) - pct(bs)
print(f"| {f.split('/', 1)[1]} | {pct(bs):.2f}% | {dbs:.0f} | {pct(bsr):.2f}% | {dbsr:.0f} | {up:.2f}x | {dpp:+.2f} pp | {pct(r):.2f}% | {ms / 1000:.1f} |")
ok = r <= bs and (not f.endswith("smollm2-135m-bf16/model.safetensors") or (up >= 1.5 and dpp <= 6))
sys.exit(0 if ok else 1)
PY
done
echo
echo "| file | plain .bs | --group-streams | saved bytes | groups kept / candidates |"
echo "|---|---|---|---|---|"
for f in "${FILES[@]}"; do
  $B compress "$f" -o "$WORK/p.bs" -f --no-progress >/dev/null
  $B compress "$f" -o "$WORK/g.bs" -f --no-progress --group-streams --json > "$WORK/g.json"
  python3 - "$f" "$(stat -c %s "$WORK/p.bs")" "$(stat -c %s "$WORK/g.bs")" "$WORK/g.json" <<'PY' || fail=1
import json, sys
f, p, g, j = sys.argv[1:]
p, g = int(p), int(g)
groups = json.load(open(j)).get("groups", [])
kept = sum(1 for x in groups if x["grouped"])
print(f"| {f.split('/', 1)[1]} | {p:,} | {g:,} | {p - g:,} | {kept} / {len(groups)} |")
sys.exit(0 if g <= p else 1)
PY
done
exit $fail
