//! Self-describing sub-streams inside a chunk: a field of the weights (exponent symbols, a byte
//! plane) stored as a constant, raw bytes, rANS or zstd — whichever measures smallest.
//!
//! Symbol streams carry values of up to 16 bits with at most 256 distinct values per stream;
//! the header lists the distinct values and their normalised frequencies.

use super::bits::{put_varint, Reader};
use super::rans::{self, FreqTable, LANES, PROB_SCALE};
use super::{CodecError, Effort};

const KIND_CONST: u8 = 0;
const KIND_RANS: u8 = 1;
const KIND_RAW: u8 = 2;
const KIND_ZSTD: u8 = 3;

/// The distinct values of a stream with their counts, ascending by value.
pub struct Histogram {
    pub values: Vec<u16>,
    pub counts: Vec<u64>,
}

impl Histogram {
    /// Counts values below `1 << bits` (bits <= 16).
    pub fn of(values: impl Iterator<Item = u16>, bits: u32) -> Histogram {
        if bits > 12 {
            let mut dense = vec![0u64; 1 << bits];
            for v in values {
                dense[v as usize] += 1;
            }
            return Histogram::from_dense(&dense);
        }
        // Small alphabets: four counters per value, so runs of one value do not serialise
        // on one counter.
        let mut quads = vec![[0u64; 4]; 1 << bits];
        for (i, v) in values.enumerate() {
            quads[v as usize][i & 3] += 1;
        }
        let dense: Vec<u64> = quads.iter().map(|q| q.iter().sum()).collect();
        Histogram::from_dense(&dense)
    }

    /// `of` for a slice of values below `2^bits`, `bits <= 8` (palette indices, block sizes):
    /// eight tables, one per position mod 8, so neighbours never wait on one counter.
    pub fn of_small(values: &[u16], bits: u32) -> Histogram {
        let all = values.iter().fold(0u16, |a, &v| a | v);
        if bits > 8 || u32::from(all) >> bits != 0 || values.len() >= u32::MAX as usize {
            return Histogram::of(values.iter().copied(), bits);
        }
        let mut t = [[0u32; 256]; 8];
        let mut groups = values.chunks_exact(8);
        for g in &mut groups {
            for (k, &v) in g.iter().enumerate() {
                t[k][usize::from(v as u8)] += 1;
            }
        }
        for &v in groups.remainder() {
            t[0][usize::from(v as u8)] += 1;
        }
        let dense: Vec<u64> = (0..1usize << bits)
            .map(|v| t.iter().map(|sub| u64::from(sub[v])).sum())
            .collect();
        Histogram::from_dense(&dense)
    }

