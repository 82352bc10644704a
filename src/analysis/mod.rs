//! Reports about containers and safetensors inputs: `info` and `stat` (from the index alone,
//! no blob decoded) and `scan` (reads a safetensors file or directory before compression).

pub mod benchmark;
pub mod entropy;

/// `1 shard`, `2 shards`: the one plural rule of every report and message.
pub fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::codec::tag;
use crate::error::Result;
use crate::format::reader::Container;
use crate::format::TensorEntry;
use crate::model::role::{layer_index, role};
use crate::model::safetensors::{dtype_name, SafetensorsFile};

/// One tensor's line in `stat`.
#[derive(Debug, Clone, Serialize)]
pub struct TensorStat {
    /// The shard holding it, for a compressed directory (`index` counts within the shard).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    pub index: usize,
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: String,
    pub codec: String,
    pub chunks: usize,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Stored as % of raw; none for an empty tensor.
    pub ratio_pct: Option<f64>,
}

/// The codec that holds most of a tensor's raw bytes ("dup" for stored-once duplicates).
fn main_codec(t: &TensorEntry) -> String {
    if t.dup_of.is_some() {
        return "dup_ref".into();
    }
    if t.delta.as_ref().is_some_and(|d| d.same) {
        return "base_same".into();
    }
    let mut by: BTreeMap<(bool, u8), u64> = BTreeMap::new();
    for c in &t.chunks {
        *by.entry((c.delta, c.codec)).or_default() += c.raw_len;
    }
    by.into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|((d, c), _)| {
            if d {
                format!("delta:{}", tag::name(c))
            } else {
                tag::name(c).to_string()
            }
        })
        .unwrap_or_else(|| "empty".into())
}

/// What `info` says about a patch.
#[derive(Debug, Clone, Serialize)]
pub struct PatchInfo {
    pub base_fingerprint: String,
    pub made_from: String,
    pub base_tensor_count: usize,
    pub removed: Vec<String>,
    /// Tensors equal to the base (index entry only).
    pub unchanged_tensors: usize,
    /// Tensors with at least one chunk stored as a difference.
    pub delta_tensors: usize,
    /// Tensors stored on their own (new, resized, or where standalone measured smaller).
    pub standalone_tensors: usize,
}

pub fn tensor_stats(c: &Container) -> Vec<TensorStat> {
    c.index
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let raw = t.raw_len();
            let stored = t.stored_len();
            TensorStat {
                shard: None,
                index: i,
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype.clone(),
                codec: main_codec(t),
                chunks: t.chunks.len(),
                raw_bytes: raw,
                stored_bytes: stored,
                ratio_pct: (raw > 0).then(|| stored as f64 * 100.0 / raw as f64),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Breakdown {
    pub tensors: usize,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

/// Tensors of one dtype in an uncompressed model (`scan`: nothing is stored yet).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DtypeCount {
    pub tensors: usize,
    pub raw_bytes: u64,
}

/// Everything `info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub file: String,
    pub container_version: String,
    pub created_by: String,
    pub mode: String,
    pub source_file: String,
    /// What kind of model it is: a directory's `config.json` says, or else the tensor names
    /// suggest (and the text says which).
    pub model_type: String,
    pub file_size: u64,
    pub source_size: u64,
    pub ratio_pct: f64,
    pub tensor_count: usize,
    pub chunk_count: usize,
    pub duplicates: usize,
    pub layer_count: usize,
    pub non_layer_raw_bytes: u64,
    pub largest_layer_raw_bytes: u64,
    /// Resident bytes a layer-streaming reader needs: non-layer tensors, one decoded layer, and
    /// one window of decode buffers.
    pub streaming_peak_ram_est: u64,
    pub dtypes: BTreeMap<String, Breakdown>,
    pub codecs: BTreeMap<String, Breakdown>,
    pub roles: BTreeMap<String, Breakdown>,
    pub best: Vec<TensorStat>,
    pub worst: Vec<TensorStat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchInfo>,
    /// `--group-streams` decisions (empty when the file was written without it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<crate::format::GroupInfo>,
    /// A compressed directory's shards (empty for one file).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardInfo>,
}

/// One shard's line in `info` of a compressed directory.
#[derive(Debug, Clone, Serialize)]
pub struct ShardInfo {
    pub file: String,
    pub source_file: String,
    pub tensor_count: usize,
    pub file_size: u64,
    pub source_size: u64,
    pub ratio_pct: f64,
}

pub fn info(c: &Container) -> Info {
    summarize(c.path.display().to_string(), &[(None, c)], None)
}

/// `info` of a compressed directory: one report for the whole model. Layers, the streaming
/// estimate and the ranked tensors are the model's (a layer may span two shards); sizes are
/// the shards' (the index and side files are not counted, as `compress` counts them).
pub fn info_dir(dir: &Path, shards: &[(String, Container)]) -> Info {
    let named: Vec<(Option<&str>, &Container)> =
        shards.iter().map(|(n, c)| (Some(n.as_str()), c)).collect();
    summarize(
        dir.display().to_string(),
        &named,
        Some(&dir.join("config.json")),
    )
}

/// `config.json` larger than this is not a model config.
const MAX_CONFIG: u64 = 4 << 20;

/// A model's kind: from its `config.json` (`model_type`, `architectures`) where there is
/// one, else from the tensor naming conventions of the common families.
fn model_type<'a>(names: impl Iterator<Item = &'a str> + Clone, config: Option<&Path>) -> String {
    let from_config = config
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() <= MAX_CONFIG))
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            let kind = v
                .get("model_type")
                .and_then(|t| t.as_str())
                .map(str::to_string);
            let arch = v
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|a| a.as_str())
                .map(str::to_string);
            match (kind, arch) {
                (Some(k), Some(a)) => Some(format!("{k} ({a}; from config.json)")),
                (Some(k), None) => Some(format!("{k} (from config.json)")),
                (None, Some(a)) => Some(format!("{a} (from config.json)")),
                (None, None) => None,
            }
        });
    if let Some(t) = from_config {
        return t;
    }
    let any = |pat: &str| names.clone().any(|n| n.contains(pat));
    let kind = if any(".block_sparse_moe.") || any(".mlp.experts.") {
        "mixture-of-experts decoder"
    } else if any("model.layers.") && any(".self_attn.") {
        "llama-style decoder"
    } else if any("transformer.h.") {
        // GPT-2's naming, which Falcon, BLOOM and GPT-J share.
        "decoder with GPT-2-style names (transformer.h.N)"
    } else if any("encoder.layer.") {
        "BERT-style encoder"
    } else if any("decoder.layers.") && any("encoder.layers.") {
        "encoder-decoder"
    } else {
        return "unknown (no config.json, and no tensor naming of a known family)".into();
    };
    format!("{kind} (from tensor names)")
}

