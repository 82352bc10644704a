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

/// Bounds on the length of the stream `encode` writes for `symbols` symbols whose cost under
/// the table (`FreqTable::cost_bits`) is `cost` bits, sure without encoding them.
///
/// Per lane, the encoder's state starts at `STATE_LOW` and ends in `[STATE_LOW, 2^32)`. Coding
/// a symbol of frequency `f` takes a state `y >= 16 f` (`STATE_LOW` or more, or what is left
/// after a word of a state `>= 2^20 f` was emitted) to `floor(y / f) * 2^12 + (y mod f) + cum`,
/// which lies within a factor `(15/16, 17/16)` of `y * 2^12 / f`: its log grows by the
/// symbol's cost plus at most `log2(17/16)` and at least the cost less `log2(16/15)`. Emitting
/// a word takes `x >= 2^20` to `floor(x / 2^16)`, at most 16 bits less and at least 16 plus
/// `log2(16/15)`. Summing over a lane's symbols `n` and words `w`:
/// `16 <= 16 + cost + n log2(17/16) - 16 w` and `32 > 16 + cost - n log2(16/15) - w (16 +
/// log2(16/15))`, and the lanes add up. The bounds are loose by about a tenth of a bit per
/// symbol: enough to know that a stream will lose a comparison by more than that.
pub fn coded_len(cost: f64, symbols: u64) -> std::ops::RangeInclusive<usize> {
    let n = symbols as f64;
    // Room for the rounding of a sum of `symbols` terms in f64.
    let slack = 1e-9 * cost + 1.0;
    let shrink = (16.0f64 / 15.0).log2();
    let grow = (17.0f64 / 16.0).log2();
    let lanes = LANES as f64;
    let words_min = ((cost - slack - n * shrink - 16.0 * lanes) / (16.0 + shrink))
        .ceil()
        .max(0.0);
    let words_max = ((cost + slack + n * grow) / 16.0).floor();
    HEADER_BYTES + 2 * words_min as usize..=HEADER_BYTES + 2 * words_max as usize
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

/// Which 16-bit value of a word is its symbol's value:
/// `((w' & mask) >> shift) << lsb | (w' & lsb)` with `w' = w + add` (wrapping). The codecs'
/// fields are all of this form, so the encoder can read words directly instead of a symbol
/// array written first; `add` moves a whole-value alphabet that wraps around zero (small
/// differences, ±1 ulp) next to zero, so that its index table is small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WordKey {
    pub mask: u16,
    pub shift: u32,
    pub lsb: bool,
    pub add: u16,
}

impl WordKey {
    /// The word itself.
    pub const WHOLE: WordKey = WordKey::whole(0);

    /// The word plus `add`.
    pub const fn whole(add: u16) -> WordKey {
        WordKey {
            mask: 0xffff,
            shift: 0,
            lsb: false,
            add,
        }
    }

    /// Whether the value is the whole word (plus `add`), with no field to extract.
    pub fn is_whole(self) -> bool {
        self.mask == 0xffff && self.shift == 0 && !self.lsb
    }

    #[inline(always)]
    pub fn value(self, w: u16) -> u16 {
        let w = w.wrapping_add(self.add);
        let l = u16::from(self.lsb);
        (((w & self.mask) >> self.shift) << l) | (w & l)
    }
}

/// The symbols to encode: words mapped to symbol indices through their key's value
/// (`index[key.value(w)]`, every value of the stream below `index.len()`, a power of two;
/// both encoders mask values into the table).
/// The codecs' fields are read in place this way, without a symbol array written first.
#[derive(Clone, Copy)]
pub struct Symbols<'a> {
    pub words: &'a [u16],
    pub key: WordKey,
    pub index: &'a [u8],
}

impl Symbols<'_> {
    #[inline(always)]
    fn at(&self, i: usize) -> usize {
        let v = usize::from(self.key.value(self.words[i]));
        usize::from(self.index[v & (self.index.len() - 1)])
    }
}

