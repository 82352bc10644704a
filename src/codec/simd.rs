//! AVX-512 kernels for the decode hot loops (and AVX2 rANS decoders for CPUs without AVX-512),
//! chosen at run time. Each kernel has a portable twin elsewhere that produces identical output;
//! tests run every mode on the same data (`codec::each_simd_mode`).
//! `BIGSMALL_NO_SIMD=1` forces the portable paths (for comparisons and benchmarks).
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use super::rans::{LANES, PROB_SCALE, STATE_LOW};

/// 0: follow detection, 1: portable paths forced (see `force_portable`), 2: AVX-512 off, AVX2
/// kernels still on (see `force_avx2`).
static FORCED: AtomicU8 = AtomicU8::new(0);

/// Whether the CPU has AVX-512 F/BW/VBMI (checked once).
pub fn cpu_has_avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi")
    })
}

/// Whether the CPU also has AVX-512 VL (256-bit masked stores, used by the encoder).
pub fn cpu_has_avx512vl() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512vl"))
}

/// True when the AVX-512 kernels will run: the CPU has them, `BIGSMALL_NO_SIMD` is unset and
/// `force_portable(true)` is not in effect.
pub fn has_avx512() -> bool {
    FORCED.load(Ordering::Relaxed) == 0 && !simd_off_by_env() && cpu_has_avx512()
}

/// Forces the portable decoders on or off for the whole process (tests and benchmarks
/// compare both paths on the same data).
pub fn force_portable(on: bool) {
    FORCED.store(u8::from(on), Ordering::Relaxed);
}

/// Makes the process decode as on a CPU with AVX2 but not AVX-512, or (false) undoes it.
pub fn force_avx2(on: bool) {
    FORCED.store(if on { 2 } else { 0 }, Ordering::Relaxed);
}

/// True when the AVX2 kernels will run: the CPU has AVX2 (and POPCNT), `BIGSMALL_NO_SIMD` is
/// unset and `force_portable(true)` is not in effect.
pub fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    FORCED.load(Ordering::Relaxed) != 1
        && !simd_off_by_env()
        && *HAS
            .get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("popcnt"))
}

fn simd_off_by_env() -> bool {
    static ENV_OFF: OnceLock<bool> = OnceLock::new();
    *ENV_OFF.get_or_init(|| std::env::var_os("BIGSMALL_NO_SIMD").is_some())
}

/// For each 8-bit mask of the lanes that refill, where each lane finds its word among the
/// next eight: lane `j` takes word number (set bits below `j`).
static REFILL_RANKS: [[u32; 8]; 256] = {
    let mut t = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut rank = 0;
        let mut j = 0;
        while j < 8 {
            if m >> j & 1 == 1 {
                t[m][j] = rank;
                rank += 1;
            }
            j += 1;
        }
        m += 1;
    }
    t
};

/// The 32 lanes' states as four registers of eight, lane order.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_states(state: &[u32; LANES]) -> [__m256i; 4] {
    std::array::from_fn(|k| _mm256_loadu_si256(state.as_ptr().add(8 * k) as *const _))
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_states(state: &mut [u32; LANES], x: &[__m256i; 4]) {
    for (k, v) in x.iter().enumerate() {
        _mm256_storeu_si256(state.as_mut_ptr().add(8 * k) as *mut _, *v);
    }
}

/// Eight decoded states `y`, with the lanes below `STATE_LOW` refilled, in lane order, from
/// the 16-bit words at `words[*p..]`, which it then passes. The caller makes sure 16 bytes
/// can be read at `*p`.
#[inline]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn refill8(y: __m256i, words: &[u8], p: &mut usize) -> __m256i {
    // Below STATE_LOW (2^16): nothing above bit 15.
    let need = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(y), _mm256_setzero_si256());
    let m = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as usize;
    let next = _mm256_cvtepu16_epi32(_mm_loadu_si128(words.as_ptr().add(*p) as *const _));
    let ranks = _mm256_loadu_si256(REFILL_RANKS[m].as_ptr() as *const _);
    let refilled = _mm256_or_si256(
        _mm256_slli_epi32::<16>(y),
        _mm256_permutevar8x32_epi32(next, ranks),
    );
    *p += 2 * m.count_ones() as usize;
    _mm256_blendv_epi8(y, refilled, need)
}