/// The distinct `values`, in order of first appearance, joined with ", " (shards normally
/// agree, and then this is their one value).
fn distinct(values: impl IntoIterator<Item = String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen.join(", ")
}

fn summarize(file: String, cs: &[(Option<&str>, &Container)], config: Option<&Path>) -> Info {
    let stats: Vec<TensorStat> = cs
        .iter()
        .flat_map(|&(shard, c)| {
            tensor_stats(c).into_iter().map(move |mut s| {
                s.shard = shard.map(str::to_string);
                s
            })
        })
        .collect();
    let mut dtypes: BTreeMap<String, Breakdown> = BTreeMap::new();
    let mut codecs: BTreeMap<String, Breakdown> = BTreeMap::new();
    let mut roles: BTreeMap<String, Breakdown> = BTreeMap::new();
    let mut layers: BTreeMap<usize, u64> = BTreeMap::new();
    let mut non_layer = 0u64;
    for s in &stats {
        for (map, key) in [
            (&mut dtypes, s.dtype.clone()),
            (&mut codecs, s.codec.clone()),
            (&mut roles, role(&s.name).name().to_string()),
        ] {
            let b = map.entry(key).or_default();
            b.tensors += 1;
            b.raw_bytes += s.raw_bytes;
            b.stored_bytes += s.stored_bytes;
        }
        match layer_index(&s.name) {
            Some(l) => *layers.entry(l).or_default() += s.raw_bytes,
            None => non_layer += s.raw_bytes,
        }
    }
    let largest_layer = layers.values().copied().max().unwrap_or(0);
    let window = crate::store::DECODE_WINDOW_BYTES as u64;
    let raw_data: u64 = cs.iter().map(|(_, c)| c.raw_data_len()).sum();
    let mut ranked: Vec<TensorStat> = stats
        .iter()
        .filter(|s| s.raw_bytes > 0 && s.codec != "dup_ref" && s.codec != "base_same")
        .cloned()
        .collect();
    // Empty tensors have no ratio and are filtered out above.
    ranked.sort_by(|a, b| {
        a.ratio_pct
            .unwrap_or(0.0)
            .total_cmp(&b.ratio_pct.unwrap_or(0.0))
    });
    let best: Vec<TensorStat> = ranked.iter().take(5).cloned().collect();
    let worst: Vec<TensorStat> = ranked.iter().rev().take(5).cloned().collect();
    let file_size: u64 = cs.iter().map(|(_, c)| c.file_size()).sum();
    let source_size: u64 = cs.iter().map(|(_, c)| c.index.source.file_size).sum();
    let patch = patch_info(cs);
    let shards: Vec<ShardInfo> = cs
        .iter()
        .filter_map(|&(shard, c)| {
            shard.map(|name| ShardInfo {
                file: name.to_string(),
                source_file: c.index.source.file_name.clone(),
                tensor_count: c.index.tensors.len(),
                file_size: c.file_size(),
                source_size: c.index.source.file_size,
                ratio_pct: c.file_size() as f64 * 100.0 / c.index.source.file_size.max(1) as f64,
            })
        })
        .collect();
    let model_type = model_type(stats.iter().map(|s| s.name.as_str()), config);
    Info {
        file,
        model_type,
        container_version: distinct(
            cs.iter()
                .map(|(_, c)| format!("{}.{}", c.version.0, c.version.1)),
        ),
        created_by: distinct(cs.iter().map(|(_, c)| c.index.created_by.clone())),
        mode: distinct(cs.iter().map(|(_, c)| c.index.mode.name().to_string())),
        // One shard's source is a file like any other: named, not counted.
        source_file: if shards.len() <= 1 {
            distinct(cs.iter().map(|(_, c)| c.index.source.file_name.clone()))
        } else {
            format!("{} safetensors shards", shards.len())
        },
        file_size,
        source_size,
        ratio_pct: file_size as f64 * 100.0 / source_size.max(1) as f64,
        tensor_count: stats.len(),
        chunk_count: stats.iter().map(|s| s.chunks).sum(),
        duplicates: cs.iter().map(|(_, c)| c.index.duplicates()).sum(),
        groups: cs
            .iter()
            .flat_map(|(_, c)| c.index.groups.clone())
            .collect(),
        layer_count: layers.len(),
        non_layer_raw_bytes: non_layer,
        largest_layer_raw_bytes: largest_layer,
        streaming_peak_ram_est: non_layer + largest_layer + window.min(raw_data),
        dtypes,
        codecs,
        roles,
        best,
        worst,
        patch,
        shards,
    }
}

