//! `reshard`: split, join or rebalance `.bs` containers along transformer-layer boundaries by
//! copying their blobs; nothing is re-encoded.
//!
//! Tensors are grouped by layer (`model::role::layer_index`). The tensors without a layer
//! (embeddings, lm_head, final norm) form one group that comes first, so it always lands in
//! shard 0; the layers follow in ascending order. A layout cuts that sequence into contiguous
//! runs, so a layer is never split across shards. Each output shard is an ordinary container
//! whose `source` describes a synthesized safetensors file (`model-00001-of-00004.safetensors`),
//! so `decompress` of the output directory gives an HF-style sharded model.
//!
//! The output directory's index also records `origins`: the safetensors files the inputs were
//! compressed from. A shard that ends up holding exactly the tensors of one of them gets that
//! file's header, tensor order and name (in its index), which is what makes split-then-join
//! byte-identical down to the container.
//!
//! Nothing appears under the output name until every shard has been read back from disk and
//! every chunk decoded against its checksum (with `check_md5`, every tensor against its md5
//! receipt as well). Inputs are only read. This module holds no CLI and prints nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::integrity::md5x::Md5;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::analysis::counted;
use crate::error::{Error, Result};
use crate::format::reader::Container;
use crate::format::writer::ContainerWriter;
use crate::format::{ChunkEntry, Index, Source, TensorEntry};
use crate::model::role::layer_index;
use crate::progress::Progress;
use crate::store::hex;
use crate::store_dir::{
    copy_side_file, read_dir_index, DirIndex, DirTotals, Shard, StagedDir, DIR_INDEX,
};

/// Hugging Face's shard index. An input directory's copy names the old shard files, so it is
/// never carried; a multi-shard output gets a new one.
pub const HF_INDEX: &str = "model.safetensors.index.json";

/// Tensors shorter than this are never stored as duplicates by `compress`; re-linking
/// identical tensors follows the same rule so a join reproduces the container it split.
const DUP_MIN_BYTES: u64 = 64;

/// How the tensors are cut into shards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layout {
    /// Everything in one `model.bs`.
    Join,
    /// Exactly this many shards, the largest as small as the layer groups allow.
    Shards(usize),
    /// A new shard starts when the next layer group would take the current one past this many
    /// stored (blob) bytes; a group larger than that gets a shard of its own.
    MaxBytes(u64),
}

#[derive(Debug, Clone, Copy)]
pub struct ReshardOptions {
    pub layout: Layout,
    /// Replace an existing, non-empty output directory.
    pub overwrite: bool,
    /// Also recompute every output tensor's md5 and compare it with its receipt.
    pub check_md5: bool,
}