    /// Counts 16-bit values (differences against a base). Each value has four counters, used
    /// in turn by position, so that runs of one value (zeros, ±1 ulp) do not queue behind one
    /// counter; the per-thread table is cleared as it is read.
    pub fn of_words(values: &[u16]) -> Histogram {
        if let Some(h) = Histogram::of_few_words(values) {
            return h;
        }
        thread_local! {
            static COUNTS: std::cell::RefCell<Vec<[u32; 4]>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        assert!(
            values.len() < u32::MAX as usize,
            "a chunk's worth of values"
        );
        COUNTS.with_borrow_mut(|t| {
            t.resize(1 << 16, [0; 4]);
            let t: &mut [[u32; 4]; 1 << 16] = t.as_mut_slice().try_into().expect("sized");
            let mut quads = values.chunks_exact(4);
            for q in &mut quads {
                for (k, &v) in q.iter().enumerate() {
                    t[usize::from(v)][k] += 1;
                }
            }
            for &v in quads.remainder() {
                t[usize::from(v)][0] += 1;
            }
            let mut h = Histogram {
                values: Vec::new(),
                counts: Vec::new(),
            };
            for (v, c) in t.iter_mut().enumerate() {
                // One 16-byte test per value; most are untouched.
                if *c != [0; 4] {
                    h.values.push(v as u16);
                    h.counts.push(c.iter().map(|&x| u64::from(x)).sum());
                    *c = [0; 4];
                }
            }
            h
        })
    }

    /// The byte planes of 16-bit values (as `of_words(values).byte_planes()`) and, where the
    /// values take at most 256 distinct values (the most a symbol stream carries), their
    /// histogram too; `None` says there are more. Dense differences of a real fine-tune have
    /// thousands of values, and only their planes are coded: counting them into two small
    /// tables in L1 spares the 1 MiB table of `of_words` and its scan.
    pub fn of_words_planes(values: &[u16]) -> (Option<Histogram>, [Histogram; 2]) {
        if !more_than_256_values(values) {
            let h = Histogram::of_words(values);
            let planes = h.byte_planes();
            return ((h.values.len() <= 256).then_some(h), planes);
        }
        // Four tables per plane, by position, so runs of one value (zeros) do not wait on
        // one counter.
        let mut t = [[[0u32; 256]; 4]; 2];
        let mut quads = values.chunks_exact(4);
        for q in &mut quads {
            for (k, &v) in q.iter().enumerate() {
                t[0][k][usize::from(v & 0xff)] += 1;
                t[1][k][usize::from(v >> 8)] += 1;
            }
        }
        for &v in quads.remainder() {
            t[0][0][usize::from(v & 0xff)] += 1;
            t[1][0][usize::from(v >> 8)] += 1;
        }
        let planes = t.map(|plane| {
            let dense: Vec<u64> = (0..256)
                .map(|b| plane.iter().map(|sub| u64::from(sub[b])).sum())
                .collect();
            Histogram::from_dense(&dense)
        });
        (None, planes)
    }

    /// `of_words` for values that take at most `FEW` distinct values (zeros and a few ulps
    /// of difference), else `None`. Counting runs by blocks, one compare-and-count per known
    /// value, which the compiler vectorises, instead of a table increment per value; a block
    /// not covered by the known values adds the ones it brings (absent from every block
    /// before it, which were covered) and counts them there.
    fn of_few_words(values: &[u16]) -> Option<Histogram> {
        const FEW: usize = 8;
        // Blocks stay in L1 across the passes, and their counts fit 16 bits.
        const BLOCK: usize = 4096;
        let mut seen: Vec<(u16, u64)> = Vec::with_capacity(FEW);
        for block in values.chunks(BLOCK) {
            let mut covered = 0;
            for (v, c) in seen.iter_mut() {
                let n = count_equal(block, *v);
                *c += n as u64;
                covered += n;
            }
            if covered == block.len() {
                continue;
            }
            let known = seen.len();
            for &x in block {
                if !seen.iter().any(|&(v, _)| v == x) {
                    if seen.len() == FEW {
                        return None;
                    }
                    seen.push((x, 0));
                }
            }
            for (v, c) in &mut seen[known..] {
                *c = count_equal(block, *v) as u64;
            }
        }
        seen.sort_unstable();
        Some(Histogram {
            values: seen.iter().map(|&(v, _)| v).collect(),
            counts: seen.iter().map(|&(_, c)| c).collect(),
        })
    }

    /// The histograms of the low and high bytes of 16-bit values counted here.
    pub fn byte_planes(&self) -> [Histogram; 2] {
        let mut dense = [[0u64; 256]; 2];
        for (&v, &c) in self.values.iter().zip(&self.counts) {
            dense[0][usize::from(v & 0xff)] += c;
            dense[1][usize::from(v >> 8)] += c;
        }
        dense.map(|d| Histogram::from_dense(&d))
    }

    pub fn from_dense(dense: &[u64]) -> Histogram {
        let mut values = Vec::new();
        let mut counts = Vec::new();
        for (v, &c) in dense.iter().enumerate() {
            if c > 0 {
                values.push(v as u16);
                counts.push(c);
            }
        }
        Histogram { values, counts }
    }

    /// Zeroth-order entropy in bits of the counted data.
    pub fn entropy_bits(&self) -> f64 {
        let n: u64 = self.counts.iter().sum();
        if n == 0 {
            return 0.0;
        }
        let n = n as f64;
        self.counts
            .iter()
            .map(|&c| {
                let c = c as f64;
                -c * (c / n).log2()
            })
            .sum()
    }
}

/// What a symbol stream will cost, measured before committing to it.
pub struct SymPlan {
    kind: SymKind,
    pub bytes: usize,
    /// Bounds on the length `write_symbols` gives, sure without writing (`rans::coded_len`).
    pub len: std::ops::RangeInclusive<usize>,
}

enum SymKind {
    Const(u16),
    Rans(FreqTable, Vec<u16>),
}

fn table_header_len(values: &[u16], table: &FreqTable) -> usize {
    let mut tmp = Vec::new();
    write_table(&mut tmp, values, table);
    tmp.len()
}

fn write_table(out: &mut Vec<u8>, values: &[u16], table: &FreqTable) {
    put_varint(out, values.len() as u64 - 1);
    let mut prev = 0u32;
    for (i, &v) in values.iter().enumerate() {
        let gap = if i == 0 {
            u32::from(v)
        } else {
            u32::from(v) - prev - 1
        };
        put_varint(out, u64::from(gap));
        prev = u32::from(v);
    }
    for &f in &table.freqs {
        put_varint(out, u64::from(f));
    }
}

/// Plans a symbol stream; `None` when it has more than 256 distinct values.
pub fn plan_symbols(h: &Histogram) -> Option<SymPlan> {
    match h.values.len() {
        0 => Some(SymPlan {
            kind: SymKind::Const(0),
            bytes: 3,
            len: 3..=3,
        }),
        1 => Some(SymPlan {
            kind: SymKind::Const(h.values[0]),
            bytes: 3,
            len: 3..=3,
        }),
        2..=256 => {
            let table = rans::normalize(&h.counts);
            let cost = table.cost_bits(&h.counts);
            let payload = (cost / 8.0).ceil() as usize + LANES * 4 + 2;
            let header = 1 + table_header_len(&h.values, &table);
            let coded = rans::coded_len(cost, h.counts.iter().sum());
            // The coded length is preceded by its varint (1 to 5 bytes).
            let len = header + 1 + *coded.start()..=header + 5 + *coded.end();
            Some(SymPlan {
                kind: SymKind::Rans(table, h.values.clone()),
                bytes: header + 5 + payload,
                len,
            })
        }
        _ => None,
    }
}

impl SymPlan {
    /// The symbol index of every value `v` of the alphabet, at `(v + add) mod 2^16` (all of
    /// them below `1 << bits`).
    pub fn index_map(&self, add: u16, bits: u32) -> Vec<u8> {
        let mut index = vec![0u8; 1 << bits];
        if let SymKind::Rans(_, alphabet) = &self.kind {
            for (i, &v) in alphabet.iter().enumerate() {
                index[usize::from(v.wrapping_add(add))] = i as u8;
            }
        }
        index
    }
}

/// How many of `values` equal `v`, counted in 16-bit counters per block of at most 65535
/// values so that the compiler vectorises the compares.
pub fn count_equal(values: &[u16], v: u16) -> usize {
    values
        .chunks(u16::MAX as usize)
        .map(|b| usize::from(b.iter().fold(0u16, |n, &x| n + u16::from(x == v))))
        .sum()
}

/// Whether `values` take more than 256 distinct values, found in their first 64 Ki (a `false`
/// may still have more further on; it only costs the caller the exact count). Random values
/// show it within a few hundred.
fn more_than_256_values(values: &[u16]) -> bool {
    let mut seen = [0u64; 1 << 10];
    let mut distinct = 0;
    for &v in &values[..values.len().min(1 << 16)] {
        let (word, bit) = (usize::from(v >> 6), 1u64 << (v & 63));
        if seen[word] & bit == 0 {
            seen[word] |= bit;
            distinct += 1;
            if distinct > 256 {
                return true;
            }
        }
    }
    false
}

/// The smallest run of `2^bits` consecutive values, from `-add` on and wrapping past 65535 to
/// 0, that holds the whole (sorted) alphabet: small differences (±1 ulp is 1 and 65535) then
/// index through a table of a few entries, which the encoder keeps in registers, instead of
/// one of 65536 gathered from L2.
fn window(alphabet: &[u16]) -> (u16, u32) {
    let (Some(&first), Some(&last)) = (alphabet.first(), alphabet.last()) else {
        return (0, 0);
    };
    // The run starts after the widest gap between neighbours (from the last value round to
    // the first included; on a tie that one, which keeps the values as they are).
    let mut start = first;
    let mut widest = u32::from(first) + (1 << 16) - u32::from(last);
    for pair in alphabet.windows(2) {
        let gap = u32::from(pair[1].wrapping_sub(pair[0]));
        if gap > widest {
            widest = gap;
            start = pair[1];
        }
    }
    let span = ((1u32 << 16) + 1).saturating_sub(widest).max(1);
    let (add, bits) = (
        start.wrapping_neg(),
        span.next_power_of_two().trailing_zeros(),
    );
    // Histograms list their values in order; anything else gets the table from 0 up.
    if alphabet
        .iter()
        .any(|&v| u32::from(v.wrapping_add(add)) >> bits != 0)
    {
        return (
            0,
            16 - alphabet.iter().max().map_or(0, |&v| v).leading_zeros(),
        );
    }
    (add, bits)
}

/// Writes a planned symbol stream. `values` yields the stream in order.
pub fn write_symbols(plan: &SymPlan, values: &[u16], out: &mut Vec<u8>) {
    let (add, bits) = match &plan.kind {
        SymKind::Rans(_, alphabet) => window(alphabet),
        SymKind::Const(_) => (0, 0),
    };
    write_word_symbols(
        plan,
        values,
        rans::WordKey::whole(add),
        &plan.index_map(add, bits),
        out,
    );
}

/// Writes a planned symbol stream of the values `key` selects from `words`; `index` is the
/// plan's `index_map` for the key's value width.
pub fn write_word_symbols(
    plan: &SymPlan,
    words: &[u16],
    key: rans::WordKey,
    index: &[u8],
    out: &mut Vec<u8>,
) {
    write_symbols_from(plan, rans::Symbols { words, key, index }, out);
}

fn write_symbols_from(plan: &SymPlan, syms: rans::Symbols<'_>, out: &mut Vec<u8>) {
    match &plan.kind {
        SymKind::Const(v) => {
            out.push(KIND_CONST);
            out.extend_from_slice(&v.to_le_bytes());
        }
        SymKind::Rans(table, alphabet) => {
            out.push(KIND_RANS);
            write_table(out, alphabet, table);
            // The coded length goes first.
            rans::encode_after(syms, table, out, |len, out| put_varint(out, len as u64));
        }
    }
}

/// A symbol stream read back: either a constant or an rANS stream with its decode tables.
#[allow(clippy::large_enum_variant)] // one per chunk; boxing would add an allocation
pub enum SymStream<'a> {
    Const(u16),
    Rans {
        table: Box<[u32; PROB_SCALE as usize]>,
        /// Value of each symbol index (256 entries, unused ones zero).
        values: [u16; 256],
        coded: &'a [u8],
        /// Number of symbols in use.
        alphabet: usize,
    },
}

