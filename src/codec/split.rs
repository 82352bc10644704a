//! Float codecs by fields. A 16-bit float word (BF16, F16, or the top half of an F32) is split
//! into a *symbol* — the magnitude's top bits: exponent plus the top few mantissa bits — coded
//! with rANS, and the *rest* — sign and low mantissa bits, close to random — stored as packed
//! raw bits. How many mantissa bits join the symbol (`r` low bits remain), and whether the lowest
//! mantissa bit joins it too, is measured per chunk: more bits capture more of
//! H(mantissa | exponent) but grow the alphabet (at most 256 symbols per stream).
//!
//! F32 adds the two low bytes: coded as byte planes (constant, rANS or zstd each; a BF16-native
//! F32 has constant-zero planes and so costs what BF16 does) or as zstd over the 16-bit pairs.
//!
//! Chunk layouts (after the codec tag):
//! ```text
//! SPLIT16: u8 layout (r | lsb << 7) | symbol stream | packed rest (sign + middle bits)
//! SPLIT32: the SPLIT16 body for the high halves | u8 lo_mode | lo data
//!          lo_mode 0: byte stream of bits 8..16, byte stream of bits 0..8
//!          lo_mode 1: varint length + zstd frame of the low 16-bit halves (little-endian)
//! ```

use super::bits::{pack, packed_len, put_varint, unpack_at, Reader};
use super::rans::WordKey;
use super::stream::{self, Histogram};
use super::{rans, tag, CodecError, Effort};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Float16 {
    Bf16,
    F16,
}

/// Raw-bit counts worth considering, finest first. `r = 7` is byte-aligned (sign + 7 bits), the
/// inference mode's choice because its rest unpacks as plain bytes.
pub(super) fn candidates(flavour: Float16, effort: Effort) -> &'static [u32] {
    match (flavour, effort) {
        (_, Effort::Inference | Effort::Speed) => &[7],
        (Float16::Bf16, Effort::Balanced) => &[4, 5, 6, 7],
        (Float16::Bf16, Effort::Storage) => &[2, 3, 4, 5, 6, 7],
        (Float16::F16, Effort::Balanced) => &[4, 5, 6, 7, 8],
        (Float16::F16, Effort::Storage) => &[3, 4, 5, 6, 7, 8, 9],
    }
}

/// How a 16-bit word is split. The symbol holds the magnitude's top `15 - r` bits and, with
/// `lsb`, also its lowest bit (after rounding from a wider type the last mantissa bit is often
/// biased per exponent); the rest holds the sign above the remaining middle bits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Layout {
    r: u32,
    lsb: bool,
}

impl Layout {
    fn from_byte(b: u8) -> Option<Layout> {
        let l = Layout {
            r: u32::from(b & 0x0f),
            lsb: b & 0x80 != 0,
        };
        (b & 0x70 == 0 && (!l.lsb || l.r >= 1)).then_some(l)
    }

    fn to_byte(self) -> u8 {
        self.r as u8 | if self.lsb { 0x80 } else { 0 }
    }

    /// Bits of a symbol value.
    fn value_bits(self) -> u32 {
        15 - self.r + u32::from(self.lsb)
    }

    /// Middle mantissa bits stored raw (below the sign in the rest field).
    fn mid(self) -> u32 {
        self.r - u32::from(self.lsb)
    }

    /// Bits of the rest field: sign + middle bits.
    fn width(self) -> u32 {
        self.mid() + 1
    }

    fn key(self) -> WordKey {
        WordKey {
            mask: 0x7fff,
            shift: self.r,
            lsb: self.lsb,
            add: 0,
        }
    }

    fn value(self, w: u16) -> u16 {
        self.key().value(w)
    }

    fn rest(self, w: u16) -> u16 {
        let shift = u32::from(self.lsb);
        ((w >> 15) << self.mid()) | ((w >> shift) & ((1u16 << self.mid()) - 1))
    }

    /// A symbol value's bits in place within the word.
    fn placed(self, v: u16) -> u16 {
        if self.lsb {
            ((v >> 1) << self.r) | (v & 1)
        } else {
            v << self.r
        }
    }