/// Encodes symbol indices (each `< table.freqs.len()`) and appends the coded stream to `out`.
pub fn encode(symbols: Symbols<'_>, table: &FreqTable, out: &mut Vec<u8>) {
    encode_after(symbols, table, out, |_, _| {});
}

/// `encode`, with `prefix(coded_len, out)` called before the coded stream is appended (a
/// length field ahead of the stream costs no second copy of it).
pub fn encode_after(
    symbols: Symbols<'_>,
    table: &FreqTable,
    out: &mut Vec<u8>,
    prefix: impl FnOnce(usize, &mut Vec<u8>),
) {
    thread_local! {
        // Renormalisation words, reused: a fresh megabyte per chunk costs page faults and zeroing.
        static WORDS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // The SIMD encoder masks values into the table; an empty or odd-sized one would let it
    // read outside (or code a value other than the one asked for).
    assert!(
        symbols.index.len().is_power_of_two(),
        "index table of 2^k entries"
    );
    let cum = table.cumulative();
    let mut syms = [EncSym::new(1, 0); 256];
    for (i, (&f, &c)) in table.freqs.iter().zip(&cum).enumerate() {
        syms[i] = EncSym::new(u32::from(f), c);
    }
    let mut state = [STATE_LOW; LANES];
    // Words are produced in reverse decoding order, so they are written from the end of the
    // buffer backwards and come out in decoding order. A word is stored unconditionally and
    // the cursor moves only when it was really emitted: no unpredictable branch per symbol.
    let n = symbols.words.len();
    WORDS.with_borrow_mut(|words| {
        if words.len() < n + 1 {
            words.resize(n + 1, 0);
        }
        let words = &mut words[..n + 1];
        let mut at = words.len();
        #[inline(always)]
        fn put(es: &EncSym, x: &mut u32, words: &mut [u16], at: &mut usize) {
            let emit = *x >= es.x_max;
            words[*at - 1] = *x as u16;
            *at -= emit as usize;
            let y = if emit { *x >> 16 } else { *x };
            let q = es.div(y);
            *x = (q << PROB_BITS) + (y - q * es.freq) + es.cum;
        }
        let full = n / LANES * LANES;
        for i in (full..n).rev() {
            put(&syms[symbols.at(i)], &mut state[i % LANES], words, &mut at);
        }
        if !simd_encode(&mut state, symbols, full, &syms, words, &mut at) {
            for g in (0..full / LANES).rev() {
                for lane in (0..LANES).rev() {
                    let i = g * LANES + lane;
                    put(&syms[symbols.at(i)], &mut state[lane], words, &mut at);
                }
            }
        }
        let words = &words[at..];
        prefix(HEADER_BYTES + words.len() * 2, out);
        out.reserve(HEADER_BYTES + words.len() * 2);
        for s in state {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend_from_slice(&words_as_le_bytes(words));
    });
}

/// The words as little-endian bytes: a plain view on little-endian machines.
fn words_as_le_bytes(words: &[u16]) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: u16 has no padding and any byte pattern is a valid u8; the view covers
        // exactly the slice's memory.
        std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 2)
        })
    }
    #[cfg(not(target_endian = "little"))]
    {
        std::borrow::Cow::Owned(words.iter().flat_map(|w| w.to_le_bytes()).collect())
    }
}

/// The AVX-512 encoder for the first `full` symbols (whole groups) where available; false if
/// it did not run.
fn simd_encode(
    state: &mut [u32; LANES],
    symbols: Symbols<'_>,
    full: usize,
    syms: &[EncSym; 256],
    words: &mut [u16],
    at: &mut usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::has_avx512() && super::simd::cpu_has_avx512vl() {
            let freq_cum = |s: usize| (syms[s].freq << 16) | syms[s].cum;
            // A table indexed by value, so the kernel skips the index lookup.
            let fc: Vec<u32> = symbols
                .index
                .iter()
                .map(|&s| freq_cum(usize::from(s)))
                .collect();
            // SAFETY: features checked; `words` holds one slot per symbol below `at`; the
            // table's length is a power of two (asserted in `encode`; the kernel masks values
            // into it).
            unsafe {
                super::simd::rans_encode_word_groups(
                    state,
                    &symbols.words[..full],
                    symbols.key,
                    &fc,
                    words,
                    at,
                )
            };
            return true;
        }
    }
    let _ = (state, symbols, full, syms, words, at);
    false
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

