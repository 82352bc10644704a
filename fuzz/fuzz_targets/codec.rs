//! Any bytes as a coded chunk of any element kind and length. Must never panic.
#![no_main]

mod kinds;

use bigsmall::codec::decode_chunk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let kind = kinds::kind(data[0]);
    let n = u16::from_le_bytes([data[1], data[2]]) as usize % 20_000;
    let mut out = vec![0u8; n * kind.width()];
    let _ = decode_chunk(kind, &data[3..], &mut out);
});
