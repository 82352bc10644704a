//! The `--storage | --balanced | --inference` flags, defined once for every command that codes.

use bigsmall::codec::Effort;

#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ModeArgs {
    /// Smallest file: tries every candidate coding, slower to compress
    #[arg(long, group = "mode")]
    storage: bool,
    /// Near-smallest file at full decode speed (the default)
    #[arg(long, group = "mode")]
    balanced: bool,
    /// Fastest decode: byte-aligned fields, two weights per coded symbol; up to 2% larger
    #[arg(long, group = "mode")]
    inference: bool,
}

impl ModeArgs {
    pub fn effort(self) -> Effort {
        if self.storage {
            Effort::Storage
        } else if self.inference {
            Effort::Inference
        } else {
            Effort::Balanced
        }
    }
}
