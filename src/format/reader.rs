//! Container reader: maps the file, validates trailer and index against the file size before
//! anything is sliced or allocated, and decodes chunks on demand.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{
    fast_hash, ChunkEntry, Index, TensorEntry, Trailer, BASE_COPY, CHUNK_BYTES, DATA_START, MAGIC,
    MAJOR, MAX_GROUP_BLOB, MAX_INDEX_JSON, MINOR, PREAMBLE_LEN, TRAILER_LEN,
};
use crate::codec::{decode_chunk, ElemKind};
use crate::delta::BaseSource;
use crate::error::{Error, Result};
use crate::model::safetensors::{elem_kind, parse_dtype};

/// Largest decoded chunk we accept from an index: bounds the memory a hostile file can ask for.
pub const MAX_CHUNK_RAW: u64 = 64 << 20;

/// An opened, structurally validated container.
pub struct Container {
    pub path: PathBuf,
    mmap: Mmap,
    pub index: Index,
    pub trailer: Trailer,
    pub version: (u16, u16),
    /// Element kind of each tensor (parallel to `index.tensors`).
    kinds: Vec<ElemKind>,
    /// For patch tensors equal to their base: chunks that copy the base (nothing stored).
    virtual_chunks: Vec<Option<Vec<ChunkEntry>>>,
    /// The base a patch is applied to, once attached and verified.
    base: Option<std::sync::Arc<dyn BaseSource>>,
    /// Unique per opened container in this process (keys the group-blob cache).
    id: u64,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The trailer of a mapped container (at least `DATA_START + TRAILER_LEN` bytes) and the
/// packed index it locates, its checksum checked.
fn packed_index(m: &[u8]) -> std::result::Result<(Trailer, &[u8]), &'static str> {
    let len = m.len() as u64;
    let tb: &[u8; TRAILER_LEN] = m[m.len() - TRAILER_LEN..]
        .try_into()
        .expect("length checked");
    let trailer =
        Trailer::from_bytes(tb).ok_or("truncated or damaged: no trailer at the end of the file")?;
    let index_end = trailer
        .index_offset
        .checked_add(trailer.index_len)
        .filter(|&e| e == len - TRAILER_LEN as u64)
        .ok_or("trailer points outside the file (truncated or damaged)")?;
    if trailer.index_offset < DATA_START || trailer.index_len == 0 {
        return Err("trailer has an impossible index location");
    }
    let packed = &m[trailer.index_offset as usize..index_end as usize];
    if fast_hash(packed) != trailer.index_hash {
        return Err("index checksum mismatch (the index is damaged)");
    }
    Ok((trailer, packed))
}

/// Whether the trailer, the index checksum and the index itself (inflated, parsed and
/// checked under this build's rules) read as this build's format, and the index says it was
/// written by this bigsmall or an older one (a newer writer's file whose index happens to
/// read under these rules is still a newer format).
fn index_reads_as_ours(m: &[u8]) -> bool {
    let Ok((trailer, packed)) = packed_index(m) else {
        return false;
    };
    if trailer.index_json_len > MAX_INDEX_JSON {
        return false;
    }
    zstd::bulk::decompress(packed, trailer.index_json_len as usize)
        .ok()
        .filter(|json| json.len() as u64 == trailer.index_json_len)
        .and_then(|json| serde_json::from_slice::<Index>(&json).ok())
        .is_some_and(|index| {
            written_by_this_or_older(&index.created_by)
                && validate(&index, trailer.index_offset).is_ok()
        })
}

/// `created_by` names bigsmall at this build's version or an earlier one.
fn written_by_this_or_older(created_by: &str) -> bool {
    let version = |v: &str| -> Option<Vec<u64>> {
        v.split(['.', '-', '+'])
            .take(3)
            .map(|p| p.parse().ok())
            .collect()
    };
    let ours = version(env!("CARGO_PKG_VERSION"));
    created_by
        .strip_prefix("bigsmall ")
        .and_then(version)
        .is_some_and(|v| ours.is_some_and(|o| v <= o))
}