/// A decoder positioned in a coded stream. Symbols are pulled in blocks (`decode_block`) so
/// codecs can reassemble fields block by block while the data is still in L1.
pub struct Decoder<'a> {
    state: [u32; LANES],
    words: &'a [u8],
    /// Byte position of the next word.
    pos: usize,
    /// Symbols decoded so far (fixes the lane of the next symbol).
    done: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(stream: &'a [u8]) -> Result<Decoder<'a>, RansError> {
        let (state, words) = split_header(stream)?;
        Ok(Decoder {
            state,
            words,
            pos: 0,
            done: 0,
        })
    }

    /// Decodes `out.len()` symbol indices. Every block but the last must be a multiple of
    /// `LANES` long so that the fast paths see whole groups.
    pub fn decode_block(
        &mut self,
        table: &[u32; PROB_SCALE as usize],
        out: &mut [u8],
    ) -> Result<(), RansError> {
        let mut i = 0;
        if self.done.is_multiple_of(LANES) {
            i = simd_groups(&mut self.state, self.words, &mut self.pos, table, out) * LANES;
            i += portable_groups(
                &mut self.state,
                self.words,
                &mut self.pos,
                &mut out[i..],
                |slot| (table[slot] >> 20, (table[slot] >> 8) & 0xfff),
                |slot| table[slot] as u8,
            ) * LANES;
        }
        let fb = |slot: usize| (table[slot] >> 20, (table[slot] >> 8) & 0xfff);
        self.decode_tail(&mut out[i..], fb, |slot| table[slot] as u8)
    }

    /// Decodes `out.len()` symbols straight into 16-bit values, each symbol's value from
    /// `table` (see `SlotTable`), which spares the caller a pass mapping indices to values.
    /// The AVX2 kernel where the CPU has it (an AVX-512 machine decodes splits through
    /// indices instead), portable code otherwise; blocks as for `decode_block`.
    pub fn decode_block_values(
        &mut self,
        table: &SlotTable,
        out: &mut [u16],
    ) -> Result<(), RansError> {
        let t = &*table.0;
        let mut i = 0;
        if self.done.is_multiple_of(LANES) {
            i = value_groups(&mut self.state, self.words, &mut self.pos, t, out) * LANES;
        }
        self.decode_tail(
            &mut out[i..],
            |slot| slot_freq_bias(t[slot]),
            |slot| (t[slot] >> 32) as u16,
        )
    }

    /// Symbol-at-a-time decoding with checked reads: the tail after the group loops.
    /// `freq_bias(slot)` gives a slot's frequency and bias, `sym(slot)` what is stored.
    #[inline(always)]
    fn decode_tail<T>(
        &mut self,
        out: &mut [T],
        freq_bias: impl Fn(usize) -> (u32, u32),
        sym: impl Fn(usize) -> T,
    ) -> Result<(), RansError> {
        let mask = PROB_SCALE - 1;
        for (i, o) in out.iter_mut().enumerate() {
            let lane = (self.done + i) % LANES;
            let x = self.state[lane];
            let slot = (x & mask) as usize;
            *o = sym(slot);
            let (f, b) = freq_bias(slot);
            let mut y = f * (x >> PROB_BITS) + b;
            if y < STATE_LOW {
                let w = self
                    .words
                    .get(self.pos..self.pos + 2)
                    .ok_or(RansError::Exhausted)?;
                y = (y << 16) | u32::from(u16::from_le_bytes([w[0], w[1]]));
                self.pos += 2;
            }
            self.state[lane] = y;
        }
        self.done += out.len();
        Ok(())
    }

    /// Checks that the stream was consumed exactly and ended in the encoder's initial state.
    pub fn finish(self) -> Result<(), RansError> {
        if self.pos != self.words.len() || self.state.iter().any(|&s| s != STATE_LOW) {
            return Err(RansError::BadFinalState);
        }
        Ok(())
    }
}

