//! Multi-buffer MD5: one message per SIMD lane, sixteen at a time with AVX-512, eight with AVX2.
//!
//! A single MD5 stream is a serial chain of dependent steps, so one core hashes one tensor at
//! about 0.8 GB/s however wide its vectors are (see `compress`). The receipts are many
//! independent streams, though: laying sixteen of them side by side in the 32-bit lanes of a
//! zmm register runs the same chain for all sixteen at once. Digests are bit-identical to the `md-5` crate's (tests
//! compare them); without AVX2 every job goes through the one-stream `compress` (md-5's own on
//! targets where the empty-asm fence it relies on is not written).

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
use md5::block_api::compress;
use rayon::prelude::*;

const BLOCK: usize = 64;
const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Streaming MD5 whose digests equal md-5's. Cheap to create; unlike md-5's hasher its state
/// is plain data, so [`update_many`] can move it in and out of SIMD lanes.
#[derive(Clone, Debug)]
pub struct Md5 {
    state: [u32; 4],
    /// Bytes fed so far, modulo 2^64 as MD5's length field is.
    len: u64,
    buf: [u8; BLOCK],
    /// Bytes in `buf`; always below `BLOCK` between calls.
    buf_len: usize,
}

impl Default for Md5 {
    fn default() -> Self {
        Self::new()
    }
}

impl Md5 {
    pub fn new() -> Self {
        Md5 {
            state: INIT,
            len: 0,
            buf: [0; BLOCK],
            buf_len: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        let rest = self.top_up(data);
        let (blocks, tail) = rest.as_chunks::<BLOCK>();
        compress(&mut self.state, blocks);
        self.stash(tail);
    }

    pub fn finalize(mut self) -> [u8; 16] {
        let (last, blocks) = padding(&self.buf[..self.buf_len], self.len);
        compress(&mut self.state, &last[..blocks]);
        digest(&self.state)
    }

    /// Lowercase hex of [`Md5::finalize`].
    pub fn hex(self) -> String {
        crate::store::hex(&self.finalize())
    }

    /// Counts `data` and completes the partial block from it. Returns what is left, which
    /// starts on a block boundary: if the partial block could not be completed, nothing.
    fn top_up<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.buf_len == 0 {
            return data;
        }
        let take = (BLOCK - self.buf_len).min(data.len());
        self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
        self.buf_len += take;
        if self.buf_len == BLOCK {
            compress(&mut self.state, &[self.buf]);
            self.buf_len = 0;
        }
        &data[take..]
    }

    /// Keeps a tail shorter than a block for later. Only called right after `top_up` and the
    /// whole blocks, so either `tail` is empty or the buffer is.
    fn stash(&mut self, tail: &[u8]) {
        let end = self.buf_len + tail.len();
        self.buf[self.buf_len..end].copy_from_slice(tail);
        self.buf_len = end;
    }
}

/// Feeds each job's bytes into its hasher, as if `job.0.update(job.1)` were called for each,
/// but hashing up to 16 jobs at once in AVX-512 lanes when the CPU has AVX-512 F (8 in AVX2
/// lanes when it has AVX2), one by one otherwise. Single-threaded: callers split the jobs
/// across threads themselves.
pub fn update_many(jobs: &mut [(&mut Md5, &[u8])]) {
    update_many_with(jobs, Widest::Avx512);
}

/// Digests of whole messages.
pub fn digest_many(msgs: &[&[u8]]) -> Vec<[u8; 16]> {
    digest_many_with(msgs, Widest::Avx512)
}

/// Digests of whole messages on all of rayon's threads: the messages are dealt out longest
/// first to the least loaded thread, and each thread hashes its share with `digest_many`.
pub fn digest_many_par(msgs: &[&[u8]]) -> Vec<[u8; 16]> {
    let threads = rayon::current_num_threads().max(1);
    let mut order: Vec<usize> = (0..msgs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(msgs[i].len()));
    let mut shares: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); threads];
    for i in order {
        let least = shares
            .iter_mut()
            .min_by_key(|s| s.0)
            .expect("one thread at least");
        least.0 += msgs[i].len();
        least.1.push(i);
    }
    let digests: Vec<Vec<[u8; 16]>> = shares
        .par_iter()
        .map(|(_, share)| {
            let mine: Vec<&[u8]> = share.iter().map(|&i| msgs[i]).collect();
            digest_many(&mine)
        })
        .collect();
    let mut out = vec![[0u8; 16]; msgs.len()];
    for ((_, share), ds) in shares.iter().zip(digests) {
        for (&i, d) in share.iter().zip(ds) {
            out[i] = d;
        }
    }
    out
}

fn digest_many_with(msgs: &[&[u8]], widest: Widest) -> Vec<[u8; 16]> {
    // The padding goes through the lanes too: one scalar block per message would cost as much
    // as hashing a 1 KiB message in the lanes. It only depends on the tail and the length.
    let pads: Vec<_> = msgs
        .iter()
        .map(|m| padding(m.as_chunks::<BLOCK>().1, m.len() as u64))
        .collect();
    let mut states = vec![INIT; msgs.len()];
    let mut streams: Vec<Stream<'_>> = states
        .iter_mut()
        .zip(msgs)
        .filter(|(_, m)| m.len() >= BLOCK)
        .map(|(state, m)| Stream {
            state,
            blocks: m.as_chunks::<BLOCK>().0,
        })
        .collect();
    hash_streams(&mut streams, widest);
    let mut streams: Vec<Stream<'_>> = states
        .iter_mut()
        .zip(&pads)
        .map(|(state, (last, blocks))| Stream {
            state,
            blocks: &last[..*blocks],
        })
        .collect();
    hash_streams(&mut streams, widest);
    states.iter().map(digest).collect()
}

