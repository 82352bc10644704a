//! Tensor codecs: how one chunk of a tensor's raw bytes becomes a coded blob and back.
//!
//! Every blob starts with a one-byte codec tag, so a chunk is self-describing given its element
//! type and length (both recorded in the container index). The encoder measures its candidates
//! and keeps the smallest; raw storage is always a candidate, so no chunk grows by more than its
//! one-byte tag.
//!
//! This module does not know about files, tensors names or hashes: see `format` for that.

pub mod bits;
pub mod pairs;
pub mod palette;
pub mod rans;
#[cfg(target_arch = "x86_64")]
pub mod simd;
pub mod sparse;
pub mod split;
pub mod stream;

use bits::Reader;

/// What went wrong inside a coded blob; the container adds the tensor and chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("coded data is truncated")]
    Truncated,
    #[error("coded data is corrupt: {0}")]
    Corrupt(&'static str),
    #[error(transparent)]
    Rans(#[from] rans::RansError),
    #[error("unknown codec tag {0} (written by a newer bigsmall?)")]
    UnknownCodec(u8),
}

/// The trade-off a user picked: smallest file, the default, or fastest decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effort {
    /// Smallest file: every candidate is tried, zstd at a high level, finer symbol splits.
    Storage,
    /// The default: near-storage size at full decode speed.
    Balanced,
    /// Fastest decode: byte-aligned fields only, no zstd (a patch's difference chunks aside),
    /// two elements per rANS symbol (PAIRS16, PAIRS8) where that costs at most 1% (16-bit) or
    /// 2% (bytes).
    Inference,
    /// Decode speed first (`transcode --mode speed`): byte-aligned fields, nibble palettes,
    /// pairs as in inference mode, no zstd, and raw storage wherever coding saves less than
    /// a tenth.
    Speed,
}

impl Effort {
    pub fn zstd_level(self) -> Option<i32> {
        match self {
            Effort::Storage => Some(15),
            Effort::Balanced => Some(3),
            Effort::Inference | Effort::Speed => None,
        }
    }

    pub fn zstd_always(self) -> bool {
        self == Effort::Storage
    }

    pub fn name(self) -> &'static str {
        match self {
            Effort::Storage => "storage",
            Effort::Balanced => "balanced",
            Effort::Inference => "inference",
            Effort::Speed => "speed",
        }
    }
}

/// How a tensor's elements are laid out, as far as the codecs care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemKind {
    Bf16,
    F16,
    F32,
    /// One-byte floats (e4m3, e5m2) and one-byte integers: the whole byte is the symbol.
    Byte,
    /// Anything else, by element width in bytes.
    Other(usize),
}

impl ElemKind {
    pub fn width(self) -> usize {
        match self {
            ElemKind::Bf16 | ElemKind::F16 => 2,
            ElemKind::F32 => 4,
            ElemKind::Byte => 1,
            ElemKind::Other(w) => w,
        }
    }
}

/// Codec tags: the first byte of every coded chunk.
pub mod tag {
    pub const RAW: u8 = 0;
    pub const ZSTD: u8 = 1;
    pub const SPLIT16: u8 = 2;
    pub const SPLIT32: u8 = 3;
    pub const BYTES: u8 = 4;
    pub const FILL: u8 = 5;
    pub const PLANES: u8 = 6;
    pub const PALETTE16: u8 = 7;
    pub const SYM16: u8 = 8;
    pub const PALETTE16_NIBBLES: u8 = 9;
    pub const SPARSE16: u8 = 10;
    pub const PAIRS16: u8 = 11;
    pub const PAIRS8: u8 = 12;

    pub fn name(t: u8) -> &'static str {
        match t {
            RAW => "raw",
            ZSTD => "zstd",
            SPLIT16 => "split16_rans",
            SPLIT32 => "split32_rans",
            BYTES => "byte_rans",
            FILL => "fill",
            PLANES => "byte_planes",
            PALETTE16 => "palette16",
            SYM16 => "sym16_rans",
            PALETTE16_NIBBLES => "palette16_nibbles",
            SPARSE16 => "sparse16_rans",
            PAIRS16 => "pairs16_rans",
            PAIRS8 => "pairs8_rans",
            _ => "unknown",
        }
    }
}

