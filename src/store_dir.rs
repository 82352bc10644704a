//! Model directories: every `*.safetensors` becomes a `.bs` beside its relative path, side
//! files are carried verbatim, and `bigsmall.index.json` records the layout so `decompress`
//! rebuilds the same directory. The output directory appears under its final name only when
//! complete.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::reader::Container;
use crate::model::dir::scan_dir;
use crate::progress::Progress;
use crate::store::{CompressOptions, CompressReport, DecompressOptions, DecompressReport};

pub const DIR_INDEX: &str = "bigsmall.index.json";
/// Upper bound for reading a directory index: far above any real one.
const MAX_DIR_INDEX: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirIndex {
    /// Always "bigsmall-dir".
    pub format: String,
    pub version: u32,
    pub created_by: String,
    pub shards: Vec<Shard>,
    pub side_files: Vec<String>,
    /// md5 of each side file's bytes when it was carried in: a side file replaced or damaged
    /// is found like a damaged shard. (Added within version 1: an index without it, written
    /// before, still reads, and its side files are only checked for being there.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub side_file_md5: BTreeMap<String, String>,
    /// Tensor name -> `.bs` file, like HF's `weight_map`.
    pub weight_map: BTreeMap<String, String>,
    pub metadata: DirTotals,
    /// Fields this struct does not hold (a resharded directory's `origins`), kept as they
    /// are when an index is rewritten (`migrate`, `transcode`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shard {
    /// The `.bs` file, relative to the directory.
    pub file: String,
    /// The safetensors file it decompresses to, relative to the directory.
    pub source: String,
    pub source_size: u64,
    pub size: u64,
    pub tensors: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirTotals {
    /// Sum of the source weight files' sizes.
    pub total_source_size: u64,
    /// Sum of the `.bs` files' sizes.
    pub total_size: u64,
}

fn rel_str(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// A relative path from an index: refuses anything that could escape the directory.
fn safe_rel(index_path: &Path, s: &str) -> Result<PathBuf> {
    let p = PathBuf::from(s);
    // A trailing '/' names a directory: no shard or side file is one (and `components`
    // would hide it).
    let ok = !s.is_empty()
        && !s.ends_with('/')
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(Error::container(
            index_path,
            format!("unsafe path '{s}' in directory index"),
        ));
    }
    Ok(p)
}

/// A directory being built under a temporary name beside its destination.
pub(crate) struct StagedDir {
    final_path: PathBuf,
    pub(crate) tmp: PathBuf,
    done: bool,
    /// Resumable staging (`<dst>.progress/`) survives an interrupted run.
    keep: bool,
    /// The staging directory, locked while this run writes it (`fsutil::try_lock`).
    _lock: Option<fs::File>,
}

impl StagedDir {
    pub(crate) fn create(dst: &Path, overwrite: bool) -> Result<StagedDir> {
        crate::fsutil::check_output_as(dst, overwrite, true)?;
        crate::fsutil::remove_stale_temps(dst);
        let tmp = crate::fsutil::temp_name(dst);
        let _ = fs::remove_dir_all(&tmp);
        crate::fsutil::track_temp(&tmp);
        fs::create_dir(&tmp).map_err(|e| {
            crate::fsutil::untrack_temp(&tmp);
            Error::io(dst, e)
        })?;
        let lock = fs::File::open(&tmp).ok();
        if let Some(l) = &lock {
            crate::fsutil::try_lock(l);
        }
        Ok(StagedDir {
            final_path: dst.to_path_buf(),
            tmp,
            done: false,
            keep: false,
            _lock: lock,
        })
    }

    /// Stages in `<dst>.progress/`, reusing what an interrupted run left there.
    fn resumable(dst: &Path, overwrite: bool) -> Result<StagedDir> {
        crate::fsutil::check_output_as(dst, overwrite, true)?;
        let tmp = crate::store::progress_dir(dst);
        crate::fsutil::note_kept_progress(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(StagedDir {
            final_path: dst.to_path_buf(),
            tmp,
            done: false,
            keep: true,
            _lock: None,
        })
    }

    /// Moves the staged directory into place. An existing output is replaced (the caller
    /// allowed it with `-f`), but a directory only when everything in it is replaced: `-o` at
    /// a directory that holds anything else (other models, a home directory) is refused
    /// rather than deleted.
    pub(crate) fn commit(mut self) -> Result<()> {
        let dst = &self.final_path;
        if let Ok(meta) = fs::symlink_metadata(dst) {
            if meta.is_dir() {
                if let Some(extra) = first_extra(dst, &self.tmp, Path::new(""), &listed_in(dst)) {
                    return Err(Error::invalid(
                        dst,
                        format!(
                            "holds '{}', which this run does not write: -f replaces a \
                             directory only when all of it is replaced (remove it, or choose \
                             another output)",
                            extra.display()
                        ),
                    ));
                }
            }
            let old = crate::fsutil::temp_name(dst).with_extension("old");
            fs::rename(dst, &old).map_err(|e| Error::io(dst, e))?;
            fs::rename(&self.tmp, dst).map_err(|e| Error::io(dst, e))?;
            let _ = if old.is_dir() {
                fs::remove_dir_all(&old)
            } else {
                fs::remove_file(&old)
            };
        } else {
            fs::rename(&self.tmp, dst).map_err(|e| Error::io(dst, e))?;
        }
        self.done = true;
        if !self.keep {
            crate::fsutil::untrack_temp(&self.tmp);
        }
        Ok(())
    }
}

/// The files a compressed directory's index lists (its shards with their ECC sidecars, side
/// files and the index itself), relative to it: a bigsmall output that a run may replace even
/// where it writes other names (a reshard into another shard count, a run without `--ecc`).
/// Nothing for any other directory.
fn listed_in(dir: &Path) -> std::collections::HashSet<PathBuf> {
    read_dir_index(dir).map_or_else(|_| Default::default(), |index| listed(&index))
}

/// The files `index` lists, as `listed_in`.
fn listed(index: &DirIndex) -> std::collections::HashSet<PathBuf> {
    let shards = index.shards.iter().map(|s| PathBuf::from(&s.file));
    let sidecars = shards
        .clone()
        .map(|s| crate::integrity::ecc::sidecar_path(&s));
    shards
        .chain(sidecars)
        .chain(index.side_files.iter().map(PathBuf::from))
        .chain([PathBuf::from(DIR_INDEX)])
        .collect()
}

/// Files under a compressed directory that its index does not list (notes, a `.bak` that
/// `migrate` kept): decompress does not carry them, and says so. Relative paths, sorted.
fn unlisted(dir: &Path, index: &DirIndex) -> Vec<String> {
    fn walk(
        root: &Path,
        rel: &Path,
        ours: &std::collections::HashSet<PathBuf>,
        out: &mut Vec<String>,
    ) {
        let Ok(entries) = fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in entries.flatten() {
            let r = rel.join(e.file_name());
            let hidden = e.file_name().to_string_lossy().starts_with('.');
            match e.file_type() {
                // A hidden directory (`.git`, `.cache`) is one entry, not its every file.
                Ok(t) if t.is_dir() && hidden => out.push(format!("{}/", rel_str(&r))),
                Ok(t) if t.is_dir() => walk(root, &r, ours, out),
                _ if !ours.contains(&r) => out.push(rel_str(&r)),
                _ => {}
            }
        }
    }
    let ours = listed(index);
    let mut out = Vec::new();
    walk(dir, Path::new(""), &ours, &mut out);
    out.sort();
    out
}

/// The first file or directory under `old.join(rel)` (as a path relative to `old`) that
/// replacing `old` by `new` would delete and that is neither in `new` (as the same kind) nor
/// one of `ours`.
fn first_extra(
    old: &Path,
    new: &Path,
    rel: &Path,
    ours: &std::collections::HashSet<PathBuf>,
) -> Option<PathBuf> {
    let Ok(entries) = fs::read_dir(old.join(rel)) else {
        return Some(rel.to_path_buf());
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let Ok(om) = fs::symlink_metadata(old.join(&r)) else {
            return Some(r);
        };
        let nm = fs::symlink_metadata(new.join(&r)).ok();
        if om.is_dir() {
            if nm.is_some_and(|m| !m.is_dir()) {
                return Some(r);
            }
            if let Some(deeper) = first_extra(old, new, &r, ours) {
                return Some(deeper);
            }
        } else if !ours.contains(&r) && nm.is_none_or(|m| m.is_dir()) {
            return Some(r);
        }
    }
    None
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.done && !self.keep {
            let _ = fs::remove_dir_all(&self.tmp);
            crate::fsutil::untrack_temp(&self.tmp);
        }
    }
}

/// Side files are read in pieces of this size: they can be large (a `.bin`, a `.gguf`
/// beside the safetensors), and memory stays bounded by a few tensors.
const SIDE_PIECE: usize = 1 << 20;

/// Copies a side file into a directory being built, permissions included (a script stays
/// executable, a private file private); returns the md5 of the bytes copied, which must be
/// `expect` where that is given (a compressed directory's receipt).
pub(crate) fn copy_side_file(
    src_root: &Path,
    dst_root: &Path,
    rel: &Path,
    expect: Option<&str>,
) -> Result<String> {
    use std::io::Write;
    let to = dst_root.join(rel);
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let from = src_root.join(rel);
    let perms = fs::metadata(&from)
        .map_err(|e| Error::io(&from, e))?
        .permissions();
    let mut output = fs::File::create(&to).map_err(|e| Error::io(&to, e))?;
    let md5 = md5_file_through(&from, |piece| {
        output.write_all(piece).map_err(|e| Error::io(&to, e))
    })?;
    if expect.is_some_and(|e| e != md5) {
        return Err(side_file_changed(&from));
    }
    fs::set_permissions(&to, perms).map_err(|e| Error::io(&to, e))?;
    Ok(md5)
}

/// md5 of a file, read in pieces, each also handed to `each`.
fn md5_file_through(path: &Path, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<String> {
    use std::io::Read;
    let mut input = crate::fsutil::open_regular(path)?;
    let mut md5 = crate::integrity::md5x::Md5::new();
    let mut piece = vec![0u8; SIDE_PIECE];
    loop {
        let n = input.read(&mut piece).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(md5.hex());
        }
        md5.update(&piece[..n]);
        each(&piece[..n])?;
    }
}

fn side_file_changed(path: &Path) -> Error {
    Error::Incomplete {
        path: path.to_path_buf(),
        why: "side file is not the one compressed (md5 receipt mismatch); if it was edited on \
              purpose, remove its entry from side_file_md5 in bigsmall.index.json"
            .into(),
    }
}

/// What is wrong with a compressed directory's side files: each one its index lists must be
/// there and be the one compressed (where the index has its receipt). Every problem found.
pub fn side_file_damage(dir: &Path, index: &DirIndex) -> Vec<Error> {
    let index_path = dir.join(DIR_INDEX);
    let check = |rel: &String| -> Result<()> {
        let path = dir.join(safe_rel(&index_path, rel)?);
        missing_side_file(&path)?;
        if let Some(want) = index.side_file_md5.get(rel) {
            if md5_file_through(&path, |_| Ok(()))? != *want {
                return Err(side_file_changed(&path));
            }
        }
        Ok(())
    };
    index
        .side_files
        .iter()
        .filter_map(|rel| check(rel).err())
        .collect()
}

/// `side_file_damage` before any work: its first finding is the error (exit 3).
pub fn check_side_files(dir: &Path, index: &DirIndex) -> Result<()> {
    match side_file_damage(dir, index).into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One shard's part of a directory's ECC check or repair.
#[derive(Debug, Clone, Serialize)]
pub struct ShardRepair {
    /// The shard, relative to the directory.
    pub file: String,
    #[serde(flatten)]
    pub report: crate::integrity::ecc::EccReport,
    /// A shard without a sidecar is checked by decoding instead (nothing to repair it from):
    /// what that found. Its report then has no sidecar and no blocks, and counts the shard as
    /// one lost block if it is damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_sidecar: Option<String>,
    /// Why the shard's sidecar could not be used (then checked as one without); a repair
    /// gives an intact shard a fresh sidecar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar_unusable: Option<String>,
}

/// Checks every shard of a compressed directory against its sidecar (`SHARD.ecc`, which
/// `compress --ecc` writes beside each shard); with `output`, writes the recovered directory
/// there: each shard repaired, with a fresh sidecar beside it, and the index and side files
/// copied. The index and side files carry no parity. A shard without a sidecar is verified
/// by decoding (a patch's by its structure: its chunks need the base) and copied as it is;
/// damaged, it is beyond repair. Nothing appears under `output` unless every shard was
/// recovered.
pub fn check_or_repair_dir(
    dir: &Path,
    output: Option<&Path>,
    overwrite: bool,
    progress: &dyn crate::progress::Progress,
) -> Result<Vec<ShardRepair>> {
    let index_path = dir.join(DIR_INDEX);
    let index = read_dir_index(dir)?;
    for s in &index.shards {
        missing_shard(&dir.join(safe_rel(&index_path, &s.file)?))?;
    }
    check_side_files(dir, &index)?;
    // Shards swapped or replaced under their names carry their own sidecars along and would
    // check as intact: found first, as `verify` finds them. (A shard too damaged to open is
    // left to its sidecar; the repaired directory is checked whole before it appears.)
    if let Err(e) = check_shards(dir, &index) {
        if e.path().ends_with(DIR_INDEX) || crate::format::reader::Container::open(e.path()).is_ok()
        {
            return Err(e);
        }
    }
    if index.shards.iter().all(|s| {
        let sidecar = crate::integrity::ecc::sidecar_path(&dir.join(&s.file));
        fs::symlink_metadata(sidecar).is_err()
    }) {
        return Err(Error::invalid(
            dir,
            "no shard has an ECC sidecar to repair from (compress --ecc writes one per shard); \
             `bigsmall verify` checks the directory without",
        ));
    }
    let staged = output
        .map(|o| StagedDir::create(o, overwrite))
        .transpose()?;
    let mut reports = Vec::with_capacity(index.shards.len());
    for s in &index.shards {
        let rel = safe_rel(&index_path, &s.file)?;
        let shard = dir.join(&rel);
        let sidecar = crate::integrity::ecc::sidecar_path(&shard);
        let out = match &staged {
            Some(st) => {
                let o = st.tmp.join(&rel);
                if let Some(parent) = o.parent() {
                    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                }
                Some(o)
            }
            None => None,
        };
        // A sidecar that cannot be used (unreadable, or another file's) leaves its shard to be
        // checked by decoding, as one without a sidecar is, and is reported with it.
        let unusable = if fs::symlink_metadata(&sidecar).is_ok() {
            match crate::integrity::ecc::check_or_repair_with(
                &shard,
                &sidecar,
                out.as_deref(),
                true,
                progress,
            ) {
                Ok(report) => {
                    reports.push(ShardRepair {
                        file: s.file.clone(),
                        report,
                        no_sidecar: None,
                        sidecar_unusable: None,
                    });
                    continue;
                }
                Err(e) if e.path() == sidecar => Some(e.to_string()),
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let (problem, checked) = verify_unprotected(&shard, progress)?;
        let without = match &unusable {
            Some(e) => format!("its ECC sidecar is unusable ({e})"),
            None => "no ECC sidecar".into(),
        };
        let how = match (&problem, out.is_some()) {
            (Some(p), true) => {
                return Err(Error::Unrepairable {
                    path: shard,
                    why: format!("is damaged and {without} to repair it from: {p}"),
                })
            }
            (Some(p), false) => format!("DAMAGED, and {without} to repair it from: {p}"),
            (None, true) if unusable.is_some() => {
                format!("intact ({without}: {checked}); copied with a fresh sidecar")
            }
            (None, _) => format!("intact ({without}: {checked})"),
        };
        reports.push(ShardRepair {
            file: s.file.clone(),
            report: crate::integrity::ecc::EccReport {
                data_len: fs::metadata(&shard)
                    .map_err(|e| Error::io(&shard, e))?
                    .len(),
                clean: problem.is_none(),
                // Nothing to recover it from: the whole shard counts as one lost block.
                lost_blocks: u64::from(problem.is_some()),
                ..Default::default()
            },
            no_sidecar: Some(how),
            sidecar_unusable: unusable.clone(),
        });
        if let Some(o) = &out {
            fs::copy(&shard, o).map_err(|e| Error::io(&shard, e))?;
            // It had protection: the copy keeps it (the directory is staged, so the sidecar
            // is there before the output is).
            if unusable.is_some() {
                crate::integrity::ecc::create(o)?;
            }
        }
    }
    if let Some(st) = staged {
        for rel in &index.side_files {
            let expect = index.side_file_md5.get(rel).map(String::as_str);
            copy_side_file(dir, &st.tmp, &safe_rel(&index_path, rel)?, expect)?;
        }
        copy_side_file(dir, &st.tmp, Path::new(DIR_INDEX), None)?;
        check_shards(&st.tmp, &index)?;
        st.commit()?;
    }
    Ok(reports)
}

/// Checks a shard that has no ECC sidecar the way `verify` does (fully; a patch by its
/// structure, as its chunks need the base): its first problem, if any, and how it was
/// checked.
fn verify_unprotected(
    shard: &Path,
    progress: &dyn crate::progress::Progress,
) -> Result<(Option<String>, &'static str)> {
    use crate::integrity::VerifyMode;
    // A shard too damaged to open is a finding of `verify_with` below, like a bad chunk.
    let patch = crate::format::reader::Container::open(shard).is_ok_and(|c| c.is_patch());
    let (mode, how) = if patch {
        (
            VerifyMode::Fast,
            "structure checked; a patch's chunks need its base, verify --base",
        )
    } else {
        (
            VerifyMode::Full,
            "every chunk decoded and checked against its checksum and md5 receipt",
        )
    };
    let r = crate::integrity::verify_with(shard, &mode, None, progress)?;
    // Its problems name the file; the report already does.
    let prefix = format!("{}: ", shard.display());
    let problem = r
        .problems
        .first()
        .map(|p| p.strip_prefix(&prefix).unwrap_or(p).to_string());
    Ok((problem, how))
}

/// Compresses a model directory into a directory of `.bs` files plus `bigsmall.index.json`.
pub fn compress_dir(
    src: &Path,
    dst: &Path,
    opts: &CompressOptions,
    progress: &dyn Progress,
) -> Result<CompressReport> {
    compress_dir_against(src, dst, opts, None, progress)
}

/// Compresses a model directory, each shard as a patch against `base` when one is given.
pub fn compress_dir_against(
    src: &Path,
    dst: &Path,
    opts: &CompressOptions,
    base: Option<&std::sync::Arc<dyn crate::delta::BaseSource>>,
    progress: &dyn Progress,
) -> Result<CompressReport> {
    let listing = scan_dir(src)?;
    let mut model_names = std::collections::HashSet::new();
    if base.is_some() {
        for rel in &listing.weights {
            let f = crate::model::safetensors::SafetensorsFile::open(&src.join(rel))?;
            model_names.extend(f.tensors.iter().map(|t| t.name.clone()));
        }
    }
    // Every output name must be unique: a side file called like a shard's `.bs` or like the
    // directory index would overwrite weights.
    let mut taken = std::collections::HashSet::new();
    taken.insert(PathBuf::from(DIR_INDEX));
    taken.insert(PathBuf::from(RESUME_KEY));
    for rel in &listing.weights {
        taken.insert(rel.with_extension("bs"));
    }
    if let Some(clash) = listing.side_files.iter().find(|p| taken.contains(*p)) {
        return Err(Error::invalid(
            src.join(clash),
            "has the name of a compressed output (a shard's .bs or bigsmall.index.json); rename it",
        ));
    }
    crate::fsutil::check_not_input(dst, &[src])?;
    let staged = if opts.resume {
        let staged = StagedDir::resumable(dst, opts.overwrite)?;
        check_resume_key(&staged.tmp, opts)?;
        staged
    } else {
        StagedDir::create(dst, opts.overwrite)?
    };
    let mut shards = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut total = CompressReport {
        source_bytes: 0,
        output_bytes: 0,
        tensors: 0,
        duplicates: 0,
        seconds: 0.0,
        delta: None,
        groups: Vec::new(),
        skipped: listing.skipped.iter().map(|p| rel_str(p)).collect(),
    };
    let inner = CompressOptions {
        overwrite: true,
        ..*opts
    };
    for rel in &listing.weights {
        let out_rel = rel.with_extension("bs");
        let out = staged.tmp.join(&out_rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        // With --resume, a shard finished in an earlier run (its .bs complete, no checkpoint
        // left) is kept if it still decodes to its source, byte for byte: the source may have
        // been replaced since, and a damaged shard is no better. Otherwise it is made again.
        let done = opts.resume
            && out.is_file()
            && !crate::store::progress_dir(&out).exists()
            && crate::integrity::verify_with(
                &out,
                &crate::integrity::VerifyMode::Source(src.join(rel)),
                base.cloned(),
                &crate::progress::Silent,
            )
            .is_ok_and(|r| r.ok());
        let r = if done {
            // The earlier run may have been asked for sidecars or not: this one's wish holds.
            let sidecar = crate::integrity::ecc::sidecar_path(&out);
            if opts.ecc && !sidecar.is_file() {
                crate::integrity::ecc::create(&out)?;
            } else if !opts.ecc && sidecar.is_file() {
                fs::remove_file(&sidecar).map_err(|e| Error::io(&sidecar, e))?;
            }
            let c = Container::open(&out)?;
            CompressReport {
                source_bytes: c.index.source.file_size,
                output_bytes: c.file_size(),
                tensors: c.index.tensors.len(),
                duplicates: c.index.duplicates(),
                seconds: 0.0,
                delta: None,
                groups: c.index.groups.clone(),
                skipped: Vec::new(),
            }
        } else {
            crate::store::compress_file_against(
                &src.join(rel),
                &out,
                &inner,
                base.map(|b| b.as_ref()),
                base.map(|_| &model_names),
                progress,
            )?
        };
        if let Some(d) = r.delta {
            merge_stats(total.delta.get_or_insert_with(Default::default), d);
        }
        // The same group key arises in every shard that holds layers: each is named.
        total.groups.extend(r.groups.into_iter().map(|mut g| {
            g.key = format!("{}: {}", rel_str(&out_rel), g.key);
            g
        }));
        let c = Container::open(&out)?;
        for t in &c.index.tensors {
            weight_map.insert(t.name.clone(), rel_str(&out_rel));
        }
        shards.push(Shard {
            file: rel_str(&out_rel),
            source: rel_str(rel),
            source_size: r.source_bytes,
            size: r.output_bytes,
            tensors: r.tensors,
        });
        total.source_bytes += r.source_bytes;
        total.output_bytes += r.output_bytes;
        total.tensors += r.tensors;
        total.duplicates += r.duplicates;
        total.seconds += r.seconds;
    }
    let mut side_file_md5 = BTreeMap::new();
    for rel in &listing.side_files {
        side_file_md5.insert(rel_str(rel), copy_side_file(src, &staged.tmp, rel, None)?);
    }
    let index = DirIndex {
        format: "bigsmall-dir".into(),
        version: 1,
        created_by: format!("bigsmall {}", env!("CARGO_PKG_VERSION")),
        side_files: listing.side_files.iter().map(|p| rel_str(p)).collect(),
        side_file_md5,
        weight_map,
        metadata: DirTotals {
            total_source_size: total.source_bytes,
            total_size: total.output_bytes,
        },
        shards,
        extra: BTreeMap::new(),
    };
    let json = serde_json::to_vec_pretty(&index).expect("index serialises");
    let ipath = staged.tmp.join(DIR_INDEX);
    fs::write(&ipath, json).map_err(|e| Error::io(&ipath, e))?;
    if opts.resume {
        prune_unlisted(&staged.tmp, &index)?;
    }
    staged.commit()?;
    if !opts.resume {
        crate::store::remove_stale_progress(dst);
    }
    Ok(total)
}

/// Where a resumable directory run records the flags its shards are made with.
const RESUME_KEY: &str = ".bigsmall-resume.json";

/// A finished shard is kept on resume only if it decodes to its source, which any mode's
/// does: the flags it was made with must be this run's too, as a single file's checkpoint
/// requires. Records them in a fresh staging directory.
fn check_resume_key(staging: &Path, opts: &CompressOptions) -> Result<()> {
    let key = serde_json::json!({
        "bigsmall": env!("CARGO_PKG_VERSION"),
        "mode": opts.effort,
        "group_streams": opts.group_streams,
    });
    let path = staging.join(RESUME_KEY);
    match fs::read(&path) {
        Ok(bytes) if serde_json::from_slice::<serde_json::Value>(&bytes).ok().as_ref() == Some(&key) => {
            Ok(())
        }
        Ok(_) => Err(Error::invalid(
            staging,
            "was made with other flags or another bigsmall version; delete it to start again",
        )),
        Err(_) if fs::read_dir(staging).is_ok_and(|mut d| d.next().is_some()) => {
            Err(Error::invalid(
                staging,
                "was made by an earlier bigsmall build, which did not record its flags; delete it to start again",
            ))
        }
        Err(_) => fs::write(&path, key.to_string()).map_err(|e| Error::io(&path, e)),
    }
}

/// Removes what an interrupted run left in a resumable staging directory that this run's
/// index does not list (the shard of a source file since removed), and the directories that
/// leaves empty.
fn prune_unlisted(dir: &Path, index: &DirIndex) -> Result<()> {
    for rel in unlisted(dir, index) {
        let p = dir.join(rel.trim_end_matches('/'));
        let removed = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        removed.map_err(|e| Error::io(&p, e))?;
        let mut parent = p.parent();
        while let Some(d) = parent.filter(|d| *d != dir) {
            if fs::remove_dir(d).is_err() {
                break;
            }
            parent = d.parent();
        }
    }
    Ok(())
}

/// Records the shards' sizes in the directory index after they were rewritten in place
/// (`migrate`); the index is replaced atomically.
pub fn record_shard_sizes(dir: &Path) -> Result<()> {
    let mut index = read_dir_index(dir)?;
    for s in &mut index.shards {
        let shard = dir.join(&s.file);
        s.size = fs::metadata(&shard)
            .map_err(|e| Error::io(&shard, e))?
            .len();
    }
    index.metadata.total_size = index.shards.iter().map(|s| s.size).sum();
    let path = dir.join(DIR_INDEX);
    let mut out = crate::fsutil::AtomicFile::create(&path)?;
    out.write_all(&serde_json::to_vec_pretty(&index).expect("index serialises"))?;
    out.commit()
}

/// Adds one shard's delta figures to the directory's. (Destructured whole, so that a new
/// figure cannot be left out of a directory's report.)
fn merge_stats(total: &mut crate::store::DeltaStats, d: crate::store::DeltaStats) {
    let crate::store::DeltaStats {
        base,
        base_fingerprint,
        matched_tensors,
        matched_bytes,
        changed_bytes,
        unchanged_tensors,
        delta_chunks,
        standalone_chunks,
        added_tensors,
        resized_tensors,
        removed_tensors,
    } = d;
    total.base = base;
    total.base_fingerprint = base_fingerprint;
    total.matched_tensors += matched_tensors;
    total.matched_bytes += matched_bytes;
    total.changed_bytes += changed_bytes;
    total.unchanged_tensors += unchanged_tensors;
    total.delta_chunks += delta_chunks;
    total.standalone_chunks += standalone_chunks;
    total.added_tensors.extend(added_tensors);
    total.resized_tensors.extend(resized_tensors);
    // Every shard is given the whole model's names, so each finds the same removed ones.
    total.removed_tensors = removed_tensors;
}

/// The containers at `path`: every shard of a compressed directory, the file itself if it is a
/// container, else none (a safetensors file or a model directory).
pub fn containers_at(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() && path.join(DIR_INDEX).is_file() {
        let idx = read_dir_index(path)?;
        let shards: Vec<PathBuf> = idx.shards.iter().map(|s| path.join(&s.file)).collect();
        // One gone is damage (exit 3), said as such, not an OS error on opening it.
        for s in &shards {
            missing_shard(s)?;
        }
        Ok(shards)
    } else if path.is_file() && crate::format::is_container(path) {
        Ok(vec![path.to_path_buf()])
    } else {
        Ok(Vec::new())
    }
}

/// Reads and checks a directory's `bigsmall.index.json`.
pub fn read_dir_index(dir: &Path) -> Result<DirIndex> {
    let path = dir.join(DIR_INDEX);
    let meta = fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
    if meta.len() > MAX_DIR_INDEX {
        return Err(Error::container(
            &path,
            "directory index is implausibly large",
        ));
    }
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let malformed =
        |e: serde_json::Error| Error::container(&path, format!("malformed directory index: {e}"));
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(malformed)?;
    // Format and version first, so that a newer index is for an upgrade to read (exit 1)
    // whatever its fields; past them it is ours, and what does not hold together is damage.
    if value.get("format").and_then(|f| f.as_str()) != Some("bigsmall-dir") {
        return Err(Error::invalid(&path, "not a bigsmall directory index"));
    }
    let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version > 1 {
        return Err(Error::invalid(
            &path,
            format!("directory index version {version} is newer than this bigsmall reads (1); upgrade bigsmall"),
        ));
    }
    let index: DirIndex = serde_json::from_value(value).map_err(malformed)?;
    for s in &index.shards {
        safe_rel(&path, &s.file)?;
        safe_rel(&path, &s.source)?;
    }
    for s in &index.side_files {
        safe_rel(&path, s)?;
    }
    // Two shards decoding to one file would lose one silently.
    let mut seen = std::collections::BTreeSet::new();
    for name in index
        .shards
        .iter()
        .flat_map(|s| [&s.file, &s.source])
        .chain(&index.side_files)
    {
        if !seen.insert(name.as_str()) {
            return Err(Error::container(
                &path,
                format!("directory index names '{name}' twice"),
            ));
        }
    }
    // Every compressed model has a shard, and the weight map places each tensor in one of
    // them: a shard dropped from the list would otherwise pass for a smaller model.
    if index.shards.is_empty() {
        return Err(Error::container(&path, "directory index lists no shards"));
    }
    let files: std::collections::BTreeSet<&str> =
        index.shards.iter().map(|s| s.file.as_str()).collect();
    if let Some((tensor, file)) = index
        .weight_map
        .iter()
        .find(|(_, f)| !files.contains(f.as_str()))
    {
        return Err(Error::container(
            &path,
            format!("directory index places tensor '{tensor}' in '{file}', which is not one of its shards"),
        ));
    }
    Ok(index)
}

/// A shard the directory index lists and the directory lacks: damage (exit 3), said as such.
pub fn missing_shard(path: &Path) -> Result<()> {
    listed_part(path, "shard")
}

/// A side file the directory index lists and the directory lacks, as `missing_shard`.
pub fn missing_side_file(path: &Path) -> Result<()> {
    listed_part(path, "side file")
}

fn listed_part(path: &Path, what: &str) -> Result<()> {
    let why = match fs::metadata(path) {
        Err(_) if fs::symlink_metadata(path).is_err() => "is missing",
        Err(_) => "is a link to nothing",
        Ok(m) if m.is_dir() => "is a directory where a file should be",
        Ok(m) if !m.is_file() => "is not a regular file (a pipe, socket or device)",
        Ok(_) => return Ok(()),
    };
    Err(Error::Incomplete {
        path: path.to_path_buf(),
        why: format!("{what} listed in the directory index {why}"),
    })
}

/// Checks each shard's container against the directory index, so that swapped or replaced
/// shard files are refused instead of written under each other's names: the size of the file
/// it decompresses to and its tensor count must be the ones the index records (a migrated
/// shard changes its own size, not these), and, where the weight map is unambiguous (no
/// tensor name in two shards), it must place every tensor of the container in that shard.
pub fn check_shards(dir: &Path, index: &DirIndex) -> Result<()> {
    let total: usize = index.shards.iter().map(|s| s.tensors).sum();
    let map_usable = index.weight_map.len() == total;
    // Which tensors each shard holds, for the weight map's entries below.
    let mut held: BTreeMap<&str, std::collections::HashSet<String>> = BTreeMap::new();
    for s in &index.shards {
        let path = dir.join(&s.file);
        missing_shard(&path)?;
        let c = crate::format::reader::Container::open(&path)?;
        held.insert(
            &s.file,
            c.index.tensors.iter().map(|t| t.name.clone()).collect(),
        );
        let stray =
            c.index.tensors.iter().find(|t| {
                map_usable && index.weight_map.get(&t.name).is_some_and(|f| *f != s.file)
            });
        let why = if let Some(t) = stray {
            format!(
                "holds tensor '{}', which the directory index places in {}",
                t.name, index.weight_map[&t.name]
            )
        } else if (c.index.source.file_size, c.index.tensors.len()) != (s.source_size, s.tensors) {
            format!(
                "holds {} tensors of a {}-byte file where the directory index records {} tensors of {} bytes",
                c.index.tensors.len(),
                c.index.source.file_size,
                s.tensors,
                s.source_size
            )
        } else {
            continue;
        };
        return Err(Error::container(
            &path,
            format!("{why}: shard files swapped or replaced"),
        ));
    }
    // Every weight map entry names a shard that holds the tensor: one that holds no such
    // tensor is an index that does not hold together (a tensor the model would lack).
    if let Some((name, file)) = index
        .weight_map
        .iter()
        .find(|(name, file)| !held.get(file.as_str()).is_some_and(|h| h.contains(*name)))
    {
        return Err(Error::container(
            dir.join(DIR_INDEX),
            format!("directory index places tensor '{name}' in {file}, which does not hold it"),
        ));
    }
    Ok(())
}

/// Decompresses a directory made by `compress_dir` back to the original model directory.
pub fn decompress_dir(
    src: &Path,
    dst: &Path,
    opts: &DecompressOptions,
    progress: &dyn Progress,
) -> Result<DecompressReport> {
    decompress_dir_with(src, dst, opts, None, progress)
}

/// Decompresses a compressed directory; patches need their base.
pub fn decompress_dir_with(
    src: &Path,
    dst: &Path,
    opts: &DecompressOptions,
    base: Option<std::sync::Arc<dyn crate::delta::BaseSource>>,
    progress: &dyn Progress,
) -> Result<DecompressReport> {
    let index = read_dir_index(src)?;
    crate::fsutil::check_not_input(dst, &[src])?;
    check_shards(src, &index)?;
    // Side files are carried as they are: one gone or changed is damage, found before any
    // work (and again as each is copied).
    check_side_files(src, &index)?;
    let staged = StagedDir::create(dst, opts.overwrite)?;
    let mut total = DecompressReport {
        output_bytes: 0,
        tensors: 0,
        chunks: 0,
        md5_checked: opts.check_md5,
        seconds: 0.0,
        not_carried: unlisted(src, &index),
    };
    let inner = DecompressOptions {
        overwrite: true,
        ..*opts
    };
    for shard in &index.shards {
        let out = staged.tmp.join(&shard.source);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let r = crate::store::decompress_file_with(
            &src.join(&shard.file),
            &out,
            &inner,
            base.clone(),
            progress,
        )?;
        total.output_bytes += r.output_bytes;
        total.tensors += r.tensors;
        total.chunks += r.chunks;
        total.seconds += r.seconds;
    }
    for rel in &index.side_files {
        let expect = index.side_file_md5.get(rel).map(String::as_str);
        copy_side_file(src, &staged.tmp, Path::new(rel), expect)?;
    }
    staged.commit()?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extras_are_found_at_any_depth_unless_ours() {
        let d = tempfile::tempdir().expect("tempdir");
        let (old, new) = (d.path().join("old"), d.path().join("new"));
        for p in ["old/a", "old/e", "new/a"] {
            fs::create_dir_all(d.path().join(p)).expect("mkdir");
        }
        for p in ["old/a/b.txt", "old/c.bs", "new/c.bs", "old/e/f"] {
            fs::write(d.path().join(p), b"x").expect("write");
        }
        let none = Default::default();
        let root = Path::new("");
        assert_eq!(first_extra(&old, &new, root, &none), Some("a/b.txt".into()));
        let ours: std::collections::HashSet<PathBuf> = [PathBuf::from("a/b.txt")].into();
        assert_eq!(first_extra(&old, &new, root, &ours), Some("e/f".into()));
        let ours: std::collections::HashSet<PathBuf> = ["a/b.txt", "e/f"].map(PathBuf::from).into();
        assert_eq!(first_extra(&old, &new, root, &ours), None);
        // A file where the new output has a directory is not replaced silently either.
        fs::create_dir(new.join("c.bs.d")).expect("mkdir");
        fs::write(old.join("c.bs.d"), b"x").expect("write");
        assert_eq!(first_extra(&old, &new, root, &ours), Some("c.bs.d".into()));
    }
}
