//! Float codecs by fields. A 16-bit float word (BF16, F16, or the top half of an F32) is split
//! into a *symbol* — the magnitude's top bits: exponent plus the top few mantissa bits — coded
//! with rANS, and the *rest* — sign and low mantissa bits, close to random — stored as packed
//! raw bits. How many mantissa bits join the symbol (`keep_low = r` raw bits remain) is measured
//! per chunk: more bits capture more of H(mantissa | exponent) but grow the alphabet (at most 256
//! symbols per stream).
//!
//! F32 adds the two low bytes: coded as byte planes (constant, rANS or zstd each; a BF16-native
//! F32 has constant-zero planes and so costs what BF16 does) or as zstd over the 16-bit pairs.
//!
//! Chunk layouts (after the codec tag):
//! ```text
//! SPLIT16: u8 r | symbol stream (values < 2^(15-r)) | packed raw, (r+1) bits per element
//! SPLIT32: the SPLIT16 body for the high halves | u8 lo_mode | lo data
//!          lo_mode 0: byte stream of bits 8..16, byte stream of bits 0..8
//!          lo_mode 1: varint length + zstd frame of the low 16-bit halves (little-endian)
//! ```

use super::bits::{pack, packed_len, put_varint, unpack_at, Reader};
use super::stream::{self, Histogram};
use super::{rans, tag, CodecError, Effort};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Float16 {
    Bf16,
    F16,
}

/// Raw-bit counts worth considering, finest first. `r = 7` is byte-aligned (sign + 7 bits), the
/// inference mode's choice because its rest unpacks as plain bytes.
fn candidates(flavour: Float16, effort: Effort) -> &'static [u32] {
    match (flavour, effort) {
        (_, Effort::Inference) => &[7],
        (Float16::Bf16, Effort::Balanced) => &[4, 5, 6, 7],
        (Float16::Bf16, Effort::Storage) => &[2, 3, 4, 5, 6, 7],
        (Float16::F16, Effort::Balanced) => &[4, 5, 6, 7, 8],
        (Float16::F16, Effort::Storage) => &[3, 4, 5, 6, 7, 8, 9],
    }
}

/// Packs the rest fields (`W = r + 1` bits: sign above the `r` low bits) eight at a time; the
/// width is a constant so the shifts unroll. Same bytes as `bits::pack`.
fn pack_const<const W: usize>(words: &[u16], r: u32, out: &mut Vec<u8>) {
    let low = (1u16 << r) - 1;
    let mut groups = words.chunks_exact(8);
    out.reserve(words.len() * W / 8 + 8);
    for g in &mut groups {
        let mut acc = 0u64;
        for (j, &w) in g.iter().enumerate() {
            acc |= u64::from(((w >> 15) << r) | (w & low)) << (j * W);
        }
        out.extend_from_slice(&acc.to_le_bytes()[..W]);
    }
    let rem = groups.remainder();
    pack(
        rem.iter().map(|&w| u32::from(((w >> 15) << r) | (w & low))),
        rem.len(),
        W as u32,
        out,
    );
}

/// Counts `(w & 0x7fff) >> shift` over the words with four sub-histograms, so runs of equal
/// exponents do not serialise on one counter.
fn magnitude_histogram(words: &[u16], shift: u32) -> Vec<u64> {
    let bins = 1usize << (15 - shift);
    let mut h = vec![[0u32; 4]; bins];
    let mut quads = words.chunks_exact(4);
    for q in &mut quads {
        for (k, &w) in q.iter().enumerate() {
            h[((w & 0x7fff) >> shift) as usize][k] += 1;
        }
    }
    for &w in quads.remainder() {
        h[((w & 0x7fff) >> shift) as usize][0] += 1;
    }
    h.iter()
        .map(|c| c.iter().map(|&x| u64::from(x)).sum())
        .collect()
}

/// Chooses `r` and writes the split body (without codec tag) for the 16-bit words.
fn write_split(words: &[u16], rs: &[u32], out: &mut Vec<u8>) {
    let n = words.len();
    let r_min = rs[0];
    let fine = magnitude_histogram(words, r_min);
    let mut best: Option<(usize, u32, stream::SymPlan)> = None;
    for &r in rs {
        let shift = r - r_min;
        let mut dense = vec![0u64; 1 << (15 - r)];
        for (v, &c) in fine.iter().enumerate() {
            dense[v >> shift] += c;
        }
        let h = Histogram::from_dense(&dense);
        if let Some(plan) = stream::plan_symbols(&h) {
            let total = plan.bytes + packed_len(n, r + 1);
            if best.as_ref().is_none_or(|b| total < b.0) {
                best = Some((total, r, plan));
            }
        }
    }
    // Fall back to the coarsest split that fits 256 symbols: r = 7 leaves 8 symbol bits.
    let (r, plan) = match best {
        Some((_, r, plan)) => (r, plan),
        None => {
            let r = 7;
            let h = Histogram::from_dense(&magnitude_histogram(words, r));
            (r, stream::plan_symbols(&h).expect("8-bit symbols"))
        }
    };
    out.push(r as u8);
    let map = plan.index_map(15 - r);
    let syms: Vec<u8> = words
        .iter()
        .map(|&w| map[((w & 0x7fff) >> r) as usize])
        .collect();
    stream::write_symbol_indices(&plan, &syms, out);
    let low = (1u16 << r) - 1;
    let rest = |w: u16| ((w >> 15) << r) | (w & low);
    match r {
        7 => out.extend(words.iter().map(|&w| rest(w) as u8)),
        5 => pack_const::<6>(words, r, out),
        4 => pack_const::<5>(words, r, out),
        6 => pack_const::<7>(words, r, out),
        3 => pack_const::<4>(words, r, out),
        _ => pack(words.iter().map(|&w| u32::from(rest(w))), n, r + 1, out),
    }
}