    fn word(self, placed: u16, rest: u16) -> u16 {
        let mid = self.mid();
        ((rest >> mid) << 15) | placed | ((rest & ((1u16 << mid) - 1)) << u32::from(self.lsb))
    }
}

/// Packs the rest fields eight at a time with a constant width, so the shifts unroll; each
/// group is stored as a whole u64 into room made beforehand, then the cursor moves by `W`
/// bytes. Same bytes as `bits::pack`.
fn pack_const<const W: usize>(words: &[u16], layout: Layout, out: &mut Vec<u8>) {
    let (mid, shift) = (layout.mid(), u32::from(layout.lsb));
    let low = (1u16 << mid) - 1;
    let rest = |w: u16| u64::from(((w >> 15) << mid) | ((w >> shift) & low));
    let mut groups = words.chunks_exact(8);
    let mut at = out.len();
    out.resize(at + groups.len() * W + 8, 0);
    for g in &mut groups {
        let acc = g
            .iter()
            .enumerate()
            .fold(0u64, |acc, (j, &w)| acc | rest(w) << (j * W));
        out[at..at + 8].copy_from_slice(&acc.to_le_bytes());
        at += W;
    }
    out.truncate(at);
    let rem = groups.remainder();
    pack(
        rem.iter().map(|&w| u32::from(layout.rest(w))),
        rem.len(),
        W as u32,
        out,
    );
}

/// Counts `(mag >> shift) << 1 | lsb` over the words with four sub-histograms, so runs of
/// equal exponents do not serialise on one counter. Returns the nonzero bins, ascending.
fn joint_histogram(words: &[u16], shift: u32) -> Vec<(usize, u64)> {
    match shift {
        0 => joint_histogram_in::<{ 1 << 16 }>(words, shift),
        1 => joint_histogram_in::<{ 1 << 15 }>(words, shift),
        2 => joint_histogram_in::<{ 1 << 14 }>(words, shift),
        3 => joint_histogram_in::<{ 1 << 13 }>(words, shift),
        4 => joint_histogram_in::<{ 1 << 12 }>(words, shift),
        5 => joint_histogram_in::<{ 1 << 11 }>(words, shift),
        6 => joint_histogram_in::<{ 1 << 10 }>(words, shift),
        _ => joint_histogram_in::<{ 1 << 9 }>(words, shift),
    }
}

/// `joint_histogram` with `BINS >= 1 << (16 - shift)` bins: a table of fixed size lets the
/// compiler drop the bounds checks.
fn joint_histogram_in<const BINS: usize>(words: &[u16], shift: u32) -> Vec<(usize, u64)> {
    let mut h = vec![[0u32; 4]; BINS];
    let h: &mut [[u32; 4]; BINS] = h.as_mut_slice().try_into().expect("fixed size");
    let bin = |w: u16| (((((w & 0x7fff) >> shift) << 1) | (w & 1)) as usize) & (BINS - 1);
    // Four words read as one u64 and binned in general registers: left to itself, the
    // compiler bins them in a vector register and pays an extract per word.
    let bin64 = |v: u64| ((((v & 0x7fff) >> shift) << 1 | (v & 1)) as usize) & (BINS - 1);
    let (quads, rest) = words.as_chunks::<4>();
    for q in quads {
        let v =
            u64::from(q[0]) | u64::from(q[1]) << 16 | u64::from(q[2]) << 32 | u64::from(q[3]) << 48;
        h[bin64(v)][0] += 1;
        h[bin64(v >> 16)][1] += 1;
        h[bin64(v >> 32)][2] += 1;
        h[bin64(v >> 48)][3] += 1;
    }
    for &w in rest {
        h[bin(w)][0] += 1;
    }
    h.iter()
        .enumerate()
        .filter_map(|(j, c)| {
            let n: u64 = c.iter().map(|&x| u64::from(x)).sum();
            (n > 0).then_some((j, n))
        })
        .collect()
}

