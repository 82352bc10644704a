//! `bigsmall repair`: recover a damaged `.bs` from its Reed-Solomon `.ecc` sidecar, or every
//! shard of a compressed directory from theirs.

use std::path::PathBuf;

use bigsmall::integrity::ecc::{check_or_repair_with, sidecar_path, EccReport};

use super::{emit, emit_json, thousands};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall repair corrupted.bs -o recovered.bs           # uses corrupted.bs.ecc\n  bigsmall repair model-dir/ -o recovered-dir/          # each shard from its SHARD.bs.ecc\n  bigsmall repair corrupted.bs -o recovered.bs --ecc model.bs.ecc\n  bigsmall repair model.bs --check                         # report only\nCorrects up to 16 wrong bytes in every 223-byte block, and any burst of up to 14,082 bytes (a\nzeroed sector, a lost tail) per 1.8 MB; two damaged stretches in one 1.8 MB are beyond reach\nwhere they hit blocks a multiple of 64 blocks (14,272 bytes) apart. In a directory, a shard\nwithout a sidecar is verified by decoding and copied as it is. Exit codes: 0 clean or\nrepaired; 3 damage found by --check (repairable or not), or damage beyond the parity."
)]
pub struct Args {
    /// The damaged file, or a compressed directory (each shard with its sidecar, or verified by decoding)
    file: PathBuf,
    /// Where to write the recovered file (a fresh sidecar is written beside it)
    #[arg(short, long, required_unless_present = "check", value_parser = super::output_path)]
    output: Option<PathBuf>,
    /// The sidecar (default: FILE.ecc; not for a directory)
    #[arg(long, value_name = "SIDECAR")]
    ecc: Option<PathBuf>,
    /// Only report what is damaged and whether it can be repaired
    #[arg(long)]
    check: bool,
    /// Overwrite the output if it exists
    #[arg(short, long)]
    force: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.file.is_dir() {
        return run_dir(a);
    }
    let sidecar = a.ecc.clone().unwrap_or_else(|| sidecar_path(&a.file));
    if a.file.exists() && !a.file.is_file() {
        return Err(bigsmall::fsutil::not_a_regular_file(&a.file).into());
    }
    if a.file.exists() && std::fs::symlink_metadata(&sidecar).is_err() {
        return Err(bigsmall::error::Error::invalid(
            &a.file,
            format!(
                "no ECC sidecar at {} to repair from (compress --ecc writes one; --ecc names another)",
                sidecar.display()
            ),
        )
        .into());
    }
    let output = if a.check { None } else { a.output.clone() };
    if let Some(o) = &output {
        bigsmall::fsutil::check_not_input(o, &[&a.file, &sidecar])?;
        // Its sidecar is written too, and must not land on an input either.
        bigsmall::fsutil::check_not_input(&sidecar_path(o), &[&a.file, &sidecar])?;
        bigsmall::fsutil::check_container_output(o, a.force)?;
    }
    let started = std::time::Instant::now();
    let r = check_or_repair_with(
        &a.file,
        &sidecar,
        output.as_deref(),
        true,
        &super::Bar::new(a.no_progress),
    )?;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        emit_json(&r);
    } else {
        let mut s = format!("repair: {} with {}\n", a.file.display(), sidecar.display());
        s += &state(
            &r,
            "  ",
            "file is intact (matches the checksum recorded in the sidecar)",
            output.is_none(),
        );
        if let Some(o) = &output {
            s += &format!(
                "  wrote {} and {} ({}, {:.0} MB/s), checksum of the original file verified\n",
                o.display(),
                sidecar_path(o).display(),
                super::seconds(secs),
                r.data_len as f64 / secs.max(1e-9) / 1e6
            );
        } else if !r.clean {
            s += if r.lost_blocks == 0 {
                "  repairable: run with -o OUT\n"
            } else {
                "  NOT repairable: damage exceeds the parity\n"
            };
        }
        emit(&s);
    }
    Ok(exit_code(
        r.lost_blocks,
        r.clean && !r.sidecar_damaged,
        output.is_none(),
    ))
}

/// 3 where damage is beyond the parity, and where a check (no output) found any: a script
/// asking whether a file is damaged gets the answer `verify` gives.
fn exit_code(lost_blocks: u64, clean: bool, checking: bool) -> i32 {
    if lost_blocks > 0 || (checking && !clean) {
        3
    } else {
        0
    }
}

