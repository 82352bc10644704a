//! `bigsmall transcode`: re-encode a container for decode speed (`.bsr`) or back toward size.

use std::path::PathBuf;

use bigsmall::layout::transcode::{
    transcode, transcode_dir, Mode, TranscodeOptions, DEFAULT_RAW_BUDGET_PP, DEFAULT_SPEED_STREAMS,
};

use super::{emit, emit_json, thousands, Bar};

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    /// Hot and small tensors raw (usable in place), big ones in many fast streams
    Speed,
    /// The balanced codecs, source chunks kept where smaller
    Balanced,
    /// The smallest codecs, source chunks kept where smaller: never larger than the source
    /// (unless the source has grouped streams, which are undone, or --n-streams re-cuts it)
    Ratio,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall transcode model.bs model.bsr                 # speed mode\n  bigsmall transcode model.bsr small.bs --mode ratio\n  bigsmall transcode model.bs model.bsr --n-streams 64 --workers 8\n  bigsmall transcode llama.bs/ llama.bsr/               # a compressed directory, shard by shard"
)]
pub struct Args {
    /// The .bs (or .bsr) file to re-encode, or a directory made by compress or reshard
    src: PathBuf,
    /// Output file (.bsr by convention for speed mode), or directory for a directory
    #[arg(value_parser = super::output_path)]
    dst: PathBuf,
    /// What the output is tuned for
    #[arg(long, value_enum, default_value = "speed")]
    mode: ModeArg,
    /// Independently decodable streams per big tensor [default: 16 in speed mode; balanced
    /// and ratio keep the source's 1 MiB chunks]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    n_streams: Option<u64>,
    /// Speed mode: how many percentage points of the raw model may go to keeping hot tensors
    /// (embeddings, tensors under 1 MiB) raw, least compressible first, estimated by coding a
    /// sample of each as speed mode would (whatever the input's coding, so a .bsr transcoded
    /// again keeps the same ones raw); norms, biases and tensors under 64 KiB are raw
    /// regardless (0 keeps only
    /// those; 100 makes every hot tensor raw)
    /// [default: 2; per shard for a directory]
    #[arg(long, value_name = "PP", value_parser = percentage_points)]
    raw_budget: Option<f64>,
    /// Threads to re-encode (and measure decode) with, 1 to 1024 [default: all cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Replace DST if it exists (a directory only when the run replaces all it holds)
    #[arg(short, long)]
    force: bool,
    /// Skip measuring the decode speed of source and output
    #[arg(long)]
    no_measure: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

fn percentage_points(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be between 0 and 100 (percentage points of the raw model)".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.raw_budget.is_some() && !matches!(a.mode, ModeArg::Speed) {
        super::usage_error(
            clap::error::ErrorKind::ArgumentConflict,
            "--raw-budget applies to --mode speed only",
        );
    }
    let raw_budget = a.raw_budget.unwrap_or(DEFAULT_RAW_BUDGET_PP);
    let mode = match a.mode {
        ModeArg::Speed => Mode::Speed,
        ModeArg::Balanced => Mode::Balanced,
        ModeArg::Ratio => Mode::Ratio,
    };
    let opts = TranscodeOptions {
        mode,
        n_streams: a
            .n_streams
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        raw_budget_pp: raw_budget,
        overwrite: a.force,
        measure: !a.no_measure,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.workers.map_or(0, usize::from))
        .build()?;
    let bar = Bar::new(a.no_progress);
    let r = if super::is_bs_dir(&a.src) {
        pool.install(|| transcode_dir(&a.src, &a.dst, &opts, &bar))
            .map_err(|e| e.in_output_dir(&a.dst))?
    } else {
        pool.install(|| transcode(&a.src, &a.dst, &opts, &bar))?
    };
    if a.json {
        emit_json(&r);
        return Ok(0);
    }
    let pct = |b: u64| b as f64 * 100.0 / r.raw_bytes.max(1) as f64;
    // The setting, not a count: streams are 64 KiB to 1 MiB, so small tensors get fewer and
    // very large ones more.
    let streams = match (mode, a.n_streams) {
        (_, Some(n)) => format!("--n-streams {n}"),
        (Mode::Speed, None) => format!("--n-streams {DEFAULT_SPEED_STREAMS}"),
        _ => "1 MiB chunks".into(),
    };
    let mut s = format!(
        "transcode[{}]: {} -> {}\n{} -> {} bytes ({:.2}% -> {:.2}% of the tensor bytes, {:+.2} pp; {:+.2}% vs the input)\n",
        mode.name(),
        r.source,
        r.output,
        thousands(r.before_bytes),
        thousands(r.after_bytes),
        pct(r.before_bytes),
        pct(r.after_bytes),
        pct(r.after_bytes) - pct(r.before_bytes),
        (r.after_bytes as f64 / r.before_bytes.max(1) as f64 - 1.0) * 100.0,
    );
    s += &format!(
        "tensors: {} ({} re-encoded{}, all md5-verified, every new chunk decoded back); chunks {} -> {} ({streams}){}\n",
        r.tensors,
        r.reencoded_tensors,
        if mode == Mode::Speed {
            format!(
                ", {} kept raw for in-place use (budget {} pp)",
                r.raw_tensors, raw_budget
            )
        } else {
            String::new()
        },
        r.chunks_before,
        r.chunks_after,
        if r.source_chunks_kept > 0 {
            format!(", {} source chunks kept (smaller)", r.source_chunks_kept)
        } else {
            String::new()
        },
    );
    if let (Some(b), Some(after)) = (r.decode_before_mb_s, r.decode_after_mb_s) {
        s += &format!(
            "decode to memory ({}, best of 3): {:.0} MB/s -> {:.0} MB/s ({:.2}x)\n",
            super::counted(r.threads, "thread"),
            b,
            after,
            after / b.max(1e-9)
        );
    }
    s += &format!("wall: {:.1}s\n", r.seconds);
    emit(&s);
    Ok(0)
}
