//! Fine-tunes as patches against a base model: the base sources a patch can be made against
//! or applied to (safetensors file or directory, `.bs` file or directory), their identity
//! (per-tensor md5/xxh3 receipts and a whole-base fingerprint), and the element-wise
//! difference transform.
//!
//! The difference is the wrapping integer difference of the raw little-endian words, element
//! by element (`fine − base mod 2^bits`). Measured on ±1-ulp fine-tunes it beats XOR: a
//! one-ulp step is always ±1 (a 3-symbol alphabet) where XOR gives 1, 3, 7, ... depending on
//! carries (see BENCHMARKS.md).

pub mod auto;
pub mod diff;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::fast_hash;
use crate::format::reader::Container;
use crate::model::dir::list_dir;
use crate::model::safetensors::{dtype_name, SafetensorsFile};
use crate::store::md5_hex;

/// What a base knows about one of its tensors.
#[derive(Debug, Clone)]
pub struct BaseTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub len: u64,
}

/// A base model: tensors by name, their bytes, and their receipts.
pub trait BaseSource: Send + Sync {
    /// The path it was opened from, for messages.
    fn path(&self) -> &Path;
    fn tensors(&self) -> &[BaseTensor];
    fn find(&self, name: &str) -> Option<&BaseTensor>;
    /// Bytes `start..end` of a tensor.
    fn range(&self, name: &str, start: u64, end: u64) -> Result<Cow<'_, [u8]>>;
    /// md5 receipt of a tensor (stored for containers, computed for safetensors).
    fn md5(&self, name: &str) -> Result<String>;
    /// Computes every tensor's receipt at once where they are not stored (the fingerprint
    /// needs them all): the tensors hash side by side on all cores.
    fn md5_all(&self) {}
    /// Computes the named tensors' receipts where they are not stored, on the calling thread
    /// alone (side by side in its SIMD lanes), so that other threads can do other work.
    fn md5_these(&self, _names: &[&str]) {}
    /// xxh3 of a whole tensor of `len` bytes, the identity a patch records for each base
    /// tensor it refers to.
    fn whole_hash(&self, name: &str, len: u64) -> Result<u64> {
        hash_range(self, name, len)
    }
    /// Whether its bytes are mapped from a file (reading them costs nothing but page faults),
    /// so that its receipts are best hashed where the bytes are read anyway.
    fn is_mapped(&self) -> bool {
        false
    }
    /// Keeps a tensor's receipts computed elsewhere (md5 hex, whole-tensor xxh3).
    fn remember(&self, _name: &str, _md5: &str, _hash: u64) {}
    /// Bytes `start..end` of a tensor are done with: a mapped base drops those pages, so
    /// resident memory stays bounded by the working window.
    fn release(&self, _name: &str, _start: u64, _end: u64) {}
}

/// xxh3 of a tensor's first `len` bytes, read and then released.
fn hash_range<B: BaseSource + ?Sized>(base: &B, name: &str, len: u64) -> Result<u64> {
    let h = fast_hash(&base.range(name, 0, len)?);
    base.release(name, 0, len);
    Ok(h)
}

/// Opens a base: a `.safetensors` file, a model directory, a `.bs` file or a compressed
/// directory (`bigsmall.index.json`).
pub fn open_base(path: &Path) -> Result<Arc<dyn BaseSource>> {
    if !path.exists() {
        return Err(Error::invalid(path, "base not found"));
    }
    let containers = crate::store_dir::containers_at(path)?;
    if !containers.is_empty() {
        return Ok(Arc::new(ContainerBase::open(path, containers)?));
    }
    let files = if path.is_dir() {
        // Not `scan_dir`: a base's tensors are checked by the patch's md5 receipts, so an
        // odd shard index or numbering in its directory does not stand in the way.
        let listing = list_dir(path)?;
        listing.weights.iter().map(|p| path.join(p)).collect()
    } else {
        vec![path.to_path_buf()]
    };
    Ok(Arc::new(SafetensorsBase::open(path, files)?))
}