/// Chooses the layout by exact measurement and writes the split body (without codec tag).
pub(super) fn write_split(words: &[u16], rs: &[u32], try_lsb: bool, out: &mut Vec<u8>) {
    plan_split(words, rs, try_lsb).write(words, out);
}

/// A measured split of a run of words: its layout, its symbol plan and the size of its packed
/// rest fields (so the size of the body it will write, `bytes`).
pub(super) struct SplitPlan {
    layout: Layout,
    plan: stream::SymPlan,
    /// Bytes of the packed rest fields.
    rest: usize,
}

/// Measures every candidate layout from one histogram and keeps the smallest.
pub(super) fn plan_split(words: &[u16], rs: &[u32], try_lsb: bool) -> SplitPlan {
    let n = words.len();
    let r_min = rs[0];
    let fine = joint_histogram(words, r_min);
    let mut best: Option<(usize, Layout, stream::SymPlan)> = None;
    for &r in rs {
        for lsb in [false, true] {
            if lsb && (!try_lsb || r < 2) {
                continue;
            }
            let layout = Layout { r, lsb };
            let shift = r - r_min;
            let mut pairs: Vec<(u16, u64)> = fine
                .iter()
                .map(|&(j, c)| {
                    let top = (j >> 1) >> shift;
                    let v = if lsb { (top << 1) | (j & 1) } else { top };
                    (v as u16, c)
                })
                .collect();
            pairs.sort_unstable_by_key(|p| p.0);
            let mut h = Histogram {
                values: Vec::with_capacity(pairs.len()),
                counts: Vec::with_capacity(pairs.len()),
            };
            for (v, c) in pairs {
                if h.values.last() == Some(&v) {
                    *h.counts.last_mut().expect("paired") += c;
                } else {
                    h.values.push(v);
                    h.counts.push(c);
                }
            }
            if let Some(plan) = stream::plan_symbols(&h) {
                let total = plan.bytes + packed_len(n, layout.width());
                if best.as_ref().is_none_or(|b| total < b.0) {
                    best = Some((total, layout, plan));
                }
            }
        }
    }
    // Fall back to the coarsest split that always fits 256 symbols: 8 symbol bits.
    let (layout, plan) = match best {
        Some((_, layout, plan)) => (layout, plan),
        None => {
            let layout = Layout { r: 7, lsb: false };
            let h = Histogram::of(words.iter().map(|&w| layout.value(w)), 8);
            (layout, stream::plan_symbols(&h).expect("8-bit symbols"))
        }
    };
    let rest = packed_len(n, layout.width());
    SplitPlan { layout, plan, rest }
}

impl SplitPlan {
    /// The body's planned size (layout byte, symbols, rest fields; without the codec tag), to
    /// within a few bytes.
    pub(super) fn bytes(&self) -> usize {
        1 + self.plan.bytes + self.rest
    }

    /// Bounds on the length of the SPLIT16 blob (tag included) that `write_planned` makes.
    fn blob_len(&self) -> std::ops::RangeInclusive<usize> {
        let fixed = 2 + self.rest;
        fixed + *self.plan.len.start()..=fixed + *self.plan.len.end()
    }

    /// Writes the split body (layout byte, symbols, packed rest).
    pub(super) fn write(&self, words: &[u16], out: &mut Vec<u8>) {
        let (layout, plan, n) = (self.layout, &self.plan, words.len());
        out.push(layout.to_byte());
        let index = plan.index_map(0, layout.value_bits());
        stream::write_word_symbols(plan, words, layout.key(), &index, out);
        match layout.width() {
            8 => out.extend(words.iter().map(|&w| layout.rest(w) as u8)),
            7 => pack_const::<7>(words, layout, out),
            6 => pack_const::<6>(words, layout, out),
            5 => pack_const::<5>(words, layout, out),
            4 => pack_const::<4>(words, layout, out),
            w => pack(words.iter().map(|&x| u32::from(layout.rest(x))), n, w, out),
        }
    }
}

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
        4 => return unpack_const::<4>(packed, first, out),
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

