//! Interleaved static-model rANS: the entropy coder at the heart of every weight codec.
//!
//! Holds the encoder, the portable decoder and (on x86-64) an AVX-512 decoder for a stream of
//! byte-sized symbol *indices* (an alphabet of at most 256 symbols) under a fixed frequency table.
//! It does not know what the symbols mean: the tensor codecs map field values to indices.
//!
//! Layout of a coded stream (all little-endian):
//! ```text
//! LANES x u32   final encoder states, lane 0 first
//! u16 words     renormalisation words, in the order the decoder consumes them
//! ```
//! Symbol `i` belongs to lane `i % LANES`. The decoder walks symbols in order; after decoding a
//! symbol a lane whose state fell below `STATE_LOW` pulls one 16-bit word from the shared stream.
//! Because lanes refill in lane order, a SIMD decoder can serve all lanes of a group with one
//! "expand" of the next words.
//!
//! Invariants (kept by both sides):
//! - the decoder's state lives in `[STATE_LOW, 2^32)` between symbols; at most one 16-bit refill
//!   per symbol suffices because `PROB_BITS <= 16`;
//! - the encoder starts every lane at `STATE_LOW`, so a decoder that consumed exactly the stream
//!   ends with every lane at `STATE_LOW` (a free end-of-stream check).

/// Number of interleaved states. 32 = two AVX-512 registers, enough independent work per group
/// to hide the latency of the table lookup on a scalar core too.
pub const LANES: usize = 32;
/// Probability precision: frequencies sum to `1 << PROB_BITS`. 12 bits keeps the decode table
/// (4096 x u32 = 16 KiB) in L1 while costing well under 0.01 bit/symbol for weight alphabets.
pub const PROB_BITS: u32 = 12;
pub const PROB_SCALE: u32 = 1 << PROB_BITS;
/// Lower bound of the normalised state interval.
pub const STATE_LOW: u32 = 1 << 16;

const HEADER_BYTES: usize = LANES * 4;

/// Errors from decoding a coded stream; the caller adds which tensor and chunk it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RansError {
    #[error("rANS stream is shorter than its {HEADER_BYTES}-byte state header")]
    Truncated,
    #[error("rANS stream ran out of words before the last symbol")]
    Exhausted,
    #[error("rANS stream did not end in its initial state (corrupt data)")]
    BadFinalState,
    #[error("rANS initial state out of range (corrupt data)")]
    BadState,
}

/// A normalised frequency table for an alphabet of up to 256 symbol indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreqTable {
    /// Frequency of each symbol index; sums to `PROB_SCALE`; every used symbol has at least 1.
    pub freqs: Vec<u16>,
}

impl FreqTable {
    /// Validates a table read from a file: at least two symbols, at most 256, each in
    /// `1..PROB_SCALE`, summing to `PROB_SCALE`. (A one-symbol stream is stored as a constant by
    /// the codecs, never as rANS.)
    pub fn new(freqs: Vec<u16>) -> Option<FreqTable> {
        if freqs.len() < 2 || freqs.len() > 256 {
            return None;
        }
        let mut sum = 0u32;
        for &f in &freqs {
            if f == 0 || u32::from(f) >= PROB_SCALE {
                return None;
            }
            sum += u32::from(f);
        }
        (sum == PROB_SCALE).then_some(FreqTable { freqs })
    }

    fn cumulative(&self) -> Vec<u32> {
        let mut cum = Vec::with_capacity(self.freqs.len());
        let mut acc = 0u32;
        for &f in &self.freqs {
            cum.push(acc);
            acc += u32::from(f);
        }
        cum
    }

    /// The decode table: one packed entry per probability slot,
    /// `freq << 20 | (slot - cum[sym]) << 8 | sym`.
    pub fn decode_table(&self) -> Box<[u32; PROB_SCALE as usize]> {
        let mut table = Box::new([0u32; PROB_SCALE as usize]);
        let mut slot = 0usize;
        for (sym, &f) in self.freqs.iter().enumerate() {
            for bias in 0..u32::from(f) {
                table[slot] = (u32::from(f) << 20) | (bias << 8) | sym as u32;
                slot += 1;
            }
        }
        table
    }

