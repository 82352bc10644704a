//! Where a window's coded blobs wait to be written.
//!
//! Each chunk's blob is built in a buffer of the thread that codes it, which the next chunk on
//! that thread reuses, and copied here: one anonymous mapping per window slot, kept from
//! window to window and backed by transparent huge pages where the kernel grants them. Blobs
//! that lived in fresh heap memory until written cost a page fault per 4 KiB (~9,000 on a
//! 45 MB model, a quarter of its compression time spent in the kernel); here the first window
//! faults a few dozen 2 MiB pages and the ones after it none.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A bump allocator over one mapping: blobs are appended by many threads at once, then read
/// back by range once they are all in, then the arena is emptied for the next window.
pub struct BlobArena {
    map: memmap2::MmapMut,
    /// The mapping's start, for the concurrent copies `put` makes into disjoint ranges.
    base: *mut u8,
    used: AtomicUsize,
    /// Drawn afresh by `new` and every `clear` from one counter for all arenas: a slot is only
    /// good in the arena and generation that made it.
    generation: u64,
}

/// A blob's place in its arena: made only by `put`, after the blob is written, so whoever
/// holds one holds bytes that are complete (the slot crossed threads the way any value does,
/// with the synchronisation that gives).
pub struct Slot {
    range: Range<usize>,
    generation: u64,
}

// SAFETY: `put` hands every caller a range of its own (an atomic bump) and writes only there,
// and hands it out only once written; `get` reads only through such a slot of the current
// generation (`clear`, which needs `&mut`, starts a new one), so no read meets a write.
unsafe impl Sync for BlobArena {}
// SAFETY: the pointer is into the mapping the arena owns.
unsafe impl Send for BlobArena {}

impl BlobArena {
    /// An arena of `capacity` bytes of address space (pages are only used once written), or
    /// `None` where the system refuses the mapping; blobs are then kept on the heap.
    pub fn new(capacity: usize) -> Option<BlobArena> {
        let mut map = memmap2::MmapOptions::new()
            .len(capacity.max(1))
            .map_anon()
            .ok()?;
        #[cfg(target_os = "linux")]
        {
            // Only a hint: without huge pages the arena still saves the faults of every
            // window after the first.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        let base = map.as_mut_ptr();
        Some(BlobArena {
            map,
            base,
            used: AtomicUsize::new(0),
            generation: next_generation(),
        })
    }

    /// Copies `blob` in; its slot, or `None` when the arena is full.
    pub fn put(&self, blob: &[u8]) -> Option<Slot> {
        let start = self.used.fetch_add(blob.len(), Ordering::Relaxed);
        let end = start.checked_add(blob.len())?;
        if end > self.map.len() {
            // `used` stays past the end, so every blob after this one goes to the heap too.
            return None;
        }
        // SAFETY: `start..end` lies inside the mapping and no other caller got any part of it.
        unsafe { std::ptr::copy_nonoverlapping(blob.as_ptr(), self.base.add(start), blob.len()) };
        Some(Slot {
            range: start..end,
            generation: self.generation,
        })
    }

    /// The bytes of a blob `put` placed since the last `clear`.
    pub fn get(&self, slot: &Slot) -> &[u8] {
        assert!(
            slot.generation == self.generation && slot.range.end <= self.map.len(),
            "a blob read from an arena that was cleared since, or another arena"
        );
        // SAFETY: in the mapping (checked); written before the slot existed, and not written
        // again in this generation (`put` never hands out a range twice). Built from the raw
        // start, not the mapping's `Deref`, which would borrow all of it while other threads
        // write their own ranges.
        unsafe { std::slice::from_raw_parts(self.base.add(slot.range.start), slot.range.len()) }
    }

    /// Empties the arena for the next window (its pages stay mapped); slots of the blobs in
    /// it are no longer good.
    pub fn clear(&mut self) {
        *self.used.get_mut() = 0;
        self.generation = next_generation();
    }
}

/// A generation no arena has had.
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A coded blob: in a window's arena, or on the heap when the arena had no room.
pub enum Blob {
    Arena(Slot),
    Heap(Vec<u8>),
}

impl Blob {
    /// Puts `blob` in `arena` when there is one with room.
    pub fn keep(arena: Option<&BlobArena>, blob: Vec<u8>) -> Blob {
        match arena.and_then(|a| a.put(&blob)) {
            Some(r) => Blob::Arena(r),
            None => Blob::Heap(blob),
        }
    }

    pub fn bytes<'a>(&'a self, arena: Option<&'a BlobArena>) -> &'a [u8] {
        match (self, arena) {
            (Blob::Arena(s), Some(a)) => a.get(s),
            (Blob::Heap(v), _) => v,
            (Blob::Arena(_), None) => unreachable!("an arena blob is read with its arena"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_come_back_and_overflow_goes_to_the_heap() {
        let mut a = BlobArena::new(100).expect("an anonymous mapping");
        let blobs: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 9]).collect();
        let kept: Vec<Blob> = std::thread::scope(|s| {
            let hs: Vec<_> = blobs
                .iter()
                .map(|b| {
                    let (a, b) = (&a, b.clone());
                    s.spawn(move || Blob::keep(Some(a), b))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // 11 blobs of 9 bytes fit in 100; the twelfth does not.
        let heap = kept.iter().filter(|b| matches!(b, Blob::Heap(_))).count();
        assert_eq!(heap, 1);
        for (b, want) in kept.iter().zip(&blobs) {
            assert_eq!(b.bytes(Some(&a)), &want[..]);
        }
        a.clear();
        let s = a.put(&[7; 100]).expect("room again after clear");
        assert_eq!(a.get(&s), &[7; 100][..]);
        assert!(a.put(&[1]).is_none());
        // A slot from before a clear is refused, not read while its bytes are rewritten.
        a.clear();
        let stale = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.get(&s).len()));
        assert!(stale.is_err());
        // Nor is a slot read through another arena.
        let other = BlobArena::new(100).expect("an anonymous mapping");
        let s = a.put(&[3; 10]).expect("room");
        let foreign =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| other.get(&s).len()));
        assert!(foreign.is_err());
    }
}