/// Elements reassembled per block: a multiple of the rANS group and of 8 (bit unpacking).
const BLOCK: usize = 4096;

/// Decodes a split body into 16-bit words, handed out block by block as `put(first, words)`.
pub(super) fn read_split<F: FnMut(usize, &[u16])>(
    r: &mut Reader<'_>,
    n: usize,
    put: F,
) -> Result<(), CodecError> {
    let (layout, syms, raw) = split_header(r, n)?;
    if super::avx512() || layout.width() > 8 {
        read_split_indices(&syms, raw, layout, n, None, put)
    } else {
        read_split_values(&syms, raw, layout, n, None, put)
    }
}

/// Decodes a split body of `out.len()` words straight into `out`.
pub(super) fn read_split_into(r: &mut Reader<'_>, out: &mut [u16]) -> Result<(), CodecError> {
    let n = out.len();
    let (layout, syms, raw) = split_header(r, n)?;
    if super::avx512() || layout.width() > 8 {
        read_split_indices(&syms, raw, layout, n, Some(out), |_, _| {})
    } else {
        read_split_values(&syms, raw, layout, n, Some(out), |_, _| {})
    }
}

/// Reads a split body's layout, symbol stream and packed rest fields.
fn split_header<'a>(
    r: &mut Reader<'a>,
    n: usize,
) -> Result<(Layout, stream::SymStream<'a>, &'a [u8]), CodecError> {
    let layout =
        Layout::from_byte(r.u8()?).ok_or(CodecError::Corrupt("split field layout out of range"))?;
    let syms = stream::read_symbols(r, layout.value_bits())?;
    let raw = r.bytes(packed_len(n, layout.width()))?;
    Ok((layout, syms, raw))
}

