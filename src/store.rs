//! Compress and decompress single files: the glue between `model` (reading safetensors),
//! `codec` (coding chunks) and `format` (the container). Directories are in `store_dir`.
//!
//! Memory stays bounded by a window of chunks (`WINDOW_BYTES` of raw data plus its coded
//! form), never by model size: input is mapped and released window by window, output streamed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use crate::integrity::md5x::{self, Md5};
use rayon::prelude::*;

use crate::codec::{encode_chunk, encode_chunk_within, Effort, ElemKind};
use crate::error::{Error, Result};
use crate::format::arena::{Blob, BlobArena};
use crate::format::reader::Container;
use crate::format::writer::ContainerWriter;
use crate::format::{fast_hash, ChunkEntry, Index, Source, TensorEntry, CHUNK_BYTES};
use crate::fsutil::{check_output, AtomicFile};
use crate::model::safetensors::{dtype_name, elem_kind, SafetensorsFile, TensorMeta};
use crate::progress::Progress;

/// Raw bytes coded (or decoded) per parallel step. Large enough to keep both cores busy and
/// amortise thread hand-offs, small enough that peak memory stays far below model size.
pub const WINDOW_BYTES: usize = 32 << 20;
/// Raw bytes decoded per step: small, so decoded data is still in cache when the writer
/// thread copies it into the page cache.
pub const DECODE_WINDOW_BYTES: usize = 4 << 20;
/// Raw bytes decoded and written per task where every core decodes windows of its own and
/// writes each itself: one chunk, so that the decoded bytes are still in the core's L2 when
/// `pwrite` copies them into the page cache. Measured on MiniLM BF16 against 4 MiB windows
/// (`hyperfine`, same set): 21.4–21.8 ms against 23.4–25.3 ms, with 18.9 ms of system time
/// instead of 25.0–28.8; SmolLM2 117.3 against 122.5 ms.
const WRITE_WINDOW_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct CompressOptions {
    pub effort: Effort,
    pub overwrite: bool,
    /// Checkpoint after every window in `<OUT>.progress/` and continue from there.
    pub resume: bool,
    /// Code small same-role tensors across layers as one stream where that measures smaller.
    pub group_streams: bool,
    /// Write each `.bs` with its Reed-Solomon sidecar (`OUT.ecc`).
    pub ecc: bool,
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            effort: Effort::Balanced,
            overwrite: false,
            resume: false,
            group_streams: false,
            ecc: false,
        }
    }
}

/// Where `--resume` keeps its checkpoint for an output.
pub fn progress_dir(dst: &Path) -> std::path::PathBuf {
    let mut s = dst.as_os_str().to_owned();
    s.push(".progress");
    std::path::PathBuf::from(s)
}

/// Removes the checkpoint an interrupted `--resume` run left for `dst`, once a run without
/// `--resume` has written `dst`: it is stale. Only a directory that holds what a checkpoint
/// holds is removed.
pub fn remove_stale_progress(dst: &Path) {
    let pdir = progress_dir(dst);
    let ours = std::fs::read_dir(&pdir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == "state.json" || name.ends_with(".bs") || name.ends_with(".progress")
        })
    });
    if ours {
        let _ = std::fs::remove_dir_all(&pdir);
    }
}

/// Everything a checkpoint must agree with to be resumed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ResumeKey {
    bigsmall: String,
    source_size: u64,
    source_modified_ns: u128,
    source_header_hash: u64,
    effort: Effort,
    base_fingerprint: String,
    window_bytes: usize,
    #[serde(default)]
    group_streams: bool,
}

/// The checkpoint written after every window.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    key: ResumeKey,
    windows_done: usize,
    /// Valid length of the partial container (anything after it is cut off on resume).
    data_end: u64,
    chunks: Vec<Vec<ChunkEntry>>,
    changed_bytes: u64,
    delta_chunks: usize,
    standalone_chunks: usize,
    /// `plan_hash` of the run's chunks: where the source's duplicates or unchanged tensors
    /// are not what they were, the windows would not line up.
    #[serde(default)]
    plan: Option<u64>,
    /// The writer's `written_hash` at `data_end`.
    #[serde(default)]
    data_hash: Option<u64>,
}

/// xxh3 of the chunk plan: every chunk's tensor and byte range, in order.
fn plan_hash(jobs: &[ChunkJob]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for j in jobs {
        for v in [j.tensor, j.start, j.end] {
            h.update(&(v as u64).to_le_bytes());
        }
    }
    h.digest()
}

/// Checks that a checkpoint still describes `src`: the same chunk plan, and every chunk
/// already written made from the bytes the source holds now (their checksums). A source
/// rewritten in place keeps its size and header, and can keep its modification time
/// (`cp -p`, `rsync -t`), which is all the key compares.
fn check_reused(src: &SafetensorsFile, cp: &Checkpoint, plan: u64, pdir: &Path) -> Result<()> {
    let changed = |what: String| {
        Error::invalid(
            pdir,
            format!(
                "{what} since the interrupted run; delete the progress directory to start again"
            ),
        )
    };
    if cp.plan != Some(plan) {
        return Err(changed(
            "the source's duplicate or unchanged tensors differ".into(),
        ));
    }
    for (t, entries) in src.tensors.iter().zip(&cp.chunks) {
        let bytes = src.tensor_bytes(t);
        let mut at = 0usize;
        for c in entries {
            // (The lengths come from a file: a lying one fails the comparison.)
            let end = at.saturating_add(usize::try_from(c.raw_len).unwrap_or(usize::MAX));
            if bytes.get(at..end).map(fast_hash) != Some(c.hash) {
                return Err(changed(format!("the source's tensor '{}' changed", t.name)));
            }
            at = end;
        }
    }
    Ok(())
}

fn save_checkpoint(dir: &Path, cp: &Checkpoint) -> Result<()> {
    let path = dir.join("state.json");
    let tmp = dir.join("state.json.tmp");
    let json = serde_json::to_vec(cp).expect("checkpoint serialises");
    std::fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// Raw bytes per compression window (`BIGSMALL_WINDOW_BYTES` overrides it, for tests of
/// resumption on small files).
fn window_bytes() -> usize {
    std::env::var("BIGSMALL_WINDOW_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v: &usize| v > 0)
        .unwrap_or(WINDOW_BYTES)
}

/// Test hook: abort the process (like `kill -9`) at a named point, to prove resumption.
fn abort_if(point: &str, n: usize) {
    if let Ok(v) = std::env::var("BIGSMALL_TEST_ABORT") {
        if v == format!("{point}:{n}") {
            std::process::abort();
        }
    }
}

/// What a compression did, measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompressReport {
    pub source_bytes: u64,
    pub output_bytes: u64,
    pub tensors: usize,
    pub duplicates: usize,
    pub seconds: f64,
    /// Present when the output is a patch against a base.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaStats>,
    /// `--group-streams`: every candidate group and its measured decision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<crate::format::GroupInfo>,
    /// A model directory's hidden entries, not carried (relative paths).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// How a patch relates to its base, measured while it was written.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeltaStats {
    pub base: String,
    pub base_fingerprint: String,
    /// Tensors present in both with the same dtype and shape.
    pub matched_tensors: usize,
    pub matched_bytes: u64,
    /// Bytes of matched tensors whose elements differ from the base.
    pub changed_bytes: u64,
    /// Matched tensors equal to the base (an index entry each, no data).
    pub unchanged_tensors: usize,
    /// Chunks of matched tensors stored as a difference against the base, and stored
    /// standalone (added and resized tensors are standalone too, and not counted here).
    pub delta_chunks: usize,
    pub standalone_chunks: usize,
    /// Tensors only in the fine-tune: stored standalone.
    pub added_tensors: Vec<String>,
    /// Tensors the base has with another dtype or shape (a resized embedding): standalone.
    pub resized_tensors: Vec<String>,
    /// Base tensors the fine-tune does not have.
    pub removed_tensors: Vec<String>,
}

impl DeltaStats {
    /// Share of matched weight bytes that changed.
    pub fn changed_fraction(&self) -> f64 {
        self.changed_bytes as f64 / self.matched_bytes.max(1) as f64
    }

    /// More than this share changed: the measured regime where a delta does not pay.
    pub const REGIME_LIMIT: f64 = 0.30;
}

/// Hex form of a digest.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub fn md5_hex(bytes: &[u8]) -> String {
    let mut h = Md5::new();
    h.update(bytes);
    h.hex()
}

