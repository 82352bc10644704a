//! Grouped streams (`compress --group-streams`): small tensors that hold the same weight in
//! every layer (norm and bias chains, small GQA k/v projections, MoE routers) are coded as one
//! stream per group — one set of tables instead of one per tensor — when that measures
//! smaller. A group is the tensors whose names agree once the layer index is taken out, with
//! the same dtype.
//!
//! A group's members are concatenated in tensor order and cut into blobs of whole members.
//! Each member keeps one chunk entry pointing at its blob with its place in it (`skip`,
//! `total`), so every reader decodes it like any other chunk. Both codings are measured; the
//! grouped one is kept only when it is smaller with the index cost of its entries counted, and
//! only after its blobs decode back to the exact bytes. Every decision is recorded in the
//! index.

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::codec::{decodes_to, encode_chunk, Effort, ElemKind};
use crate::error::Result;
use crate::format::writer::ContainerWriter;
use crate::format::{fast_hash, ChunkEntry, GroupInfo};
use crate::model::role::layer_key;
use crate::model::safetensors::{dtype_name, SafetensorsFile};

/// Largest member: beyond this a tensor's own tables cost well under 0.1% and grouping only
/// makes single-tensor reads decode more.
pub const MEMBER_MAX: usize = 256 << 10;
/// Raw bytes per shared blob (whole members); readers accept up to `format::MAX_GROUP_BLOB`.
pub const BLOB_MAX: usize = 1 << 20;
const _: () = assert!(BLOB_MAX as u64 <= crate::format::MAX_GROUP_BLOB);
/// What a grouped member's entry adds to the index (two fields, after zstd), charged against
/// the grouped coding so the index cannot eat the gain.
const ENTRY_COST: u64 = 8;

/// The grouped streams of one file, decided and coded, waiting to be written.
#[derive(Default)]
pub struct Groups {
    /// Every candidate group with its measurement and decision (for the report).
    pub infos: Vec<GroupInfo>,
    /// The decisions the index records: all of them, or only the grouped ones when recording
    /// the rest would cost more than grouping saved (the file is never larger for the flag).
    pub recorded: Vec<GroupInfo>,
    /// The md5 receipt of each grouped tensor (`None`: coded on its own).
    md5: Vec<Option<String>>,
    blobs: Vec<Blob>,
}

struct Blob {
    coded: Vec<u8>,
    total: u64,
    /// (tensor, skip, raw_len, xxh3 of its bytes)
    members: Vec<(usize, u64, u64, u64)>,
}

impl Groups {
    /// The md5 receipt of tensor `i` when it is a grouped member.
    pub fn member_md5(&self, i: usize) -> Option<&String> {
        self.md5.get(i).and_then(Option::as_ref)
    }

    /// Raw bytes of the grouped tensors.
    pub fn raw_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.total).sum()
    }

    /// Writes the blobs; returns each member's chunk entry.
    pub fn write(&self, w: &mut ContainerWriter) -> Result<Vec<(usize, ChunkEntry)>> {
        let mut out = Vec::new();
        for b in &self.blobs {
            let offset = w.write_blob(&b.coded)?;
            for &(tensor, skip, raw_len, hash) in &b.members {
                out.push((
                    tensor,
                    ChunkEntry {
                        offset,
                        len: b.coded.len() as u64,
                        raw_len,
                        hash,
                        codec: b.coded[0],
                        delta: false,
                        skip,
                        total: b.total,
                    },
                ));
            }
        }
        Ok(out)
    }
}