/// What a reshard did, measured.
#[derive(Debug, Clone, Serialize)]
pub struct ReshardReport {
    pub inputs: Vec<InputFile>,
    /// Sum of the input containers' file sizes.
    pub input_bytes: u64,
    pub output_dir: String,
    pub shards: Vec<OutputShard>,
    pub side_files: Vec<String>,
    pub tensors: usize,
    /// Decoded model bytes (the safetensors data sections the shards decompress to).
    pub raw_bytes: u64,
    /// Blob bytes copied into the output.
    pub bytes_copied: u64,
    /// Sum of the output containers' file sizes.
    pub output_bytes: u64,
    pub seconds: f64,
    /// `raw_bytes` per second, in MB (10^6 bytes).
    pub raw_mb_per_s: f64,
    /// `bytes_copied` per second, in MB.
    pub stored_mb_per_s: f64,
    /// Output tensors whose receipt (dtype, shape, md5, chunk checksums) was checked.
    pub verified_tensors: usize,
    pub md5_checked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputFile {
    pub file: String,
    pub bytes: u64,
    pub tensors: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputShard {
    /// The `.bs` file, relative to the output directory.
    pub file: String,
    /// The safetensors file it decompresses to (in a directory decompress).
    pub source: String,
    pub tensors: usize,
    pub bytes: u64,
    pub raw_bytes: u64,
    /// Lowest and highest layer index in the shard; absent when it holds no layer.
    pub layers: Option<[usize; 2]>,
    pub non_layer_tensors: usize,
    /// The shard holds exactly the tensors of a known original file and reuses its header.
    pub original_header: bool,
}

/// Cuts a sequence of group sizes into contiguous, non-empty runs (the shards), as ranges of
/// group indices. Group 0 therefore always lands in shard 0. With no groups, `Join` and
/// `MaxBytes` give one empty shard.
///
/// ```
/// use bigsmall::layout::reshard::{partition, Layout};
/// // The non-layer tensors (5 bytes stored), then three layers of 3: the best two shards.
/// assert_eq!(partition(&[5, 3, 3, 3], Layout::Shards(2)), Ok(vec![0..2, 2..4]));
/// assert_eq!(partition(&[5, 3, 3, 3], Layout::MaxBytes(6)), Ok(vec![0..1, 1..3, 3..4]));
/// ```
pub fn partition(sizes: &[u64], layout: Layout) -> std::result::Result<Vec<Range<usize>>, String> {
    let k = sizes.len();
    match layout {
        Layout::Join => Ok(std::iter::once(0..k).collect()),
        Layout::MaxBytes(0) => Err("the shard size must be above 0".into()),
        Layout::MaxBytes(cap) => {
            let mut parts = Vec::new();
            let (mut start, mut acc) = (0, 0u64);
            for (i, &s) in sizes.iter().enumerate() {
                if i > start && acc.saturating_add(s) > cap {
                    parts.push(start..i);
                    (start, acc) = (i, 0);
                }
                acc = acc.saturating_add(s);
            }
            parts.push(start..k);
            Ok(parts)
        }
        Layout::Shards(0) => Err("the number of shards must be at least 1".into()),
        Layout::Shards(n) if n > k => Err(format!(
            "only {k} groups of tensors; cannot make {n} shards"
        )),
        Layout::Shards(n) => {
            // The smallest cap that greedy packing fits into n runs is the optimum: any
            // packing into n runs under a cap also fits greedily into at most n.
            let runs_needed = |cap: u64| {
                let (mut runs, mut acc) = (1, 0u64);
                for &s in sizes {
                    if acc > 0 && acc.saturating_add(s) > cap {
                        runs += 1;
                        acc = 0;
                    }
                    acc = acc.saturating_add(s);
                }
                runs
            };
            let (mut lo, mut hi) = (
                sizes.iter().copied().max().unwrap_or(0),
                sizes.iter().fold(0u64, |a, &s| a.saturating_add(s)),
            );
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if runs_needed(mid) <= n {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            let cap = lo;
            // Greedy under the cap, except that a run is closed early once every remaining
            // group is needed to start a run of its own: exactly n runs come out.
            let mut parts = Vec::with_capacity(n);
            let (mut start, mut acc) = (0, 0u64);
            for (i, &s) in sizes.iter().enumerate() {
                let must_close = k - i == n - parts.len() - 1;
                if i > start && (must_close || acc.saturating_add(s) > cap) {
                    parts.push(start..i);
                    (start, acc) = (i, 0);
                }
                acc = acc.saturating_add(s);
            }
            parts.push(start..k);
            debug_assert_eq!(parts.len(), n);
            Ok(parts)
        }
    }
}

/// One input tensor: which container, which entry.
#[derive(Debug, Clone, Copy)]
struct Item {
    input: usize,
    tensor: usize,
}

/// The opened inputs, checked, plus what the output directory carries over.
struct Inputs {
    containers: Vec<Container>,
    /// Side files to copy: (input directory, relative path, its md5 receipt there if
    /// recorded), first occurrence of each name.
    side_files: Vec<(PathBuf, String, Option<String>)>,
    /// The safetensors files the inputs were compressed from, as far as known.
    origins: Vec<Source>,
}

#[derive(Serialize)]
struct DirIndexOut<'a> {
    #[serde(flatten)]
    index: &'a DirIndex,
    #[serde(skip_serializing_if = "<[Source]>::is_empty")]
    origins: &'a [Source],
}

fn same_source(a: &Source, b: &Source) -> bool {
    a.file_name == b.file_name && a.file_size == b.file_size && a.header == b.header
}

/// Two inputs may carry a side file of the same name only when it is the same file: the output
/// holds one, and taking either silently would give the other model's config to the tensors.
fn same_side_file(first: &Path, dir: &Path, rel: &str) -> Result<()> {
    let (a, b) = (first.join(rel), dir.join(rel));
    if crate::fsutil::same_bytes(&a, &b).map_err(|e| Error::io(&b, e))? {
        return Ok(());
    }
    Err(Error::invalid(
        &b,
        format!(
            "differs from {}; the output can carry only one side file of that name (are these inputs one model?)",
            a.display()
        ),
    ))
}

/// Opens and validates every input before anything is written: files as given, directories
/// through their `bigsmall.index.json`.
fn open_inputs(paths: &[PathBuf]) -> Result<Inputs> {
    // (container path, its directory records where it came from)
    let mut files: Vec<(PathBuf, bool)> = Vec::new();
    let mut side_files = Vec::new();
    // Side file name -> the input directory it is carried from.
    let mut side_names: HashMap<String, PathBuf> = HashMap::new();
    let mut origins: Vec<Source> = Vec::new();
    for p in paths {
        if !p.is_dir() {
            if p.is_file() && !crate::format::is_container(p) {
                return Err(Error::invalid(
                    p,
                    "is not a bigsmall container; reshard takes .bs files (compress a .safetensors first)",
                ));
            }
            files.push((p.clone(), false));
            continue;
        }
        let ipath = p.join(DIR_INDEX);
        if !ipath.is_file() {
            return Err(Error::invalid(
                p,
                "is a directory without bigsmall.index.json (give .bs files or a directory made by bigsmall)",
            ));
        }
        let idx = read_dir_index(p)?;
        let recorded: Vec<Source> = match idx.extra.get("origins") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                Error::container(&ipath, format!("malformed origins in directory index: {e}"))
            })?,
            None => Vec::new(),
        };
        for s in &idx.shards {
            let f = p.join(&s.file);
            crate::store_dir::missing_shard(&f)?;
            if !f.is_file() {
                return Err(Error::invalid(
                    &f,
                    format!("is listed in {} but not a file", ipath.display()),
                ));
            }
            files.push((f, !recorded.is_empty()));
        }
        // A shard swapped or replaced under its name would otherwise be copied into a fresh,
        // self-consistent index, and the wrong model would pass verify from then on.
        crate::store_dir::check_shards(p, &idx)?;
        // Side files gone or changed are damage, found before any work.
        crate::store_dir::check_side_files(p, &idx)?;
        for rel in &idx.side_files {
            if rel == HF_INDEX {
                continue;
            }
            match side_names.get(rel) {
                Some(first) => same_side_file(first, p, rel)?,
                None => {
                    side_names.insert(rel.clone(), p.clone());
                    side_files.push((p.clone(), rel.clone(), idx.side_file_md5.get(rel).cloned()));
                }
            }
        }
        origins.extend(recorded);
    }
    let mut containers = Vec::with_capacity(files.len());
    for (f, recorded) in &files {
        let c = Container::open(f)?;
        if c.is_patch() {
            return Err(Error::invalid(
                f,
                "is a patch against a base model: apply the patch first (bigsmall apply BASE PATCH), compress the result, then reshard it",
            ));
        }
        if c.index
            .tensors
            .iter()
            .any(|t| t.chunks.iter().any(|ch| ch.grouped()))
        {
            // A shared blob holds one weight of every layer: it cannot be split along layers
            // by copying.
            return Err(Error::invalid(
                f,
                "has grouped streams (compress --group-streams), which span layers: give every tensor its own chunks first (bigsmall transcode FILE OUT --mode balanced), then reshard",
            ));
        }
        if !recorded {
            origins.push(c.index.source.clone());
        }
        containers.push(c);
    }
    let mut unique: Vec<Source> = Vec::new();
    for o in origins {
        if !unique.iter().any(|u| same_source(u, &o)) {
            unique.push(o);
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, c) in containers.iter().enumerate() {
        for t in &c.index.tensors {
            if let Some(&j) = seen.get(t.name.as_str()) {
                let a = &containers[j].path;
                let twice = match (fs::canonicalize(a), fs::canonicalize(&c.path)) {
                    (Ok(x), Ok(y)) if x == y => " (the same file given twice)",
                    _ => "",
                };
                return Err(Error::invalid(
                    &c.path,
                    format!(
                        "tensor '{}' is also in {}{twice}; a tensor may come from one input only",
                        t.name,
                        a.display()
                    ),
                ));
            }
            seen.insert(&t.name, i);
        }
    }
    Ok(Inputs {
        containers,
        side_files,
        origins: unique,
    })
}

