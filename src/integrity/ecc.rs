//! The `.ecc` sidecar: Reed-Solomon parity that repairs a damaged `.bs` (or any file).
//!
//! Two layers, about 15.2% of the file in all:
//! - every 223-byte block of the file has RS(255,223) parity: up to 16 wrong bytes per block,
//!   at unknown positions, are corrected;
//! - blocks are grouped in superblocks of 8192 (1.8 MB); block `q` of a superblock belongs to
//!   group `q mod 64`, and each group has an XOR parity block (itself RS-protected). A block
//!   the first layer cannot fix is rebuilt from its group, so any 64 consecutive blocks per
//!   superblock are recovered: any burst of up to 14,082 bytes (63 whole blocks and 16 + 17
//!   bytes at the ends, of which the first layer fixes the 16: a zeroed 4 KiB sector, a lost
//!   tail), longer ones depending on where they fall.
//!
//! Layout (little-endian):
//! ```text
//! header   64 bytes: "BSECC001" | u32 version=1 | u32 223 | u32 32 | u32 64 | u32 128 | u32 0
//!                    | u64 data_len | u64 xxh3(data) | u64 blocks | u64 xxh3(header[0..56])
//! per superblock: its blocks' 32-byte parities, then 64 × (223-byte XOR block + 32 parity)
//! trailer  64 bytes: a copy of the header
//! ```

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::rs;
use crate::error::{Error, Result};
use crate::format::fast_hash;
use crate::fsutil::AtomicFile;

const MAGIC: &[u8; 8] = b"BSECC001";
const HEADER: usize = 64;
const GROUPS: usize = 64;
const MEMBERS: usize = 128;
const SUPER: usize = GROUPS * MEMBERS;
const BLOCK: usize = rs::DATA;

/// The sidecar's path for a file: `<file>.ecc`.
pub fn sidecar_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".ecc");
    PathBuf::from(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    data_len: u64,
    data_hash: u64,
    blocks: u64,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        for (i, v) in [
            1u32,
            BLOCK as u32,
            rs::PARITY as u32,
            GROUPS as u32,
            MEMBERS as u32,
            0,
        ]
        .iter()
        .enumerate()
        {
            h[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        h[32..40].copy_from_slice(&self.data_len.to_le_bytes());
        h[40..48].copy_from_slice(&self.data_hash.to_le_bytes());
        h[48..56].copy_from_slice(&self.blocks.to_le_bytes());
        let check = fast_hash(&h[..56]);
        h[56..64].copy_from_slice(&check.to_le_bytes());
        h
    }

    fn parse(h: &[u8]) -> Option<Header> {
        if h.len() < HEADER || &h[..8] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        if fast_hash(&h[..56]) != u64_at(56) {
            return None;
        }
        let fields: Vec<u32> = (0..6)
            .map(|i| u32::from_le_bytes(h[8 + 4 * i..12 + 4 * i].try_into().expect("4")))
            .collect();
        if fields
            != [
                1,
                BLOCK as u32,
                rs::PARITY as u32,
                GROUPS as u32,
                MEMBERS as u32,
                0,
            ]
        {
            return None;
        }
        let hd = Header {
            data_len: u64_at(32),
            data_hash: u64_at(40),
            blocks: u64_at(48),
        };
        (hd.blocks == hd.data_len.div_ceil(BLOCK as u64)).then_some(hd)
    }
}

fn superblocks(blocks: u64) -> u64 {
    blocks.div_ceil(SUPER as u64)
}

/// Bytes of a superblock's section in the sidecar.
fn section_len(blocks_in_sb: usize) -> usize {
    blocks_in_sb * rs::PARITY + GROUPS * rs::N
}

fn sidecar_len(blocks: u64) -> u64 {
    let full = blocks / SUPER as u64;
    let rest = (blocks % SUPER as u64) as usize;
    let mut len = 2 * HEADER as u64 + full * section_len(SUPER) as u64;
    if rest > 0 {
        len += section_len(rest) as u64;
    }
    len
}

/// Block `b` of the data, zero-padded to 223 bytes; `None` when entirely past the end.
fn block(data: &[u8], b: usize) -> ([u8; BLOCK], usize) {
    let mut out = [0u8; BLOCK];
    let s = (b * BLOCK).min(data.len());
    let e = ((b + 1) * BLOCK).min(data.len());
    out[..e - s].copy_from_slice(&data[s..e]);
    (out, e - s)
}

/// Computes one superblock's sidecar section.
fn encode_section(data: &[u8], sb: usize, blocks: usize) -> Vec<u8> {
    let first = sb * SUPER;
    let n = (blocks - first).min(SUPER);
    let mut out = Vec::with_capacity(section_len(n));
    let mut xor = vec![[0u8; BLOCK]; GROUPS];
    for q in 0..n {
        let (blk, _) = block(data, first + q);
        out.extend_from_slice(&rs::encode(&blk));
        for (x, b) in xor[q % GROUPS].iter_mut().zip(&blk) {
            *x ^= b;
        }
    }
    for x in &xor {
        out.extend_from_slice(x);
        out.extend_from_slice(&rs::encode(x));
    }
    out
}

/// Writes the sidecar for `file` at `<file>.ecc` (atomically). Returns its size.
pub fn create(file: &Path) -> Result<u64> {
    let (out, len) = stage(file, &sidecar_path(file))?;
    out.commit()?;
    Ok(len)
}

/// A read-only map of `file` (a pipe or device refused), `None` for an empty file, which
/// cannot be mapped.
fn map_file(file: &Path) -> Result<Option<memmap2::Mmap>> {
    let f = crate::fsutil::open_regular(file)?;
    let len = f.metadata().map_err(|e| Error::io(file, e))?.len();
    // SAFETY: read-only map; bigsmall does not modify it while mapped. Changed bytes are only
    // wrong data; another process truncating it while mapped makes a read past its new end a
    // SIGBUS, which `fsutil::stop_on_sigbus` turns into a one-line error.
    (len > 0)
        .then(|| unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(file, e)))
        .transpose()
}

