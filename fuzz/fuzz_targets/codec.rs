//! Any bytes as a coded chunk of any element kind and length. Must never panic.
#![no_main]

use bigsmall::codec::{decode_chunk, ElemKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let kind = match data[0] % 6 {
        0 => ElemKind::Bf16,
        1 => ElemKind::F16,
        2 => ElemKind::F32,
        3 => ElemKind::Byte,
        4 => ElemKind::Other(2),
        _ => ElemKind::Other(8),
    };
    let n = u16::from_le_bytes([data[1], data[2]]) as usize % 20_000;
    let mut out = vec![0u8; n * kind.width()];
    let _ = decode_chunk(kind, &data[3..], &mut out);
});