/// Portable decoding of whole groups while at least one group's worth of words remains;
/// returns the number of groups decoded. Generic in the table layout (`freq_bias(slot)`) and
/// in what is stored per symbol (`sym(slot)`). One pass per group: each lane decodes its
/// symbol and refills at once, lane by lane, so the only chain between lanes is the add that
/// moves the word cursor; the group is written out eight lanes a step so that it unrolls.
#[inline(always)]
fn portable_groups<T>(
    state: &mut [u32; LANES],
    words: &[u8],
    pos: &mut usize,
    out: &mut [T],
    freq_bias: impl Fn(usize) -> (u32, u32),
    sym: impl Fn(usize) -> T,
) -> usize {
    let mask = PROB_SCALE - 1;
    let mut st = *state;
    let mut p = *pos;
    let mut g = 0;
    for group in out.chunks_exact_mut(LANES) {
        let Some(w) = words.get(p..p + 2 * LANES) else {
            break;
        };
        let w: &[u8; 2 * LANES] = w.try_into().expect("64 bytes");
        let group: &mut [T; LANES] = group.try_into().expect("one group");
        // Words taken so far in this group.
        let mut at = 0usize;
        let mut lane = |k: usize| {
            let x = st[k];
            let slot = (x & mask) as usize;
            group[k] = sym(slot);
            let (f, b) = freq_bias(slot);
            let y = f * (x >> PROB_BITS) + b;
            let need = y < STATE_LOW;
            // SAFETY: `at` grows by at most 1 per lane before this one, so `at <= 31` and the
            // two bytes read lie inside the 64-byte array `w`.
            let word =
                unsafe { std::ptr::read_unaligned(w.as_ptr().add(2 * at) as *const [u8; 2]) };
            let refilled = (y << 16) | u32::from(u16::from_le_bytes(word));
            st[k] = if need { refilled } else { y };
            at += usize::from(need);
        };
        for k in (0..LANES).step_by(8) {
            lane(k);
            lane(k + 1);
            lane(k + 2);
            lane(k + 3);
            lane(k + 4);
            lane(k + 5);
            lane(k + 6);
            lane(k + 7);
        }
        p += 2 * at;
        g += 1;
    }
    *state = st;
    *pos = p;
    g
}

/// A decode table for `Decoder::decode_block_values`: per probability slot its symbol's
/// frequency (bits 0..16), the slot's bias `slot - cum` (bits 16..32) and the 16-bit value
/// to store (bits 32..48), one 8-byte entry per slot so that a symbol costs one cache line.
/// With this layout the compiler vectorises `freq * (x >> 12) + bias` for four lanes at a
/// time on baseline SSE2 (measured: 1.16 ns a symbol against 1.38 for the packed u32 table,
/// 1.32 for `[u16; 4]` entries and 1.36 for a u32 table plus a u16 value table).
pub struct SlotTable(Box<[u64; PROB_SCALE as usize]>);

impl SlotTable {
    /// From a packed decode table (`FreqTable::decode_table`) and the value of each symbol
    /// index.
    pub fn new(table: &[u32; PROB_SCALE as usize], values: &[u16; 256]) -> SlotTable {
        let mut t = Box::new([0u64; PROB_SCALE as usize]);
        for (o, &e) in t.iter_mut().zip(table.iter()) {
            *o = u64::from(e >> 20)
                | (u64::from((e >> 8) & 0xfff) << 16)
                | (u64::from(values[(e & 0xff) as usize]) << 32);
        }
        SlotTable(t)
    }
}

