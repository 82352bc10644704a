//! `bigsmall info`: what is in a `.bs` file, from its index alone.

use std::path::PathBuf;

use bigsmall::analysis::{info, info_dir, Breakdown, Info, TensorStat};
use bigsmall::format::reader::Container;

use super::{container_files, emit, emit_json, human, is_bs_dir, thousands};

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  bigsmall info model.bs\n  bigsmall info llama.bs/ --json")]
pub struct Args {
    /// The .bs file or compressed directory
    file: PathBuf,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

fn pct(stored: u64, raw: u64) -> String {
    if raw == 0 {
        "-".into()
    } else {
        format!("{:.2}%", stored as f64 * 100.0 / raw as f64)
    }
}

fn table(title: &str, rows: &std::collections::BTreeMap<String, Breakdown>) -> String {
    let mut s = format!("  {title}\n");
    for (k, b) in rows {
        s += &format!(
            "    {:<16} {:>5} tensors {:>12} -> {:>12} {:>8}\n",
            k,
            b.tensors,
            human(b.raw_bytes),
            human(b.stored_bytes),
            pct(b.stored_bytes, b.raw_bytes)
        );
    }
    s
}

fn ranked(title: &str, rows: &[TensorStat]) -> String {
    let mut s = format!("  {title}\n");
    for t in rows {
        s += &format!(
            "    {:>7.2}%  {}  ({} -> {}{})\n",
            t.ratio_pct.unwrap_or(0.0),
            super::printable(&t.name),
            human(t.raw_bytes),
            human(t.stored_bytes),
            t.shard
                .as_ref()
                .map_or(String::new(), |sh| format!(", in {sh}"))
        );
    }
    s
}

fn render(i: &Info) -> String {
    let kv = |k: &str, v: String| format!("  {k:<26} {v}\n");
    let mut s = if i.shards.is_empty() {
        format!("bigsmall container: {}\n", i.file)
    } else {
        format!(
            "bigsmall directory: {} ({})\n",
            i.file,
            super::counted(i.shards.len(), "shard")
        )
    };
    s += &kv("container_version", i.container_version.clone());
    s += &kv("created_by", i.created_by.clone());
    s += &kv("mode", i.mode.clone());
    s += &kv("source", i.source_file.clone());
    s += &kv("model_type", i.model_type.clone());
    s += &kv("tensor_count", thousands(i.tensor_count as u64));
    s += &kv("chunk_count", thousands(i.chunk_count as u64));
    s += &kv(
        "file_size",
        format!("{} bytes ({})", thousands(i.file_size), human(i.file_size)),
    );
    s += &kv(
        "source_size",
        format!(
            "{} bytes ({})",
            thousands(i.source_size),
            human(i.source_size)
        ),
    );
    s += &kv("ratio", format!("{:.2}% of source", i.ratio_pct));
    if !i.shards.is_empty() {
        s += "  shards (the index and side files not counted)\n";
        let w = i.shards.iter().map(|x| x.file.len()).max().unwrap_or(0);
        for x in &i.shards {
            s += &format!(
                "    {:<w$} {:>5} tensors {:>12} -> {:>12} {:>8}\n",
                x.file,
                x.tensor_count,
                human(x.source_size),
                human(x.file_size),
                pct(x.file_size, x.source_size)
            );
        }
    }
    if i.duplicates > 0 {
        s += &kv(
            "duplicates",
            format!("{} tensors stored once (tied/shared)", i.duplicates),
        );
    }
    if !i.groups.is_empty() {
        let kept: Vec<_> = i.groups.iter().filter(|g| g.grouped).collect();
        s += &kv(
            "grouped_streams",
            format!(
                "{} groups ({} tensors) coded as one stream each, {} bytes saved; {} candidates kept separate",
                kept.len(),
                kept.iter().map(|g| g.members).sum::<usize>(),
                thousands(
                    kept.iter()
                        .map(|g| g.separate_bytes.saturating_sub(g.grouped_bytes))
                        .sum()
                ),
                i.groups.len() - kept.len()
            ),
        );
        for g in &kept {
            s += &format!(
                "    {:<48} {:>3} tensors {:>10} -> {:>10} bytes\n",
                g.key,
                g.members,
                thousands(g.separate_bytes),
                thousands(g.grouped_bytes)
            );
        }
    }
    if let Some(p) = &i.patch {
        s += &kv(
            "patch_of",
            format!("{} (made from {})", p.base_fingerprint, p.made_from),
        );
        s += &kv(
            "patch_tensors",
            format!(
                "{} unchanged (index entry only), {} delta, {} standalone; base has {} tensors, {} removed",
                p.unchanged_tensors,
                p.delta_tensors,
                p.standalone_tensors,
                p.base_tensor_count,
                p.removed.len()
            ),
        );
        s += &kv(
            "saved",
            if i.file_size > i.source_size {
                format!(
                    "none: {} bytes larger than the fine-tune's safetensors",
                    thousands(i.file_size - i.source_size)
                )
            } else {
                format!(
                    "{} bytes vs the fine-tune's safetensors",
                    thousands(i.source_size - i.file_size)
                )
            },
        );
    }
    s += &kv("layer_count", i.layer_count.to_string());
    s += &kv("non_layer_raw_bytes", human(i.non_layer_raw_bytes));
    s += &kv("largest_layer_raw_bytes", human(i.largest_layer_raw_bytes));
    s += &kv(
        "streaming_peak_ram_est",
        format!(
            "{} (non-layer + largest layer + one decode window)",
            human(i.streaming_peak_ram_est)
        ),
    );
    s += &table("dtype_breakdown", &i.dtypes);
    s += &table("codec_breakdown (by main codec per tensor)", &i.codecs);
    s += &table("role_breakdown", &i.roles);
    s += &ranked("top 5 best-compressed tensors (lower = better)", &i.best);
    s += &ranked("top 5 worst-compressed tensors", &i.worst);
    s
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let files = container_files(&a.file)?;
    let i = if is_bs_dir(&a.file) {
        let mut shards = Vec::new();
        for f in &files {
            let name = f.strip_prefix(&a.file).unwrap_or(f);
            shards.push((name.display().to_string(), Container::open(f)?));
        }
        info_dir(&a.file, &shards)
    } else {
        info(&Container::open(&a.file)?)
    };
    if a.json {
        emit_json(&i);
    } else {
        emit(&render(&i));
    }
    Ok(0)
}
