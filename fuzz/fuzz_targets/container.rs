//! Any bytes as a `.bs` file: open, validate, decode every chunk. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.bs");
    std::fs::write(&path, data).expect("write");
    if let Ok(c) = bigsmall::format::reader::Container::open(&path) {
        for t in 0..c.index.tensors.len() {
            for (k, ch) in c.chunks(t).iter().enumerate() {
                let mut buf = vec![0u8; ch.raw_len as usize];
                let _ = c.decode_chunk_into(t, k, &mut buf);
            }
        }
    }
});
