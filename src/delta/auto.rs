//! `--auto-delta`: find the closest base for a model among candidates under `--base-dir`s.
//!
//! A fingerprint is the model's tensor list (name, dtype, shape, bytes) plus, for its eight
//! largest float tensors, the histogram of the top byte (sign and high exponent bits) over a
//! deterministic sample of elements, and the bits of 1024 of those elements. Fine-tunes keep
//! their base's names and shapes and almost exactly its exponent histograms; unrelated models
//! differ in both. Distance, which decides whether a candidate is a base at all:
//! `(1 − share of the input's bytes whose name, dtype and shape match) + ½·mean L1 distance of
//! the histograms of the sampled tensors present in both`.
//!
//! Among the candidates within `MAX_DISTANCE`, the pick is the one with the smallest
//! estimated patch: the unmatched share plus the matched share times the sampled elements'
//! difference (the zeroth-order entropy of their XOR by byte planes, as a share of their
//! bits). Histograms cannot
//! tell a base from another fine-tune of it (a sibling), nor from a copy whose values moved;
//! the sampled values can, and they rank candidates as the difference coding will pay.
//!
//! Fingerprints of candidates are cached in `<base-dir>/.bigsmall-fingerprints.json` (or, when
//! that directory is not writable, in `$XDG_CACHE_HOME/bigsmall/` or `~/.cache/bigsmall/`),
//! keyed by path, size and modification time, so a second run reads no weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::reader::Container;
use crate::model::dir::scan_dir;
use crate::model::safetensors::{dtype_name, SafetensorsFile};
use crate::store_dir::DIR_INDEX;

/// Above this distance a candidate is not considered a base of the input.
pub const MAX_DISTANCE: f64 = 0.25;
const SAMPLED: usize = 8;
const SAMPLE_ELEMENTS: usize = 65_536;
/// Elements of each sampled tensor whose bits are kept, evenly spaced over its first chunk.
const SAMPLE_VALUES: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fingerprint {
    /// name -> (dtype, shape, bytes)
    pub tensors: BTreeMap<String, (String, Vec<u64>, u64)>,
    /// name -> normalised histogram of the elements' top byte (256 bins)
    pub hist: BTreeMap<String, Vec<f32>>,
    /// name -> the bits of `SAMPLE_VALUES` elements (little-endian, zero-extended)
    #[serde(default)]
    pub values: BTreeMap<String, Vec<u32>>,
}

/// Top-byte histogram of a deterministic sample of a float tensor's elements.
fn histogram(bytes: &[u8], width: usize) -> Vec<f32> {
    let n = bytes.len() / width;
    let step = (n / SAMPLE_ELEMENTS).max(1);
    let mut h = vec![0u32; 256];
    let mut count = 0u32;
    for e in bytes.chunks_exact(width).step_by(step) {
        h[e[width - 1] as usize] += 1;
        count += 1;
    }
    h.iter().map(|&c| c as f32 / count.max(1) as f32).collect()
}

/// The bits of `SAMPLE_VALUES` elements evenly spaced over `bytes` (all, when fewer).
fn sample_values(bytes: &[u8], width: usize) -> Vec<u32> {
    let n = bytes.len() / width;
    let step = (n / SAMPLE_VALUES).max(1);
    bytes
        .chunks_exact(width)
        .step_by(step)
        .take(SAMPLE_VALUES)
        .map(|e| e.iter().rev().fold(0u32, |v, &b| (v << 8) | u32::from(b)))
        .collect()
}

/// Records a sampled tensor's histogram and values from its first chunk's bytes.
fn sample(fp: &mut Fingerprint, name: &str, bytes: &[u8], width: usize) {
    fp.hist.insert(name.to_string(), histogram(bytes, width));
    fp.values
        .insert(name.to_string(), sample_values(bytes, width));
}

fn is_float(dtype: &str) -> Option<usize> {
    match dtype {
        "BF16" | "F16" => Some(2),
        "F32" => Some(4),
        "F8_E4M3" | "F8_E5M2" => Some(1),
        _ => None,
    }
}

