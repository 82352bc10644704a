//! Layouts: reshard (and later transcode, group streams). Each rewrites where tensors live
//! across containers without changing a tensor's bytes; none of them prints.

pub mod reshard;
