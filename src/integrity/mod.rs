//! Integrity checks of containers: `verify` in its fast, sample, full and against-source modes.
//! Checksums themselves (xxh3 per chunk, md5 per tensor) are written by `store`; `rs` and
//! `ecc` hold the Reed-Solomon sidecar.

pub mod ecc;
pub mod md5x;
pub mod rs;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use md5x::Md5;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::reader::Container;
use crate::model::safetensors::SafetensorsFile;
use crate::store::hex;

#[derive(Debug, Clone)]
pub enum VerifyMode {
    /// Structure only: trailer, index checksum, every offset and length. No blob is decoded.
    Fast,
    /// Decode a random fraction of the chunks and check their checksums.
    Sample { fraction: f64, seed: u64 },
    /// Decode everything; check every chunk checksum and every tensor's md5 receipt.
    Full,
    /// Decode everything and compare with the original safetensors file.
    Source(PathBuf),
}

impl VerifyMode {
    /// The mode as reports name it.
    pub fn name(&self) -> String {
        match self {
            VerifyMode::Fast => "fast".into(),
            VerifyMode::Sample { fraction, .. } => format!("sample {fraction}"),
            VerifyMode::Full => "full".into(),
            VerifyMode::Source(_) => "source".into(),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub file: String,
    pub mode: String,
    pub format_version: String,
    pub tensors: usize,
    pub chunks_total: usize,
    pub chunks_checked: usize,
    pub bytes_checked: u64,
    pub md5_checked: usize,
    pub file_size: u64,
    /// One line per problem found; empty means OK.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A tiny deterministic generator for sampling (splitmix64).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Verifies one container. Structural damage is an `Err`; decoded-data mismatches are listed
/// in the report's `problems` so every bad tensor is named, not just the first.
pub fn verify(path: &Path, mode: &VerifyMode) -> Result<VerifyReport> {
    verify_with(path, mode, None, &crate::progress::Silent)
}

/// Verifies a container; a patch needs its base for every mode but `Fast`. `progress` gets
/// the decoded bytes.
pub fn verify_with(
    path: &Path,
    mode: &VerifyMode,
    base: Option<std::sync::Arc<dyn crate::delta::BaseSource>>,
    progress: &dyn crate::progress::Progress,
) -> Result<VerifyReport> {
    let mut c = match Container::open(path) {
        Ok(c) => c,
        // A file that starts as a container but whose structure is damaged (truncated, a bad
        // index) is a finding of verification like a damaged chunk (exit 3, a JSON report),
        // not a wrong argument.
        Err(e @ Error::BadContainer { .. }) if crate::format::is_container(path) => {
            return Ok(VerifyReport {
                file: path.display().to_string(),
                mode: mode.name(),
                file_size: std::fs::metadata(path).map_or(0, |m| m.len()),
                problems: vec![e.to_string()],
                ..Default::default()
            });
        }
        Err(e) => return Err(e),
    };
    if let Some(b) = base {
        c.attach_base(b)?;
    }
    if !matches!(mode, VerifyMode::Fast) {
        c.check_decodable()?;
    }
    // A full verify checks every receipt, the base's too (a sample stays quick: it reads no
    // more of the base than its chunks need).
    if matches!(mode, VerifyMode::Full | VerifyMode::Source(_)) {
        c.check_base_receipts()?;
    }
    let mut report = VerifyReport {
        file: path.display().to_string(),
        mode: mode.name(),
        format_version: format!("{}.{}", c.version.0, c.version.1),
        tensors: c.index.tensors.len(),
        chunks_total: (0..c.index.tensors.len())
            .filter(|&t| c.index.tensors[t].dup_of.is_none())
            .map(|t| c.chunks(t).len())
            .sum(),
        file_size: c.file_size(),
        ..Default::default()
    };
    let problems = Mutex::new(Vec::new());
    let note = |e: Error| {
        problems
            .lock()
            .expect("no poisoned lock")
            .push(e.to_string())
    };
    match mode {
        VerifyMode::Fast => {}
        VerifyMode::Sample { fraction, seed } => {
            let mut rng = *seed;
            let mut picks = Vec::new();
            for (t, te) in c.index.tensors.iter().enumerate() {
                if te.dup_of.is_some() {
                    continue;
                }
                for k in 0..c.chunks(t).len() {
                    let u = (splitmix(&mut rng) >> 11) as f64 / (1u64 << 53) as f64;
                    if u < *fraction {
                        picks.push((t, k));
                    }
                }
            }
            if picks.is_empty() && report.chunks_total > 0 {
                // Always check at least one chunk, chosen by the same generator.
                let all: Vec<(usize, usize)> = c
                    .index
                    .tensors
                    .iter()
                    .enumerate()
                    .flat_map(|(t, _)| (0..c.chunks(t).len()).map(move |k| (t, k)))
                    .collect();
                picks.push(all[(splitmix(&mut rng) % all.len() as u64) as usize]);
            }
            progress.start(
                picks.iter().map(|&(t, k)| c.chunks(t)[k].raw_len).sum(),
                "verifying",
            );
            let bytes: u64 = picks
                .par_iter()
                .map(|&(t, k)| {
                    let n = c.chunks(t)[k].raw_len;
                    let mut buf = vec![0u8; n as usize];
                    if let Err(e) = c.decode_chunk_into(t, k, &mut buf) {
                        note(e);
                    }
                    progress.advance(n);
                    n
                })
                .sum();
            report.chunks_checked = picks.len();
            report.bytes_checked = bytes;
        }
        VerifyMode::Full => {
            let mut order: Vec<usize> = (0..c.index.tensors.len())
                .filter(|&t| c.index.tensors[t].dup_of.is_none())
                .collect();
            // Biggest first, so the last tensors to finish are small ones.
            order.sort_by_key(|&t| std::cmp::Reverse(c.index.tensors[t].raw_len()));
            progress.start(
                order.iter().map(|&t| c.index.tensors[t].raw_len()).sum(),
                "verifying",
            );
            order.par_iter().for_each(|&t| {
                let te = &c.index.tensors[t];
                let mut h = Md5::new();
                let mut buf = Vec::new();
                // Every damaged chunk is reported, not only a tensor's first (what a repair
                // or a re-download has to cover); the md5 is only checked when all decoded.
                let mut whole = true;
                for (k, ch) in c.chunks(t).iter().enumerate() {
                    buf.resize(ch.raw_len as usize, 0);
                    progress.advance(ch.raw_len);
                    if let Err(e) = c.decode_chunk_into(t, k, &mut buf) {
                        note(e);
                        whole = false;
                    } else if whole {
                        h.update(&buf);
                    }
                }
                if whole && hex(&h.finalize()) != te.md5 {
                    note(Error::Integrity {
                        path: c.path.clone(),
                        tensor: te.name.clone(),
                        what: "md5 receipt".into(),
                    });
                }
            });
            for te in &c.index.tensors {
                if let Some(d) = te.dup_of {
                    if c.index.tensors[d].md5 != te.md5 {
                        note(Error::Integrity {
                            path: c.path.clone(),
                            tensor: te.name.clone(),
                            what: "duplicate's md5 receipt".into(),
                        });
                    }
                }
            }
            report.chunks_checked = report.chunks_total;
            report.bytes_checked = c.raw_data_len();
            report.md5_checked = c.index.tensors.len();
        }
        VerifyMode::Source(src) => {
            let s = SafetensorsFile::open(src)?;
            if s.header != c.index.source.header.as_bytes() {
                note(Error::invalid(
                    src,
                    "safetensors header differs from the stored one",
                ));
            }
            if s.tensors.len() != c.index.tensors.len() {
                note(Error::invalid(
                    src,
                    format!(
                        "has {} tensors, the container {}",
                        s.tensors.len(),
                        c.index.tensors.len()
                    ),
                ));
            }
            progress.start(c.raw_data_len(), "verifying");
            (0..c.index.tensors.len()).into_par_iter().for_each(|t| {
                let te = &c.index.tensors[t];
                let Some(st) = s.tensors.iter().find(|x| x.name == te.name) else {
                    note(Error::invalid(src, format!("has no tensor '{}'", te.name)));
                    return;
                };
                let orig = s.tensor_bytes(st);
                let mut pos = 0usize;
                let mut buf = Vec::new();
                for (k, ch) in c.chunks(t).iter().enumerate() {
                    buf.resize(ch.raw_len as usize, 0);
                    if let Err(e) = c.decode_chunk_into(t, k, &mut buf) {
                        // Every damaged chunk is reported, as in a full verify.
                        note(e);
                        pos += ch.raw_len as usize;
                        progress.advance(ch.raw_len);
                        continue;
                    }
                    // The chunk decoded and passed its checksum: the container holds what it
                    // was made from, and that is not this source.
                    if orig.get(pos..pos + buf.len()) != Some(&buf[..]) {
                        note(Error::invalid(
                            src,
                            format!(
                                "tensor '{}' chunk {k} differs from what the container holds (it decodes intact: it was made from other bytes)",
                                te.name
                            ),
                        ));
                        return;
                    }
                    pos += buf.len();
                    progress.advance(ch.raw_len);
                }
                if pos != orig.len() {
                    note(Error::invalid(
                        src,
                        format!(
                            "tensor '{}' is {} bytes, the container's {pos}",
                            te.name,
                            orig.len()
                        ),
                    ));
                }
            });
            report.chunks_checked = report.chunks_total;
            report.bytes_checked = c.raw_data_len();
        }
    }
    progress.finish();
    report.problems = problems.into_inner().expect("no poisoned lock");
    report.problems.sort();
    Ok(report)
}