/// Elements reassembled per block: a multiple of the rANS group and of 8 (bit unpacking).
const BLOCK: usize = 4096;

/// Unpacks like `unpack_block` for a constant width of at most 8 bits: eight values per u64.
fn unpack_const<const W: usize>(packed: &[u8], first: usize, out: &mut [u16]) {
    let mask = (1u64 << W) - 1;
    let total = out.len();
    let mut byte = first / 8 * W;
    let mut groups = out.chunks_exact_mut(8);
    for g in &mut groups {
        let v = match packed.get(byte..byte + 8) {
            Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
            None => {
                let mut buf = [0u8; 8];
                let avail = packed.len().saturating_sub(byte).min(8);
                buf[..avail].copy_from_slice(&packed[byte..byte + avail]);
                u64::from_le_bytes(buf)
            }
        };
        for (j, o) in g.iter_mut().enumerate() {
            *o = ((v >> (j * W)) & mask) as u16;
        }
        byte += W;
    }
    let done = total - groups.into_remainder().len();
    for (j, o) in out[done..].iter_mut().enumerate() {
        *o = unpack_at(packed, first + done + j, W as u32) as u16;
    }
}

/// Unpacks `out.len()` values of `width` bits starting at element `first` (a multiple of 8).
fn unpack_block(packed: &[u8], first: usize, width: u32, out: &mut [u16]) {
    match width {
        5 => return unpack_const::<5>(packed, first, out),
        6 => return unpack_const::<6>(packed, first, out),
        7 => return unpack_const::<7>(packed, first, out),
        _ => {}
    }
    let w = width as usize;
    let total = out.len();
    let mask = (1u128 << width) - 1;
    let mut groups = out.chunks_exact_mut(8);
    let mut byte = first / 8 * w;
    for g in &mut groups {
        let mut buf = [0u8; 16];
        let avail = packed.len().saturating_sub(byte).min(16);
        buf[..avail].copy_from_slice(&packed[byte..byte + avail]);
        let v = u128::from_le_bytes(buf);
        for (j, o) in g.iter_mut().enumerate() {
            *o = ((v >> (j * w)) & mask) as u16;
        }
        byte += w;
    }
    let rem = groups.into_remainder();
    let base = first + total - rem.len();
    for (j, o) in rem.iter_mut().enumerate() {
        *o = unpack_at(packed, base + j, width) as u16;
    }
}

/// Decodes a split body into 16-bit words, handed out block by block as `put(first, words)`.
fn read_split<F: FnMut(usize, &[u16])>(
    r: &mut Reader<'_>,
    n: usize,
    mut put: F,
) -> Result<(), CodecError> {
    let keep = u32::from(r.u8()?);
    if keep > 15 {
        return Err(CodecError::Corrupt("split field width out of range"));
    }
    let syms = stream::read_symbols(r, 15 - keep)?;
    let width = keep + 1;
    let raw = r.bytes(packed_len(n, width))?;
    let low = (1u16 << keep) - 1;
    let mut lut = [0u16; 256];
    let mut alphabet = 1;
    let mut idx = vec![0u8; BLOCK.min(n)];
    let mut rest = vec![0u16; BLOCK.min(n)];
    let mut words = vec![0u16; BLOCK.min(n)];
    let mut decoder = match &syms {
        stream::SymStream::Const(v) => {
            lut[0] = v << keep;
            None
        }
        stream::SymStream::Rans {
            table,
            values,
            coded,
            alphabet: a,
        } => {
            for (l, v) in lut.iter_mut().zip(values) {
                *l = v << keep;
            }
            alphabet = *a;
            Some((rans::Decoder::new(coded)?, table))
        }
    };
    let mut first = 0;
    while first < n {
        let len = BLOCK.min(n - first);
        let idx = &mut idx[..len];
        if let Some((d, table)) = decoder.as_mut() {
            d.decode_block(table, idx)?;
        }
        let words = &mut words[..len];
        let done = fast_combine(&lut, alphabet, idx, raw, first, keep, words);
        let rest = &mut rest[..len - done];
        if width == 8 {
            for (o, &b) in rest.iter_mut().zip(&raw[first + done..first + len]) {
                *o = u16::from(b);
            }
        } else {
            unpack_block(raw, first + done, width, rest);
        }
        combine(&lut, &idx[done..], rest, keep, low, &mut words[done..]);
        put(first, words);
        first += len;
    }
    if let Some((d, _)) = decoder {
        d.finish()?;
    }
    Ok(())
}

