//! `benchmark`: compress and decompress a file in-process (in a temporary directory that is
//! removed afterwards) and measure everything: ratio, throughput of compress, of decode to
//! memory and of whole-file decompress, peak RSS, and a per-role breakdown. Every figure comes
//! from this run; the round trip is checked byte for byte.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::codec::Effort;
use crate::error::{Error, Result};
use crate::format::reader::Container;
use crate::model::role::{role, Role};
use crate::model::safetensors::SafetensorsFile;
use crate::progress::Progress;
use crate::store::{
    compress_file, decode_jobs, decode_windows_each, decompress_file, CompressOptions, DecodeJob,
    DecompressOptions,
};

#[derive(Debug, Clone, Serialize)]
pub struct RoleBench {
    pub role: String,
    pub tensors: usize,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub ratio_pct: f64,
    /// Decode to memory, all cores, chunk checksums verified.
    pub decode_mb_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub source: String,
    /// "safetensors" (compressed here first) or "container" (an existing .bs/.bsr, decode only).
    pub input: String,
    pub mode: String,
    pub threads: usize,
    pub source_bytes: u64,
    pub compressed_bytes: u64,
    pub ratio_pct: f64,
    /// Whole-file compress (md5 receipts included), MB = 10^6 bytes of source per second;
    /// absent for a container input.
    pub compress_mb_s: Option<f64>,
    pub compress_seconds: Option<f64>,
    /// Decode of every chunk into memory, checksums verified, best of the runs.
    pub decode_memory_mb_s: f64,
    pub decode_memory_seconds: f64,
    pub decode_memory_runs: usize,
    /// Whole-file decompress to a file in the temporary directory.
    pub decompress_file_mb_s: f64,
    pub decompress_file_seconds: f64,
    /// The decompressed file equals the source byte for byte (a container input: every tensor
    /// matched its md5 receipt).
    pub byte_identical: bool,
    /// What the round-trip check found, one line each (file and tensor); empty when it passed.
    pub problems: Vec<String>,
    /// Peak resident memory of this process (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    pub roles: Vec<RoleBench>,
}

/// The benchmark's workspace: removed when dropped, and by the interrupt handler (it holds a
/// compressed and a decompressed copy of the model, too big to leave behind).
struct TempDir(PathBuf);

impl TempDir {
    fn create(dir: PathBuf) -> Result<TempDir> {
        // Listed before it exists, so that no interrupt finds it made and unlisted.
        crate::fsutil::track_temp(&dir);
        let tmp = TempDir(dir);
        std::fs::create_dir_all(&tmp.0).map_err(|e| Error::io(&tmp.0, e))?;
        Ok(tmp)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Removed before it is unlisted, so that an interrupt meanwhile removes the rest.
        let _ = std::fs::remove_dir_all(&self.0);
        crate::fsutil::untrack_temp(&self.0);
    }
}

/// Peak resident set of this process from /proc (0 where unavailable).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Decodes everything as `decompress` does, each core its own windows, less the writing.
fn decode_all(c: &Container, jobs: &[DecodeJob]) -> Result<f64> {
    let started = Instant::now();
    decode_windows_each(c, jobs, |_, _, decoded| {
        std::hint::black_box(decoded);
        Ok(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}

/// Decode-to-memory speed of a whole container on the current thread pool: MB/s of decoded
/// bytes, best of `runs`, every chunk checksum verified.
pub fn decode_mb_s(c: &Container, runs: usize) -> Result<f64> {
    c.check_decodable()?;
    let jobs = decode_jobs(c);
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        best = best.min(decode_all(c, &jobs)?);
    }
    Ok(mb_s(c.raw_data_len(), best))
}

fn mb_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds.max(1e-9) / 1e6
}

/// Compares two files in 8 MiB reads (bounded memory, unlike mapping both).
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| Error::io(p, e));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| Error::io(a, e))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| Error::io(b, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
    fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }
}