/// `rans_groups` (symbol indices out, from the packed decode table) in AVX2: four registers of
/// eight lanes, one gather each, refills as in `rans_value_groups_avx2`.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT.
#[target_feature(enable = "avx2,popcnt")]
pub unsafe fn rans_groups_avx2(
    state: &mut [u32; LANES],
    words: &[u8],
    pos: &mut usize,
    table: &[u32; PROB_SCALE as usize],
    out: &mut [u8],
) -> usize {
    let mut x = load_states(state);
    let mask12 = _mm256_set1_epi32(PROB_SCALE as i32 - 1);
    let low = _mm256_set1_epi32(0xff);
    let tp = table.as_ptr() as *const i32;
    let mut p = *pos;
    let groups = out.len() / LANES;
    let mut g = 0;
    while g < groups && p + 2 * LANES <= words.len() {
        let mut syms = [_mm256_setzero_si256(); 4];
        for (k, sym) in syms.iter_mut().enumerate() {
            // Entry: freq << 20 | bias << 8 | symbol.
            let e = _mm256_i32gather_epi32::<4>(tp, _mm256_and_si256(x[k], mask12));
            *sym = _mm256_and_si256(e, low);
            let y = _mm256_add_epi32(
                _mm256_mullo_epi32(_mm256_srli_epi32::<20>(e), _mm256_srli_epi32::<12>(x[k])),
                _mm256_and_si256(_mm256_srli_epi32::<8>(e), mask12),
            );
            // At most 8 words: p + 16 <= the group's start + 64.
            x[k] = refill8(y, words, &mut p);
        }
        // The 32 symbols in lane order: the saturating packs (exact, they are bytes)
        // interleave 128-bit halves, which one permute of dwords puts back.
        let bytes = _mm256_permutevar8x32_epi32(
            _mm256_packus_epi16(
                _mm256_packus_epi32(syms[0], syms[1]),
                _mm256_packus_epi32(syms[2], syms[3]),
            ),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        );
        _mm256_storeu_si256(out.as_mut_ptr().add(g * LANES) as *mut _, bytes);
        g += 1;
    }
    store_states(state, &x);
    *pos = p;
    g
}

/// `rans::value_groups` in AVX2: whole 32-symbol groups, straight to 16-bit values, while a
/// group's worth of words (64 bytes) remains; returns the groups done. The lanes sit in four
/// registers of eight; per register, one gather fetches each slot's frequency and bias (the
/// low half of its `SlotTable` entry) and one its value (the high half), and the lanes that
/// refill take the next words of the shared stream in lane order (a permute by the refill
/// mask's ranks). Measured on Zen 4, whose gathers are slow (criterion, MiniLM BF16
/// balanced, `decode/balanced/avx2` against `portable`, two runs): 1.26 and 1.30 GiB/s
/// against 1.11 and 1.12.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT.
#[target_feature(enable = "avx2,popcnt")]
pub unsafe fn rans_value_groups_avx2(
    state: &mut [u32; LANES],
    words: &[u8],
    pos: &mut usize,
    table: &[u64; PROB_SCALE as usize],
    out: &mut [u16],
) -> usize {
    let mut x = load_states(state);
    let mask12 = _mm256_set1_epi32(PROB_SCALE as i32 - 1);
    let low16 = _mm256_set1_epi32(0xffff);
    let zero = _mm256_setzero_si256();
    // Entry `i` is the two i32s at 2i (frequency | bias << 16) and 2i + 1 (the value).
    let freq_bias = table.as_ptr() as *const i32;
    let value = freq_bias.add(1);
    let mut p = *pos;
    let groups = out.len() / LANES;
    let mut g = 0;
    while g < groups && p + 2 * LANES <= words.len() {
        let mut vals = [zero; 4];
        for (k, v) in vals.iter_mut().enumerate() {
            let slot = _mm256_and_si256(x[k], mask12);
            let fb = _mm256_i32gather_epi32::<8>(freq_bias, slot);
            *v = _mm256_i32gather_epi32::<8>(value, slot);
            let f = _mm256_and_si256(fb, low16);
            let y = _mm256_add_epi32(
                _mm256_mullo_epi32(f, _mm256_srli_epi32::<12>(x[k])),
                _mm256_srli_epi32::<16>(fb),
            );
            // At most 8 words: p + 16 <= the group's start + 64.
            x[k] = refill8(y, words, &mut p);
        }
        // Values fit 16 bits, so the saturating pack keeps them; it interleaves 128-bit
        // halves, which the permute puts back in lane order.
        let o = out.as_mut_ptr().add(g * LANES);
        let lo = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(vals[0], vals[1]));
        let hi = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(vals[2], vals[3]));
        _mm256_storeu_si256(o as *mut _, lo);
        _mm256_storeu_si256(o.add(16) as *mut _, hi);
        g += 1;
    }
    store_states(state, &x);
    *pos = p;
    g
}