/// Reads a symbol stream header; values must be below `1 << value_bits`.
pub fn read_symbols<'a>(r: &mut Reader<'a>, value_bits: u32) -> Result<SymStream<'a>, CodecError> {
    match r.u8()? {
        KIND_CONST => {
            let v = r.u16()?;
            if u32::from(v) >> value_bits != 0 {
                return Err(CodecError::Corrupt("constant symbol out of range"));
            }
            Ok(SymStream::Const(v))
        }
        KIND_RANS => {
            let n = r.varint()?.saturating_add(1);
            if !(2..=256).contains(&n) {
                return Err(CodecError::Corrupt("symbol alphabet size out of range"));
            }
            let n = n as usize;
            let mut values = [0u16; 256];
            let mut next = 0u64;
            for slot in values.iter_mut().take(n) {
                let v = next
                    .checked_add(r.varint()?)
                    .ok_or(CodecError::Corrupt("symbol value out of range"))?;
                if v >> value_bits != 0 {
                    return Err(CodecError::Corrupt("symbol value out of range"));
                }
                *slot = v as u16;
                next = v + 1;
            }
            let mut freqs = Vec::with_capacity(n);
            for _ in 0..n {
                let f = r.varint()?;
                freqs.push(u16::try_from(f).map_err(|_| CodecError::Corrupt("frequency"))?);
            }
            let table = FreqTable::new(freqs).ok_or(CodecError::Corrupt("frequency table"))?;
            let len = usize::try_from(r.varint()?).map_err(|_| CodecError::Truncated)?;
            let coded = r.bytes(len)?;
            Ok(SymStream::Rans {
                table: table.decode_table(),
                values,
                coded,
                alphabet: n,
            })
        }
        _ => Err(CodecError::Corrupt("unknown symbol stream kind")),
    }
}