/// The final block or two of a message of `len` bytes ending in `tail` (under a block): the
/// tail, 0x80, zeros and the length in bits, which spills into a second block when the tail
/// leaves no room for it.
fn padding(tail: &[u8], len: u64) -> ([[u8; BLOCK]; 2], usize) {
    let n = tail.len();
    let mut last = [[0u8; BLOCK]; 2];
    let flat = last.as_flattened_mut();
    flat[..n].copy_from_slice(tail);
    flat[n] = 0x80;
    let blocks = if n < BLOCK - 8 { 1 } else { 2 };
    let end = blocks * BLOCK;
    flat[end - 8..end].copy_from_slice(&len.wrapping_mul(8).to_le_bytes());
    (last, blocks)
}

/// The state as bytes: the digest, once the padding is hashed.
fn digest(state: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, s) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&s.to_le_bytes());
    }
    out
}

/// The whole blocks of one job, and the state they hash into.
struct Stream<'a> {
    state: &'a mut [u32; 4],
    blocks: &'a [[u8; BLOCK]],
}

/// The widest kernel a call may use, when the CPU has it; tests force each in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "only tests ask for narrower kernels")
)]
enum Widest {
    Scalar,
    Avx2,
    Avx512,
}

fn update_many_with(jobs: &mut [(&mut Md5, &[u8])], widest: Widest) {
    let mut streams = Vec::with_capacity(jobs.len());
    for (h, data) in jobs.iter_mut() {
        let rest = h.top_up(data);
        let (blocks, tail) = rest.as_chunks::<BLOCK>();
        // The tail is only buffered, not hashed, so it may go in before the blocks are done.
        h.stash(tail);
        if !blocks.is_empty() {
            streams.push(Stream {
                state: &mut h.state,
                blocks,
            });
        }
    }
    hash_streams(&mut streams, widest);
}

