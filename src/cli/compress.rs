//! `bigsmall compress`: safetensors file or model directory -> `.bs` (or directory of them).

use std::path::PathBuf;

use bigsmall::codec::Effort;
use bigsmall::store::{compress_file, CompressOptions, CompressReport};
use bigsmall::store_dir::compress_dir;

use super::{emit, emit_json, thousands, Bar};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall compress model.safetensors -o model.bs\n  bigsmall compress ./llama-dir -o llama.bs      # directory of .bs + bigsmall.index.json\n  bigsmall compress model.safetensors --storage  # smallest file"
)]
pub struct Args {
    /// The .safetensors file or model directory to compress
    src: PathBuf,
    /// Output file (default: SRC with .bs extension; a directory for directory input)
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Overwrite the output if it exists
    #[arg(short, long)]
    force: bool,
    /// Smallest file: tries every candidate coding, slower to compress
    #[arg(long, group = "mode")]
    storage: bool,
    /// Near-smallest file at full decode speed (the default)
    #[arg(long, group = "mode")]
    balanced: bool,
    /// Fastest decode: byte-aligned fields only, slightly larger
    #[arg(long, group = "mode")]
    inference: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let effort = if a.storage {
        Effort::Storage
    } else if a.inference {
        Effort::Inference
    } else {
        Effort::Balanced
    };
    let is_dir = a.src.is_dir();
    let dst = a.output.clone().unwrap_or_else(|| {
        if is_dir {
            // `model/` -> `model.bs` beside it (not `model/.bs` inside it).
            let name = a
                .src
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "model".into());
            let parent = a
                .src
                .components()
                .as_path()
                .parent()
                .unwrap_or(std::path::Path::new(""));
            parent.join(format!("{name}.bs"))
        } else {
            a.src.with_extension("bs")
        }
    });
    let opts = CompressOptions {
        effort,
        overwrite: a.force,
    };
    let bar = Bar::new(a.no_progress);
    let r = if is_dir {
        compress_dir(&a.src, &dst, &opts, &bar)?
    } else {
        compress_file(&a.src, &dst, &opts, &bar)?
    };
    if a.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            source: String,
            output: String,
            mode: &'static str,
            #[serde(flatten)]
            report: &'a CompressReport,
            ratio_pct: f64,
        }
        emit_json(&Out {
            source: a.src.display().to_string(),
            output: dst.display().to_string(),
            mode: effort.name(),
            report: &r,
            ratio_pct: r.output_bytes as f64 * 100.0 / r.source_bytes.max(1) as f64,
        });
    } else {
        let saved = r.source_bytes.saturating_sub(r.output_bytes);
        let mb_s = r.source_bytes as f64 / r.seconds.max(1e-9) / 1e6;
        let mut s = format!(
            "compressed {} -> {} [{}]\n",
            a.src.display(),
            dst.display(),
            effort.name()
        );
        s += &format!("source:     {} bytes\n", thousands(r.source_bytes));
        s += &format!(
            "compressed: {} bytes ({:.2}%)\n",
            thousands(r.output_bytes),
            r.output_bytes as f64 * 100.0 / r.source_bytes.max(1) as f64
        );
        s += &format!("saved:      {} bytes\n", thousands(saved));
        if r.duplicates > 0 {
            s += &format!("duplicates: {} tensors stored once\n", r.duplicates);
        }
        s += &format!("elapsed:    {:.2}s ({mb_s:.0} MB/s)\n", r.seconds);
        emit(&s);
    }
    Ok(0)
}
