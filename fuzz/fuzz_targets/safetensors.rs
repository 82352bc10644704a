//! Any bytes as a `.safetensors` input: open and read every tensor. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.safetensors");
    std::fs::write(&path, data).expect("write");
    if let Ok(f) = bigsmall::model::safetensors::SafetensorsFile::open(&path) {
        for t in &f.tensors {
            let _ = f.tensor_bytes(t).len();
        }
    }
});
