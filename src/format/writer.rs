//! Streaming container writer: blobs go out as they are coded; the index is written last.

use std::path::Path;

use super::{fast_hash, preamble, Index, Trailer, ALIGN, DATA_START, PREAMBLE_LEN};
use crate::codec::tag;
use crate::error::{Error, Result};
use crate::fsutil::AtomicFile;

pub struct ContainerWriter {
    out: AtomicFile,
    pos: u64,
    /// A resumable writer's running xxh3 of every byte written: its checkpoints record it,
    /// so a resumed run finds damage to the partial file before reusing any of it.
    hash: Option<xxhash_rust::xxh3::Xxh3>,
    /// Write an ECC sidecar (`OUT.ecc`) with the output.
    ecc: bool,
}

impl ContainerWriter {
    pub fn create(path: &Path) -> Result<ContainerWriter> {
        let mut out = AtomicFile::create(path)?;
        out.write_all(&preamble())?;
        out.write_all(&[0u8; DATA_START as usize - PREAMBLE_LEN])?;
        Ok(ContainerWriter {
            out,
            pos: DATA_START,
            hash: None,
            ecc: false,
        })
    }

    /// A resumable writer at `partial` (see `AtomicFile::resumable`): fresh when `resume_at` is
    /// `None`, else continuing after the first `len` bytes of the partial file, which must
    /// hash to `hash` (`written_hash` when they were checkpointed).
    pub fn resumable(
        path: &Path,
        partial: &Path,
        resume_at: Option<(u64, u64)>,
    ) -> Result<ContainerWriter> {
        let out = AtomicFile::resumable(path, partial, resume_at.map(|(len, _)| len))?;
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        let pos = match resume_at {
            Some((len, want)) => {
                hash_prefix(partial, len, &mut hash)?;
                if hash.digest() != want {
                    return Err(Error::invalid(
                        partial,
                        "differs from what its checkpoint recorded (damaged since the interrupted run); delete the progress directory to start again",
                    ));
                }
                len
            }
            None => {
                let mut w = ContainerWriter {
                    out,
                    pos: 0,
                    hash: Some(hash),
                    ecc: false,
                };
                w.put(&preamble())?;
                w.put(&[0u8; DATA_START as usize - PREAMBLE_LEN])?;
                return Ok(w);
            }
        };
        Ok(ContainerWriter {
            out,
            pos,
            hash: Some(hash),
            ecc: false,
        })
    }

    /// Makes the output's ECC sidecar with it (see `finish`).
    pub fn with_ecc(mut self, ecc: bool) -> ContainerWriter {
        self.ecc = ecc;
        self
    }

    /// The xxh3 of everything a resumable writer has written (0 for another writer).
    pub fn written_hash(&self) -> u64 {
        self.hash.as_ref().map_or(0, |h| h.digest())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        if let Some(h) = self.hash.as_mut() {
            h.update(bytes);
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far (where the next blob goes, before alignment).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Pushes buffered bytes to the file, so a checkpoint can point at them.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }

    /// Appends one chunk blob and returns its offset. Raw blobs are placed so that their
    /// payload (after the one-byte tag) is 64-byte aligned and can be used in place from a map.
    pub fn write_blob(&mut self, blob: &[u8]) -> Result<u64> {
        if blob.first() == Some(&tag::RAW) && blob.len() > 1 {
            let want = (self.pos + 1).div_ceil(ALIGN) * ALIGN - 1;
            let pad = (want - self.pos) as usize;
            if pad > 0 {
                self.put(&[0u8; ALIGN as usize][..pad])?;
            }
        }
        let at = self.pos;
        self.put(blob)?;
        Ok(at)
    }

    /// Writes index and trailer, then renames the file into place.
    pub fn finish(mut self, index: &Index) -> Result<u64> {
        let json = serde_json::to_vec(index).map_err(|e| {
            Error::container(self.out.path(), format!("cannot serialise index: {e}"))
        })?;
        let packed = zstd::bulk::compress(&json, super::INDEX_ZSTD_LEVEL)
            .map_err(|e| Error::io(self.out.path(), e))?;
        let trailer = Trailer {
            index_offset: self.pos,
            index_len: packed.len() as u64,
            index_json_len: json.len() as u64,
            index_hash: fast_hash(&packed),
        };
        self.out.write_all(&packed)?;
        self.out.write_all(&trailer.to_bytes())?;
        let total = self.pos + packed.len() as u64 + super::TRAILER_LEN as u64;
        let sidecar = crate::integrity::ecc::sidecar_path(self.out.path());
        // The sidecar is made from the complete file before it is renamed into place, and put
        // beside it right after: an output asked for with one never stands without it.
        let ecc = self.ecc;
        let staged = self.out.commit_with(|tmp| {
            match ecc.then(|| crate::integrity::ecc::stage(tmp, &sidecar)) {
                Some(side) => Ok(Some((side?.0, crate::fsutil::hold_interrupts()))),
                None => Ok(None),
            }
        })?;
        match staged {
            Some((side, _renaming)) => side.commit()?,
            // One already there protected the file this one replaced (`-f`; outputs refuse an
            // existing sidecar otherwise): it would only ever report this file as damaged.
            None if sidecar.is_file() => {
                let _ = std::fs::remove_file(&sidecar);
            }
            None => {}
        }
        Ok(total)
    }
}

/// Feeds the first `len` bytes of `path` to `hash`, a MiB at a time.
fn hash_prefix(path: &Path, len: u64, hash: &mut xxhash_rust::xxh3::Xxh3) -> Result<()> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = f.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        hash.update(&buf[..n]);
    }
}
