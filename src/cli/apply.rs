//! `bigsmall apply BASE PATCH`: rebuild a fine-tune from its base and a patch (the same as
//! `decompress PATCH --base BASE`).

use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  bigsmall apply base.safetensors patch.bs -o finetune.safetensors\n  bigsmall apply base-dir/ patch.bs/ -o finetune-dir/"
)]
pub struct Args {
    /// The base model the patch was made against (.safetensors, model dir, .bs or compressed dir)
    base: PathBuf,
    /// The patch (.bs or compressed directory)
    patch: PathBuf,
    /// Output file or directory
    #[arg(short, long, value_parser = super::output_path)]
    output: Option<PathBuf>,
    /// Overwrite the output if it exists
    #[arg(short, long)]
    force: bool,
    /// Also check each tensor's md5 receipt
    #[arg(long)]
    md5: bool,
    /// Hide the progress bar
    #[arg(long)]
    no_progress: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    // Whether a path opens as a container, and as a patch (None: not one, or unreadable,
    // which the run itself reports).
    let patch_kind = |p: &std::path::Path| {
        bigsmall::store_dir::containers_at(p)
            .ok()
            .and_then(|c| c.first().cloned())
            .and_then(|f| bigsmall::format::reader::Container::open(&f).ok())
            .map(|c| c.is_patch())
    };
    // A model that is no container at all (a .safetensors file or model directory), as
    // opposed to one missing or damaged, which the run reports for what it is.
    let plain_model = |p: &std::path::Path| {
        p.exists()
            && !bigsmall::format::is_container(p)
            && !p.join(bigsmall::store_dir::DIR_INDEX).exists()
    };
    let patch_second = match patch_kind(&a.patch) {
        Some(is_patch) => is_patch,
        None => !plain_model(&a.patch),
    };
    if patch_kind(&a.base) == Some(true) && !patch_second {
        super::usage_error(
            clap::error::ErrorKind::ValueValidation,
            &format!(
                "{} is a patch and {} is not: apply takes BASE then PATCH (the arguments look swapped)",
                a.base.display(),
                a.patch.display()
            ),
        );
    }
    super::decompress::run_with(
        a.patch,
        a.output,
        Some(a.base),
        a.force,
        a.md5,
        a.no_progress,
        a.json,
    )
}
