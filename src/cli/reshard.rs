//! `bigsmall reshard`: split, join or rebalance `.bs` files along layer boundaries (blobs
//! copied, never re-encoded; every output tensor verified before the directory appears).

use std::path::PathBuf;

use bigsmall::layout::reshard::{reshard, Layout, ReshardOptions};

use super::{emit, emit_json, thousands, Bar};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall reshard model.bs --output-dir resharded/              # ~2 GB shards\n  bigsmall reshard shard-*.bs --output-dir merged/ --shards 4    # exactly 4 shards\n  bigsmall reshard ./model_dir/ --output-dir one/ --join         # everything in one model.bs"
)]
pub struct Args {
    /// .bs files, or directories made by bigsmall (with bigsmall.index.json)
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Output directory: the shards and a new bigsmall.index.json
    #[arg(short = 'o', long, value_name = "DIR", value_parser = super::output_path)]
    output_dir: PathBuf,
    /// Target shard size in GB (10^9 bytes of stored data); a larger layer gets its own shard
    #[arg(long, value_name = "N", default_value_t = 2.0, value_parser = positive_gb)]
    size_gb: f64,
    /// Exactly N shards, the largest as small as possible (overrides --size-gb)
    #[arg(long, value_name = "N", value_parser = shard_count)]
    shards: Option<usize>,
    /// Everything in one model.bs (overrides --shards and --size-gb)
    #[arg(long)]
    join: bool,
    /// Replace the output directory if it exists and is not empty (only when the run
    /// replaces all it holds)
    #[arg(short, long)]
    force: bool,
    /// Also recompute every output tensor's md5 (chunk checksums are always checked)
    #[arg(long)]
    md5: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

fn shard_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_gb(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v * 1e9 >= 1.0 => Ok(v),
        Ok(_) => Err("must be a size above 0 (and at least one byte)".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let layout = if a.join {
        Layout::Join
    } else if let Some(n) = a.shards {
        Layout::Shards(n)
    } else {
        Layout::MaxBytes((a.size_gb * 1e9) as u64)
    };
    let opts = ReshardOptions {
        layout,
        overwrite: a.force,
        check_md5: a.md5,
    };
    let inputs: Vec<&std::path::Path> = a.inputs.iter().map(|p| p.as_path()).collect();
    bigsmall::fsutil::check_not_input(&a.output_dir, &inputs)?;
    let bar = Bar::new(a.no_progress);
    let r = reshard(&a.inputs, &a.output_dir, &opts, &bar)
        .map_err(|e| e.in_output_dir(&a.output_dir))?;
    if a.json {
        emit_json(&r);
        return Ok(0);
    }
    let inputs = match r.inputs.as_slice() {
        [one] => one.file.clone(),
        many => format!("{} input files", many.len()),
    };
    let mut s = format!(
        "resharded {inputs} ({} bytes) -> {}: {}\n",
        thousands(r.input_bytes),
        r.output_dir,
        super::counted(r.shards.len(), "shard"),
    );
    for sh in &r.shards {
        let layers = match sh.layers {
            Some([a, b]) if a == b => format!("layer {a}"),
            Some([a, b]) => format!("layers {a}-{b}"),
            None => String::new(),
        };
        let what = match (sh.non_layer_tensors, layers.is_empty()) {
            (0, true) => "no tensors".to_string(),
            (0, false) => layers,
            (n, true) => format!("{n} non-layer tensors"),
            (n, false) => format!("{n} non-layer tensors + {layers}"),
        };
        s += &format!(
            "  {}  {} tensors  {} bytes  ({what}{})\n",
            sh.file,
            sh.tensors,
            thousands(sh.bytes),
            if sh.original_header {
                "; original header"
            } else {
                ""
            }
        );
    }
    if !r.side_files.is_empty() {
        s += &format!("  side files: {}\n", r.side_files.join(", "));
    }
    s += &format!(
        "copied {} bytes in {}: {:.0} MB/s of model data ({} bytes raw), {:.0} MB/s stored\n",
        thousands(r.bytes_copied),
        super::seconds(r.seconds),
        r.raw_mb_per_s,
        thousands(r.raw_bytes),
        r.stored_mb_per_s,
    );
    s += &format!(
        "verified: {} tensors (chunk checksums{})\n",
        r.verified_tensors,
        if r.md5_checked { ", md5" } else { "" }
    );
    emit(&s);
    Ok(0)
}
