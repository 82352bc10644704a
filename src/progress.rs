//! Progress reporting without printing: the library calls these hooks, the CLI turns them into
//! an indicatif bar (or nothing).

/// Receives progress in bytes. Implementations must be cheap and thread-safe.
pub trait Progress: Sync {
    fn start(&self, _total: u64, _what: &str) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