/// Writes the sidecar of `file` to be committed as `path` (which the caller does once `file`
/// is in place), and returns it with its length.
pub fn stage(file: &Path, path: &Path) -> Result<(AtomicFile, u64)> {
    let map = map_file(file)?;
    let data: &[u8] = map.as_deref().unwrap_or(&[]);
    let header = Header {
        data_len: data.len() as u64,
        data_hash: fast_hash(data),
        blocks: (data.len() as u64).div_ceil(BLOCK as u64),
    };
    let mut out = AtomicFile::create(path)?;
    out.write_all(&header.to_bytes())?;
    let blocks = header.blocks as usize;
    let sbs = superblocks(header.blocks) as usize;
    // A few superblocks at a time on all cores; memory stays at a few MB.
    for start in (0..sbs).step_by(32) {
        let sections: Vec<Vec<u8>> = (start..(start + 32).min(sbs))
            .into_par_iter()
            .map(|sb| encode_section(data, sb, blocks))
            .collect();
        for s in sections {
            out.write_all(&s)?;
        }
    }
    out.write_all(&header.to_bytes())?;
    Ok((out, sidecar_len(header.blocks)))
}

/// A copy of `from` to be committed as `to`.
fn copy_staged(from: &Path, to: &Path) -> Result<AtomicFile> {
    use std::io::Read;
    let mut f = crate::fsutil::open_regular(from)?;
    let mut out = AtomicFile::create(to)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(from, e))?;
        if n == 0 {
            return Ok(out);
        }
        out.write_all(&buf[..n])?;
    }
}

/// What a check or repair found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EccReport {
    pub sidecar: String,
    pub data_len: u64,
    /// The file is byte-identical to when the sidecar was made.
    pub clean: bool,
    pub blocks: u64,
    /// Blocks whose bytes or parity were found damaged (a clean file can have some: the
    /// damage is then in the sidecar, `sidecar_damaged`).
    pub damaged_blocks: u64,
    /// Bytes corrected by the per-block code (data and parity).
    pub corrected_bytes: u64,
    /// Blocks rebuilt from their group's XOR parity.
    pub rebuilt_blocks: u64,
    /// Blocks that could not be recovered.
    pub lost_blocks: u64,
    /// The sidecar itself was damaged (header copy used, or parity bytes corrected).
    pub sidecar_damaged: bool,
    /// Bytes found after the file's recorded end (appended by accident); a repair drops them.
    pub trailing_bytes: u64,
    pub repaired: bool,
}

