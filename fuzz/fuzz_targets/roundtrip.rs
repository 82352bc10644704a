//! The encoders, on data shaped by the fuzzer: every effort's `encode_chunk` and the patch
//! path's `encode_sparse_chunk` must give a blob that decodes to exactly its input.
//!
//! Random bytes would only ever reach the raw fallback, so the input is a recipe: element
//! kind, effort, element count, an alphabet of up to 16 elements, then 4-bit picks from it
//! (a pick of 15 repeats the previous element, so runs of zeros, few-valued blocks and
//! palettes all arise). Alphabet bytes past the recipe's end wrap around to its start; with
//! no picks at all, the alphabet repeats in order.
#![no_main]

mod kinds;

use bigsmall::codec::{decode_chunk, encode_chunk, encode_sparse_chunk, Effort};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let kind = kinds::kind(data[0]);
    let effort = [Effort::Storage, Effort::Balanced, Effort::Inference, Effort::Speed]
        [data[1] as usize % 4];
    let n = u16::from_le_bytes([data[2], data[3]]) as usize % 40_000 + 1;
    let w = kind.width();
    let alphabet_len = data[4] as usize % 16 + 1;
    let rest = &data[5..];
    let elem = |k: usize| -> Vec<u8> { (0..w).map(|b| rest[(k * w + b) % rest.len()]).collect() };
    let alphabet: Vec<Vec<u8>> = (0..alphabet_len).map(elem).collect();
    let picks = &rest[(alphabet_len * w).min(rest.len())..];
    let mut chunk = Vec::with_capacity(n * w);
    let mut last = 0;
    for i in 0..n {
        let p = if picks.is_empty() {
            i % alphabet_len
        } else {
            let b = picks[(i / 2) % picks.len()];
            let nibble = if i % 2 == 0 { b & 15 } else { b >> 4 } as usize;
            if nibble == 15 {
                last
            } else {
                nibble % alphabet_len
            }
        };
        last = p;
        chunk.extend_from_slice(&alphabet[p]);
    }
    let mut back = vec![0u8; chunk.len()];
    for blob in [
        encode_chunk(kind, &chunk, effort),
        encode_sparse_chunk(kind, &chunk, effort),
    ] {
        back.fill(0);
        if let Err(e) = decode_chunk(kind, &blob, &mut back) {
            panic!("own blob (codec tag {}) does not decode: {e}", blob[0]);
        }
        assert!(back == chunk, "codec tag {} decodes to other bytes", blob[0]);
    }
});
