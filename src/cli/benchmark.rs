//! `bigsmall benchmark`: compress + decompress in-process, every figure measured in this run.

use std::path::PathBuf;

use bigsmall::analysis::benchmark::benchmark;

use super::{emit, emit_json, human, Bar};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall benchmark model.safetensors\n  bigsmall benchmark model.safetensors --storage --runs 5 --json\n  bigsmall benchmark model.bsr --json     # an existing container: decode only"
)]
pub struct Args {
    /// The .safetensors file to measure (compressed here first), or an existing .bs/.bsr
    /// (decode only; a mode flag is refused)
    src: PathBuf,
    #[command(flatten)]
    mode: super::mode::ModeArgs,
    /// Decode-to-memory repetitions (the best is reported)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    runs: u64,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.mode.given() && bigsmall::format::is_container(&a.src) {
        // The flag would be ignored.
        super::usage_error(
            clap::error::ErrorKind::ArgumentConflict,
            "--storage, --balanced and --inference apply to a .safetensors input: a container's modes are fixed when it is made (benchmark it as it is, or transcode it first)",
        );
    }
    let effort = a.mode.effort();
    let bar = Bar::new(a.no_progress);
    let r = benchmark(&a.src, effort, a.runs as usize, &bar)?;
    if a.json {
        emit_json(&r);
    } else {
        let mut s = format!(
            "benchmark: {} [{}] on {}\n",
            r.source,
            r.mode,
            super::counted(r.threads, "thread")
        );
        s += &format!(
            "  size:              {} -> {} ({:.2}%)\n",
            human(r.source_bytes),
            human(r.compressed_bytes),
            r.ratio_pct
        );
        if let (Some(mb_s), Some(secs)) = (r.compress_mb_s, r.compress_seconds) {
            s += &format!(
                "  compress:          {mb_s:.0} MB/s ({}, md5 receipts included)\n",
                super::seconds(secs)
            );
        }
        s += &format!(
            "  decode to memory:  {:.0} MB/s ({:.3}s, best of {}, checksums verified)\n",
            r.decode_memory_mb_s, r.decode_memory_seconds, r.decode_memory_runs
        );
        s += &format!(
            "  decompress (file): {:.0} MB/s ({})\n",
            r.decompress_file_mb_s,
            super::seconds(r.decompress_file_seconds)
        );
        s += &format!(
            "  round trip:        {}\n",
            match (r.byte_identical, r.input.as_str()) {
                (true, "container") => "every md5 receipt matched",
                (true, _) => "byte-identical",
                (false, "container") => "MD5 RECEIPT MISMATCH",
                (false, _) => "DIFFERENT",
            }
        );
        for p in &r.problems {
            s += &format!("    MISMATCH {p}\n");
        }
        s += &format!("  peak RSS:          {}\n", human(r.peak_rss_bytes));
        s += "  by role:           tensors          raw       stored    ratio   decode MB/s\n";
        for x in &r.roles {
            s += &format!(
                "    {:<15} {:>9} {:>12} {:>12} {:>7.2}% {:>10.0}\n",
                x.role,
                x.tensors,
                human(x.raw_bytes),
                human(x.stored_bytes),
                x.ratio_pct,
                x.decode_mb_s
            );
        }
        emit(&s);
    }
    if let Some(first) = r.problems.first() {
        // The report is on stdout; a script that keeps only stderr still learns why it failed.
        let more = match r.problems.len() - 1 {
            0 => String::new(),
            n => format!(", and {n} more"),
        };
        eprintln!(
            "bigsmall: {first}{more}; {}",
            super::report_is("the report is on stdout")
        );
    }
    Ok(if r.byte_identical { 0 } else { 3 })
}
