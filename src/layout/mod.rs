//! Layouts of the same weights for other jobs. `transcode` re-encodes a container for decode
//! speed or size; `reshard` moves tensors between containers along layer boundaries without
//! re-encoding; `groups` codes small same-role tensors across layers as shared streams. None
//! of them prints.

pub mod groups;
pub mod reshard;
pub mod transcode;
