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
    /// Fastest decode: byte-aligned fields, two weights per coded symbol, no value palettes and
    /// no zstd (but in a patch's difference chunks). About 1% larger on trained weights (0.2-0.8% measured on the corpus), far
    /// larger where zstd or palettes find structure (dequantized weights: 24% larger)
    #[arg(long, group = "mode")]
    inference: bool,
}

impl ModeArgs {
    /// Whether a mode flag was given (`--balanced`, the default, included).
    pub fn given(self) -> bool {
        self.storage || self.balanced || self.inference
    }

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
