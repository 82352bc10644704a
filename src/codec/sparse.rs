//! Sparse 16-bit data — differences against a base where few weights changed — coded as the
//! changed values and the gaps between them, so coding costs time per change rather than per
//! element. A gap's class (its exact value below 4, else its top three bits and magnitude) is
//! a symbol; the bits below them are stored raw. On data with a few percent of changes this
//! lands within a few percent of the zeroth-order entropy of the whole stream (the run
//! lengths are geometric; the rest is the streams' headers), while the encoder touches only
//! the changes after one scan for them.
//!
//! Body (after the codec tag); a gap is the number of zeros before a nonzero element:
//! ```text
//! varint k                     nonzero elements
//! u8 mode
//!   0 (joint, 1..=3 distinct values): u8 v, v × u16 values, symbol stream (bits 8) of
//!                              class × v + index of the value, k symbols
//!   1: symbol stream (bits 7) of the k classes, symbol stream (bits 16) of the k values
//!   2: symbol stream (bits 7) of the k classes, byte stream of the values' low bytes,
//!      byte stream of their high bytes
//! varint bytes, then bytes     the gaps' low bits, LSB first, as many as each class says
//! ```

use super::bits::{put_varint, Reader};
use super::stream::{self, Histogram, SymPlan};
use super::{tag, CodecError, Effort};

/// Classes 0..4 are gaps 0..4; class `4 + 4(e − 2) + m` holds the gaps with leading bit `e`
/// and the two bits below it `m`, the `e − 2` bits below those stored raw. Written without a
/// branch: with `w = max(e − 2, 0)` raw bits, the class is `4w + (gap >> w)` for every gap
/// (below 8 it is the gap itself).
fn class_of(gap: u32) -> (u16, u32, u32) {
    let e = 31 - (gap | 1).leading_zeros();
    let w = e.saturating_sub(2);
    ((4 * w + (gap >> w)) as u16, gap & ((1 << w) - 1), w)
}

/// Raw bits below class `c`'s leading three.
fn extra_bits(c: u16) -> u32 {
    if c < 4 {
        0
    } else {
        u32::from(c - 4) / 4
    }
}

fn gap_of(c: u16, low: u32) -> u32 {
    let w = extra_bits(c);
    ((u32::from(c) - 4 * w) << w) | low
}

/// The nonzero values of a chunk and where they are, gathered for planning.
pub struct Changes {
    n: usize,
    classes: Vec<u16>,
    bits: Vec<u8>,
    values: Vec<u16>,
}

impl Changes {
    /// The changes of `words`, or `None` when more than `limit` of them are nonzero (dense
    /// data: the whole-value stream wins there, and gathering would cost more than it saves).
    pub fn of(words: &[u16], limit: usize) -> Option<Changes> {
        // Positions are 32-bit (a chunk is far smaller).
        if words.len() > u32::MAX as usize {
            return None;
        }
        let mut at: Vec<u32> = Vec::with_capacity(limit + 64);
        let mut values: Vec<u16> = Vec::with_capacity(limit + 64);
        // Elements the x86-64 kernel did (none elsewhere).
        #[cfg_attr(not(target_arch = "x86_64"), expect(unused_mut))]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx512() && super::simd::cpu_has_avx512vbmi2() && words.len() < 1 << 31
        {
            done = words.len() / 32 * 32;
            // SAFETY: features checked; room for limit + 64 reserved above; whole runs only.
            if !unsafe { super::simd::nonzero_runs(&words[..done], &mut at, &mut values, limit) } {
                return None;
            }
        }
        // A mask of the nonzero words of each run of 64, then one step per set bit: a zero
        // run costs a test, a change a few instructions.
        let mut runs = words[done..].chunks_exact(64);
        for (r, run) in (&mut runs).enumerate() {
            let mut mask = run
                .iter()
                .enumerate()
                .fold(0u64, |m, (j, &w)| m | u64::from(w != 0) << j);
            while mask != 0 {
                let j = mask.trailing_zeros() as usize;
                at.push((done + 64 * r + j) as u32);
                values.push(run[j]);
                mask &= mask - 1;
            }
            if values.len() > limit {
                return None;
            }
        }
        let base = words.len() - runs.remainder().len();
        for (j, &v) in runs.remainder().iter().enumerate() {
            if v != 0 {
                at.push((base + j) as u32);
                values.push(v);
            }
        }
        if values.len() > limit {
            return None;
        }
        let mut classes = vec![0u16; at.len()];
        // At most 30 raw bits a change, plus the writer's 8-byte stores past the end.
        let mut bits = vec![0u8; at.len() * 4 + 8];
        let mut writer = BitWriter::default();
        let mut next = 0u32;
        for (class, &i) in classes.iter_mut().zip(&at) {
            let (c, low, w) = class_of(i - next);
            *class = c;
            writer.put(low, w, &mut bits);
            next = i + 1;
        }
        writer.finish(&mut bits);
        Some(Changes {
            n: words.len(),
            classes,
            bits,
            values,
        })
    }

