//! Inference mode's pair codecs: two neighbouring elements' symbols travel as one rANS symbol.
//!
//! PAIRS16 splits 16-bit floats as SPLIT16 does with `r = 7` (the magnitude's top byte coded,
//! the sign and seven low mantissa bits stored as a plain byte). PAIRS8 splits bytes (FP8
//! e4m3 codes: sign, 4 exponent bits, 3 mantissa bits) into bits 3..7 (the e4m3 exponent),
//! coded, and the sign and bits 0..3, stored as nibbles; two exponents make one 8-bit symbol,
//! so every chunk fits a stream's 256 symbols.
//!
//! A decoder's speed is its symbol rate (about 0.7 G symbols a second per core in portable
//! code, whatever the alphabet up to 256), so one symbol per two weights doubles what a symbol
//! buys. The pair costs nothing in ratio where the weights' exponents are close to independent
//! (the joint entropy of two is twice one's; measured per 1 MiB chunk with 12-bit tables, pairs
//! cost 0.010 bit a weight more on MiniLM BF16 and 0.008 less on SmolLM2 BF16);
//! it is ruled out where a chunk has more than 256 distinct pairs (the most a stream carries).
//!
//! PAIRS16 body (after the codec tag), for `n` elements:
//! ```text
//! symbol stream, bits = 16   ceil(n / 2) values p_k = v_2k | v_2k+1 << 8, v_i = (w_i & 0x7fff) >> 7,
//!                            v_n = 0 when n is odd
//! n bytes                    rest_i = (w_i >> 15) << 7 | (w_i & 0x7f)
//! w_i = (rest_i >> 7) << 15 | v_i << 7 | (rest_i & 0x7f)
//! ```
//! PAIRS8 body, for `n` bytes `b_i` (`b_n = 0` when `n` is odd):
//! ```text
//! symbol stream, bits = 8    ceil(n / 2) values p_k = e_2k | e_2k+1 << 4, e_i = (b_i >> 3) & 15
//! ceil(n / 2) bytes          q_k = s_2k | s_2k+1 << 4, s_i = (b_i >> 4) & 8 | b_i & 7
//! b_i = (s_i & 8) << 4 | e_i << 3 | (s_i & 7)
//! ```
//! Splitting off the mantissa gives up its dependence on the exponent: about 0.06 bit a byte
//! on the corpus FP8 files (under 1% of the chunk), for half the decoder's symbols.

use super::bits::Reader;
use super::stream::{self, Histogram, SymPlan, SymStream};
use super::{rans, tag, CodecError};

/// Pairs decoded per block: a multiple of the rANS group, and small enough that a block's
/// symbols, rest bytes and words stay in L1.
const BLOCK: usize = 2048;

/// The magnitude's top byte (the symbol of `r = 7`).
#[inline(always)]
fn top(w: u16) -> u16 {
    (w & 0x7fff) >> 7
}

/// The sign above the seven low mantissa bits.
#[inline(always)]
fn rest(w: u16) -> u8 {
    (((w >> 15) << 7) | (w & 0x7f)) as u8
}

/// A word from its symbol `v` (the low byte of `v` is used) and its rest byte.
#[inline(always)]
fn word(v: u16, r: u8) -> u16 {
    let r = u16::from(r);
    ((v & 0xff) << 7) | (r & 0x7f) | ((r & 0x80) << 8)
}

/// A measured pairing of a chunk's words.
pub struct PairsPlan {
    pairs: Vec<u16>,
    plan: SymPlan,
    n: usize,
    /// The planned size of the same words' SPLIT16 blob with `r = 7` (one symbol a word).
    single: usize,
}

/// Plans the pairs of `words`; `None` where they take more than 256 distinct values.
pub fn plan(words: &[u16]) -> Option<PairsPlan> {
    let mut pairs: Vec<u16> = words
        .chunks_exact(2)
        .map(|p| top(p[0]) | top(p[1]) << 8)
        .collect();
    if let [.., last] = words {
        if words.len() % 2 == 1 {
            pairs.push(top(*last));
        }
    }
    let h = pair_histogram(words, &pairs)?;
    let plan = stream::plan_symbols(&h)?;
    // The one-symbol split's histogram is the pairs' marginal (less the padding).
    let mut single = [0u64; 256];
    for (&v, &c) in h.values.iter().zip(&h.counts) {
        single[usize::from(v & 0xff)] += c;
        single[usize::from(v >> 8)] += c;
    }
    single[0] -= (words.len() % 2) as u64;
    let single = stream::plan_symbols(&Histogram::from_dense(&single))
        .expect("8-bit symbols")
        .bytes;
    Some(PairsPlan {
        pairs,
        plan,
        n: words.len(),
        single: 2 + single + words.len(),
    })
}

