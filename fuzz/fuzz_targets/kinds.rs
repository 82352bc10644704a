//! The element kinds the codec targets pick from a fuzzer byte.

use bigsmall::codec::ElemKind;

pub fn kind(b: u8) -> ElemKind {
    match b % 6 {
        0 => ElemKind::Bf16,
        1 => ElemKind::F16,
        2 => ElemKind::F32,
        3 => ElemKind::Byte,
        4 => ElemKind::Other(2),
        _ => ElemKind::Other(8),
    }
}