/// Finds the groups among the `eligible` tensors, codes each both ways and keeps the grouped
/// coding where it wins.
pub fn plan(
    src: &SafetensorsFile,
    kinds: &[ElemKind],
    dup: &[Option<usize>],
    eligible: impl Fn(usize) -> bool + Sync,
    effort: Effort,
) -> Groups {
    let mut candidates: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, t) in src.tensors.iter().enumerate() {
        if dup[i].is_some() || t.is_empty() || t.len() > MEMBER_MAX || !eligible(i) {
            continue;
        }
        if let Some(key) = layer_key(&t.name) {
            candidates
                .entry((key, dtype_name(t.dtype)))
                .or_default()
                .push(i);
        }
    }
    candidates.retain(|_, members| members.len() >= 2);
    let decided: Vec<(GroupInfo, Option<Vec<Blob>>)> = candidates
        .into_par_iter()
        .map(|((key, dtype), members)| {
            let kind = kinds[members[0]];
            let bytes = |i: usize| src.tensor_bytes(&src.tensors[i]);
            let separate: u64 = members
                .par_iter()
                .map(|&i| encode_chunk(kind, bytes(i), effort).len() as u64)
                .sum();
            // Whole members per blob, up to BLOB_MAX raw bytes.
            let mut cuts: Vec<Vec<usize>> = vec![Vec::new()];
            let mut size = 0;
            for &i in &members {
                let len = src.tensors[i].len();
                if size + len > BLOB_MAX && !cuts.last().expect("one").is_empty() {
                    cuts.push(Vec::new());
                    size = 0;
                }
                cuts.last_mut().expect("one").push(i);
                size += len;
            }
            let blobs: Option<Vec<Blob>> = cuts
                .par_iter()
                .map(|part| {
                    let mut joined = Vec::new();
                    let mut placed = Vec::with_capacity(part.len());
                    for &i in part {
                        let b = bytes(i);
                        placed.push((i, joined.len() as u64, b.len() as u64, fast_hash(b)));
                        joined.extend_from_slice(b);
                    }
                    let coded = encode_chunk(kind, &joined, effort);
                    // The bit-exact gate: a blob that does not decode back is not used.
                    decodes_to(kind, &coded, &joined).then_some(Blob {
                        coded,
                        total: joined.len() as u64,
                        members: placed,
                    })
                })
                .collect();
            let grouped_bytes: u64 = blobs
                .as_ref()
                .map_or(u64::MAX, |b| b.iter().map(|b| b.coded.len() as u64).sum());
            let grouped =
                grouped_bytes.saturating_add(ENTRY_COST * members.len() as u64) < separate;
            let info = GroupInfo {
                key,
                dtype,
                members: members.len(),
                raw_bytes: members.iter().map(|&i| src.tensors[i].len() as u64).sum(),
                separate_bytes: separate,
                grouped_bytes: if grouped_bytes == u64::MAX {
                    0
                } else {
                    grouped_bytes
                },
                grouped,
            };
            (info, blobs.filter(|_| grouped))
        })
        .collect();
    let mut groups = Groups {
        md5: vec![None; src.tensors.len()],
        ..Default::default()
    };
    let gain: i64 = decided
        .iter()
        .filter(|(g, _)| g.grouped)
        .map(|(g, _)| {
            g.separate_bytes as i64
                - g.grouped_bytes as i64
                - (ENTRY_COST * g.members as u64) as i64
        })
        .sum();
    let all: Vec<GroupInfo> = decided.iter().map(|(g, _)| g.clone()).collect();
    let kept: Vec<GroupInfo> = all.iter().filter(|g| g.grouped).cloned().collect();
    let gain = gain - PADDING_SLACK;
    groups.recorded = if gain > record_cost(&all) {
        all
    } else if gain > record_cost(&kept) {
        kept
    } else {
        Vec::new()
    };
    for (mut info, blobs) in decided {
        if groups.recorded.is_empty() {
            // Not even the record of the grouped ones would be paid for.
            info.grouped = false;
        } else {
            for b in blobs.into_iter().flatten() {
                for &(i, ..) in &b.members {
                    groups.md5[i] = Some(crate::store::md5_hex(src.tensor_bytes(&src.tensors[i])));
                }
                groups.blobs.push(b);
            }
        }
        groups.infos.push(info);
    }
    groups
}

/// Index bytes the record of these decisions costs (compressed like the index, plus the
/// field name and a margin for the compressor's framing).
fn record_cost(infos: &[GroupInfo]) -> i64 {
    if infos.is_empty() {
        return 0;
    }
    let json = serde_json::to_vec(infos).expect("group infos serialise");
    zstd::bulk::compress(&json, crate::format::INDEX_ZSTD_LEVEL).map_or(json.len(), |z| z.len())
        as i64
        + 32
}

/// Taken from the gain too: moving blobs shifts where the next RAW blob lands, and its
/// alignment padding can grow by up to 63 bytes.
const PADDING_SLACK: i64 = 64;