impl Container {
    pub fn open(path: &Path) -> Result<Container> {
        if path.is_dir() {
            return Err(Error::invalid(path, "is a directory, expected a .bs file"));
        }
        let file = crate::fsutil::open_regular(path)?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        let bad = |why: String| Error::container(path, why);
        if meta.len() < DATA_START + TRAILER_LEN as u64 {
            return Err(if meta.len() >= 8 {
                bad(format!(
                    "not a bigsmall container, or truncated ({} bytes)",
                    meta.len()
                ))
            } else {
                bad(format!("not a bigsmall container ({} bytes)", meta.len()))
            });
        }
        // SAFETY: read-only map; bigsmall never writes its inputs. Bytes changed under it are
        // only wrong data (every read is bounds-checked against the map's length), and another
        // process truncating it while mapped makes a read past its new end a SIGBUS, which
        // `fsutil::stop_on_sigbus` turns into a one-line error.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if &mmap[..8] != MAGIC {
            return Err(bad(if packed_index(&mmap).is_ok() {
                "damaged: its first bytes are not the container magic, but its trailer and index checksum read as a bigsmall container"
                    .into()
            } else {
                "not a bigsmall container (bad magic)".into()
            }));
        }
        let major = u16::from_le_bytes([mmap[8], mmap[9]]);
        let minor = u16::from_le_bytes([mmap[10], mmap[11]]);
        if major > MAJOR {
            // A flipped bit in the version reads as a newer format too. Where the whole rest
            // (trailer, index checksum, the index under this build's rules) reads as this
            // build's format, the version bytes are what is damaged; where only the trailer
            // does, the error says it may be either.
            if index_reads_as_ours(&mmap) {
                return Err(bad(format!(
                    "damaged: its version bytes read {major}.{minor}, but its trailer, index \
                     checksum and index read as format {MAJOR}.{MINOR}"
                )));
            }
            let hint = if packed_index(&mmap).is_ok() {
                "; or its version bytes are damaged, since its trailer and index checksum read as this build's format"
            } else {
                ""
            };
            return Err(Error::NewerFormat {
                path: path.to_path_buf(),
                major,
                minor,
                supported: format!("{MAJOR}.{MINOR}"),
                hint,
            });
        }
        if major == 0 {
            return Err(bad(format!(
                "unsupported container version {major}.{minor}"
            )));
        }
        if mmap[12..PREAMBLE_LEN].iter().any(|&b| b != 0) {
            return Err(bad(
                "reserved preamble bytes are set (no format version uses them): damaged or not ours"
                    .into(),
            ));
        }
        let (trailer, packed) = packed_index(&mmap).map_err(|why| bad(why.into()))?;
        if trailer.index_json_len > MAX_INDEX_JSON {
            return Err(bad(format!(
                "index claims {} bytes, more than the {} allowed",
                trailer.index_json_len, MAX_INDEX_JSON
            )));
        }
        let json = zstd::bulk::decompress(packed, trailer.index_json_len as usize)
            .map_err(|e| bad(format!("index does not decompress: {e}")))?;
        if json.len() as u64 != trailer.index_json_len {
            return Err(bad("index has the wrong length".into()));
        }
        // An index that passed its checksum and does not read is not damage: it is from a
        // newer minor format that added what this build does not know, or it was made so.
        let unreadable = |why: String| {
            if minor > MINOR {
                Error::NewerFormat {
                    path: path.to_path_buf(),
                    major,
                    minor,
                    supported: format!("{MAJOR}.{MINOR}"),
                    hint: "; its index uses what this build does not know",
                }
            } else {
                bad(why)
            }
        };
        let index: Index = serde_json::from_slice(&json)
            .map_err(|e| unreadable(format!("index is malformed: {e}")))?;
        // No bigsmall up to this one wrote a minor above this build's: from such a writer, the
        // version bytes are damaged (a damaged major is caught above).
        if minor > MINOR && written_by_this_or_older(&index.created_by) {
            return Err(bad(format!(
                "damaged: its version bytes read {major}.{minor}, but it was written by {}, \
                 which writes format {MAJOR}.{MINOR} at most",
                index.created_by
            )));
        }
        let kinds = validate(&index, trailer.index_offset).map_err(unreadable)?;
        // Unchanged patch tensors get virtual chunks of at least 1 MiB, and few enough that
        // claimed sizes cannot make this allocation large (about a million entries at most).
        let same_bytes: u64 = index
            .tensors
            .iter()
            .filter(|t| t.delta.as_ref().is_some_and(|d| d.same))
            .map(TensorEntry::raw_len)
            .fold(0u64, u64::saturating_add);
        let virtual_step = (CHUNK_BYTES as u64).max(same_bytes.div_ceil(1 << 20));
        if virtual_step > MAX_CHUNK_RAW {
            return Err(bad(
                "claims implausibly large tensors equal to its base".into()
            ));
        }
        let virtual_chunks = index
            .tensors
            .iter()
            .zip(&kinds)
            .map(|(t, k)| {
                t.delta.as_ref().filter(|d| d.same).map(|_| {
                    let step = (virtual_step as usize / k.width()).max(1) * k.width();
                    let mut v = Vec::new();
                    let mut s = 0u64;
                    while s < t.raw_len() {
                        let e = (s + step as u64).min(t.raw_len());
                        v.push(ChunkEntry {
                            offset: 0,
                            len: 0,
                            raw_len: e - s,
                            hash: 0,
                            codec: BASE_COPY,
                            delta: true,
                            skip: 0,
                            total: 0,
                        });
                        s = e;
                    }
                    v
                })
            })
            .collect();
        Ok(Container {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            path: path.to_path_buf(),
            mmap,
            index,
            trailer,
            version: (major, minor),
            kinds,
            virtual_chunks,
            base: None,
        })
    }

    /// True when this container is a patch that needs a base to decode.
    pub fn is_patch(&self) -> bool {
        self.index.base.is_some()
    }

    /// Attaches the base a patch is applied to, after checking that every base tensor the
    /// patch refers to is exactly the one it was made against (xxh3 of its bytes). The error
    /// names the first tensor that differs.
    pub fn attach_base(&mut self, base: std::sync::Arc<dyn BaseSource>) -> Result<()> {
        use rayon::prelude::*;
        if !self.is_patch() {
            return Err(Error::invalid(
                &self.path,
                "is not a patch; a base is only used with patches",
            ));
        }
        let refs: Vec<(usize, &TensorEntry)> = self
            .index
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.delta.is_some())
            .collect();
        // A base that cannot be read (a damaged .bs) is that error, not a wrong base.
        let bad: Vec<Option<String>> = refs
            .par_iter()
            .map(|(_, t)| -> Result<Option<String>> {
                let d = t.delta.as_ref().expect("filtered");
                let Some(bt) = base.find(&t.name) else {
                    return Ok(Some(format!("has no tensor '{}'", t.name)));
                };
                if bt.dtype != t.dtype || bt.shape != t.shape || bt.len != t.raw_len() {
                    return Ok(Some(format!(
                        "tensor '{}' is {} {:?} but the patch was made against {} {:?}",
                        t.name, bt.dtype, bt.shape, t.dtype, t.shape
                    )));
                }
                let h = crate::delta::base_hash(base.as_ref(), &t.name, bt.len)?;
                Ok((h != d.base_hash).then(|| {
                    format!(
                        "tensor '{}' differs from the base this patch was made against (expected md5 {})",
                        t.name, d.base_md5
                    )
                }))
            })
            .collect::<Result<_>>()?;
        // The tensors it does not refer to must be there too, and no others: the same base,
        // not one that merely shares the referenced tensors.
        let layout = self.index.base.as_ref().and_then(|b| {
            let have = base.tensors().len();
            if let Some(gone) = b.removed.iter().find(|n| base.find(n).is_none()) {
                Some(format!(
                    "has no tensor '{gone}', which the patch's base had (the fine-tune removed it)"
                ))
            } else if have != b.tensor_count {
                Some(format!(
                    "has {have} tensors; the patch was made against a base of {}",
                    b.tensor_count
                ))
            } else {
                None
            }
        });
        if let Some(why) = bad.into_iter().flatten().next().or(layout) {
            return Err(Error::invalid(
                base.path(),
                format!("wrong base for this patch: {why}"),
            ));
        }
        self.base = Some(base);
        Ok(())
    }

    /// The attached base's md5 receipts against the patch's: each referenced tensor's, then
    /// the whole-base fingerprint (every tensor's receipt). Hashes the whole base where its
    /// receipts are not stored, so it runs where md5 receipts are asked for (`--md5`, verify).
    pub fn check_base_receipts(&self) -> Result<()> {
        let (Some(base), Some(want)) = (&self.base, &self.index.base) else {
            return Ok(());
        };
        base.md5_all();
        for t in &self.index.tensors {
            if let Some(d) = &t.delta {
                // The base's bytes passed the patch's xxh3 check when it was attached: a
                // receipt that disagrees is damage in the patch's index.
                if base.md5(&t.name)? != d.base_md5 {
                    return Err(Error::Integrity {
                        path: self.path.clone(),
                        tensor: t.name.clone(),
                        what: "base md5 receipt".into(),
                    });
                }
            }
        }
        let got = crate::delta::fingerprint(base.as_ref())?;
        if got != want.fingerprint {
            return Err(Error::invalid(
                base.path(),
                format!(
                    "wrong base for this patch: its fingerprint (md5 of every tensor's receipt) is {got}, the patch's base had {}",
                    want.fingerprint
                ),
            ));
        }
        Ok(())
    }

    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }

    pub fn kind(&self, tensor: usize) -> ElemKind {
        self.kinds[tensor]
    }

    /// The tensor whose chunks hold this tensor's bytes (itself unless it is a duplicate).
    pub fn storage_of(&self, tensor: usize) -> usize {
        self.index.tensors[tensor].dup_of.unwrap_or(tensor)
    }

    /// Drops the mapped pages of a byte range that has been consumed (bounded resident memory).
    pub fn release(&self, start: u64, end: u64) {
        crate::fsutil::release_pages(&self.mmap, start as usize, end as usize);
    }

    pub fn blob(&self, c: &ChunkEntry) -> &[u8] {
        &self.mmap[c.offset as usize..(c.offset + c.len) as usize]
    }

    /// Decodes one chunk of a tensor into `out` (its raw length) and checks its hash.
    pub fn decode_chunk_into(&self, tensor: usize, chunk: usize, out: &mut [u8]) -> Result<()> {
        let t = &self.index.tensors[tensor];
        let s = self.storage_of(tensor);
        let c = &self.chunks(tensor)[chunk];
        let base_range = || -> Result<std::borrow::Cow<'_, [u8]>> {
            let base = self.base.as_ref().ok_or_else(|| self.needs_base())?;
            let start: u64 = self.chunks(tensor)[..chunk].iter().map(|c| c.raw_len).sum();
            // A duplicate decodes through the tensor that holds the data, against that
            // tensor's base.
            base.range(&self.index.tensors[s].name, start, start + c.raw_len)
        };
        if c.codec == BASE_COPY {
            // Verified as a whole when the base was attached.
            out.copy_from_slice(&base_range()?);
            if let Some(base) = &self.base {
                let start: u64 = self.chunks(tensor)[..chunk].iter().map(|c| c.raw_len).sum();
                base.release(&self.index.tensors[s].name, start, start + c.raw_len);
            }
            return Ok(());
        }
        let decoded = if self.blob(c).first() != Some(&c.codec) {
            // Reports (`stat`, `info`) name codecs from the index without reading blobs.
            Err(crate::codec::CodecError::Corrupt(
                "the blob's codec tag is not the one the index records",
            ))
        } else if c.grouped() {
            group_blob(self, self.kinds[s], c, out)
        } else {
            decode_chunk(self.kinds[s], self.blob(c), out)
        };
        decoded.map_err(|source| Error::Decode {
            path: self.path.clone(),
            tensor: t.name.clone(),
            chunk,
            source,
        })?;
        if c.delta {
            crate::delta::add_in_place(out, &base_range()?, self.kinds[s].width());
            if let Some(base) = &self.base {
                let start: u64 = self.chunks(tensor)[..chunk].iter().map(|c| c.raw_len).sum();
                base.release(&self.index.tensors[s].name, start, start + c.raw_len);
            }
        }
        if fast_hash(out) != c.hash {
            return Err(Error::Integrity {
                path: self.path.clone(),
                tensor: t.name.clone(),
                what: format!("chunk {chunk} checksum"),
            });
        }
        Ok(())
    }

    /// Chunks of a tensor (following duplicates; virtual base copies for unchanged patch
    /// tensors).
    pub fn chunks(&self, tensor: usize) -> &[ChunkEntry] {
        let s = self.storage_of(tensor);
        match &self.virtual_chunks[s] {
            Some(v) => v,
            None => &self.index.tensors[s].chunks,
        }
    }

    fn needs_base(&self) -> Error {
        Error::invalid(
            &self.path,
            "is a patch: give its base with --base BASE (or use `bigsmall apply BASE PATCH`)",
        )
    }

    /// Errors unless the container can be decoded on its own or has its base attached.
    pub fn check_decodable(&self) -> Result<()> {
        if self.is_patch() && self.base.is_none() {
            return Err(self.needs_base());
        }
        Ok(())
    }

    /// Decodes a whole tensor (all cores).
    pub fn tensor_bytes(&self, tensor: usize) -> Result<Vec<u8>> {
        use rayon::prelude::*;
        let t = &self.index.tensors[tensor];
        let mut out = vec![0u8; t.raw_len() as usize];
        let chunks = self.chunks(tensor);
        let mut slices = Vec::with_capacity(chunks.len());
        let mut rest = &mut out[..];
        for c in chunks {
            let (a, b) = rest.split_at_mut(c.raw_len as usize);
            slices.push(a);
            rest = b;
        }
        slices
            .into_par_iter()
            .enumerate()
            .try_for_each(|(i, s)| self.decode_chunk_into(tensor, i, s))?;
        Ok(out)
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.index.tensors.iter().position(|t| t.name == name)
    }

    /// Total raw bytes of the tensors (the source's data section).
    pub fn raw_data_len(&self) -> u64 {
        self.index.tensors.iter().map(TensorEntry::raw_len).sum()
    }
}