/// Writes a window's coded blobs in chunk order as the coding threads hand them in: the thread
/// that hands in the next blob to write writes it and every blob already waiting behind it;
/// the others leave theirs waiting. A blob is thus written soon after it is coded, by
/// whichever core is free, instead of waiting in fresh memory for the whole window (which cost
/// a page fault, or a huge page to clear, per few KiB of output). Records the chunk entries
/// (and patch statistics) in order.
struct OrderedSink<'a> {
    waiting: std::sync::Mutex<std::collections::BTreeMap<usize, Result<Coded>>>,
    /// The next blob to write.
    next: AtomicUsize,
    failed: AtomicBool,
    out: std::sync::Mutex<(WindowOut<'a>, Result<()>)>,
}

/// Where a window's blobs go: the output and the chunk entries (and patch statistics).
struct WindowOut<'a> {
    writer: &'a mut ContainerWriter,
    window: &'a [ChunkJob],
    window_no: usize,
    chunks: &'a mut [Vec<ChunkEntry>],
    stats: &'a mut Option<DeltaStats>,
    matched: &'a [Option<Matched>],
}

impl<'a> OrderedSink<'a> {
    fn new(out: WindowOut<'a>) -> OrderedSink<'a> {
        OrderedSink {
            waiting: Default::default(),
            next: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            out: std::sync::Mutex::new((out, Ok(()))),
        }
    }

    /// Whether a blob failed to code or to write: the rest need not be coded.
    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Hands in blob `k` of the window.
    fn put(&self, k: usize, coded: Result<Coded>) {
        self.waiting
            .lock()
            .expect("no poisoned lock")
            .insert(k, coded);
        loop {
            // Whoever is writing will find this blob (it looks again after letting go).
            let Ok(mut out) = self.out.try_lock() else {
                return;
            };
            loop {
                let k = self.next.load(Ordering::Acquire);
                let Some(c) = self.waiting.lock().expect("no poisoned lock").remove(&k) else {
                    break;
                };
                // After the first failure later blobs are dropped.
                let (out, result) = &mut *out;
                if result.is_ok() {
                    *result = c.and_then(|c| out.write(k, &c.blob, &c));
                }
                if result.is_err() {
                    self.failed.store(true, Ordering::Relaxed);
                }
                self.next.store(k + 1, Ordering::Release);
            }
            drop(out);
            let k = self.next.load(Ordering::Acquire);
            if !self
                .waiting
                .lock()
                .expect("no poisoned lock")
                .contains_key(&k)
            {
                return;
            }
        }
    }

    /// After every blob was handed in: the first error, if any.
    fn finish(self) -> Result<()> {
        let (out, result) = self.out.into_inner().expect("no poisoned lock");
        debug_assert!(result.is_err() || self.next.into_inner() == out.window.len());
        result
    }
}

impl WindowOut<'_> {
    /// Writes blob `k` of the window and records its chunk entry (and patch statistics).
    fn write<B>(&mut self, k: usize, blob: &[u8], c: &Coded<B>) -> Result<()> {
        let j = self.window[k];
        if k == self.window.len() / 2 && k > 0 {
            // Mid-window: blobs written but not yet checkpointed.
            self.writer.flush()?;
            abort_if("mid-window", self.window_no + 1);
        }
        let offset = self.writer.write_blob(blob)?;
        if let Some(st) = self.stats.as_mut() {
            st.changed_bytes += c.changed;
            if self.matched[j.tensor].is_some() {
                if c.delta {
                    st.delta_chunks += 1;
                } else {
                    st.standalone_chunks += 1;
                }
            }
        }
        self.chunks[j.tensor].push(ChunkEntry {
            offset,
            len: blob.len() as u64,
            raw_len: (j.end - j.start) as u64,
            hash: c.hash,
            codec: blob[0],
            delta: c.delta,
            skip: 0,
            total: 0,
        });
        Ok(())
    }

    /// The same output for another window's blobs.
    fn for_window<'b>(&'b mut self, window: &'b [ChunkJob], window_no: usize) -> WindowOut<'b> {
        WindowOut {
            writer: self.writer,
            window,
            window_no,
            chunks: self.chunks,
            stats: self.stats,
            matched: self.matched,
        }
    }

    /// Writes a coded window's blobs, parked in `arena` or on the heap, in order.
    fn write_parked(
        &mut self,
        coded: Vec<Result<Coded<Blob>>>,
        arena: Option<&BlobArena>,
    ) -> Result<()> {
        for (k, c) in coded.into_iter().enumerate() {
            let c = c?;
            self.write(k, c.blob.bytes(arena), &c)?;
        }
        Ok(())
    }
}

/// One chunk of work: tensor, byte range within the tensor.
#[derive(Clone, Copy)]
struct ChunkJob {
    tensor: usize,
    start: usize,
    end: usize,
}

fn chunk_len(kind: ElemKind) -> usize {
    let w = kind.width();
    CHUNK_BYTES / w * w
}

/// Finds tensors whose bytes equal an earlier tensor's (tied embeddings, shared weights).
fn find_duplicates(src: &SafetensorsFile) -> Vec<Option<usize>> {
    use std::collections::HashMap;
    let mut by_len: HashMap<(String, usize), Vec<usize>> = HashMap::new();
    for (i, t) in src.tensors.iter().enumerate() {
        if t.len() >= 64 {
            by_len
                .entry((dtype_name(t.dtype), t.len()))
                .or_default()
                .push(i);
        }
    }
    let mut dup = vec![None; src.tensors.len()];
    // Candidates are told apart by three 4 KiB samples (start, middle, end), so telling apart
    // the many same-shaped layer tensors reads a few pages each, not the model; all groups'
    // samples at once, on every core (their pages are faulted in here).
    let candidates: Vec<usize> = by_len
        .values()
        .filter(|g| g.len() > 1)
        .flatten()
        .copied()
        .collect();
    let sampled: HashMap<usize, u64> = candidates
        .par_iter()
        .map(|&i| {
            let b = src.tensor_bytes(&src.tensors[i]);
            const SAMPLE: usize = 4096;
            let mid = b.len() / 2 / SAMPLE * SAMPLE;
            let parts = [
                &b[..b.len().min(SAMPLE)],
                &b[mid..b.len().min(mid + SAMPLE)],
                &b[b.len().saturating_sub(SAMPLE)..],
            ];
            let h = parts
                .iter()
                .fold(0u64, |h, p| h.rotate_left(21) ^ fast_hash(p));
            (i, h)
        })
        .collect();
    for group in by_len.values().filter(|g| g.len() > 1) {
        // Those whose samples agree with another's get a hash of every byte (each read once,
        // then released), and only a full-hash match is compared byte for byte.
        let release = |i: usize| {
            let t = &src.tensors[i];
            let base = src.data_offset();
            src.release(base + t.start, base + t.end);
        };
        let mut hashes: Vec<u64> = group.iter().map(|i| sampled[i]).collect();
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for &h in &hashes {
            *seen.entry(h).or_default() += 1;
        }
        let full: Vec<Option<u64>> = group
            .par_iter()
            .zip(&hashes)
            .map(|(&i, h)| {
                (seen[h] > 1).then(|| {
                    let f = fast_hash(src.tensor_bytes(&src.tensors[i]));
                    release(i);
                    f
                })
            })
            .collect();
        for (h, f) in hashes.iter_mut().zip(full) {
            if let Some(f) = f {
                *h = f;
            }
        }
        for (a, &i) in group.iter().enumerate() {
            for b in 0..a {
                let j = group[b];
                if dup[j].is_none()
                    && hashes[a] == hashes[b]
                    && src.tensor_bytes(&src.tensors[i]) == src.tensor_bytes(&src.tensors[j])
                {
                    dup[i] = Some(j);
                    release(i);
                    release(j);
                    break;
                }
            }
        }
    }
    dup
}

