//! bigsmall: lossless compression of AI model weights.
//!
//! The library holds the engine; `main.rs` and `cli/` only turn arguments into calls and
//! results into text. Nothing here prints: long operations report through [`progress::Progress`].
//!
//! ```no_run
//! use bigsmall::{progress::Silent, store};
//! let opts = store::CompressOptions::default();
//! let report = store::compress_file("model.safetensors".as_ref(), "model.bs".as_ref(), &opts, &Silent)?;
//! println!("{} -> {} bytes", report.source_bytes, report.output_bytes);
//! # Ok::<(), bigsmall::error::Error>(())
//! ```

pub mod analysis;
pub mod codec;
pub mod delta;
pub mod error;
pub mod format;
pub mod fsutil;
pub mod integrity;
pub mod layout;
pub mod migrate;
pub mod model;
pub mod progress;
pub mod store;
pub mod store_dir;