/// Reads and validates a sidecar's header (either copy).
fn open_sidecar(path: &Path) -> Result<(memmap2::Mmap, Header, bool)> {
    if path.is_dir() {
        return Err(Error::invalid(path, "is a directory, not an ECC sidecar"));
    }
    let f = crate::fsutil::open_regular(path)?;
    // SAFETY: read-only map; changed bytes are only wrong data, and another process truncating
    // it while mapped makes a read past its new end a SIGBUS, which `fsutil::stop_on_sigbus`
    // turns into a one-line error.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    let first = Header::parse(&map[..map.len().min(HEADER)]);
    let last = (map.len() >= HEADER)
        .then(|| Header::parse(&map[map.len() - HEADER..]))
        .flatten();
    let (header, damaged) = match (first, last) {
        (Some(h), l) => (h, l != Some(h)),
        (None, Some(h)) => (h, true),
        (None, None) => {
            return Err(Error::container(
                path,
                "not a bigsmall ECC sidecar, or both its headers are damaged",
            ))
        }
    };
    if map.len() as u64 != sidecar_len(header.blocks) {
        return Err(Error::container(
            path,
            format!(
                "ECC sidecar has {} bytes, its header needs {} ({})",
                map.len(),
                sidecar_len(header.blocks),
                if (map.len() as u64) < sidecar_len(header.blocks) {
                    "truncated"
                } else {
                    "bytes appended to it"
                }
            ),
        ));
    }
    Ok((map, header, damaged))
}

fn section_offset(sb: usize) -> usize {
    HEADER + sb * section_len(SUPER)
}

/// Result of decoding one superblock.
struct SectionOut {
    data: Vec<u8>,
    damaged: u64,
    corrected: u64,
    rebuilt: u64,
    lost: u64,
    parity_fixed: bool,
}

fn repair_section(data: &[u8], side: &[u8], sb: usize, h: &Header) -> SectionOut {
    let blocks = h.blocks as usize;
    let first = sb * SUPER;
    let n = (blocks - first).min(SUPER);
    let sec = &side[section_offset(sb)..section_offset(sb) + section_len(n)];
    let mut out = SectionOut {
        data: Vec::with_capacity(n * BLOCK),
        damaged: 0,
        corrected: 0,
        rebuilt: 0,
        lost: 0,
        parity_fixed: false,
    };
    let mut fixed: Vec<Option<[u8; BLOCK]>> = Vec::with_capacity(n);
    for q in 0..n {
        let (blk, present) = block(data, first + q);
        let parity = &sec[q * rs::PARITY..(q + 1) * rs::PARITY];
        let want_len = (h.data_len as usize)
            .saturating_sub((first + q) * BLOCK)
            .min(BLOCK);
        if present == want_len && rs::encode(&blk)[..] == *parity {
            fixed.push(Some(blk));
            continue;
        }
        out.damaged += 1;
        let mut cw = blk.to_vec();
        cw.extend_from_slice(parity);
        match rs::correct(&mut cw) {
            Ok(k) => {
                out.corrected += k as u64;
                out.parity_fixed |= cw[BLOCK..] != *parity;
                fixed.push(Some(cw[..BLOCK].try_into().expect("223 bytes")));
            }
            Err(_) => fixed.push(None),
        }
    }
    // Second layer: rebuild a group's single lost block from its XOR parity.
    let xor_base = n * rs::PARITY;
    for g in 0..GROUPS {
        let members: Vec<usize> = (g..n).step_by(GROUPS).collect();
        let lost: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&q| fixed[q].is_none())
            .collect();
        if lost.is_empty() {
            continue;
        }
        let mut cw = sec[xor_base + g * rs::N..xor_base + (g + 1) * rs::N].to_vec();
        let xor_ok = rs::correct(&mut cw).is_ok();
        if lost.len() > 1 || !xor_ok {
            out.lost += lost.len() as u64;
            continue;
        }
        let mut blk: [u8; BLOCK] = cw[..BLOCK].try_into().expect("223 bytes");
        for &q in &members {
            if let Some(b) = &fixed[q] {
                for (x, y) in blk.iter_mut().zip(b) {
                    *x ^= y;
                }
            }
        }
        fixed[lost[0]] = Some(blk);
        out.rebuilt += 1;
    }
    for (q, f) in fixed.iter().enumerate() {
        let len = (h.data_len as usize)
            .saturating_sub((first + q) * BLOCK)
            .min(BLOCK);
        match f {
            Some(b) => out.data.extend_from_slice(&b[..len]),
            None => out.data.extend(std::iter::repeat_n(0u8, len)),
        }
    }
    out
}

