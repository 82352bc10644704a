//! The `.bs` container: preamble, coded chunk blobs, a zstd-compressed JSON index, and a fixed
//! trailer that locates and checksums the index. Byte-level spec: `docs/FORMAT.md`.
//!
//! ```text
//! 0      "BIGSMALL" | u16 major | u16 minor | u32 flags (0)         16-byte preamble
//! 64     blobs: one per chunk, in tensor order (raw blobs placed so their payload is
//!        64-byte aligned; coded blobs packed)
//! I      index: zstd frame of the JSON `Index`
//! end-40 trailer: u64 index_offset | u64 index_len | u64 index_json_len |
//!        u64 xxh3(index bytes) | "BSINDEX1"
//! ```
//! The writer streams blobs as they are coded and writes the index last, so it never holds the
//! model; a reader maps the file, reads the trailer, the index, then only the blobs it needs.

pub mod arena;
pub mod reader;
pub mod writer;

use serde::{Deserialize, Serialize};

use crate::codec::Effort;

pub const MAGIC: &[u8; 8] = b"BIGSMALL";
pub const TRAILER_MAGIC: &[u8; 8] = b"BSINDEX1";
pub const MAJOR: u16 = 1;
/// 1.1 added the speed mode, PALETTE16_NIBBLES and grouped streams (optional index fields);
/// 1.2 SPARSE16; 1.3 PAIRS16 and PAIRS8.
pub const MINOR: u16 = 3;
pub const PREAMBLE_LEN: usize = 16;
pub const DATA_START: u64 = 64;
pub const TRAILER_LEN: usize = 40;
pub const ALIGN: u64 = 64;
/// Raw bytes per chunk (rounded down to whole elements). 1 MiB: big enough that per-chunk
/// tables cost < 0.05%, small enough for many-core decode and small streaming reads.
pub const CHUNK_BYTES: usize = 1 << 20;
/// zstd level of the index. Level 19 took 70 ms on a 106 KB index (seconds on a large model's)
/// to save 20% of a part that is 0.01% of the file; 9 is instant.
pub const INDEX_ZSTD_LEVEL: i32 = 9;
/// Upper bound on an index we agree to inflate: far above any real model (a 100k-tensor
/// checkpoint needs ~30 MB), far below what a lying length could make us allocate.
pub const MAX_INDEX_JSON: u64 = 1 << 30;

/// The index: everything about the container except the blob bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    /// Always "bigsmall".
    pub format: String,
    pub created_by: String,
    pub mode: Effort,
    /// Raw bytes per chunk used when the file was written.
    pub chunk_bytes: u64,
    pub source: Source,
    pub tensors: Vec<TensorEntry>,
    /// Present when this container is a patch against a base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
    /// `--group-streams`: every candidate group and what was measured for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupInfo>,
}

/// A set of small same-role tensors across layers (same name once the layer index is taken
/// out, same dtype) considered for coding as one stream, and the measured decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The shared name with the layer index replaced by `*`.
    pub key: String,
    pub dtype: String,
    pub members: usize,
    pub raw_bytes: u64,
    /// Blob bytes when each member is coded on its own.
    pub separate_bytes: u64,
    /// Blob bytes when the members are coded as one stream.
    pub grouped_bytes: u64,
    /// Whether the grouped coding was kept (it measured smaller, index cost included).
    pub grouped: bool,
}

impl Index {
    /// Tensors stored once for several names (`dup_of`).
    pub fn duplicates(&self) -> usize {
        self.tensors.iter().filter(|t| t.dup_of.is_some()).count()
    }
}

/// The base a patch was made against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseRef {
    /// md5 over `name \t md5 \n` of every base tensor, sorted by name.
    pub fingerprint: String,
    /// Where the base was read from when the patch was made (informational).
    pub made_from: String,
    pub tensor_count: usize,
    /// Base tensors the fine-tune does not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// How a patch tensor relates to the base tensor of the same name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeltaRef {
    /// The base tensor's md5 receipt.
    pub base_md5: String,
    /// xxh3-64 of the base tensor's bytes: checked before a patch is applied.
    pub base_hash: u64,
    /// The tensor equals the base tensor: no chunks are stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub same: bool,
}

/// What the container was made from, enough to rebuild it byte for byte.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Source {
    /// "safetensors".
    pub kind: String,
    /// File name of the source (no directory).
    pub file_name: String,
    pub file_size: u64,
    /// The source's JSON header exactly as stored, padding included.
    pub header: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    /// safetensors dtype name.
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Byte range in the source's data section.
    pub offsets: [u64; 2],
    /// md5 of the raw bytes, hex: the receipt `verify` checks.
    pub md5: String,
    /// Index of an earlier tensor with identical bytes; this one then has no chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dup_of: Option<usize>,
    /// In a patch: the base tensor of the same name this one is stored against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaRef>,
    #[serde(default)]
    pub chunks: Vec<ChunkEntry>,
}