/// Decodes a symbol stream of `n` values, handing each `(index, value)` to `emit`.
#[inline(always)]
pub fn decode_symbols<F: FnMut(usize, u16)>(
    s: &SymStream<'_>,
    n: usize,
    mut emit: F,
) -> Result<(), CodecError> {
    match s {
        SymStream::Const(v) => {
            for i in 0..n {
                emit(i, *v);
            }
            Ok(())
        }
        SymStream::Rans {
            table,
            values,
            coded,
            ..
        } => {
            let mut d = rans::Decoder::new(coded)?;
            let mut buf = vec![0u8; n.min(8192)];
            let mut first = 0;
            while first < n {
                let len = buf.len().min(n - first);
                d.decode_block(table, &mut buf[..len])?;
                for (k, &s) in buf[..len].iter().enumerate() {
                    emit(first + k, values[s as usize]);
                }
                first += len;
            }
            d.finish()?;
            Ok(())
        }
    }
}

/// Decodes a 16-bit symbol stream straight into little-endian words (`out.len() / 2` values):
/// indices from the SIMD block decoder, mapped through the alphabet.
pub fn decode_symbols_u16(s: &SymStream<'_>, out: &mut [u8]) -> Result<(), CodecError> {
    match s {
        SymStream::Const(v) => {
            for o in out.chunks_exact_mut(2) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        }
        SymStream::Rans {
            table,
            values,
            coded,
            ..
        } => {
            let mut d = rans::Decoder::new(coded)?;
            let mut idx = [0u8; 8192];
            for block in out.chunks_mut(2 * idx.len()) {
                let n = block.len() / 2;
                d.decode_block(table, &mut idx[..n])?;
                for (o, &i) in block.chunks_exact_mut(2).zip(&idx[..n]) {
                    o.copy_from_slice(&values[i as usize].to_le_bytes());
                }
            }
            d.finish()?;
            Ok(())
        }
    }
}

