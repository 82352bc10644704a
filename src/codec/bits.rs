//! Small byte-level helpers shared by the codecs: LEB128 varints, a bounds-checked reader and
//! fixed-width bit packing (LSB first). Nothing here knows about tensors.

use super::CodecError;

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over untrusted bytes: every read is checked, nothing panics.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.pos).ok_or(CodecError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub fn peek_u8(&self) -> Result<u8, CodecError> {
        self.buf.get(self.pos).copied().ok_or(CodecError::Truncated)
    }

    pub fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Corrupt("varint longer than 64 bits"))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// Bytes needed to hold `n` values of `width` bits.
pub fn packed_len(n: usize, width: u32) -> usize {
    (n * width as usize).div_ceil(8)
}

/// Packs the low `width` bits (1..=16) of each value, LSB first.
pub fn pack(values: impl Iterator<Item = u32>, n: usize, width: u32, out: &mut Vec<u8>) {
    debug_assert!((1..=16).contains(&width));
    let start = out.len();
    out.reserve(packed_len(n, width) + 8);
    // Eight values fill exactly `width` bytes, so a u128 accumulator flushes whole bytes.
    let mut acc = 0u128;
    let mut k = 0usize;
    for v in values {
        acc |= u128::from(v) << (k * width as usize);
        k += 1;
        if k == 8 {
            out.extend_from_slice(&acc.to_le_bytes()[..width as usize]);
            acc = 0;
            k = 0;
        }
    }
    if k > 0 {
        let bytes = (k * width as usize).div_ceil(8);
        out.extend_from_slice(&acc.to_le_bytes()[..bytes]);
    }
    debug_assert_eq!(out.len() - start, packed_len(n, width));
}

/// Reads value `i` of `width` bits from a packed buffer. The caller guarantees
/// `packed.len() >= packed_len(i + 1, width)`.
#[inline(always)]
pub fn unpack_at(packed: &[u8], i: usize, width: u32) -> u32 {
    let bit = i * width as usize;
    let byte = bit >> 3;
    let mut word = [0u8; 4];
    let avail = (packed.len() - byte).min(4);
    word[..avail].copy_from_slice(&packed[byte..byte + avail]);
    (u32::from_le_bytes(word) >> (bit & 7)) & ((1u32 << width) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_roundtrip(width in 1u32..=16, vals in proptest::collection::vec(any::<u32>(), 0..300)) {
            let vals: Vec<u32> = vals.into_iter().map(|v| v & ((1 << width) - 1)).collect();
            let mut out = Vec::new();
            pack(vals.iter().copied(), vals.len(), width, &mut out);
            for (i, &v) in vals.iter().enumerate() {
                prop_assert_eq!(unpack_at(&out, i, width), v);
            }
        }

        #[test]
        fn varint_roundtrip(v in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(Reader::new(&out).varint().unwrap(), v);
        }
    }
}
