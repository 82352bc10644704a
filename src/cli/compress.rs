//! `bigsmall compress`: safetensors file or model directory -> `.bs` (or directory of them).

use std::path::PathBuf;

use bigsmall::delta::{auto, open_base, BaseSource};
use bigsmall::store::{compress_file_against, CompressOptions, CompressReport, DeltaStats};
use bigsmall::store_dir::compress_dir_against;

use super::{emit, emit_json, seconds, thousands, Bar};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("base_choice").args(["delta_from", "auto_delta"])))]
#[command(
    after_help = "Examples:\n  bigsmall compress model.safetensors -o model.bs\n  bigsmall compress ./llama-dir -o llama.bs      # directory of .bs + bigsmall.index.json\n  bigsmall compress model.safetensors --storage  # smallest file\n  bigsmall compress finetune.safetensors --delta-from base.safetensors -o patch.bs\n  bigsmall compress finetune/ --auto-delta --base-dir ~/models -o patch.bs"
)]
pub struct Args {
    /// The .safetensors file or model directory to compress
    src: PathBuf,
    /// Output file (default: SRC with .bs extension; a directory for directory input)
    #[arg(short, long, value_parser = super::output_path)]
    output: Option<PathBuf>,
    /// Overwrite the output if it exists (a directory only when the run replaces all it
    /// holds); an ECC sidecar of the file replaced goes with it
    #[arg(short, long)]
    force: bool,
    #[command(flatten)]
    mode: super::mode::ModeArgs,
    /// Write a patch against this base (.safetensors, model dir, .bs or compressed dir)
    #[arg(
        long,
        visible_alias = "base",
        value_name = "BASE",
        conflicts_with = "auto_delta"
    )]
    delta_from: Option<PathBuf>,
    /// Pick a base under the --base-dir directories: of the models whose tensor names,
    /// shapes and exponent histograms match closely enough, the one whose sampled values
    /// promise the smallest patch
    #[arg(long, requires = "base_dir")]
    auto_delta: bool,
    /// Where --auto-delta looks for bases (repeatable); their fingerprints are cached in
    /// DIR/.bigsmall-fingerprints.json, or under $XDG_CACHE_HOME/bigsmall (default
    /// ~/.cache/bigsmall) where DIR is read-only
    #[arg(long, value_name = "DIR", requires = "auto_delta")]
    base_dir: Vec<PathBuf>,
    /// Silence the warning printed when most matched weights changed
    #[arg(long, requires = "base_choice")]
    force_delta: bool,
    /// Code small same-role tensors across layers (norm/bias chains, small k/v projections,
    /// routers) as one stream per group where that measures smaller; every decision is
    /// recorded and reported
    #[arg(long)]
    group_streams: bool,
    /// Also write a Reed-Solomon sidecar (OUT.ecc, about 15% extra) for `bigsmall repair`
    #[arg(long)]
    ecc: bool,
    /// Checkpoint in OUT.progress/; after a crash or Ctrl-C, run again with the same
    /// arguments and it continues where it stopped (identical output)
    #[arg(long)]
    resume: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let effort = a.mode.effort();
    let is_dir = a.src.is_dir();
    let dst = a.output.clone().unwrap_or_else(|| {
        if is_dir {
            // `model/` -> `model.bs` beside it (not `model/.bs` inside it; `.` -> `../NAME.bs`).
            let src = super::named(&a.src);
            let name = src
                .file_name()
                .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
            let parent = src.parent().unwrap_or(std::path::Path::new(""));
            parent.join(format!("{name}.bs"))
        } else {
            a.src.with_extension("bs")
        }
    });
    let opts = CompressOptions {
        effort,
        overwrite: a.force,
        resume: a.resume,
        group_streams: a.group_streams,
        ecc: a.ecc,
    };
    let mut notes = String::new();
    let mut auto_json = None;
    let base_path = if a.auto_delta {
        let (pick, considered) = auto::pick(&a.src, &a.base_dir)?;
        auto_json = Some(serde_json::json!({
            "base": pick.as_ref().map(|p| p.base.path.display().to_string()),
            "distance": pick.as_ref().map(|p| p.base.distance),
            "patch_share_est": pick.as_ref().and_then(|p| p.base.patch_share),
            "max_distance": auto::MAX_DISTANCE,
            "cached_fingerprints": pick.as_ref().map_or(0, |p| p.cached),
            "candidates": considered
                .iter()
                .map(|c| serde_json::json!({
                    "path": c.path.display().to_string(),
                    "distance": c.distance,
                    "patch_share_est": c.patch_share,
                }))
                .collect::<Vec<_>>(),
        }));
        match pick {
            Some(p) => {
                let est = p.base.patch_share.map_or(String::new(), |e| {
                    format!(", patch ~{:.0}% of the input by sampled values", e * 100.0)
                });
                notes += &format!(
                    "auto-delta: base {} (distance {:.4}{est}; {}, {} cached)\n",
                    p.base.path.display(),
                    p.base.distance,
                    super::counted(considered.len(), "candidate"),
                    super::counted(p.cached, "fingerprint")
                );
                Some(p.base.path)
            }
            None => {
                // None within reach: the candidates are in order of distance.
                notes += &match considered.first() {
                    Some(c) => format!(
                        "auto-delta: no base close enough (nearest {} at distance {:.4} > {}); writing a standalone file\n",
                        c.path.display(),
                        c.distance,
                        auto::MAX_DISTANCE
                    ),
                    None => "auto-delta: no candidate bases found; writing a standalone file\n".into(),
                };
                None
            }
        }
    } else {
        a.delta_from.clone()
    };
    // Said before the work starts, like every choice the user did not make explicitly.
    if !a.json && !notes.is_empty() {
        eprint!("{notes}");
    }
    if base_path
        .as_deref()
        .is_some_and(|b| bigsmall::fsutil::same_path(b, &a.src))
    {
        super::usage_error(
            clap::error::ErrorKind::ValueValidation,
            &format!(
                "the base is {} itself: a patch against the input stores nothing and cannot be decoded without it; give the model it was fine-tuned from",
                a.src.display()
            ),
        );
    }
    let inputs: Vec<&std::path::Path> = std::iter::once(a.src.as_path())
        .chain(base_path.as_deref())
        .collect();
    bigsmall::fsutil::check_not_input(&dst, &inputs)?;
    let base: Option<std::sync::Arc<dyn BaseSource>> = match &base_path {
        Some(p) => {
            // A patch made against a model directory with a shard missing would need that
            // incomplete directory to decode: refused, as compressing it would be. (Decoding
            // against a base only needs the tensors the patch names, checked by receipts.)
            if p.is_dir() && !p.join(bigsmall::store_dir::DIR_INDEX).exists() {
                bigsmall::model::dir::scan_dir(p)?;
            }
            Some(open_base(p)?)
        }
        None => None,
    };
    let bar = Bar::new(a.no_progress);
    let r = if is_dir {
        compress_dir_against(&a.src, &dst, &opts, base.as_ref(), &bar)
            .map_err(|e| e.in_output_dir(&dst))?
    } else {
        compress_file_against(&a.src, &dst, &opts, base.as_deref(), None, &bar)?
    };
    // Each `.bs` was written with its sidecar; their sizes are what the report gives.
    let ecc_bytes: u64 = if a.ecc {
        let files = if is_dir {
            super::container_files(&dst)?
        } else {
            vec![dst.clone()]
        };
        files
            .iter()
            .map(|f| bigsmall::integrity::ecc::sidecar_path(f))
            .map(|s| {
                std::fs::metadata(&s)
                    .map(|m| m.len())
                    .map_err(|e| bigsmall::error::Error::io(&s, e))
            })
            .sum::<Result<u64, _>>()?
    } else {
        0
    };
    if let Some(d) = &r.delta {
        regime_warning(d, a.force_delta);
    }
    let base_unused = base_path.is_some() && r.delta.is_none();
    if base_unused && !a.json {
        eprintln!("{BASE_UNUSED}");
    }
    if a.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            source: String,
            output: String,
            mode: &'static str,
            #[serde(flatten)]
            report: &'a CompressReport,
            ratio_pct: f64,
            /// `--auto-delta`: the pick (none when no candidate was close enough) and every
            /// candidate's distance.
            #[serde(skip_serializing_if = "Option::is_none")]
            auto_delta: Option<serde_json::Value>,
            /// `--ecc`: the sidecars' bytes (not in `output_bytes`).
            #[serde(skip_serializing_if = "Option::is_none")]
            ecc_bytes: Option<u64>,
            /// A base was given and gave nothing: the file is standalone.
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            base_unused: bool,
        }
        emit_json(&Out {
            source: a.src.display().to_string(),
            output: dst.display().to_string(),
            mode: effort.name(),
            report: &r,
            ratio_pct: r.output_bytes as f64 * 100.0 / r.source_bytes.max(1) as f64,
            auto_delta: auto_json,
            ecc_bytes: a.ecc.then_some(ecc_bytes),
            base_unused,
        });
    } else {
        let mb_s = r.source_bytes as f64 / r.seconds.max(1e-9) / 1e6;
        let mut s = format!(
            "compressed {} -> {} [{}]\n",
            a.src.display(),
            dst.display(),
            effort.name()
        );
        // A directory's figures are its weight files' and its shards': what else travels
        // with them is said apart.
        let index = is_dir
            .then(|| bigsmall::store_dir::read_dir_index(&dst))
            .transpose()?;
        let (weights, shards) = match &index {
            Some(i) => (
                format!(" in {}", super::counted(i.shards.len(), "weight file")),
                format!(" in {}", super::counted(i.shards.len(), "shard")),
            ),
            None => Default::default(),
        };
        s += &format!("source:     {} bytes{weights}\n", thousands(r.source_bytes));
        s += &format!(
            "compressed: {} bytes ({:.2}%){shards}\n",
            thousands(r.output_bytes),
            r.output_bytes as f64 * 100.0 / r.source_bytes.max(1) as f64
        );
        if let Some(i) = &index {
            s += &format!(
                "carried:    {}, copied as they are, and the directory index (not counted above)\n",
                super::counted(i.side_files.len(), "side file")
            );
        }
        s += &saved_line("saved:      ", r.source_bytes, r.output_bytes);
        if r.duplicates > 0 {
            s += &format!("duplicates: {} tensors stored once\n", r.duplicates);
        }
        if !r.skipped.is_empty() {
            s += &format!(
                "skipped:    {} hidden entries, not carried: {}\n",
                r.skipped.len(),
                r.skipped.join(", ")
            );
        }
        if a.group_streams {
            s += &group_report(&r.groups);
        }
        if let Some(d) = &r.delta {
            s += &format!(
                "base:       {} (fingerprint {})\n",
                d.base,
                &d.base_fingerprint[..16]
            );
            s += &format!(
                "patch:      {} matched tensors ({} unchanged; of the rest, {} as differences, {} standalone), {} added, {} resized or retyped (both standalone), {} removed\n",
                d.matched_tensors,
                d.unchanged_tensors,
                super::counted(d.delta_chunks, "chunk"),
                d.standalone_chunks,
                d.added_tensors.len(),
                d.resized_tensors.len(),
                d.removed_tensors.len()
            );
            s += &format!(
                "changed:    {} of {} matched bytes ({:.2}%), in elements that differ from the base\n",
                thousands(d.changed_bytes),
                thousands(d.matched_bytes),
                d.changed_fraction() * 100.0
            );
        }
        if a.ecc {
            s += &format!(
                "ecc:        {} bytes of Reed-Solomon parity ({:.1}% of the output)\n",
                thousands(ecc_bytes),
                ecc_bytes as f64 * 100.0 / r.output_bytes.max(1) as f64
            );
        }
        s += &format!("elapsed:    {} ({mb_s:.0} MB/s)\n", seconds(r.seconds));
        emit(&s);
    }
    Ok(0)
}