/// The split decoder around the AVX-512 kernels (and for rest fields wider than a byte):
/// symbol indices per block, then a pass that maps them and merges the rest bits. The words
/// are built in `direct` when given (`put` is then not called), else in a block buffer
/// handed to `put`.
fn read_split_indices<F: FnMut(usize, &[u16])>(
    syms: &stream::SymStream<'_>,
    raw: &[u8],
    layout: Layout,
    n: usize,
    mut direct: Option<&mut [u16]>,
    mut put: F,
) -> Result<(), CodecError> {
    let width = layout.width();
    let mut lut = [0u16; 256];
    let mut alphabet = 1;
    let mut idx = vec![0u8; BLOCK.min(n)];
    let mut rest = vec![0u16; BLOCK.min(n)];
    let mut buf = match direct {
        Some(_) => Vec::new(),
        None => vec![0u16; BLOCK.min(n)],
    };
    let to_put = direct.is_none();
    let mut decoder = match syms {
        stream::SymStream::Const(v) => {
            lut[0] = layout.placed(*v);
            None
        }
        stream::SymStream::Rans {
            table,
            values,
            coded,
            alphabet: a,
        } => {
            for (l, &v) in lut.iter_mut().zip(values) {
                *l = layout.placed(v);
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
        let words = match direct.as_deref_mut() {
            Some(out) => &mut out[first..first + len],
            None => &mut buf[..len],
        };
        let done = fast_combine(&lut, alphabet, idx, raw, first, layout, words);
        let rest = &mut rest[..len - done];
        if width == 8 {
            for (o, &b) in rest.iter_mut().zip(&raw[first + done..first + len]) {
                *o = u16::from(b);
            }
        } else {
            unpack_block(raw, first + done, width, rest);
        }
        for ((o, &s), &rb) in words[done..].iter_mut().zip(&idx[done..]).zip(rest.iter()) {
            *o = layout.word(lut[s as usize], rb);
        }
        if to_put {
            put(first, words);
        }
        first += len;
    }
    if let Some((d, _)) = decoder {
        d.finish()?;
    }
    Ok(())
}

/// The portable split decoder for rest fields of at most 8 bits. The rANS decoder stores each
/// symbol's value already in place in its word; the rest fields are spread to one byte each
/// (eight at a time, in a u64) and merged in by a loop the compiler vectorises. The words
/// are built in `direct` when given (`put` is then not called), else in a block buffer
/// handed to `put`.
fn read_split_values<F: FnMut(usize, &[u16])>(
    syms: &stream::SymStream<'_>,
    raw: &[u8],
    layout: Layout,
    n: usize,
    mut direct: Option<&mut [u16]>,
    mut put: F,
) -> Result<(), CodecError> {
    let mut buf = match direct {
        Some(_) => Vec::new(),
        None => vec![0u16; BLOCK.min(n)],
    };
    let mut spread = vec![0u8; BLOCK.min(n)];
    let mut constant = 0;
    let mut decoder = match syms {
        stream::SymStream::Const(v) => {
            constant = layout.placed(*v);
            None
        }
        stream::SymStream::Rans {
            table,
            values,
            coded,
            ..
        } => {
            let placed: [u16; 256] = std::array::from_fn(|i| layout.placed(values[i]));
            Some((
                rans::Decoder::new(coded)?,
                rans::SlotTable::new(table, &placed),
            ))
        }
    };
    let to_put = direct.is_none();
    let mut first = 0;
    while first < n {
        let len = BLOCK.min(n - first);
        let words = match direct.as_deref_mut() {
            Some(out) => &mut out[first..first + len],
            None => &mut buf[..len],
        };
        match decoder.as_mut() {
            Some((d, t)) => d.decode_block_values(t, words)?,
            None => words.fill(constant),
        }
        let rest: &[u8] = match layout.width() {
            8 => &raw[first..first + len],
            w => {
                let spread = &mut spread[..len];
                match w {
                    1 => spread_block::<1>(raw, first, spread),
                    2 => spread_block::<2>(raw, first, spread),
                    3 => spread_block::<3>(raw, first, spread),
                    4 => spread_block::<4>(raw, first, spread),
                    5 => spread_block::<5>(raw, first, spread),
                    6 => spread_block::<6>(raw, first, spread),
                    _ => spread_block::<7>(raw, first, spread),
                }
                spread
            }
        };
        merge_rest(words, rest, layout);
        if to_put {
            put(first, words);
        }
        first += len;
    }
    if let Some((d, _)) = decoder {
        d.finish()?;
    }
    Ok(())
}

/// Eight `W`-bit fields (field `j` at bit `j * W`) moved to one byte each (field `j` in byte
/// `j`), by halving the distance three times.
#[inline(always)]
fn spread8<const W: u32>(v: u64) -> u64 {
    let m4 = (1u64 << (4 * W)) - 1;
    let a = (v & m4) | ((v << (32 - 4 * W)) & (m4 << 32));
    let m2 = ((1u64 << (2 * W)) - 1) * 0x1_0000_0001;
    let a = (a & m2) | ((a << (16 - 2 * W)) & (m2 << 16));
    let m1 = ((1u64 << W) - 1) * 0x0001_0001_0001_0001;
    (a & m1) | ((a << (8 - W)) & (m1 << 8))
}

/// Unpacks `out.len()` fields of `W < 8` bits from element `first` (a multiple of 8) on, one
/// byte each.
fn spread_block<const W: u32>(packed: &[u8], first: usize, out: &mut [u8]) {
    let w = W as usize;
    let total = out.len();
    let start = first / 8 * w;
    // Groups whose eight bytes can be read whole, then the rest through a padded copy.
    let whole = match packed.len().checked_sub(start + 8) {
        Some(spare) => (spare / w + 1).min(out.len() / 8),
        None => 0,
    };
    let (head, tail) = out.split_at_mut(whole * 8);
    for (g, o) in head.chunks_exact_mut(8).enumerate() {
        let b = start + g * w;
        let v = u64::from_le_bytes(packed[b..b + 8].try_into().expect("8 bytes"));
        o.copy_from_slice(&spread8::<W>(v & ((1u64 << (8 * W)) - 1)).to_le_bytes());
    }
    let mut groups = tail.chunks_exact_mut(8);
    let mut byte = start + whole * w;
    for o in &mut groups {
        let mut buf = [0u8; 8];
        let avail = packed.len().saturating_sub(byte).min(8);
        buf[..avail].copy_from_slice(&packed[byte..byte + avail]);
        let v = u64::from_le_bytes(buf);
        o.copy_from_slice(&spread8::<W>(v & ((1u64 << (8 * W)) - 1)).to_le_bytes());
        byte += w;
    }
    let rem = groups.into_remainder();
    let base = first + total - rem.len();
    for (j, o) in rem.iter_mut().enumerate() {
        *o = unpack_at(packed, base + j, W) as u8;
    }
}

/// Merges rest fields (one per byte: the sign above the middle bits) into words that already
/// hold their symbol's bits.
fn merge_rest(words: &mut [u16], rest: &[u8], layout: Layout) {
    let (mid, shift) = (layout.mid(), u32::from(layout.lsb));
    let low = (1u16 << mid) - 1;
    for (o, &r) in words.iter_mut().zip(rest) {
        let r = u16::from(r);
        *o |= ((r >> mid) << 15) | ((r & low) << shift);
    }
}

/// The AVX-512 reassembly where available; returns how many leading elements it did.
fn fast_combine(
    lut: &[u16; 256],
    alphabet: usize,
    idx: &[u8],
    raw: &[u8],
    first: usize,
    layout: Layout,
    out: &mut [u16],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::has_avx512() {
            let (mid, shift) = (layout.mid(), u32::from(layout.lsb));
            // SAFETY: the CPU supports the kernel's features.
            return unsafe {
                super::simd::combine16(lut, alphabet, idx, raw, first, mid, shift, out)
            };
        }
    }
    let _ = (lut, alphabet, idx, raw, first, layout, out);
    0
}

/// The chunk's bytes as 16-bit words: borrowed when aligned on a little-endian machine.
pub(super) fn as_words(data: &[u8]) -> std::borrow::Cow<'_, [u16]> {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: every bit pattern is a valid u16; align_to only yields the aligned middle.
        let (pre, mid, post) = unsafe { data.align_to::<u16>() };
        if pre.is_empty() && post.is_empty() {
            return std::borrow::Cow::Borrowed(mid);
        }
    }
    std::borrow::Cow::Owned(
        data.chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect(),
    )
}