/// A base made of safetensors files.
pub struct SafetensorsBase {
    path: PathBuf,
    files: Vec<SafetensorsFile>,
    tensors: Vec<BaseTensor>,
    /// name -> (file, tensor index in that file, index in `tensors`)
    by_name: BTreeMap<String, (usize, usize, usize)>,
    md5s: std::sync::Mutex<BTreeMap<String, String>>,
    /// xxh3 of whole tensors, taken by `md5_all` while their bytes are at hand.
    hashes: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl SafetensorsBase {
    fn open(path: &Path, files: Vec<PathBuf>) -> Result<SafetensorsBase> {
        let mut opened = Vec::new();
        let mut tensors = Vec::new();
        let mut by_name = BTreeMap::new();
        for (fi, f) in files.iter().enumerate() {
            let st = SafetensorsFile::open(f)?;
            for (ti, t) in st.tensors.iter().enumerate() {
                if by_name
                    .insert(t.name.clone(), (fi, ti, tensors.len()))
                    .is_some()
                {
                    return Err(Error::invalid(
                        f,
                        format!("tensor '{}' appears in two shards of the base", t.name),
                    ));
                }
                tensors.push(BaseTensor {
                    name: t.name.clone(),
                    dtype: dtype_name(t.dtype),
                    shape: t.shape.iter().map(|&d| d as u64).collect(),
                    len: t.len() as u64,
                });
            }
            opened.push(st);
        }
        Ok(SafetensorsBase {
            path: path.to_path_buf(),
            files: opened,
            tensors,
            by_name,
            md5s: Default::default(),
            hashes: Default::default(),
        })
    }

    fn bytes(&self, name: &str) -> Option<&[u8]> {
        let &(f, t, _) = self.by_name.get(name)?;
        let file = &self.files[f];
        Some(file.tensor_bytes(&file.tensors[t]))
    }

    /// Hashes the md5 and xxh3 receipts of the named tensors not known yet, on all cores or
    /// on this thread only, in batches released as they are done: resident memory stays
    /// bounded by the batch, not the model. On this thread only, the coding holds its own
    /// windows meanwhile, so batches are smaller and a long tensor is hashed and released
    /// piece by piece (MD5 is one serial chain per tensor however it is fed).
    fn hash_batches<'a>(&'a self, names: impl Iterator<Item = &'a str>, all_cores: bool) {
        const PIECE: usize = 4 << 20;
        let cap: u64 = if all_cores { 64 << 20 } else { 16 << 20 };
        let mut batch: Vec<(&str, &[u8])> = Vec::new();
        let mut size = 0u64;
        let flush = |batch: &mut Vec<(&str, &[u8])>| {
            let bytes: Vec<&[u8]> = batch.iter().map(|b| b.1).collect();
            let (digests, xxh): (_, Vec<u64>) = if all_cores {
                (
                    crate::integrity::md5x::digest_many_par(&bytes),
                    bytes.par_iter().map(|b| fast_hash(b)).collect(),
                )
            } else {
                (
                    crate::integrity::md5x::digest_many(&bytes),
                    bytes.iter().map(|b| fast_hash(b)).collect(),
                )
            };
            for (((name, b), d), h) in batch.drain(..).zip(digests).zip(xxh) {
                self.remember(name, &crate::store::hex(&d), h);
                self.release(name, 0, b.len() as u64);
            }
        };
        for name in names {
            // Each shard of a directory asks again; what is known is not hashed twice.
            if self
                .md5s
                .lock()
                .expect("no poisoned lock")
                .contains_key(name)
            {
                continue;
            }
            // A tensor the file cannot hold is left to `md5`, which names it.
            let Some(b) = self.bytes(name) else {
                continue;
            };
            if !all_cores && b.len() > PIECE {
                let mut md5 = crate::integrity::md5x::Md5::new();
                let mut xxh = xxhash_rust::xxh3::Xxh3::new();
                for (k, piece) in b.chunks(PIECE).enumerate() {
                    md5.update(piece);
                    xxh.update(piece);
                    let at = (k * PIECE) as u64;
                    self.release(name, at, at + piece.len() as u64);
                }
                self.remember(name, &md5.hex(), xxh.digest());
                continue;
            }
            batch.push((name, b));
            size += b.len() as u64;
            if size >= cap {
                flush(&mut batch);
                size = 0;
            }
        }
        flush(&mut batch);
    }
}

impl BaseSource for SafetensorsBase {
    fn path(&self) -> &Path {
        &self.path
    }

    fn tensors(&self) -> &[BaseTensor] {
        &self.tensors
    }

    fn find(&self, name: &str) -> Option<&BaseTensor> {
        self.by_name.get(name).map(|&(_, _, i)| &self.tensors[i])
    }