/// Compresses one safetensors file into a `.bs` container.
pub fn compress_file(
    src_path: &Path,
    dst: &Path,
    opts: &CompressOptions,
    progress: &dyn Progress,
) -> Result<CompressReport> {
    compress_file_against(src_path, dst, opts, None, None, progress)
}

/// A matched base tensor: its identity and whether the fine-tune equals it.
struct Matched {
    hash: u64,
    md5: String,
    same: bool,
}

/// Pairs each tensor with the base's tensor of the same name, dtype and shape, and says
/// whether its bytes are the same. With the base hashed beside the coding (`base_beside`),
/// only a change is looked for here (the comparison stops at the first, so a changed tensor
/// costs a page or two); the pair's hash and receipt are filled in after the coding.
fn match_base(
    src: &SafetensorsFile,
    base: Option<&dyn crate::delta::BaseSource>,
    base_beside: bool,
) -> Result<Vec<Option<Matched>>> {
    let Some(b) = base else {
        return Ok(src.tensors.iter().map(|_| None).collect());
    };
    src.tensors
        .par_iter()
        .map(|t| -> Result<Option<Matched>> {
            let Some(bt) = b.find(&t.name) else {
                return Ok(None);
            };
            let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
            if bt.dtype != dtype_name(t.dtype) || bt.shape != shape {
                return Ok(None);
            }
            let bytes = b.range(&t.name, 0, bt.len)?;
            let m = Matched {
                hash: if base_beside { 0 } else { fast_hash(&bytes) },
                md5: if base_beside {
                    String::new()
                } else {
                    b.md5(&t.name)?
                },
                same: *bytes == *src.tensor_bytes(t),
            };
            drop(bytes);
            b.release(&t.name, 0, bt.len);
            let start = src.data_offset() + t.start;
            src.release(start, start + t.len());
            Ok(Some(m))
        })
        .collect()
}

/// A patch's statistics before the coding: matched, unchanged, added and removed tensors
/// (and the base's fingerprint, unless its receipts are hashed beside the coding).
fn delta_stats(
    src: &SafetensorsFile,
    b: &dyn crate::delta::BaseSource,
    matched: &[Option<Matched>],
    model_names: Option<&std::collections::HashSet<String>>,
    base_beside: bool,
) -> Result<DeltaStats> {
    let mut st = DeltaStats {
        base: b.path().display().to_string(),
        ..Default::default()
    };
    if !base_beside {
        st.base_fingerprint = crate::delta::fingerprint(b)?;
    }
    for (t, m) in src.tensors.iter().zip(matched) {
        match m {
            Some(m) => {
                st.matched_tensors += 1;
                st.matched_bytes += t.len() as u64;
                st.unchanged_tensors += usize::from(m.same);
            }
            None if b.find(&t.name).is_some() => st.resized_tensors.push(t.name.clone()),
            None => st.added_tensors.push(t.name.clone()),
        }
    }
    // Removed = in the base but nowhere in the model (a shard of a directory only holds part
    // of it, so the caller passes the whole model's names).
    let own: std::collections::HashSet<String> =
        src.tensors.iter().map(|t| t.name.clone()).collect();
    let names = model_names.unwrap_or(&own);
    st.removed_tensors = b
        .tensors()
        .iter()
        .filter(|t| !names.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    Ok(st)
}

/// Every tensor's chunks, in file order, but those of the tensors `skip` names.
fn chunk_jobs(
    src: &SafetensorsFile,
    kinds: &[ElemKind],
    skip: impl Fn(usize) -> bool,
) -> Vec<ChunkJob> {
    let mut jobs = Vec::new();
    for (i, t) in src.tensors.iter().enumerate() {
        if skip(i) {
            continue;
        }
        let step = chunk_len(kinds[i]);
        let mut s = 0;
        while s < t.len() {
            let e = (s + step).min(t.len());
            jobs.push(ChunkJob {
                tensor: i,
                start: s,
                end: e,
            });
            s = e;
        }
    }
    jobs
}

/// The checkpoint of an interrupted `--resume` run in `pdir`, if there is one; an error if it
/// is unreadable or was made for another input, version or flags (`key`).
fn load_checkpoint(pdir: &Path, key: &ResumeKey, tensors: usize) -> Result<Option<Checkpoint>> {
    std::fs::create_dir_all(pdir).map_err(|e| Error::io(pdir, e))?;
    let Ok(bytes) = std::fs::read(pdir.join("state.json")) else {
        return Ok(None);
    };
    let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
        Error::invalid(
            pdir,
            format!("checkpoint is unreadable ({e}); delete it to start again"),
        )
    })?;
    if cp.key != *key || cp.chunks.len() != tensors {
        return Err(Error::invalid(
            pdir,
            "was made for a different input, bigsmall version or flags; delete it to start again",
        ));
    }
    if cp.plan.is_none() || cp.data_hash.is_none() {
        return Err(Error::invalid(
            pdir,
            "was made by an earlier bigsmall build, which did not record what this one checks before reusing it; delete it to start again",
        ));
    }
    Ok(Some(cp))
}

/// Codes one chunk: standalone, or, paired with a base tensor, as the smaller of its
/// difference against the base and its standalone coding.
struct ChunkCoder<'a> {
    src: &'a SafetensorsFile,
    kinds: &'a [ElemKind],
    base: Option<&'a dyn crate::delta::BaseSource>,
    matched: &'a [Option<Matched>],
    /// The base's receipts are hashed beside the coding, and its pages released there.
    base_beside: bool,
    effort: Effort,
}

