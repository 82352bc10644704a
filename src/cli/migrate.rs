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
    for f in container_files(&a.file)? {
        reports.push(migrate(&f, a.dry_run, !a.no_backup, a.reencode, &bar)?);
    }
    if a.json {
        emit_json(&reports);
        return Ok(0);
    }
    let mut s = String::new();
    for r in &reports {
        if r.current && r.reencoded_chunks == 0 {
            s += &format!(
                "{}: already current (format {}, {}); left untouched\n",
                r.file, r.from_version, r.from_created_by
            );
            continue;
        }
        s += &format!(
            "{}{}: format {} ({}) -> {}: {} -> {} bytes ({:+.2}%), {} chunks re-encoded, {} copied, every receipt verified{}\n",
            if r.dry_run { "[dry run] " } else { "" },
            r.file,
            r.from_version,
            r.from_created_by,
            r.to_created_by,
            thousands(r.before_bytes),
            thousands(r.after_bytes),
            (r.after_bytes as f64 - r.before_bytes as f64) * 100.0 / r.before_bytes.max(1) as f64,
            r.reencoded_chunks,
            r.copied_chunks,
            match &r.backup {
                Some(b) => format!("; backup {b}"),
                None => String::new(),
            }
        );
    }
    emit(&s);
    Ok(0)
}
