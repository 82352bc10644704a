//! Layouts of the same weights for other jobs: `transcode` (re-encoding for decode speed or
//! size); `reshard` and grouped streams live here too.

pub mod groups;
pub mod transcode;