/// Checks `file` against its sidecar (no output); with `output`, writes the repaired file
/// there (temp name, then rename) when every block could be recovered and the result hashes
/// to the original file's xxh3, plus a fresh sidecar next to it.
pub fn check_or_repair(file: &Path, sidecar: &Path, output: Option<&Path>) -> Result<EccReport> {
    check_or_repair_with(file, sidecar, output, false, &crate::progress::Silent)
}

/// `check_or_repair`, telling `progress` the bytes checked block by block. A clean file with
/// no output is settled by one checksum, unless `thorough`: then the parity is read too,
/// which finds damage in the sidecar itself.
pub fn check_or_repair_with(
    file: &Path,
    sidecar: &Path,
    output: Option<&Path>,
    thorough: bool,
    progress: &dyn crate::progress::Progress,
) -> Result<EccReport> {
    let (side, header, header_damaged) = open_sidecar(sidecar)?;
    let map = map_file(file)?;
    let len = map.as_ref().map_or(0, |m| m.len() as u64);
    // Bytes past the recorded length are not the file's: the blocks are checked without
    // them (a sidecar for another file still disagrees nearly everywhere, below).
    let all: &[u8] = map.as_deref().unwrap_or(&[]);
    let data = &all[..all.len().min(header.data_len as usize)];
    let mut report = EccReport {
        sidecar: sidecar.display().to_string(),
        data_len: header.data_len,
        blocks: header.blocks,
        sidecar_damaged: header_damaged,
        trailing_bytes: len.saturating_sub(header.data_len),
        ..Default::default()
    };
    if data.len() as u64 == header.data_len && fast_hash(data) == header.data_hash {
        report.clean = report.trailing_bytes == 0;
        if output.is_none() && !thorough {
            return Ok(report);
        }
    }
    let sbs = superblocks(header.blocks) as usize;
    let mut out = match output {
        Some(p) => Some(AtomicFile::create(p)?),
        None => None,
    };
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut parity_fixed = false;
    progress.start(
        header.data_len,
        if output.is_some() {
            "repairing"
        } else {
            "checking"
        },
    );
    for start in (0..sbs).step_by(32) {
        let outs: Vec<SectionOut> = (start..(start + 32).min(sbs))
            .into_par_iter()
            .map(|sb| repair_section(data, &side, sb, &header))
            .collect();
        for o in outs {
            report.damaged_blocks += o.damaged;
            report.corrected_bytes += o.corrected;
            report.rebuilt_blocks += o.rebuilt;
            report.lost_blocks += o.lost;
            parity_fixed |= o.parity_fixed;
            if let Some(out) = out.as_mut() {
                hasher.update(&o.data);
                out.write_all(&o.data)?;
            }
            progress.advance(o.data.len() as u64);
        }
    }
    progress.finish();
    report.sidecar_damaged |= parity_fixed;
    // Real damage touches some blocks; a sidecar made for another file disagrees everywhere.
    if report.blocks >= 16 && report.lost_blocks * 2 > report.blocks {
        return Err(Error::Unrepairable {
            path: sidecar.to_path_buf(),
            why: format!(
                "does not belong to {} (or the file is damaged beyond repair): {} of {} blocks disagree beyond correction{}",
                file.display(),
                report.lost_blocks,
                report.blocks,
                if output.is_some() { "; nothing written" } else { "" }
            ),
        });
    }
    let (Some(out), Some(out_path)) = (out, output) else {
        return Ok(report);
    };
    if report.lost_blocks > 0 {
        return Err(Error::Unrepairable {
            path: file.to_path_buf(),
            why: format!(
                "damage exceeds what the ECC parity can fix ({} of {} blocks unrecoverable); nothing written",
                report.lost_blocks, report.blocks
            ),
        });
    }
    if hasher.digest() != header.data_hash {
        return Err(Error::Unrepairable {
            path: file.to_path_buf(),
            why: "repaired bytes do not match the original file's checksum (damage beyond the parity); nothing written".into(),
        });
    }
    // The output is the original file again, so an undamaged sidecar is its sidecar too. It
    // is staged before the output is renamed into place, as `compress --ecc` does.
    let dst = sidecar_path(out_path);
    let damaged = report.sidecar_damaged;
    let (side, _renaming) = out.commit_with(|tmp| {
        let side = if damaged {
            stage(tmp, &dst).map(|(f, _)| f)
        } else {
            copy_staged(sidecar, &dst)
        }?;
        Ok((side, crate::fsutil::hold_interrupts()))
    })?;
    side.commit()?;
    report.repaired = true;
    Ok(report)
}