/// The largest float tensors, the ones whose histograms are sampled.
fn sampled_names(tensors: &BTreeMap<String, (String, Vec<u64>, u64)>) -> Vec<String> {
    let mut v: Vec<(&String, u64)> = tensors
        .iter()
        .filter(|(_, (d, _, _))| is_float(d).is_some())
        .map(|(n, (_, _, b))| (n, *b))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter()
        .take(SAMPLED)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Fingerprints a `.safetensors` file, model directory, `.bs` or compressed directory.
pub fn fingerprint(path: &Path) -> Result<Fingerprint> {
    let mut fp = Fingerprint {
        tensors: BTreeMap::new(),
        hist: BTreeMap::new(),
        values: BTreeMap::new(),
    };
    let containers = crate::store_dir::containers_at(path)?;
    if !containers.is_empty() {
        let opened: Vec<Container> = containers
            .iter()
            .map(|f| Container::open(f))
            .collect::<Result<_>>()?;
        for c in &opened {
            for t in &c.index.tensors {
                fp.tensors.insert(
                    t.name.clone(),
                    (t.dtype.clone(), t.shape.clone(), t.raw_len()),
                );
            }
        }
        for name in sampled_names(&fp.tensors) {
            for c in &opened {
                if let Some(i) = c.find(&name) {
                    if c.is_patch() {
                        continue;
                    }
                    // The sample is the tensor's first `CHUNK_BYTES`, as for a safetensors
                    // file, whatever the chunks' sizes (a `.bsr` cuts them shorter, a tensor
                    // kept raw is one chunk): the same elements on both sides.
                    let w = is_float(&c.index.tensors[i].dtype).unwrap_or(1);
                    let want = (c.index.tensors[i].raw_len() as usize)
                        .min(crate::format::CHUNK_BYTES / w * w);
                    let mut buf = Vec::with_capacity(want);
                    for (k, ch) in c.chunks(i).iter().enumerate() {
                        if buf.len() >= want {
                            break;
                        }
                        let at = buf.len();
                        buf.resize(at + ch.raw_len as usize, 0);
                        c.decode_chunk_into(i, k, &mut buf[at..])?;
                    }
                    buf.truncate(want);
                    if !buf.is_empty() {
                        sample(&mut fp, &name, &buf, w);
                    }
                }
            }
        }
        return Ok(fp);
    }
    let files = crate::model::dir::weight_files(path)?;
    let opened: Vec<SafetensorsFile> = files
        .iter()
        .map(|f| SafetensorsFile::open(f))
        .collect::<Result<_>>()?;
    for st in &opened {
        for t in &st.tensors {
            fp.tensors.insert(
                t.name.clone(),
                (
                    dtype_name(t.dtype),
                    t.shape.iter().map(|&d| d as u64).collect(),
                    t.len() as u64,
                ),
            );
        }
    }
    for name in sampled_names(&fp.tensors) {
        for st in &opened {
            if let Some(t) = st.tensors.iter().find(|t| t.name == name) {
                // Same sample as for containers: the first chunk's worth of bytes.
                let bytes = st.tensor_bytes(t);
                let w = is_float(&dtype_name(t.dtype)).unwrap_or(1);
                let cut = bytes.len().min(crate::format::CHUNK_BYTES / w * w);
                sample(&mut fp, &name, &bytes[..cut], w);
            }
        }
    }
    Ok(fp)
}

/// The share of the input's bytes in tensors that `base` has with the same name, dtype and
/// shape.
fn matched_share(input: &Fingerprint, base: &Fingerprint) -> f64 {
    let total: u64 = input.tensors.values().map(|t| t.2).sum();
    let matched: u64 = input
        .tensors
        .iter()
        .filter(|(n, t)| base.tensors.get(*n) == Some(t))
        .map(|(_, t)| t.2)
        .sum();
    matched as f64 / total.max(1) as f64
}

/// Distance between an input and a candidate base (0 = same names/shapes and histograms).
pub fn distance(input: &Fingerprint, base: &Fingerprint) -> f64 {
    let overlap = matched_share(input, base);
    let mut l1 = Vec::new();
    for (n, h) in &input.hist {
        if let Some(g) = base.hist.get(n) {
            l1.push(
                h.iter()
                    .zip(g)
                    .map(|(a, b)| f64::from((a - b).abs()))
                    .sum::<f64>(),
            );
        }
    }
    let hist = if l1.is_empty() {
        1.0
    } else {
        l1.iter().sum::<f64>() / l1.len() as f64
    };
    (1.0 - overlap) + 0.5 * hist
}

/// The estimated size of a patch of `input` against `base`, as a share of the input: its
/// unmatched bytes whole, its matched bytes at the zeroth-order entropy of the sampled
/// elements' XOR, byte plane by byte plane, pooled over the sampled tensors of each width
/// (which is what an order-0 coder of the difference pays; pooling keeps the estimate from
/// running low on a tensor's 1024 samples). `None` where no sampled tensor is in both with
/// the same name, dtype and shape (a patch as candidate: its values need its own base).
pub fn patch_share(input: &Fingerprint, base: &Fingerprint) -> Option<f64> {
    // Per element width (1, 2 or 4 bytes): elements sampled, and each byte plane's histogram.
    let mut pools: BTreeMap<usize, (u64, Vec<[u64; 256]>)> = BTreeMap::new();
    for (n, a) in &input.values {
        let same = input
            .tensors
            .get(n)
            .filter(|t| base.tensors.get(n) == Some(t));
        let (Some((dtype, ..)), Some(b)) = (same, base.values.get(n)) else {
            continue;
        };
        let width = is_float(dtype).unwrap_or(1);
        let (count, planes) = pools
            .entry(width)
            .or_insert_with(|| (0, vec![[0u64; 256]; width]));
        for (x, y) in a.iter().zip(b) {
            let d = x ^ y;
            for (p, h) in planes.iter_mut().enumerate() {
                h[((d >> (8 * p)) & 0xff) as usize] += 1;
            }
            *count += 1;
        }
    }
    let (mut bits, mut of) = (0.0f64, 0.0f64);
    for (width, (count, planes)) in &pools {
        for h in planes {
            bits += h
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| -(c as f64) * (c as f64 / *count as f64).log2())
                .sum::<f64>();
        }
        of += (*count * 8 * *width as u64) as f64;
    }
    if of == 0.0 {
        return None;
    }
    let matched = matched_share(input, base);
    Some((1.0 - matched) + matched * bits / of)
}