impl ChunkCoder<'_> {
    fn code(&self, j: &ChunkJob) -> Result<Coded> {
        let t = &self.src.tensors[j.tensor];
        let raw = &self.src.tensor_bytes(t)[j.start..j.end];
        let kind = self.kinds[j.tensor];
        let hash = fast_hash(raw);
        let (Some(b), Some(_)) = (self.base, &self.matched[j.tensor]) else {
            return Ok(Coded {
                blob: encode_chunk(kind, raw, self.effort),
                hash,
                delta: false,
                changed: 0,
            });
        };
        let base_bytes = b.range(&t.name, j.start as u64, j.end as u64)?;
        let w = kind.width();
        let mut diff = Vec::new();
        let changed = crate::delta::subtract(raw, &base_bytes, w, &mut diff) * w as u64;
        drop(base_bytes);
        if !self.base_beside {
            b.release(&t.name, j.start as u64, j.end as u64);
        }
        let d = crate::codec::encode_sparse_chunk(kind, &diff, self.effort);
        // Standalone coding is measured too, except where the difference is already under an
        // eighth of the raw size: no standalone codec gets there on non-constant floats (the
        // densest, a palette, needs >= ~2 bits/element). It is not written where its plan
        // shows it longer than the difference.
        let floats = matches!(kind, ElemKind::Bf16 | ElemKind::F16 | ElemKind::F32);
        let constant = || raw.chunks_exact(w).all(|e| e == &raw[..w]);
        let skip_alone = floats && d.len() * 8 < raw.len() && !constant();
        let alone = if skip_alone {
            None
        } else {
            encode_chunk_within(kind, raw, self.effort, d.len())
        };
        Ok(match alone {
            Some(a) if a.len() <= d.len() => Coded {
                blob: a,
                hash,
                delta: false,
                changed,
            },
            _ => Coded {
                blob: d,
                hash,
                delta: true,
                changed,
            },
        })
    }
}

/// Codes a window and writes each blob as soon as the ones before it are written (see
/// `OrderedSink`); the chunks are taken in order, so that they are done (and written) nearly
/// in order and few wait. Beside it: the window's md5 segments, and the release of the
/// `earlier` window's input pages (between the windows both threads would wait for it).
fn code_window_in_order(
    coder: &ChunkCoder<'_>,
    out: WindowOut<'_>,
    segments: Option<&mut Vec<Segment>>,
    earlier: Option<&[ChunkJob]>,
) -> Result<()> {
    let window = out.window;
    let sink = OrderedSink::new(out);
    let taken = AtomicUsize::new(0);
    rayon::scope(|s| {
        if let Some(earlier) = earlier {
            s.spawn(move |_| release_source(coder.src, earlier));
        }
        if let Some(segments) = segments {
            s.spawn(|_| hash_segments(coder.src, segments));
        }
        let (taken, sink) = (&taken, &sink);
        for _ in 0..rayon::current_num_threads() {
            s.spawn(move |_| loop {
                let k = taken.fetch_add(1, Ordering::Relaxed);
                if k >= window.len() || sink.failed() {
                    break;
                }
                sink.put(k, coder.code(&window[k]));
            });
        }
    });
    sink.finish()
}

/// Where a patch's coded windows wait for their write: each window's blobs are parked in an
/// arena and written while the next window is coded. Measured, writing them as they come
/// (`code_window_in_order`) made the SmolLM2 ±1-ulp patches slower and less steady (medians
/// 215 -> 257 ms at 100%, 214 -> 238 ms at 10%: the coding threads' writes compete with the
/// threads that hash the fine-tune and its base).
struct Parking {
    /// One arena for the window being coded, one for the window being written.
    arenas: [Option<BlobArena>; 2],
    pending: Option<Parked>,
}

impl Parking {
    /// Arenas only where they will be used (`used`): for at most a window of `jobs`.
    fn new(used: bool, jobs: &[ChunkJob], window_limit: usize) -> Parking {
        let arenas = if used {
            let bytes = jobs
                .iter()
                .map(|j| j.end - j.start)
                .sum::<usize>()
                .min(window_limit)
                + window_limit / 8
                + CHUNK_BYTES;
            [BlobArena::new(bytes), BlobArena::new(bytes)]
        } else {
            [None, None]
        };
        Parking {
            arenas,
            pending: None,
        }
    }

    /// Codes window `range` of `jobs` (the window of `out`) while the window before it is
    /// written and its input pages released (unless the hashing thread releases them), and
    /// the window's md5 segments are hashed. A resumable run writes the window before it
    /// returns, so that it can be checkpointed.
    fn code_window(
        &mut self,
        coder: &ChunkCoder<'_>,
        mut out: WindowOut<'_>,
        segments: Option<&mut Vec<Segment>>,
        range: std::ops::Range<usize>,
        jobs: &[ChunkJob],
        resume: bool,
    ) -> Result<()> {
        let no = out.window_no;
        let mut coded: Vec<Result<Coded<Blob>>> = Vec::new();
        let mut written: Result<()> = Ok(());
        if let Some(a) = self.arenas[no % 2].as_mut() {
            a.clear();
        }
        let (arenas, pending) = (&self.arenas, self.pending.take());
        let arena = arenas[no % 2].as_ref();
        let window = out.window;
        rayon::scope(|s| {
            if let Some((range, blobs, no)) = pending {
                let (mut earlier, written) =
                    (out.for_window(&jobs[range.clone()], no), &mut written);
                let arena = arenas[no % 2].as_ref();
                s.spawn(move |_| {
                    *written = earlier.write_parked(blobs, arena);
                    if !coder.base_beside {
                        release_source(coder.src, &jobs[range]);
                    }
                });
            }
            if let Some(segments) = segments {
                s.spawn(|_| hash_segments(coder.src, segments));
            }
            window
                .par_iter()
                .map(|j| coder.code(j).map(|c| c.park(arena)))
                .collect_into_vec(&mut coded);
        });
        written?;
        if resume {
            out.write_parked(coded, arena)
        } else {
            self.pending = Some((range, coded, no));
            Ok(())
        }
    }
}

