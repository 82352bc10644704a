#!/usr/bin/env bash
# Measures `bigsmall reshard` on a corpus model: split into 4 shards and join back, best of 3
# (the run's own seconds, model-data and stored MB/s, peak RSS), and checks that the join
# reproduces the original container byte for byte.
#   scripts/bench-reshard.sh [MODEL.safetensors] [--md5]
#   (default: corpus/smollm2-135m-bf16/model.safetensors)
# The machine's cores are shared with other work: each run first waits until they are idle.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-corpus/smollm2-135m-bf16/model.safetensors}
EXTRA=${2:-}
cargo build --release --quiet
B=$PWD/target/release/bigsmall
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bigsmall-reshard.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
idle() { # percent of CPU time idle over the next second
  local a b
  read -r _ u n s i w q sq st _ </proc/stat; a=("$((u + n + s + i + w + q + sq + st))" "$((i + w))")
  sleep 1
  read -r _ u n s i w q sq st _ </proc/stat; b=("$((u + n + s + i + w + q + sq + st))" "$((i + w))")
  echo $(( 100 * (b[1] - a[1]) / (b[0] - a[0] + 1) ))
}
quiet() { # waits (up to 5 minutes) until the cores are at least 90% idle
  for _ in $(seq 1 300); do
    [ "$(idle)" -ge 90 ] && return 0
  done
}
"$B" compress "$SRC" -o "$WORK/model.bs" --no-progress >/dev/null
echo "source: $SRC; container: $(stat -c %s "$WORK/model.bs") bytes"
for what in split join; do
  for _ in 1 2 3; do
    quiet
    if [ "$what" = split ]; then
      rm -rf "$WORK/four"; args=("$WORK/model.bs" --output-dir "$WORK/four" --shards 4)
    else
      rm -rf "$WORK/one"; args=("$WORK/four" --output-dir "$WORK/one" --join)
    fi
    sync
    /usr/bin/time -f "%M" -o "$WORK/rss" "$B" reshard "${args[@]}" $EXTRA --no-progress --json >"$WORK/r.json"
    python3 - "$WORK/r.json" "$(cat "$WORK/rss")" "$what" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[3]}: {len(r['shards'])} shards, {r['seconds']:.3f} s, "
      f"{r['raw_mb_per_s']:.0f} MB/s model data, {r['stored_mb_per_s']:.0f} MB/s stored, "
      f"peak RSS {int(sys.argv[2]) / 1024:.0f} MiB")
PY
  done
done
cmp "$WORK/model.bs" "$WORK/one/model.bs" && echo "joined container identical to the one split"