fn hash_streams(streams: &mut [Stream<'_>], widest: Widest) {
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = lanes::Kernel::pick(widest) {
        if streams.len() >= lanes::MIN_ACTIVE {
            lanes::run(streams, kernel);
            return;
        }
    }
    let _ = widest;
    scalar_pairs(streams);
}

/// Without lanes: the streams on two scalar chains side by side (`compress2`), each stream
/// to the less loaded chain, longest first; the chain left alone at the end runs on its own.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn scalar_pairs(streams: &mut [Stream<'_>]) {
    let lens: Vec<usize> = streams.iter().map(|s| s.blocks.len()).collect();
    let len = |i: usize| lens[i];
    let mut order: Vec<usize> = (0..streams.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(len(i)));
    let (mut chains, mut load) = ([Vec::new(), Vec::new()], [0usize; 2]);
    for i in order {
        let c = usize::from(load[1] < load[0]);
        load[c] += len(i);
        chains[c].push(i);
    }
    // Per chain: the stream on it, the next block, the running state.
    let mut queues = chains.map(|c| c.into_iter());
    let mut on: [Option<(usize, usize, [u32; 4])>; 2] =
        std::array::from_fn(|c| queues[c].next().map(|i| (i, 0, *streams[i].state)));
    loop {
        match &mut on {
            [Some(x), Some(y)] => {
                let n = (len(x.0) - x.1).min(len(y.0) - y.1);
                let (xs, ys) = (
                    &streams[x.0].blocks[x.1..][..n],
                    &streams[y.0].blocks[y.1..][..n],
                );
                compress2(&mut x.2, xs, &mut y.2, ys);
                x.1 += n;
                y.1 += n;
            }
            [Some(x), None] | [None, Some(x)] => {
                compress(&mut x.2, &streams[x.0].blocks[x.1..]);
                x.1 = len(x.0);
            }
            [None, None] => break,
        }
        for c in 0..2 {
            if let Some((i, at, state)) = on[c] {
                if at == len(i) {
                    *streams[i].state = state;
                    on[c] = queues[c].next().map(|i| (i, 0, *streams[i].state));
                }
            }
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn scalar_pairs(streams: &mut [Stream<'_>]) {
    for s in streams {
        compress(s.state, s.blocks);
    }
}

/// RFC 1321's sine constants.
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// The 64 steps of a block, as `$step!(round, a, b, c, d, i, g, s)`: step `i`, of round
/// F, G, H or I, updates `a` with message word `g` and rotation `s`. The state variables
/// come in as arguments so that the steps can name the caller's locals (one token tree each:
/// a variable, or a group of them for chains hashed side by side).
macro_rules! md5_steps {
    ($step:ident, $a:tt, $b:tt, $c:tt, $d:tt) => {
        md5_steps!(@4 $step, $a, $b, $c, $d, F, 0, [0, 1, 2, 3], [7, 12, 17, 22]);
        md5_steps!(@4 $step, $a, $b, $c, $d, F, 4, [4, 5, 6, 7], [7, 12, 17, 22]);
        md5_steps!(@4 $step, $a, $b, $c, $d, F, 8, [8, 9, 10, 11], [7, 12, 17, 22]);
        md5_steps!(@4 $step, $a, $b, $c, $d, F, 12, [12, 13, 14, 15], [7, 12, 17, 22]);
        md5_steps!(@4 $step, $a, $b, $c, $d, G, 16, [1, 6, 11, 0], [5, 9, 14, 20]);
        md5_steps!(@4 $step, $a, $b, $c, $d, G, 20, [5, 10, 15, 4], [5, 9, 14, 20]);
        md5_steps!(@4 $step, $a, $b, $c, $d, G, 24, [9, 14, 3, 8], [5, 9, 14, 20]);
        md5_steps!(@4 $step, $a, $b, $c, $d, G, 28, [13, 2, 7, 12], [5, 9, 14, 20]);
        md5_steps!(@4 $step, $a, $b, $c, $d, H, 32, [5, 8, 11, 14], [4, 11, 16, 23]);
        md5_steps!(@4 $step, $a, $b, $c, $d, H, 36, [1, 4, 7, 10], [4, 11, 16, 23]);
        md5_steps!(@4 $step, $a, $b, $c, $d, H, 40, [13, 0, 3, 6], [4, 11, 16, 23]);
        md5_steps!(@4 $step, $a, $b, $c, $d, H, 44, [9, 12, 15, 2], [4, 11, 16, 23]);
        md5_steps!(@4 $step, $a, $b, $c, $d, I, 48, [0, 7, 14, 5], [6, 10, 15, 21]);
        md5_steps!(@4 $step, $a, $b, $c, $d, I, 52, [12, 3, 10, 1], [6, 10, 15, 21]);
        md5_steps!(@4 $step, $a, $b, $c, $d, I, 56, [8, 15, 6, 13], [6, 10, 15, 21]);
        md5_steps!(@4 $step, $a, $b, $c, $d, I, 60, [4, 11, 2, 9], [6, 10, 15, 21]);
    };
    (@4 $step:ident, $a:tt, $b:tt, $c:tt, $d:tt, $r:ident, $i:expr,
        [$g0:literal, $g1:literal, $g2:literal, $g3:literal],
        [$s0:literal, $s1:literal, $s2:literal, $s3:literal]) => {
        $step!($r, $a, $b, $c, $d, $i, $g0, $s0);
        $step!($r, $d, $a, $b, $c, $i + 1, $g1, $s1);
        $step!($r, $c, $d, $a, $b, $i + 2, $g2, $s2);
        $step!($r, $b, $c, $d, $a, $i + 3, $g3, $s3);
    };
}

/// `a + m + k` of a step does not wait for the step before, only `f` and what follows do.
/// Left alone, LLVM folds `f` into the front of that sum, and a step then waits on f,
/// three adds, the rotate and an add instead of f, one add, the rotate and an add: that
/// cost 17% (7.9 against 9.5 GB/s with AVX-512 on Zen 4). An empty asm fences the sum off.
macro_rules! fence {
    // A 32-bit general register, named as one so that the (empty) template is exact.
    (reg, $x:ident) => {
        // SAFETY: no instructions; the register comes out as it went in.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            std::arch::asm!("/* {x:e} */", x = inout(reg) $x,
                options(pure, nomem, nostack, preserves_flags));
            #[cfg(target_arch = "aarch64")]
            std::arch::asm!("/* {x:w} */", x = inout(reg) $x,
                options(pure, nomem, nostack, preserves_flags));
        }
    };
    ($class:ident, $x:ident) => {
        // SAFETY: no instructions; the register comes out as it went in.
        unsafe {
            std::arch::asm!("/* {x} */", x = inout($class) $x,
                options(pure, nomem, nostack, preserves_flags));
        }
    };
}

/// Step `i` of round `r` on one chain: `a` updated from `b`, `c`, `d`, message word `m[g]`
/// and rotation `s`. Each round's function is written in the form with the fewest operations
/// on the newest word `b`; the rest of it, like `a + m + k`, is fenced off the chain.
macro_rules! md5_step {
    ($m:ident, $r:ident, $a:ident, $b:ident, $c:ident, $d:ident, $i:expr, $g:literal,
        $s:literal) => {
        let mut t = $a.wrapping_add($m[$g]).wrapping_add(K[$i]);
        md5_step!(@$r t, $a, $b, $c, $d, $s);
    };
    // b ? c : d, as d ^ (b & (c ^ d)).
    (@F $t:ident, $a:ident, $b:ident, $c:ident, $d:ident, $s:literal) => {
        let mut cd = $c ^ $d;
        fence!(reg, $t);
        fence!(reg, cd);
        $a = $b.wrapping_add($t.wrapping_add($d ^ ($b & cd)).rotate_left($s));
    };
    // d ? b : c, as (b & d) + (c & !d): the two have no bit in common.
    (@G $t:ident, $a:ident, $b:ident, $c:ident, $d:ident, $s:literal) => {
        $t = $t.wrapping_add($c & !$d);
        fence!(reg, $t);
        $a = $b.wrapping_add($t.wrapping_add($b & $d).rotate_left($s));
    };
    // b ^ c ^ d.
    (@H $t:ident, $a:ident, $b:ident, $c:ident, $d:ident, $s:literal) => {
        let mut cd = $c ^ $d;
        fence!(reg, $t);
        fence!(reg, cd);
        $a = $b.wrapping_add($t.wrapping_add($b ^ cd).rotate_left($s));
    };
    // c ^ (b | !d).
    (@I $t:ident, $a:ident, $b:ident, $c:ident, $d:ident, $s:literal) => {
        let mut nd = !$d;
        fence!(reg, $t);
        fence!(reg, nd);
        $a = $b.wrapping_add($t.wrapping_add($c ^ ($b | nd)).rotate_left($s));
    };
}

/// A block's sixteen little-endian message words.
#[inline(always)]
fn words(block: &[u8; BLOCK]) -> [u32; 16] {
    std::array::from_fn(|i| {
        u32::from_le_bytes([
            block[4 * i],
            block[4 * i + 1],
            block[4 * i + 2],
            block[4 * i + 3],
        ])
    })
}

/// One stream's blocks, one at a time: MD5's own chain, scheduled so that a step waits only on
/// what it must. Each round's function is written in the form with the fewest operations on
/// the newest word `b`: the rest of it (`c ^ d`, `c & !d`, `!d`), like `a + m + k`, is fenced
/// off the chain (see `fence!`), so a step costs four or five operations of latency instead
/// of the six to eight LLVM makes of the textbook forms. Measured on Zen 4 (criterion,
/// `md5` group): 772 MiB/s against md-5's 611. The same chain in one lane of an xmm register
/// (ternary-logic round functions) measured 630 MiB/s. Digests are md-5's (tests compare them).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn compress(state: &mut [u32; 4], blocks: &[[u8; BLOCK]]) {
    let [mut a, mut b, mut c, mut d] = *state;
    for block in blocks {
        let m = words(block);
        let (a0, b0, c0, d0) = (a, b, c, d);
        macro_rules! step {
            ($r:ident, $a:ident, $b:ident, $c:ident, $d:ident, $i:expr, $g:literal, $s:literal) => {
                md5_step!(m, $r, $a, $b, $c, $d, $i, $g, $s);
            };
        }
        md5_steps!(step, a, b, c, d);
        a = a.wrapping_add(a0);
        b = b.wrapping_add(b0);
        c = c.wrapping_add(c0);
        d = d.wrapping_add(d0);
    }
    *state = [a, b, c, d];
}

/// Two streams' blocks side by side, one block of each at a time (as many of each): the two
/// chains interleave, each one's operations filling the other's waits, so one core hashes
/// both at nearly one stream's speed each.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn compress2(
    one: &mut [u32; 4],
    one_blocks: &[[u8; BLOCK]],
    two: &mut [u32; 4],
    two_blocks: &[[u8; BLOCK]],
) {
    debug_assert_eq!(one_blocks.len(), two_blocks.len());
    let [mut a, mut b, mut c, mut d] = *one;
    let [mut e, mut f, mut g, mut h] = *two;
    for (x, y) in one_blocks.iter().zip(two_blocks) {
        let (m, n) = (words(x), words(y));
        let before = [a, b, c, d, e, f, g, h];
        macro_rules! step2 {
            ($r:ident, ($a:ident, $e:ident), ($b:ident, $f:ident), ($c:ident, $g:ident),
                ($d:ident, $h:ident), $i:expr, $w:literal, $s:literal) => {
                md5_step!(m, $r, $a, $b, $c, $d, $i, $w, $s);
                md5_step!(n, $r, $e, $f, $g, $h, $i, $w, $s);
            };
        }
        md5_steps!(step2, (a, e), (b, f), (c, g), (d, h));
        let after = [a, b, c, d, e, f, g, h];
        [a, b, c, d, e, f, g, h] = std::array::from_fn(|i| after[i].wrapping_add(before[i]));
    }
    *one = [a, b, c, d];
    *two = [e, f, g, h];
}

