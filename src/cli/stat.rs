//! `bigsmall stat`: one line per tensor, sortable.

use std::path::PathBuf;

use bigsmall::analysis::{tensor_stats, TensorStat};
use bigsmall::format::reader::Container;

use super::{container_files, emit, emit_json, human};

#[derive(Clone, Copy, clap::ValueEnum)]
enum SortKey {
    /// Stored size as % of raw
    Ratio,
    /// Raw size
    Size,
    /// Tensor name
    Name,
    /// File order
    Index,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall stat model.bs --sort ratio --reverse\n  bigsmall stat model.bs --tensor q_proj --json"
)]
pub struct Args {
    /// The .bs file or compressed directory
    file: PathBuf,
    /// Sort by this column (default: file order)
    #[arg(long, value_enum, default_value = "index")]
    sort: SortKey,
    /// Reverse the order
    #[arg(long)]
    reverse: bool,
    /// Only tensors whose name contains this text
    #[arg(long)]
    tensor: Option<String>,
    /// Print the rows as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    let files = container_files(&a.file)?;
    let sharded = a.file.is_dir();
    for f in &files {
        let shard = sharded.then(|| f.file_name().map(|n| n.to_string_lossy().into_owned()));
        rows.extend(tensor_stats(&Container::open(f)?).into_iter().map(|mut r| {
            r.shard = shard.clone().flatten();
            r
        }));
    }
    if let Some(t) = &a.tensor {
        rows.retain(|r| r.name.contains(t.as_str()));
    }
    match a.sort {
        // Empty tensors (no ratio) after every other.
        SortKey::Ratio => rows.sort_by(|x, y| {
            let key = |r: &TensorStat| (r.ratio_pct.is_none(), r.ratio_pct.unwrap_or(0.0));
            let ((xn, xr), (yn, yr)) = (key(x), key(y));
            xn.cmp(&yn).then(xr.total_cmp(&yr))
        }),
        SortKey::Size => rows.sort_by_key(|r| r.raw_bytes),
        SortKey::Name => rows.sort_by(|x, y| x.name.cmp(&y.name)),
        SortKey::Index => {}
    }
    if a.reverse {
        rows.reverse();
    }
    if a.json {
        emit_json(&rows);
        return Ok(0);
    }
    let w = rows
        .iter()
        .map(|r| super::printable(&r.name).chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    // A directory's rows say which shard holds them (their # counts within it).
    let sw = sharded.then(|| {
        rows.iter()
            .filter_map(|r| r.shard.as_ref().map(String::len))
            .max()
            .unwrap_or(0)
            .max("shard".len())
    });
    let shard_col = |v: &str| sw.map_or(String::new(), |sw| format!("{v:<sw$}  "));
    let mut s = format!(
        "{}{:>5}  {:<w$}  {:<18} {:<8} {:<14} {:>11} {:>11} {:>8}\n",
        shard_col("shard"),
        "#",
        "name",
        "shape",
        "dtype",
        "codec",
        "raw",
        "stored",
        "ratio"
    );
    for r in &rows {
        let shape = format!(
            "({})",
            r.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        s += &format!(
            "{}{:>5}  {:<w$}  {:<18} {:<8} {:<14} {:>11} {:>11} {:>8}\n",
            shard_col(r.shard.as_deref().unwrap_or("")),
            r.index,
            super::printable(&r.name),
            shape,
            r.dtype,
            r.codec,
            human(r.raw_bytes),
            human(r.stored_bytes),
            r.ratio_pct.map_or("-".into(), |p| format!("{p:.2}%"))
        );
    }
    if let (true, Some(t)) = (rows.is_empty(), &a.tensor) {
        s += &format!("(no tensor name contains '{t}')\n");
    }
    emit(&s);
    Ok(0)
}
