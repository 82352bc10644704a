//! `migrate`: rewrite a container made by an older bigsmall (or an older format version)
//! with the current codecs. Every tensor is decoded and checked against its md5 receipt, its
//! chunks re-encoded, and the new file fully verified before it replaces the old one (kept as
//! `.bak` unless asked otherwise). Patch chunks stored against a base are copied as they are,
//! unchecked (checking them needs the base), and the report says so. A file protected by an
//! ECC sidecar gets a new one: the old one, which protects the old bytes, goes with the backup.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::integrity::md5x::Md5;
use rayon::prelude::*;

use crate::codec::encode_chunk;
use crate::error::{Error, Result};
use crate::format::reader::Container;
use crate::format::writer::ContainerWriter;
use crate::format::{ChunkEntry, MAJOR, MINOR};
use crate::integrity::{verify, VerifyMode};
use crate::progress::Progress;
use crate::store::hex;

#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrateReport {
    pub file: String,
    pub from_version: String,
    pub from_created_by: String,
    pub to_version: String,
    pub to_created_by: String,
    /// Already written by this bigsmall in the current format.
    pub current: bool,
    /// Current, and no re-encoding asked for: left as it is, nothing measured.
    pub untouched: bool,
    pub dry_run: bool,
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub reencoded_chunks: usize,
    /// A patch's difference chunks, copied as they are and unchecked (they need the base).
    pub copied_chunks: usize,
    pub backup: Option<String>,
    /// An ECC sidecar was written for the new file (the old file had one).
    pub ecc_rewritten: bool,
    pub seconds: f64,
}

fn created_by() -> String {
    format!("bigsmall {}", env!("CARGO_PKG_VERSION"))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Migrates one container in place (or only measures, with `dry_run`).
pub fn migrate(
    path: &Path,
    dry_run: bool,
    keep_backup: bool,
    reencode_current: bool,
    progress: &dyn Progress,
) -> Result<MigrateReport> {
    let started = Instant::now();
    let c = Container::open(path)?;
    let bak = with_suffix(path, ".bak");
    let mut report = MigrateReport {
        file: path.display().to_string(),
        from_version: format!("{}.{}", c.version.0, c.version.1),
        from_created_by: c.index.created_by.clone(),
        to_version: format!("{MAJOR}.{MINOR}"),
        to_created_by: created_by(),
        current: c.version == (MAJOR, MINOR) && c.index.created_by == created_by(),
        untouched: false,
        dry_run,
        before_bytes: c.file_size(),
        after_bytes: c.file_size(),
        reencoded_chunks: 0,
        copied_chunks: 0,
        backup: None,
        ecc_rewritten: false,
        seconds: 0.0,
    };
    if report.current && !reencode_current {
        report.untouched = true;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // (A current file needs no backup, so an old one in the way does not matter to it.)
    if keep_backup && !dry_run {
        for p in [bak.clone(), crate::integrity::ecc::sidecar_path(&bak)] {
            if std::fs::symlink_metadata(&p).is_ok() {
                return Err(Error::invalid(
                    &p,
                    "already exists: move it away (or pass --no-backup) before migrating",
                ));
            }
        }
    }
    let new_path = with_suffix(path, ".migrating");
    let mut writer = ContainerWriter::create(&new_path)?;
    let mut index = c.index.clone();
    index.created_by = created_by();
    // Re-encoded tensors get chunks of their own: grouped streams are not kept.
    index.groups.clear();
    progress.start(c.raw_data_len(), "migrate");
    for t in 0..c.index.tensors.len() {
        let te = &c.index.tensors[t];
        if te.dup_of.is_some() || te.delta.as_ref().is_some_and(|d| d.same) {
            continue;
        }
        let kind = c.kind(t);
        // Decode (checking chunk hashes), then the md5 receipt, before anything is re-encoded.
        let chunks = te.chunks.clone();
        let decoded: Vec<Option<Vec<u8>>> = chunks
            .par_iter()
            .enumerate()
            .map(|(k, ch)| -> Result<Option<Vec<u8>>> {
                if ch.delta {
                    return Ok(None);
                }
                let mut buf = vec![0u8; ch.raw_len as usize];
                c.decode_chunk_into(t, k, &mut buf)?;
                Ok(Some(buf))
            })
            .collect::<Result<_>>()?;
        if chunks.iter().all(|ch| !ch.delta) {
            let mut h = Md5::new();
            for d in decoded.iter().flatten() {
                h.update(d);
            }
            if hex(&h.finalize()) != te.md5 {
                return Err(Error::Integrity {
                    path: path.to_path_buf(),
                    tensor: te.name.clone(),
                    what: "md5 receipt".into(),
                });
            }
        }
        let blobs: Vec<Vec<u8>> = decoded
            .par_iter()
            .zip(chunks.par_iter())
            .map(|(d, ch)| match d {
                Some(raw) => encode_chunk(kind, raw, c.index.mode),
                None => c.blob(ch).to_vec(),
            })
            .collect();
        let mut entries = Vec::with_capacity(chunks.len());
        for (blob, ch) in blobs.iter().zip(&chunks) {
            let offset = writer.write_blob(blob)?;
            if ch.delta {
                report.copied_chunks += 1;
            } else {
                report.reencoded_chunks += 1;
            }
            entries.push(ChunkEntry {
                offset,
                len: blob.len() as u64,
                codec: blob[0],
                // A grouped member now has a blob of its own.
                skip: 0,
                total: 0,
                ..*ch
            });
            progress.advance(ch.raw_len);
        }
        index.tensors[t].chunks = entries;
    }
    report.after_bytes = writer.finish(&index)?;
    progress.finish();
    // The new file must pass a full verification (patches: structure) before it replaces
    // the old one.
    let check = if c.is_patch() {
        verify(&new_path, &VerifyMode::Fast)
    } else {
        verify(&new_path, &VerifyMode::Full)
    };
    match check {
        Ok(r) if r.ok() => {}
        Ok(r) => {
            let _ = std::fs::remove_file(&new_path);
            return Err(Error::Integrity {
                path: new_path,
                tensor: String::new(),
                what: format!(
                    "re-encoded file failed verification ({})",
                    r.problems.join("; ")
                ),
            });
        }
        Err(e) => {
            let _ = std::fs::remove_file(&new_path);
            return Err(e);
        }
    }
    if dry_run {
        let _ = std::fs::remove_file(&new_path);
    } else {
        // The file's ECC sidecar protects the old bytes: it goes with the backup (or away),
        // and the new file gets one of its own, made before anything is renamed (a full
        // disk then changes nothing).
        let sidecar = crate::integrity::ecc::sidecar_path(path);
        let protected = sidecar.is_file();
        let fresh = if protected {
            match crate::integrity::ecc::stage(&new_path, &sidecar) {
                Ok((f, _)) => Some(f),
                Err(e) => {
                    let _ = std::fs::remove_file(&new_path);
                    return Err(e);
                }
            }
        } else {
            None
        };
        // From here to the last rename, an interrupt waits: the file, its backup and its
        // sidecar change together.
        let _renaming = crate::fsutil::hold_interrupts();
        if keep_backup {
            std::fs::rename(path, &bak).map_err(|e| Error::io(path, e))?;
            report.backup = Some(bak.display().to_string());
            if protected {
                let to = crate::integrity::ecc::sidecar_path(&bak);
                std::fs::rename(&sidecar, &to).map_err(|e| Error::io(&sidecar, e))?;
            }
        }
        std::fs::rename(&new_path, path).map_err(|e| Error::io(path, e))?;
        if let Some(f) = fresh {
            f.commit()?;
            report.ecc_rewritten = true;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