/// `table[slot]` for 16 slots (each below `PROB_SCALE`) by scalar loads: on Zen 4 a
/// 16-element gather issues about one load a cycle, scalar loads two to three. The slots go
/// out packed to 16 bits, four to a 64-bit load.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn lookup16(slots: __m512i, table: &[u32; PROB_SCALE as usize]) -> __m512i {
    let mut packed = [0u64; 4];
    _mm256_storeu_si256(packed.as_mut_ptr() as *mut _, _mm512_cvtepi32_epi16(slots));
    let mut e = [0u32; 16];
    for (q, &four) in packed.iter().enumerate() {
        for k in 0..4 {
            let slot = (four >> (16 * k)) as usize & (PROB_SCALE as usize - 1);
            e[4 * q + k] = table[slot];
        }
    }
    _mm512_loadu_si512(e.as_ptr() as *const _)
}

/// Decodes whole 32-symbol groups while a full group's worth of words (64 bytes) remains.
/// Lanes 0..16 live in one register, 16..32 in another; each refills from the shared word
/// stream with one expand, lanes in order — the same order the scalar decoder reads. The
/// table lookups, not the chain from group to group, bound it (two streams decoded side by
/// side ran only 8% faster), so they go through `lookup16`: 6–8% faster than gathers on
/// FP8 here.
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn rans_groups(
    state: &mut [u32; LANES],
    words: &[u8],
    pos: &mut usize,
    table: &[u32; PROB_SCALE as usize],
    out: &mut [u8],
) -> usize {
    let mut x0 = _mm512_loadu_si512(state.as_ptr() as *const _);
    let mut x1 = _mm512_loadu_si512(state.as_ptr().add(16) as *const _);
    let mask12 = _mm512_set1_epi32(0xfff);
    let low = _mm512_set1_epi32(STATE_LOW as i32);
    let mut p = *pos;
    let groups = out.len() / LANES;
    let mut g = 0;
    while g < groups && p + 64 <= words.len() {
        let e0 = lookup16(_mm512_and_si512(x0, mask12), table);
        let e1 = lookup16(_mm512_and_si512(x1, mask12), table);
        let o = out.as_mut_ptr().add(g * LANES);
        _mm_storeu_si128(o as *mut __m128i, _mm512_cvtepi32_epi8(e0));
        _mm_storeu_si128(o.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(e1));
        let f0 = _mm512_srli_epi32::<20>(e0);
        let f1 = _mm512_srli_epi32::<20>(e1);
        let b0 = _mm512_and_si512(_mm512_srli_epi32::<8>(e0), mask12);
        let b1 = _mm512_and_si512(_mm512_srli_epi32::<8>(e1), mask12);
        x0 = _mm512_add_epi32(_mm512_mullo_epi32(f0, _mm512_srli_epi32::<12>(x0)), b0);
        x1 = _mm512_add_epi32(_mm512_mullo_epi32(f1, _mm512_srli_epi32::<12>(x1)), b1);
        let m0 = _mm512_cmplt_epu32_mask(x0, low);
        let w0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(words.as_ptr().add(p) as *const _));
        x0 = _mm512_mask_or_epi32(
            x0,
            m0,
            _mm512_slli_epi32::<16>(x0),
            _mm512_maskz_expand_epi32(m0, w0),
        );
        p += 2 * m0.count_ones() as usize;
        let m1 = _mm512_cmplt_epu32_mask(x1, low);
        let w1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(words.as_ptr().add(p) as *const _));
        x1 = _mm512_mask_or_epi32(
            x1,
            m1,
            _mm512_slli_epi32::<16>(x1),
            _mm512_maskz_expand_epi32(m1, w1),
        );
        p += 2 * m1.count_ones() as usize;
        g += 1;
    }
    _mm512_storeu_si512(state.as_mut_ptr() as *mut _, x0);
    _mm512_storeu_si512(state.as_mut_ptr().add(16) as *mut _, x1);
    *pos = p;
    g
}