    /// Exact cost in bits of coding `counts` with this table (ignoring the state header).
    pub fn cost_bits(&self, counts: &[u64]) -> f64 {
        counts
            .iter()
            .zip(&self.freqs)
            .filter(|(&c, _)| c > 0)
            .map(|(&c, &f)| c as f64 * (f64::from(PROB_BITS) - f64::from(f).log2()))
            .sum()
    }
}

/// Per-symbol encoder constants: the quotient `x / freq` is computed by multiplication with a
/// rounded-up reciprocal, which is exact for every 32-bit `x` and `freq <= 4096`
/// (error term `x * e / 2^44 < 2^-12 <= 1/freq`).
#[derive(Clone, Copy)]
struct EncSym {
    freq: u32,
    cum: u32,
    rcp: u64,
    x_max: u32,
}

const RCP_SHIFT: u32 = 44;

impl EncSym {
    fn new(freq: u32, cum: u32) -> EncSym {
        let rcp = (1u64 << RCP_SHIFT).div_ceil(u64::from(freq));
        // States at or above x_max would overflow 32 bits after encoding.
        let x_max = ((STATE_LOW >> PROB_BITS) << 16) as u64 * u64::from(freq);
        EncSym {
            freq,
            cum,
            rcp,
            x_max: x_max.min(u64::from(u32::MAX)) as u32,
        }
    }

    #[inline(always)]
    fn div(&self, x: u32) -> u32 {
        ((u128::from(x) * u128::from(self.rcp)) >> RCP_SHIFT) as u32
    }
}