/// What `encode16` gives: the chunk's blob, or, where the split would be written and is sure
/// to be longer than the limit it was given, the bounds on that blob's length (unwritten).
pub enum Encoded16 {
    Blob(Vec<u8>),
    Over(std::ops::RangeInclusive<usize>),
}

/// Codes 16-bit floats: the split of each word into a coded symbol and raw rest bits, or a
/// palette where that is smaller. `limit`: see `Encoded16` (`usize::MAX` for none).
pub fn encode16(data: &[u8], flavour: Float16, effort: Effort, limit: usize) -> Encoded16 {
    let words = as_words(data);
    // The biased-LSB pattern comes from rounding wider floats to BF16; inference mode keeps
    // the rest byte-aligned.
    let try_lsb = flavour == Float16::Bf16 && matches!(effort, Effort::Storage | Effort::Balanced);
    let rs = candidates(flavour, effort);
    // A palette that wins, wins by far (a quarter or more on once-quantized weights): it is
    // kept without the split's exact measurement when it beats the split's size estimated
    // from a sample by a tenth. Otherwise both are measured exactly.
    if matches!(effort, Effort::Storage | Effort::Balanced) && super::palette::worth_trying(&words)
    {
        if let Some(p) = super::palette::encode(&words, rs, try_lsb) {
            if p.len() * 10 < estimate_split(&words, rs, try_lsb) * 9 {
                return Encoded16::Blob(p);
            }
            let split = plan_split(&words, rs, try_lsb);
            if p.len() < split.bytes() + 1 {
                return Encoded16::Blob(p);
            }
            return write_within(&words, &split, limit);
        }
    }
    // Inference mode pairs the symbols (half the decoder's symbols) unless that costs more
    // than a hundredth of its own split's size.
    if effort == Effort::Inference {
        if let Some(p) = super::pairs::plan(&words).filter(|p| p.pays()) {
            return pairs_within(&words, &p, limit);
        }
    }
    let split = plan_split(&words, rs, try_lsb);
    if effort == Effort::Speed && super::palette::worth_trying(&words) {
        // The palette values are under half the words, so their finer split costs little
        // decode time; the indices are the nibbles that make this fast.
        if let Some(p) =
            super::palette::encode_nibbles(&words, candidates(flavour, Effort::Balanced))
        {
            if p.len() < split.bytes() + 1 {
                return Encoded16::Blob(p);
            }
        }
    }
    // Speed mode pairs the symbols where no palette won, by inference mode's rule.
    if effort == Effort::Speed {
        if let Some(p) = super::pairs::plan(&words).filter(|p| p.pays()) {
            return pairs_within(&words, &p, limit);
        }
    }
    write_within(&words, &split, limit)
}

