//! Reed-Solomon RS(255, 223) over GF(2^8) (primitive polynomial 0x11d, generator roots
//! α^0..α^31): a table-driven systematic encoder and an error-correcting decoder
//! (Berlekamp-Massey, Chien search, Forney) that fixes up to 16 wrong bytes at unknown
//! positions per codeword and reports anything beyond as uncorrectable.
//!
//! Codeword layout: 223 data bytes (the highest-degree coefficients first) then 32 parity
//! bytes; shorter data is treated as zero-padded at the front (a shortened code).

pub const DATA: usize = 223;
pub const PARITY: usize = 32;
pub const N: usize = DATA + PARITY;
/// Wrong bytes a codeword can correct at unknown positions.
pub const CAPACITY: usize = PARITY / 2;

struct Gf {
    exp: [u8; 512],
    log: [u8; 256],
    /// `T[f]` = f·g(x) without its leading 1, as the 32-byte parity register update, packed
    /// big-endian into four u64 words (byte 0 in the top of word 0).
    update: Vec<[u64; 4]>,
}

// Table construction and the Berlekamp-Massey/Forney steps index several arrays by the same
// degree; explicit indices read like the algorithm.
#[allow(clippy::needless_range_loop)]
fn gf() -> &'static Gf {
    static GF: std::sync::OnceLock<Gf> = std::sync::OnceLock::new();
    GF.get_or_init(|| {
        let mut exp = [0u8; 512];
        let mut log = [0u8; 256];
        let mut x: u16 = 1;
        for i in 0..255 {
            exp[i] = x as u8;
            log[x as usize] = i as u8;
            x <<= 1;
            if x & 0x100 != 0 {
                x ^= 0x11d;
            }
        }
        for i in 255..512 {
            exp[i] = exp[i - 255];
        }
        let mul = |a: u8, b: u8| -> u8 {
            if a == 0 || b == 0 {
                0
            } else {
                exp[log[a as usize] as usize + log[b as usize] as usize]
            }
        };
        // g(x) = Π (x - α^j), highest degree first.
        let mut g = vec![1u8];
        for j in 0..PARITY {
            let root = exp[j];
            let mut next = vec![0u8; g.len() + 1];
            for (i, &c) in g.iter().enumerate() {
                next[i] ^= c;
                next[i + 1] ^= mul(c, root);
            }
            g = next;
        }
        let update = (0..256)
            .map(|f| {
                let mut w = [0u64; 4];
                for k in 0..PARITY {
                    let b = mul(f as u8, g[k + 1]);
                    w[k / 8] |= u64::from(b) << ((7 - k % 8) * 8);
                }
                w
            })
            .collect();
        Gf { exp, log, update }
    })
}

fn mul(a: u8, b: u8) -> u8 {
    let g = gf();
    if a == 0 || b == 0 {
        0
    } else {
        g.exp[g.log[a as usize] as usize + g.log[b as usize] as usize]
    }
}

fn div(a: u8, b: u8) -> u8 {
    let g = gf();
    if a == 0 {
        0
    } else {
        g.exp[g.log[a as usize] as usize + 255 - g.log[b as usize] as usize]
    }
}

/// α^e for any integer exponent.
fn pow_alpha(e: i64) -> u8 {
    gf().exp[e.rem_euclid(255) as usize]
}

/// The 32 parity bytes of up to 223 data bytes.
#[allow(clippy::needless_range_loop)]
pub fn encode(data: &[u8]) -> [u8; PARITY] {
    debug_assert!(data.len() <= DATA);
    let g = gf();
    let mut r = [0u64; 4];
    for &d in data {
        let f = ((r[0] >> 56) as u8) ^ d;
        r[0] = (r[0] << 8) | (r[1] >> 56);
        r[1] = (r[1] << 8) | (r[2] >> 56);
        r[2] = (r[2] << 8) | (r[3] >> 56);
        r[3] <<= 8;
        let t = &g.update[f as usize];
        for k in 0..4 {
            r[k] ^= t[k];
        }
    }
    let mut out = [0u8; PARITY];
    for k in 0..PARITY {
        out[k] = (r[k / 8] >> ((7 - k % 8) * 8)) as u8;
    }
    out
}

/// Syndromes S_j = c(α^j) of a codeword (highest degree first).
fn syndromes(cw: &[u8]) -> [u8; PARITY] {
    let mut s = [0u8; PARITY];
    for (j, sj) in s.iter_mut().enumerate() {
        let x = pow_alpha(j as i64);
        let mut acc = 0u8;
        for &c in cw {
            acc = mul(acc, x) ^ c;
        }
        *sj = acc;
    }
    s
}

/// Why a codeword could not be corrected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uncorrectable;