/// Reassembles 16-bit words for whole 32-element groups while the packed rest stream has 64
/// readable bytes: `word = rest >> mid << 15 | lut[idx] | (rest & low) << shift`, with the
/// rest field (`mid + 1` bits, at most 9) unpacked by a byte permute and per-lane shifts.
/// `first` (the element index of `idx[0]`) must be a multiple of 8. Returns the number of
/// elements done.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VBMI.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn combine16(
    lut: &[u16; 256],
    alphabet: usize,
    idx: &[u8],
    packed: &[u8],
    first: usize,
    keep: u32,
    shift: u32,
    out: &mut [u16],
) -> usize {
    let width = keep as usize + 1;
    if width > 9 || !first.is_multiple_of(8) {
        return 0;
    }
    let mut perm = [0u8; 64];
    let mut shifts = [0u16; 32];
    for j in 0..32 {
        let bit = j * width;
        perm[2 * j] = (bit / 8) as u8;
        perm[2 * j + 1] = (bit / 8 + 1) as u8;
        shifts[j] = (bit % 8) as u16;
    }
    let perm = _mm512_loadu_si512(perm.as_ptr() as *const _);
    let shifts = _mm512_loadu_si512(shifts.as_ptr() as *const _);
    let field = _mm512_set1_epi16(((1u32 << width) - 1) as i16);
    let lowm = _mm512_set1_epi16(((1u32 << keep) - 1) as i16);
    let keep_x = _mm_cvtsi32_si128(keep as i32);
    let shift_x = _mm_cvtsi32_si128(shift as i32);
    let fifteen = _mm_cvtsi32_si128(15);
    let lut = Lut256::load(lut);
    let n = idx.len().min(out.len());
    let mut i = 0;
    while i + 32 <= n {
        let byte = (first + i) / 8 * width;
        if byte + 64 > packed.len() {
            break;
        }
        let src = _mm512_loadu_si512(packed.as_ptr().add(byte) as *const _);
        let rest = _mm512_and_si512(
            _mm512_srlv_epi16(_mm512_permutexvar_epi8(perm, src), shifts),
            field,
        );
        let ix = _mm512_cvtepu8_epi16(_mm256_loadu_si256(idx.as_ptr().add(i) as *const _));
        let v = lut.get(ix, alphabet);
        let sign = _mm512_sll_epi16(_mm512_srl_epi16(rest, keep_x), fifteen);
        let low = _mm512_sll_epi16(_mm512_and_si512(rest, lowm), shift_x);
        let word = _mm512_or_si512(_mm512_or_si512(sign, v), low);
        _mm512_storeu_si512(out.as_mut_ptr().add(i) as *mut _, word);
        i += 32;
    }
    i
}

/// A table of 256 16-bit values held in eight registers, looked up 32 indices at a time by
/// two-register permutes (only those the alphabet reaches).
#[derive(Clone, Copy)]
struct Lut256([__m512i; 8]);

impl Lut256 {
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn load(lut: &[u16; 256]) -> Lut256 {
        let l = lut.as_ptr() as *const __m512i;
        Lut256([
            _mm512_loadu_si512(l),
            _mm512_loadu_si512(l.add(1)),
            _mm512_loadu_si512(l.add(2)),
            _mm512_loadu_si512(l.add(3)),
            _mm512_loadu_si512(l.add(4)),
            _mm512_loadu_si512(l.add(5)),
            _mm512_loadu_si512(l.add(6)),
            _mm512_loadu_si512(l.add(7)),
        ])
    }

    /// `lut[ix]` for 32 16-bit indices below `alphabet`.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn get(&self, ix: __m512i, alphabet: usize) -> __m512i {
        let t = &self.0;
        let mut v = _mm512_permutex2var_epi16(t[0], ix, t[1]);
        if alphabet > 64 {
            let m6 = _mm512_test_epi16_mask(ix, _mm512_set1_epi16(64));
            let hi = _mm512_permutex2var_epi16(t[2], ix, t[3]);
            v = _mm512_mask_blend_epi16(m6, v, hi);
            if alphabet > 128 {
                let lo2 = _mm512_permutex2var_epi16(t[4], ix, t[5]);
                let hi2 = _mm512_permutex2var_epi16(t[6], ix, t[7]);
                let upper = _mm512_mask_blend_epi16(m6, lo2, hi2);
                let m7 = _mm512_test_epi16_mask(ix, _mm512_set1_epi16(128));
                v = _mm512_mask_blend_epi16(m7, v, upper);
            }
        }
        v
    }
}