#[cfg(target_arch = "x86_64")]
mod lanes {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{compress, compress2, Stream, Widest, BLOCK, K};

    /// With fewer busy lanes than this, the rest is hashed one stream at a time: one lane's
    /// share of the vector rate is below a scalar stream's (measured on Zen 4: AVX-512 0.61
    /// GB/s, AVX2 0.58, `compress` 0.81), two lanes' is above it (1.2 GB/s both; two busy
    /// lanes alone run as two interleaved scalar chains instead, 1.4 GB/s, see `two_scalar`).
    pub(super) const MIN_ACTIVE: usize = 2;

    /// A lane kernel the CPU supports: the private field leaves `pick` the only way to get one.
    #[derive(Clone, Copy)]
    pub(super) struct Kernel {
        avx512: bool,
    }

    impl Kernel {
        /// The widest kernel the CPU has, up to `widest`.
        pub(super) fn pick(widest: Widest) -> Option<Kernel> {
            static HAS: OnceLock<(bool, bool)> = OnceLock::new();
            let &(avx512, avx2) = HAS.get_or_init(|| {
                (
                    is_x86_feature_detected!("avx512f"),
                    is_x86_feature_detected!("avx2"),
                )
            });
            match widest {
                Widest::Avx512 if avx512 => Some(Kernel { avx512: true }),
                Widest::Avx512 | Widest::Avx2 if avx2 => Some(Kernel { avx512: false }),
                _ => None,
            }
        }

        fn lanes(self) -> usize {
            if self.avx512 {
                16
            } else {
                8
            }
        }

        /// Hashes `n` blocks of each lane's row into `state` (word `w` of lane `l` in
        /// `state[w][l]`), `n` being the shortest row's length among the kernel's lanes, and
        /// returns `n`.
        fn blocks(self, state: &mut [[u32; 16]; 4], rows: &[&[[u8; BLOCK]]; 16]) -> usize {
            if self.avx512 {
                // SAFETY: `pick` found AVX-512 F.
                unsafe { blocks16(state, rows) }
            } else {
                // SAFETY: `pick` found AVX2.
                unsafe { blocks8(state, rows) }
            }
        }
    }

