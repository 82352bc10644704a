//! Format versions and `migrate`: the frozen file of every released format still decodes
//! byte-identically, and migrating it keeps every weight.

mod common;

use std::fs;

use common::*;

fn frozen() -> std::path::PathBuf {
    fixtures_dir().join("format-1.0").join("minilm-bf16.bs")
}

#[test]
fn the_frozen_format_1_0_file_still_decodes_byte_identically() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("back.safetensors");
    ok(&run([
        "decompress".as_ref(),
        frozen().as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--md5".as_ref(),
    ]));
    assert_eq!(
        sha256_file(&out),
        sha256_file(&fixture("minilm-bf16.safetensors"))
    );
}

#[test]
fn migrate_leaves_a_current_file_alone_and_reencodes_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.bs");
    fs::copy(frozen(), &f).unwrap();
    let before = fs::read(&f).unwrap();
    let text = ok(&run(["migrate".as_ref(), f.as_os_str()]));
    if text.contains("already current") {
        assert_eq!(fs::read(&f).unwrap(), before);
    }
    // Dry run: nothing changes on disk, no leftovers.
    ok(&run([
        "migrate".as_ref(),
        f.as_os_str(),
        "--reencode".as_ref(),
        "--dry-run".as_ref(),
    ]));
    assert_eq!(fs::read(&f).unwrap(), before);
    assert!(!dir.path().join("m.bs.bak").exists());
    assert_no_leftovers(dir.path());
    // Real run: a backup is kept and the new file decodes to the same weights.
    ok(&run([
        "migrate".as_ref(),
        f.as_os_str(),
        "--reencode".as_ref(),
    ]));
    assert_eq!(fs::read(dir.path().join("m.bs.bak")).unwrap(), before);
    let out = dir.path().join("back.safetensors");
    ok(&run([
        "decompress".as_ref(),
        f.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--md5".as_ref(),
    ]));
    assert_eq!(
        sha256_file(&out),
        sha256_file(&fixture("minilm-bf16.safetensors"))
    );
    // Without a backup.
    ok(&run([
        "migrate".as_ref(),
        f.as_os_str(),
        "--reencode".as_ref(),
        "--no-backup".as_ref(),
    ]));
}

#[test]
fn migrate_refuses_a_corrupt_file_and_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.bs");
    fs::copy(frozen(), &f).unwrap();
    let c = bigsmall::format::reader::Container::open(&f).unwrap();
    let at = c
        .index
        .tensors
        .iter()
        .find(|t| !t.chunks.is_empty())
        .unwrap()
        .chunks[0]
        .offset
        + 40;
    drop(c);
    xor_byte(&f, at, 0x5a);
    let damaged = fs::read(&f).unwrap();
    let o = run(["migrate".as_ref(), f.as_os_str(), "--reencode".as_ref()]);
    assert_ne!(code(&o), 0);
    one_line_error(&stderr(&o));
    assert_eq!(fs::read(&f).unwrap(), damaged);
    assert!(!dir.path().join("m.bs.bak").exists());
    assert!(!dir.path().join("m.bs.migrating").exists());
    assert_no_leftovers(dir.path());
}