/// PAIRS16's reassembly for whole 32-pair groups: each index's pair of symbols from `lut`,
/// then `word = (rest & 0x80) << 8 | v << 7 | rest & 0x7f` for both elements of the pair,
/// 64 words a group. Returns the number of pairs done.
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn combine_pairs(
    lut: &[u16; 256],
    alphabet: usize,
    idx: &[u8],
    rest: &[u8],
    out: &mut [u16],
) -> usize {
    let lut = Lut256::load(lut);
    let n = idx.len().min(out.len() / 2).min(rest.len() / 2);
    let mut i = 0;
    while i + 32 <= n {
        let ix = _mm512_cvtepu8_epi16(_mm256_loadu_si256(idx.as_ptr().add(i) as *const _));
        // 32 pairs: the 64 symbols in element order (little-endian pairs).
        let v = lut.get(ix, alphabet);
        let r = _mm512_loadu_si512(rest.as_ptr().add(2 * i) as *const _);
        let lo = words(_mm512_castsi512_si256(v), _mm512_castsi512_si256(r));
        let hi = words(
            _mm512_extracti64x4_epi64::<1>(v),
            _mm512_extracti64x4_epi64::<1>(r),
        );
        _mm512_storeu_si512(out.as_mut_ptr().add(2 * i) as *mut _, lo);
        _mm512_storeu_si512(out.as_mut_ptr().add(2 * i + 32) as *mut _, hi);
        i += 32;
    }
    i
}

/// 32 PAIRS16 words from 32 symbols and their 32 rest bytes.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn words(e: __m256i, r: __m256i) -> __m512i {
    let (e, r) = (_mm512_cvtepu8_epi16(e), _mm512_cvtepu8_epi16(r));
    let body = _mm512_or_si512(
        _mm512_slli_epi16::<7>(e),
        _mm512_and_si512(r, _mm512_set1_epi16(0x7f)),
    );
    _mm512_or_si512(
        body,
        _mm512_slli_epi16::<8>(_mm512_and_si512(r, _mm512_set1_epi16(0x80))),
    )
}

/// One encoder step for 16 lanes whose symbols' table entries (`freq << 16 | cum`) are `$e`:
/// renormalise (emitting words), then encode.
///
/// The quotient `x / freq` comes from single precision and is then corrected: after
/// renormalisation `x < freq << 20`, so the quotient is below 2^20, and the estimate (relative
/// error ~2^-22: x rounded to 24 bits, a refined reciprocal, one product) is off by less than
/// one, so its truncation is the exact quotient or one off either way — one fix-up each way
/// makes it exact, with the remainder as a by-product.
macro_rules! encode_step {
    // The reciprocal from `rcp14` and one Newton step: r = r0 * (2 - f * r0).
    ($x:ident, $e:expr, $wp:expr, $a:ident) => {
        encode_step!(@ $x, $e, |ff: __m512| {
            let r0 = _mm512_rcp14_ps(ff);
            _mm512_mul_ps(r0, _mm512_fnmadd_ps(ff, r0, _mm512_set1_ps(2.0)))
        }, $wp, $a)
    };
    // The reciprocal given (correctly rounded, so at least as close).
    ($x:ident, $e:expr, recip $r:expr, $wp:expr, $a:ident) => {
        encode_step!(@ $x, $e, |_: __m512| $r, $wp, $a)
    };
    (@ $x:ident, $e:expr, $recip:expr, $wp:expr, $a:ident) => {{
        let e = $e;
        let f = _mm512_srli_epi32::<16>(e);
        let cum = _mm512_and_si512(e, _mm512_set1_epi32(0xffff));
        let x_max = _mm512_slli_epi32::<20>(f);
        let m = _mm512_cmpge_epu32_mask($x, x_max);
        let cnt = m.count_ones() as usize;
        let packed = _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(m, $x));
        $a -= cnt;
        _mm256_mask_storeu_epi16($wp.add($a) as *mut i16, ((1u32 << cnt) - 1) as u16, packed);
        $x = _mm512_mask_srli_epi32($x, m, $x, 16);
        let r = ($recip)(_mm512_cvtepi32_ps(f));
        let mut q = _mm512_cvttps_epu32(_mm512_mul_ps(_mm512_cvtepu32_ps($x), r));
        let mut rem = _mm512_sub_epi32($x, _mm512_mullo_epi32(q, f));
        let zero = _mm512_setzero_si512();
        let low = _mm512_cmplt_epi32_mask(rem, zero);
        q = _mm512_mask_sub_epi32(q, low, q, _mm512_set1_epi32(1));
        rem = _mm512_mask_add_epi32(rem, low, rem, f);
        let high = _mm512_cmpge_epi32_mask(rem, f);
        q = _mm512_mask_add_epi32(q, high, q, _mm512_set1_epi32(1));
        rem = _mm512_mask_sub_epi32(rem, high, rem, f);
        $x = _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32::<12>(q), rem), cum);
    }};
}