/// Compresses one safetensors file, as a patch against `base` when one is given: every chunk
/// of a tensor that the base also has (same name, dtype and shape) is coded both standalone
/// and as its difference against the base, and the smaller is kept, so a patch is never
/// larger than the standalone file beyond its index. Tensors equal to the base store nothing.
pub fn compress_file_against(
    src_path: &Path,
    dst: &Path,
    opts: &CompressOptions,
    base: Option<&dyn crate::delta::BaseSource>,
    model_names: Option<&std::collections::HashSet<String>>,
    progress: &dyn Progress,
) -> Result<CompressReport> {
    let started = Instant::now();
    let src = SafetensorsFile::open(src_path)?;
    crate::fsutil::check_container_output(dst, opts.overwrite)?;
    let header = String::from_utf8(src.header.clone()).map_err(|_| Error::BadSafetensors {
        path: src_path.to_path_buf(),
        why: "header is not UTF-8".into(),
    })?;
    let dup = find_duplicates(&src);
    let kinds: Vec<ElemKind> = src.tensors.iter().map(|t| elem_kind(t.dtype)).collect();

    // Against a mapped base, the md5 receipts of both sides are hashed on a thread of their
    // own beside the coding (see `hash_beside`): a tensor and its base counterpart share the
    // lanes, and no window waits for a long tensor's serial hash. Measured, this pays only
    // with a base to pair (alone, the second pass over the source costs more than the
    // window's own hashing task). A resumable run hashes each window with its coding, and
    // needs the base's fingerprint (so its receipts) first.
    let base_beside = !opts.resume && base.is_some_and(|b| b.is_mapped());
    std::thread::scope(|scope| {
        if let (Some(b), false) = (base, base_beside) {
            b.md5_all();
        }
        let matched = match_base(&src, base, base_beside)?;
        let mut stats = base
            .map(|b| delta_stats(&src, b, &matched, model_names, base_beside))
            .transpose()?;

        // Grouped streams are decided (coded both ways, measured) before the main pass; their
        // members are not coded again there.
        let groups = if opts.group_streams {
            crate::layout::groups::plan(&src, &kinds, &dup, |i| matched[i].is_none(), opts.effort)
        } else {
            crate::layout::groups::Groups::default()
        };
        // Duplicates, unchanged tensors and group members store no chunks of their own.
        let jobs = chunk_jobs(&src, &kinds, |i| {
            dup[i].is_some()
                || matched[i].as_ref().is_some_and(|m| m.same)
                || groups.member_md5(i).is_some()
        });

        let total: u64 = src.tensors.iter().map(|t| t.len() as u64).sum();
        progress.start(total, "compress");
        let window_limit = window_bytes();
        let pdir = progress_dir(dst);
        let key = ResumeKey {
            bigsmall: env!("CARGO_PKG_VERSION").into(),
            source_size: src.file_size,
            source_modified_ns: std::fs::metadata(src_path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            source_header_hash: fast_hash(&src.header),
            effort: opts.effort,
            base_fingerprint: stats
                .as_ref()
                .map(|s| s.base_fingerprint.clone())
                .unwrap_or_default(),
            window_bytes: window_limit,
            group_streams: opts.group_streams,
        };
        let checkpoint = if opts.resume {
            crate::fsutil::note_kept_progress(&pdir);
            load_checkpoint(&pdir, &key, src.tensors.len())?
        } else {
            None
        };
        let plan = plan_hash(&jobs);
        if let Some(c) = &checkpoint {
            check_reused(&src, c, plan, &pdir)?;
        }
        // (Declared before the writer, so that it is dropped after it.)
        let mut until_checkpoint =
            UntilCheckpoint((opts.resume && checkpoint.is_none()).then(|| pdir.clone()));
        let mut writer = if opts.resume {
            ContainerWriter::resumable(
                dst,
                &pdir.join("partial.bs"),
                checkpoint
                    .as_ref()
                    .map(|c| (c.data_end, c.data_hash.unwrap_or_default())),
            )?
        } else {
            ContainerWriter::create(dst)?
        }
        .with_ecc(opts.ecc);
        let windows_done = checkpoint.as_ref().map_or(0, |c| c.windows_done);
        let mut chunks: Vec<Vec<ChunkEntry>> = match &checkpoint {
            Some(c) => c.chunks.clone(),
            None => vec![Vec::new(); src.tensors.len()],
        };
        if let (Some(c), Some(st)) = (&checkpoint, stats.as_mut()) {
            st.changed_bytes = c.changed_bytes;
            st.delta_chunks = c.delta_chunks;
            st.standalone_chunks = c.standalone_chunks;
        }
        let mut hashers: Vec<Option<Md5>> = src.tensors.iter().map(|_| Some(Md5::new())).collect();
        let shared = base_beside.then(|| {
            std::sync::Arc::new(Shared {
                base: base.expect("a base to hash beside"),
                paired: matched.iter().map(|m| m.is_some()).collect(),
                left: (0..jobs.len()).map(|_| AtomicU8::new(2)).collect(),
                passed: [AtomicUsize::new(0), AtomicUsize::new(0)],
                stop: AtomicBool::new(false),
            })
        });
        let receipts = shared.clone().map(|sh| {
            let (src, jobs) = (&src, jobs.clone());
            scope.spawn(move || hash_beside(src, &jobs, window_limit, &sh))
        });
        // That thread only reads base tensors paired with a coded one. The others' receipts
        // (unchanged tensors; resized or removed ones, which the fingerprint needs too) are
        // hashed meanwhile on a thread of their own, not after the coding.
        let unpaired = match (base, base_beside) {
            (Some(b), true) => {
                let coded: std::collections::HashSet<&str> = src
                    .tensors
                    .iter()
                    .zip(&matched)
                    .filter(|(_, m)| m.as_ref().is_some_and(|m| !m.same))
                    .map(|(t, _)| t.name.as_str())
                    .collect();
                let names: Vec<&str> = b
                    .tensors()
                    .iter()
                    .map(|t| t.name.as_str())
                    .filter(|n| !coded.contains(n))
                    .collect();
                (!names.is_empty()).then(|| scope.spawn(move || b.md5_these(&names)))
            }
            _ => None,
        };
        // On an early return (an error) the hashing thread stops at its next window instead of
        // hashing the rest of the model before the scope can end.
        let _stop = StopOnDrop(shared.clone());
        if checkpoint.is_none() {
            // A resumed run has the group blobs (and their entries) from the checkpoint.
            for (member, entry) in groups.write(&mut writer)? {
                chunks[member].push(entry);
            }
        }
        progress.advance(groups.raw_bytes());

        let mut next = 0;
        let mut window_no = 0usize;
        // A window's input pages are dropped during the next window's coding, by a task of
        // their own: between the windows both threads would wait for it.
        let mut to_release: Option<std::ops::Range<usize>> = None;
        let mut parking = Parking::new(base.is_some(), &jobs, window_limit);
        let coder = ChunkCoder {
            src: &src,
            kinds: &kinds,
            base,
            matched: &matched,
            base_beside,
            effort: opts.effort,
        };
        while next < jobs.len() {
            let end = window_end(&jobs, next, window_limit);
            let window = &jobs[next..end];
            let bytes: usize = window.iter().map(|j| j.end - j.start).sum();
            if window_no < windows_done {
                // Already coded and written before the interruption: only the md5 receipts need
                // these bytes again.
                let mut segments = segments_of(window, &mut hashers);
                hash_segments(&src, &mut segments);
                give_back(segments, &mut hashers);
                release_source(&src, window);
                progress.advance(bytes as u64);
                next = end;
                window_no += 1;
                continue;
            }
            // Otherwise the md5 receipts run beside the chunk coding, one task for the whole
            // window, the tensors' segments side by side in SIMD lanes (md5x).
            let mut segments = (!base_beside).then(|| segments_of(window, &mut hashers));
            let out = WindowOut {
                writer: &mut writer,
                window,
                window_no,
                chunks: &mut chunks,
                stats: &mut stats,
                matched: &matched,
            };
            if base.is_none() {
                let earlier = to_release.take().map(|r| &jobs[r]);
                code_window_in_order(&coder, out, segments.as_mut(), earlier)?;
            } else {
                parking.code_window(
                    &coder,
                    out,
                    segments.as_mut(),
                    next..end,
                    &jobs,
                    opts.resume,
                )?;
            }
            if let Some(segments) = segments {
                give_back(segments, &mut hashers);
            }
            match &shared {
                // The hashing thread reads the same windows: whichever side is done with a
                // window second drops it, so neither maps its pages twice.
                Some(sh) => sh.done(Shared::CODING, window_no, &src, window),
                // A plain compression's go during the next window (the last window's with the
                // process); a patch's with the window's write, or, resumable, now.
                None if base.is_none() => to_release = Some(next..end),
                None if opts.resume => release_source(&src, window),
                None => {}
            }
            progress.advance(bytes as u64);
            next = end;
            window_no += 1;
            if opts.resume {
                writer.flush()?;
                let st = stats.clone().unwrap_or_default();
                save_checkpoint(
                    &pdir,
                    &Checkpoint {
                        key: key.clone(),
                        windows_done: window_no,
                        data_end: writer.position(),
                        chunks: chunks.clone(),
                        changed_bytes: st.changed_bytes,
                        delta_chunks: st.delta_chunks,
                        standalone_chunks: st.standalone_chunks,
                        plan: Some(plan),
                        data_hash: Some(writer.written_hash()),
                    },
                )?;
                until_checkpoint.0 = None;
                abort_if("window", window_no);
            }
        }

        if let Some((range, blobs, no)) = parking.pending.take() {
            WindowOut {
                writer: &mut writer,
                window: &jobs[range],
                window_no: no,
                chunks: &mut chunks,
                stats: &mut stats,
                matched: &matched,
            }
            .write_parked(blobs, parking.arenas[no % 2].as_ref())?;
        }
        if let Some(r) = receipts {
            hashers = r.join().expect("hashing does not panic")?;
        }
        if let Some(u) = unpaired {
            u.join().expect("hashing does not panic");
        }
        let mut matched = matched;
        if let (true, Some(b)) = (base_beside, base) {
            // The two hashing threads covered every base tensor; anything still unknown (a
            // tensor the base file cannot hold, which `md5` then names) is tried now.
            b.md5_all();
            for (t, m) in src.tensors.iter().zip(matched.iter_mut()) {
                if let Some(m) = m {
                    m.md5 = b.md5(&t.name)?;
                    m.hash = b.whole_hash(&t.name, t.len() as u64)?;
                }
            }
            if let Some(st) = stats.as_mut() {
                st.base_fingerprint = crate::delta::fingerprint(b)?;
            }
        }
        // A base that gave nothing (no tensor unchanged, no chunk smaller as its difference)
        // would only be needed to decode: every blob is standalone, so the file is written as
        // a standalone one. (A directory's shards stay patches, as its index says.)
        let base_unused = model_names.is_none()
            && stats
                .as_ref()
                .is_some_and(|st| st.unchanged_tensors == 0 && st.delta_chunks == 0);
        let (base, stats, matched) = if base_unused {
            (None, None, matched.iter().map(|_| None).collect())
        } else {
            (base, stats, matched)
        };
        let md5s = tensor_receipts(hashers, &dup, &matched, &groups);
        let tensors = tensor_entries(&src, md5s, &dup, &matched, chunks);
        let index = Index {
            format: "bigsmall".into(),
            created_by: format!("bigsmall {}", env!("CARGO_PKG_VERSION")),
            mode: opts.effort,
            chunk_bytes: CHUNK_BYTES as u64,
            source: Source {
                kind: "safetensors".into(),
                file_name: src_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                file_size: src.file_size,
                header,
            },
            tensors,
            base: match (base, &stats) {
                (Some(b), Some(st)) => Some(crate::format::BaseRef {
                    fingerprint: st.base_fingerprint.clone(),
                    made_from: b.path().display().to_string(),
                    tensor_count: b.tensors().len(),
                    removed: st.removed_tensors.clone(),
                }),
                _ => None,
            },
            groups: groups.recorded.clone(),
        };
        abort_if("before-index", 1);
        let output_bytes = writer.finish(&index)?;
        if opts.resume {
            let _ = std::fs::remove_dir_all(&pdir);
        } else {
            remove_stale_progress(dst);
        }
        progress.finish();
        Ok(CompressReport {
            source_bytes: src.file_size,
            output_bytes,
            tensors: src.tensors.len(),
            duplicates: dup.iter().filter(|d| d.is_some()).count(),
            seconds: started.elapsed().as_secs_f64(),
            delta: stats,
            groups: groups.infos,
            skipped: Vec::new(),
        })
    })
}

/// Each tensor's md5 receipt: its own hash, or the one it is known to share (a duplicate's
/// original, a group member's, an unchanged tensor's base counterpart).
fn tensor_receipts(
    hashers: Vec<Option<Md5>>,
    dup: &[Option<usize>],
    matched: &[Option<Matched>],
    groups: &crate::layout::groups::Groups,
) -> Vec<String> {
    let mut md5s: Vec<String> = Vec::with_capacity(hashers.len());
    for (i, h) in hashers.into_iter().enumerate() {
        let digest = hex(&h.expect("hasher returned").finalize());
        md5s.push(match (dup[i], &matched[i]) {
            (Some(j), _) => md5s[j].clone(),
            _ if groups.member_md5(i).is_some() => groups.member_md5(i).cloned().expect("checked"),
            (None, Some(m)) if m.same => m.md5.clone(),
            _ => digest,
        });
    }
    md5s
}

/// The index entries of a compressed file's tensors, with their chunks and, in a patch,
/// their base references.
fn tensor_entries(
    src: &SafetensorsFile,
    md5s: Vec<String>,
    dup: &[Option<usize>],
    matched: &[Option<Matched>],
    mut chunks: Vec<Vec<ChunkEntry>>,
) -> Vec<TensorEntry> {
    src.tensors
        .iter()
        .zip(md5s)
        .enumerate()
        .map(|(i, (t, md5))| {
            let mut e = entry(t, md5, dup[i], std::mem::take(&mut chunks[i]));
            if dup[i].is_none() {
                e.delta = matched[i].as_ref().map(|m| crate::format::DeltaRef {
                    base_md5: m.md5.clone(),
                    base_hash: m.hash,
                    same: m.same,
                });
            }
            e
        })
        .collect()
}

/// Bytes `start..end` of tensor `tensor`, with that tensor's running md5.
type Segment = (usize, usize, usize, Md5);

/// A window's runs of chunks per tensor: `(tensor, start, end)` (a tensor's chunks are
/// contiguous, so each tensor has one run).
fn spans(window: &[ChunkJob]) -> Vec<(usize, usize, usize)> {
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    for j in window {
        match spans.last_mut() {
            Some(s) if s.0 == j.tensor => s.2 = j.end,
            _ => spans.push((j.tensor, j.start, j.end)),
        }
    }
    spans
}

/// A window's spans, each holding its tensor's hasher until it is hashed.
fn segments_of(window: &[ChunkJob], hashers: &mut [Option<Md5>]) -> Vec<Segment> {
    spans(window)
        .into_iter()
        .map(|(t, start, end)| {
            let h = hashers[t].take().expect("each tensor hashed in order");
            (t, start, end, h)
        })
        .collect()
}

/// The md5 work of a window's segments, for `md5x::update_many`.
fn segment_work<'a>(
    src: &'a SafetensorsFile,
    segments: &'a mut [Segment],
) -> Vec<(&'a mut Md5, &'a [u8])> {
    segments
        .iter_mut()
        .map(|seg| {
            (
                &mut seg.3,
                &src.tensor_bytes(&src.tensors[seg.0])[seg.1..seg.2],
            )
        })
        .collect()
}