/// Reads a symbol stream whose values fit a byte, block by block (blocks a multiple of the
/// rANS group except the last): indices come from the SIMD decoder and are mapped through a
/// table.
#[allow(clippy::large_enum_variant)] // one per stream, on the stack
pub enum SymbolBytes<'a> {
    Const(u8),
    Rans {
        decoder: rans::Decoder<'a>,
        table: &'a [u32; PROB_SCALE as usize],
        /// The decode table with each slot's byte value in place of its symbol index, so that
        /// the decoder writes values directly; `None` when every value is its own index (the
        /// usual case for palette indices).
        valued: Option<Box<[u32; PROB_SCALE as usize]>>,
    },
}

impl<'a> SymbolBytes<'a> {
    pub fn new(s: &'a SymStream<'a>) -> Result<SymbolBytes<'a>, CodecError> {
        Ok(match s {
            SymStream::Const(v) => SymbolBytes::Const(*v as u8),
            SymStream::Rans {
                table,
                values,
                coded,
                alphabet,
            } => SymbolBytes::Rans {
                decoder: rans::Decoder::new(coded)?,
                table,
                // The decoders store a slot's low byte, whatever it holds.
                valued: (!values[..*alphabet]
                    .iter()
                    .enumerate()
                    .all(|(i, &v)| usize::from(v) == i))
                .then(|| {
                    Box::new(
                        table.map(|e| (e & !0xff) | u32::from(values[(e & 0xff) as usize] as u8)),
                    )
                }),
            },
        })
    }

    pub fn read(&mut self, out: &mut [u8]) -> Result<(), CodecError> {
        match self {
            SymbolBytes::Const(v) => out.fill(*v),
            SymbolBytes::Rans {
                decoder,
                table,
                valued,
            } => decoder.decode_block(valued.as_deref().unwrap_or(table), out)?,
        }
        Ok(())
    }

    pub fn finish(self) -> Result<(), CodecError> {
        if let SymbolBytes::Rans { decoder, .. } = self {
            decoder.finish()?;
        }
        Ok(())
    }
}

/// Writes a byte stream (a byte plane, FP8 codes) as whichever of const / raw / rANS / zstd is
/// smallest. rANS is measured exactly from the histogram; zstd is tried when `effort` says so.
pub fn write_bytes(data: &[u8], effort: Effort, out: &mut Vec<u8>) {
    let h = Histogram::of(data.iter().map(|&b| u16::from(b)), 8);
    write_byte_stream(ByteStream::Bytes(data), &h, effort, true, out);
}

/// The length `write_byte_stream` plans for a stream of `n` bytes with histogram `h`, zstd
/// aside (const, raw or rANS, to within a few bytes).
pub fn planned_byte_stream_len(h: &Histogram, n: usize) -> usize {
    if h.values.len() <= 1 {
        return 2;
    }
    plan_symbols(h).map_or(n + 1, |plan| plan.bytes.min(n + 1))
}

/// A byte stream to write: bytes, or one byte of each of a run of 16-bit words (a byte plane
/// of 16-bit elements), read in place through its key.
#[derive(Clone, Copy)]
pub enum ByteStream<'a> {
    Bytes(&'a [u8]),
    Field(&'a [u16], rans::WordKey),
}

impl ByteStream<'_> {
    fn len(&self) -> usize {
        match self {
            ByteStream::Bytes(b) => b.len(),
            ByteStream::Field(w, _) => w.len(),
        }
    }

    /// The first `n` bytes of the stream.
    fn head(&self, n: usize) -> std::borrow::Cow<'_, [u8]> {
        match *self {
            ByteStream::Bytes(b) => std::borrow::Cow::Borrowed(&b[..n]),
            ByteStream::Field(w, key) => w[..n].iter().map(|&x| key.value(x) as u8).collect(),
        }
    }
}