/// Model-like entries directly under a base directory.
fn candidates(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            if p.join(DIR_INDEX).is_file() || scan_dir(&p).is_ok() {
                out.push(p);
            }
        } else if name.ends_with(".safetensors") || name.ends_with(".bs") || name.ends_with(".bsr")
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Identity of a candidate on disk: total size and newest modification time of its files,
/// and a hash of each file's first and last `STAMP_SAMPLE` bytes (a file rewritten in place
/// can keep its size and time: `cp -p`, `rsync -t`).
fn stamp(path: &Path) -> String {
    fn sample(p: &Path, len: u64, h: &mut xxhash_rust::xxh3::Xxh3) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = crate::fsutil::open_regular(p) else {
            return;
        };
        let mut buf = vec![0u8; STAMP_SAMPLE.min(len) as usize];
        for at in [0, len.saturating_sub(STAMP_SAMPLE)] {
            if f.seek(SeekFrom::Start(at)).is_ok() && f.read_exact(&mut buf).is_ok() {
                h.update(&buf);
            }
        }
    }
    fn walk(p: &Path, size: &mut u64, newest: &mut u128, h: &mut xxhash_rust::xxh3::Xxh3) {
        if let Ok(m) = std::fs::metadata(p) {
            if m.is_dir() {
                if let Ok(rd) = std::fs::read_dir(p) {
                    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                    entries.sort();
                    for e in entries {
                        walk(&e, size, newest, h);
                    }
                }
            } else {
                *size += m.len();
                if let Ok(t) = m.modified() {
                    let ns = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    *newest = (*newest).max(ns);
                }
                sample(p, m.len(), h);
            }
        }
    }
    let (mut size, mut newest) = (0u64, 0u128);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    walk(path, &mut size, &mut newest, &mut h);
    format!("{size}:{newest}:{:016x}", h.digest())
}

