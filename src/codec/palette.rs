//! Block palettes for 16-bit floats with few distinct values per small block — weights that
//! were quantized once (GGUF/GPTQ-style groups dequantized back to BF16, QAT checkpoints). Each
//! block of 32 elements stores its distinct values once (in order of first appearance, coded
//! with the SPLIT16 field split) and every element as an index into its block's palette.
//! Real trained weights have ~31 distinct values per 32, so the encoder only tries this when a
//! quick count says it can pay, and keeps it only when it measures smaller.
//!
//! Body (after the codec tag):
//! ```text
//! u8 log2(block) (5)
//! varint P                   total palette entries in the chunk
//! SPLIT16 body of the P palette values
//! symbol stream: palette size − 1 of each block      (values < block)
//! symbol stream: each element's index in its palette  (values < block)
//! ```
//!
//! PALETTE16_NIBBLES, the decode-speed flavour (`transcode --mode speed`), needs every block
//! to have at most 16 distinct values (true of 4-bit group quantization) and stores the
//! indices raw, two per byte (element 2i in the low nibble), instead of as a rANS stream:
//! ```text
//! u8 log2(block) (5)
//! varint P
//! SPLIT16 body of the P palette values
//! symbol stream: palette size − 1 of each block      (values < 16)
//! ceil(n / 2) bytes of index nibbles
//! ```

use super::bits::{put_varint, Reader};
use super::split::{read_split, write_split};
use super::stream::{self, Histogram};
use super::{tag, CodecError};

const BLOCK_LOG2: u32 = 5;
const BLOCK: usize = 1 << BLOCK_LOG2;

/// Palette entries and per-element indices of the words, block by block.
fn build<R>(words: &[u16], then: impl FnOnce(&[u16], &[u16], &[u16]) -> R) -> R {
    // seen[w] = block stamp << 5 | index of w in that block's palette. The table lives per
    // thread and stamps keep counting across calls, so it is never cleared (except on wrap).
    // The output buffers live there too: fresh megabytes per chunk cost page faults.
    // The loop is branch-free: a value's slot and palette entry are written whether or not it
    // was new, and the palette only grows when it was.
    #[derive(Default)]
    struct Scratch {
        seen: Vec<u32>,
        stamp: u32,
        palette: Vec<u16>,
        sizes: Vec<u16>,
        index: Vec<u16>,
    }
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    }
    SCRATCH.with_borrow_mut(|sc| {
        let n = words.len();
        let blocks = n.div_ceil(BLOCK);
        if sc.seen.is_empty() || sc.stamp > (u32::MAX >> BLOCK_LOG2) - blocks as u32 - 2 {
            sc.seen = vec![0u32; 1 << 16];
            sc.stamp = 0;
        }
        if sc.palette.len() < n + BLOCK {
            sc.palette.resize(n + BLOCK, 0);
        }
        if sc.index.len() < n {
            sc.index.resize(n, 0);
        }
        sc.sizes.clear();
        let seen: &mut [u32; 1 << 16] = sc.seen.as_mut_slice().try_into().expect("64K table");
        let (palette, index) = (&mut sc.palette[..n + BLOCK], &mut sc.index[..n]);
        let mut count = 0usize;
        // Elements the x86-64 kernel did (none elsewhere).
        #[cfg_attr(not(target_arch = "x86_64"), expect(unused_mut))]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx512() && super::simd::cpu_has_avx512vbmi2() {
            done = n / BLOCK * BLOCK;
            // SAFETY: features checked; `palette` has n + BLOCK entries, so 32 past any
            // block's start; `index` has n.
            unsafe {
                super::simd::palette_build_blocks(
                    &words[..done],
                    palette,
                    &mut sc.sizes,
                    index,
                    &mut count,
                )
            };
        }
        for (block, idx) in words[done..]
            .chunks(BLOCK)
            .zip(index[done..].chunks_mut(BLOCK))
        {
            sc.stamp += 1;
            let stamp = sc.stamp;
            let tag = stamp << BLOCK_LOG2;
            let start = count;
            for (&w, ix) in block.iter().zip(idx.iter_mut()) {
                let s = seen[w as usize];
                let hit = s >> BLOCK_LOG2 == stamp;
                let fresh = (count - start) as u32;
                let i = if hit { s & (BLOCK as u32 - 1) } else { fresh };
                seen[w as usize] = tag | i;
                palette[count] = w;
                count += usize::from(!hit);
                *ix = i as u16;
            }
            sc.sizes.push((count - start - 1) as u16);
        }
        then(&sc.palette[..count], &sc.sizes, &sc.index[..n])
    })
}