fn hash_segments(src: &SafetensorsFile, segments: &mut [Segment]) {
    md5x::update_many(&mut segment_work(src, segments));
}

fn give_back(segments: Vec<Segment>, hashers: &mut [Option<Md5>]) {
    for (tensor, _, _, h) in segments {
        hashers[tensor] = Some(h);
    }
}

/// Drops a window's source bytes from memory (they are read again from the page cache if
/// needed).
fn release_source(src: &SafetensorsFile, window: &[ChunkJob]) {
    let base = src.data_offset();
    if let (Some(first), Some(last)) = (window.first(), window.last()) {
        src.release(
            base + src.tensors[first.tensor].start + first.start,
            base + src.tensors[last.tensor].start + last.end,
        );
    }
}

/// The end of the window that starts at job `next`: `limit` bytes of jobs, at least one.
fn window_end(jobs: &[ChunkJob], next: usize, limit: usize) -> usize {
    let (mut end, mut bytes) = (next, 0);
    while end < jobs.len() && (bytes < limit || end == next) {
        bytes += jobs[end].end - jobs[end].start;
        end += 1;
    }
    end
}

/// What the coding and the thread hashing beside it share: the base, which tensors it has,
/// and per window how many of the two sides still read it.
struct Shared<'a> {
    base: &'a dyn crate::delta::BaseSource,
    paired: Vec<bool>,
    left: Vec<AtomicU8>,
    /// Windows each side (coding, hashing) is done with.
    passed: [AtomicUsize; 2],
    stop: AtomicBool,
}