/// The planned pairs' blob, unless it is sure to be longer than `limit`.
fn pairs_within(words: &[u16], pairs: &super::pairs::PairsPlan, limit: usize) -> Encoded16 {
    let len = pairs.blob_len();
    if *len.start() > limit {
        return Encoded16::Over(len);
    }
    Encoded16::Blob(pairs.write(words))
}

/// The planned split's blob, unless it is sure to be longer than `limit`.
fn write_within(words: &[u16], split: &SplitPlan, limit: usize) -> Encoded16 {
    let len = split.blob_len();
    if *len.start() > limit {
        return Encoded16::Over(len);
    }
    Encoded16::Blob(write_planned(words, split))
}

fn write_planned(words: &[u16], split: &SplitPlan) -> Vec<u8> {
    let mut out = Vec::with_capacity(split.bytes() + 1);
    out.push(tag::SPLIT16);
    split.write(words, &mut out);
    out
}

/// The split's coded size (with its tag) estimated from every eighth run of 4096 words: an
/// over-estimate by the table headers counted eight times, which is well under the tenth
/// a palette has to win by to be kept on this estimate alone.
fn estimate_split(words: &[u16], rs: &[u32], try_lsb: bool) -> usize {
    const RUN: usize = 4096;
    const EVERY: usize = 8;
    if words.len() < 4 * RUN * EVERY {
        return plan_split(words, rs, try_lsb).bytes() + 1;
    }
    let mut sample = Vec::with_capacity(words.len() / EVERY + RUN);
    for run in words.chunks(RUN).step_by(EVERY) {
        sample.extend_from_slice(run);
    }
    let est = plan_split(&sample, rs, try_lsb).bytes() as u64 * words.len() as u64;
    (est / sample.len() as u64) as usize + 1
}