/// Whether the AVX-512 kernels run (never off x86-64): the decoders that reassemble words
/// from symbol indices there take values straight from the value decoder elsewhere.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd::has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A FILL blob when every element equals the first (at least two elements).
fn fill_blob(data: &[u8], w: usize) -> Option<Vec<u8>> {
    (data.len() >= 2 * w && data.chunks_exact(w).all(|e| e == &data[..w])).then(|| {
        let mut out = vec![tag::FILL];
        out.extend_from_slice(&data[..w]);
        out
    })
}

/// The last candidates every chunk gets: whole-chunk zstd at `level` (always in storage mode,
/// else when a quick probe says it can win), then raw, which bounds any chunk's growth to its
/// one-byte tag.
fn zstd_or_raw(data: &[u8], effort: Effort, level: Option<i32>, mut best: Vec<u8>) -> Vec<u8> {
    if let Some(level) = level {
        if effort.zstd_always() || stream::worth_trying_zstd(data, best.len()) {
            if let Some(z) = stream::zstd_smallest(data, level) {
                if z.len() + 1 < best.len() {
                    best = Vec::with_capacity(z.len() + 1);
                    best.push(tag::ZSTD);
                    best.extend_from_slice(&z);
                }
            }
        }
    }
    if best.len() > data.len() + 1 {
        best.clear();
        best.push(tag::RAW);
        best.extend_from_slice(data);
    }
    best
}

/// How a chunk of 16-bit differences is coded as whole values: one symbol stream over every
/// element, or the changed elements and the gaps between them.
enum Whole<'a> {
    Sym(&'a [u16], stream::SymPlan),
    Sparse(sparse::Changes, sparse::SparsePlan),
}

impl Whole<'_> {
    /// Planned size of the blob without its tag.
    fn bytes(&self) -> usize {
        match self {
            Whole::Sym(_, plan) => plan.bytes,
            Whole::Sparse(_, plan) => plan.bytes - 1,
        }
    }

    fn write(&self) -> Vec<u8> {
        match self {
            Whole::Sym(values, plan) => {
                let mut out = vec![tag::SYM16];
                stream::write_symbols(plan, values, &mut out);
                out
            }
            Whole::Sparse(changes, plan) => changes.write(plan),
        }
    }
}

/// Codes a chunk of mostly-zero data (a difference against a base tensor): 16-bit values
/// as one rANS symbol stream when they have at most 256 distinct values (the zeroth-order
/// entropy of the stream) or, with few changes, as the changes and their gaps (about the
/// same size, coded in time per change); byte planes; zstd (long zero runs); or raw — the
/// smallest measured.
pub fn encode_sparse_chunk(kind: ElemKind, data: &[u8], effort: Effort) -> Vec<u8> {
    let w = kind.width();
    if let Some(fill) = fill_blob(data, w) {
        return fill;
    }
    // Whole 16-bit values are planned first. The byte planes' order-0 plans (from the same
    // histogram) bound the planes from above only where a plane can also go to zstd; so the
    // planes are skipped when the whole values win outright (no zstd) or by a tenth, and
    // otherwise coded and measured as well (always in storage mode).
    let words = (w == 2).then(|| split::as_words(data));
    let whole = words.as_deref().map(|values| {
        // Up to a quarter of changes, gathering them also gives the histogram. A count of the
        // zeros first spares denser chunks gathering a quarter of theirs to find out.
        let limit = values.len() / 4;
        let changes = (values.len() - stream::count_equal(values, 0) <= limit)
            .then(|| sparse::Changes::of(values, limit))
            .flatten();
        // The values' histogram where it could plan a symbol stream or the changes.
        let (h, plane_h) = match &changes {
            Some(c) => {
                let h = c.dense_histogram();
                let planes = h.byte_planes();
                (Some(h), planes)
            }
            None => stream::Histogram::of_words_planes(values),
        };
        let planes: usize = plane_h
            .iter()
            .map(|p| stream::plan_symbols(p).map_or(values.len() + 6, |plan| plan.bytes))
            .sum();
        let sym = h
            .as_ref()
            .and_then(stream::plan_symbols)
            .map(|plan| Whole::Sym(values, plan));
        let sparse = changes
            .zip(h.as_ref())
            .and_then(|(c, h)| c.plan(h, effort).map(|plan| Whole::Sparse(c, plan)));
        // The changes are coded and decoded in time per change, the whole stream in time per
        // element: outside storage mode they are kept when at most a 25th larger (their two
        // symbol tables cost a few hundred bytes more per chunk).
        let slack = |a: usize| if effort == Effort::Storage { 0 } else { a / 25 };
        let best = match (sym, sparse) {
            (Some(a), Some(b)) => Some(if b.bytes() <= a.bytes() + slack(a.bytes()) {
                b
            } else {
                a
            }),
            (a, b) => a.or(b),
        };
        (best, planes + 1, plane_h)
    });
    // Runs of zeros are where an LZ coder beats order-0 coding, even in inference mode; it
    // is not tried where the zeros lie scattered (except in storage mode, which tries all).
    let lz = effort.zstd_always() || !words.as_deref().is_some_and(stream::zeros_scattered);
    let best = match whole {
        Some((Some(whole), planes, ..))
            if !effort.zstd_always()
                && (whole.bytes() * 10 < planes * 9
                    || ((effort.zstd_level().is_none() || !lz) && whole.bytes() < planes)) =>
        {
            whole.write()
        }
        Some((whole, _, plane_h)) => {
            let words = words.as_deref().expect("16-bit elements");
            let planes = encode_planes16(words, &plane_h, effort, lz);
            match whole {
                Some(whole) if whole.bytes() + 1 < planes.len() => whole.write(),
                _ => planes,
            }
        }
        None => encode_planes(data, w, effort),
    };
    let level = lz.then(|| effort.zstd_level().unwrap_or(1).max(3));
    zstd_or_raw(data, effort, level, best)
}

