//! `diff`: which tensors were added, removed, changed or kept between two models. Containers
//! answer from their md5 receipts (nothing is decoded); safetensors inputs are hashed.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::reader::Container;
use crate::model::safetensors::{dtype_name, SafetensorsFile};
use crate::store::md5_hex;

/// One tensor as `diff` sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TensorSig {
    pub dtype: String,
    pub shape: Vec<u64>,
    pub bytes: u64,
    pub md5: String,
}

/// The `__metadata__` entries of a safetensors header (all files' together for a directory:
/// HF shards repeat theirs), as text.
fn header_metadata(header: &[u8], out: &mut BTreeMap<String, String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(header) else {
        return;
    };
    if let Some(m) = v.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in m {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            out.insert(k.clone(), text);
        }
    }
}

/// Reads the tensor signatures of a `.bs`, a compressed directory, a `.safetensors` file or
/// a model directory, and its `__metadata__`.
pub fn signatures(path: &Path) -> Result<(BTreeMap<String, TensorSig>, BTreeMap<String, String>)> {
    let mut out = BTreeMap::new();
    let mut meta = BTreeMap::new();
    // A name in two weight files (a consolidated file beside the shards) would compare one
    // of the two and call it unchanged: refused, as a base with one is.
    let twice = |f: &Path, name: &str| {
        Error::invalid(
            f,
            format!(
                "tensor '{name}' appears in two weight files of {}: diff compares one model \
                 at a time",
                path.display()
            ),
        )
    };
    let containers = crate::store_dir::containers_at(path)?;
    if !containers.is_empty() {
        for f in containers {
            let c = Container::open(&f)?;
            header_metadata(c.index.source.header.as_bytes(), &mut meta);
            for t in &c.index.tensors {
                if out.contains_key(&t.name) {
                    return Err(twice(&f, &t.name));
                }
                out.insert(
                    t.name.clone(),
                    TensorSig {
                        dtype: t.dtype.clone(),
                        shape: t.shape.clone(),
                        bytes: t.raw_len(),
                        md5: t.md5.clone(),
                    },
                );
            }
        }
        return Ok((out, meta));
    }
    let files = crate::model::dir::weight_files(path)?;
    for f in files {
        let st = SafetensorsFile::open(&f)?;
        header_metadata(&st.header, &mut meta);
        let sigs: Vec<(String, TensorSig)> = st
            .tensors
            .par_iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TensorSig {
                        dtype: dtype_name(t.dtype),
                        shape: t.shape.iter().map(|&d| d as u64).collect(),
                        bytes: t.len() as u64,
                        md5: md5_hex(st.tensor_bytes(t)),
                    },
                )
            })
            .collect();
        if let Some((name, _)) = sigs.iter().find(|(n, _)| out.contains_key(n)) {
            return Err(twice(&f, name));
        }
        out.extend(sigs);
        st.release(0, st.bytes().len());
    }
    Ok((out, meta))
}