/// Decodes a SPLIT16 body (tag already read).
pub fn decode16(r: &mut Reader<'_>, out: &mut [u8]) -> Result<(), CodecError> {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: every bit pattern is a valid u16; align_to_mut only yields the aligned
        // middle, which here is the whole buffer.
        let (pre, mid, post) = unsafe { out.align_to_mut::<u16>() };
        if pre.is_empty() && post.is_empty() {
            return read_split_into(r, mid);
        }
    }
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
    write_split(&hi, candidates(Float16::Bf16, effort), false, &mut out);
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
            stream::zstd_smallest(&lo, level)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A split body with a chosen layout; `None` if its symbols need more than 256 values.
    fn body(words: &[u16], layout: Layout) -> Option<Vec<u8>> {
        let h = Histogram::of(words.iter().map(|&w| layout.value(w)), layout.value_bits());
        let plan = stream::plan_symbols(&h)?;
        let mut out = Vec::new();
        let split = SplitPlan {
            layout,
            plan,
            rest: packed_len(words.len(), layout.width()),
        };
        split.write(words, &mut out);
        // Every body the tests make also checks the bounds a patch relies on (tag + body).
        let len = split.blob_len();
        assert!(
            len.contains(&(out.len() + 1)),
            "{} outside {len:?}",
            out.len() + 1
        );
        Some(out)
    }

    /// Every layout's body through both split decoders, each handing out blocks and each
    /// writing in place (and through the dispatching one), in every SIMD mode.
    fn decoders(body: &[u8], n: usize) -> Vec<Result<Vec<u16>, CodecError>> {
        crate::codec::each_simd_mode(|| decoders_here(body, n))
            .into_iter()
            .flatten()
            .collect()
    }

    fn decoders_here(body: &[u8], n: usize) -> [Result<Vec<u16>, CodecError>; 5] {
        let run = |which: u8| -> Result<Vec<u16>, CodecError> {
            let mut r = Reader::new(body);
            let mut out = vec![0u16; n];
            let mut direct = vec![0u16; n];
            let put = |first: usize, w: &[u16]| out[first..first + w.len()].copy_from_slice(w);
            if which == 0 {
                read_split(&mut r, n, put)?;
                return Ok(out);
            }
            let layout = Layout::from_byte(r.u8()?)
                .ok_or(CodecError::Corrupt("split field layout out of range"))?;
            let syms = stream::read_symbols(&mut r, layout.value_bits())?;
            let raw = r.bytes(packed_len(n, layout.width()))?;
            // The value decoder takes rest fields of at most 8 bits.
            let values = which >= 3 && layout.width() <= 8;
            match (which % 2 == 1, values) {
                (true, false) => read_split_indices(&syms, raw, layout, n, None, put)?,
                (true, true) => read_split_values(&syms, raw, layout, n, None, put)?,
                (false, false) => {
                    read_split_indices(&syms, raw, layout, n, Some(&mut direct), |_, _| {})?;
                    return Ok(direct);
                }
                (false, true) => {
                    read_split_values(&syms, raw, layout, n, Some(&mut direct), |_, _| {})?;
                    return Ok(direct);
                }
            }
            Ok(out)
        };
        [run(0), run(1), run(2), run(3), run(4)]
    }

    fn layouts() -> Vec<Layout> {
        let mut v = Vec::new();
        for r in 1..=9 {
            v.push(Layout { r, lsb: false });
            if r >= 2 {
                v.push(Layout { r, lsb: true });
            }
        }
        v
    }

    /// Bell-shaped BF16-like words: few exponents, random mantissas and signs.
    fn weights(n: usize, seed: u64) -> Vec<u16> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let e = 118 + ((x >> 60) as u16 & 7);
                ((x >> 63) as u16) << 15 | e << 7 | ((x >> 20) as u16 & 0x7f)
            })
            .collect()
    }

    #[test]
    fn value_and_index_decoders_agree() {
        for n in [0usize, 1, 7, 8, 31, 33, 4095, 4096, 4097, 9000] {
            let words = weights(n, n as u64);
            for layout in layouts() {
                let Some(b) = body(&words, layout) else {
                    continue;
                };
                for got in decoders(&b, n) {
                    assert_eq!(got.unwrap(), words, "n={n} layout={layout:?}");
                }
            }
        }
    }

    proptest! {
        /// Corrupt bodies: the value decoder reaches the same verdict as the index decoder,
        /// and never panics.
        #[test]
        fn decoders_agree_on_corrupt(
            n in 1usize..6000,
            seed in any::<u64>(),
            which in 0usize..17,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in 0usize..4,
        ) {
            let words = weights(n, seed);
            let layout = layouts()[which];
            if let Some(mut b) = body(&words, layout) {
                for (at, x) in flips {
                    let i = 1 + at % (b.len() - 1);
                    b[i] ^= x;
                }
                b.truncate(b.len() - cut.min(b.len() - 1));
                let all = decoders(&b, n);
                let (first, rest) = all.split_first().expect("five decoders at least");
                for other in rest {
                    prop_assert_eq!(other.is_ok(), first.is_ok());
                    if let (Ok(a), Ok(o)) = (first, other) {
                        prop_assert_eq!(a, o);
                    }
                }
            }
        }
    }
}
