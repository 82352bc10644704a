//! `bigsmall repair`: recover a damaged `.bs` from its Reed-Solomon `.ecc` sidecar.

use std::path::PathBuf;

use bigsmall::integrity::ecc::{check_or_repair, sidecar_path};

use super::{emit, emit_json, thousands};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall repair corrupted.bs -o recovered.bs           # uses corrupted.bs.ecc\n  bigsmall repair corrupted.bs -o recovered.bs --ecc model.bs.ecc\n  bigsmall repair model.bs --check                         # report only\nCorrects up to 16 wrong bytes in every 223-byte block, and any burst of up to 14 KiB (a zeroed\nsector, a lost tail) per 1.8 MB. Exit codes: 0 repaired or clean, 3 damage beyond the parity."
)]
pub struct Args {
    /// The damaged file
    file: PathBuf,
    /// Where to write the recovered file (a fresh sidecar is written beside it)
    #[arg(short, long, required_unless_present = "check")]
    output: Option<PathBuf>,
    /// The sidecar (default: FILE.ecc)
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
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let sidecar = a.ecc.clone().unwrap_or_else(|| sidecar_path(&a.file));
    let output = if a.check { None } else { a.output.clone() };
    if let Some(o) = &output {
        bigsmall::fsutil::check_not_input(o, &[&a.file, &sidecar])?;
        bigsmall::fsutil::check_output(o, a.force)?;
    }
    let started = std::time::Instant::now();
    let r = check_or_repair(&a.file, &sidecar, output.as_deref())?;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        emit_json(&r);
    } else {
        let mut s = format!("repair: {} with {}\n", a.file.display(), sidecar.display());
        if r.clean {
            s += "  file is intact (matches the checksum recorded in the sidecar)\n";
        } else {
            s += &format!(
                "  damaged blocks: {} of {}; bytes corrected: {}; blocks rebuilt from group parity: {}; unrecoverable: {}\n",
                thousands(r.damaged_blocks),
                thousands(r.blocks),
                thousands(r.corrected_bytes),
                r.rebuilt_blocks,
                r.lost_blocks
            );
        }
        if r.sidecar_damaged {
            s += "  the sidecar itself was damaged (corrected from its redundancy)\n";
        }
        if let Some(o) = &output {
            s += &format!(
                "  wrote {} and {} ({:.2}s, {:.0} MB/s), checksum of the original file verified\n",
                o.display(),
                sidecar_path(o).display(),
                secs,
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
    Ok(if r.lost_blocks > 0 { 3 } else { 0 })
}