/// Codes one chunk (`data.len()` a multiple of the element width), choosing the smallest
/// candidate. Deterministic: the same input and effort always give the same blob.
pub fn encode_chunk(kind: ElemKind, data: &[u8], effort: Effort) -> Vec<u8> {
    encode_chunk_within(kind, data, effort, usize::MAX).expect("no limit to exceed")
}

/// `encode_chunk`'s blob, or `None` where that blob is sure to be longer than `limit` bytes.
/// Sure means bounded, not estimated: the split of 16-bit floats is planned from its exact
/// histograms, and its length bounded from them (`rans::coded_len`) before it is written;
/// `None` only where that bound, every other candidate the chunk would try and the raw
/// fallback all lie over `limit`. A patch uses it to skip writing a standalone blob that
/// cannot beat the difference it already has.
pub fn encode_chunk_within(
    kind: ElemKind,
    data: &[u8],
    effort: Effort,
    limit: usize,
) -> Option<Vec<u8>> {
    let w = kind.width();
    debug_assert_eq!(data.len() % w, 0);
    if let Some(fill) = fill_blob(data, w) {
        return Some(fill);
    }
    // No blob is longer than raw with its tag.
    let limit = if limit > data.len() {
        usize::MAX
    } else {
        limit
    };
    let best = match kind {
        ElemKind::Bf16 | ElemKind::F16 => {
            let flavour = if kind == ElemKind::Bf16 {
                split::Float16::Bf16
            } else {
                split::Float16::F16
            };
            match split::encode16(data, flavour, effort, limit) {
                split::Encoded16::Blob(b) => b,
                split::Encoded16::Over(len) if zstd_over(data, effort, *len.end(), limit) => {
                    return None;
                }
                // zstd might come under the limit: the full measurement decides.
                split::Encoded16::Over(_) => {
                    return encode_chunk_within(kind, data, effort, usize::MAX)
                }
            }
        }
        ElemKind::F32 => split::encode32(data, effort),
        ElemKind::Byte => {
            let h = stream::Histogram::of(data.iter().map(|&b| u16::from(b)), 8);
            // Inference and speed modes pair the exponents (half the decoder's symbols)
            // unless that costs more than a fiftieth of the byte stream's size, as planned:
            // only the one kept is written.
            let pairs = matches!(effort, Effort::Inference | Effort::Speed)
                .then(|| pairs::plan8(data))
                .filter(|p| {
                    p.bytes() * 50 <= (1 + stream::planned_byte_stream_len(&h, data.len())) * 51
                });
            match pairs {
                Some(p) => p.write(data),
                None => {
                    let mut out = vec![tag::BYTES];
                    // zstd is tried on the whole chunk below, the very bytes of this stream,
                    // and that blob is the smaller (no stream framing): the stream does not
                    // try it too.
                    let stream = stream::ByteStream::Bytes(data);
                    stream::write_byte_stream(stream, &h, effort, false, &mut out);
                    out
                }
            }
        }
        ElemKind::Other(w) => encode_planes(data, w, effort),
    };
    // Whole-chunk zstd catches structure beyond the fields (repeated values, few distinct
    // values per block) that no order-0 coder sees.
    let best = zstd_or_raw(data, effort, effort.zstd_level(), best);
    // Raw decodes at memory speed (and can be used in place): for speed it wins unless coding
    // saves at least a tenth.
    if effort == Effort::Speed && best[0] != tag::RAW && best.len() * 10 > data.len() * 9 {
        let mut raw = Vec::with_capacity(data.len() + 1);
        raw.push(tag::RAW);
        raw.extend_from_slice(data);
        return Some(raw);
    }
    Some(best)
}