    /// Blocks `start..end` of one stream, hashed on one lane.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Piece {
        pub(super) stream: usize,
        pub(super) start: usize,
        pub(super) end: usize,
    }

    /// Lays the streams out on `lanes` (at most 16) lanes. The lanes move in lockstep, so a
    /// block is a unit of time and no schedule is shorter than the longest stream or the total
    /// spread evenly; and once one or two lanes are left busy, `run` finishes them in scalar
    /// code, which is faster than those lanes of the vector kernel. So a stream longer than an even
    /// share of what is left (itself included) gets a lane of its own, longest first, and the
    /// rest are packed on the other lanes with McNaughton's wrap-around rule: the lanes that
    /// run to the end are as few as they can be, and the others are as short as they can be.
    /// (A 23 MB embedding hashed beside 9 MB of small tensors used to share lane 1 with all of
    /// them, keeping the vector kernel running for 9 MB instead of 9/15.)
    ///
    /// McNaughton's rule, for a span at least as long as every stream it packs: a lane takes
    /// streams until it is `span` long, then the next lane; a stream that overflows a lane is
    /// cut in two: its tail ends that lane and its head starts the next one at time 0,
    /// finishing before the tail starts. Lane `l` gets `pieces[bounds[l]..bounds[l + 1]]`;
    /// lanes past `lanes` get nothing.
    pub(super) fn plan(streams: &[Stream<'_>], lanes: usize) -> (Vec<Piece>, [usize; 17]) {
        let lanes = lanes.clamp(1, 16);
        let len = |i: usize| streams[i].blocks.len();
        let mut longest_first: Vec<usize> = (0..streams.len()).collect();
        longest_first.sort_by_key(|&i| std::cmp::Reverse(len(i)));
        let mut rest: usize = streams.iter().map(|s| s.blocks.len()).sum();
        let mut alone = Vec::new();
        for &i in &longest_first {
            // Exactly, not rounded up: a stream of 282 blocks among 4,497 on 16 lanes (an even
            // share of 281.06) goes alone, and the other lanes then end at 281.
            if alone.len() + 1 == lanes || len(i) * (lanes - alone.len()) <= rest {
                break;
            }
            rest -= len(i);
            alone.push(i);
        }
        let mut pieces = Vec::with_capacity(streams.len() + 16);
        let mut bounds = [0; 17];
        for (lane, &i) in alone.iter().enumerate() {
            pieces.push(Piece {
                stream: i,
                start: 0,
                end: len(i),
            });
            bounds[lane + 1] = pieces.len();
        }
        // The loop stopped at the first stream no longer than an even share (so no longer than
        // this), or with one lane left.
        let span = rest.div_ceil(lanes - alone.len());
        let (mut lane, mut t) = (alone.len(), 0);
        for i in (0..streams.len()).filter(|i| !alone.contains(i)) {
            let len = len(i);
            if t + len > span {
                let cut = len - (span - t);
                pieces.push(Piece {
                    stream: i,
                    start: cut,
                    end: len,
                });
                lane += 1;
                bounds[lane] = pieces.len();
                pieces.push(Piece {
                    stream: i,
                    start: 0,
                    end: cut,
                });
                t = cut;
            } else {
                pieces.push(Piece {
                    stream: i,
                    start: 0,
                    end: len,
                });
                t += len;
            }
            if t == span {
                lane += 1;
                bounds[lane] = pieces.len();
                t = 0;
            }
        }
        // The rest fills at most `lanes - alone.len()` lanes of `span`, so `lane <= lanes`.
        for b in &mut bounds[lane + 1..] {
            *b = pieces.len();
        }
        (pieces, bounds)
    }

    fn lane_state(state: &[[u32; 16]; 4], l: usize) -> [u32; 4] {
        [state[0][l], state[1][l], state[2][l], state[3][l]]
    }

    fn set_lane_state(state: &mut [[u32; 16]; 4], l: usize, s: [u32; 4]) {
        for (w, s) in state.iter_mut().zip(s) {
            w[l] = s;
        }
    }

    /// The kernels' step for lanes `one` and `two` alone: both rows to the shorter one's
    /// length, in scalar code, two chains side by side (`compress2`); returns the blocks done.
    /// Measured on Zen 4 (criterion, `md5/update_many/2x32MiB`): 1.32 GiB/s for the two,
    /// against 1.14 for two busy lanes of the AVX-512 kernel.
    fn two_scalar(
        state: &mut [[u32; 16]; 4],
        rows: &[&[[u8; BLOCK]]; 16],
        one: usize,
        two: usize,
    ) -> usize {
        let n = rows[one].len().min(rows[two].len());
        let (mut x, mut y) = (lane_state(state, one), lane_state(state, two));
        compress2(&mut x, &rows[one][..n], &mut y, &rows[two][..n]);
        set_lane_state(state, one, x);
        set_lane_state(state, two, y);
        n
    }

    /// Hashes every stream on the kernel's lanes, following `plan`.
    pub(super) fn run(streams: &mut [Stream<'_>], kernel: Kernel) {
        let (pieces, bounds) = plan(streams, kernel.lanes());
        let mut state = [[0u32; 16]; 4];
        // Lane `l` is on `pieces[at[l]]`, at block `pos[l]`, until `at[l] == bounds[l + 1]`.
        let mut at: [usize; 16] = std::array::from_fn(|l| bounds[l]);
        let mut pos = [0usize; 16];
        let mut moved = [true; 16];
        loop {
            // Loads come after every save of the step before: a stream's head may end on one
            // lane at the very step its tail starts on another.
            for l in 0..16 {
                if std::mem::take(&mut moved[l]) && at[l] < bounds[l + 1] {
                    let p = pieces[at[l]];
                    for (w, s) in state.iter_mut().zip(*streams[p.stream].state) {
                        w[l] = s;
                    }
                    pos[l] = p.start;
                }
            }
            let busy: [bool; 16] = std::array::from_fn(|l| at[l] < bounds[l + 1]);
            let Some(first) = busy.iter().position(|&b| b) else {
                break;
            };
            if busy.iter().filter(|&&b| b).count() < MIN_ACTIVE {
                // Heads sit on higher lanes than their tails, so going down keeps stream order.
                for l in (0..16).filter(|&l| busy[l]).rev() {
                    let p = pieces[at[l]];
                    let mut st = lane_state(&state, l);
                    compress(&mut st, &streams[p.stream].blocks[pos[l]..p.end]);
                    *streams[p.stream].state = st;
                    for p in &pieces[at[l] + 1..bounds[l + 1]] {
                        compress(
                            streams[p.stream].state,
                            &streams[p.stream].blocks[p.start..p.end],
                        );
                    }
                }
                break;
            }
            // Idle lanes hash a copy of a busy lane's blocks into state nobody reads back.
            let rows: [&[[u8; BLOCK]]; 16] = std::array::from_fn(|l| {
                let l = if busy[l] { l } else { first };
                let p = pieces[at[l]];
                &streams[p.stream].blocks[pos[l]..p.end]
            });
            let n = match busy.iter().rposition(|&b| b) {
                Some(last) if busy.iter().filter(|&&b| b).count() == 2 => {
                    two_scalar(&mut state, &rows, first, last)
                }
                _ => kernel.blocks(&mut state, &rows),
            };
            for l in (0..16).filter(|&l| busy[l]) {
                let p = pieces[at[l]];
                pos[l] += n;
                if pos[l] == p.end {
                    *streams[p.stream].state = lane_state(&state, l);
                    at[l] += 1;
                    moved[l] = true;
                }
            }
        }
    }

    /// `n` blocks on 16 lanes, see [`Kernel::blocks`].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    unsafe fn blocks16(state: &mut [[u32; 16]; 4], rows: &[&[[u8; BLOCK]]; 16]) -> usize {
        let n = rows.iter().map(|r| r.len()).min().unwrap_or(0);
        // Cut to `n` so the indexing below needs no bounds checks.
        let rows: [&[[u8; BLOCK]]; 16] = std::array::from_fn(|l| &rows[l][..n]);
        // SAFETY: each row of `state` is 64 bytes; unaligned loads.
        let [mut a, mut b, mut c, mut d] =
            std::array::from_fn(|i| unsafe { _mm512_loadu_si512(state[i].as_ptr().cast()) });
        #[expect(
            clippy::needless_range_loop,
            reason = "k picks a block in each of 16 rows"
        )]
        for k in 0..n {
            // SAFETY: each load reads one whole block, rows[l][k].
            let m: [__m512i; 16] =
                std::array::from_fn(|l| unsafe { _mm512_loadu_si512(rows[l][k].as_ptr().cast()) });
            let w = transpose16(m);
            let (a0, b0, c0, d0) = (a, b, c, d);
            // Each round's function is one ternary-logic op; its truth table is the function
            // evaluated on the operand patterns b = 0xf0, c = 0xcc, d = 0xaa.
            macro_rules! f {
                // b ? c : d
                (F, $b:ident, $c:ident, $d:ident) => {
                    _mm512_ternarylogic_epi32::<0xca>($b, $c, $d)
                };
                // d ? b : c
                (G, $b:ident, $c:ident, $d:ident) => {
                    _mm512_ternarylogic_epi32::<0xe4>($b, $c, $d)
                };
                // b ^ c ^ d
                (H, $b:ident, $c:ident, $d:ident) => {
                    _mm512_ternarylogic_epi32::<0x96>($b, $c, $d)
                };
                // c ^ (b | !d)
                (I, $b:ident, $c:ident, $d:ident) => {
                    _mm512_ternarylogic_epi32::<0x39>($b, $c, $d)
                };
            }
            macro_rules! step {
                (
                    $r:ident, $a:ident, $b:ident, $c:ident, $d:ident,
                    $i:expr, $g:literal, $s:literal
                ) => {
                    let mut t = _mm512_add_epi32(
                        $a,
                        _mm512_add_epi32(w[$g], _mm512_set1_epi32(K[$i] as i32)),
                    );
                    fence!(zmm_reg, t);
                    $a = _mm512_add_epi32(
                        $b,
                        _mm512_rol_epi32::<$s>(_mm512_add_epi32(t, f!($r, $b, $c, $d))),
                    );
                };
            }
            md5_steps!(step, a, b, c, d);
            a = _mm512_add_epi32(a, a0);
            b = _mm512_add_epi32(b, b0);
            c = _mm512_add_epi32(c, c0);
            d = _mm512_add_epi32(d, d0);
        }
        for (row, v) in state.iter_mut().zip([a, b, c, d]) {
            // SAFETY: as for the loads.
            unsafe { _mm512_storeu_si512(row.as_mut_ptr().cast(), v) };
        }
        n
    }

    /// Rows are lanes' blocks; the result's vector `j` holds word `j` of every lane's block.
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        // Interleave dwords, then qwords: each 128-bit part of `q[4g + j]` is word `4p + j` of
        // rows 4g..4g+4, `p` being the part's position.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        let mut q = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (x, y) = (4 * g, 4 * g + 2);
            q[4 * g] = _mm512_unpacklo_epi64(t[x], t[y]);
            q[4 * g + 1] = _mm512_unpackhi_epi64(t[x], t[y]);
            q[4 * g + 2] = _mm512_unpacklo_epi64(t[x + 1], t[y + 1]);
            q[4 * g + 3] = _mm512_unpackhi_epi64(t[x + 1], t[y + 1]);
        }
        // Then a 4x4 transpose of 128-bit parts across the four row groups.
        let mut w = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            let lo01 = _mm512_shuffle_i32x4::<0x44>(q[j], q[4 + j]);
            let hi01 = _mm512_shuffle_i32x4::<0xee>(q[j], q[4 + j]);
            let lo23 = _mm512_shuffle_i32x4::<0x44>(q[8 + j], q[12 + j]);
            let hi23 = _mm512_shuffle_i32x4::<0xee>(q[8 + j], q[12 + j]);
            w[j] = _mm512_shuffle_i32x4::<0x88>(lo01, lo23);
            w[4 + j] = _mm512_shuffle_i32x4::<0xdd>(lo01, lo23);
            w[8 + j] = _mm512_shuffle_i32x4::<0x88>(hi01, hi23);
            w[12 + j] = _mm512_shuffle_i32x4::<0xdd>(hi01, hi23);
        }
        w
    }

    /// `n` blocks on lanes 0..8, see [`Kernel::blocks`]; rows 8..16 are not read.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn blocks8(state: &mut [[u32; 16]; 4], rows: &[&[[u8; BLOCK]]; 16]) -> usize {
        let n = rows[..8].iter().map(|r| r.len()).min().unwrap_or(0);
        let rows: [&[[u8; BLOCK]]; 8] = std::array::from_fn(|l| &rows[l][..n]);
        // SAFETY: the first 8 words of each row of `state`; unaligned loads.
        let [mut a, mut b, mut c, mut d] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_si256(state[i].as_ptr().cast()) });
        let ones = _mm256_set1_epi32(-1);
        #[expect(
            clippy::needless_range_loop,
            reason = "k picks a block in each of 8 rows"
        )]
        for k in 0..n {
            // SAFETY: each load reads half of one whole block, rows[l][k].
            let lo: [__m256i; 8] =
                std::array::from_fn(|l| unsafe { _mm256_loadu_si256(rows[l][k].as_ptr().cast()) });
            let hi: [__m256i; 8] = std::array::from_fn(|l| unsafe {
                _mm256_loadu_si256(rows[l][k][32..].as_ptr().cast())
            });
            let (lo, hi) = (transpose8(lo), transpose8(hi));
            let w: [__m256i; 16] = std::array::from_fn(|j| if j < 8 { lo[j] } else { hi[j - 8] });
            let (a0, b0, c0, d0) = (a, b, c, d);
            // F and G as the select forms that take 3 ops without a ternary-logic op.
            macro_rules! f {
                (F, $b:ident, $c:ident, $d:ident) => {
                    _mm256_xor_si256($d, _mm256_and_si256($b, _mm256_xor_si256($c, $d)))
                };
                (G, $b:ident, $c:ident, $d:ident) => {
                    _mm256_xor_si256($c, _mm256_and_si256($d, _mm256_xor_si256($b, $c)))
                };
                (H, $b:ident, $c:ident, $d:ident) => {
                    _mm256_xor_si256(_mm256_xor_si256($b, $c), $d)
                };
                (I, $b:ident, $c:ident, $d:ident) => {
                    _mm256_xor_si256($c, _mm256_or_si256($b, _mm256_xor_si256($d, ones)))
                };
            }
            macro_rules! step {
                (
                    $r:ident, $a:ident, $b:ident, $c:ident, $d:ident,
                    $i:expr, $g:literal, $s:literal
                ) => {
                    let mut t = _mm256_add_epi32(
                        $a,
                        _mm256_add_epi32(w[$g], _mm256_set1_epi32(K[$i] as i32)),
                    );
                    fence!(ymm_reg, t);
                    let x = _mm256_add_epi32(t, f!($r, $b, $c, $d));
                    let x = _mm256_or_si256(
                        _mm256_slli_epi32::<$s>(x),
                        _mm256_srli_epi32::<{ 32 - $s }>(x),
                    );
                    $a = _mm256_add_epi32($b, x);
                };
            }
            md5_steps!(step, a, b, c, d);
            a = _mm256_add_epi32(a, a0);
            b = _mm256_add_epi32(b, b0);
            c = _mm256_add_epi32(c, c0);
            d = _mm256_add_epi32(d, d0);
        }
        for (row, v) in state.iter_mut().zip([a, b, c, d]) {
            // SAFETY: as for the loads.
            unsafe { _mm256_storeu_si256(row.as_mut_ptr().cast(), v) };
        }
        n
    }

    /// The 8x8 version of `transpose16`: vector `j` of the result is word `j` of each row.
    #[target_feature(enable = "avx2")]
    fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
        let mut t = [_mm256_setzero_si256(); 8];
        for i in 0..4 {
            t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // Each 128-bit half of `q[4g + j]` is word `4h + j` of rows 4g..4g+4, `h` the half.
        let mut q = [_mm256_setzero_si256(); 8];
        for g in 0..2 {
            let (x, y) = (4 * g, 4 * g + 2);
            q[4 * g] = _mm256_unpacklo_epi64(t[x], t[y]);
            q[4 * g + 1] = _mm256_unpackhi_epi64(t[x], t[y]);
            q[4 * g + 2] = _mm256_unpacklo_epi64(t[x + 1], t[y + 1]);
            q[4 * g + 3] = _mm256_unpackhi_epi64(t[x + 1], t[y + 1]);
        }
        let mut w = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            w[j] = _mm256_permute2x128_si256::<0x20>(q[j], q[4 + j]);
            w[4 + j] = _mm256_permute2x128_si256::<0x31>(q[j], q[4 + j]);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;
    use proptest::prelude::*;

    #[test]
    fn parallel_digests_are_in_order() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let msgs: Vec<&[u8]> = (0..40)
            .map(|k| &data[k * 97..k * 97 + (k * 5003) % 250_000])
            .collect();
        let got = digest_many_par(&msgs);
        for (m, d) in msgs.iter().zip(got) {
            assert_eq!(d[..], md5::Md5::digest(m)[..]);
        }
    }

    fn reference(data: &[u8]) -> [u8; 16] {
        md5::Md5::digest(data).into()
    }

    /// Deterministic bytes that differ between messages (xorshift).
    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Each kernel where the CPU has it (a narrower one where it does not).
    fn paths() -> [Widest; 3] {
        [Widest::Scalar, Widest::Avx2, Widest::Avx512]
    }

    fn many(msgs: &[Vec<u8>], widest: Widest) -> Vec<[u8; 16]> {
        let mut hashers = vec![Md5::new(); msgs.len()];
        let mut jobs: Vec<(&mut Md5, &[u8])> = hashers
            .iter_mut()
            .zip(msgs.iter().map(Vec::as_slice))
            .collect();
        update_many_with(&mut jobs, widest);
        hashers.into_iter().map(Md5::finalize).collect()
    }

    fn check(msgs: &[Vec<u8>]) {
        let want: Vec<[u8; 16]> = msgs.iter().map(|m| reference(m)).collect();
        for widest in paths() {
            assert_eq!(
                many(msgs, widest),
                want,
                "{widest:?}, lengths {:?}",
                lens(msgs)
            );
        }
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        for widest in paths() {
            assert_eq!(
                digest_many_with(&refs, widest),
                want,
                "digest_many, {widest:?}"
            );
        }
        assert_eq!(digest_many(&refs), want);
    }

    fn lens(msgs: &[Vec<u8>]) -> Vec<usize> {
        msgs.iter().map(Vec::len).collect()
    }

    const EDGES: [usize; 11] = [0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 4099];

    #[test]
    fn single_messages_match_md5() {
        let mut sizes = EDGES.to_vec();
        sizes.extend((0..20).map(|i| (bytes(1, i)[0] as usize) * 37 + i as usize));
        for (i, &n) in sizes.iter().enumerate() {
            let m = bytes(n, i as u64);
            let mut h = Md5::new();
            h.update(&m);
            assert_eq!(h.clone().finalize(), reference(&m), "length {n}");
            let hex: String = reference(&m).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(h.hex(), hex);
            check(&[m]);
        }
    }

    #[test]
    fn known_answer() {
        let mut h = Md5::default();
        h.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(h.hex(), "9e107d9d372bb6826bd81d3542a419d6");
    }

    #[test]
    fn job_sets_match_md5() {
        for count in [1usize, 2, 3, 16, 17, 40] {
            let mut msgs: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let n = match i % 5 {
                        0 => 0,
                        1 => EDGES[i % EDGES.len()],
                        _ => 64 * (i * 7 % 23) + i * 13 % 64,
                    };
                    bytes(n, (count * 100 + i) as u64)
                })
                .collect();
            // One far longer than the rest, in the middle so the ordering has work to do.
            msgs.insert(count / 2, bytes(200_003, count as u64));
            check(&msgs);
            check(&msgs[..count]);
        }
    }

    /// A stream as long as the whole schedule gets cut when it is not first on its lane, and
    /// its head then ends at the very step its tail starts.
    #[test]
    fn cut_stream_resumes_on_the_step_its_head_ends() {
        for blocks in [&[1usize, 10][..], &[2, 3, 10], &[2, 3, 10, 1, 1]] {
            check(
                &blocks
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| bytes(64 * n, i as u64))
                    .collect::<Vec<_>>(),
            );
        }
    }

    #[test]
    fn equal_lengths_end_together() {
        check(&(0..32).map(|i| bytes(64 * 50, i)).collect::<Vec<_>>());
        check(&(0..16).map(|i| bytes(64 * 50 + 1, i)).collect::<Vec<_>>());
    }

    /// Many pieces per message, fed by `update_many` calls interleaved with `update`, so
    /// partial blocks carry over between the two paths.
    #[test]
    fn streaming_matches_md5() {
        let msgs: Vec<Vec<u8>> = (0..21).map(|i| bytes(3000 + 997 * i, i as u64)).collect();
        for widest in paths() {
            let mut hashers = vec![Md5::new(); msgs.len()];
            let mut at = vec![0usize; msgs.len()];
            let mut x = 12345u64;
            for round in 0..40 {
                let mut jobs = Vec::new();
                for (i, h) in hashers.iter_mut().enumerate() {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let piece = (x >> 33) as usize % 700;
                    let end = (at[i] + piece).min(msgs[i].len());
                    let part = &msgs[i][at[i]..end];
                    at[i] = end;
                    if (round + i) % 3 == 0 {
                        h.update(part);
                    } else {
                        jobs.push((h, part));
                    }
                }
                update_many_with(&mut jobs, widest);
            }
            let mut jobs: Vec<(&mut Md5, &[u8])> = hashers
                .iter_mut()
                .zip(&msgs)
                .zip(&at)
                .map(|((h, m), &a)| (h, &m[a..]))
                .collect();
            update_many_with(&mut jobs, widest);
            for (h, m) in hashers.into_iter().zip(&msgs) {
                assert_eq!(h.finalize(), reference(m), "{widest:?}, length {}", m.len());
            }
        }
    }

    /// Every stream's blocks land on the lanes exactly once, each piece after the one before
    /// it in time, and no lane runs past the shortest possible schedule.
    #[cfg(target_arch = "x86_64")]
    fn check_plan(lens: &[usize]) {
        for lanes in [8, 16] {
            check_plan_on(lens, lanes);
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn check_plan_on(lens: &[usize], lanes: usize) {
        let blocks = vec![[0u8; BLOCK]; lens.iter().copied().max().unwrap_or(0)];
        let mut states = vec![INIT; lens.len()];
        let streams: Vec<Stream<'_>> = states
            .iter_mut()
            .zip(lens)
            .map(|(state, &n)| Stream {
                state,
                blocks: &blocks[..n],
            })
            .collect();
        let (pieces, bounds) = lanes::plan(&streams, lanes);
        let span: usize = lens
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(lens.iter().sum::<usize>().div_ceil(lanes));
        // Per stream: (first block, end block, start time, end time) of each piece.
        let mut seen = vec![Vec::new(); lens.len()];
        let mut times = Vec::new();
        for l in 0..16 {
            let mut t = 0;
            for p in &pieces[bounds[l]..bounds[l + 1]] {
                assert!(p.start < p.end, "empty piece {p:?}");
                let dt = p.end - p.start;
                seen[p.stream].push((p.start, p.end, t, t + dt));
                t += dt;
            }
            assert!(t <= span, "lane {l} runs {t} > {span}, lengths {lens:?}");
            assert!(l < lanes || t == 0, "lane {l} of {lanes} used");
            times.push(t);
        }
        // Only the longest stream's lane runs past the second stream or an even share of the
        // others: the vector kernel runs no longer than it must.
        times.sort_unstable();
        let mut sorted = lens.to_vec();
        sorted.sort_unstable();
        if let (Some(&second_lane), Some(&longest)) = (times.iter().rev().nth(1), sorted.last()) {
            let second = sorted.iter().rev().nth(1).copied().unwrap_or(0);
            let share = (lens.iter().sum::<usize>() - longest).div_ceil(lanes - 1);
            assert!(
                second_lane <= second.max(share),
                "second lane runs {second_lane}, lengths {lens:?}"
            );
        }
        assert_eq!(bounds[16], pieces.len());
        for (i, mut s) in seen.into_iter().enumerate() {
            s.sort_unstable();
            let mut at = (0, 0);
            for &(start, end, t0, t1) in &s {
                assert_eq!(start, at.0, "stream {i} not contiguous: {s:?}");
                assert!(
                    t0 >= at.1,
                    "stream {i} piece starts before the previous ends: {s:?}"
                );
                at = (end, t1);
            }
            assert_eq!(at.0, lens[i], "stream {i} not covered: {s:?}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn plans_are_sound() {
        check_plan(&[]);
        check_plan(&[5]);
        check_plan(&[3; 17]);
        check_plan(&[100, 1, 1, 1]);
        check_plan(&(1..60).collect::<Vec<_>>());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[cfg(target_arch = "x86_64")]
        #[test]
        fn random_plans(lens in prop::collection::vec(1usize..300, 0..70)) {
            check_plan(&lens);
        }

        #[test]
        fn random_job_sets(
            lens in prop::collection::vec(0usize..5000, 0..40),
            seed in any::<u64>(),
        ) {
            let msgs: Vec<Vec<u8>> =
                lens.iter().enumerate().map(|(i, &n)| bytes(n, seed ^ i as u64)).collect();
            check(&msgs);
        }
    }
}
