//! Any bytes as an ECC sidecar (for a small fixed file): check and repair. Must never panic,
//! and a repair may only write the original bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|side: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f.bin");
    let original: Vec<u8> = (0..3000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&file, &original).expect("write");
    let sidecar = dir.path().join("f.bin.ecc");
    std::fs::write(&sidecar, side).expect("write");
    let out = dir.path().join("out.bin");
    if bigsmall::integrity::ecc::check_or_repair(&file, &sidecar, Some(&out)).is_ok() && out.exists() {
        assert_eq!(std::fs::read(&out).expect("read"), original);
    }
});