/// A fresh resumable run's progress directory until its first checkpoint: a run that stops
/// with an error before then leaves nothing a resume could use (a partial file without a
/// checkpoint, as large as a window), so the directory goes.
struct UntilCheckpoint(Option<std::path::PathBuf>);

impl Drop for UntilCheckpoint {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

struct StopOnDrop<'a>(Option<std::sync::Arc<Shared<'a>>>);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(sh) = &self.0 {
            sh.stop.store(true, Ordering::Relaxed);
        }
    }
}

impl Shared<'_> {
    const CODING: usize = 0;
    const HASHING: usize = 1;
    /// How many windows one side may run ahead of the other with its bytes kept in memory.
    const LEAD: usize = 2;

    /// `side` is done with window `no`: the second side drops its source and base bytes; so
    /// does the first when the other is more than `LEAD` windows behind, so that memory
    /// stays bounded (the other side then reads them from the page cache again).
    fn done(&self, side: usize, no: usize, src: &SafetensorsFile, window: &[ChunkJob]) {
        self.passed[side].store(no + 1, Ordering::Release);
        let last = self.left[no].fetch_sub(1, Ordering::AcqRel) == 1;
        if !last && no < self.passed[1 - side].load(Ordering::Acquire) + Self::LEAD {
            return;
        }
        release_source(src, window);
        for (t, start, end) in spans(window) {
            if self.paired[t] {
                self.base
                    .release(&src.tensors[t].name, start as u64, end as u64);
            }
        }
    }
}

/// The md5 receipts of the coded tensors, window by window in file order on a thread of its
/// own: no window of the coding waits for a long tensor's serial hash, and the two hashes of
/// a changed tensor and its base counterpart (md5, and xxh3 for the index) run side by side
/// in the lanes. Base receipts go to the base (`BaseSource::remember`). Returns each tensor's
/// hasher (fed or untouched).
fn hash_beside(
    src: &SafetensorsFile,
    jobs: &[ChunkJob],
    limit: usize,
    shared: &Shared<'_>,
) -> Result<Vec<Option<Md5>>> {
    use xxhash_rust::xxh3::Xxh3;
    let base = shared.base;
    let mut fine: Vec<Option<Md5>> = src.tensors.iter().map(|_| Some(Md5::new())).collect();
    let mut coarse: Vec<Option<(Md5, Xxh3)>> = shared
        .paired
        .iter()
        .map(|&p| p.then(|| (Md5::new(), Xxh3::new())))
        .collect();
    let mut next = 0;
    let mut window_no = 0;
    while next < jobs.len() && !shared.stop.load(Ordering::Relaxed) {
        let end = window_end(jobs, next, limit);
        let window = &jobs[next..end];
        let mut segments = segments_of(window, &mut fine);
        let mut base_segments = Vec::new();
        for &(t, start, end, _) in &segments {
            if let Some(h) = coarse[t].take() {
                let bytes = base.range(&src.tensors[t].name, start as u64, end as u64)?;
                base_segments.push((t, h, bytes));
            }
        }
        let mut work = segment_work(src, &mut segments);
        for (_, (md5, xxh), bytes) in &mut base_segments {
            xxh.update(bytes);
            work.push((md5, bytes));
        }
        md5x::update_many(&mut work);
        give_back(segments, &mut fine);
        for (t, h, _) in base_segments {
            coarse[t] = Some(h);
        }
        shared.done(Shared::HASHING, window_no, src, window);
        window_no += 1;
        next = end;
    }
    let mut coded = vec![false; src.tensors.len()];
    for j in jobs {
        coded[j.tensor] = true;
    }
    for (t, c) in coarse.into_iter().enumerate() {
        // Tensors without jobs (unchanged ones) were not hashed here.
        if let (Some((md5, xxh)), true) = (c, coded[t]) {
            base.remember(&src.tensors[t].name, &md5.hex(), xxh.digest());
        }
    }
    Ok(fine)
}

/// One coded chunk on its way to the writer.
struct Coded<B = Vec<u8>> {
    blob: B,
    hash: u64,
    delta: bool,
    changed: u64,
}

/// A patch's coded window waiting for its write: its jobs, its blobs, its number.
type Parked = (std::ops::Range<usize>, Vec<Result<Coded<Blob>>>, usize);

impl Coded {
    /// Parks the blob in `arena` (or keeps it on the heap) until it is written.
    fn park(self, arena: Option<&BlobArena>) -> Coded<Blob> {
        Coded {
            blob: Blob::keep(arena, self.blob),
            hash: self.hash,
            delta: self.delta,
            changed: self.changed,
        }
    }
}