/// Decodes this chunk's part of a shared group blob. Recently decoded blobs are kept per thread:
/// every member needs its whole blob, and members of several groups alternate in tensor order.
fn group_blob(
    c: &Container,
    kind: ElemKind,
    ch: &ChunkEntry,
    out: &mut [u8],
) -> std::result::Result<(), crate::codec::CodecError> {
    use std::cell::RefCell;
    // Enough blobs for the groups of several layers; bounded in bytes per thread.
    const KEEP: usize = 64;
    const CACHE_BYTES: usize = 16 << 20;
    type Cache = Vec<((u64, u64), Vec<u8>)>;
    // The key holds the container and blob; members of one blob share a dtype (validated).
    thread_local! {
        static CACHE: RefCell<Cache> = const { RefCell::new(Vec::new()) };
    }
    let key = (c.id, ch.offset);
    let part = ch.skip as usize..(ch.skip + ch.raw_len) as usize;
    CACHE.with_borrow_mut(|cache| {
        if let Some(i) = cache
            .iter()
            .position(|(k, b)| *k == key && b.len() == ch.total as usize)
        {
            let hit = cache.remove(i);
            out.copy_from_slice(&hit.1[part.clone()]);
            cache.push(hit);
            return Ok(());
        }
        let held: usize = cache.iter().map(|(_, b)| b.len()).sum();
        let mut buf = if cache.len() >= KEEP || held + ch.total as usize > CACHE_BYTES {
            cache.remove(0).1
        } else {
            Vec::new()
        };
        buf.clear();
        buf.resize(ch.total as usize, 0);
        decode_chunk(kind, c.blob(ch), &mut buf)?;
        out.copy_from_slice(&buf[part]);
        cache.push((key, buf));
        Ok(())
    })
}