    fn range(&self, name: &str, start: u64, end: u64) -> Result<Cow<'_, [u8]>> {
        let b = self
            .bytes(name)
            .ok_or_else(|| Error::invalid(&self.path, format!("base has no tensor '{name}'")))?;
        b.get(start as usize..end as usize)
            .map(Cow::Borrowed)
            .ok_or_else(|| Error::invalid(&self.path, format!("base tensor '{name}' is too short")))
    }

    fn release(&self, name: &str, start: u64, end: u64) {
        if let Some(&(f, t, _)) = self.by_name.get(name) {
            let file = &self.files[f];
            let base = file.data_offset() + file.tensors[t].start;
            file.release(base + start as usize, base + end as usize);
        }
    }

    fn md5_all(&self) {
        self.hash_batches(self.tensors.iter().map(|t| t.name.as_str()), true);
    }

    fn md5_these(&self, names: &[&str]) {
        self.hash_batches(names.iter().copied(), false);
    }

    fn is_mapped(&self) -> bool {
        true
    }

    fn remember(&self, name: &str, md5: &str, hash: u64) {
        self.md5s
            .lock()
            .expect("no poisoned lock")
            .insert(name.to_string(), md5.to_string());
        self.hashes
            .lock()
            .expect("no poisoned lock")
            .insert(name.to_string(), hash);
    }

    fn whole_hash(&self, name: &str, len: u64) -> Result<u64> {
        if let Some(&h) = self.hashes.lock().expect("no poisoned lock").get(name) {
            return Ok(h);
        }
        hash_range(self, name, len)
    }

    fn md5(&self, name: &str) -> Result<String> {
        if let Some(m) = self.md5s.lock().expect("no poisoned lock").get(name) {
            return Ok(m.clone());
        }
        let b = self
            .bytes(name)
            .ok_or_else(|| Error::invalid(&self.path, format!("base has no tensor '{name}'")))?;
        let m = md5_hex(b);
        self.release(name, 0, b.len() as u64);
        self.md5s
            .lock()
            .expect("no poisoned lock")
            .insert(name.to_string(), m.clone());
        Ok(m)
    }
}

/// A base made of `.bs` containers (a compressed base); receipts come from the index.
pub struct ContainerBase {
    path: PathBuf,
    containers: Vec<Container>,
    tensors: Vec<BaseTensor>,
    /// name -> (file, tensor index in that file, index in `tensors`)
    by_name: BTreeMap<String, (usize, usize, usize)>,
}

impl ContainerBase {
    fn open(path: &Path, files: Vec<PathBuf>) -> Result<ContainerBase> {
        let mut containers = Vec::new();
        let mut tensors = Vec::new();
        let mut by_name = BTreeMap::new();
        for (ci, f) in files.iter().enumerate() {
            let c = Container::open(f)?;
            if c.index.base.is_some() {
                return Err(Error::invalid(
                    f,
                    "is itself a patch; apply it first and use the result as the base",
                ));
            }
            for (ti, t) in c.index.tensors.iter().enumerate() {
                if by_name
                    .insert(t.name.clone(), (ci, ti, tensors.len()))
                    .is_some()
                {
                    return Err(Error::invalid(
                        f,
                        format!("tensor '{}' appears in two shards of the base", t.name),
                    ));
                }
                tensors.push(BaseTensor {
                    name: t.name.clone(),
                    dtype: t.dtype.clone(),
                    shape: t.shape.clone(),
                    len: t.raw_len(),
                });
            }
            containers.push(c);
        }
        Ok(ContainerBase {
            path: path.to_path_buf(),
            containers,
            tensors,
            by_name,
        })
    }
}

impl BaseSource for ContainerBase {
    fn path(&self) -> &Path {
        &self.path
    }

    fn tensors(&self) -> &[BaseTensor] {
        &self.tensors
    }

    fn find(&self, name: &str) -> Option<&BaseTensor> {
        self.by_name.get(name).map(|&(_, _, i)| &self.tensors[i])
    }

    fn range(&self, name: &str, start: u64, end: u64) -> Result<Cow<'_, [u8]>> {
        let &(ci, ti, _) = self
            .by_name
            .get(name)
            .ok_or_else(|| Error::invalid(&self.path, format!("base has no tensor '{name}'")))?;
        let c = &self.containers[ci];
        // Decode only the chunks that overlap the range.
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut pos = 0u64;
        let mut buf = Vec::new();
        for (k, ch) in c.chunks(ti).iter().enumerate() {
            let (s, e) = (pos, pos + ch.raw_len);
            pos = e;
            if e <= start || s >= end {
                continue;
            }
            buf.resize(ch.raw_len as usize, 0);
            c.decode_chunk_into(ti, k, &mut buf)?;
            let a = start.max(s) - s;
            let b = end.min(e) - s;
            out.extend_from_slice(&buf[a as usize..b as usize]);
        }
        if out.len() as u64 != end - start {
            return Err(Error::invalid(
                &self.path,
                format!("base tensor '{name}' is too short"),
            ));
        }
        Ok(Cow::Owned(out))
    }

    fn md5(&self, name: &str) -> Result<String> {
        let &(ci, ti, _) = self
            .by_name
            .get(name)
            .ok_or_else(|| Error::invalid(&self.path, format!("base has no tensor '{name}'")))?;
        Ok(self.containers[ci].index.tensors[ti].md5.clone())
    }
}