/// The histogram of the pair values, `None` where they take more than 256 values. The
/// symbols' own values are ranked first: with at most 64 of them each pair is counted in a
/// table of at most 4096 entries (64 KiB; trained weights have a few dozen exponents, so
/// usually under 25 KiB, in L1) instead of one of every 16-bit value (1 MiB).
fn pair_histogram(words: &[u16], pairs: &[u16]) -> Option<Histogram> {
    const MAX_RANKS: usize = 64;
    let mut seen = [false; 256];
    for &w in words {
        seen[usize::from(top(w))] = true;
    }
    // An odd count's last pair is padded with the symbol 0.
    seen[0] |= words.len() % 2 == 1;
    let tops: Vec<u16> = (0..256u16).filter(|&v| seen[usize::from(v)]).collect();
    let d = tops.len();
    if d > MAX_RANKS {
        return Histogram::of_words_planes(pairs).0;
    }
    let mut rank = [0u16; 256];
    for (r, &v) in tops.iter().enumerate() {
        rank[usize::from(v)] = r as u16;
    }
    // Indexed by second rank, then first, so that walking it lists the values in order; four
    // counters per pair value, by position, so that runs of one pair do not wait on one.
    let mut counts = vec![[0u32; 4]; d * d];
    let at = |p: u16| {
        usize::from(rank[usize::from(p >> 8)]) * d + usize::from(rank[usize::from(p & 0xff)])
    };
    let mut quads = pairs.chunks_exact(4);
    for q in &mut quads {
        for (k, &p) in q.iter().enumerate() {
            counts[at(p)][k] += 1;
        }
    }
    for &p in quads.remainder() {
        counts[at(p)][0] += 1;
    }
    let mut h = Histogram {
        values: Vec::new(),
        counts: Vec::new(),
    };
    for (i, c) in counts.iter().enumerate() {
        let c: u32 = c.iter().sum();
        if c > 0 {
            if h.values.len() == 256 {
                return None;
            }
            h.values.push(tops[i % d] | tops[i / d] << 8);
            h.counts.push(u64::from(c));
        }
    }
    Some(h)
}

impl PairsPlan {
    /// Planned size of the blob, tag included, to within a few bytes.
    pub fn bytes(&self) -> usize {
        1 + self.plan.bytes + self.n
    }

    /// Whether it is worth its ratio: at most a hundredth larger than the one-symbol split
    /// of the same words (SPLIT16 with `r = 7`, planned from the pairs' counts).
    pub fn pays(&self) -> bool {
        self.bytes() * 100 <= self.single * 101
    }

    /// Bounds on the length of the blob (tag included) that `write` makes.
    pub fn blob_len(&self) -> std::ops::RangeInclusive<usize> {
        let fixed = 1 + self.n;
        fixed + *self.plan.len.start()..=fixed + *self.plan.len.end()
    }

    /// The PAIRS16 blob of the words it was planned from.
    pub fn write(&self, words: &[u16]) -> Vec<u8> {
        debug_assert_eq!(words.len(), self.n);
        let mut out = Vec::with_capacity(self.bytes() + 8);
        out.push(tag::PAIRS16);
        stream::write_symbols(&self.plan, &self.pairs, &mut out);
        out.extend(words.iter().map(|&w| rest(w)));
        out
    }
}

/// Decodes a PAIRS16 body (tag already read) into `out` (little-endian words).
pub fn decode(r: &mut Reader<'_>, out: &mut [u8]) -> Result<(), CodecError> {
    let n = out.len() / 2;
    let syms = stream::read_symbols(r, 16)?;
    let rests = r.bytes(n)?;
    #[cfg(target_endian = "little")]
    {
        // SAFETY: every bit pattern is a valid u16; align_to_mut only yields the aligned
        // middle, which here is the whole buffer.
        let (pre, mid, post) = unsafe { out.align_to_mut::<u16>() };
        if pre.is_empty() && post.is_empty() {
            return decode_words(&syms, rests, mid);
        }
    }
    let mut words = vec![0u16; n];
    decode_words(&syms, rests, &mut words)?;
    for (o, w) in out.chunks_exact_mut(2).zip(&words) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    Ok(())
}