fn entry(
    t: &TensorMeta,
    md5: String,
    dup_of: Option<usize>,
    chunks: Vec<ChunkEntry>,
) -> TensorEntry {
    TensorEntry {
        name: t.name.clone(),
        dtype: dtype_name(t.dtype),
        shape: t.shape.iter().map(|&d| d as u64).collect(),
        offsets: [t.start as u64, t.end as u64],
        md5,
        dup_of,
        delta: None,
        chunks,
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DecompressOptions {
    pub overwrite: bool,
    /// Also check every tensor's md5 receipt (chunk checksums are always checked).
    pub check_md5: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DecompressReport {
    pub output_bytes: u64,
    pub tensors: usize,
    pub chunks: usize,
    pub md5_checked: bool,
    pub seconds: f64,
    /// Files in a compressed directory that its index does not list (not carried).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_carried: Vec<String>,
}

/// One decoded window, on its way to the writer thread.
struct Decoded {
    buf: Vec<u8>,
    /// (tensor, byte range in buf) segments, for md5 receipts.
    segments: Vec<(usize, usize, usize)>,
}

/// A chunk to decode, located in the output stream.
#[derive(Debug, Clone, Copy)]
pub struct DecodeJob {
    pub tensor: usize,
    pub chunk: usize,
    pub len: usize,
}

/// Every chunk of the container in output order, following duplicates.
pub fn decode_jobs(c: &Container) -> Vec<DecodeJob> {
    let mut jobs = Vec::new();
    for t in 0..c.index.tensors.len() {
        for (k, ch) in c.chunks(t).iter().enumerate() {
            jobs.push(DecodeJob {
                tensor: t,
                chunk: k,
                len: ch.raw_len as usize,
            });
        }
    }
    jobs
}

/// Splits `jobs` into windows of about `limit` raw bytes.
pub fn windows(jobs: &[DecodeJob], limit: usize) -> Vec<std::ops::Range<usize>> {
    windows_of(jobs, limit as u64, |j| j.len as u64)
}

/// Consecutive runs of `items` of about `limit` bytes each (`len` of each item; an item larger
/// than the limit is a run of its own).
pub fn windows_of<T>(
    items: &[T],
    limit: u64,
    len: impl Fn(&T) -> u64,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < items.len() && (bytes < limit || end == start) {
            bytes += len(&items[end]);
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// Decodes a window of jobs into one buffer, all cores, checking every chunk hash.
pub fn decode_window(c: &Container, jobs: &[DecodeJob], mut buf: Vec<u8>) -> Result<Vec<u8>> {
    let total: usize = jobs.iter().map(|j| j.len).sum();
    // A recycled buffer is reused as is: every byte is overwritten by the decoders.
    buf.resize(total, 0);
    let mut slices = Vec::with_capacity(jobs.len());
    let mut rest = &mut buf[..];
    for j in jobs {
        let (a, b) = rest.split_at_mut(j.len);
        slices.push(a);
        rest = b;
    }
    slices
        .into_par_iter()
        .zip(jobs.par_iter())
        .try_for_each(|(s, j)| c.decode_chunk_into(j.tensor, j.chunk, s))?;
    Ok(buf)
}

/// Decodes every chunk of `jobs` (in output order) on all cores, each core taking windows of
/// about `WRITE_WINDOW_BYTES` of its own, and hands each decoded window to `done` on the core
/// that decoded it, with its jobs and its offset in the output data (windows come in no
/// particular order).
pub fn decode_windows_each(
    c: &Container,
    jobs: &[DecodeJob],
    done: impl Fn(&[DecodeJob], u64, &[u8]) -> Result<()> + Sync,
) -> Result<()> {
    let wins = windows(jobs, WRITE_WINDOW_BYTES);
    let mut at = Vec::with_capacity(wins.len());
    let mut pos = 0;
    for w in &wins {
        at.push(pos);
        pos += jobs[w.clone()].iter().map(|j| j.len as u64).sum::<u64>();
    }
    thread_local! {
        // One window buffer per thread for the whole run: a fresh one per rayon split
        // cost a page fault per 4 KiB written.
        static BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }
    wins.par_iter()
        .zip(at)
        .try_for_each(|(w, offset)| -> Result<()> {
            let window = &jobs[w.clone()];
            let decoded = decode_window(c, window, BUF.take())?;
            let result = done(window, offset, &decoded);
            BUF.set(decoded);
            result
        })
}

/// Decompresses a `.bs` container back to the exact safetensors file it was made from.
pub fn decompress_file(
    src: &Path,
    dst: &Path,
    opts: &DecompressOptions,
    progress: &dyn Progress,
) -> Result<DecompressReport> {
    decompress_file_with(src, dst, opts, None, progress)
}

/// Decompresses a container; a patch needs its base (checked tensor by tensor before any
/// output is written).
/// Drops the mapped pages of a decoded window's own blobs (shared group blobs, stored before
/// everything else, stay: other windows still need them).
fn release_window(c: &Container, jobs: &[DecodeJob]) {
    let own =
        |j: &DecodeJob| Some(c.chunks(j.tensor)[j.chunk]).filter(|ch| !ch.grouped() && ch.len > 0);
    if let (Some(first), Some(last)) = (jobs.iter().find_map(own), jobs.iter().rev().find_map(own))
    {
        if first.offset <= last.offset {
            c.release(first.offset, last.offset + last.len);
        }
    }
}

pub fn decompress_file_with(
    src: &Path,
    dst: &Path,
    opts: &DecompressOptions,
    base: Option<std::sync::Arc<dyn crate::delta::BaseSource>>,
    progress: &dyn Progress,
) -> Result<DecompressReport> {
    let started = Instant::now();
    let mut c = Container::open(src)?;
    // Before the base's receipts, which may hash the whole base.
    check_output(dst, opts.overwrite)?;
    if let Some(b) = base {
        c.attach_base(b)?;
        if opts.check_md5 {
            c.check_base_receipts()?;
        }
    }
    c.check_decodable()?;
    let mut out = AtomicFile::create(dst)?;
    let header = c.index.source.header.as_bytes();
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header)?;
    let jobs = decode_jobs(&c);
    progress.start(c.raw_data_len(), "decompress");

    if !opts.check_md5 {
        // No receipts to hash in order: every core decodes windows and writes each at its
        // place, so the kernel's copy into the page cache runs on all cores too.
        out.flush()?;
        let data_start = 8 + header.len() as u64;
        let (cr, outr) = (&c, &out);
        decode_windows_each(cr, &jobs, |window, at, decoded| {
            outr.write_at(decoded, data_start + at)?;
            progress.advance(decoded.len() as u64);
            release_window(cr, window);
            Ok(())
        })?;
        out.commit()?;
        progress.finish();
        return Ok(DecompressReport {
            output_bytes: c.index.source.file_size,
            tensors: c.index.tensors.len(),
            chunks: jobs.len(),
            md5_checked: false,
            seconds: started.elapsed().as_secs_f64(),
            not_carried: Vec::new(),
        });
    }

    let (tx, rx) = mpsc::sync_channel::<Decoded>(2);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
    let n_tensors = c.index.tensors.len();
    let check_md5 = opts.check_md5;
    let c = &c;
    let result: Result<()> = std::thread::scope(|scope| {
        // The writer thread overlaps disk writes (and md5 receipts) with decoding.
        let writer = scope.spawn(move || -> Result<AtomicFile> {
            let mut hashers: Vec<Option<Md5>> = (0..n_tensors).map(|_| None).collect();
            for d in rx {
                out.write_all(&d.buf)?;
                if check_md5 {
                    // Each tensor appears once per window (its chunks are contiguous).
                    let mut hs: Vec<Md5> = d
                        .segments
                        .iter()
                        .map(|&(t, _, _)| hashers[t].take().unwrap_or_default())
                        .collect();
                    let mut jobs: Vec<(&mut Md5, &[u8])> = hs
                        .iter_mut()
                        .zip(&d.segments)
                        .map(|(h, &(_, s, e))| (h, &d.buf[s..e]))
                        .collect();
                    md5x::update_many(&mut jobs);
                    for (h, &(t, _, _)) in hs.into_iter().zip(&d.segments) {
                        hashers[t] = Some(h);
                    }
                }
                progress.advance(d.buf.len() as u64);
                let _ = recycle_tx.send(d.buf);
            }
            if check_md5 {
                for (t, h) in hashers.into_iter().enumerate() {
                    let got = h.unwrap_or_default().hex();
                    let te = &c.index.tensors[t];
                    if got != te.md5 {
                        return Err(Error::Integrity {
                            path: c.path.clone(),
                            tensor: te.name.clone(),
                            what: "md5 receipt".into(),
                        });
                    }
                }
            }
            Ok(out)
        });
        // A fixed set of buffers circulates between decoder and writer: no allocation (and
        // no page faults) per window.
        let mut fresh = 3usize;
        let mut failure = None;
        for w in &windows(&jobs, DECODE_WINDOW_BYTES) {
            let buf = if fresh > 0 {
                fresh -= 1;
                Vec::new()
            } else {
                match recycle_rx.recv() {
                    Ok(b) => b,
                    Err(_) => break,
                }
            };
            match decode_window(c, &jobs[w.clone()], buf) {
                Ok(buf) => {
                    release_window(c, &jobs[w.clone()]);
                    let mut segments: Vec<(usize, usize, usize)> = Vec::new();
                    let mut pos = 0;
                    for j in &jobs[w.clone()] {
                        match segments.last_mut() {
                            Some(s) if s.0 == j.tensor => s.2 = pos + j.len,
                            _ => segments.push((j.tensor, pos, pos + j.len)),
                        }
                        pos += j.len;
                    }
                    if tx.send(Decoded { buf, segments }).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = writer.join().expect("writer thread does not panic");
        match (failure, written) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e),
            (None, Ok(out)) => out.commit(),
        }
    });
    result?;
    progress.finish();
    Ok(DecompressReport {
        output_bytes: c.index.source.file_size,
        tensors: c.index.tensors.len(),
        chunks: jobs.len(),
        md5_checked: opts.check_md5,
        seconds: started.elapsed().as_secs_f64(),
        not_carried: Vec::new(),
    })
}
