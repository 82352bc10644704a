//! `bigsmall scan`: facts about a safetensors input before compressing it.

use std::path::PathBuf;

use bigsmall::analysis::scan;

use super::{emit, emit_json, human};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall scan model.safetensors\n  bigsmall scan ./model-dir --json"
)]
pub struct Args {
    /// A .safetensors file or a model directory
    path: PathBuf,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let s = scan(&a.path, &super::Bar::new(a.no_progress))?;
    if a.json {
        emit_json(&s);
        return Ok(0);
    }
    let kv = |k: &str, v: String| format!("  {k:<24} {v}\n");
    let mut out = format!("scan: {}\n", s.path);
    out += &kv("shards:", s.shards.to_string());
    out += &kv(
        "size:",
        format!("{} ({} bytes)", human(s.total_bytes), s.total_bytes),
    );
    out += &kv("tensors total:", s.tensors_total.to_string());
    for (d, b) in &s.dtypes {
        out += &kv(
            &format!("  {d}:"),
            format!("{} tensors, {}", b.tensors, human(b.raw_bytes)),
        );
    }
    out += &kv("layers:", s.layer_count.to_string());
    out += &kv("F32 tensors:", s.tensors_f32.to_string());
    out += &kv("BF16-native F32:", s.tensors_bf16_native.to_string());
    out += &kv(
        "BF16-native by bytes:",
        format!("{:.1}%", s.bf16_native_bytes_frac * 100.0),
    );
    out += &kv(
        "order-0 entropy:",
        format!(
            "{:.2}% H(s,e)+H(m|e); {:.2}% H(e)+raw",
            s.bound_conditional_pct, s.bound_exponent_raw_pct
        ),
    );
    // What the figures are: the bound an order-0 coder of the float fields meets, not the
    // file's. Repeated values, structure and non-float tensors are where compress goes under.
    out += &kv(
        "",
        "(float fields at order 0, other tensors raw; repeats that zstd or palettes find go below)"
            .to_string(),
    );
    out += &kv("recommendation:", s.recommendation.clone());
    emit(&out);
    Ok(0)
}