/// A `__metadata__` entry that differs: added (no `a`), removed (no `b`) or changed.
#[derive(Debug, Clone, Serialize)]
pub struct MetadataChange {
    pub key: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffRow {
    pub name: String,
    /// added, removed, changed, resized (shape changed), retyped (dtype changed, same shape),
    /// unchanged
    pub status: &'static str,
    pub a: Option<TensorSig>,
    pub b: Option<TensorSig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub resized: usize,
    pub retyped: usize,
    pub unchanged: usize,
    /// Bytes (in B) of the changed, resized, retyped and unchanged tensors.
    pub changed_bytes: u64,
    pub resized_bytes: u64,
    pub retyped_bytes: u64,
    pub unchanged_bytes: u64,
    pub rows: Vec<DiffRow>,
    /// Header `__metadata__` entries that differ (the weights may be equal).
    pub metadata: Vec<MetadataChange>,
}

/// Compares two models tensor by tensor.
pub fn diff(a: &Path, b: &Path) -> Result<DiffReport> {
    let ((sa, ma), (sb, mb)) = (signatures(a)?, signatures(b)?);
    let mut rows = Vec::new();
    let mut r = DiffReport {
        a: a.display().to_string(),
        b: b.display().to_string(),
        added: 0,
        removed: 0,
        changed: 0,
        resized: 0,
        retyped: 0,
        unchanged: 0,
        changed_bytes: 0,
        resized_bytes: 0,
        retyped_bytes: 0,
        unchanged_bytes: 0,
        rows: Vec::new(),
        metadata: ma
            .keys()
            .chain(mb.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| ma.get(*k) != mb.get(*k))
            .map(|k| MetadataChange {
                key: k.clone(),
                a: ma.get(k).cloned(),
                b: mb.get(k).cloned(),
            })
            .collect(),
    };
    let names: std::collections::BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
    for name in names {
        let (x, y) = (sa.get(name), sb.get(name));
        let status = match (x, y) {
            (None, Some(_)) => {
                r.added += 1;
                "added"
            }
            (Some(_), None) => {
                r.removed += 1;
                "removed"
            }
            (Some(x), Some(y)) if x.shape != y.shape => {
                r.resized += 1;
                r.resized_bytes += y.bytes;
                "resized"
            }
            (Some(x), Some(y)) if x.dtype != y.dtype => {
                r.retyped += 1;
                r.retyped_bytes += y.bytes;
                "retyped"
            }
            (Some(x), Some(y)) if x.md5 != y.md5 => {
                r.changed += 1;
                r.changed_bytes += y.bytes;
                "changed"
            }
            (Some(_), Some(y)) => {
                r.unchanged += 1;
                r.unchanged_bytes += y.bytes;
                "unchanged"
            }
            (None, None) => unreachable!("name comes from one side"),
        };
        rows.push(DiffRow {
            name: name.clone(),
            status,
            a: x.cloned(),
            b: y.cloned(),
        });
    }
    r.rows = rows;
    Ok(r)
}

/// Zeroth-order entropy, in bytes, of the element-wise XOR and wrapping-difference streams of
/// the tensors two models share (same name, dtype and shape): the yardstick for patch sizes.
/// 16-bit elements are one symbol each; other widths count their byte planes separately.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DeltaEntropy {
    pub tensors: usize,
    pub bytes: u64,
    pub xor_bytes: f64,
    pub sub_bytes: f64,
}

pub fn delta_entropy(a: &Path, b: &Path) -> Result<DeltaEntropy> {
    let (base, fine) = (super::open_base(a)?, super::open_base(b)?);
    let shared: Vec<(String, u64, usize)> = fine
        .tensors()
        .iter()
        .filter_map(|t| {
            let bt = base.find(&t.name)?;
            let w = crate::model::safetensors::parse_dtype(&t.dtype)
                .map(|d| crate::model::safetensors::elem_kind(d).width())?;
            (bt.dtype == t.dtype && bt.shape == t.shape).then(|| (t.name.clone(), t.len, w))
        })
        .collect();
    let per: Vec<(f64, f64)> = shared
        .par_iter()
        .map(|(name, len, w)| -> Result<(f64, f64)> {
            let (x, y) = (base.range(name, 0, *len)?, fine.range(name, 0, *len)?);
            let mut sub = Vec::new();
            super::subtract(&y, &x, *w, &mut sub);
            let xor: Vec<u8> = x.iter().zip(y.iter()).map(|(p, q)| p ^ q).collect();
            Ok((stream_entropy(&xor, *w), stream_entropy(&sub, *w)))
        })
        .collect::<Result<_>>()?;
    let mut e = DeltaEntropy {
        tensors: shared.len(),
        bytes: shared.iter().map(|s| s.1).sum(),
        ..Default::default()
    };
    for (x, s) in per {
        e.xor_bytes += x;
        e.sub_bytes += s;
    }
    Ok(e)
}

fn stream_entropy(data: &[u8], width: usize) -> f64 {
    fn h(counts: &[u64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| -(c as f64) * (c as f64 / n as f64).log2())
            .sum()
    }
    if width == 2 {
        let mut c = vec![0u64; 1 << 16];
        for e in data.chunks_exact(2) {
            c[u16::from_le_bytes([e[0], e[1]]) as usize] += 1;
        }
        return h(&c) / 8.0;
    }
    (0..width)
        .map(|p| {
            let mut c = [0u64; 256];
            for e in data.chunks_exact(width) {
                c[e[p] as usize] += 1;
            }
            h(&c) / 8.0
        })
        .sum()
}