/// Whether `zstd_or_raw` is sure to give nothing of at most `limit` bytes for a chunk whose
/// best blob so far is at most `best_max` bytes long: zstd is not tried at that length (the
/// probe only accepts more as the blob grows), or its blob is over the limit too.
fn zstd_over(data: &[u8], effort: Effort, best_max: usize, limit: usize) -> bool {
    let Some(level) = effort.zstd_level() else {
        return true;
    };
    if !effort.zstd_always() && !stream::worth_trying_zstd(data, best_max) {
        return true;
    }
    stream::zstd_smallest(data, level).is_none_or(|z| z.len() + 1 > limit)
}

/// The bit-exact gate: does `blob` decode to exactly `data`? (Scratch kept per thread, only
/// up to two chunks' worth.)
pub fn decodes_to(kind: ElemKind, blob: &[u8], data: &[u8]) -> bool {
    thread_local! {
        static BACK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BACK.with_borrow_mut(|back| {
        back.clear();
        back.resize(data.len(), 0);
        let ok = matches!(decode_chunk(kind, blob, back), Ok(()) if back[..] == *data);
        if back.capacity() > 2 * crate::format::CHUNK_BYTES {
            *back = Vec::new();
        }
        ok
    })
}

/// `encode_planes` for 16-bit elements whose planes' histograms are counted: the planes are
/// read in place from the words (no plane is gathered unless zstd is tried on it).
fn encode_planes16(
    words: &[u16],
    planes: &[stream::Histogram; 2],
    effort: Effort,
    lz: bool,
) -> Vec<u8> {
    let mut out = vec![tag::PLANES];
    let keys = [
        rans::WordKey {
            mask: 0x00ff,
            shift: 0,
            lsb: false,
            add: 0,
        },
        rans::WordKey {
            mask: 0xff00,
            shift: 8,
            lsb: false,
            add: 0,
        },
    ];
    for (key, h) in keys.into_iter().zip(planes) {
        stream::write_byte_stream(
            stream::ByteStream::Field(words, key),
            h,
            effort,
            lz,
            &mut out,
        );
    }
    out
}

fn encode_planes(data: &[u8], w: usize, effort: Effort) -> Vec<u8> {
    let mut out = vec![tag::PLANES];
    if w == 1 {
        stream::write_bytes(data, effort, &mut out);
        return out;
    }
    let mut plane = vec![0u8; data.len() / w];
    for p in 0..w {
        for (dst, e) in plane.iter_mut().zip(data.chunks_exact(w)) {
            *dst = e[p];
        }
        stream::write_bytes(&plane, effort, &mut out);
    }
    out
}

/// Decodes a blob into `out`, whose length (from the index) fixes the element count.
pub fn decode_chunk(kind: ElemKind, blob: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let w = kind.width();
    if !out.len().is_multiple_of(w) {
        return Err(CodecError::Corrupt(
            "chunk length is not a whole number of elements",
        ));
    }
    let mut r = Reader::new(blob);
    let t = r.u8()?;
    match t {
        tag::RAW => {
            let rest = r.rest();
            if rest.len() != out.len() {
                return Err(CodecError::Corrupt("raw chunk has the wrong length"));
            }
            out.copy_from_slice(rest);
        }
        tag::ZSTD => stream::zstd_exact(r.rest(), out)?,
        tag::FILL => {
            let pattern = r.bytes(w)?;
            for e in out.chunks_exact_mut(w) {
                e.copy_from_slice(pattern);
            }
        }
        tag::SPLIT16 => {
            let flavour = match kind {
                ElemKind::Bf16 | ElemKind::F16 => split::Float16::Bf16,
                _ => return Err(CodecError::Corrupt("split16 codec on a non-16-bit tensor")),
            };
            let _ = flavour; // field layout is the same for both: sign | 15-bit magnitude
            split::decode16(&mut r, out)?;
        }
        tag::PAIRS16 => {
            if w != 2 {
                return Err(CodecError::Corrupt("pairs16 codec on a non-16-bit tensor"));
            }
            pairs::decode(&mut r, out)?;
        }
        tag::PAIRS8 => {
            if w != 1 {
                return Err(CodecError::Corrupt("pairs8 codec on a multi-byte tensor"));
            }
            pairs::decode8(&mut r, out)?;
        }
        tag::SYM16 => {
            if w != 2 {
                return Err(CodecError::Corrupt("sym16 codec on a non-16-bit tensor"));
            }
            let s = stream::read_symbols(&mut r, 16)?;
            stream::decode_symbols_u16(&s, out)?;
        }
        tag::PALETTE16 => {
            if w != 2 {
                return Err(CodecError::Corrupt("palette codec on a non-16-bit tensor"));
            }
            palette::decode(&mut r, out.len() / 2, out)?;
        }
        tag::PALETTE16_NIBBLES => {
            if w != 2 {
                return Err(CodecError::Corrupt("palette codec on a non-16-bit tensor"));
            }
            palette::decode_nibbles(&mut r, out.len() / 2, out)?;
        }
        tag::SPARSE16 => {
            if w != 2 {
                return Err(CodecError::Corrupt("sparse codec on a non-16-bit tensor"));
            }
            sparse::decode(&mut r, out)?;
        }
        tag::SPLIT32 => {
            if kind != ElemKind::F32 {
                return Err(CodecError::Corrupt("split32 codec on a non-F32 tensor"));
            }
            split::decode32(&mut r, out)?;
        }
        tag::BYTES => {
            if w != 1 {
                return Err(CodecError::Corrupt("byte codec on a multi-byte tensor"));
            }
            stream::read_bytes(&mut r, out)?;
        }
        tag::PLANES => {
            if w == 1 {
                stream::read_bytes(&mut r, out)?;
            } else {
                let mut plane = vec![0u8; out.len() / w];
                for p in 0..w {
                    stream::read_bytes(&mut r, &mut plane)?;
                    for (e, &b) in out.chunks_exact_mut(w).zip(&plane) {
                        e[p] = b;
                    }
                }
            }
        }
        other => return Err(CodecError::UnknownCodec(other)),
    }
    if !r.is_empty() {
        return Err(CodecError::Corrupt("trailing bytes after coded data"));
    }
    Ok(())
}

/// Tests that run with the SIMD kernels disabled in between: they must not run concurrently
/// with other tests that flip the switch, so they share this lock.
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) static SIMD_SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `f` run the way this CPU decodes, then as a CPU with AVX2 but not AVX-512 would, then with
/// the portable code alone (holding `SIMD_SWITCH`); just once off x86-64.
#[cfg(test)]
pub(crate) fn each_simd_mode<T>(mut f: impl FnMut() -> T) -> Vec<T> {
    #[cfg(target_arch = "x86_64")]
    {
        let _guard = SIMD_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let native = f();
        simd::force_avx2(true);
        let avx2 = f();
        simd::force_portable(true);
        let portable = f();
        simd::force_portable(false);
        vec![native, avx2, portable]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        vec![f()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds() -> [ElemKind; 6] {
        [
            ElemKind::Bf16,
            ElemKind::F16,
            ElemKind::F32,
            ElemKind::Byte,
            ElemKind::Other(8),
            ElemKind::Other(2),
        ]
    }

    fn roundtrip(kind: ElemKind, data: &[u8]) {
        for effort in [
            Effort::Storage,
            Effort::Balanced,
            Effort::Inference,
            Effort::Speed,
        ] {
            let blob = encode_chunk(kind, data, effort);
            assert!(blob.len() <= data.len() + 1, "{kind:?} grew");
            let mut back = vec![0u8; data.len()];
            decode_chunk(kind, &blob, &mut back).unwrap();
            assert_eq!(back, data, "{kind:?} {effort:?}");
            within_agrees(kind, data, effort, &blob);
        }
    }

    /// `encode_chunk_within` gives `encode_chunk`'s very blob, or nothing where that blob is
    /// over the limit.
    fn within_agrees(kind: ElemKind, data: &[u8], effort: Effort, blob: &[u8]) {
        let n = blob.len();
        for limit in [0, n / 2, n * 9 / 10, n.saturating_sub(1), n, data.len()] {
            match encode_chunk_within(kind, data, effort, limit) {
                Some(b) => assert!(b == blob, "{kind:?} {effort:?} limit {limit}: another blob"),
                None => assert!(
                    n > limit,
                    "{kind:?} {effort:?}: {n} bytes given up at {limit}"
                ),
            }
        }
    }

    #[test]
    fn edge_values_roundtrip() {
        let bf16_edges: Vec<u16> = vec![
            0x0000, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0x7fc1, 0xffff, 0x0001, 0x807f, 0x3f80,
        ];
        let data: Vec<u8> = bf16_edges.iter().flat_map(|v| v.to_le_bytes()).collect();
        roundtrip(ElemKind::Bf16, &data);
        roundtrip(ElemKind::F16, &data);
        let f32_edges: Vec<u32> = vec![
            0,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0001,
            0x0000_0001,
            0xffff_ffff,
        ];
        let data: Vec<u8> = f32_edges.iter().flat_map(|v| v.to_le_bytes()).collect();
        roundtrip(ElemKind::F32, &data);
        for k in kinds() {
            roundtrip(k, &[]);
            roundtrip(k, &vec![0u8; k.width() * 100]);
        }
    }

    #[test]
    fn gaussian_bf16_compresses() {
        let mut x = 12345u64;
        let data: Vec<u8> = (0..200_000)
            .flat_map(|_| {
                // Sum of uniforms: a cheap bell curve.
                let mut s = 0.0f32;
                for _ in 0..4 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    s += (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                half::bf16::from_f32(s * 0.05).to_bits().to_le_bytes()
            })
            .collect();
        let blob = encode_chunk(ElemKind::Bf16, &data, Effort::Balanced);
        let ratio = blob.len() as f64 / data.len() as f64;
        assert!(ratio < 0.72, "ratio {ratio}");
        roundtrip(ElemKind::Bf16, &data);
        // A limit 3% under the blob is told apart without writing it (the bounds are loose by
        // up to a tenth of a bit a weight, here under 1%). Storage tries zstd on every chunk,
        // which may come within those 3% and then needs the split written to decide.
        for effort in [Effort::Balanced, Effort::Inference, Effort::Speed] {
            let n = encode_chunk(ElemKind::Bf16, &data, effort).len();
            let within = encode_chunk_within(ElemKind::Bf16, &data, effort, n * 97 / 100);
            assert!(within.is_none(), "{effort:?}");
        }
    }

    /// A 1 MiB chunk of differences, 576-element rows: `changed(row, col)` says which
    /// elements differ; those get small random values, as ±1–3-ulp nudges leave.
    fn differences(changed: impl Fn(usize, usize) -> bool) -> Vec<u16> {
        let mut x = 99u64;
        (0..1usize << 19)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if changed(i / 576, i % 576) {
                    1 + (x >> 61) as u16
                } else {
                    0
                }
            })
            .collect()
    }

    /// zstd is tried on a difference where unchanged weights come in runs (half the rows of
    /// a chunk: too many changes for SPARSE16), and wins there by a tenth or more (this half
    /// fails if the gate is shut there). Where they lie scattered the gate is shut
    /// (`zeros_scattered`); the blob there is only checked to round-trip and not to grow, which
    /// holds either way.
    #[test]
    fn differences_try_zstd_only_on_runs_of_zeros() {
        let hash = |r: usize, c: usize| (r * 7919 + c * 104729) % 1000;
        let rows = differences(|r, _| hash(r, 0) < 500);
        let scattered = differences(|r, c| hash(r, c) < 500);
        assert!(!stream::zeros_scattered(&rows));
        assert!(stream::zeros_scattered(&scattered));
        // Too short to tell, nearly all zero, or hardly any zero.
        assert!(!stream::zeros_scattered(&scattered[..4096]));
        assert!(!stream::zeros_scattered(&differences(
            |r, c| r == 5 && c < 40
        )));
        assert!(stream::zeros_scattered(&differences(|_, _| true)));
        for effort in [Effort::Balanced, Effort::Inference] {
            for (name, words, runs) in [("rows", &rows, true), ("scattered", &scattered, false)] {
                let data: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
                let blob = encode_sparse_chunk(ElemKind::Bf16, &data, effort);
                let mut back = vec![0u8; data.len()];
                decode_chunk(ElemKind::Bf16, &blob, &mut back).unwrap();
                assert!(back == data, "{name} {effort:?}");
                let (_, planes) = stream::Histogram::of_words_planes(words);
                let order0 = encode_planes16(words, &planes, Effort::Inference, false);
                if runs {
                    assert!(
                        blob.len() * 10 < order0.len() * 9,
                        "{name} {effort:?}: {} against order-0 planes {}",
                        blob.len(),
                        order0.len()
                    );
                } else {
                    assert!(blob.len() <= order0.len(), "{name} {effort:?}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes_roundtrip(kind_i in 0usize..6, bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let kind = kinds()[kind_i];
            let n = bytes.len() / kind.width() * kind.width();
            roundtrip(kind, &bytes[..n]);
        }

        #[test]
        fn narrow_values_roundtrip(kind_i in 0usize..6, vals in proptest::collection::vec(0u8..4, 0..4000)) {
            let kind = kinds()[kind_i];
            let n = vals.len() / kind.width() * kind.width();
            roundtrip(kind, &vals[..n]);
        }

        /// Byte planes read in place through keys are the planes gathered first: same bytes,
        /// whether a plane is constant, coded, raw or (with enough repetition) zstd.
        #[test]
        fn planes_in_place_are_gathered_planes(
            words in proptest::collection::vec(any::<u16>(), 0..3000),
            spread in 0u16..4,
            repeat in 1usize..40,
        ) {
            let words: Vec<u16> = words
                .iter()
                .enumerate()
                .map(|(i, &w)| match spread {
                    0 => w,
                    1 => w & 0x00ff,
                    2 => w % 7,
                    _ => words[i / repeat * repeat],
                })
                .collect();
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let planes = stream::Histogram::of_words(&words).byte_planes();
            for effort in [Effort::Storage, Effort::Balanced, Effort::Inference, Effort::Speed] {
                prop_assert_eq!(
                    encode_planes16(&words, &planes, effort, true),
                    encode_planes(&bytes, 2, effort)
                );
            }
        }

        #[test]
        fn garbage_blobs_never_panic(kind_i in 0usize..6, blob in proptest::collection::vec(any::<u8>(), 0..700), n in 0usize..300) {
            let kind = kinds()[kind_i];
            let mut out = vec![0u8; n * kind.width()];
            let _ = decode_chunk(kind, &blob, &mut out);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod simd_tests {
    use super::*;
    use proptest::prelude::*;

    /// The SIMD kernels (AVX-512, AVX2) and the portable decoders must produce identical
    /// bytes.
    fn both_paths(kind: ElemKind, data: &[u8], effort: Effort) {
        let blob = encode_chunk(kind, data, effort);
        for got in each_simd_mode(|| {
            let mut out = vec![0u8; data.len()];
            decode_chunk(kind, &blob, &mut out).map(|()| out)
        }) {
            assert!(got.unwrap() == data);
        }
    }

    fn bell(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                let mut s = 0.0f32;
                for _ in 0..4 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    s += (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                s * scale
            })
            .collect()
    }

    #[test]
    fn simd_and_portable_agree_on_weights() {
        for n in [0usize, 1, 31, 32, 33, 1000, 4095, 4096, 4097, 70_001] {
            let v = bell(n, n as u64 + 7, 0.03);
            let bf: Vec<u8> = v
                .iter()
                .flat_map(|&f| half::bf16::from_f32(f).to_bits().to_le_bytes())
                .collect();
            let f16: Vec<u8> = v
                .iter()
                .flat_map(|&f| half::f16::from_f32(f).to_bits().to_le_bytes())
                .collect();
            let f32b: Vec<u8> = v.iter().flat_map(|&f| f.to_le_bytes()).collect();
            for effort in [
                Effort::Storage,
                Effort::Balanced,
                Effort::Inference,
                Effort::Speed,
            ] {
                both_paths(ElemKind::Bf16, &bf, effort);
                both_paths(ElemKind::F16, &f16, effort);
                both_paths(ElemKind::F32, &f32b, effort);
            }
        }
    }

    proptest! {
        #[test]
        fn simd_and_portable_agree_on_random(bytes in proptest::collection::vec(any::<u8>(), 0..9000), narrow in any::<bool>()) {
            let data: Vec<u8> = if narrow { bytes.iter().map(|b| b & 0x83).collect() } else { bytes };
            let n = data.len() / 4 * 4;
            for kind in [ElemKind::Bf16, ElemKind::F32, ElemKind::Byte] {
                both_paths(kind, &data[..n], Effort::Balanced);
            }
        }
    }
}
