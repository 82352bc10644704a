//! `diff`: which tensors were added, removed, changed or kept between two models. Containers
//! answer from their md5 receipts (nothing is decoded); safetensors inputs are hashed.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::format::reader::Container;
use crate::model::dir::scan_dir;
use crate::model::safetensors::{dtype_name, SafetensorsFile};
use crate::store::md5_hex;
use crate::store_dir::{read_dir_index, DIR_INDEX};

/// One tensor as `diff` sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TensorSig {
    pub dtype: String,
    pub shape: Vec<u64>,
    pub bytes: u64,
    pub md5: String,
}

/// Reads the tensor signatures of a `.bs`, a compressed directory, a `.safetensors` file or
/// a model directory.
pub fn signatures(path: &Path) -> Result<BTreeMap<String, TensorSig>> {
    let mut out = BTreeMap::new();
    let containers: Vec<std::path::PathBuf> = if path.is_dir() && path.join(DIR_INDEX).is_file() {
        let idx = read_dir_index(path)?;
        idx.shards.iter().map(|s| path.join(&s.file)).collect()
    } else if path.is_file() && is_container(path) {
        vec![path.to_path_buf()]
    } else {
        Vec::new()
    };
    if !containers.is_empty() {
        for f in containers {
            let c = Container::open(&f)?;
            for t in &c.index.tensors {
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
        return Ok(out);
    }
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        scan_dir(path)?
            .weights
            .into_iter()
            .map(|p| path.join(p))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        let st = SafetensorsFile::open(&f)?;
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
        out.extend(sigs);
        st.release(0, st.bytes().len());
    }
    Ok(out)
}

fn is_container(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == crate::format::MAGIC)
        .unwrap_or(false)
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffRow {
    pub name: String,
    /// added, removed, changed, resized (dtype or shape changed), unchanged
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
    pub unchanged: usize,
    pub changed_bytes: u64,
    pub unchanged_bytes: u64,
    pub rows: Vec<DiffRow>,
}

/// Compares two models tensor by tensor.
pub fn diff(a: &Path, b: &Path) -> Result<DiffReport> {
    let (sa, sb) = (signatures(a)?, signatures(b)?);
    let mut rows = Vec::new();
    let mut r = DiffReport {
        a: a.display().to_string(),
        b: b.display().to_string(),
        added: 0,
        removed: 0,
        changed: 0,
        resized: 0,
        unchanged: 0,
        changed_bytes: 0,
        unchanged_bytes: 0,
        rows: Vec::new(),
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
            (Some(x), Some(y)) if x.dtype != y.dtype || x.shape != y.shape => {
                r.resized += 1;
                r.changed_bytes += y.bytes;
                "resized"
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