/// `t[i]` for each of 16 indices below `32 * K`, the table's first `32 * K` entries held
/// in registers (`t[j]` entries `16j..16j + 16`): one two-register permute per 32 entries on
/// the index's low five bits, then blends on its higher bits.
///
/// # Safety
/// The CPU must support AVX-512 F; inlined into an AVX-512 kernel (its only caller), whose
/// features it then has. It touches no memory, so any index is safe (one of `32 * K` or more
/// reads as itself modulo `32 * K`, never outside).
#[inline(always)]
unsafe fn lookup_regs<const K: usize>(t: &[__m512i; 16], idx: __m512i) -> __m512i {
    let mut p = [_mm512_setzero_si512(); 8];
    for k in 0..K {
        p[k] = _mm512_permutex2var_epi32(t[2 * k], idx, t[2 * k + 1]);
    }
    let (mut n, mut bit) = (K, 32);
    while n > 1 {
        let high = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(bit));
        for j in 0..n / 2 {
            p[j] = _mm512_mask_blend_epi32(high, p[2 * j], p[2 * j + 1]);
        }
        n /= 2;
        bit <<= 1;
    }
    p[0]
}

/// Encodes whole 32-symbol groups (in reverse, as the scalar encoder does) of `syms`, words
/// mapped by `key` (see `rans::WordKey`), whose length is a multiple of 32. Emitted words
/// are written downwards ending at `*at`; lanes that emit in one step store their words in
/// lane order, which is the order the decoder reads. `freq_cum` (as in `encode_step`) is
/// indexed by the key's value, so no symbol-index lookup is needed. A table of up to 32
/// entries (palette indices, block sizes) is held in two registers and looked up by a permute
/// instead of a gather, which the step would otherwise wait on.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; `words` must have room for one word per symbol
/// below `*at`; the table's length must be a power of two (values are masked into it).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn rans_encode_word_groups(
    state: &mut [u32; LANES],
    syms: &[u16],
    key: super::rans::WordKey,
    freq_cum: &[u32],
    words: &mut [u16],
    at: &mut usize,
) {
    // Values are masked into the table: a length not a power of two would let them out.
    assert!(freq_cum.len().is_power_of_two());
    let mask = _mm512_set1_epi32(i32::from(key.mask));
    let shift = _mm_cvtsi32_si128(key.shift as i32);
    let l = i32::from(key.lsb);
    let lsb = _mm512_set1_epi32(l);
    let lsb_shift = _mm_cvtsi32_si128(l);
    let in_table = _mm512_set1_epi32(freq_cum.len() as i32 - 1);
    let add = _mm256_set1_epi16(key.add as i16);
    // Sixteen words, plus the key's `add` (wrapping in 16 bits), widened to 32 bits.
    let words16 = |p: *const u16| {
        _mm512_cvtepu16_epi32(_mm256_add_epi16(
            _mm256_loadu_si256(p as *const __m256i),
            add,
        ))
    };
    let load = |p: *const u16| {
        let w = words16(p);
        let v = _mm512_sll_epi32(
            _mm512_srl_epi32(_mm512_and_si512(w, mask), shift),
            lsb_shift,
        );
        _mm512_and_si512(_mm512_or_si512(v, _mm512_and_si512(w, lsb)), in_table)
    };
    let mut x0 = _mm512_loadu_si512(state.as_ptr() as *const _);
    let mut x1 = _mm512_loadu_si512(state.as_ptr().add(16) as *const _);
    let fc = freq_cum.as_ptr() as *const i32;
    let mut a = *at;
    let wp = words.as_mut_ptr();
    let groups = syms.len() / LANES;
    if freq_cum.len() <= 32 {
        // The entries and their frequencies' reciprocals, each in two registers.
        let mut small = [0u32; 32];
        small[..freq_cum.len()].copy_from_slice(freq_cum);
        let mut recip = [0f32; 32];
        for (r, &e) in recip.iter_mut().zip(&small) {
            if e >> 16 != 0 {
                *r = 1.0 / (e >> 16) as f32;
            }
        }
        let t0 = _mm512_loadu_si512(small.as_ptr() as *const _);
        let t1 = _mm512_loadu_si512(small.as_ptr().add(16) as *const _);
        let r0 = _mm512_loadu_ps(recip.as_ptr());
        let r1 = _mm512_loadu_ps(recip.as_ptr().add(16));
        // Whole words (palette indices, block sizes) need no field extraction.
        let whole = key.is_whole();
        let load_whole = |p: *const u16| _mm512_and_si512(words16(p), in_table);
        macro_rules! small_groups {
            ($load:ident) => {
                for g in (0..groups).rev() {
                    let base = syms.as_ptr().add(g * LANES);
                    let (s1, s0) = ($load(base.add(16)), $load(base));
                    encode_step!(
                        x1,
                        _mm512_permutex2var_epi32(t0, s1, t1),
                        recip _mm512_permutex2var_ps(r0, s1, r1),
                        wp,
                        a
                    );
                    encode_step!(
                        x0,
                        _mm512_permutex2var_epi32(t0, s0, t1),
                        recip _mm512_permutex2var_ps(r0, s0, r1),
                        wp,
                        a
                    );
                }
            };
        }
        if whole {
            small_groups!(load_whole);
        } else {
            small_groups!(load);
        }
    } else {
        // The table entries of a block of groups are looked up first, in a pass of their own:
        // the symbols do not depend on the states, so the steps then only load them and the
        // lookups' latency stays off the states' chains.
        const BLOCK: usize = 64;
        let mut entries = [_mm512_setzero_si512(); 2 * BLOCK];
        macro_rules! blocks {
            ($lookup:expr) => {{
                let mut end = groups;
                while end > 0 {
                    let start = end.saturating_sub(BLOCK);
                    for g in start..end {
                        let base = syms.as_ptr().add(g * LANES);
                        let k = 2 * (g - start);
                        entries[k] = ($lookup)(load(base));
                        entries[k + 1] = ($lookup)(load(base.add(16)));
                    }
                    for g in (start..end).rev() {
                        let k = 2 * (g - start);
                        encode_step!(x1, entries[k + 1], wp, a);
                        encode_step!(x0, entries[k], wp, a);
                    }
                    end = start;
                }
            }};
        }
        if freq_cum.len() <= 256 {
            // Byte symbols (planes, FP8, wide differences): the table fits in sixteen
            // registers, and permutes look it up in about half a gather's time on Zen 4
            // (the gathers were 44% of this kernel's samples).
            let mut padded = [0u32; 256];
            padded[..freq_cum.len()].copy_from_slice(freq_cum);
            let mut t = [_mm512_setzero_si512(); 16];
            for (k, r) in t.iter_mut().enumerate() {
                *r = _mm512_loadu_si512(padded.as_ptr().add(16 * k) as *const _);
            }
            match freq_cum.len() {
                64 => blocks!(|i| lookup_regs::<2>(&t, i)),
                128 => blocks!(|i| lookup_regs::<4>(&t, i)),
                _ => blocks!(|i| lookup_regs::<8>(&t, i)),
            }
        } else {
            blocks!(|i| _mm512_i32gather_epi32::<4>(i, fc));
        }
    }
    _mm512_storeu_si512(state.as_mut_ptr() as *mut _, x0);
    _mm512_storeu_si512(state.as_mut_ptr().add(16) as *mut _, x1);
    *at = a;
}