fn decode_words(syms: &SymStream<'_>, rests: &[u8], out: &mut [u16]) -> Result<(), CodecError> {
    let n = out.len();
    let npairs = n.div_ceil(2);
    let (coded, table, values, alphabet) = match syms {
        SymStream::Const(v) => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = word(if k % 2 == 0 { *v } else { *v >> 8 }, rests[k]);
            }
            return last_pair_ok(*v, n);
        }
        SymStream::Rans {
            table,
            values,
            coded,
            alphabet,
        } => (coded, table, values, *alphabet),
    };
    let mut d = rans::Decoder::new(coded)?;
    let slots = (!super::avx512()).then(|| rans::SlotTable::new(table, values));
    let mut idx = [0u8; BLOCK];
    let mut pairs = [0u16; BLOCK];
    let mut last = 0u16;
    let mut first = 0;
    while first < npairs {
        let m = BLOCK.min(npairs - first);
        let words = &mut out[2 * first..(2 * (first + m)).min(n)];
        let rest = &rests[2 * first..2 * first + words.len()];
        // Pairs of this block already merged into `words`, two words each.
        let done = match &slots {
            Some(t) => {
                d.decode_block_values(t, &mut pairs[..m])?;
                0
            }
            None => {
                d.decode_block(table, &mut idx[..m])?;
                let done = combine(values, alphabet, &idx[..m], rest, words);
                for (p, &i) in pairs[done..m].iter_mut().zip(&idx[done..m]) {
                    *p = values[usize::from(i)];
                }
                done
            }
        };
        merge(&pairs[done..m], &rest[2 * done..], &mut words[2 * done..]);
        // The block's last pair: merged by the kernel, or left in `pairs`.
        last = if done == m {
            values[usize::from(idx[m - 1])]
        } else {
            pairs[m - 1]
        };
        first += m;
    }
    d.finish()?;
    last_pair_ok(last, n)
}

/// The AVX-512 reassembly of whole groups of pairs where the CPU has it; returns how many
/// pairs it did.
fn combine(
    values: &[u16; 256],
    alphabet: usize,
    idx: &[u8],
    rest: &[u8],
    out: &mut [u16],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx512() {
        // SAFETY: the CPU has the kernel's features.
        return unsafe { super::simd::combine_pairs(values, alphabet, idx, rest, out) };
    }
    let _ = (values, alphabet, idx, rest, out);
    0
}

/// Words from pairs of symbols and their rest bytes (the last pair may be half used).
fn merge(pairs: &[u16], rest: &[u8], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: the CPU has AVX2.
        unsafe { merge_avx2(pairs, rest, out) };
        return;
    }
    merge_words(pairs, rest, out);
}

/// `merge_words` vectorised for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn merge_avx2(pairs: &[u16], rest: &[u8], out: &mut [u16]) {
    merge_words(pairs, rest, out)
}

#[inline(always)]
fn merge_words(pairs: &[u16], rest: &[u8], out: &mut [u16]) {
    let whole = out.len() / 2;
    for ((o, &p), r) in out
        .chunks_exact_mut(2)
        .zip(&pairs[..whole])
        .zip(rest.chunks_exact(2))
    {
        o[0] = word(p, r[0]);
        o[1] = word(p >> 8, r[1]);
    }
    if out.len() % 2 == 1 {
        out[2 * whole] = word(pairs[whole], rest[2 * whole]);
    }
}

/// An odd element count leaves the last pair's second symbol unused: it must be 0, so that
/// every chunk has one encoding.
fn last_pair_ok(last: u16, n: usize) -> Result<(), CodecError> {
    if n % 2 == 1 && last >> 8 != 0 {
        return Err(CodecError::Corrupt(
            "pairs16: the unused half of the last pair is set",
        ));
    }
    Ok(())
}

/// A byte's coded half: bits 3..7 (the e4m3 exponent).
#[inline(always)]
fn exp4(b: u8) -> u8 {
    (b >> 3) & 15
}

/// A byte's stored half: the sign (as bit 3) above bits 0..3.
#[inline(always)]
fn sign_low(b: u8) -> u8 {
    ((b >> 4) & 8) | (b & 7)
}

/// The two bytes whose halves are packed in the pair symbol `p` and the stored pair `q`.
#[inline(always)]
fn bytes8(p: u8, q: u8) -> [u8; 2] {
    let one = |e: u8, s: u8| ((s & 8) << 4) | (e << 3) | (s & 7);
    [one(p & 15, q & 15), one(p >> 4, q >> 4)]
}