/// The per-group decisions of `--group-streams`, with the gain of each.
fn group_report(groups: &[bigsmall::format::GroupInfo]) -> String {
    let kept: Vec<_> = groups.iter().filter(|g| g.grouped).collect();
    let gain: i64 = kept
        .iter()
        .map(|g| g.separate_bytes as i64 - g.grouped_bytes as i64)
        .sum();
    let mut s = format!(
        "groups:     {} of {} candidate groups coded as one stream ({} tensors), {} bytes saved\n",
        kept.len(),
        groups.len(),
        kept.iter().map(|g| g.members).sum::<usize>(),
        thousands(gain.max(0) as u64)
    );
    for g in groups {
        s += &format!(
            "  {:<48} {:>3} x {:<4} {:>10} -> {:>10} bytes  {}\n",
            g.key,
            g.members,
            g.dtype,
            thousands(g.separate_bytes),
            thousands(g.grouped_bytes),
            if g.grouped {
                format!(
                    "grouped ({:+.1}%)",
                    (g.grouped_bytes as f64 / g.separate_bytes.max(1) as f64 - 1.0) * 100.0
                )
            } else {
                "kept separate (grouping did not pay)".into()
            }
        );
    }
    s
}

/// Said when a base was given and no tensor gained from it (none unchanged, no chunk smaller
/// as its difference): the file was written standalone.
pub const BASE_UNUSED: &str = "bigsmall: note: the base gave this model nothing (no tensor unchanged, no chunk smaller as its difference): wrote a standalone file, which does not need it";

