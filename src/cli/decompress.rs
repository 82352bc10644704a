//! `bigsmall decompress`: `.bs` (or a compressed directory) -> the exact original safetensors.

use std::path::PathBuf;

use bigsmall::delta::open_base;
use bigsmall::store::{decompress_file_with, DecompressOptions};
use bigsmall::store_dir::decompress_dir_with;

use super::{emit, emit_json, is_bs_dir, Bar};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall decompress model.bs -o model.safetensors\n  bigsmall decompress llama.bs/ -o llama-dir   # directory in, directory out\n  bigsmall decompress model.bs --md5            # also check every md5 receipt\n  bigsmall decompress patch.bs --base base.safetensors -o finetune.safetensors"
)]
pub struct Args {
    /// The .bs file or compressed directory
    src: PathBuf,
    /// Output file or directory (default: SRC with .safetensors extension, or without .bs)
    #[arg(short, long, value_parser = super::output_path)]
    output: Option<PathBuf>,
    /// Overwrite the output if it exists (a directory only when the run replaces all it holds)
    #[arg(short, long)]
    force: bool,
    /// Also check each tensor's md5 receipt (chunk checksums are always checked)
    #[arg(long)]
    md5: bool,
    /// The base a patch was made against (.safetensors, model dir, .bs or compressed dir)
    #[arg(long, value_name = "BASE")]
    base: Option<PathBuf>,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    run_with(
        a.src,
        a.output,
        a.base,
        a.force,
        a.md5,
        a.no_progress,
        a.json,
    )
}

/// Shared by `decompress` and `apply`.
pub fn run_with(
    src: PathBuf,
    output: Option<PathBuf>,
    base: Option<PathBuf>,
    force: bool,
    md5: bool,
    no_progress: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let a = Args {
        src,
        output,
        force,
        md5,
        base,
        no_progress,
        json,
    };
    let dir = is_bs_dir(&a.src);
    let dst = a.output.clone().unwrap_or_else(|| {
        if dir {
            let src = super::named(&a.src);
            let s = src.to_string_lossy();
            PathBuf::from(
                s.trim_end_matches('/').trim_end_matches(".bs").to_string()
                    + if s.trim_end_matches('/').ends_with(".bs") {
                        ""
                    } else {
                        ".out"
                    },
            )
        } else {
            a.src.with_extension("safetensors")
        }
    });
    let inputs: Vec<&std::path::Path> = std::iter::once(a.src.as_path())
        .chain(a.base.as_deref())
        .collect();
    bigsmall::fsutil::check_not_input(&dst, &inputs)?;
    let opts = DecompressOptions {
        overwrite: a.force,
        check_md5: a.md5,
    };
    let base = match &a.base {
        Some(p) => Some(open_base(p)?),
        None => None,
    };
    let bar = Bar::new(a.no_progress);
    let r = if dir {
        decompress_dir_with(&a.src, &dst, &opts, base, &bar).map_err(|e| e.in_output_dir(&dst))?
    } else {
        decompress_file_with(&a.src, &dst, &opts, base, &bar)?
    };
    if a.json {
        emit_json(&serde_json::json!({
            "source": a.src.display().to_string(),
            "base": a.base.as_ref().map(|b| b.display().to_string()),
            "output": dst.display().to_string(),
            "report": r,
        }));
    } else {
        let checks = if r.md5_checked {
            "chunk checksums and md5 receipts verified"
        } else {
            "chunk checksums verified"
        };
        let mut s = format!(
            "decompressed {} -> {} ({}, {:.0} MB/s; {} tensors, {checks})\n",
            a.src.display(),
            dst.display(),
            super::seconds(r.seconds),
            r.output_bytes as f64 / r.seconds.max(1e-9) / 1e6,
            r.tensors
        );
        if !r.not_carried.is_empty() {
            s += &format!(
                "not carried (not in the directory index): {}\n",
                r.not_carried.join(", ")
            );
        }
        emit(&s);
    }
    Ok(0)
}