/// Checks every number in the index against the file and against itself; returns each
/// tensor's element kind. Errors are sentences about the file.
fn validate(index: &Index, data_end: u64) -> std::result::Result<Vec<ElemKind>, String> {
    if index.format != "bigsmall" {
        return Err(format!("index format is '{}', not bigsmall", index.format));
    }
    if index.source.kind != "safetensors" {
        return Err(format!("unknown source kind '{}'", index.source.kind));
    }
    let header_len = index.source.header.len() as u64;
    let mut expect_start = 0u64;
    let mut kinds = Vec::with_capacity(index.tensors.len());
    let mut names = std::collections::HashSet::new();
    for (i, t) in index.tensors.iter().enumerate() {
        let dtype = parse_dtype(&t.dtype)
            .ok_or_else(|| format!("tensor '{}' has unknown dtype '{}'", t.name, t.dtype))?;
        if !names.insert(t.name.as_str()) {
            return Err(format!("tensor '{}' appears twice in the index", t.name));
        }
        let bits = t
            .shape
            .iter()
            .try_fold(dtype.bitsize() as u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor '{}' has an overflowing shape", t.name))?;
        let [s, e] = t.offsets;
        if s != expect_start || e < s || bits % 8 != 0 || e - s != bits / 8 {
            return Err(format!(
                "tensor '{}' has offsets inconsistent with its shape and neighbours",
                t.name
            ));
        }
        expect_start = e;
        let same = t.delta.as_ref().is_some_and(|d| d.same);
        if t.delta.is_some() && index.base.is_none() {
            return Err(format!(
                "tensor '{}' refers to a base but the file names none",
                t.name
            ));
        }
        if t.chunks.iter().any(|c| c.delta) && t.delta.is_none() {
            return Err(format!(
                "tensor '{}' has delta chunks without a base reference",
                t.name
            ));
        }
        if same {
            if !t.chunks.is_empty() || t.dup_of.is_some() {
                return Err(format!(
                    "tensor '{}' equals its base but stores data",
                    t.name
                ));
            }
        } else if let Some(d) = t.dup_of {
            let ok = d < i
                && index.tensors[d].dup_of.is_none()
                && index.tensors[d].raw_len() == t.raw_len()
                && index.tensors[d].md5 == t.md5
                && t.chunks.is_empty();
            if !ok {
                return Err(format!(
                    "tensor '{}' has an invalid duplicate reference",
                    t.name
                ));
            }
        } else {
            let mut sum = 0u64;
            let w = elem_kind(dtype).width() as u64;
            for c in &t.chunks {
                let end = c.offset.checked_add(c.len);
                if c.offset < DATA_START || end.is_none_or(|e| e > data_end) || c.len == 0 {
                    return Err(format!(
                        "tensor '{}' has a chunk outside the data section (truncated or damaged)",
                        t.name
                    ));
                }
                if c.raw_len == 0 || c.raw_len > MAX_CHUNK_RAW || c.raw_len % w != 0 {
                    return Err(format!(
                        "tensor '{}' has an impossible chunk length",
                        t.name
                    ));
                }
                // Said here rather than when the chunk is decoded: a codec of a newer minor
                // format is a reason to upgrade, not damage.
                if crate::codec::tag::name(c.codec) == "unknown" {
                    return Err(format!(
                        "tensor '{}' has a chunk of codec {}, which this build does not know",
                        t.name, c.codec
                    ));
                }
                if (c.skip > 0 && !c.grouped())
                    || c.grouped()
                        && (c.delta
                            || c.total > MAX_GROUP_BLOB
                            || c.total % w != 0
                            || c.skip % w != 0
                            || c.skip.checked_add(c.raw_len).is_none_or(|e| e > c.total))
                {
                    return Err(format!(
                        "tensor '{}' has an impossible grouped chunk",
                        t.name
                    ));
                }
                sum += c.raw_len;
            }
            if sum != t.raw_len() {
                return Err(format!(
                    "tensor '{}' chunks cover {} bytes, expected {}",
                    t.name,
                    sum,
                    t.raw_len()
                ));
            }
        }
        if let Some(d) = &t.delta {
            if d.base_md5.len() != 32 || !d.base_md5.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("tensor '{}' has a malformed base receipt", t.name));
            }
        }
        if t.md5.len() != 32 || !t.md5.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("tensor '{}' has a malformed md5 receipt", t.name));
        }
        kinds.push(elem_kind(dtype));
    }
    check_header(index)?;
    // A tensor's own blobs come in file order; a shared group blob is referenced by each of
    // its members, who must agree about it. No two distinct blobs overlap.
    let mut last_end = 0u64;
    // Shared blob offset -> (len, total, dtype, its members' (skip, raw_len)).
    type Shared<'a> = (u64, u64, &'a str, Vec<(u64, u64)>);
    let mut shared: std::collections::HashMap<u64, Shared<'_>> = Default::default();
    let mut spans = Vec::new();
    for t in index.tensors.iter() {
        for c in &t.chunks {
            if c.grouped() {
                let e = shared.entry(c.offset).or_insert_with(|| {
                    spans.push((c.offset, c.len));
                    (c.len, c.total, t.dtype.as_str(), Vec::new())
                });
                if (e.0, e.1, e.2) != (c.len, c.total, t.dtype.as_str()) {
                    return Err(format!(
                        "tensor '{}' disagrees with another about a shared blob",
                        t.name
                    ));
                }
                e.3.push((c.skip, c.raw_len));
                continue;
            }
            if c.offset < last_end {
                return Err(format!(
                    "tensor '{}' has a chunk overlapping another",
                    t.name
                ));
            }
            last_end = c.offset + c.len;
            spans.push((c.offset, c.len));
        }
    }
    // A shared blob's members tile it exactly, so decoding it serves each byte once.
    for (_, total, _, parts) in shared.values_mut() {
        parts.sort_unstable();
        let mut at = 0;
        for &(skip, len) in parts.iter() {
            if skip != at {
                return Err("a shared group blob is not tiled by its members".to_string());
            }
            at += len;
        }
        if at != *total {
            return Err("a shared group blob is not tiled by its members".to_string());
        }
    }
    if !shared.is_empty() {
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err("a shared group blob overlaps another chunk".to_string());
        }
    }
    let expect_size = 8 + header_len + expect_start;
    if index.source.file_size != expect_size {
        return Err("index source size disagrees with its tensors".to_string());
    }
    Ok(kinds)
}