/// Distinct values per block on a sample: cheap test whether a palette can pay at all.
pub fn worth_trying(words: &[u16]) -> bool {
    const SAMPLE_BLOCKS: usize = 256;
    let step = (words.len() / BLOCK / SAMPLE_BLOCKS).max(1);
    let mut distinct = 0usize;
    let mut blocks = 0usize;
    // seen[w] == block number + 1 when w already occurred in the current block.
    let mut seen = vec![0u16; 1 << 16];
    for block in words.chunks_exact(BLOCK).step_by(step).take(SAMPLE_BLOCKS) {
        blocks += 1;
        for &w in block {
            let s = &mut seen[usize::from(w)];
            distinct += usize::from(*s != blocks as u16);
            *s = blocks as u16;
        }
    }
    // Break-even is near 24 of 32 for weights; leave a margin for the measurement to decide.
    blocks > 0 && distinct * 4 < blocks * BLOCK * 3
}

/// Codes the words as a palette chunk, with the given SPLIT16 candidates for the palette.
pub fn encode(words: &[u16], rs: &[u32], try_lsb: bool) -> Option<Vec<u8>> {
    if words.is_empty() {
        return None;
    }
    build(words, |palette, sizes, index| {
        let mut out = Vec::with_capacity(words.len());
        out.push(tag::PALETTE16);
        out.push(BLOCK_LOG2 as u8);
        put_varint(&mut out, palette.len() as u64);
        write_split(palette, rs, try_lsb, &mut out);
        for s in [sizes, index] {
            let h = Histogram::of_small(s, BLOCK_LOG2);
            let plan = stream::plan_symbols(&h)?;
            stream::write_symbols(&plan, s, &mut out);
        }
        Some(out)
    })
}

/// Codes the words as a nibble-index palette chunk, or `None` when a block has more than 16
/// distinct values.
pub fn encode_nibbles(words: &[u16], rs: &[u32]) -> Option<Vec<u8>> {
    if words.is_empty() {
        return None;
    }
    build(words, |palette, sizes, index| {
        if sizes.iter().any(|&s| s >= 16) {
            return None;
        }
        let mut out = Vec::with_capacity(words.len());
        out.push(tag::PALETTE16_NIBBLES);
        out.push(BLOCK_LOG2 as u8);
        put_varint(&mut out, palette.len() as u64);
        write_split(palette, rs, false, &mut out);
        let h = Histogram::of_small(sizes, 4);
        let plan = stream::plan_symbols(&h)?;
        stream::write_symbols(&plan, sizes, &mut out);
        out.extend(
            index
                .chunks(2)
                .map(|p| p[0] as u8 | (p.get(1).copied().unwrap_or(0) as u8) << 4),
        );
        Some(out)
    })
}

/// Decodes a palette body (tag already read) into `out` (`n` little-endian 16-bit words).
pub fn decode(r: &mut Reader<'_>, n: usize, out: &mut [u8]) -> Result<(), CodecError> {
    decode_with(r, n, out, false)
}

/// Decodes a nibble-index palette body (tag already read).
pub fn decode_nibbles(r: &mut Reader<'_>, n: usize, out: &mut [u8]) -> Result<(), CodecError> {
    decode_with(r, n, out, true)
}