    /// Histogram of the whole stream (zeros included), as `Histogram::of_words` would give.
    /// Four counters per value, used in turn, so that a few hot values (±1 ulp) do not
    /// queue behind one counter; a value is noted at the first touch of any of its counters,
    /// so the table is read (and cleared) only where it was written.
    pub fn dense_histogram(&self) -> Histogram {
        thread_local! {
            static COUNTS: std::cell::RefCell<Vec<[u32; 4]>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        COUNTS.with_borrow_mut(|t| {
            t.resize(1 << 16, [0; 4]);
            let t: &mut [[u32; 4]; 1 << 16] = t.as_mut_slice().try_into().expect("sized");
            let mut seen = Vec::new();
            let mut quads = self.values.chunks_exact(4);
            let mut count = |k: usize, v: u16| {
                let c = &mut t[usize::from(v)][k];
                if *c == 0 {
                    seen.push(v);
                }
                *c += 1;
            };
            for q in &mut quads {
                for (k, &v) in q.iter().enumerate() {
                    count(k, v);
                }
            }
            for &v in quads.remainder() {
                count(0, v);
            }
            seen.sort_unstable();
            seen.dedup();
            let zeros = (self.n - self.values.len()) as u64;
            let mut h = Histogram {
                values: Vec::with_capacity(seen.len() + 1),
                counts: Vec::with_capacity(seen.len() + 1),
            };
            if zeros > 0 {
                h.values.push(0);
                h.counts.push(zeros);
            }
            // The table is left zeroed for the next chunk.
            for v in seen {
                let c = std::mem::take(&mut t[usize::from(v)]);
                h.values.push(v);
                h.counts.push(c.iter().map(|&x| u64::from(x)).sum());
            }
            h
        })
    }

    /// Plans the body from the stream's histogram (`dense_histogram`); its size is exact to
    /// within the rANS payloads' rounding.
    pub fn plan(&self, h: &Histogram, effort: Effort) -> Option<SparsePlan> {
        let nonzero: Vec<(u16, u64)> = h
            .values
            .iter()
            .zip(&h.counts)
            .filter(|p| *p.0 != 0)
            .map(|(&v, &c)| (v, c))
            .collect();
        let top = self.classes.iter().max().map_or(0, |&c| usize::from(c));
        let mut head = Vec::new();
        put_varint(&mut head, self.values.len() as u64);
        put_varint(&mut head, self.bits.len() as u64);
        let fixed = 2 + head.len() + self.bits.len();
        let values: Vec<u16> = nonzero.iter().map(|p| p.0).collect();
        // A gap's class and its value as one symbol: one stream (one state header, one
        // table) instead of two, which is most of the cost of a chunk with few changes.
        if (1..=JOINT_VALUES).contains(&values.len()) && (top + 1) * values.len() <= 256 {
            let joint = self.joint(&values);
            let plan = stream::plan_symbols(&Histogram::of_small(&joint, 8))?;
            return Some(SparsePlan {
                bytes: fixed + 1 + 2 * values.len() + plan.bytes,
                streams: Streams::Joint(values, joint, plan),
            });
        }
        let classes = stream::plan_symbols(&Histogram::of_small(&self.classes, 7))?;
        let split = Histogram {
            values,
            counts: nonzero.iter().map(|p| p.1).collect(),
        };
        let (streams, bytes) = match stream::plan_symbols(&split) {
            Some(v) => {
                let b = v.bytes;
                (Streams::Separate(classes, v), b)
            }
            None => {
                let halves = self.byte_halves(effort);
                let b = halves.len();
                (Streams::Halves(classes, halves), b)
            }
        };
        let classes_bytes = match &streams {
            Streams::Separate(c, _) | Streams::Halves(c, _) => c.bytes,
            Streams::Joint(..) => 0,
        };
        Some(SparsePlan {
            bytes: fixed + classes_bytes + bytes,
            streams,
        })
    }

    fn joint(&self, values: &[u16]) -> Vec<u16> {
        let v = values.len() as u16;
        let (a, b) = (values[0], values.get(1).copied());
        self.classes
            .iter()
            .zip(&self.values)
            .map(|(&c, &x)| c * v + u16::from(x != a) + u16::from(x != a && Some(x) != b))
            .collect()
    }

    fn byte_halves(&self, effort: Effort) -> Vec<u8> {
        let mut out = Vec::new();
        for shift in [0, 8] {
            let half: Vec<u8> = self.values.iter().map(|&v| (v >> shift) as u8).collect();
            stream::write_bytes(&half, effort, &mut out);
        }
        out
    }

    /// Writes the SPARSE16 blob (with its tag).
    pub fn write(&self, plan: &SparsePlan) -> Vec<u8> {
        let mut out = Vec::with_capacity(plan.bytes + 16);
        out.push(tag::SPARSE16);
        put_varint(&mut out, self.values.len() as u64);
        match &plan.streams {
            Streams::Joint(values, joint, p) => {
                out.push(MODE_JOINT);
                out.push(values.len() as u8);
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                stream::write_symbols(p, joint, &mut out);
            }
            Streams::Separate(classes, values) => {
                out.push(MODE_SEPARATE);
                stream::write_symbols(classes, &self.classes, &mut out);
                stream::write_symbols(values, &self.values, &mut out);
            }
            Streams::Halves(classes, halves) => {
                out.push(MODE_HALVES);
                stream::write_symbols(classes, &self.classes, &mut out);
                out.extend_from_slice(halves);
            }
        }
        put_varint(&mut out, self.bits.len() as u64);
        out.extend_from_slice(&self.bits);
        out
    }
}

/// At most this many distinct changed values share the gap classes' stream.
const JOINT_VALUES: usize = 3;
const MODE_JOINT: u8 = 0;
const MODE_SEPARATE: u8 = 1;
const MODE_HALVES: u8 = 2;

/// A planned SPARSE16 blob: its size and the plans of its streams.
pub struct SparsePlan {
    pub bytes: usize,
    streams: Streams,
}

enum Streams {
    /// The distinct values, the joint symbols (class × values + value index) and their plan.
    Joint(Vec<u16>, Vec<u16>, SymPlan),
    Separate(SymPlan, SymPlan),
    /// Over 256 distinct values: the classes' plan and the coded low and high byte streams.
    Halves(SymPlan, Vec<u8>),
}

/// Decodes a SPARSE16 body (tag already read) into `out` (little-endian 16-bit words).
pub fn decode(r: &mut Reader<'_>, out: &mut [u8]) -> Result<(), CodecError> {
    let n = out.len() / 2;
    let k = usize::try_from(r.varint()?).map_err(|_| CodecError::Truncated)?;
    if k > n {
        return Err(CodecError::Corrupt("more changes than elements"));
    }
    let mut classes = vec![0u16; k];
    let mut values = vec![0u16; k];
    match r.u8()? {
        MODE_JOINT => {
            let v = usize::from(r.u8()?);
            if !(1..=JOINT_VALUES).contains(&v) {
                return Err(CodecError::Corrupt("sparse value count out of range"));
            }
            let mut table = [0u16; JOINT_VALUES];
            for t in table.iter_mut().take(v) {
                *t = r.u16()?;
            }
            let s = stream::read_symbols(r, 8)?;
            stream::decode_symbols(&s, k, |i, j| {
                classes[i] = j / v as u16;
                values[i] = table[usize::from(j) % v];
            })?;
        }
        MODE_SEPARATE => {
            let s = stream::read_symbols(r, 7)?;
            stream::decode_symbols(&s, k, |i, c| classes[i] = c)?;
            let s = stream::read_symbols(r, 16)?;
            stream::decode_symbols(&s, k, |i, x| values[i] = x)?;
        }
        MODE_HALVES => {
            let s = stream::read_symbols(r, 7)?;
            stream::decode_symbols(&s, k, |i, c| classes[i] = c)?;
            let mut half = vec![0u8; k];
            for shift in [0, 8] {
                stream::read_bytes(r, &mut half)?;
                for (x, &b) in values.iter_mut().zip(&half) {
                    *x |= u16::from(b) << shift;
                }
            }
        }
        _ => return Err(CodecError::Corrupt("unknown sparse mode")),
    }
    let len = usize::try_from(r.varint()?).map_err(|_| CodecError::Truncated)?;
    let mut bits = BitReader::new(r.bytes(len)?);
    out.fill(0);
    let mut next = 0usize;
    for (&c, &v) in classes.iter().zip(&values) {
        if c >= 128 {
            return Err(CodecError::Corrupt("sparse gap class out of range"));
        }
        let gap = gap_of(c, bits.get(extra_bits(c))?) as usize;
        let i = next
            .checked_add(gap)
            .filter(|&i| i < n)
            .ok_or(CodecError::Corrupt("sparse position past the chunk"))?;
        out[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        next = i + 1;
    }
    if !bits.is_spent() {
        return Err(CodecError::Corrupt("trailing sparse gap bits"));
    }
    Ok(())
}

/// Writes values of up to 30 bits, LSB first, into a buffer sized beforehand (8 bytes of room
/// past the last value): every value stores the whole accumulator and moves on by the bytes
/// it completed, so there is no branch per value.
#[derive(Default)]
struct BitWriter {
    acc: u64,
    held: u32,
    at: usize,
}

impl BitWriter {
    fn put(&mut self, v: u32, width: u32, out: &mut [u8]) {
        self.acc |= u64::from(v) << self.held;
        self.held += width;
        out[self.at..self.at + 8].copy_from_slice(&self.acc.to_le_bytes());
        let bytes = self.held / 8;
        self.at += bytes as usize;
        // At most 7 + 30 bits are held, so the shift is below 64.
        self.acc >>= 8 * bytes;
        self.held -= 8 * bytes;
    }

    /// Cuts the buffer after the last byte that holds bits.
    fn finish(self, out: &mut Vec<u8>) {
        out.truncate(self.at + self.held.div_ceil(8) as usize);
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    acc: u64,
    held: u32,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> BitReader<'a> {
        BitReader {
            bytes,
            acc: 0,
            held: 0,
        }
    }

    fn get(&mut self, width: u32) -> Result<u32, CodecError> {
        while self.held < width {
            let (&b, rest) = self.bytes.split_first().ok_or(CodecError::Truncated)?;
            self.acc |= u64::from(b) << self.held;
            self.held += 8;
            self.bytes = rest;
        }
        let v = (self.acc & ((1u64 << width) - 1)) as u32;
        self.acc >>= width;
        self.held -= width;
        Ok(v)
    }

    /// Everything read but the zero padding of the last byte.
    fn is_spent(&self) -> bool {
        self.bytes.is_empty() && self.held < 8 && self.acc == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classes_cover_every_gap() {
        for g in (0..70_000u32).chain([u32::MAX >> 1, (1 << 20) - 1, 1 << 20]) {
            let (c, low, w) = class_of(g);
            assert!(c < 128, "{g}");
            assert_eq!(w, extra_bits(c), "{g}");
            assert_eq!(gap_of(c, low), g, "{g}");
        }
    }

    fn roundtrip(words: &[u16]) -> usize {
        let c = Changes::of(words, words.len()).expect("no limit");
        let plan = c
            .plan(&c.dense_histogram(), Effort::Balanced)
            .expect("plan");
        let blob = c.write(&plan);
        assert!(
            blob.len() <= plan.bytes + 4,
            "{} vs {}",
            blob.len(),
            plan.bytes
        );
        let mut out = vec![0xaau8; words.len() * 2];
        let mut r = Reader::new(&blob[1..]);
        decode(&mut r, &mut out).unwrap();
        assert!(r.is_empty());
        let back: Vec<u16> = out
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(back, words);
        blob.len()
    }

    #[test]
    fn one_percent_of_ulps_costs_its_entropy() {
        let mut x = 5u64;
        let words: Vec<u16> = (0..500_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match x >> 57 {
                    0 => 1,
                    1 => 0xffff,
                    _ => 0,
                }
            })
            .collect();
        let bytes = roundtrip(&words);
        let entropy = Changes::of(&words, words.len())
            .unwrap()
            .dense_histogram()
            .entropy_bits()
            / 8.0;
        assert!((bytes as f64) < entropy * 1.03, "{bytes} vs {entropy}");
    }

    #[test]
    fn the_limit_gives_up_on_dense_data() {
        let words: Vec<u16> = (0..1000).map(|i| (i % 3) as u16).collect();
        assert!(Changes::of(&words, 100).is_none());
        assert!(Changes::of(&words, 700).is_some());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_and_scalar_scans_agree() {
        let mut x = 3u64;
        for n in [0usize, 5, 31, 32, 33, 64, 100, 1000, 4099] {
            for every in [1u64, 3, 40] {
                let words: Vec<u16> = (0..n)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        if (x >> 40).is_multiple_of(every) {
                            (x >> 20) as u16 | 1
                        } else {
                            0
                        }
                    })
                    .collect();
                let scan = |limit: usize| {
                    Changes::of(&words, limit).map(|c| (c.classes, c.bits, c.values))
                };
                let _guard = crate::codec::SIMD_SWITCH
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let fast = [scan(n), scan(n / 5)];
                crate::codec::simd::force_portable(true);
                let slow = [scan(n), scan(n / 5)];
                crate::codec::simd::force_portable(false);
                assert_eq!(fast, slow, "{n} words, one in {every}");
            }
        }
    }

    proptest! {
        #[test]
        fn sparse_roundtrip(words in proptest::collection::vec(prop_oneof![8 => Just(0u16), 1 => any::<u16>()], 0..3000)) {
            roundtrip(&words);
        }

        /// The histogram made from the changes is the one of the whole stream, twice in a row
        /// (the per-thread table must come back clean).
        #[test]
        fn histogram_from_changes_is_the_whole_streams(words in proptest::collection::vec(prop_oneof![8 => Just(0u16), 2 => Just(1u16), 2 => Just(0xffff), 1 => any::<u16>()], 0..3000)) {
            let c = Changes::of(&words, words.len()).expect("no limit");
            for _ in 0..2 {
                let got = c.dense_histogram();
                let want = Histogram::of_words(&words);
                prop_assert_eq!(&got.values, &want.values);
                prop_assert_eq!(&got.counts, &want.counts);
            }
        }

        #[test]
        fn many_distinct_values_roundtrip(words in proptest::collection::vec(any::<u16>(), 300..2000)) {
            roundtrip(&words);
        }

        #[test]
        fn garbage_never_panics(blob in proptest::collection::vec(any::<u8>(), 0..400), n in 0usize..300) {
            let mut out = vec![0u8; 2 * n];
            let _ = decode(&mut Reader::new(&blob), &mut out);
        }
    }
}