/// One tensor as a safetensors header describes it.
#[derive(Debug, Clone, Deserialize)]
struct HeaderTensor {
    #[serde(skip)]
    name: String,
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// A safetensors header read in its textual order: `__metadata__` entries as stored, tensors
/// sorted by data offset (ties, i.e. empty tensors, keep their textual order).
#[derive(Debug, Default)]
struct ParsedHeader {
    metadata: Option<Vec<(String, String)>>,
    tensors: Vec<HeaderTensor>,
}

impl<'de> Deserialize<'de> for ParsedHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct StrMap(Vec<(String, String)>);
        impl<'de> Deserialize<'de> for StrMap {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = StrMap;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a map of strings")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut m: A,
                    ) -> std::result::Result<StrMap, A::Error> {
                        let mut v = Vec::new();
                        while let Some(e) = m.next_entry::<String, String>()? {
                            v.push(e);
                        }
                        Ok(StrMap(v))
                    }
                }
                d.deserialize_map(V)
            }
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ParsedHeader;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a safetensors header")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<ParsedHeader, A::Error> {
                let mut h = ParsedHeader::default();
                while let Some(key) = m.next_key::<String>()? {
                    if key == "__metadata__" {
                        h.metadata = Some(m.next_value::<StrMap>()?.0);
                    } else {
                        let mut t: HeaderTensor = m.next_value()?;
                        t.name = key;
                        h.tensors.push(t);
                    }
                }
                h.tensors.sort_by_key(|t| t.data_offsets);
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

/// A safetensors header for `tensors` (with their new data offsets) in the layout the
/// reference writer uses: compact JSON, `__metadata__` first, tensors in data order, padded
/// with spaces to a multiple of 8 bytes.
fn synth_header(
    metadata: Option<&[(String, String)]>,
    tensors: &[(&TensorEntry, [u64; 2])],
) -> String {
    let mut h = String::from("{");
    if let Some(m) = metadata {
        h.push_str("\"__metadata__\":{");
        for (i, (k, v)) in m.iter().enumerate() {
            if i > 0 {
                h.push(',');
            }
            let _ = write!(h, "{}:{}", js(k), js(v));
        }
        h.push('}');
    }
    for (i, (t, [s, e])) in tensors.iter().enumerate() {
        if i > 0 || metadata.is_some() {
            h.push(',');
        }
        let _ = write!(
            h,
            "{}:{{\"dtype\":{},\"shape\":{},\"data_offsets\":[{s},{e}]}}",
            js(&t.name),
            js(&t.dtype),
            js(&t.shape)
        );
    }
    h.push('}');
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    h
}

/// JSON text of a plain value (a string, a shape): cannot fail.
fn js<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("plain values serialise")
}

/// One output shard, planned before anything is written.
struct ShardPlan {
    /// `.bs` file name in the output directory.
    file: String,
    /// The safetensors file name it decompresses to in a directory decompress.
    safetensors: String,
    /// Tensors in output order.
    items: Vec<Item>,
    source: Source,
    original_header: bool,
    layers: Option<[usize; 2]>,
    non_layer: usize,
}