fn decode_with(
    r: &mut Reader<'_>,
    n: usize,
    out: &mut [u8],
    nibbles: bool,
) -> Result<(), CodecError> {
    let log2 = u32::from(r.u8()?);
    if log2 != BLOCK_LOG2 {
        return Err(CodecError::Corrupt("unsupported palette block size"));
    }
    let p = usize::try_from(r.varint()?).map_err(|_| CodecError::Corrupt("palette size"))?;
    if p > n || (n > 0 && p < n.div_ceil(BLOCK)) {
        return Err(CodecError::Corrupt("palette size out of range"));
    }
    // Padded so a 32-entry load at any block's start stays inside (SIMD expansion).
    // The palette buffer is reused per thread: a fresh ~0.5 MB allocation per chunk costs
    // page faults that showed as a quarter of decode time.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|palette| decode_into(r, n, p, out, palette, nibbles))
}

/// Where the per-element indices come from.
enum Indices<'a> {
    // Boxed: the rANS reader is large and the nibble variant is the hot one.
    Rans(Box<stream::SymbolBytes<'a>>),
    Nibbles(&'a [u8]),
}

impl Indices<'_> {
    /// The next `idx.len()` indices; `first` is the element number of the first.
    fn read(&mut self, first: usize, idx: &mut [u8]) -> Result<(), CodecError> {
        match self {
            Indices::Rans(reader) => reader.read(idx),
            Indices::Nibbles(packed) => {
                // `first` is even: stretches are whole blocks.
                let bytes = &packed[first / 2..];
                for (pair, &b) in idx.chunks_mut(2).zip(bytes) {
                    pair[0] = b & 15;
                    if let Some(hi) = pair.get_mut(1) {
                        *hi = b >> 4;
                    }
                }
                Ok(())
            }
        }
    }
}

fn decode_into(
    r: &mut Reader<'_>,
    n: usize,
    p: usize,
    out: &mut [u8],
    palette: &mut Vec<u16>,
    nibbles: bool,
) -> Result<(), CodecError> {
    palette.clear();
    palette.resize(p + BLOCK, 0);
    read_split(r, p, |first, words| {
        palette[first..first + words.len()].copy_from_slice(words);
    })?;
    let blocks = n.div_ceil(BLOCK);
    let mut sizes = vec![0u16; blocks];
    let s = stream::read_symbols(r, if nibbles { 4 } else { BLOCK_LOG2 })?;
    stream::decode_symbols(&s, blocks, |i, v| sizes[i] = v + 1)?;
    if sizes.iter().map(|&k| usize::from(k)).sum::<usize>() != p {
        return Err(CodecError::Corrupt("palette sizes do not add up"));
    }
    let s;
    let mut reader = if nibbles {
        Indices::Nibbles(r.bytes(n.div_ceil(2))?)
    } else {
        s = stream::read_symbols(r, BLOCK_LOG2)?;
        Indices::Rans(Box::new(stream::SymbolBytes::new(&s)?))
    };
    // Indices are decoded a stretch at a time (a multiple of the block) and expanded at once.
    const STRETCH: usize = 8192;
    let mut index = [0u8; STRETCH];
    let mut base = 0usize;
    let mut done = 0usize;
    while done < n {
        let len = STRETCH.min(n - done);
        let idx_all = &mut index[..len];
        let out_all = &mut out[2 * done..2 * (done + len)];
        let first_block = done / BLOCK;
        let fast = match &reader {
            Indices::Nibbles(packed) => fast_blocks::<true>(
                &packed[done / 2..],
                &sizes[first_block..],
                palette,
                base,
                out_all,
            ),
            Indices::Rans(_) => {
                reader.read(done, idx_all)?;
                fast_blocks::<false>(idx_all, &sizes[first_block..], palette, base, out_all)
            }
        };
        let (fast, new_base) = fast.ok_or(CodecError::Corrupt("palette index out of range"))?;
        base = new_base;
        if matches!(reader, Indices::Nibbles(_)) {
            reader.read(done + fast, &mut idx_all[fast..])?;
        }
        let (idx_all, out_all) = (&idx_all[fast..], &mut out_all[2 * fast..]);
        let first_block = first_block + fast / BLOCK;
        for (b, (idx, o)) in idx_all
            .chunks(BLOCK)
            .zip(out_all.chunks_mut(2 * BLOCK))
            .enumerate()
        {
            let k = usize::from(sizes[first_block + b]);
            if idx.iter().any(|&i| usize::from(i) >= k) {
                return Err(CodecError::Corrupt("palette index out of range"));
            }
            let pal = &palette[base..base + k];
            for (&i, o) in idx.iter().zip(o.chunks_exact_mut(2)) {
                o.copy_from_slice(&pal[usize::from(i)].to_le_bytes());
            }
            base += k;
        }
        done += len;
    }
    match reader {
        Indices::Rans(reader) => reader.finish(),
        Indices::Nibbles(_) => Ok(()),
    }
}