/// Expands whole 32-element palette blocks: `out[j] = palette[base + idx[j]]`, one permute per
/// block. The indices are one byte each or, with `NIBBLES`, packed two per byte (element 2i in
/// the low nibble: each block's 16 bytes are split into nibbles and interleaved back into
/// order). `palette` must have 32 readable entries past every block's start (the caller pads
/// it). Returns `None` if an index is not below its block's size, else the number of elements
/// done and the new base.
///
/// # Safety
/// The CPU must support AVX-512 F and BW (and VL for the 256-bit compare).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn palette_blocks<const NIBBLES: bool>(
    idx: &[u8],
    sizes: &[u16],
    palette: &[u16],
    mut base: usize,
    out: &mut [u8],
) -> Option<(usize, usize)> {
    let per_block = if NIBBLES { 16 } else { 32 };
    let blocks = (idx.len() / per_block).min(sizes.len()).min(out.len() / 64);
    let low = _mm_set1_epi8(0x0f);
    for (b, &size) in sizes.iter().enumerate().take(blocks) {
        let k = usize::from(size);
        if base + 32 > palette.len() {
            return Some((b * 32, base));
        }
        let ix = if NIBBLES {
            let x = _mm_loadu_si128(idx.as_ptr().add(b * 16) as *const __m128i);
            let lo = _mm_and_si128(x, low);
            let hi = _mm_and_si128(_mm_srli_epi16(x, 4), low);
            _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi))
        } else {
            _mm256_loadu_si256(idx.as_ptr().add(b * 32) as *const __m256i)
        };
        if _mm256_cmpge_epu8_mask(ix, _mm256_set1_epi8(k as i8)) != 0 {
            return None;
        }
        let pal = _mm512_loadu_si512(palette.as_ptr().add(base) as *const _);
        let words = _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(ix), pal);
        _mm512_storeu_si512(out.as_mut_ptr().add(b * 64) as *mut _, words);
        base += k;
    }
    Some((blocks * 32, base))
}