/// The lines saying what a check found in one file (`intact` when nothing), indented; a
/// check (`checking`) says what a repair would correct, not what it did.
fn state(r: &EccReport, indent: &str, intact: &str, checking: bool) -> String {
    let (corrected, rebuilt) = if checking {
        ("bytes to correct", "blocks to rebuild from group parity")
    } else {
        ("bytes corrected", "blocks rebuilt from group parity")
    };
    let mut s = if r.clean {
        format!("{indent}{intact}\n")
    } else if r.damaged_blocks == 0 {
        String::new()
    } else {
        format!(
            "{indent}damaged blocks: {} of {}; {corrected}: {}; {rebuilt}: {}; unrecoverable: {}\n",
            thousands(r.damaged_blocks),
            thousands(r.blocks),
            thousands(r.corrected_bytes),
            r.rebuilt_blocks,
            r.lost_blocks
        )
    };
    if r.trailing_bytes > 0 {
        s += &format!(
            "{indent}{} bytes appended after the file's end ({})\n",
            thousands(r.trailing_bytes),
            if checking {
                "a repair drops them"
            } else {
                "dropped"
            }
        );
    }
    if r.sidecar_damaged {
        s += if checking {
            format!("{indent}the sidecar itself is damaged (a repair with -o writes a fresh one)\n")
        } else {
            format!("{indent}the sidecar itself was damaged (corrected from its redundancy)\n")
        }
        .as_str();
    }
    s
}

/// `repair DIR`: every shard of a compressed directory against its own sidecar.
fn run_dir(a: Args) -> anyhow::Result<i32> {
    if a.ecc.is_some() {
        super::usage_error(
            clap::error::ErrorKind::ArgumentConflict,
            &format!(
                "--ecc names one sidecar, and {} is a directory: its shards each use their own (SHARD.bs.ecc)",
                a.file.display()
            ),
        );
    }
    let output = if a.check { None } else { a.output.clone() };
    if let Some(o) = &output {
        bigsmall::fsutil::check_not_input(o, &[&a.file])?;
    }
    let started = std::time::Instant::now();
    let shards = bigsmall::store_dir::check_or_repair_dir(
        &a.file,
        output.as_deref(),
        a.force,
        &super::Bar::new(a.no_progress),
    )
    .map_err(|e| match &output {
        Some(o) => e.in_output_dir(o),
        None => e,
    })?;
    let secs = started.elapsed().as_secs_f64();
    let lost: u64 = shards.iter().map(|s| s.report.lost_blocks).sum();
    // Shards copied without a sidecar: those that had none (one whose sidecar was unusable
    // gets a fresh one).
    let unprotected = shards
        .iter()
        .filter(|s| s.no_sidecar.is_some() && s.sidecar_unusable.is_none())
        .count();
    let clean = shards
        .iter()
        .all(|s| s.report.clean && !s.report.sidecar_damaged && s.sidecar_unusable.is_none());
    if a.json {
        emit_json(&serde_json::json!({
            "directory": a.file.display().to_string(),
            "clean": clean,
            "lost_blocks": lost,
            "repaired": output.is_some(),
            "output": output.as_ref().map(|o| o.display().to_string()),
            "shards": shards,
        }));
    } else {
        let mut s = format!(
            "repair: {} ({})\n",
            a.file.display(),
            super::counted(shards.len(), "shard")
        );
        for sh in &shards {
            s += &format!("  {}:\n", sh.file);
            match &sh.no_sidecar {
                Some(how) => s += &format!("    {how}\n"),
                None => s += &state(&sh.report, "    ", "intact", output.is_none()),
            }
        }
        if let Some(o) = &output {
            let bytes: u64 = shards.iter().map(|s| s.report.data_len).sum();
            s += &format!(
                "  wrote {} ({} with fresh sidecars{}, the index and side files copied; {}, {:.0} MB/s), every shard's checksum verified\n",
                o.display(),
                super::counted(shards.len() - unprotected, "shard"),
                match unprotected {
                    0 => String::new(),
                    1 => ", 1 shard without one copied as it was".to_string(),
                    n => format!(", {n} shards without one copied as they were"),
                },
                super::seconds(secs),
                bytes as f64 / secs.max(1e-9) / 1e6
            );
        } else if !clean {
            let bare = shards
                .iter()
                .any(|s| s.no_sidecar.is_some() && s.report.lost_blocks > 0);
            s += match (lost, bare) {
                (0, _) => "  repairable: run with -o OUT\n",
                (_, true) => "  NOT repairable: a damaged shard has no sidecar (or damage exceeds the parity)\n",
                _ => "  NOT repairable: damage exceeds the parity\n",
            };
        }
        emit(&s);
    }
    Ok(exit_code(lost, clean, output.is_none()))
}