/// Bytes read at each end of a candidate's files for its stamp.
const STAMP_SAMPLE: u64 = 64 << 10;

#[derive(Default, Serialize, Deserialize)]
struct Cache {
    /// `CACHE_VERSION` of the fingerprints; a cache of another version is not used.
    #[serde(default)]
    version: u32,
    /// candidate file name -> (stamp, fingerprint)
    entries: BTreeMap<String, (String, Fingerprint)>,
}

/// 2: fingerprints carry sampled values; 3: a container's sample is its tensors' first
/// `CHUNK_BYTES` whatever its chunks (version 2 sampled a `.bsr`'s shorter first chunk).
const CACHE_VERSION: u32 = 3;

fn cache_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![dir.join(".bigsmall-fingerprints.json")];
    let user = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(u) = user {
        let key = crate::store::md5_hex(dir.to_string_lossy().as_bytes());
        v.push(
            u.join("bigsmall")
                .join(format!("fingerprints-{}.json", &key[..16])),
        );
    }
    v
}

/// A candidate base and how close it is.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub path: PathBuf,
    pub distance: f64,
    /// `patch_share` against it.
    pub patch_share: Option<f64>,
}

/// Every candidate considered: those within `MAX_DISTANCE` first, smallest estimated patch
/// first (those without an estimate after them), then the rest, nearest first.
pub type Considered = Vec<Candidate>;

/// The pick of `--auto-delta`.
#[derive(Debug, Clone)]
pub struct Pick {
    pub base: Candidate,
    /// Candidates whose fingerprint came from the cache.
    pub cached: usize,
}

/// Finds the candidate with the smallest estimated patch among those within `MAX_DISTANCE`;
/// `None` when there is none (the caller then writes a standalone file).
pub fn pick(input: &Path, base_dirs: &[PathBuf]) -> Result<(Option<Pick>, Considered)> {
    let me = fingerprint(input)?;
    let input_canon = input.canonicalize().ok();
    let mut considered = Vec::new();
    let mut cached = 0;
    for dir in base_dirs {
        if !dir.exists() {
            return Err(Error::invalid(dir, "--base-dir does not exist"));
        }
        if !dir.is_dir() {
            return Err(Error::invalid(dir, "--base-dir is not a directory"));
        }
        let paths = cache_paths(dir);
        let mut cache: Cache = paths
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Cache>(&b).ok())
            .filter(|c| c.version == CACHE_VERSION)
            .unwrap_or_default();
        cache.version = CACHE_VERSION;
        let mut dirty = false;
        for cand in candidates(dir)? {
            if cand.canonicalize().ok() == input_canon {
                continue;
            }
            let key = cand
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let st = stamp(&cand);
            let fp = match cache.entries.get(&key) {
                Some((s, fp)) if *s == st => {
                    cached += 1;
                    fp.clone()
                }
                _ => match fingerprint(&cand) {
                    Ok(fp) => {
                        cache.entries.insert(key, (st, fp.clone()));
                        dirty = true;
                        fp
                    }
                    // Not a readable model: not a candidate.
                    Err(_) => continue,
                },
            };
            considered.push(Candidate {
                distance: distance(&me, &fp),
                patch_share: patch_share(&me, &fp),
                path: cand,
            });
        }
        if dirty {
            let json = serde_json::to_vec(&cache).expect("cache serialises");
            for p in &paths {
                if let Some(parent) = p.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let tmp = crate::fsutil::temp_name(p);
                if std::fs::write(&tmp, &json).is_ok() && std::fs::rename(&tmp, p).is_ok() {
                    break;
                }
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
    let far = |c: &Candidate| c.distance > MAX_DISTANCE;
    considered.sort_by(|a, b| {
        far(a).cmp(&far(b)).then_with(|| {
            let share = |c: &Candidate| c.patch_share.filter(|_| !far(c));
            match (share(a), share(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (x, y) => y.is_some().cmp(&x.is_some()),
            }
            .then(a.distance.total_cmp(&b.distance))
            .then(a.path.cmp(&b.path))
        })
    });
    let pick = considered.first().filter(|c| !far(c)).map(|c| Pick {
        base: c.clone(),
        cached,
    });
    Ok((pick, considered))
}