/// What the patches among `cs` say, summed over them. Every shard of a patched directory
/// records the same base (the whole base model) and the same removed tensors.
fn patch_info(cs: &[(Option<&str>, &Container)]) -> Option<PatchInfo> {
    let patches: Vec<&Container> = cs
        .iter()
        .map(|&(_, c)| c)
        .filter(|c| c.index.base.is_some())
        .collect();
    let first = patches.first()?.index.base.as_ref()?;
    let count = |f: &dyn Fn(&TensorEntry) -> bool| -> usize {
        patches
            .iter()
            .map(|c| c.index.tensors.iter().filter(|t| f(t)).count())
            .sum()
    };
    let same = |t: &TensorEntry| t.delta.as_ref().is_some_and(|d| d.same);
    let delta = |t: &TensorEntry| t.chunks.iter().any(|c| c.delta);
    Some(PatchInfo {
        base_fingerprint: distinct(
            patches
                .iter()
                .filter_map(|c| c.index.base.as_ref().map(|b| b.fingerprint.clone())),
        ),
        made_from: first.made_from.clone(),
        base_tensor_count: first.tensor_count,
        removed: first.removed.clone(),
        unchanged_tensors: count(&same),
        delta_tensors: count(&delta),
        standalone_tensors: count(&|t| !same(t) && !delta(t)),
    })
}

/// Per-file facts `scan` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scan {
    pub path: String,
    pub shards: usize,
    pub tensors_total: usize,
    pub total_bytes: u64,
    pub dtypes: BTreeMap<String, DtypeCount>,
    pub tensors_f32: usize,
    /// F32 tensors whose low 16 bits are zero in at least 99% of elements: upcast BF16.
    pub tensors_bf16_native: usize,
    pub bf16_native_bytes_frac: f64,
    pub model_is_bf16_native: bool,
    pub layer_count: usize,
    /// The zeroth-order entropy bounds of the whole input, % of its size.
    pub bound_conditional_pct: f64,
    pub bound_exponent_raw_pct: f64,
    pub recommendation: String,
}

/// Fraction of F32 elements whose low 16 bits are zero.
fn low_zero_fraction(bytes: &[u8]) -> f64 {
    let n = bytes.len() / 4;
    if n == 0 {
        return 0.0;
    }
    let zero = bytes
        .chunks_exact(4)
        .filter(|e| e[0] == 0 && e[1] == 0)
        .count();
    zero as f64 / n as f64
}