/// The order of `origin`'s tensors when the shard holds exactly them (same names, dtypes and
/// shapes), so the shard can reuse the origin's header.
fn matches_origin(
    origin: &ParsedHeader,
    items: &[Item],
    containers: &[Container],
) -> Option<Vec<Item>> {
    if origin.tensors.len() != items.len() {
        return None;
    }
    let by_name: HashMap<&str, Item> = items
        .iter()
        .map(|&it| {
            (
                containers[it.input].index.tensors[it.tensor].name.as_str(),
                it,
            )
        })
        .collect();
    let mut order = Vec::with_capacity(items.len());
    let mut used = HashSet::with_capacity(items.len());
    let mut expect = 0u64;
    for h in &origin.tensors {
        // A name listed twice (duplicate JSON keys) would leave another tensor out.
        if !used.insert(h.name.as_str()) {
            return None;
        }
        let &it = by_name.get(h.name.as_str())?;
        let t = &containers[it.input].index.tensors[it.tensor];
        let [s, e] = h.data_offsets;
        if t.dtype != h.dtype || t.shape != h.shape || s != expect || e < s || e - s != t.raw_len()
        {
            return None;
        }
        expect = e;
        order.push(it);
    }
    Some(order)
}

fn plan_shards(inputs: &Inputs, layout: Layout) -> Result<Vec<ShardPlan>> {
    let containers = &inputs.containers;
    let first = &containers[0].path;
    // None (no layer) sorts before every layer: the non-layer group comes first.
    let mut groups: BTreeMap<Option<usize>, Vec<Item>> = BTreeMap::new();
    for (i, c) in containers.iter().enumerate() {
        for (t, te) in c.index.tensors.iter().enumerate() {
            groups.entry(layer_index(&te.name)).or_default().push(Item {
                input: i,
                tensor: t,
            });
        }
    }
    let groups: Vec<(Option<usize>, Vec<Item>)> = groups.into_iter().collect();
    let sizes: Vec<u64> = groups
        .iter()
        .map(|(_, items)| {
            items
                .iter()
                .map(|it| containers[it.input].index.tensors[it.tensor].stored_len())
                .sum()
        })
        .collect();
    if let Layout::Shards(n) = layout {
        if groups.is_empty() {
            return Err(Error::invalid(
                first,
                format!("has no tensors; cannot make {n} shards (--join or --size-gb make one)"),
            ));
        }
        if n > groups.len() {
            let layers = groups.iter().filter(|(l, _)| l.is_some()).count();
            let extra = if layers < groups.len() {
                " plus the non-layer tensors"
            } else {
                ""
            };
            return Err(Error::invalid(
                first,
                format!(
                    "only {} ({}{extra}); cannot make {n} shards",
                    counted(groups.len(), "layer group"),
                    counted(layers, "layer")
                ),
            ));
        }
    }
    let parts = partition(&sizes, layout).map_err(|why| Error::invalid(first, why))?;
    let metadata = parse(&containers[0].index.source.header).and_then(|h| h.metadata);
    let origins: Vec<(Source, ParsedHeader)> = inputs
        .origins
        .iter()
        .chain(containers.iter().map(|c| &c.index.source))
        .filter_map(|s| parse(&s.header).map(|h| (s.clone(), h)))
        .collect();
    let n = parts.len();
    let mut plans = Vec::with_capacity(n);
    for (k, range) in parts.into_iter().enumerate() {
        let stem = if n == 1 {
            "model".to_string()
        } else {
            format!("model-{:05}-of-{n:05}", k + 1)
        };
        let items: Vec<Item> = groups[range.clone()]
            .iter()
            .flat_map(|(_, items)| items.iter().copied())
            .collect();
        let layer_ids: Vec<usize> = groups[range.clone()]
            .iter()
            .filter_map(|(l, _)| *l)
            .collect();
        let non_layer = groups[range]
            .iter()
            .filter(|(l, _)| l.is_none())
            .map(|(_, items)| items.len())
            .sum();
        let file_name = format!("{stem}.safetensors");
        let reused = origins.iter().find_map(|(s, h)| {
            let order = matches_origin(h, &items, containers)?;
            let data: u64 = order
                .iter()
                .map(|it| containers[it.input].index.tensors[it.tensor].raw_len())
                .sum();
            (s.file_size == 8 + s.header.len() as u64 + data).then(|| (s.clone(), order))
        });
        let (items, source, original_header) = match reused {
            Some((source, order)) => (order, source, true),
            None => {
                let mut at = 0u64;
                let placed: Vec<(&TensorEntry, [u64; 2])> = items
                    .iter()
                    .map(|it| {
                        let t = &containers[it.input].index.tensors[it.tensor];
                        let r = [at, at + t.raw_len()];
                        at += t.raw_len();
                        (t, r)
                    })
                    .collect();
                let header = synth_header(metadata.as_deref(), &placed);
                let source = Source {
                    kind: "safetensors".into(),
                    file_name: file_name.clone(),
                    file_size: 8 + header.len() as u64 + at,
                    header,
                };
                (items, source, false)
            }
        };
        plans.push(ShardPlan {
            file: format!("{stem}.bs"),
            safetensors: file_name,
            items,
            source,
            original_header,
            layers: layer_ids
                .first()
                .zip(layer_ids.last())
                .map(|(&a, &b)| [a, b]),
            non_layer,
        });
    }
    Ok(plans)
}

fn parse(header: &str) -> Option<ParsedHeader> {
    serde_json::from_str(header).ok()
}

/// Mapped bytes read since the last release, released in batches of this size.
const RELEASE_BATCH: u64 = 16 << 20;