/// The regime gate: one warning line when most matched weight bytes changed, unless
/// `--force-delta` (`forced`) silences it; and one, always, when nothing matched at all.
pub fn regime_warning(d: &DeltaStats, forced: bool) {
    if d.matched_tensors == 0 {
        eprintln!(
            "bigsmall: warning: no tensor of the base matches by name, dtype and shape: the patch holds every tensor standalone and still needs the base (a plain compress of the model needs none)"
        );
        return;
    }
    if d.changed_fraction() > DeltaStats::REGIME_LIMIT && !forced {
        // The regime is where differences usually do not pay; what this run measured is said
        // with it, since each chunk was stored the smaller way.
        eprintln!(
            "bigsmall: warning: {:.0}% of matched weight bytes changed (over {:.0}%), where delta coding usually does not pay; measured per chunk, {} were smaller as differences and {} standalone (--force-delta silences this)",
            d.changed_fraction() * 100.0,
            DeltaStats::REGIME_LIMIT * 100.0,
            d.delta_chunks,
            d.standalone_chunks
        );
    }
}

/// "N bytes" saved, or "none: the output is N bytes larger" where it is (a tiny file whose
/// index outweighs what coding saves): never a clamped zero.
fn saved_line(label: &str, source: u64, output: u64) -> String {
    if output > source {
        format!(
            "{label}none: the output is {} bytes larger\n",
            thousands(output - source)
        )
    } else {
        format!("{label}{} bytes\n", thousands(source - output))
    }
}