/// The AVX-512 expansion of whole blocks where available (indices one per byte, or two per
/// byte with `NIBBLES`): (elements done, new base), or `None` on an out-of-range index.
fn fast_blocks<const NIBBLES: bool>(
    idx: &[u8],
    sizes: &[u16],
    palette: &[u16],
    base: usize,
    out: &mut [u8],
) -> Option<(usize, usize)> {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::has_avx512() && super::simd::cpu_has_avx512vl() {
            // SAFETY: features checked.
            return unsafe {
                super::simd::palette_blocks::<NIBBLES>(idx, sizes, palette, base, out)
            };
        }
    }
    let _ = (idx, sizes, palette, out);
    Some((0, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_blocks_roundtrip_and_shrink() {
        // 16 levels per block of 32, like Q4_1 dequantized to BF16.
        let mut x = 99u64;
        let words: Vec<u16> = (0..40_000)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let level = (x >> 60) as f32;
                let scale = 0.001 * (1.0 + (i / 32 % 7) as f32);
                half::bf16::from_f32(level * scale - 0.008).to_bits()
            })
            .collect();
        assert!(worth_trying(&words));
        let blob = encode(&words, &[4, 5, 6, 7], true).unwrap();
        assert!(
            blob.len() < words.len() * 2 * 60 / 100,
            "{} bytes",
            blob.len()
        );
        let decode_all = || {
            let mut out = vec![0u8; words.len() * 2];
            let mut r = Reader::new(&blob[1..]);
            decode(&mut r, words.len(), &mut out).unwrap();
            assert!(r.is_empty());
            out.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect::<Vec<u16>>()
        };
        assert_eq!(decode_all(), words);
        let nib = encode_nibbles(&words, &[4, 5, 6, 7]).unwrap();
        assert_eq!(nib[0], tag::PALETTE16_NIBBLES);
        let decode_nib = || {
            let mut out = vec![0u8; words.len() * 2];
            let mut r = Reader::new(&nib[1..]);
            decode_nibbles(&mut r, words.len(), &mut out).unwrap();
            assert!(r.is_empty());
            out.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect::<Vec<u16>>()
        };
        assert_eq!(decode_nib(), words);
        // 17 distinct values in a block cannot be nibble-indexed.
        let wide: Vec<u16> = (0..64).map(|i| i % 17).collect();
        assert!(encode_nibbles(&wide, &[7]).is_none());
        #[cfg(target_arch = "x86_64")]
        {
            let _guard = crate::codec::SIMD_SWITCH
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            crate::codec::simd::force_portable(true);
            let portable = decode_all();
            let portable_nib = decode_nib();
            crate::codec::simd::force_portable(false);
            assert_eq!(portable, words);
            assert_eq!(portable_nib, words);
        }
    }

    /// The vector builder and the table builder agree on every block shape: one value, all
    /// distinct, a few levels, and a partial last block.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_and_table_builders_agree() {
        let built = |words: &[u16]| build(words, |p, s, i| (p.to_vec(), s.to_vec(), i.to_vec()));
        let mut x = 7u64;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u16
        };
        for levels in [1u16, 2, 5, 16, 31, 32, 0] {
            for n in [0usize, 1, 31, 32, 33, 64, 1000, 4099] {
                let words: Vec<u16> = (0..n)
                    .map(|_| match levels {
                        0 => next(),
                        l => 0x3c00 + (next() % l) * 3,
                    })
                    .collect();
                let _guard = crate::codec::SIMD_SWITCH
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let fast = built(&words);
                crate::codec::simd::force_portable(true);
                let slow = built(&words);
                crate::codec::simd::force_portable(false);
                assert_eq!(fast, slow, "{levels} levels, {n} words");
            }
        }
    }
}