/// Scans a safetensors file or model directory, reading every tensor once (each is let go
/// of when read, so resident memory stays near a few tensors); `progress` gets the bytes read.
pub fn scan(path: &Path, progress: &dyn crate::progress::Progress) -> Result<Scan> {
    let files = crate::model::dir::weight_files(path)?;
    progress.start(
        files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum(),
        "scanning",
    );
    let mut s = Scan {
        path: path.display().to_string(),
        shards: files.len(),
        ..Default::default()
    };
    let mut bounds = entropy::Bounds::default();
    let mut native_bytes = 0u64;
    let mut f32_bytes = 0u64;
    let mut layers = BTreeSet::new();
    for f in &files {
        let st = SafetensorsFile::open(f)?;
        s.total_bytes += st.file_size;
        // The bar counts whole files: the header (and any bytes no tensor covers) now.
        let covered: u64 = st.tensors.iter().map(|t| t.len() as u64).sum();
        progress.advance(st.file_size.saturating_sub(covered));
        let header_bits = st.data_offset() as f64 * 8.0;
        bounds += entropy::Bounds {
            conditional_bits: header_bits,
            exponent_raw_bits: header_bits,
        };
        let per: Vec<(entropy::Bounds, Option<f64>)> = st
            .tensors
            .par_iter()
            .map(|t| {
                let bytes = st.tensor_bytes(t);
                let native = (t.dtype == safetensors::Dtype::F32).then(|| low_zero_fraction(bytes));
                let b = entropy::tensor_bounds(t.dtype, bytes);
                st.release(st.data_offset() + t.start, st.data_offset() + t.end);
                progress.advance(bytes.len() as u64);
                (b, native)
            })
            .collect();
        for (t, (b, native)) in st.tensors.iter().zip(per) {
            s.tensors_total += 1;
            bounds += b;
            let d = s.dtypes.entry(dtype_name(t.dtype)).or_default();
            d.tensors += 1;
            d.raw_bytes += t.len() as u64;
            if let Some(l) = layer_index(&t.name) {
                layers.insert(l);
            }
            if let Some(frac) = native {
                s.tensors_f32 += 1;
                f32_bytes += t.len() as u64;
                if frac >= 0.99 && t.numel() >= 16 {
                    s.tensors_bf16_native += 1;
                    native_bytes += t.len() as u64;
                }
            }
        }
        st.release(0, st.bytes().len());
    }
    progress.finish();
    s.layer_count = layers.len();
    let total_bits = s.total_bytes.max(1) as f64 * 8.0;
    s.bound_conditional_pct = bounds.conditional_bits * 100.0 / total_bits;
    s.bound_exponent_raw_pct = bounds.exponent_raw_bits * 100.0 / total_bits;
    s.bf16_native_bytes_frac = if f32_bytes > 0 {
        native_bytes as f64 / f32_bytes as f64
    } else {
        0.0
    };
    s.model_is_bf16_native = f32_bytes > 0 && s.bf16_native_bytes_frac >= 0.9;
    s.recommendation = recommend(&s);
    Ok(s)
}

fn recommend(s: &Scan) -> String {
    let bytes_of = |d: &str| s.dtypes.get(d).map(|b| b.raw_bytes).unwrap_or(0);
    let total: u64 = s.dtypes.values().map(|b| b.raw_bytes).sum::<u64>().max(1);
    let share = |d: &str| bytes_of(d) as f64 / total as f64;
    if s.dtypes.values().all(|b| b.raw_bytes == 0) {
        "no tensor data: compressing keeps the header and metadata, and saves nothing".into()
    } else if s.model_is_bf16_native {
        "F32 holding BF16 values (upcast): the low halves cost almost nothing, so compress as \
         is (bit-exact); a BF16 cast would be lossless only where every low half is zero"
            .into()
    } else if share("BF16") > 0.5 {
        "BF16: compress with the default (balanced) mode; --storage squeezes a little more".into()
    } else if share("F32") > 0.5 && s.bf16_native_bytes_frac >= 0.5 {
        format!(
            "F32, {:.0}% of it BF16-native (upcast): those tensors cost what BF16 does; \
             compress with the default mode",
            s.bf16_native_bytes_frac * 100.0
        )
    } else if share("F32") > 0.5 {
        "F32 (not BF16-native): compress with the default mode; --storage tries zstd on every \
         low byte plane"
            .into()
    } else if share("F16") > 0.5 {
        "F16: compress with the default mode".into()
    } else if share("F8_E4M3") + share("F8_E5M2") > 0.5 {
        "FP8: compress with the default mode (whole-byte rANS)".into()
    } else {
        "mixed or integer tensors: compress with the default mode".into()
    }
}