/// Runs the benchmark on one safetensors file (compressed with `effort` first) or on an
/// existing container (decode only).
pub fn benchmark(
    src: &Path,
    effort: Effort,
    runs: usize,
    progress: &dyn Progress,
) -> Result<BenchReport> {
    let container_input = crate::format::is_container(src);
    // Validate the input before making anything.
    if container_input {
        let c = Container::open(src)?;
        if c.is_patch() {
            return Err(Error::invalid(
                src,
                "is a patch; benchmark takes a plain .bs or .safetensors (apply the patch first)",
            ));
        }
        c.check_decodable()?;
    } else {
        drop(SafetensorsFile::open(src)?);
    }
    let dir = std::env::temp_dir().join(format!("bigsmall-bench-{}", std::process::id()));
    let tmp = TempDir::create(dir)?;
    let bs = tmp.0.join("model.bs");
    let back = tmp.0.join("back.safetensors");

    let opts = CompressOptions {
        effort,
        overwrite: true,
        resume: false,
        group_streams: false,
        ecc: false,
    };
    let (cr, bs) = if container_input {
        (None, src.to_path_buf())
    } else {
        (Some(compress_file(src, &bs, &opts, progress)?), bs)
    };
    let c = Container::open(&bs)?;
    let jobs = decode_jobs(&c);
    let raw = c.raw_data_len();
    let runs = runs.max(1);
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        best = best.min(decode_all(&c, &jobs)?);
    }

    let mut roles: Vec<RoleBench> = Vec::new();
    for r in [
        Role::Embedding,
        Role::Attention,
        Role::Mlp,
        Role::Norm,
        Role::Other,
    ] {
        let members: Vec<usize> = (0..c.index.tensors.len())
            .filter(|&t| role(&c.index.tensors[t].name) == r)
            .collect();
        if members.is_empty() {
            continue;
        }
        let role_jobs: Vec<DecodeJob> = jobs
            .iter()
            .filter(|j| role(&c.index.tensors[j.tensor].name) == r)
            .copied()
            .collect();
        let raw_bytes: u64 = members.iter().map(|&t| c.index.tensors[t].raw_len()).sum();
        let stored_bytes: u64 = members
            .iter()
            .map(|&t| c.index.tensors[t].stored_len())
            .sum();
        let mut t_best = f64::INFINITY;
        for _ in 0..runs {
            let started = Instant::now();
            role_jobs.par_iter().try_for_each_init(Vec::new, |buf, j| {
                buf.resize(j.len, 0);
                c.decode_chunk_into(j.tensor, j.chunk, buf)
            })?;
            t_best = t_best.min(started.elapsed().as_secs_f64());
        }
        roles.push(RoleBench {
            role: r.name().to_string(),
            tensors: members.len(),
            raw_bytes,
            stored_bytes,
            ratio_pct: stored_bytes as f64 * 100.0 / raw_bytes.max(1) as f64,
            decode_mb_s: mb_s(raw_bytes, t_best),
        });
    }

    // Timed like a safetensors input's (chunk checksums, no md5), then checked separately.
    let dr = decompress_file(
        &bs,
        &back,
        &DecompressOptions {
            overwrite: true,
            check_md5: false,
        },
        progress,
    )?;
    let problems = if container_input {
        // No source to compare with: every tensor's md5 receipt instead.
        crate::integrity::verify(&bs, &crate::integrity::VerifyMode::Full)?.problems
    } else if same_bytes(src, &back)? {
        Vec::new()
    } else {
        vec![format!(
            "{}: the decompressed file differs from it",
            src.display()
        )]
    };
    let source_bytes = c.index.source.file_size;
    let compressed_bytes = c.file_size();
    Ok(BenchReport {
        source: src.display().to_string(),
        input: if container_input {
            "container"
        } else {
            "safetensors"
        }
        .into(),
        mode: c.index.mode.name().to_string(),
        threads: rayon::current_num_threads(),
        source_bytes,
        compressed_bytes,
        ratio_pct: compressed_bytes as f64 * 100.0 / source_bytes.max(1) as f64,
        compress_mb_s: cr.as_ref().map(|cr| mb_s(cr.source_bytes, cr.seconds)),
        compress_seconds: cr.as_ref().map(|cr| cr.seconds),
        decode_memory_mb_s: mb_s(raw, best),
        decode_memory_seconds: best,
        decode_memory_runs: runs,
        decompress_file_mb_s: mb_s(dr.output_bytes, dr.seconds),
        decompress_file_seconds: dr.seconds,
        byte_identical: problems.is_empty(),
        problems,
        peak_rss_bytes: peak_rss_bytes(),
        roles,
    })
}