/// The stored safetensors header must describe exactly the tensors of the index, so that a
/// decompressed file is a valid safetensors file whatever the index says.
fn check_header(index: &Index) -> std::result::Result<(), String> {
    // The safetensors crate's own limit: a longer header would decompress to a file nothing
    // can read.
    const MAX_HEADER: usize = 100_000_000;
    if index.source.header.len() > MAX_HEADER {
        return Err("stored safetensors header is longer than safetensors allows".into());
    }
    let meta: safetensors::tensor::Metadata = serde_json::from_str(&index.source.header)
        .map_err(|e| format!("stored safetensors header is invalid: {e}"))?;
    if meta.tensors().len() != index.tensors.len() {
        return Err("stored safetensors header disagrees with the index".into());
    }
    for t in &index.tensors {
        let info = meta.info(&t.name).ok_or_else(|| {
            format!(
                "stored safetensors header disagrees with the index: no tensor '{}'",
                t.name
            )
        })?;
        let same = format!("{:?}", info.dtype) == t.dtype
            && info
                .shape
                .iter()
                .map(|&d| d as u64)
                .eq(t.shape.iter().copied())
            && [info.data_offsets.0 as u64, info.data_offsets.1 as u64] == t.offsets;
        if !same {
            return Err(format!(
                "stored safetensors header disagrees with the index at tensor '{}'",
                t.name
            ));
        }
    }
    Ok(())
}