/// `write_bytes` for a stream whose histogram `h` is already counted; zstd is tried as
/// `effort` says only where `lz` (the caller may know that it cannot win).
pub fn write_byte_stream(
    data: ByteStream<'_>,
    h: &Histogram,
    effort: Effort,
    lz: bool,
    out: &mut Vec<u8>,
) {
    if h.values.len() <= 1 {
        out.push(KIND_CONST);
        out.push(h.values.first().copied().unwrap_or(0) as u8);
        return;
    }
    let n = data.len();
    let plan = plan_symbols(h).expect("a byte stream has at most 256 values");
    let mut best_len = n + 6;
    let mut best = KIND_RAW;
    if plan.bytes < best_len {
        best_len = plan.bytes;
        best = KIND_RANS;
    }
    let zstd = effort.zstd_level().filter(|_| lz).and_then(|level| {
        // Only worth a try where zero-order coding leaves something: structure beyond order 0.
        let probe = data.head(n.min(ZSTD_PROBE));
        if effort.zstd_always() || worth_trying_zstd_on(&probe, n, plan.bytes) {
            zstd_smallest(&data.head(n), level)
        } else {
            None
        }
    });
    if let Some(z) = &zstd {
        if z.len() + 6 < best_len {
            best = KIND_ZSTD;
        }
    }
    match (best, data) {
        (KIND_RAW, _) => {
            out.push(KIND_RAW);
            out.extend_from_slice(&data.head(n));
        }
        (KIND_RANS, ByteStream::Bytes(b)) => {
            let values: Vec<u16> = b.iter().map(|&b| u16::from(b)).collect();
            write_symbols(&plan, &values, out);
        }
        (KIND_RANS, ByteStream::Field(words, key)) => {
            write_word_symbols(&plan, words, key, &plan.index_map(0, 8), out);
        }
        _ => {
            let z = zstd.expect("zstd chosen only when present");
            out.push(KIND_ZSTD);
            put_varint(out, z.len() as u64);
            out.extend_from_slice(&z);
        }
    }
}

/// zstd at `level`, or at the balanced level (3) where that is smaller: a high level is not
/// always smaller (measured: a 4 KiB I64 plane, 317 bytes at 15 against 316 at 3; a 72 KiB
/// block-scaled FP8 embedding, 56,511 against 56,396), and storage mode, the only one above
/// 3, promises the smallest file. Level 3 costs a fraction of level 15's time.
pub fn zstd_smallest(data: &[u8], level: i32) -> Option<Vec<u8>> {
    let z = zstd_compress(data, level)?;
    if level <= 3 {
        return Some(z);
    }
    match zstd_compress(data, 3) {
        Some(y) if y.len() < z.len() => Some(y),
        _ => Some(z),
    }
}

/// zstd at `level`, with a context kept per thread: creating one per chunk cost more than a
/// probe's compression.
pub fn zstd_compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CTX.with_borrow_mut(|ctx| {
        if ctx.is_none() {
            *ctx = zstd::bulk::Compressor::new(level).ok();
        }
        let c = ctx.as_mut()?;
        c.set_compression_level(level).ok()?;
        c.compress(data).ok()
    })
}

/// A cheap probe: compress a slice with a fast zstd level and compare with the order-0 estimate.
/// 16 KiB probes a quarter of what 64 KiB did and, measured on the corpus, changes only two
/// decisions, both for the smaller file.
pub fn worth_trying_zstd(data: &[u8], order0_bytes: usize) -> bool {
    worth_trying_zstd_on(
        &data[..data.len().min(ZSTD_PROBE)],
        data.len(),
        order0_bytes,
    )
}

/// Bytes that `worth_trying_zstd` compresses to decide.
const ZSTD_PROBE: usize = 16 * 1024;

/// `worth_trying_zstd` given the first `ZSTD_PROBE` bytes (or all, when fewer) of `len`.
fn worth_trying_zstd_on(probe: &[u8], len: usize, order0_bytes: usize) -> bool {
    if len <= ZSTD_PROBE {
        return true;
    }
    match zstd_compress(probe, 1) {
        Some(z) => (z.len() as f64) < 1.02 * order0_bytes as f64 * ZSTD_PROBE as f64 / len as f64,
        None => false,
    }
}

/// Whether the zero elements of a difference lie scattered, judged on its first `ZSTD_PROBE`
/// words: a run of zeros ends about as often as it would if each element were zero
/// independently of its neighbours, so there are no long runs of unchanged weights for an LZ
/// coder to find, and its probe (a zstd compression of 16 KiB) is not worth its time. Rows
/// or blocks of unchanged weights inside a changed tensor fail this: their runs end 3 to 5
/// times less often than that, measured on row-sparse differences of the corpus model, where
/// zstd beats order-0 coding by 9-43%; a difference of redrawn or nudged
/// weights passes (0.96 to 1.04 times). A probe with few zeros passes (no runs to find); one
/// with few nonzeros, or too short to tell, does not.
pub fn zeros_scattered(words: &[u16]) -> bool {
    if 2 * words.len() <= ZSTD_PROBE {
        return false;
    }
    let p = &words[..words.len().min(ZSTD_PROBE)];
    let zeros = count_equal(p, 0);
    if zeros < 64 {
        return true;
    }
    let ends = p.windows(2).filter(|w| w[0] == 0 && w[1] != 0).count();
    let expected = zeros as f64 * (1.0 - zeros as f64 / p.len() as f64);
    expected >= 64.0 && ends as f64 >= 0.8 * expected
}

