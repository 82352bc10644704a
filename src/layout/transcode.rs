//! `transcode`: re-encode a container for a purpose. `speed` writes a `.bsr` tuned for decode
//! rate: hot and small tensors (norms, biases, anything under 1 MiB) stored raw and 64-byte
//! aligned so they can be used in place from a mapping, big tensors cut into many streams
//! coded with the fastest codecs (byte-aligned fields, nibble-indexed palettes, no zstd).
//! `balanced` and `ratio` re-encode toward size and keep a source chunk wherever it is
//! smaller, so they never grow a file — except one with grouped streams (every tensor gets
//! chunks of its own again) or one re-cut with `--n-streams`.
//!
//! Nothing is trusted: every source chunk is decoded against its checksum and every tensor
//! against its md5 receipt, and every new blob is decoded again and compared with the bytes
//! it came from before it is written. The output is renamed into place only at the end.
//! Memory is bounded by a window of chunks, not by the model.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use crate::integrity::md5x::Md5;
use rayon::prelude::*;

use crate::codec::{decodes_to, encode_chunk, tag, Effort};
use crate::error::{Error, Result};
use crate::format::reader::{Container, MAX_CHUNK_RAW};
use crate::format::writer::ContainerWriter;
use crate::format::{fast_hash, ChunkEntry, CHUNK_BYTES};
use crate::model::role::{role, Role};
use crate::progress::Progress;
use crate::store::hex;

/// What the output is tuned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Speed,
    Balanced,
    Ratio,
}

impl Mode {
    pub fn effort(self) -> Effort {
        match self {
            Mode::Speed => Effort::Speed,
            Mode::Balanced => Effort::Balanced,
            Mode::Ratio => Effort::Storage,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Speed => "speed",
            Mode::Balanced => "balanced",
            Mode::Ratio => "ratio",
        }
    }
}

/// Speed mode always keeps these raw: norms, biases and anything under this size cost
/// nothing to store raw and are read whole on every forward pass.
pub const SMALL_BYTES: u64 = 64 << 10;
/// Hot tensors (embeddings, and anything under this size) are kept raw in speed mode too, the
/// least compressible first, as long as that costs at most `raw_budget_pp` percentage points
/// of the raw model (`--raw-budget`, default `DEFAULT_RAW_BUDGET_PP`).
pub const HOT_BYTES: u64 = 1 << 20;
pub const DEFAULT_RAW_BUDGET_PP: f64 = 2.0;
/// Streams per big tensor in speed mode unless asked otherwise.
pub const DEFAULT_SPEED_STREAMS: usize = 16;
/// Smallest stream: below this the per-stream tables start to cost more than 0.5%.
const MIN_STREAM_BYTES: u64 = 64 << 10;
/// Bytes a new chunk must save to replace the source's in balanced and ratio modes.
const REPLACE_MARGIN: usize = 64;
/// Raw bytes re-encoded per window.
const WINDOW_BYTES: u64 = 32 << 20;