/// Whole groups decoded through a `SlotTable`: the AVX2 kernel where the CPU has it, then
/// `portable_groups` (kept out of line so that its code does not depend on the caller's).
#[inline(never)]
fn value_groups(
    state: &mut [u32; LANES],
    words: &[u8],
    pos: &mut usize,
    t: &[u64; PROB_SCALE as usize],
    out: &mut [u16],
) -> usize {
    // Groups the AVX2 kernel did (none off x86-64).
    #[cfg_attr(not(target_arch = "x86_64"), expect(unused_mut))]
    let mut g = 0;
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: the CPU supports the kernel's features.
        g = unsafe { super::simd::rans_value_groups_avx2(state, words, pos, t, out) };
    }
    g + portable_groups(
        state,
        words,
        pos,
        &mut out[g * LANES..],
        |slot| slot_freq_bias(t[slot]),
        |slot| (t[slot] >> 32) as u16,
    )
}

/// A `SlotTable` entry's frequency and bias.
#[inline(always)]
fn slot_freq_bias(e: u64) -> (u32, u32) {
    (u32::from(e as u16), u32::from((e >> 16) as u16))
}

/// The AVX-512 decoder where the CPU has it, else the AVX2 one (checked once, at run time).
fn simd_groups(
    state: &mut [u32; LANES],
    words: &[u8],
    pos: &mut usize,
    table: &[u32; PROB_SCALE as usize],
    out: &mut [u8],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::has_avx512() {
            // SAFETY: the CPU supports the features the kernel is compiled for.
            return unsafe { super::simd::rans_groups(state, words, pos, table, out) };
        }
        if super::simd::has_avx2() {
            // SAFETY: as above.
            return unsafe { super::simd::rans_groups_avx2(state, words, pos, table, out) };
        }
    }
    let _ = (state, words, pos, table, out);
    0
}

/// Decodes `out.len()` symbol indices from a whole stream.
pub fn decode(stream: &[u8], table: &FreqTable, out: &mut [u8]) -> Result<(), RansError> {
    let t = table.decode_table();
    let mut d = Decoder::new(stream)?;
    d.decode_block(&t, out)?;
    d.finish()
}

/// The obvious one-symbol-at-a-time decoder: the oracle the fast paths are tested against.
#[cfg(test)]
fn decode_reference(stream: &[u8], table: &FreqTable, out: &mut [u8]) -> Result<(), RansError> {
    let t = table.decode_table();
    let (mut state, words) = split_header(stream)?;
    let mut pos = 0;
    for (i, o) in out.iter_mut().enumerate() {
        let x = state[i % LANES];
        let e = t[(x & (PROB_SCALE - 1)) as usize];
        *o = e as u8;
        let mut y = (e >> 20) * (x >> PROB_BITS) + ((e >> 8) & 0xfff);
        if y < STATE_LOW {
            let w = words.get(pos..pos + 2).ok_or(RansError::Exhausted)?;
            y = (y << 16) | u32::from(u16::from_le_bytes([w[0], w[1]]));
            pos += 2;
        }
        state[i % LANES] = y;
    }
    if pos != words.len() || state.iter().any(|&s| s != STATE_LOW) {
        return Err(RansError::BadFinalState);
    }
    Ok(())
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
    let sum: i64 = freqs.iter().map(|&f| i64::from(f)).sum();
    let target = i64::from(PROB_SCALE);
    // Each move changes the cost by c * log2(f / f'); take the cheapest one each time (the
    // lowest symbol among equals). Only the moved symbol's cost changes, so the candidates
    // wait in a heap instead of being rescanned per move.
    let grow = sum < target;
    let cost = |c: u64, f: u32| -> Option<f64> {
        if grow {
            (f + 1 < PROB_SCALE).then(|| -(c as f64) * ((f64::from(f) + 1.0) / f64::from(f)).log2())
        } else {
            (f > 1).then(|| c as f64 * (f64::from(f) / (f64::from(f) - 1.0)).log2())
        }
    };
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(OrdF64, usize)>> = counts
        .iter()
        .zip(&freqs)
        .enumerate()
        .filter_map(|(s, (&c, &f))| cost(c, f).map(|d| std::cmp::Reverse((OrdF64(d), s))))
        .collect();
    for _ in 0..(target - sum).unsigned_abs() {
        let std::cmp::Reverse((_, s)) = heap.pop().expect("a symbol can always move");
        if grow {
            freqs[s] += 1;
        } else {
            freqs[s] -= 1;
        }
        if let Some(d) = cost(counts[s], freqs[s]) {
            heap.push(std::cmp::Reverse((OrdF64(d), s)));
        }
    }
    FreqTable {
        freqs: freqs.into_iter().map(|f| f as u16).collect(),
    }
}

