#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60) and prints how many inputs each
# executed. Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-60}
for t in container codec roundtrip safetensors ecc; do
  log=$(mktemp)
  if ! cargo +nightly fuzz run "$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -30 "$log"
    echo "fuzz target $t FAILED (artifacts in fuzz/artifacts/$t)" >&2
    exit 1
  fi
  runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -1 || true)
  echo "$t: ${runs:-finished} in ${SECS}s, no crash"
  rm -f "$log"
done