/// Drops a mapping's pages behind a read position that moves forward through it. Releasing
/// each blob as soon as it is read leaves most pages mapped all the same: the kernel maps the
/// pages around every fault (64 KiB), re-mapping the tail of the blob just released. Batches
/// re-map at most that much per batch.
struct ReleaseBehind<'a> {
    c: &'a Container,
    /// Read and not yet released.
    span: Option<(u64, u64)>,
}

impl<'a> ReleaseBehind<'a> {
    fn new(c: &'a Container) -> ReleaseBehind<'a> {
        ReleaseBehind { c, span: None }
    }

    /// Notes that `[start, end)` has been read.
    fn read(&mut self, start: u64, end: u64) {
        // Blobs follow each other, up to the alignment padding before a raw one.
        let span = match self.span {
            Some((lo, hi)) if start >= hi && start - hi < crate::format::ALIGN => (lo, end),
            _ => {
                self.flush();
                (start, end)
            }
        };
        self.span = Some(span);
        if span.1 - span.0 >= RELEASE_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Some((lo, hi)) = self.span.take() {
            self.c.release(lo, hi);
        }
    }
}

impl Drop for ReleaseBehind<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// (dtype, raw length, md5) -> output tensors already holding such bytes, with their input.
type ByContent<'a> = HashMap<(&'a str, u64, &'a str), Vec<(usize, Item)>>;

/// Writes one planned shard: blobs copied in output order, duplicates stored once.
fn write_shard(
    plan: &ShardPlan,
    containers: &[Container],
    path: &Path,
    progress: &dyn Progress,
) -> Result<u64> {
    let first = &containers[plan.items.first().map_or(0, |it| it.input)];
    let mut w = ContainerWriter::create(path)?;
    let mut tensors: Vec<TensorEntry> = Vec::with_capacity(plan.items.len());
    // (input, tensor holding the bytes) -> output tensor holding them
    let mut stored_at: HashMap<(usize, usize), usize> = HashMap::new();
    let mut by_content: ByContent = HashMap::new();
    let mut behind: Vec<ReleaseBehind> = containers.iter().map(ReleaseBehind::new).collect();
    let mut offset = 0u64;
    let mut copied = 0u64;
    for (j, &it) in plan.items.iter().enumerate() {
        let c = &containers[it.input];
        let t = &c.index.tensors[it.tensor];
        let storage = (it.input, c.storage_of(it.tensor));
        let mut e = TensorEntry {
            name: t.name.clone(),
            dtype: t.dtype.clone(),
            shape: t.shape.clone(),
            offsets: [offset, offset + t.raw_len()],
            md5: t.md5.clone(),
            dup_of: None,
            delta: None,
            chunks: Vec::new(),
        };
        offset += t.raw_len();
        let key = (t.dtype.as_str(), t.raw_len(), t.md5.as_str());
        let same_bytes = || {
            if t.raw_len() < DUP_MIN_BYTES {
                return None;
            }
            by_content
                .get(&key)?
                .iter()
                .find_map(|&(k, other)| same_blobs(containers, other, it).then_some(k))
        };
        if let Some(k) = stored_at.get(&storage).copied().or_else(same_bytes) {
            e.dup_of = Some(k);
            stored_at.insert(storage, k);
        } else {
            let chunks = c.chunks(it.tensor);
            e.chunks.reserve(chunks.len());
            for ch in chunks {
                let at = w.write_blob(c.blob(ch))?;
                behind[it.input].read(ch.offset, ch.offset + ch.len);
                e.chunks.push(ChunkEntry { offset: at, ..*ch });
                copied += ch.len;
                progress.advance(ch.len);
            }
            stored_at.insert(storage, j);
            if t.raw_len() >= DUP_MIN_BYTES {
                by_content.entry(key).or_default().push((j, it));
            }
        }
        tensors.push(e);
    }
    let index = Index {
        format: "bigsmall".into(),
        created_by: format!("bigsmall {}", env!("CARGO_PKG_VERSION")),
        mode: first.index.mode,
        chunk_bytes: first.index.chunk_bytes,
        source: plan.source.clone(),
        tensors,
        base: None,
        groups: Vec::new(),
    };
    w.finish(&index)?;
    Ok(copied)
}

/// True when two input tensors are stored as the same blobs: then their bytes are equal
/// without decoding either.
fn same_blobs(containers: &[Container], a: Item, b: Item) -> bool {
    let (ca, cb) = (&containers[a.input], &containers[b.input]);
    let (xa, xb) = (ca.chunks(a.tensor), cb.chunks(b.tensor));
    xa.len() == xb.len()
        && xa.iter().zip(xb).all(|(p, q)| {
            p.raw_len == q.raw_len && p.hash == q.hash && p.len == q.len && ca.blob(p) == cb.blob(q)
        })
}

/// Reads a written shard back: every tensor's receipt against its input's, every chunk
/// decoded (all cores) and checked against its checksum, md5 receipts with `check_md5`.
/// Returns the number of tensors checked.
fn verify_shard(
    plan: &ShardPlan,
    containers: &[Container],
    path: &Path,
    check_md5: bool,
    progress: &dyn Progress,
) -> Result<usize> {
    let out = Container::open(path)?;
    let wrong = |tensor: &str, what: &str| Error::Integrity {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        what: what.to_string(),
    };
    if out.index.tensors.len() != plan.items.len() {
        return Err(wrong("*", "tensor count"));
    }
    for (j, &it) in plan.items.iter().enumerate() {
        let c = &containers[it.input];
        let (a, b) = (&c.index.tensors[it.tensor], &out.index.tensors[j]);
        if a.name != b.name || a.dtype != b.dtype || a.shape != b.shape {
            return Err(wrong(&b.name, "name, dtype or shape"));
        }
        if a.md5 != b.md5 || out.index.tensors[out.storage_of(j)].md5 != b.md5 {
            return Err(wrong(&b.name, "md5 receipt"));
        }
        let (xa, xb) = (c.chunks(it.tensor), out.chunks(j));
        let same = xa.len() == xb.len()
            && xa
                .iter()
                .zip(xb)
                .all(|(p, q)| p.raw_len == q.raw_len && p.hash == q.hash && p.len == q.len);
        if !same {
            return Err(wrong(&b.name, "chunk checksums"));
        }
    }
    // A chunk that fails in the copy is looked up in the input: a damaged input is named
    // as such, not blamed on the copy.
    let blame = |j: usize, k: usize, e: Error, buf: &mut Vec<u8>| -> Error {
        let it = plan.items[j];
        let c = &containers[it.input];
        match c.decode_chunk_into(it.tensor, k, buf) {
            Err(input_err) => input_err,
            Ok(()) => e,
        }
    };
    let stored: Vec<usize> = (0..plan.items.len())
        .filter(|&j| out.index.tensors[j].dup_of.is_none())
        .collect();
    if check_md5 {
        let mut order = stored;
        // Biggest first, so the last tensors to finish are small ones.
        order.sort_by_key(|&j| std::cmp::Reverse(out.index.tensors[j].raw_len()));
        order.par_iter().try_for_each_init(Vec::new, |buf, &j| {
            let mut h = Md5::new();
            let mut behind = ReleaseBehind::new(&out);
            for (k, ch) in out.chunks(j).iter().enumerate() {
                buf.resize(ch.raw_len as usize, 0);
                if let Err(e) = out.decode_chunk_into(j, k, buf) {
                    return Err(blame(j, k, e, buf));
                }
                h.update(&buf[..]);
                behind.read(ch.offset, ch.offset + ch.len);
                progress.advance(ch.len);
            }
            if hex(&h.finalize()) != out.index.tensors[j].md5 {
                // The copy's chunks and receipt are the input's (compared above), so a tensor
                // that decodes cleanly and misses its receipt is damage in the input.
                return Err(Error::Integrity {
                    path: containers[plan.items[j].input].path.clone(),
                    tensor: out.index.tensors[j].name.clone(),
                    what: "md5 receipt".into(),
                });
            }
            Ok(())
        })?;
    } else {
        let jobs: Vec<(usize, usize)> = stored
            .iter()
            .flat_map(|&j| (0..out.chunks(j).len()).map(move |k| (j, k)))
            .collect();
        // Windows of the file, each decoded on all cores and then released, keep the mapped
        // part of the output to about one window.
        let mut start = 0;
        while start < jobs.len() {
            let first = out.chunks(jobs[start].0)[jobs[start].1].offset;
            let mut end = start + 1;
            while end < jobs.len()
                && out.chunks(jobs[end].0)[jobs[end].1].offset - first < RELEASE_BATCH
            {
                end += 1;
            }
            jobs[start..end]
                .par_iter()
                .try_for_each_init(Vec::new, |buf, &(j, k)| {
                    let ch = &out.chunks(j)[k];
                    buf.resize(ch.raw_len as usize, 0);
                    if let Err(e) = out.decode_chunk_into(j, k, buf) {
                        return Err(blame(j, k, e, buf));
                    }
                    progress.advance(ch.len);
                    Ok(())
                })?;
            let (j, k) = jobs[end - 1];
            let last = out.chunks(j)[k];
            out.release(first, last.offset + last.len);
            start = end;
        }
    }
    Ok(plan.items.len())
}

/// Reshards `inputs` (`.bs` files, or directories made by bigsmall) into `out_dir`: one
/// container per shard plus `bigsmall.index.json`, side files carried over.
///
/// ```no_run
/// use bigsmall::layout::reshard::{reshard, Layout, ReshardOptions};
/// use bigsmall::progress::Silent;
/// let opts = ReshardOptions { layout: Layout::Shards(4), overwrite: false, check_md5: false };
/// let r = reshard(&["model.bs".into()], "four".as_ref(), &opts, &Silent)?;
/// println!("{} shards, {:.0} MB/s of model data", r.shards.len(), r.raw_mb_per_s);
/// # Ok::<(), bigsmall::error::Error>(())
/// ```
pub fn reshard(
    inputs: &[PathBuf],
    out_dir: &Path,
    opts: &ReshardOptions,
    progress: &dyn Progress,
) -> Result<ReshardReport> {
    let started = Instant::now();
    if inputs.is_empty() {
        return Err(Error::invalid(out_dir, "no inputs to reshard"));
    }
    let inputs_opened = open_inputs(inputs)?;
    let containers = &inputs_opened.containers;
    if containers.is_empty() {
        return Err(Error::invalid(&inputs[0], "holds no .bs files"));
    }
    if let Ok(out) = fs::canonicalize(out_dir) {
        let inside = containers
            .iter()
            .filter_map(|c| fs::canonicalize(&c.path).ok())
            .any(|p| p.starts_with(&out));
        if inside {
            return Err(Error::invalid(
                out_dir,
                "holds inputs of this reshard; choose another --output-dir",
            ));
        }
    }
    let plans = plan_shards(&inputs_opened, opts.layout)?;
    let hf_index = plans.len() > 1;
    let mut taken: HashSet<&str> = plans.iter().map(|p| p.file.as_str()).collect();
    taken.insert(DIR_INDEX);
    if hf_index {
        taken.insert(HF_INDEX);
    }
    if let Some((dir, rel, _)) = inputs_opened
        .side_files
        .iter()
        .find(|(_, rel, _)| taken.contains(rel.as_str()))
    {
        return Err(Error::invalid(
            dir.join(rel),
            "has the name of a resharded output (a shard's .bs or an index); rename it",
        ));
    }

    let staged = StagedDir::create(out_dir, opts.overwrite)?;
    let total_stored: u64 = plans
        .iter()
        .flat_map(|p| &p.items)
        .map(|it| containers[it.input].index.tensors[it.tensor].stored_len())
        .sum();
    progress.start(2 * total_stored, "reshard");
    let mut shards = Vec::with_capacity(plans.len());
    let mut reports = Vec::with_capacity(plans.len());
    let mut weight_map = BTreeMap::new();
    let (mut bytes_copied, mut verified, mut output_bytes, mut raw_bytes) = (0, 0, 0, 0);
    // Shard k is checked on the thread pool while shard k + 1 is written: copying is kernel
    // time, checking is decoding, and the two overlap on separate cores.
    std::thread::scope(|scope| -> Result<()> {
        let mut pending: Option<std::thread::ScopedJoinHandle<'_, Result<usize>>> = None;
        let finish = |h: std::thread::ScopedJoinHandle<'_, Result<usize>>| {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        };
        for plan in &plans {
            let path = staged.tmp.join(&plan.file);
            let copied = write_shard(plan, containers, &path, progress);
            if let Some(h) = pending.take() {
                verified += finish(h)?;
            }
            bytes_copied += copied?;
            let size = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
            let check_md5 = opts.check_md5;
            pending = Some(
                scope.spawn(move || verify_shard(plan, containers, &path, check_md5, progress)),
            );
            let raw = plan.source.file_size - 8 - plan.source.header.len() as u64;
            for it in &plan.items {
                let name = &containers[it.input].index.tensors[it.tensor].name;
                weight_map.insert(name.clone(), plan.file.clone());
            }
            shards.push(Shard {
                file: plan.file.clone(),
                source: plan.safetensors.clone(),
                source_size: plan.source.file_size,
                size,
                tensors: plan.items.len(),
            });
            reports.push(OutputShard {
                file: plan.file.clone(),
                source: plan.safetensors.clone(),
                tensors: plan.items.len(),
                bytes: size,
                raw_bytes: raw,
                layers: plan.layers,
                non_layer_tensors: plan.non_layer,
                original_header: plan.original_header,
            });
            output_bytes += size;
            raw_bytes += raw;
        }
        if let Some(h) = pending.take() {
            verified += finish(h)?;
        }
        Ok(())
    })?;
    progress.finish();

    let mut side_files = Vec::new();
    let mut side_file_md5 = BTreeMap::new();
    for (dir, rel, expect) in &inputs_opened.side_files {
        let md5 = copy_side_file(dir, &staged.tmp, Path::new(rel), expect.as_deref())?;
        side_file_md5.insert(rel.clone(), md5);
        side_files.push(rel.clone());
    }
    if hf_index {
        let map: BTreeMap<&str, &str> = plans
            .iter()
            .flat_map(|p| {
                p.items.iter().map(|it| {
                    (
                        containers[it.input].index.tensors[it.tensor].name.as_str(),
                        p.safetensors.as_str(),
                    )
                })
            })
            .collect();
        let hf = serde_json::json!({
            "metadata": {"total_size": raw_bytes},
            "weight_map": map,
        });
        let mut text = serde_json::to_string_pretty(&hf).expect("index serialises");
        text.push('\n');
        let p = staged.tmp.join(HF_INDEX);
        fs::write(&p, &text).map_err(|e| Error::io(&p, e))?;
        side_file_md5.insert(HF_INDEX.to_string(), crate::store::md5_hex(text.as_bytes()));
        side_files.push(HF_INDEX.to_string());
    }
    let source_total = shards.iter().map(|s| s.source_size).sum();
    let index = DirIndex {
        format: "bigsmall-dir".into(),
        version: 1,
        created_by: format!("bigsmall {}", env!("CARGO_PKG_VERSION")),
        shards,
        side_files: side_files.clone(),
        side_file_md5,
        weight_map,
        metadata: DirTotals {
            total_source_size: source_total,
            total_size: output_bytes,
        },
        extra: BTreeMap::new(),
    };
    let json = serde_json::to_vec_pretty(&DirIndexOut {
        index: &index,
        origins: &inputs_opened.origins,
    })
    .expect("index serialises");
    let ipath = staged.tmp.join(DIR_INDEX);
    fs::write(&ipath, json).map_err(|e| Error::io(&ipath, e))?;
    staged.commit()?;

    let seconds = started.elapsed().as_secs_f64();
    let per_s = |b: u64| b as f64 / seconds.max(1e-9) / 1e6;
    Ok(ReshardReport {
        inputs: containers
            .iter()
            .map(|c| InputFile {
                file: c.path.display().to_string(),
                bytes: c.file_size(),
                tensors: c.index.tensors.len(),
            })
            .collect(),
        input_bytes: containers.iter().map(Container::file_size).sum(),
        output_dir: out_dir.display().to_string(),
        shards: reports,
        side_files,
        tensors: verified,
        raw_bytes,
        bytes_copied,
        output_bytes,
        seconds,
        raw_mb_per_s: per_s(raw_bytes),
        stored_mb_per_s: per_s(bytes_copied),
        verified_tensors: verified,
        md5_checked: opts.check_md5,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The best possible largest shard, by trying every way to cut (small inputs only).
    fn brute_best(sizes: &[u64], n: usize) -> u64 {
        fn go(sizes: &[u64], n: usize) -> u64 {
            if n == 1 {
                return sizes.iter().sum();
            }
            (1..=sizes.len() - (n - 1))
                .map(|cut| {
                    sizes[..cut]
                        .iter()
                        .sum::<u64>()
                        .max(go(&sizes[cut..], n - 1))
                })
                .min()
                .expect("at least one cut")
        }
        go(sizes, n)
    }

    fn check_runs(parts: &[Range<usize>], k: usize) {
        assert_eq!(
            parts.first().map(|r| r.start),
            Some(0),
            "group 0 in shard 0"
        );
        assert_eq!(parts.last().map(|r| r.end), Some(k), "every group placed");
        for w in parts.windows(2) {
            assert_eq!(w[0].end, w[1].start, "contiguous: {parts:?}");
        }
        if k > 0 {
            assert!(parts.iter().all(|r| !r.is_empty()), "non-empty: {parts:?}");
        }
    }

    proptest! {
        #[test]
        fn exactly_n_shards_contiguous_and_optimal(
            (sizes, n) in proptest::collection::vec(0u64..1000, 1..9)
                .prop_flat_map(|s| { let len = s.len(); (Just(s), 1..=len) }),
        ) {
            let parts = partition(&sizes, Layout::Shards(n)).expect("n <= groups");
            prop_assert_eq!(parts.len(), n);
            check_runs(&parts, sizes.len());
            let largest = parts.iter().map(|r| sizes[r.clone()].iter().sum::<u64>()).max();
            prop_assert_eq!(largest, Some(brute_best(&sizes, n)));
        }

        #[test]
        fn size_cap_is_kept_unless_one_group_exceeds_it(
            sizes in proptest::collection::vec(0u64..1000, 0..12),
            cap in 1u64..2500,
        ) {
            let parts = partition(&sizes, Layout::MaxBytes(cap)).expect("cap > 0");
            check_runs(&parts, sizes.len());
            for (i, r) in parts.iter().enumerate() {
                let sum: u64 = sizes[r.clone()].iter().sum();
                prop_assert!(sum <= cap || r.len() == 1, "{:?} over {}", r, cap);
                // Greedy: the next group did not fit.
                if let Some(next) = parts.get(i + 1) {
                    prop_assert!(sum + sizes[next.start] > cap);
                }
            }
        }
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(partition(&[1, 2], Layout::Shards(0)).is_err());
        assert!(partition(&[1, 2], Layout::Shards(3)).is_err());
        assert!(partition(&[1, 2], Layout::MaxBytes(0)).is_err());
        assert!(partition(&[], Layout::Shards(1)).is_err());
        // One run holding everything (empty when there is nothing).
        let one = |r: Range<usize>| vec![r];
        assert_eq!(partition(&[], Layout::Join).expect("joins"), one(0..0));
        assert_eq!(partition(&[], Layout::MaxBytes(5)).expect("cap"), one(0..0));
        assert_eq!(
            partition(&[5, 1, 1], Layout::Join).expect("joins"),
            one(0..3)
        );
        assert_eq!(
            partition(&[4, 4, 4, 4], Layout::Shards(4)),
            Ok(vec![0..1, 1..2, 2..3, 3..4])
        );
        // Zero-sized groups (empty tensors only) still make non-empty shards.
        assert_eq!(
            partition(&[0, 0, 0], Layout::Shards(2)).map(|p| p.len()),
            Ok(2)
        );
    }

    #[test]
    fn synthesized_header_parses_like_the_reference() {
        let t = |name: &str, dtype: &str, shape: Vec<u64>, n: u64| TensorEntry {
            name: name.into(),
            dtype: dtype.into(),
            shape,
            offsets: [0, n],
            md5: String::new(),
            dup_of: None,
            delta: None,
            chunks: Vec::new(),
        };
        let a = t("w \"quoted\"", "BF16", vec![2, 3], 12);
        let b = t("empty", "F32", vec![0, 4], 0);
        let meta = vec![
            ("format".to_string(), "pt".to_string()),
            ("a".into(), "b".into()),
        ];
        let h = synth_header(Some(&meta), &[(&a, [0, 12]), (&b, [12, 12])]);
        assert_eq!(h.len() % 8, 0);
        assert!(h.starts_with(
            "{\"__metadata__\":{\"format\":\"pt\",\"a\":\"b\"},\"w \\\"quoted\\\"\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]}"
        ));
        let m: safetensors::tensor::Metadata = serde_json::from_str(&h).expect("valid header");
        assert_eq!(m.offset_keys(), vec!["w \"quoted\"", "empty"]);
        let p = parse(&h).expect("parses");
        assert_eq!(p.metadata, Some(meta));
        assert_eq!(p.tensors.len(), 2);
        assert_eq!(synth_header(None, &[]), "{}      ");
    }
}