/// An f64 ordered by `total_cmp`, for the heap in `normalize`.
struct OrdF64(f64);

impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for OrdF64 {}

impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Symbol indices as words through the identity table.
    fn as_symbols(syms: &[u8]) -> Vec<u16> {
        syms.iter().map(|&s| u16::from(s)).collect()
    }

    const IDENTITY: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = i as u8;
            i += 1;
        }
        t
    };

    fn indices(words: &[u16]) -> Symbols<'_> {
        Symbols {
            words,
            key: WordKey::WHOLE,
            index: &IDENTITY,
        }
    }

    fn counts_of(syms: &[u8], alphabet: usize) -> Vec<u64> {
        let mut c = vec![0u64; alphabet];
        for &s in syms {
            c[s as usize] += 1;
        }
        c
    }

    fn roundtrip(syms: &[u8], alphabet: usize) -> usize {
        let counts: Vec<u64> = counts_of(syms, alphabet)
            .into_iter()
            .map(|c| c + 1)
            .collect();
        let table = normalize(&counts);
        let mut coded = Vec::new();
        encode(indices(&as_symbols(syms)), &table, &mut coded);
        let mut back = vec![0u8; syms.len()];
        decode(&coded, &table, &mut back).unwrap();
        assert_eq!(back, syms);
        let cost = table.cost_bits(&counts_of(syms, alphabet));
        let bounds = coded_len(cost, syms.len() as u64);
        assert!(
            bounds.contains(&coded.len()),
            "{} outside {bounds:?}",
            coded.len()
        );
        #[cfg(target_arch = "x86_64")]
        {
            // The SIMD encoder must produce the very same stream as the scalar one.
            let _guard = crate::codec::SIMD_SWITCH
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            crate::codec::simd::force_portable(true);
            let mut scalar = Vec::new();
            encode(indices(&as_symbols(syms)), &table, &mut scalar);
            crate::codec::simd::force_portable(false);
            assert_eq!(scalar, coded, "SIMD and scalar encoders disagree");
        }
        let mut oracle = vec![0u8; syms.len()];
        decode_reference(&coded, &table, &mut oracle).unwrap();
        assert_eq!(oracle, syms);
        // Odd block sizes exercise the hand-over between fast paths and the checked tail, in
        // every SIMD mode.
        let t = table.decode_table();
        for blocks in crate::codec::each_simd_mode(|| {
            let mut d = Decoder::new(&coded).unwrap();
            let mut blocks = vec![0u8; syms.len()];
            let mut at = 0;
            while at < syms.len() {
                let len = (LANES * 3).min(syms.len() - at);
                d.decode_block(&t, &mut blocks[at..at + len]).unwrap();
                at += len;
            }
            d.finish().unwrap();
            blocks
        }) {
            assert_eq!(blocks, syms);
        }
        // The value decoder, in odd blocks too.
        let values: [u16; 256] = std::array::from_fn(|i| (i as u16).wrapping_mul(641) ^ 0x5a5a);
        for block in [syms.len().max(1), LANES * 3, LANES * 5 + 7] {
            let mut words = vec![0u16; syms.len()];
            decode_values(&coded, &table, &values, block, &mut words).unwrap();
            assert!(words
                .iter()
                .zip(syms)
                .all(|(&w, &s)| w == values[s as usize]));
        }
        coded.len()
    }

    /// `Decoder::decode_block_values` over a whole stream in blocks of `block` symbols, in
    /// every SIMD mode (which must agree, in the verdict and in what they decoded).
    fn decode_values(
        stream: &[u8],
        table: &FreqTable,
        values: &[u16; 256],
        block: usize,
        out: &mut [u16],
    ) -> Result<(), RansError> {
        let slots = SlotTable::new(&table.decode_table(), values);
        let runs = crate::codec::each_simd_mode(|| {
            let mut got = vec![0u16; out.len()];
            let r = (|| {
                let mut d = Decoder::new(stream)?;
                for chunk in got.chunks_mut(block) {
                    d.decode_block_values(&slots, chunk)?;
                }
                d.finish()
            })();
            (r, got)
        });
        let (first, rest) = runs.split_first().expect("one mode at least");
        for other in rest {
            assert_eq!(other.0, first.0, "SIMD modes disagree");
            if other.0.is_ok() {
                assert!(other.1 == first.1, "SIMD modes decode differently");
            }
        }
        out.copy_from_slice(&first.1);
        first.0.clone()
    }

    #[test]
    fn reciprocal_division_is_exact() {
        for f in 1..=PROB_SCALE {
            let es = EncSym::new(f, 0);
            for x in [
                0u32,
                1,
                f - 1,
                f,
                f + 1,
                u32::MAX,
                u32::MAX - 1,
                1 << 31,
                65535,
                65536,
            ] {
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
        assert_eq!(
            t.freqs.iter().map(|&f| u32::from(f)).sum::<u32>(),
            PROB_SCALE
        );
        assert!(t.freqs.iter().all(|&f| f >= 1));
        let many: Vec<u64> = (0..256).map(|i| 1 + (i % 5)).collect();
        let t = normalize(&many);
        assert_eq!(
            t.freqs.iter().map(|&f| u32::from(f)).sum::<u32>(),
            PROB_SCALE
        );
    }

    /// Words need an index table of 2^k entries; anything else is refused before the SIMD
    /// encoder could read outside it.
    #[test]
    #[should_panic(expected = "index table of 2^k entries")]
    fn word_symbols_need_a_power_of_two_table() {
        let table = normalize(&[3, 3]);
        let words = [0u16; 64];
        let mut out = Vec::new();
        encode(
            Symbols {
                words: &words,
                key: WordKey::WHOLE,
                index: &[],
            },
            &table,
            &mut out,
        );
    }

    #[test]
    fn corrupt_streams_error_not_panic() {
        let syms: Vec<u8> = (0..10_000u32).map(|i| (i % 5) as u8).collect();
        let table = normalize(&[3, 3, 3, 3, 3]);
        let mut coded = Vec::new();
        encode(indices(&as_symbols(&syms)), &table, &mut coded);
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

        /// Words read through a key encode exactly as the indices they map to, on both
        /// encoders.
        #[test]
        fn word_symbols_encode_as_their_indices(
            words in proptest::collection::vec(any::<u16>(), 0..3000),
            shift in 4u32..16,
            lsb in any::<bool>(),
            whole in any::<bool>(),
            add in any::<u16>(),
        ) {
            let bits = 15 - shift + u32::from(lsb);
            // Whole words that are below 2^bits once `add` is added, or a field of any word.
            let (key, words) = if whole {
                let below = |w: u16| (w & ((1u32 << bits) - 1) as u16).wrapping_sub(add);
                (WordKey::whole(add), words.iter().map(|&w| below(w)).collect())
            } else {
                (WordKey { mask: 0x7fff, shift, lsb, add: 0 }, words)
            };
            // Fold the values into an alphabet of at most 256 symbols.
            let index: Vec<u8> = (0..1u32 << bits).map(|v| (v.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
            let syms: Vec<u8> = words.iter().map(|&w| index[usize::from(key.value(w))]).collect();
            let counts: Vec<u64> = counts_of(&syms, 256).into_iter().map(|c| c + 1).collect();
            let table = normalize(&counts);
            let mut want = Vec::new();
            encode(indices(&as_symbols(&syms)), &table, &mut want);
            #[cfg(target_arch = "x86_64")]
            let _guard = crate::codec::SIMD_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
            for portable in [false, true] {
                #[cfg(target_arch = "x86_64")]
                crate::codec::simd::force_portable(portable);
                let mut got = Vec::new();
                encode(Symbols { words: &words, key, index: &index }, &table, &mut got);
                prop_assert!(got == want, "portable={}", portable);
            }
            #[cfg(target_arch = "x86_64")]
            crate::codec::simd::force_portable(false);
        }

        /// The bounds hold for any table, however badly it fits the symbols: one symbol
        /// far likelier than the rest (the states stay small, where rounding costs most),
        /// or a table counted from other data.
        #[test]
        fn coded_len_bounds_the_stream(
            seed in any::<u64>(),
            n in 0usize..40_000,
            alphabet in 2usize..256,
            skew in 0u32..12,
            fitted in any::<bool>(),
        ) {
            let mut x = seed | 1;
            let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
            // Symbol 0 with probability 1 - 2^-skew, the rest uniform.
            let syms: Vec<u8> = (0..n)
                .map(|_| {
                    let r = next();
                    if (r >> 40) & ((1 << skew) - 1) != 0 { 0 } else { (r % alphabet as u64) as u8 }
                })
                .collect();
            let counts = counts_of(&syms, alphabet);
            let table_counts: Vec<u64> = if fitted {
                counts.iter().map(|&c| c + 1).collect()
            } else {
                (0..alphabet).map(|_| next() % 1000 + 1).collect()
            };
            let table = normalize(&table_counts);
            let mut coded = Vec::new();
            encode(indices(&as_symbols(&syms)), &table, &mut coded);
            let bounds = coded_len(table.cost_bits(&counts), n as u64);
            prop_assert!(bounds.contains(&coded.len()), "{} outside {:?}", coded.len(), bounds);
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

        /// On any input the value decoder agrees with the reference: same verdict, and the
        /// same symbols where both succeed.
        #[test]
        fn value_decoder_matches_reference_on_garbage(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            n in 0usize..1500,
            block in 1usize..300,
        ) {
            let table = normalize(&[5, 1, 9, 2, 40, 3]);
            let values: [u16; 256] = std::array::from_fn(|i| 1000 + i as u16);
            let mut oracle = vec![0u8; n];
            let want = decode_reference(&bytes, &table, &mut oracle);
            let mut words = vec![0u16; n];
            let got = decode_values(&bytes, &table, &values, block * LANES, &mut words);
            prop_assert_eq!(&got, &want);
            if got.is_ok() {
                prop_assert!(words.iter().zip(&oracle).all(|(&w, &s)| w == values[s as usize]));
            }
        }

        /// Corrupted real streams: the same verdict as the reference, never a panic.
        #[test]
        fn value_decoder_matches_reference_on_corrupt(
            syms in proptest::collection::vec(0u8..6, 1..4000),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let table = normalize(&[5, 1, 9, 2, 40, 3]);
            let mut coded = Vec::new();
            encode(indices(&as_symbols(&syms)), &table, &mut coded);
            for (at, x) in flips {
                let i = at % coded.len();
                coded[i] ^= x;
            }
            coded.truncate(coded.len() - cut % 3);
            let values: [u16; 256] = std::array::from_fn(|i| 7 * i as u16);
            let mut oracle = vec![0u8; syms.len()];
            let want = decode_reference(&coded, &table, &mut oracle);
            let mut words = vec![0u16; syms.len()];
            let got = decode_values(&coded, &table, &values, 4096, &mut words);
            prop_assert_eq!(&got, &want);
            if got.is_ok() {
                prop_assert!(words.iter().zip(&oracle).all(|(&w, &s)| w == values[s as usize]));
            }
        }
    }
}