/// A measured pairing of a chunk's bytes.
pub struct Pairs8Plan {
    pairs: Vec<u16>,
    plan: SymPlan,
    n: usize,
}

/// Plans the PAIRS8 coding of `data` (always possible: 256 pair values at most).
pub fn plan8(data: &[u8]) -> Pairs8Plan {
    let pairs: Vec<u16> = data
        .chunks(2)
        .map(|p| u16::from(exp4(p[0]) | p.get(1).map_or(0, |&b| exp4(b)) << 4))
        .collect();
    let h = Histogram::of_small(&pairs, 8);
    let plan = stream::plan_symbols(&h).expect("8-bit pair symbols");
    Pairs8Plan {
        pairs,
        plan,
        n: data.len(),
    }
}

impl Pairs8Plan {
    /// Planned size of the blob, tag included, to within a few bytes.
    pub fn bytes(&self) -> usize {
        1 + self.plan.bytes + self.n.div_ceil(2)
    }

    /// The PAIRS8 blob of the bytes it was planned from.
    pub fn write(&self, data: &[u8]) -> Vec<u8> {
        debug_assert_eq!(data.len(), self.n);
        let mut out = Vec::with_capacity(self.bytes() + 8);
        out.push(tag::PAIRS8);
        stream::write_symbols(&self.plan, &self.pairs, &mut out);
        out.extend(
            data.chunks(2)
                .map(|p| sign_low(p[0]) | p.get(1).map_or(0, |&b| sign_low(b)) << 4),
        );
        out
    }
}

/// Decodes a PAIRS8 body (tag already read) into `out`.
pub fn decode8(r: &mut Reader<'_>, out: &mut [u8]) -> Result<(), CodecError> {
    let n = out.len();
    let npairs = n.div_ceil(2);
    let syms = stream::read_symbols(r, 8)?;
    let stored = r.bytes(npairs)?;
    let mut symbols = stream::SymbolBytes::new(&syms)?;
    let mut pairs = [0u8; BLOCK];
    let mut first = 0;
    while first < npairs {
        let m = BLOCK.min(npairs - first);
        symbols.read(&mut pairs[..m])?;
        let q = &stored[first..first + m];
        let bytes = &mut out[2 * first..(2 * (first + m)).min(n)];
        merge8(&pairs[..m], q, bytes);
        if first + m == npairs && n % 2 == 1 && (pairs[m - 1] >> 4 != 0 || q[m - 1] >> 4 != 0) {
            return Err(CodecError::Corrupt(
                "pairs8: the unused half of the last pair is set",
            ));
        }
        first += m;
    }
    symbols.finish()
}

/// Bytes from pairs of coded halves and their stored halves (the last pair may be half used).
fn merge8(pairs: &[u8], stored: &[u8], out: &mut [u8]) {
    let whole = out.len() / 2;
    let (head, tail) = out.split_at_mut(2 * whole);
    if let ([last], Some(&p), Some(&q)) = (tail, pairs.get(whole), stored.get(whole)) {
        *last = bytes8(p, q)[0];
    }
    #[cfg(target_endian = "little")]
    {
        // SAFETY: every bit pattern is a valid u16; align_to_mut only yields the aligned
        // middle, used only when it is all of `head`.
        let (pre, mid, post) = unsafe { head.align_to_mut::<u16>() };
        if pre.is_empty() && post.is_empty() {
            #[cfg(target_arch = "x86_64")]
            if super::simd::has_avx2() {
                // SAFETY: the CPU has AVX2.
                unsafe { merge8_words_avx2(pairs, stored, mid) };
                return;
            }
            merge8_words(pairs, stored, mid);
            return;
        }
    }
    for ((o, &p), &q) in head.chunks_exact_mut(2).zip(pairs).zip(stored) {
        o.copy_from_slice(&bytes8(p, q));
    }
}

/// Both bytes of each pair as one little-endian word, in a loop the compiler vectorises.
#[inline(always)]
fn merge8_words(pairs: &[u8], stored: &[u8], out: &mut [u16]) {
    for ((o, &p), &q) in out.iter_mut().zip(pairs).zip(stored) {
        let (p, q) = (u16::from(p), u16::from(q));
        *o = ((q & 0x08) << 4)
            | ((p & 0x0f) << 3)
            | (q & 0x07)
            | ((q & 0x80) << 8)
            | ((p & 0xf0) << 7)
            | ((q & 0x70) << 4);
    }
}