impl TensorEntry {
    pub fn raw_len(&self) -> u64 {
        self.offsets[1] - self.offsets[0]
    }

    /// Bytes this tensor occupies in the container (blobs only; a shared group blob is
    /// attributed to its members in proportion to their raw bytes, so shares add up).
    pub fn stored_len(&self) -> u64 {
        self.chunks.iter().map(ChunkEntry::stored_share).sum()
    }
}

/// One independently decodable piece of a tensor.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// Blob offset in the container.
    #[serde(rename = "o")]
    pub offset: u64,
    /// Blob length.
    #[serde(rename = "l")]
    pub len: u64,
    /// Raw (decoded) length.
    #[serde(rename = "n")]
    pub raw_len: u64,
    /// xxh3-64 of the raw bytes: checked on every decode.
    #[serde(rename = "h")]
    pub hash: u64,
    /// Codec tag (the blob's first byte), for reports without reading blobs.
    #[serde(rename = "c")]
    pub codec: u8,
    /// The blob holds `fine − base` for this byte range (element-wise, wrapping) rather than
    /// the bytes themselves.
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
    /// Grouped streams: the blob decodes to `total` bytes shared by several tensors, of which
    /// this chunk is `raw_len` bytes starting at `skip`. Zero when the blob is this chunk's own.
    #[serde(rename = "s", default, skip_serializing_if = "is_zero")]
    pub skip: u64,
    #[serde(rename = "t", default, skip_serializing_if = "is_zero")]
    pub total: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl ChunkEntry {
    /// Part of a shared group blob?
    pub fn grouped(&self) -> bool {
        self.total > 0
    }

    /// This chunk's part of its blob's bytes (see `TensorEntry::stored_len`).
    pub fn stored_share(&self) -> u64 {
        if !self.grouped() {
            return self.len;
        }
        let at = |x: u64| (u128::from(self.len) * u128::from(x) / u128::from(self.total)) as u64;
        at(self.skip.saturating_add(self.raw_len).min(self.total)) - at(self.skip.min(self.total))
    }
}

/// Largest shared group blob a reader accepts (raw bytes). The writer makes them at most 1 MiB
/// (`layout::groups::BLOB_MAX`); the cap bounds what a lying index can make a reader decode.
pub const MAX_GROUP_BLOB: u64 = 4 << 20;

/// Codec value of the virtual chunks of a tensor that equals its base: copied, not decoded.
pub const BASE_COPY: u8 = 255;

/// The fixed-size end of every container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub index_offset: u64,
    pub index_len: u64,
    pub index_json_len: u64,
    pub index_hash: u64,
}

impl Trailer {
    pub fn to_bytes(self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[0..8].copy_from_slice(&self.index_offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.index_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.index_json_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.index_hash.to_le_bytes());
        b[32..40].copy_from_slice(TRAILER_MAGIC);
        b
    }

    /// Parses a trailer; `None` if the magic is wrong.
    pub fn from_bytes(b: &[u8; TRAILER_LEN]) -> Option<Trailer> {
        if &b[32..40] != TRAILER_MAGIC {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(Trailer {
            index_offset: u(0),
            index_len: u(8),
            index_json_len: u(16),
            index_hash: u(24),
        })
    }
}

pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..8].copy_from_slice(MAGIC);
    p[8..10].copy_from_slice(&MAJOR.to_le_bytes());
    p[10..12].copy_from_slice(&MINOR.to_le_bytes());
    p
}

/// True when the file starts with the container magic, or ends with a container's trailer
/// (a container whose first bytes are damaged is still one: damage, not a wrong input).
/// Anything unreadable is not one.
pub fn is_container(path: &std::path::Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    // Not a file (a pipe, whose open would block without a writer): not a container.
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut magic = [0u8; 8];
    if f.read_exact(&mut magic).is_ok() && &magic == MAGIC {
        return true;
    }
    let mut trailer = [0u8; TRAILER_LEN];
    f.seek(SeekFrom::End(-(TRAILER_LEN as i64)))
        .and_then(|_| f.read_exact(&mut trailer))
        .is_ok_and(|_| Trailer::from_bytes(&trailer).is_some())
}

/// Hash used for chunk checks and the index checksum.
pub fn fast_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}