/// The AVX-512 reassembly where available; returns how many leading elements it did.
fn fast_combine(
    lut: &[u16; 256],
    alphabet: usize,
    idx: &[u8],
    raw: &[u8],
    first: usize,
    keep: u32,
    out: &mut [u16],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::has_avx512() {
            // SAFETY: the CPU supports the kernel's features.
            return unsafe { super::simd::combine16(lut, alphabet, idx, raw, first, keep, out) };
        }
    }
    let _ = (lut, alphabet, idx, raw, first, keep, out);
    0
}

/// word = sign << 15 | symbol value << keep | low bits, from the symbol's pre-shifted value
/// and the raw field (sign above the low bits).
#[inline]
fn combine(lut: &[u16; 256], idx: &[u8], rest: &[u16], keep: u32, low: u16, out: &mut [u16]) {
    for ((o, &s), &rb) in out.iter_mut().zip(idx).zip(rest) {
        *o = ((rb >> keep) << 15) | lut[s as usize] | (rb & low);
    }
}

pub fn encode16(data: &[u8], flavour: Float16, effort: Effort) -> Vec<u8> {
    let words: Vec<u16> = data
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    out.push(tag::SPLIT16);
    write_split(&words, candidates(flavour, effort), &mut out);
    out
}

/// Decodes a SPLIT16 body (tag already read).
pub fn decode16(r: &mut Reader<'_>, out: &mut [u8]) -> Result<(), CodecError> {
    let n = out.len() / 2;
    read_split(r, n, |first, words| {
        for (o, w) in out[2 * first..].chunks_exact_mut(2).zip(words) {
            o.copy_from_slice(&w.to_le_bytes());
        }
    })
}

pub fn encode32(data: &[u8], effort: Effort) -> Vec<u8> {
    let n = data.len() / 4;
    let hi: Vec<u16> = data
        .chunks_exact(4)
        .map(|b| u16::from_le_bytes([b[2], b[3]]))
        .collect();
    let mut out = Vec::with_capacity(data.len() * 7 / 8);
    out.push(tag::SPLIT32);
    write_split(&hi, candidates(Float16::Bf16, effort), &mut out);
    let mut planes = Vec::new();
    let mut plane = vec![0u8; n];
    for p in [1usize, 0] {
        for (dst, e) in plane.iter_mut().zip(data.chunks_exact(4)) {
            *dst = e[p];
        }
        stream::write_bytes(&plane, effort, &mut planes);
    }
    let pairs = || -> Vec<u8> { data.chunks_exact(4).flat_map(|e| [e[0], e[1]]).collect() };
    let zstd_pairs = effort.zstd_level().and_then(|level| {
        let lo = pairs();
        if effort.zstd_always() || stream::worth_trying_zstd(&lo, planes.len()) {
            zstd::bulk::compress(&lo, level).ok()
        } else {
            None
        }
    });
    match zstd_pairs {
        Some(z) if z.len() + 5 < planes.len() => {
            out.push(1);
            put_varint(&mut out, z.len() as u64);
            out.extend_from_slice(&z);
        }
        _ => {
            out.push(0);
            out.extend_from_slice(&planes);
        }
    }
    out
}

/// Decodes a SPLIT32 body (tag already read).
pub fn decode32(r: &mut Reader<'_>, out: &mut [u8]) -> Result<(), CodecError> {
    let n = out.len() / 4;
    read_split(r, n, |first, words| {
        for (o, w) in out[4 * first..].chunks_exact_mut(4).zip(words) {
            o[2..].copy_from_slice(&w.to_le_bytes());
        }
    })?;
    match r.u8()? {
        0 => {
            let mut plane = vec![0u8; n];
            for p in [1usize, 0] {
                stream::read_bytes(r, &mut plane)?;
                for (e, &b) in out.chunks_exact_mut(4).zip(&plane) {
                    e[p] = b;
                }
            }
        }
        1 => {
            let len = usize::try_from(r.varint()?).map_err(|_| CodecError::Truncated)?;
            let z = r.bytes(len)?;
            let mut lo = vec![0u8; n * 2];
            stream::zstd_exact(z, &mut lo)?;
            for (e, pair) in out.chunks_exact_mut(4).zip(lo.chunks_exact(2)) {
                e[..2].copy_from_slice(pair);
            }
        }
        _ => return Err(CodecError::Corrupt("unknown F32 low-half mode")),
    }
    Ok(())
}