#[derive(Debug, Clone)]
pub struct TranscodeOptions {
    pub mode: Mode,
    /// Streams (independently decodable chunks) per big tensor; `None`: the mode's default
    /// (speed: 16; balanced and ratio keep the source's chunks).
    pub n_streams: Option<usize>,
    /// Speed mode: percentage points of the raw model that hot tensors kept raw may cost.
    pub raw_budget_pp: f64,
    pub overwrite: bool,
    /// Measure decode-to-memory speed of the source and the output after writing.
    pub measure: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TranscodeReport {
    pub source: String,
    pub output: String,
    pub mode: Mode,
    /// Decoded model bytes.
    pub raw_bytes: u64,
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub tensors: usize,
    /// Tensors whose chunks were re-encoded (duplicates and empty tensors are not).
    pub reencoded_tensors: usize,
    /// Of those, kept raw for in-place use (speed mode: norms, biases, tensors under 64 KiB,
    /// and hot tensors within the raw budget).
    pub raw_tensors: usize,
    /// Every tensor's md5 receipt was checked and every new blob decoded back.
    pub verified_tensors: usize,
    pub chunks_before: usize,
    pub chunks_after: usize,
    /// Chunks where the source's blob was smaller than the new coding and was kept.
    pub source_chunks_kept: usize,
    pub seconds: f64,
    /// Decode to memory on all cores, MB/s of decoded bytes (best of 3), when measured.
    pub decode_before_mb_s: Option<f64>,
    pub decode_after_mb_s: Option<f64>,
    pub threads: usize,
}

impl TranscodeReport {
    /// Adds one shard's counts (a directory's report is the sum of its shards').
    fn add(&mut self, r: &TranscodeReport) {
        self.raw_bytes += r.raw_bytes;
        self.before_bytes += r.before_bytes;
        self.after_bytes += r.after_bytes;
        self.tensors += r.tensors;
        self.reencoded_tensors += r.reencoded_tensors;
        self.raw_tensors += r.raw_tensors;
        self.verified_tensors += r.verified_tensors;
        self.chunks_before += r.chunks_before;
        self.chunks_after += r.chunks_after;
        self.source_chunks_kept += r.source_chunks_kept;
    }
}

/// One new chunk: a byte range of a tensor and how to store it.
#[derive(Debug, Clone, Copy)]
struct Piece {
    tensor: usize,
    start: u64,
    end: u64,
    raw: bool,
    /// The source chunk with exactly this range, when its blob may be kept if smaller.
    same_as: Option<usize>,
}

/// The tensors speed mode keeps raw: the small ones always, then hot ones (embeddings, under
/// 1 MiB) in order of how little coding saves within the budget.
fn raw_set(c: &Container, starts: &[Vec<u64>], budget_pp: f64) -> Result<Vec<bool>> {
    let tensors = &c.index.tensors;
    let small = |t: &crate::format::TensorEntry| {
        t.raw_len() < SMALL_BYTES || role(&t.name) == Role::Norm || t.name.ends_with("bias")
    };
    let mut raw: Vec<bool> = tensors.iter().map(small).collect();
    let hot: Vec<usize> = (0..tensors.len())
        .filter(|&i| {
            let t = &tensors[i];
            !raw[i]
                && t.dup_of.is_none()
                && (t.raw_len() < HOT_BYTES || role(&t.name) == Role::Embedding)
        })
        .collect();
    let mut saved: Vec<(usize, u64)> = hot
        .par_iter()
        .map(|&i| Ok((i, coding_saves(c, i, &starts[i])?)))
        .collect::<Result<_>>()?;
    saved.sort_by(|&(a, sa), &(b, sb)| {
        let fa = sa as f64 / tensors[a].raw_len().max(1) as f64;
        let fb = sb as f64 / tensors[b].raw_len().max(1) as f64;
        fa.total_cmp(&fb).then(a.cmp(&b))
    });
    let mut budget = (c.raw_data_len() as f64 * budget_pp.max(0.0) / 100.0) as u64;
    for (i, cost) in saved {
        if cost > budget {
            continue;
        }
        budget -= cost;
        raw[i] = true;
    }
    Ok(raw)
}

/// Stretches of a hot tensor coded to estimate what keeping it raw costs, and their size.
const COST_SAMPLES: u64 = 4;
const COST_SAMPLE_BYTES: u64 = 256 << 10;

/// What speed mode's coding would save on tensor `t`, estimated by coding up to
/// `COST_SAMPLES` evenly spaced stretches of it (the whole of a tensor up to 1 MiB). It is
/// found from the tensor's bytes, not from how the input stores them: a tensor the input
/// already keeps raw (a `.bsr` transcoded again) costs what it costs, not nothing, so the
/// same tensors stay raw instead of the budget being spent again on each pass.
fn coding_saves(c: &Container, t: usize, starts: &[u64]) -> Result<u64> {
    let len = c.index.tensors[t].raw_len();
    let w = c.kind(t).width() as u64;
    let piece = (COST_SAMPLE_BYTES.min(len) / w * w).max(w);
    let n = len.div_ceil(piece).min(COST_SAMPLES);
    let (mut sampled, mut coded) = (0u64, 0u64);
    for i in 0..n {
        let start = match n {
            1 => 0,
            _ => (len - piece) * i / (n - 1) / w * w,
        };
        let end = (start + piece).min(len);
        let data = decode_range(c, t, starts, start, end)?;
        sampled += end - start;
        coded += encode_chunk(c.kind(t), &data, Effort::Speed).len() as u64;
    }
    let coded_all = (u128::from(coded) * u128::from(len) / u128::from(sampled.max(1))) as u64;
    Ok(len.saturating_sub(coded_all))
}

/// Bytes `start..end` of tensor `t`, its source chunks decoded (checksums checked).
fn decode_range(c: &Container, t: usize, starts: &[u64], start: u64, end: u64) -> Result<Vec<u8>> {
    let src = covering(starts, start, end);
    let mut buf = vec![0u8; (starts[src.end] - starts[src.start]) as usize];
    let mut at = 0;
    for k in src.clone() {
        let n = (starts[k + 1] - starts[k]) as usize;
        c.decode_chunk_into(t, k, &mut buf[at..at + n])?;
        at += n;
    }
    buf.truncate((end - starts[src.start]) as usize);
    buf.drain(..(start - starts[src.start]) as usize);
    Ok(buf)
}

/// The source chunks (indices into `starts`, a tensor's chunk starts) that cover
/// `start..end`: those with `starts[k] < end` and `starts[k + 1] > start`.
fn covering(starts: &[u64], start: u64, end: u64) -> std::ops::Range<usize> {
    let first = starts.partition_point(|&x| x <= start) - 1;
    let last = starts.partition_point(|&x| x < end) - 1;
    first..last + 1
}

fn chunk_starts(chunks: &[ChunkEntry]) -> Vec<u64> {
    let mut s = Vec::with_capacity(chunks.len() + 1);
    let mut at = 0u64;
    s.push(0);
    for c in chunks {
        at += c.raw_len;
        s.push(at);
    }
    s
}

/// The new chunks of every stored tensor, in order.
fn plan(c: &Container, opts: &TranscodeOptions, keep_raw: &[bool]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    for (t, te) in c.index.tensors.iter().enumerate() {
        if te.dup_of.is_some() || te.raw_len() == 0 {
            continue;
        }
        let w = c.kind(t).width() as u64;
        let len = te.raw_len();
        let raw = opts.mode == Mode::Speed && keep_raw[t];
        let standard = CHUNK_BYTES as u64 / w * w;
        let step = if raw {
            // One chunk where possible, so the tensor is contiguous in the file.
            MAX_CHUNK_RAW / w * w
        } else if let Some(n) = opts
            .n_streams
            .or((opts.mode == Mode::Speed).then_some(DEFAULT_SPEED_STREAMS))
        {
            (len.div_ceil(n.max(1) as u64))
                .clamp(MIN_STREAM_BYTES, CHUNK_BYTES as u64)
                .div_ceil(w)
                * w
        } else if te
            .chunks
            .iter()
            .all(|c| !c.grouped() && c.raw_len <= standard)
            && te
                .chunks
                .split_last()
                .is_some_and(|(_, rest)| rest.iter().all(|c| c.raw_len == standard))
        {
            // Balanced and ratio keep a source in the standard chunking chunk for chunk, so
            // each new chunk can be compared with the one it replaces.
            0
        } else {
            standard
        };
        if step == 0 {
            let starts = chunk_starts(&te.chunks);
            for (k, se) in starts.windows(2).enumerate() {
                pieces.push(Piece {
                    tensor: t,
                    start: se[0],
                    end: se[1],
                    raw: false,
                    same_as: Some(k),
                });
            }
            continue;
        }
        let mut s = 0;
        while s < len {
            let e = (s + step).min(len);
            pieces.push(Piece {
                tensor: t,
                start: s,
                end: e,
                raw,
                same_as: None,
            });
            s = e;
        }
    }
    pieces
}

/// Consecutive pieces of about `WINDOW_BYTES`.
fn windows(pieces: &[Piece]) -> Vec<std::ops::Range<usize>> {
    crate::store::windows_of(pieces, WINDOW_BYTES, |p| p.end - p.start)
}

/// The decoded bytes of one tensor's part of a window.
struct Segment {
    tensor: usize,
    /// Range of the tensor the window's pieces cover.
    start: u64,
    end: u64,
    /// Decoded source chunks covering it, starting at tensor byte `buf_start`.
    buf_start: u64,
    buf: Vec<u8>,
    /// Source chunks decoded into `buf`: (index, start in tensor).
    src: std::ops::Range<usize>,
}

impl Segment {
    fn slice(&self, start: u64, end: u64) -> &[u8] {
        &self.buf[(start - self.buf_start) as usize..(end - self.buf_start) as usize]
    }
}

fn integrity(path: &Path, tensor: &str, what: &str) -> Error {
    Error::Integrity {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        what: what.to_string(),
    }
}

/// Re-encodes `src` into `dst`.
pub fn transcode(
    src: &Path,
    dst: &Path,
    opts: &TranscodeOptions,
    progress: &dyn Progress,
) -> Result<TranscodeReport> {
    let started = Instant::now();
    // The input given as the output is said as such, -f or not.
    crate::fsutil::check_not_input(dst, &[src])?;
    crate::fsutil::check_container_output(dst, opts.overwrite)?;
    let c = Container::open(src)?;
    if c.is_patch() {
        return Err(Error::invalid(
            src,
            "is a patch: apply it to its base first (`bigsmall apply`), then transcode the result",
        ));
    }
    if opts.n_streams == Some(0) {
        return Err(Error::invalid(
            src,
            "cannot be cut into 0 streams (--n-streams)",
        ));
    }
    let effort = opts.mode.effort();
    let starts: Vec<Vec<u64>> = c
        .index
        .tensors
        .iter()
        .map(|t| chunk_starts(&t.chunks))
        .collect();
    let keep_raw = if opts.mode == Mode::Speed {
        raw_set(&c, &starts, opts.raw_budget_pp)?
    } else {
        vec![false; c.index.tensors.len()]
    };
    let pieces = plan(&c, opts, &keep_raw);

    let mut writer = ContainerWriter::create(dst)?;
    let mut index = c.index.clone();
    index.created_by = format!("bigsmall {}", env!("CARGO_PKG_VERSION"));
    index.mode = effort;
    // Every tensor gets chunks of its own: the output has no grouped streams.
    index.groups.clear();
    let mut new_chunks: Vec<Vec<ChunkEntry>> = vec![Vec::new(); index.tensors.len()];
    let mut hashers: HashMap<usize, Md5> = HashMap::new();
    let mut kept = 0usize;
    progress.start(c.raw_data_len(), "transcode");

    for w in windows(&pieces) {
        let window = &pieces[w];
        // One segment per tensor in the window (its pieces are contiguous).
        let mut segments: Vec<Segment> = Vec::new();
        for p in window {
            match segments.last_mut() {
                Some(s) if s.tensor == p.tensor => s.end = p.end,
                _ => segments.push(Segment {
                    tensor: p.tensor,
                    start: p.start,
                    end: p.end,
                    buf_start: 0,
                    buf: Vec::new(),
                    src: 0..0,
                }),
            }
        }
        for s in &mut segments {
            let st = &starts[s.tensor];
            s.src = covering(st, s.start, s.end);
            s.buf_start = st[s.src.start];
            s.buf = vec![0u8; (st[s.src.end] - st[s.src.start]) as usize];
        }
        // Decode every needed source chunk (checksums checked) on all cores.
        segments.par_iter_mut().try_for_each(|s| -> Result<()> {
            let st = &starts[s.tensor];
            let mut parts = Vec::with_capacity(s.src.len());
            let mut rest = &mut s.buf[..];
            for k in s.src.clone() {
                let (a, b) = rest.split_at_mut((st[k + 1] - st[k]) as usize);
                parts.push((k, a));
                rest = b;
            }
            let t = s.tensor;
            parts
                .into_par_iter()
                .try_for_each(|(k, out)| c.decode_chunk_into(t, k, out))
        })?;
        // md5 receipts, one task per tensor.
        let mut states: Vec<(usize, Md5)> = segments
            .iter()
            .map(|s| (s.tensor, hashers.remove(&s.tensor).unwrap_or_default()))
            .collect();
        states
            .par_iter_mut()
            .zip(segments.par_iter())
            .for_each(|((_, h), s)| h.update(s.slice(s.start, s.end)));
        for ((t, h), s) in states.into_iter().zip(&segments) {
            let te = &c.index.tensors[t];
            if s.end == te.raw_len() {
                if hex(&h.finalize()) != te.md5 {
                    return Err(integrity(src, &te.name, "md5 receipt"));
                }
            } else {
                hashers.insert(t, h);
            }
        }
        // Code, then decode back and compare, every piece.
        let seg_of: HashMap<usize, usize> = segments
            .iter()
            .enumerate()
            .map(|(i, s)| (s.tensor, i))
            .collect();
        let coded: Vec<(Vec<u8>, u64, bool)> = window
            .par_iter()
            .map(|p| -> Result<(Vec<u8>, u64, bool)> {
                let seg = &segments[seg_of[&p.tensor]];
                let data = seg.slice(p.start, p.end);
                let kind = c.kind(p.tensor);
                let hash = fast_hash(data);
                let name = &c.index.tensors[p.tensor].name;
                if let Some(k) = p.same_as {
                    let old = c.blob(&c.index.tensors[p.tensor].chunks[k]);
                    let new = encode_chunk(kind, data, effort);
                    // The margin covers the index growing by a changed chunk entry, so a
                    // re-encode never makes the file larger.
                    if old.len() <= new.len() + REPLACE_MARGIN {
                        // Already decoded against its checksum above.
                        return Ok((old.to_vec(), hash, true));
                    }
                    if !decodes_to(kind, &new, data) {
                        return Err(integrity(
                            dst,
                            name,
                            "re-encoded chunk does not decode to its source",
                        ));
                    }
                    return Ok((new, hash, false));
                }
                if p.raw {
                    // A copy of bytes just checked against their receipt: nothing to decode.
                    let mut b = Vec::with_capacity(data.len() + 1);
                    b.push(tag::RAW);
                    b.extend_from_slice(data);
                    return Ok((b, hash, false));
                }
                let blob = encode_chunk(kind, data, effort);
                if !decodes_to(kind, &blob, data) {
                    return Err(integrity(
                        dst,
                        name,
                        "re-encoded chunk does not decode to its source",
                    ));
                }
                Ok((blob, hash, false))
            })
            .collect::<Result<_>>()?;
        let mut done = 0;
        for (p, (blob, hash, old)) in window.iter().zip(coded) {
            let offset = writer.write_blob(&blob)?;
            kept += usize::from(old);
            new_chunks[p.tensor].push(ChunkEntry {
                offset,
                len: blob.len() as u64,
                raw_len: p.end - p.start,
                hash,
                codec: blob[0],
                delta: false,
                skip: 0,
                total: 0,
            });
            done += p.end - p.start;
        }
        progress.advance(done);
    }
    // Empty tensors have no pieces: their receipt is the md5 of nothing.
    for te in &c.index.tensors {
        if te.dup_of.is_none() && te.raw_len() == 0 && Md5::new().hex() != te.md5 {
            return Err(integrity(src, &te.name, "md5 receipt"));
        }
    }
    let mut raw_tensors = 0;
    let mut reencoded = 0;
    for (t, chunks) in new_chunks.into_iter().enumerate() {
        let te = &mut index.tensors[t];
        if te.dup_of.is_some() || te.raw_len() == 0 {
            continue;
        }
        reencoded += 1;
        raw_tensors += usize::from(keep_raw[t]);
        te.chunks = chunks;
    }
    index.chunk_bytes = if opts.mode == Mode::Speed || opts.n_streams.is_some() {
        pieces
            .iter()
            .filter(|p| !p.raw)
            .map(|p| p.end - p.start)
            .max()
            .unwrap_or(CHUNK_BYTES as u64)
    } else {
        CHUNK_BYTES as u64
    };
    if kept == pieces.len() && opts.mode != Mode::Speed {
        // Nothing was re-coded: the file is still what its source's mode made.
        index.mode = c.index.mode;
    }
    let chunks_after = index.tensors.iter().map(|t| t.chunks.len()).sum();
    let after_bytes = writer.finish(&index)?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();

    let (mut before, mut after) = (None, None);
    if opts.measure {
        before = Some(crate::analysis::benchmark::decode_mb_s(&c, 3)?);
        after = Some(crate::analysis::benchmark::decode_mb_s(
            &Container::open(dst)?,
            3,
        )?);
    }
    Ok(TranscodeReport {
        source: src.display().to_string(),
        output: dst.display().to_string(),
        mode: opts.mode,
        raw_bytes: c.raw_data_len(),
        before_bytes: c.file_size(),
        after_bytes,
        tensors: c.index.tensors.len(),
        reencoded_tensors: reencoded,
        raw_tensors,
        verified_tensors: c.index.tensors.len(),
        chunks_before: c.index.tensors.iter().map(|t| t.chunks.len()).sum(),
        chunks_after,
        source_chunks_kept: kept,
        seconds,
        decode_before_mb_s: before,
        decode_after_mb_s: after,
        threads: rayon::current_num_threads(),
    })
}

/// Transcodes every shard of a directory made by `compress` (or `reshard`) into `dst`: the same
/// layout, shards renamed `.bsr` in speed mode, side files carried, a new
/// `bigsmall.index.json`. The directory appears only when every shard is done.
pub fn transcode_dir(
    src: &Path,
    dst: &Path,
    opts: &TranscodeOptions,
    progress: &dyn Progress,
) -> Result<TranscodeReport> {
    use crate::store_dir::{copy_side_file, read_dir_index, StagedDir, DIR_INDEX};
    let started = Instant::now();
    let mut index = read_dir_index(src)?;
    crate::fsutil::check_not_input(dst, &[src])?;
    // Open everything first: a missing, damaged, swapped or replaced shard fails before
    // anything is written.
    crate::store_dir::check_shards(src, &index)?;
    crate::store_dir::check_side_files(src, &index)?;
    let staged = StagedDir::create(dst, opts.overwrite)?;
    let ext = if opts.mode == Mode::Speed {
        "bsr"
    } else {
        "bs"
    };
    let per_shard = TranscodeOptions {
        measure: false,
        overwrite: true,
        ..opts.clone()
    };
    let mut total = TranscodeReport {
        mode: opts.mode,
        ..Default::default()
    };
    let mut renamed = HashMap::new();
    for sh in &mut index.shards {
        let rel = Path::new(&sh.file).with_extension(ext);
        let out = staged.tmp.join(&rel);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let r = transcode(&src.join(&sh.file), &out, &per_shard, progress)?;
        let new_name = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        renamed.insert(sh.file.clone(), new_name.clone());
        sh.file = new_name;
        sh.size = r.after_bytes;
        total.add(&r);
    }
    for side in &index.side_files {
        let expect = index.side_file_md5.get(side).map(String::as_str);
        copy_side_file(src, &staged.tmp, Path::new(side), expect)?;
    }
    for file in index.weight_map.values_mut() {
        if let Some(n) = renamed.get(file) {
            *file = n.clone();
        }
    }
    index.created_by = format!("bigsmall {}", env!("CARGO_PKG_VERSION"));
    index.metadata.total_size = index.shards.iter().map(|s| s.size).sum();
    let json = serde_json::to_vec_pretty(&index).expect("index serialises");
    let ipath = staged.tmp.join(DIR_INDEX);
    std::fs::write(&ipath, json).map_err(|e| Error::io(&ipath, e))?;
    staged.commit()?;

    let mut r = TranscodeReport {
        threads: rayon::current_num_threads(),
        ..total
    };
    r.source = src.display().to_string();
    r.output = dst.display().to_string();
    r.seconds = started.elapsed().as_secs_f64();
    if opts.measure {
        // Decode time of every shard, summed, against the whole model's bytes.
        let speed = |dir: &Path, files: Vec<String>| -> Result<f64> {
            let (mut bytes, mut secs) = (0u64, 0f64);
            for f in files {
                let c = Container::open(&dir.join(f))?;
                let raw = c.raw_data_len();
                secs += raw as f64 / 1e6 / crate::analysis::benchmark::decode_mb_s(&c, 3)?;
                bytes += raw;
            }
            Ok(bytes as f64 / 1e6 / secs.max(1e-9))
        };
        r.decode_before_mb_s = Some(speed(src, renamed.keys().cloned().collect())?);
        r.decode_after_mb_s = Some(speed(dst, renamed.values().cloned().collect())?);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_piece_once() {
        let pieces: Vec<Piece> = (0..100)
            .map(|i| Piece {
                tensor: i / 10,
                start: (i % 10) as u64 * (3 << 20),
                end: (i % 10 + 1) as u64 * (3 << 20),
                raw: false,
                same_as: None,
            })
            .collect();
        let w = windows(&pieces);
        let mut next = 0;
        for r in w {
            assert_eq!(r.start, next);
            assert!(!r.is_empty());
            next = r.end;
        }
        assert_eq!(next, pieces.len());
    }
}