/// Whether the CPU has AVX-512 VBMI2 (16-bit compress and expand, used by the palette
/// builder).
pub fn cpu_has_avx512vbmi2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512vbmi2"))
}

/// Builds the palettes of whole 32-word blocks (the encoder's `palette::build`, same output):
/// each block's distinct values in order of first appearance go to `palette` from `*count`
/// on, its size − 1 to `sizes`, and every word's index in it to `index`. A word's first
/// occurrence comes from comparing the block with each of its words broadcast, latest first,
/// so no table and no chain of dependent loads is involved. `palette` needs 32 writable
/// entries past the last block's start.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VBMI2.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi2")]
pub unsafe fn palette_build_blocks(
    words: &[u16],
    palette: &mut [u16],
    sizes: &mut Vec<u16>,
    index: &mut [u16],
    count: &mut usize,
) {
    let blocks = words.len() / 32;
    // The stores below write whole blocks at `count` and at each block's index.
    assert!(index.len() >= blocks * 32 && palette.len() >= *count + 32 * blocks);
    let mut iota = [0u16; 32];
    for (j, v) in iota.iter_mut().enumerate() {
        *v = j as u16;
    }
    let iota = _mm512_loadu_si512(iota.as_ptr() as *const _);
    let mut c = *count;
    for b in 0..blocks {
        let p = words.as_ptr().add(b * 32);
        let v = _mm512_loadu_si512(p as *const _);
        let mut first = iota;
        // Latest first, so the earliest equal position is the one left standing.
        for j in (0..32).rev() {
            let eq = _mm512_cmpeq_epi16_mask(v, _mm512_set1_epi16(*p.add(j) as i16));
            first = _mm512_mask_mov_epi16(first, eq, _mm512_set1_epi16(j as i16));
        }
        let fresh = _mm512_cmpeq_epi16_mask(first, iota);
        let k = fresh.count_ones() as usize;
        _mm512_storeu_si512(
            palette.as_mut_ptr().add(c) as *mut _,
            _mm512_maskz_compress_epi16(fresh, v),
        );
        // rank[j] = how many fresh positions come before j (for fresh j), so a word's index
        // is the rank of its first occurrence.
        let rank = _mm512_maskz_expand_epi16(fresh, iota);
        _mm512_storeu_si512(
            index.as_mut_ptr().add(b * 32) as *mut _,
            _mm512_permutexvar_epi16(first, rank),
        );
        sizes.push(k as u16 - 1);
        c += k;
    }
    *count = c;
}

/// The positions and values of the nonzero words of whole 32-word runs, appended to `at` and
/// `values` by compressing each run's nonzero lanes (no branch per word). Stops with `false`
/// as soon as more than `limit` are found in all (the vectors' lengths, equal, count); both
/// vectors need room for `limit + 64` entries (checked).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VBMI2; `words.len()` must be a multiple of 32 and
/// below 2^32.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi2")]
pub unsafe fn nonzero_runs(
    words: &[u16],
    at: &mut Vec<u32>,
    values: &mut Vec<u16>,
    limit: usize,
) -> bool {
    // Every store starts at the count so far, at most `limit`, and writes 32 entries.
    assert!(
        at.len() == values.len()
            && at.len() <= limit
            && at.capacity() >= limit + 64
            && values.capacity() >= limit + 64
    );
    let mut k = at.len();
    let (ap, vp) = (at.as_mut_ptr(), values.as_mut_ptr());
    let lo = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let hi = _mm512_add_epi32(lo, _mm512_set1_epi32(16));
    for r in 0..words.len() / 32 {
        let v = _mm512_loadu_si512(words.as_ptr().add(32 * r) as *const _);
        let m = _mm512_test_epi16_mask(v, v);
        if m == 0 {
            continue;
        }
        let first = _mm512_set1_epi32((32 * r) as i32);
        let (m0, m1) = (m as u16, (m >> 16) as u16);
        let c0 = m0.count_ones() as usize;
        _mm512_storeu_si512(
            ap.add(k) as *mut _,
            _mm512_maskz_compress_epi32(m0, _mm512_add_epi32(lo, first)),
        );
        _mm512_storeu_si512(
            ap.add(k + c0) as *mut _,
            _mm512_maskz_compress_epi32(m1, _mm512_add_epi32(hi, first)),
        );
        _mm512_storeu_si512(vp.add(k) as *mut _, _mm512_maskz_compress_epi16(m, v));
        k += m.count_ones() as usize;
        if k > limit {
            return false;
        }
    }
    at.set_len(k);
    values.set_len(k);
    true
}