/// Reads a byte stream written by `write_bytes` into `out` (whose length is the stream's).
pub fn read_bytes(r: &mut Reader<'_>, out: &mut [u8]) -> Result<(), CodecError> {
    match r.peek_u8()? {
        KIND_CONST => {
            r.u8()?;
            let v = r.u8()?;
            out.fill(v);
            Ok(())
        }
        KIND_RAW => {
            r.u8()?;
            out.copy_from_slice(r.bytes(out.len())?);
            Ok(())
        }
        KIND_RANS => {
            let s = read_symbols(r, 8)?;
            let mut bytes = SymbolBytes::new(&s)?;
            for block in out.chunks_mut(8192) {
                bytes.read(block)?;
            }
            bytes.finish()
        }
        KIND_ZSTD => {
            r.u8()?;
            let len = usize::try_from(r.varint()?).map_err(|_| CodecError::Truncated)?;
            let z = r.bytes(len)?;
            zstd_exact(z, out)
        }
        _ => Err(CodecError::Corrupt("unknown byte stream kind")),
    }
}

/// Decompresses a zstd frame that must produce exactly `out.len()` bytes, with a context kept
/// per thread (creating one per chunk was 1.8% of decoding the FP8 MiniLM, whose small
/// tensors are zstd blobs).
pub fn zstd_exact(z: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let n = CTX
        .with_borrow_mut(|ctx| {
            if ctx.is_none() {
                *ctx = zstd::bulk::Decompressor::new().ok();
            }
            ctx.as_mut()?.decompress_to_buffer(z, out).ok()
        })
        .ok_or(CodecError::Corrupt("zstd"))?;
    if n != out.len() {
        return Err(CodecError::Corrupt("zstd frame has the wrong length"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Values whose many distinct values come after the first 64 Ki (past the quick test)
    /// are counted exactly, and still found too many for a symbol stream.
    #[test]
    fn late_distinct_values_are_counted() {
        let mut values = vec![0u16; 1 << 16];
        values.extend((0..1000u16).map(|v| v.wrapping_mul(977)));
        let (whole, planes) = Histogram::of_words_planes(&values);
        assert!(whole.is_none());
        let want = Histogram::of_words(&values).byte_planes();
        for (got, want) in planes.iter().zip(&want) {
            assert_eq!((&got.values, &got.counts), (&want.values, &want.counts));
        }
    }

    proptest! {
        /// The sparse-value counter and its byte planes agree with plain counting, twice in a
        /// row (the per-thread table must come back clean).
        #[test]
        fn word_histograms_agree(values in proptest::collection::vec(prop_oneof![Just(0u16), Just(1), Just(0xffff), any::<u16>()], 0..4000)) {
            for _ in 0..2 {
                let h = Histogram::of_words(&values);
                let want = Histogram::of(values.iter().copied(), 16);
                prop_assert_eq!(&h.values, &want.values);
                prop_assert_eq!(&h.counts, &want.counts);
                let [lo, hi] = h.byte_planes();
                let (few, planes) = Histogram::of_words_planes(&values);
                prop_assert_eq!(few.is_some(), want.values.len() <= 256);
                if let Some(few) = few {
                    prop_assert_eq!((&few.values, &few.counts), (&want.values, &want.counts));
                }
                for (got, plane) in planes.iter().zip([&lo, &hi]) {
                    prop_assert_eq!((&got.values, &got.counts), (&plane.values, &plane.counts));
                }
                let want_lo = Histogram::of(values.iter().map(|&v| v & 0xff), 8);
                let want_hi = Histogram::of(values.iter().map(|&v| v >> 8), 8);
                prop_assert_eq!((&lo.values, &lo.counts), (&want_lo.values, &want_lo.counts));
                prop_assert_eq!((&hi.values, &hi.counts), (&want_hi.values, &want_hi.counts));
            }
        }

        /// Values of a few distinct values (the block counter's path, including values that
        /// first turn up in a later block, and more than it takes) count as plainly counted.
        #[test]
        fn few_value_histograms_agree(
            set in proptest::collection::vec(any::<u16>(), 1..11),
            picks in proptest::collection::vec((0usize..10, 0usize..20000), 0..40),
            len in 0usize..20000,
        ) {
            let mut values = vec![set[0]; len];
            for (k, at) in picks {
                if at < len {
                    values[at] = set[k % set.len()];
                }
            }
            let h = Histogram::of_words(&values);
            let want = Histogram::of(values.iter().copied(), 16);
            prop_assert_eq!(&h.values, &want.values);
            prop_assert_eq!(&h.counts, &want.counts);
            prop_assert_eq!(count_equal(&values, set[0]), want.values.iter().zip(&want.counts).find(|(v, _)| **v == set[0]).map_or(0, |(_, &c)| c as usize));
        }

        /// The small-alphabet counter agrees with plain counting.
        #[test]
        fn small_histograms_agree(bits in 0u32..10, values in proptest::collection::vec(any::<u16>(), 0..3000)) {
            let values: Vec<u16> = values.iter().map(|&v| v & ((1u32 << bits) - 1) as u16).collect();
            let got = Histogram::of_small(&values, bits);
            let want = Histogram::of(values.iter().copied(), bits);
            prop_assert_eq!(&got.values, &want.values);
            prop_assert_eq!(&got.counts, &want.counts);
        }
    }

    /// Whole-value streams index through the smallest window that holds the alphabet, and
    /// code exactly as through the table from 0 up (AVX-512 and portable encoders alike),
    /// decoding back to the values.
    #[test]
    fn windowed_alphabets_code_as_the_full_table() {
        assert_eq!(window(&[1, 0xffff]), (1, 2));
        assert_eq!(window(&[0, 1, 0xfffe, 0xffff]), (2, 2));
        assert_eq!(window(&[3, 5, 9]), (0xfffd, 3));
        assert_eq!(window(&[0, 0x8000]), (0, 16));
        assert_eq!(window(&[7]), (0xfff9, 0));
        // Out of order: the table from 0 up.
        assert_eq!(window(&[9, 3, 5]), (0, 4));
        let alphabets: [&[u16]; 4] = [
            &[0, 1, 0xffff],
            &[0xfff0, 0xfff8, 2, 40],
            &[100, 101, 300],
            &[0, 0x7fff, 0x8000, 0xffff],
        ];
        #[cfg(target_arch = "x86_64")]
        let _guard = crate::codec::SIMD_SWITCH
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for alphabet in alphabets {
            let data: Vec<u16> = (0..9000u32)
                .map(|i| alphabet[(i.wrapping_mul(2654435761) >> 16) as usize % alphabet.len()])
                .collect();
            let plan = plan_symbols(&Histogram::of(data.iter().copied(), 16)).expect("plan");
            for portable in [false, true] {
                #[cfg(target_arch = "x86_64")]
                crate::codec::simd::force_portable(portable);
                let mut got = Vec::new();
                write_symbols(&plan, &data, &mut got);
                let mut want = Vec::new();
                let index = plan.index_map(0, 16);
                write_word_symbols(&plan, &data, rans::WordKey::WHOLE, &index, &mut want);
                assert!(got == want, "{alphabet:?} portable={portable}");
                let mut r = Reader::new(&got);
                let s = read_symbols(&mut r, 16).unwrap();
                let mut back = vec![0u8; data.len() * 2];
                decode_symbols_u16(&s, &mut back).unwrap();
                assert!(back
                    .chunks_exact(2)
                    .zip(&data)
                    .all(|(b, &d)| u16::from_le_bytes([b[0], b[1]]) == d));
            }
            #[cfg(target_arch = "x86_64")]
            crate::codec::simd::force_portable(false);
        }
    }

    /// Byte symbols through `SymbolBytes`, with values that are and are not their own index.
    #[test]
    fn symbol_bytes_map_values() {
        for alphabet in [vec![0u16, 1, 2, 3], vec![0, 5, 9, 200]] {
            let data: Vec<u16> = (0..5000u32)
                .map(|i| alphabet[(i.wrapping_mul(2654435761) >> 30) as usize])
                .collect();
            let plan = plan_symbols(&Histogram::of(data.iter().copied(), 8)).expect("plan");
            let mut blob = Vec::new();
            write_symbols(&plan, &data, &mut blob);
            let mut r = Reader::new(&blob);
            let s = read_symbols(&mut r, 8).unwrap();
            let mut reader = SymbolBytes::new(&s).unwrap();
            let mut out = vec![0u8; data.len()];
            // Blocks a multiple of the rANS group, then the rest.
            reader.read(&mut out[..4096]).unwrap();
            reader.read(&mut out[4096..]).unwrap();
            reader.finish().unwrap();
            assert!(out.iter().zip(&data).all(|(&o, &d)| u16::from(o) == d));
        }
    }
}
