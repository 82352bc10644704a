//! `bigsmall migrate`: rewrite older `.bs` files with the current codecs, verified first.

use std::path::PathBuf;

use bigsmall::migrate::migrate;

use super::{container_files, emit, emit_json, thousands, Bar};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall migrate old.bs --dry-run   # what would change, sizes before/after\n  bigsmall migrate old.bs             # rewrite in place, old.bs.bak kept\n  bigsmall migrate old.bs --no-backup"
)]
pub struct Args {
    /// The .bs file or compressed directory
    file: PathBuf,
    /// Only report what would change (the re-encoding is done and measured, then discarded)
    #[arg(long)]
    dry_run: bool,
    /// Do not keep FILE.bak
    #[arg(long)]
    no_backup: bool,
    /// Re-encode even a file written by this version
    #[arg(long)]
    reencode: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let bar = Bar::new(a.no_progress);
    let mut reports = Vec::new();
    let dir = super::is_bs_dir(&a.file);
    for f in container_files(&a.file)? {
        let r = migrate(&f, a.dry_run, !a.no_backup, a.reencode, &bar)?;
        // Recorded shard by shard: a run stopped by a later shard leaves a true index.
        if dir && !r.dry_run && !r.untouched {
            bigsmall::store_dir::record_shard_sizes(&a.file)?;
        }
        reports.push(r);
    }
    if a.json {
        emit_json(&reports);
        return Ok(0);
    }
    let mut s = String::new();
    for r in &reports {
        if r.untouched {
            s += &format!(
                "{}: already current (format {}, {}); left untouched\n",
                r.file, r.from_version, r.from_created_by
            );
            continue;
        }
        // A patch's differences cannot be checked without the base: said, not glossed over.
        let checked = match r.copied_chunks {
            0 => "every receipt verified".to_string(),
            n => format!(
                "receipts verified; {n} difference chunks copied unchecked (they need the base: bigsmall verify {} --base BASE)",
                a.file.display()
            ),
        };
        s += &format!(
            "{}{}: format {} ({}) -> format {} ({}): {} -> {} bytes ({:+.2}%), {} chunks re-encoded, {checked}{}{}\n",
            if r.dry_run { "[dry run] " } else { "" },
            r.file,
            r.from_version,
            r.from_created_by,
            r.to_version,
            r.to_created_by,
            thousands(r.before_bytes),
            thousands(r.after_bytes),
            (r.after_bytes as f64 - r.before_bytes as f64) * 100.0 / r.before_bytes.max(1) as f64,
            r.reencoded_chunks,
            if r.ecc_rewritten { "; ECC sidecar rewritten" } else { "" },
            match &r.backup {
                Some(b) => format!("; backup {b}"),
                None => String::new(),
            }
        );
    }
    emit(&s);
    Ok(0)
}
