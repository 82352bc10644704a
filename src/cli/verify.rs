//! `bigsmall verify`: is every weight in a `.bs` bit-identical to the original? Exit code 3
//! when not.

use std::path::PathBuf;

use bigsmall::delta::open_base;
use bigsmall::error::Error;
use bigsmall::integrity::{verify_with, VerifyMode, VerifyReport};

use super::{container_files, emit, emit_json, thousands};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall verify --fast model.bs            # structure only, seconds on any size\n  bigsmall verify --sample 0.001 model.bs    # decode a random 0.1% of chunks\n  bigsmall verify model.bs                   # decode everything, check every md5 receipt\n  bigsmall verify model.bs --source model.safetensors\nExit codes: 0 OK, 1 error (not a .bs at all, a missing base), 3 a mismatch or damage was found (a chunk, the structure, or blocks the ECC sidecar finds damaged, or damage in the sidecar itself).\nWith an ECC sidecar beside a file, every mode also checks the whole file against it (one checksum pass); all but --fast read the sidecar's parity too."
)]
pub struct Args {
    /// The .bs file or compressed directory
    file: PathBuf,
    /// Structure only: trailer, index checksum, offsets and lengths (and, where an ECC sidecar
    /// is beside the file, one checksum of the whole file against it)
    #[arg(long, conflicts_with_all = ["sample", "source"])]
    fast: bool,
    /// Decode a random fraction (0..1] of the chunks and check their checksums
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction, conflicts_with = "source")]
    sample: Option<f64>,
    /// Seed for --sample (default: from the clock; printed so a run can be repeated)
    #[arg(long, requires = "sample")]
    seed: Option<u64>,
    /// Compare against the original safetensors file (or directory) instead of receipts
    #[arg(long, value_name = "ORIG")]
    source: Option<PathBuf>,
    /// The base of a patch (needed for every mode but --fast)
    #[arg(long, value_name = "BASE")]
    base: Option<PathBuf>,
    /// Print details
    #[arg(short, long)]
    verbose: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if f > 0.0 && f <= 1.0 {
        Ok(f)
    } else {
        Err(format!("{f} is not in (0, 1]"))
    }
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    // A compressed directory's index, read once; its missing shards are findings (below),
    // not errors. An index that does not hold together is a finding too, reported as a
    // damaged container is (exit 3 with a report), not only an error line.
    let is_dir = super::is_bs_dir(&a.file);
    let mut reports: Vec<VerifyReport> = Vec::new();
    let dir_index = if is_dir {
        match bigsmall::store_dir::read_dir_index(&a.file) {
            Ok(index) => Some(index),
            Err(e) => {
                let e = anyhow::Error::from(e);
                if super::exit_code(&e) != 3 {
                    return Err(e);
                }
                reports.push(VerifyReport {
                    file: a.file.display().to_string(),
                    mode: "directory".into(),
                    problems: vec![super::one_line(&e)],
                    ..Default::default()
                });
                None
            }
        }
    } else {
        None
    };
    let files: Vec<PathBuf> = match &dir_index {
        Some(index) => index.shards.iter().map(|s| a.file.join(&s.file)).collect(),
        // Without a usable index there are no shards to check.
        None if is_dir => Vec::new(),
        None => container_files(&a.file)?,
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    if let Some(src) = &a.source {
        // A directory's shards map to files of a directory; one .bs to one file.
        if let Err(e) = std::fs::metadata(src) {
            return Err(Error::io(src, e).into());
        }
        if src.is_dir() != is_dir {
            let f = a.file.display();
            let why = if src.is_dir() {
                format!("is a directory, but {f} is one .bs: give the .safetensors file it was made from")
            } else {
                format!("is not a directory, but {f} is a compressed directory: give the model directory it was made from")
            };
            return Err(Error::invalid(src, why).into());
        }
    }
    let bar = super::Bar::new(a.no_progress);
    if let Some(index) = &dir_index {
        // Shards swapped or replaced under their names: the directory is damaged. (A shard
        // that does not open is reported once, by its own check below.)
        let mut problems: Vec<String> = bigsmall::store_dir::check_shards(&a.file, index)
            .err()
            .filter(|e| {
                e.path().ends_with(bigsmall::store_dir::DIR_INDEX)
                    || bigsmall::format::reader::Container::open(e.path()).is_ok()
            })
            .map(|e| e.to_string())
            .into_iter()
            .collect();
        for f in &files {
            if let Err(e) = bigsmall::store_dir::missing_shard(f) {
                problems.push(e.to_string());
            }
        }
        problems.sort();
        problems.dedup();
        // Side files (config, tokenizer) are carried as they are: they must all be there,
        // as compressed, and, against the source, as there.
        problems.extend(
            bigsmall::store_dir::side_file_damage(&a.file, index)
                .iter()
                .map(ToString::to_string),
        );
        if let Some(src) = &a.source {
            for rel in &index.side_files {
                let (ours, theirs) = (a.file.join(rel), src.join(rel));
                if !ours.is_file() {
                    continue; // already a finding above
                }
                match bigsmall::fsutil::same_bytes(&ours, &theirs) {
                    Ok(true) => {}
                    Ok(false) => problems.push(format!(
                        "{}: side file differs from the source's {}",
                        ours.display(),
                        theirs.display()
                    )),
                    Err(_) if std::fs::symlink_metadata(&theirs).is_err() => {
                        problems.push(format!(
                            "{}: not in the source (the compressed directory carries it)",
                            theirs.display()
                        ))
                    }
                    Err(e) => problems.push(format!("{}: {e}", theirs.display())),
                }
            }
            // OK must mean the source directory can be rebuilt in full: a weight or side
            // file there that the compressed directory does not hold is a mismatch too.
            // (Hidden entries are not part of a model: compress skips them.)
            let held: std::collections::HashSet<&str> = index
                .shards
                .iter()
                .map(|s| s.source.as_str())
                .chain(index.side_files.iter().map(String::as_str))
                .collect();
            // Listed as it is (the files are compared one by one, so no completeness check
            // of its own); a listing that fails is an error, not a mismatch.
            match bigsmall::model::dir::list_dir(src) {
                Ok(listing) => {
                    for rel in listing.weights.iter().chain(&listing.side_files) {
                        let name = rel
                            .components()
                            .map(|c| c.as_os_str().to_string_lossy())
                            .collect::<Vec<_>>()
                            .join("/");
                        if !held.contains(name.as_str()) {
                            problems.push(format!(
                                "{}: in the source but not in {}",
                                src.join(rel).display(),
                                a.file.display()
                            ));
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !problems.is_empty() {
            reports.push(VerifyReport {
                file: a.file.display().to_string(),
                mode: "directory".into(),
                problems,
                ..Default::default()
            });
        }
    }
    for (i, f) in files.iter().enumerate() {
        if dir_index.is_some() && !f.is_file() {
            continue;
        }
        let mode = if a.fast {
            VerifyMode::Fast
        } else if let Some(fr) = a.sample {
            VerifyMode::Sample { fraction: fr, seed }
        } else if let Some(src) = &a.source {
            // A shard maps back to its source file inside the original directory.
            let from = match &dir_index {
                Some(index) => src.join(&index.shards[i].source),
                None => src.clone(),
            };
            if dir_index.is_some() && !from.exists() {
                return Err(bigsmall::error::Error::invalid(
                    &from,
                    format!(
                        "not found: --source compares each shard of {} with the file it was made from (shards made by reshard have none: verify without --source, or decompress and compare)",
                        a.file.display()
                    ),
                )
                .into());
            }
            VerifyMode::Source(from)
        } else {
            VerifyMode::Full
        };
        let base = match &a.base {
            Some(p) => Some(open_base(p)?),
            None => None,
        };
        reports.push(verify_with(f, &mode, base, &bar)?);
    }
    // ECC sidecars are checked too where present: the file against its recorded checksum
    // (block by block where it differs) and, but for --fast, the sidecar's own parity, so
    // that damage in the sidecar is found before it is needed.
    let mut ecc_lines = Vec::new();
    let mut ecc_reports = Vec::new();
    // A sidecar that cannot be read, or that disagrees with so much of the file that it
    // cannot tell which is damaged, is a failure too: the file or its protection is not
    // what was written.
    let mut ecc_errors = Vec::new();
    for f in files.iter().filter(|f| f.is_file()) {
        let side = bigsmall::integrity::ecc::sidecar_path(f);
        if !side.exists() {
            continue;
        }
        match bigsmall::integrity::ecc::check_or_repair_with(
            f,
            &side,
            None,
            !a.fast,
            &bigsmall::progress::Silent,
        ) {
            Ok(e) => {
                ecc_lines.push(if e.clean && e.sidecar_damaged {
                    format!(
                        "ecc: {} present, file intact, but the sidecar itself is damaged (`bigsmall repair {} -o OUT` writes a fresh one)",
                        side.display(),
                        f.display()
                    )
                } else if e.clean {
                    format!("ecc: {} present, file intact", side.display())
                } else if e.lost_blocks == 0 {
                    format!(
                        "ecc: {} present, {} damaged blocks{}, repairable with `bigsmall repair`",
                        side.display(),
                        e.damaged_blocks,
                        match e.trailing_bytes {
                            0 => String::new(),
                            n => format!(" and {n} bytes appended"),
                        }
                    )
                } else {
                    format!(
                        "ecc: {} present, {} damaged blocks, {} beyond repair",
                        side.display(),
                        e.damaged_blocks,
                        e.lost_blocks
                    )
                });
                ecc_reports.push(e);
            }
            // (the error names the sidecar)
            Err(e) => {
                ecc_lines.push(format!("ecc: {e}"));
                ecc_errors.push(e.to_string());
            }
        }
    }
    // A sidecar that finds damaged blocks means the file differs from what was written.
    let ok = reports.iter().all(|r| r.ok())
        && ecc_reports.iter().all(|e| e.clean && !e.sidecar_damaged)
        && ecc_errors.is_empty();
    if a.json {
        emit_json(&serde_json::json!({
            "ok": ok,
            "seed": a.sample.map(|_| seed),
            "files": reports,
            "ecc": ecc_reports,
            "ecc_errors": ecc_errors,
        }));
    } else {
        let mut s = String::new();
        for r in &reports {
            if a.verbose || files.len() > 1 {
                s += &format!("{} [{}]\n", r.file, r.mode);
            }
            if a.verbose {
                s += &format!("  format:         {}\n", r.format_version);
                s += &format!("  tensors:        {}\n", r.tensors);
                s += &format!(
                    "  chunks:         {} checked of {}\n",
                    thousands(r.chunks_checked as u64),
                    thousands(r.chunks_total as u64)
                );
                s += &format!("  bytes decoded:  {}\n", thousands(r.bytes_checked));
                s += &format!("  md5 receipts:   {}\n", r.md5_checked);
                s += &format!("  file:           {} bytes\n", thousands(r.file_size));
            }
            for p in &r.problems {
                s += &format!("MISMATCH {}\n", super::printable(p));
            }
        }
        if a.sample.is_some() {
            // The chunks checked follow from the seed: printed so a run can be repeated.
            s += &format!("seed: {seed} (--seed {seed} repeats this sample)\n");
        }
        for l in &ecc_lines {
            s += l;
            s.push('\n');
        }
        s += if ok { "OK\n" } else { "FAILED\n" };
        emit(&s);
    }
    if !ok {
        // The report is on stdout; a script that keeps only stderr still learns why it failed.
        let problems: usize = reports.iter().map(|r| r.problems.len()).sum();
        let damaged = ecc_reports
            .iter()
            .filter(|e| !e.clean || e.sidecar_damaged)
            .count();
        eprintln!(
            "bigsmall: {}: verification failed ({} found{}{}; {})",
            a.file.display(),
            super::counted(problems, "problem"),
            match damaged {
                0 => String::new(),
                n => format!(
                    "; ECC sidecars find damage in {}",
                    super::counted(n, "file")
                ),
            },
            match ecc_errors.len() {
                0 => String::new(),
                n => format!("; {} unusable", super::counted(n, "ECC sidecar")),
            },
            super::report_is("the report is on stdout")
        );
    }
    Ok(if ok { 0 } else { 3 })
}