/// Encodes symbol indices (each `< table.freqs.len()`) into a coded stream appended to `out`.
pub fn encode(symbols: &[u8], table: &FreqTable, out: &mut Vec<u8>) {
    let cum = table.cumulative();
    let syms: Vec<EncSym> = table
        .freqs
        .iter()
        .zip(&cum)
        .map(|(&f, &c)| EncSym::new(u32::from(f), c))
        .collect();
    let mut state = [STATE_LOW; LANES];
    // Words are produced in reverse decoding order, then flipped.
    let mut words: Vec<u16> = Vec::with_capacity(symbols.len() / 2 + LANES);
    let n = symbols.len();
    let put = |lane: usize, s: u8, state: &mut [u32; LANES], words: &mut Vec<u16>| {
        let es = &syms[s as usize];
        let mut x = state[lane];
        if x >= es.x_max {
            words.push(x as u16);
            x >>= 16;
        }
        let q = es.div(x);
        state[lane] = (q << PROB_BITS) + (x - q * es.freq) + es.cum;
    };
    let full = n / LANES * LANES;
    for i in (full..n).rev() {
        put(i % LANES, symbols[i], &mut state, &mut words);
    }
    for group in symbols[..full].chunks_exact(LANES).rev() {
        for lane in (0..LANES).rev() {
            put(lane, group[lane], &mut state, &mut words);
        }
    }
    out.reserve(HEADER_BYTES + words.len() * 2);
    for s in state {
        out.extend_from_slice(&s.to_le_bytes());
    }
    for w in words.iter().rev() {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// Reads the state header; returns the states and the word bytes that follow.
fn split_header(stream: &[u8]) -> Result<([u32; LANES], &[u8]), RansError> {
    if stream.len() < HEADER_BYTES {
        return Err(RansError::Truncated);
    }
    let mut state = [0u32; LANES];
    for (lane, s) in state.iter_mut().enumerate() {
        let b = &stream[lane * 4..lane * 4 + 4];
        *s = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if *s < STATE_LOW {
            return Err(RansError::BadState);
        }
    }
    Ok((state, &stream[HEADER_BYTES..]))
}

/// Decodes `out.len()` symbol indices from `stream`: the portable path.
///
/// Each output is passed through `emit(i, sym)` so codecs can fuse field reassembly into the
/// decode loop instead of making a second pass over a symbol buffer.
pub fn decode_with<F: FnMut(usize, u8)>(
    stream: &[u8],
    table: &[u32; PROB_SCALE as usize],
    n: usize,
    mut emit: F,
) -> Result<(), RansError> {
    let (mut state, words) = split_header(stream)?;
    let n_words = words.len() / 2;
    let mut pos = 0usize; // in words
    let mask = PROB_SCALE - 1;
    let full = n / LANES * LANES;
    let mut i = 0usize;
    // Fast groups: every group needs at most LANES words, so no bounds check inside.
    while i < full && pos + LANES <= n_words {
        let w = &words[pos * 2..(pos + LANES) * 2];
        let mut taken = 0usize;
        for (lane, x) in state.iter_mut().enumerate() {
            let e = table[(*x & mask) as usize];
            emit(i + lane, e as u8);
            let mut y = (e >> 20) * (*x >> PROB_BITS) + ((e >> 8) & 0xfff);
            let need = y < STATE_LOW;
            let word = u32::from(u16::from_le_bytes([w[taken * 2], w[taken * 2 + 1]]));
            if need {
                y = (y << 16) | word;
            }
            taken += need as usize;
            *x = y;
        }
        pos += taken;
        i += LANES;
    }
    // Careful tail: checked reads.
    while i < n {
        let lane = i % LANES;
        let x = state[lane];
        let e = table[(x & mask) as usize];
        emit(i, e as u8);
        let mut y = (e >> 20) * (x >> PROB_BITS) + ((e >> 8) & 0xfff);
        if y < STATE_LOW {
            if pos >= n_words {
                return Err(RansError::Exhausted);
            }
            y = (y << 16) | u32::from(u16::from_le_bytes([words[pos * 2], words[pos * 2 + 1]]));
            pos += 1;
        }
        state[lane] = y;
        i += 1;
    }
    if pos != n_words || words.len() % 2 != 0 || state.iter().any(|&s| s != STATE_LOW) {
        return Err(RansError::BadFinalState);
    }
    Ok(())
}

/// Decodes into a symbol-index buffer (the simplest use, and the oracle for fused decoders).
pub fn decode(stream: &[u8], table: &FreqTable, out: &mut [u8]) -> Result<(), RansError> {
    let t = table.decode_table();
    let n = out.len();
    decode_with(stream, &t, n, |i, s| out[i] = s)
}

/// Turns symbol counts into a frequency table summing to `PROB_SCALE` that (nearly) minimises
/// the coded size: proportional rounding, then greedy unit moves chosen by their exact cost.
/// Needs at least two symbols with a non-zero count; unused symbols must not be passed.
pub fn normalize(counts: &[u64]) -> FreqTable {
    assert!(counts.len() >= 2 && counts.len() <= 256 && counts.iter().all(|&c| c > 0));
    let total: u64 = counts.iter().sum();
    let scale = f64::from(PROB_SCALE);
    let mut freqs: Vec<u32> = counts
        .iter()
        .map(|&c| ((c as f64 * scale / total as f64).round() as u32).clamp(1, PROB_SCALE - 1))
        .collect();
    let mut sum: i64 = freqs.iter().map(|&f| i64::from(f)).sum();
    let target = i64::from(PROB_SCALE);
    // Each move changes the cost by c * log2(f / f'); pick the cheapest one each time.
    while sum != target {
        let grow = sum < target;
        let mut best = usize::MAX;
        let mut best_delta = f64::INFINITY;
        for (s, (&c, &f)) in counts.iter().zip(&freqs).enumerate() {
            let delta = if grow {
                if f + 1 >= PROB_SCALE {
                    continue;
                }
                -(c as f64) * ((f64::from(f) + 1.0) / f64::from(f)).log2()
            } else {
                if f <= 1 {
                    continue;
                }
                c as f64 * (f64::from(f) / (f64::from(f) - 1.0)).log2()
            };
            if delta < best_delta {
                best_delta = delta;
                best = s;
            }
        }
        if grow {
            freqs[best] += 1;
            sum += 1;
        } else {
            freqs[best] -= 1;
            sum -= 1;
        }
    }
    FreqTable {
        freqs: freqs.into_iter().map(|f| f as u16).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts_of(syms: &[u8], alphabet: usize) -> Vec<u64> {
        let mut c = vec![0u64; alphabet];
        for &s in syms {
            c[s as usize] += 1;
        }
        c
    }

    fn roundtrip(syms: &[u8], alphabet: usize) -> usize {
        let counts: Vec<u64> = counts_of(syms, alphabet).into_iter().map(|c| c + 1).collect();
        let table = normalize(&counts);
        let mut coded = Vec::new();
        encode(syms, &table, &mut coded);
        let mut back = vec![0u8; syms.len()];
        decode(&coded, &table, &mut back).unwrap();
        assert_eq!(back, syms);
        coded.len()
    }

    #[test]
    fn reciprocal_division_is_exact() {
        for f in 1..=PROB_SCALE {
            let es = EncSym::new(f, 0);
            for x in [0u32, 1, f - 1, f, f + 1, u32::MAX, u32::MAX - 1, 1 << 31, 65535, 65536] {
                assert_eq!(es.div(x), x / f, "x={x} f={f}");
            }
            let mut x = 0x9e37_79b9u32.wrapping_mul(f);
            for _ in 0..64 {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                assert_eq!(es.div(x), x / f);
            }
        }
    }

    #[test]
    fn empty_and_tiny_streams() {
        for n in 0..100 {
            let syms: Vec<u8> = (0..n).map(|i| (i * 7 % 3) as u8).collect();
            roundtrip(&syms, 3);
        }
    }

    #[test]
    fn skewed_alphabet_compresses() {
        let syms: Vec<u8> = (0..100_000u32)
            .map(|i| if i % 97 == 0 { 1 } else { 0 })
            .collect();
        let size = roundtrip(&syms, 2);
        assert!(size < 2_000, "coded {size} bytes");
    }

    #[test]
    fn normalize_keeps_every_symbol_and_sums() {
        let counts = [1u64, 1, 1, 1_000_000_000, 5, 7];
        let t = normalize(&counts);
        assert_eq!(t.freqs.iter().map(|&f| u32::from(f)).sum::<u32>(), PROB_SCALE);
        assert!(t.freqs.iter().all(|&f| f >= 1));
        let many: Vec<u64> = (0..256).map(|i| 1 + (i % 5)).collect();
        let t = normalize(&many);
        assert_eq!(t.freqs.iter().map(|&f| u32::from(f)).sum::<u32>(), PROB_SCALE);
    }

    #[test]
    fn corrupt_streams_error_not_panic() {
        let syms: Vec<u8> = (0..10_000u32).map(|i| (i % 5) as u8).collect();
        let table = normalize(&[3, 3, 3, 3, 3]);
        let mut coded = Vec::new();
        encode(&syms, &table, &mut coded);
        let mut back = vec![0u8; syms.len()];
        for cut in [0, 10, HEADER_BYTES, coded.len() / 2, coded.len() - 1] {
            assert!(decode(&coded[..cut], &table, &mut back).is_err());
        }
        let mut flipped = coded.clone();
        flipped[HEADER_BYTES + 100] ^= 0x55;
        let r = decode(&flipped, &table, &mut back);
        assert!(r.is_err() || back != syms);
    }

    proptest! {
        #[test]
        fn roundtrip_random(syms in proptest::collection::vec(0u8..40, 0..5000)) {
            roundtrip(&syms, 40);
        }

        #[test]
        fn roundtrip_full_alphabet(syms in proptest::collection::vec(any::<u8>(), 0..3000)) {
            roundtrip(&syms, 256);
        }

        #[test]
        fn table_validation_rejects_bad(freqs in proptest::collection::vec(any::<u16>(), 0..300)) {
            if let Some(t) = FreqTable::new(freqs) {
                prop_assert_eq!(t.freqs.iter().map(|&f| u32::from(f)).sum::<u32>(), PROB_SCALE);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), n in 0usize..500) {
            let table = normalize(&[5, 1, 9, 2]);
            let mut out = vec![0u8; n];
            let _ = decode(&bytes, &table, &mut out);
        }
    }
}
