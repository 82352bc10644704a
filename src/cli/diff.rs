//! `bigsmall diff A B`: added / removed / changed / unchanged tensors, from receipts where the
//! inputs are containers; `--patch OUT` writes the patch from A to B.

use std::path::PathBuf;

use bigsmall::codec::Effort;
use bigsmall::delta::diff::diff;
use bigsmall::delta::open_base;
use bigsmall::store::{compress_file_against, CompressOptions};
use bigsmall::store_dir::compress_dir_against;

use super::{emit, emit_json, human, Bar};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall diff v1.bs v2.bs\n  bigsmall diff base.safetensors finetune.safetensors --patch patch.bs\n  bigsmall diff base-dir/ finetune-dir/ --json"
)]
pub struct Args {
    /// The first model (.bs, compressed dir, .safetensors or model dir)
    a: PathBuf,
    /// The second model
    b: PathBuf,
    /// Also write the patch from A to B (B must be a .safetensors file or model dir)
    #[arg(long, value_name = "OUT", value_parser = super::output_path)]
    patch: Option<PathBuf>,
    /// List unchanged tensors too
    #[arg(short, long)]
    all: bool,
    /// Also print the zeroth-order entropy of the XOR and difference streams of the shared
    /// tensors (the yardstick for patch sizes; reads all weights)
    #[arg(long)]
    entropy: bool,
    /// Overwrite the patch if it exists
    #[arg(short, long)]
    force: bool,
    /// Silence the warning printed when most matched weights changed (with --patch)
    #[arg(long, requires = "patch")]
    force_delta: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if let Some(out) = &a.patch {
        bigsmall::fsutil::check_not_input(out, &[&a.a, &a.b])?;
        if !bigsmall::store_dir::containers_at(&a.b)?.is_empty() {
            return Err(bigsmall::error::Error::invalid(
                &a.b,
                "is a .bs container; --patch codes B from its weights: give the fine-tune's .safetensors file or model directory (or decompress it first)",
            )
            .into());
        }
    }
    let r = diff(&a.a, &a.b)?;
    let mut patch = None;
    // The patch written, reported after the diff (on stdout: a success says nothing on stderr).
    let mut patch_line = String::new();
    if let Some(out) = &a.patch {
        let base = open_base(&a.a)?;
        let opts = CompressOptions {
            effort: Effort::Balanced,
            overwrite: a.force,
            resume: false,
            group_streams: false,
            ecc: false,
        };
        let bar = Bar::new(a.no_progress);
        let rep = if a.b.is_dir() {
            compress_dir_against(&a.b, out, &opts, Some(&base), &bar)
                .map_err(|e| e.in_output_dir(out))?
        } else {
            compress_file_against(&a.b, out, &opts, Some(base.as_ref()), None, &bar)?
        };
        patch_line = format!(
            "patch: {} -> {} ({} bytes{})\n",
            a.b.display(),
            out.display(),
            super::thousands(rep.output_bytes),
            if rep.delta.is_none() {
                "; standalone: the base gave nothing"
            } else {
                ""
            }
        );
        match &rep.delta {
            Some(d) => super::compress::regime_warning(d, a.force_delta),
            None => eprintln!("{}", super::compress::BASE_UNUSED),
        }
        patch = Some(serde_json::json!({ "output": out.display().to_string(), "report": rep }));
    }
    let entropy = if a.entropy {
        Some(bigsmall::delta::diff::delta_entropy(&a.a, &a.b)?)
    } else {
        None
    };
    if a.json {
        emit_json(&serde_json::json!({ "diff": r, "entropy": entropy, "patch": patch }));
        return Ok(0);
    }
    let mut s = format!("diff: {} -> {}\n", r.a, r.b);
    for row in &r.rows {
        if row.status == "unchanged" && !a.all {
            continue;
        }
        let desc = match (&row.a, &row.b) {
            (Some(x), Some(y)) if matches!(row.status, "resized" | "retyped") => {
                format!("{} {:?} -> {} {:?}", x.dtype, x.shape, y.dtype, y.shape)
            }
            (_, Some(y)) => format!("{} {:?} {}", y.dtype, y.shape, human(y.bytes)),
            (Some(x), None) => format!("{} {:?} {}", x.dtype, x.shape, human(x.bytes)),
            (None, None) => String::new(),
        };
        s += &format!(
            "  {:<9} {}  {}\n",
            row.status,
            super::printable(&row.name),
            desc
        );
    }
    for m in &r.metadata {
        let text = |v: &Option<String>| {
            v.as_deref()
                .map_or("(none)".to_string(), |v| format!("{v:?}"))
        };
        s += &format!(
            "  metadata  {}  {} -> {}\n",
            super::printable(&m.key),
            text(&m.a),
            text(&m.b)
        );
    }
    // A dtype change is rare enough to be named only when there is one.
    let (retyped, retyped_bytes) = match r.retyped {
        0 => (String::new(), String::new()),
        n => (
            format!(", retyped {n}"),
            format!(", {} retyped", human(r.retyped_bytes)),
        ),
    };
    s += &format!(
        "added {}, removed {}, changed {}, resized {}{retyped}, unchanged {} (tensor sizes: {} changed, {} resized{retyped_bytes}, {} unchanged){}\n",
        r.added,
        r.removed,
        r.changed,
        r.resized,
        r.unchanged,
        human(r.changed_bytes),
        human(r.resized_bytes),
        human(r.unchanged_bytes),
        match r.metadata.len() {
            0 => String::new(),
            1 => "; 1 metadata entry differs".to_string(),
            n => format!("; {n} metadata entries differ"),
        }
    );
    if let Some(e) = entropy {
        s += &format!(
            "entropy of the shared tensors' delta ({} tensors, {}): XOR {:.0} bytes, difference {:.0} bytes (zeroth order, 16-bit symbols)\n",
            e.tensors,
            human(e.bytes),
            e.xor_bytes,
            e.sub_bytes
        );
    }
    s += &patch_line;
    emit(&s);
    Ok(0)
}