/// The whole-base fingerprint: md5 over `name \t md5 \n` of every tensor, sorted by name.
pub fn fingerprint(base: &dyn BaseSource) -> Result<String> {
    let mut names: Vec<&str> = base.tensors().iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    let md5s: Vec<String> = names
        .par_iter()
        .map(|n| base.md5(n))
        .collect::<Result<_>>()?;
    let mut text = String::new();
    for (n, m) in names.iter().zip(&md5s) {
        text.push_str(n);
        text.push('\t');
        text.push_str(m);
        text.push('\n');
    }
    Ok(md5_hex(text.as_bytes()))
}

/// xxh3 of a whole base tensor, the fast identity check made when a patch is applied.
pub fn base_hash(base: &dyn BaseSource, name: &str, len: u64) -> Result<u64> {
    base.whole_hash(name, len)
}

/// `fine − base` element-wise (wrapping, little-endian words of `width` bytes) into `out`;
/// returns the number of elements that differ (the nonzero differences).
pub fn subtract(fine: &[u8], base: &[u8], width: usize, out: &mut Vec<u8>) -> u64 {
    out.clear();
    out.resize(fine.len().min(base.len()), 0);
    // Fixed-size words in plain loops, so the compiler vectorises them.
    macro_rules! words {
        ($t:ty, $w:expr) => {{
            let mut changed = 0u64;
            for ((d, f), b) in out
                .chunks_exact_mut($w)
                .zip(fine.chunks_exact($w))
                .zip(base.chunks_exact($w))
            {
                let v = <$t>::from_le_bytes(f.try_into().expect("word"))
                    .wrapping_sub(<$t>::from_le_bytes(b.try_into().expect("word")));
                changed += u64::from(v != 0);
                d.copy_from_slice(&v.to_le_bytes());
            }
            changed
        }};
    }
    match width {
        2 => words!(u16, 2),
        4 => words!(u32, 4),
        8 => words!(u64, 8),
        _ => {
            let mut changed = 0u64;
            for ((d, f), b) in out.iter_mut().zip(fine).zip(base) {
                *d = f.wrapping_sub(*b);
            }
            // Elements of any other width differ where any of their bytes does.
            for e in out.chunks_exact(width.max(1)) {
                changed += u64::from(e.iter().any(|&x| x != 0));
            }
            changed
        }
    }
}

/// `base + diff` element-wise in place (`data` holds the diff on entry, the fine bytes after).
pub fn add_in_place(data: &mut [u8], base: &[u8], width: usize) {
    match width {
        2 => {
            for (d, b) in data.chunks_exact_mut(2).zip(base.chunks_exact(2)) {
                let v =
                    u16::from_le_bytes([d[0], d[1]]).wrapping_add(u16::from_le_bytes([b[0], b[1]]));
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        4 => {
            for (d, b) in data.chunks_exact_mut(4).zip(base.chunks_exact(4)) {
                let v = u32::from_le_bytes((&*d).try_into().expect("4"))
                    .wrapping_add(u32::from_le_bytes(b.try_into().expect("4")));
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        8 => {
            for (d, b) in data.chunks_exact_mut(8).zip(base.chunks_exact(8)) {
                let v = u64::from_le_bytes((&*d).try_into().expect("8"))
                    .wrapping_add(u64::from_le_bytes(b.try_into().expect("8")));
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        _ => {
            for (d, b) in data.iter_mut().zip(base) {
                *d = d.wrapping_add(*b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn subtract_then_add_is_identity(w in prop::sample::select(vec![1usize, 2, 4, 8]), n in 0usize..64, seed in any::<u64>()) {
            let mut x = seed;
            let mut gen = || { x = x.wrapping_mul(6364136223846793005).wrapping_add(1); (x >> 33) as u8 };
            let fine: Vec<u8> = (0..n * w).map(|_| gen()).collect();
            let base: Vec<u8> = (0..n * w).map(|_| gen()).collect();
            let mut d = Vec::new();
            let changed = subtract(&fine, &base, w, &mut d);
            let differ = fine.chunks_exact(w).zip(base.chunks_exact(w)).filter(|(f, b)| f != b).count();
            prop_assert_eq!(changed, differ as u64);
            add_in_place(&mut d, &base, w);
            prop_assert_eq!(d, fine);
        }
    }
}