/// Corrects a codeword (data then parity, at most 255 bytes) in place; returns how many bytes
/// were wrong.
#[allow(clippy::needless_range_loop)]
pub fn correct(cw: &mut [u8]) -> Result<usize, Uncorrectable> {
    let n = cw.len();
    let s = syndromes(cw);
    if s.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    // Berlekamp-Massey: error locator C(x), lowest degree first.
    let mut c = vec![0u8; PARITY + 1];
    let mut b = vec![0u8; PARITY + 1];
    c[0] = 1;
    b[0] = 1;
    let (mut l, mut m, mut bb) = (0usize, 1usize, 1u8);
    for k in 0..PARITY {
        let mut d = s[k];
        for i in 1..=l {
            d ^= mul(c[i], s[k - i]);
        }
        if d == 0 {
            m += 1;
            continue;
        }
        let coef = div(d, bb);
        let t = c.clone();
        for i in 0..=PARITY - m {
            c[i + m] ^= mul(coef, b[i]);
        }
        if 2 * l <= k {
            l = k + 1 - l;
            b = t;
            bb = d;
            m = 1;
        } else {
            m += 1;
        }
    }
    if l > CAPACITY {
        return Err(Uncorrectable);
    }
    // Chien search: position p (index in the codeword) has degree n-1-p; it is in error when
    // C(α^-(n-1-p)) = 0.
    let mut positions = Vec::with_capacity(l);
    for p in 0..n {
        let xinv = pow_alpha(-((n - 1 - p) as i64));
        let mut acc = 0u8;
        for i in (0..=l).rev() {
            acc = mul(acc, xinv) ^ c[i];
        }
        if acc == 0 {
            positions.push(p);
        }
    }
    if positions.len() != l {
        return Err(Uncorrectable);
    }
    // Forney: Ω(x) = S(x)C(x) mod x^32; e = X·Ω(X^-1) / C'(X^-1).
    let mut omega = [0u8; PARITY];
    for i in 0..PARITY {
        for j in 0..=i.min(l) {
            omega[i] ^= mul(c[j], s[i - j]);
        }
    }
    for &p in &positions {
        let deg = (n - 1 - p) as i64;
        let x = pow_alpha(deg);
        let xinv = pow_alpha(-deg);
        let mut num = 0u8;
        for i in (0..PARITY).rev() {
            num = mul(num, xinv) ^ omega[i];
        }
        let mut den = 0u8;
        let mut i = 1;
        let mut xpow = 1u8; // xinv^(i-1)
        while i <= l {
            den ^= mul(c[i], xpow);
            xpow = mul(xpow, mul(xinv, xinv));
            i += 2;
        }
        if den == 0 {
            return Err(Uncorrectable);
        }
        cw[p] ^= mul(x, div(num, den));
    }
    if syndromes(cw).iter().any(|&x| x != 0) {
        return Err(Uncorrectable);
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codeword(data: &[u8]) -> Vec<u8> {
        let mut cw = data.to_vec();
        cw.extend_from_slice(&encode(data));
        cw
    }

    #[test]
    fn parity_matches_the_reed_solomon_crate() {
        let enc = reed_solomon::Encoder::new(PARITY);
        for seed in 0..50u32 {
            let data: Vec<u8> = (0..DATA as u32)
                .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 13) as u8)
                .collect();
            let theirs = enc.encode(&data);
            assert_eq!(&encode(&data)[..], theirs.ecc());
        }
    }

    proptest! {
        #[test]
        fn corrects_up_to_sixteen_errors(data in proptest::collection::vec(any::<u8>(), 1..=DATA),
                                         errs in proptest::collection::vec((any::<u16>(), 1u8..=255), 0..=CAPACITY)) {
            let clean = codeword(&data);
            let mut cw = clean.clone();
            let mut hit = std::collections::HashSet::new();
            for (pos, flip) in errs {
                let p = pos as usize % cw.len();
                if hit.insert(p) {
                    cw[p] ^= flip;
                }
            }
            let fixed = correct(&mut cw).unwrap();
            prop_assert_eq!(fixed, hit.len());
            prop_assert_eq!(cw, clean);
        }

        #[test]
        fn beyond_capacity_is_reported_or_consistent(data in proptest::collection::vec(any::<u8>(), DATA..=DATA),
                                                      seed in any::<u64>()) {
            let clean = codeword(&data);
            let mut cw = clean.clone();
            let mut x = seed | 1;
            for k in 0..(CAPACITY + 1 + (seed % 40) as usize) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let p = (k * 7 + (x >> 40) as usize) % cw.len();
                cw[p] ^= ((x >> 32) as u8) | 1;
            }
            // Either refused, or (rarely, like any RS decoder) a different valid codeword: the
            // container's checksums catch that case.
            if correct(&mut cw).is_ok() {
                prop_assert!(syndromes(&cw).iter().all(|&s| s == 0));
            }
        }
    }
}
