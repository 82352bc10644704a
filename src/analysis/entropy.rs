//! Zeroth-order entropy bounds of float tensors, per tensor, the yardstick ratios are quoted
//! against:
//! - `conditional`: H(sign, exponent) + H(mantissa | exponent) — for F32 the top 16 bits are
//!   treated so and the two low bytes as independent byte planes;
//! - `exponent_raw`: H(exponent) + sign and mantissa stored raw.
//!
//! Non-float tensors count at their raw size in both.

use safetensors::tensor::Dtype;

/// Field layout of a float format: (exponent bits, mantissa bits) of the coded word.
fn fields(d: Dtype) -> Option<(u32, u32)> {
    match d {
        Dtype::BF16 => Some((8, 7)),
        Dtype::F16 => Some((5, 10)),
        Dtype::F32 => Some((8, 7)), // top half; low bytes handled as planes
        Dtype::F8_E4M3 | Dtype::F8_E4M3FNUZ => Some((4, 3)),
        Dtype::F8_E5M2 | Dtype::F8_E5M2FNUZ => Some((5, 2)),
        _ => None,
    }
}

fn entropy(counts: &[u64]) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let c = c as f64;
            -c * (c / n).log2()
        })
        .sum()
}

/// Entropy bounds of one tensor, in bits.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Bounds {
    pub conditional_bits: f64,
    pub exponent_raw_bits: f64,
}

impl std::ops::AddAssign for Bounds {
    fn add_assign(&mut self, o: Bounds) {
        self.conditional_bits += o.conditional_bits;
        self.exponent_raw_bits += o.exponent_raw_bits;
    }
}

/// Computes both bounds for a tensor's raw bytes.
pub fn tensor_bounds(d: Dtype, bytes: &[u8]) -> Bounds {
    let raw_bits = bytes.len() as f64 * 8.0;
    let Some((eb, mb)) = fields(d) else {
        return Bounds {
            conditional_bits: raw_bits,
            exponent_raw_bits: raw_bits,
        };
    };
    // The coded word: 8 or 16 bits holding sign | exponent | mantissa.
    let words: Box<dyn Iterator<Item = u32>> = match d {
        Dtype::BF16 | Dtype::F16 => Box::new(
            bytes
                .chunks_exact(2)
                .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]))),
        ),
        Dtype::F32 => Box::new(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from(u16::from_le_bytes([b[2], b[3]]))),
        ),
        _ => Box::new(bytes.iter().map(|&b| u32::from(b))),
    };
    let ebits = 1usize << eb;
    let mbits = 1usize << mb;
    let mut se = vec![0u64; 2 * ebits];
    let mut e_m = vec![0u64; ebits * mbits];
    let mut n = 0usize;
    for w in words {
        let m = (w as usize) & (mbits - 1);
        let e = (w as usize >> mb) & (ebits - 1);
        let s = (w as usize >> (mb + eb)) & 1;
        se[s * ebits + e] += 1;
        e_m[e * mbits + m] += 1;
        n += 1;
    }
    let mut e_only = vec![0u64; ebits];
    for (i, &c) in se.iter().enumerate() {
        e_only[i % ebits] += c;
    }
    let h_se = entropy(&se);
    let h_e = entropy(&e_only);
    // H(m | e) = H(e, m) - H(e)
    let h_m_given_e = entropy(&e_m) - h_e;
    let mut cond = h_se + h_m_given_e;
    let mut expraw = h_e + n as f64 * f64::from(1 + mb);
    if d == Dtype::F32 {
        for p in 0..2 {
            let mut c = [0u64; 256];
            for e in bytes.chunks_exact(4) {
                c[e[p] as usize] += 1;
            }
            cond += entropy(&c);
        }
        expraw += n as f64 * 16.0;
    }
    Bounds {
        conditional_bits: cond,
        exponent_raw_bits: expraw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_tensor_has_zero_entropy() {
        let b = tensor_bounds(Dtype::BF16, &[0x80, 0x3f].repeat(1000));
        assert!(b.conditional_bits.abs() < 1e-9);
        assert!((b.exponent_raw_bits - 8000.0).abs() < 1e-9);
    }

    #[test]
    fn ints_count_raw() {
        let b = tensor_bounds(Dtype::I64, &[0u8; 80]);
        assert_eq!(b.conditional_bits, 640.0);
    }
}