/// `merge8_words` vectorised 16 pairs at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn merge8_words_avx2(pairs: &[u8], stored: &[u8], out: &mut [u16]) {
    merge8_words(pairs, stored, out)
}

#[cfg(test)]
mod tests {
    use super::super::{decode_chunk, each_simd_mode, ElemKind};
    use super::*;
    use proptest::prelude::*;

    fn bytes_of(words: &[u16]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// What each decoding path (AVX-512, AVX2, portable) makes of a blob of `n` elements.
    fn decoders(blob: &[u8], n: usize) -> Vec<Result<Vec<u8>, super::super::CodecError>> {
        each_simd_mode(|| {
            let mut out = vec![0u8; 2 * n];
            decode_chunk(ElemKind::Bf16, blob, &mut out).map(|()| out)
        })
    }

    /// The blob's length, after checking its bounds and that every path decodes it back.
    fn roundtrip(words: &[u16]) -> Option<usize> {
        let plan = plan(words)?;
        let blob = plan.write(words);
        assert!(plan.blob_len().contains(&blob.len()), "bounds");
        for got in decoders(&blob, words.len()) {
            assert!(got.unwrap() == bytes_of(words));
        }
        Some(blob.len())
    }

    /// `n` weights shaped like a trained layer's: exponents near one value (skewed), anything
    /// in the sign and mantissa.
    fn weights(n: usize, seed: u64) -> Vec<u16> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let e = [120u16, 121, 122, 122, 123, 123, 123, 124][(x >> 61) as usize];
                (e << 7) | ((x >> 20) as u16 & 0x807f)
            })
            .collect()
    }

    /// Element counts around the group (32 pairs) and block (2048 pairs) edges, odd and even,
    /// up to 20,001.
    const EDGE_LENGTHS: [usize; 14] = [
        0, 1, 2, 3, 63, 64, 65, 4095, 4096, 4097, 4160, 8191, 20_000, 20_001,
    ];

    #[test]
    fn every_path_decodes_every_length() {
        let words = weights(20_001, 7);
        for n in EDGE_LENGTHS {
            roundtrip(&words[..n]).unwrap();
        }
    }

    proptest! {
        #[test]
        fn pair_histograms_agree(
            n in 0usize..3000,
            seed in any::<u64>(),
            spread in 1u16..80,
        ) {
            // Up to 80 distinct symbols: the ranked count and the fallback both run.
            let words: Vec<u16> = weights(n, seed)
                .iter()
                .enumerate()
                .map(|(i, &w)| w.wrapping_add(((i as u16).wrapping_mul(7919) % spread) << 7))
                .collect();
            let pairs: Vec<u16> = words
                .chunks(2)
                .map(|p| top(p[0]) | p.get(1).map_or(0, |&w| top(w)) << 8)
                .collect();
            let got = pair_histogram(&words, &pairs);
            let want = Histogram::of_words_planes(&pairs).0;
            prop_assert_eq!(got.map(|h| (h.values, h.counts)), want.map(|h| (h.values, h.counts)));
        }
    }

    #[test]
    fn the_single_symbol_size_is_the_splits() {
        for (n, seed) in [(1, 1), (2, 2), (777, 3), (4096, 4), (100_001, 5)] {
            let words = weights(n, seed);
            let p = plan(&words).unwrap();
            let split = super::super::split::plan_split(&words, &[7], false);
            assert_eq!(p.single, split.bytes() + 1, "n={n}");
        }
    }

    #[test]
    fn too_many_pairs_are_ruled_out() {
        // Pair k holds (k mod 17, k mod 19): 323 distinct pairs of 36 distinct symbols.
        let words: Vec<u16> = (0..4096u16)
            .map(|i| (if i % 2 == 0 { i / 2 % 17 } else { i / 2 % 19 }) << 7)
            .collect();
        assert!(plan(&words).is_none());
        assert!(plan(&words[..2 * 256]).is_some());
    }

    #[test]
    fn a_set_unused_half_is_corrupt() {
        // One element: a constant stream of one pair, whose high byte is the unused half.
        let words = [0x3f80u16];
        let blob = plan(&words).unwrap().write(&words);
        assert_eq!(blob[1], 0, "constant stream");
        let mut bad = blob.clone();
        bad[3] = 1;
        for got in decoders(&bad, 1) {
            assert!(got.is_err());
        }
        // The same with an rANS stream: 4000 elements' blob less its last rest byte reads as
        // 3999 elements whose last pair has a second symbol.
        let words = weights(4000, 3);
        let mut blob = plan(&words).unwrap().write(&words);
        blob.pop();
        for got in decoders(&blob, 3999) {
            assert_eq!(
                got.unwrap_err().to_string(),
                "coded data is corrupt: pairs16: the unused half of the last pair is set"
            );
        }
    }

    /// What each decoding path makes of a PAIRS8 blob of `n` bytes.
    fn decoders8(blob: &[u8], n: usize) -> Vec<Result<Vec<u8>, super::super::CodecError>> {
        each_simd_mode(|| {
            let mut out = vec![0u8; n];
            decode_chunk(ElemKind::Byte, blob, &mut out).map(|()| out)
        })
    }

    /// `n` FP8 e4m3 codes shaped like scaled weights: exponents skewed, any sign and mantissa.
    fn fp8(n: usize, seed: u64) -> Vec<u8> {
        weights(n, seed)
            .into_iter()
            .map(|w| (((w >> 7) as u8 - 116) << 3) | (w as u8 & 7) | ((w >> 8) as u8 & 0x80))
            .collect()
    }

    #[test]
    fn pairs8_decode_on_every_path_and_length() {
        let data = fp8(20_001, 9);
        for n in EDGE_LENGTHS {
            let blob = plan8(&data[..n]).write(&data[..n]);
            for got in decoders8(&blob, n) {
                assert!(got.unwrap() == data[..n]);
            }
        }
        // Any byte values, not only e4m3-shaped ones.
        let all: Vec<u8> = (0..=255u8).cycle().take(5001).collect();
        let blob = plan8(&all).write(&all);
        for got in decoders8(&blob, all.len()) {
            assert!(got.unwrap() == all);
        }
    }

    #[test]
    fn pairs8_unused_half_is_corrupt() {
        let data = fp8(4000, 5);
        let mut blob = plan8(&data).write(&data);
        // 4000 bytes' blob read as 3999: the last pair's second halves are set.
        for got in decoders8(&blob, 3999) {
            assert!(got.is_err());
        }
        // With only the stored half set (a symbol 0 in the unused half).
        let mut odd = data[..3999].to_vec();
        odd[3998] &= 0x87;
        blob = plan8(&odd).write(&odd);
        *blob.last_mut().unwrap() |= 0x10;
        for got in decoders8(&blob, 3999) {
            assert!(got.is_err());
        }
    }

    proptest! {
        #[test]
        fn pairs8_round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let blob = plan8(&data).write(&data);
            let mut out = vec![0u8; data.len()];
            decode_chunk(ElemKind::Byte, &blob, &mut out).unwrap();
            prop_assert_eq!(out, data);
        }

        #[test]
        fn pairs8_paths_agree_on_corrupt(
            n in 1usize..6000,
            seed in any::<u64>(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in 0usize..4,
        ) {
            let data = fp8(n, seed);
            let mut b = plan8(&data).write(&data);
            for (at, x) in flips {
                let i = 1 + at % (b.len() - 1);
                b[i] ^= x;
            }
            b.truncate(b.len() - cut.min(b.len() - 1));
            let all = decoders8(&b, n);
            for other in &all[1..] {
                prop_assert_eq!(other, &all[0]);
            }
        }

        #[test]
        fn pairs_round_trip(n in 0usize..9000, seed in any::<u64>()) {
            let words = weights(n, seed);
            let len = roundtrip(&words).expect("at most 25 distinct pairs");
            // Never more than the split it replaces could be by the rule: the rest bytes,
            // under 3 bits of symbol a weight here, and the headers.
            prop_assert!(len <= 1 + words.len() + words.len() * 3 / 8 + 400);
        }

        /// Corrupt blobs: every path reaches the same verdict (and the same bytes), and none
        /// panics.
        #[test]
        fn paths_agree_on_corrupt(
            n in 1usize..6000,
            seed in any::<u64>(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in 0usize..4,
        ) {
            let words = weights(n, seed);
            let mut b = plan(&words).expect("few pairs").write(&words);
            for (at, x) in flips {
                let i = 1 + at % (b.len() - 1);
                b[i] ^= x;
            }
            b.truncate(b.len() - cut.min(b.len() - 1));
            let all = decoders(&b, n);
            for other in &all[1..] {
                prop_assert_eq!(other, &all[0]);
            }
        }
    }
}
