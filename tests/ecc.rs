//! The Reed-Solomon sidecar: every damage pattern the durability issue names is repaired
//! byte-identically, damage beyond reach is reported and nothing is written.

mod common;

use std::fs;
use std::path::Path;

use bigsmall::integrity::ecc::{check_or_repair, create, sidecar_path};
use common::*;

fn compressed_fixture(dir: &Path) -> std::path::PathBuf {
    let bs = dir.join("m.bs");
    ok(&run([
        "compress".as_ref(),
        fixture("smollm-bf16.safetensors").as_os_str(),
        "-o".as_ref(),
        bs.as_os_str(),
        "--ecc".as_ref(),
        "--no-progress".as_ref(),
    ]));
    assert!(sidecar_path(&bs).is_file());
    bs
}

/// The sharded fixture compressed with `--ecc` into `DIR/model`: a sidecar beside each shard.
fn compressed_dir_fixture(dir: &Path) -> std::path::PathBuf {
    let d = dir.join("model");
    ok(&run([
        "compress".as_ref(),
        fixture("sharded").as_os_str(),
        "-o".as_ref(),
        d.as_os_str(),
        "--ecc".as_ref(),
        "--no-progress".as_ref(),
    ]));
    d
}

fn repaired_equals(
    damaged: &[u8],
    original: &Path,
    dir: &Path,
) -> bigsmall::integrity::ecc::EccReport {
    let bad = dir.join("bad.bs");
    fs::write(&bad, damaged).unwrap();
    let out = dir.join("fixed.bs");
    let _ = fs::remove_file(&out);
    let r = check_or_repair(&bad, &sidecar_path(original), Some(&out)).unwrap();
    assert_eq!(fs::read(&out).unwrap(), fs::read(original).unwrap());
    assert!(r.repaired);
    r
}

#[test]
fn sixteen_random_bytes_in_every_block_are_corrected() {
    let dir = tempfile::tempdir().unwrap();
    let bs = compressed_fixture(dir.path());
    let mut data = fs::read(&bs).unwrap();
    let mut rng = Rng(7);
    for start in (0..data.len()).step_by(223) {
        let n = (data.len() - start).min(223);
        let mut hit = std::collections::HashSet::new();
        while hit.len() < n.min(16) {
            hit.insert(rng.next_u64() as usize % n);
        }
        for p in hit {
            data[start + p] ^= (rng.next_u64() as u8) | 1;
        }
    }
    let r = repaired_equals(&data, &bs, dir.path());
    assert_eq!(r.damaged_blocks, r.blocks);
}

#[test]
fn zeroed_sector_and_truncated_tail_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let bs = compressed_fixture(dir.path());
    let data = fs::read(&bs).unwrap();
    for off in [0usize, 4096, 123_457, data.len() - 4096] {
        let mut d = data.clone();
        d[off..off + 4096].fill(0);
        repaired_equals(&d, &bs, dir.path());
    }
    let r = repaired_equals(&data[..data.len() - 9000], &bs, dir.path());
    assert!(r.rebuilt_blocks > 0);
    // The promised burst, 14,082 bytes, wherever it falls: at the worst place it leaves 17
    // wrong bytes at the end of one block (beyond the first layer), 63 whole blocks, and 16
    // in the next (within it).
    let burst = 14_082;
    for off in [0usize, 223 * 100 + 206, 223 * 500 + 100, data.len() - burst] {
        let mut d = data.clone();
        d[off..off + burst].iter_mut().for_each(|b| *b = !*b);
        repaired_equals(&d, &bs, dir.path());
    }
    let r = repaired_equals(&data[..data.len() - burst], &bs, dir.path());
    assert!(r.rebuilt_blocks > 0);
}

#[test]
fn damage_beyond_reach_is_reported_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let bs = compressed_fixture(dir.path());
    let mut data = fs::read(&bs).unwrap();
    data[1000..60_000].fill(0x55);
    let bad = dir.path().join("bad.bs");
    fs::write(&bad, &data).unwrap();
    let out = dir.path().join("never.bs");
    let o = run([
        "repair".as_ref(),
        bad.as_os_str(),
        "--ecc".as_ref(),
        sidecar_path(&bs).as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    let e = fails(&o, 3);
    assert!(e.contains("exceeds"), "{e}");
    assert!(!out.exists());
    assert_no_leftovers(dir.path());
}

#[test]
fn a_sidecar_for_another_file_or_with_a_damaged_header() {
    let dir = tempfile::tempdir().unwrap();
    let bs = compressed_fixture(dir.path());
    // The file with bytes appended: its first bytes are the protected ones.
    let longer = dir.path().join("longer.bs");
    let mut big = fs::read(&bs).unwrap();
    big.extend_from_slice(&[0u8; 1000]);
    fs::write(&longer, &big).unwrap();
    let r = check_or_repair(&longer, &sidecar_path(&bs), None).unwrap();
    assert!(!r.clean && r.trailing_bytes == 1000 && r.damaged_blocks == 0);
    // Another file, of the same length or longer: refused as not matching.
    let mut different = fs::read(&bs).unwrap();
    for b in different.iter_mut() {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    for extra in [0, 1000] {
        let other = dir.path().join("other.bs");
        let mut bytes = different.clone();
        bytes.extend(std::iter::repeat_n(9u8, extra));
        fs::write(&other, &bytes).unwrap();
        let e = check_or_repair(&other, &sidecar_path(&bs), None).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }
    // The first header copy damaged: the trailer copy is used and reported.
    let side = sidecar_path(&bs);
    let mut s = fs::read(&side).unwrap();
    s[20] ^= 0xff;
    fs::write(&side, &s).unwrap();
    let r = check_or_repair(&bs, &side, None).unwrap();
    assert!(r.clean && r.sidecar_damaged);
    // Damaged parity bytes are corrected like data.
    s[20] ^= 0xff;
    s[100] ^= 0x0f;
    fs::write(&side, &s).unwrap();
    let out = dir.path().join("same.bs");
    let r = check_or_repair(&bs, &side, Some(&out)).unwrap();
    assert!(r.sidecar_damaged);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&bs).unwrap());
    // A new sidecar is written next to the output and matches a fresh one.
    let fresh = fs::read(sidecar_path(&out)).unwrap();
    create(&bs).unwrap();
    assert_eq!(fresh, fs::read(&side).unwrap());
}

#[test]
fn verify_reports_the_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let bs = compressed_fixture(dir.path());
    let text = ok(&run(["verify".as_ref(), bs.as_os_str()]));
    assert!(text.contains("file intact"), "{text}");
    // A damaged byte the structure check cannot see (--fast decodes nothing) is still a
    // failed verification when the sidecar finds it.
    let c = bigsmall::format::reader::Container::open(&bs).unwrap();
    let at = c.index.tensors[0].chunks[0].offset + 3;
    drop(c);
    xor_byte(&bs, at, 0x10);
    let o = run(["verify".as_ref(), "--fast".as_ref(), bs.as_os_str()]);
    assert_eq!(code(&o), 3);
    let text = stdout(&o);
    assert!(text.contains("damaged blocks"), "{text}");
    assert!(text.ends_with("FAILED\n"), "{text}");
}

/// A sidecar that cannot be used (cut short; or disagreeing with the file nearly everywhere,
/// so that it cannot tell which of the two is damaged) fails verification too: more damage
/// never gives a better verdict.
#[test]
fn verify_fails_on_an_unusable_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let bs = compressed_fixture(dir.path());
    let side = sidecar_path(&bs);
    let good = fs::read(&side).unwrap();
    fs::write(&side, &good[..good.len() / 2]).unwrap();
    let o = run(["verify", "--fast", path_str(&bs), "--json"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["ecc_errors"].as_array().unwrap().len(), 1);
    assert!(
        stderr(&o).contains("1 ECC sidecar unusable"),
        "{}",
        stderr(&o)
    );

    fs::write(&side, &good).unwrap();
    // Every block of chunk data (the structure --fast reads stays intact) past the parity's
    // reach.
    let c = bigsmall::format::reader::Container::open(&bs).unwrap();
    let chunks = c.index.tensors.iter().flat_map(|t| &t.chunks);
    let start = chunks.clone().map(|ch| ch.offset).min().unwrap() as usize;
    let end = chunks.map(|ch| ch.offset + ch.len).max().unwrap() as usize;
    drop(c);
    let mut data = fs::read(&bs).unwrap();
    for block in data[start..end].chunks_mut(223) {
        for b in block.iter_mut().take(20) {
            *b ^= 0x5a;
        }
    }
    fs::write(&bs, &data).unwrap();
    let o = run(["verify", "--fast", path_str(&bs), "--json"]);
    assert_eq!(code(&o), 3, "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["files"][0]["problems"].as_array().unwrap().len(), 0);
    assert_eq!(v["ecc_errors"].as_array().unwrap().len(), 1, "{v}");
}

mod hostile_sidecars {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Flipped bytes and truncations anywhere in a sidecar: an error or a report, never a
        /// panic, and a repair only ever writes the original bytes.
        #[test]
        fn damaged_sidecars_never_panic(flips in proptest::collection::vec((any::<u32>(), any::<u8>()), 1..40), cut in any::<u32>(), truncate in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("x.bin");
            let data: Vec<u8> = (0..50_000u32).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
            fs::write(&src, &data).unwrap();
            create(&src).unwrap();
            let side = sidecar_path(&src);
            let mut s = fs::read(&side).unwrap();
            for (at, v) in flips {
                let i = at as usize % s.len();
                s[i] ^= v;
            }
            if truncate {
                s.truncate(cut as usize % s.len());
            }
            fs::write(&side, &s).unwrap();
            let out = dir.path().join("out.bin");
            let r = std::panic::catch_unwind(|| check_or_repair(&src, &side, Some(&out)));
            prop_assert!(r.is_ok(), "panicked");
            if out.exists() {
                prop_assert_eq!(fs::read(&out).unwrap(), data);
            }
        }
    }
}

/// A compressed directory with `--ecc`: each shard has its own sidecar, and `repair DIR`
/// checks and recovers them all.
#[test]
fn a_compressed_directory_is_checked_and_repaired_shard_by_shard() {
    let dir = tempfile::tempdir().unwrap();
    let d = compressed_dir_fixture(dir.path());
    let dp = path_str(&d).to_string();
    let shard = d.join("model-00002-of-00002.bs");
    let pristine = fs::read(&shard).unwrap();
    let intact = ok(&run(["repair", &dp, "--check"]));
    assert_eq!(intact.matches("intact").count(), 2, "{intact}");

    // A burst in one shard: reported by verify and the check, repaired into a new directory.
    let mut data = pristine.clone();
    data[3000..3400].iter_mut().for_each(|b| *b ^= 0x5a);
    fs::write(&shard, &data).unwrap();
    let v = run(["verify", &dp]);
    assert_eq!(code(&v), 3);
    assert!(stdout(&v).contains("repairable with `bigsmall repair`"));
    // The check finds damage: exit 3, as verify's; it says what a repair would correct.
    let c = run(["repair", &dp, "--check"]);
    assert_eq!(code(&c), 3);
    let check = stdout(&c);
    assert!(check.contains("repairable: run with -o OUT"), "{check}");
    assert!(
        check.contains("bytes to correct") && !check.contains("bytes corrected"),
        "{check}"
    );
    let c = run(["repair", &dp, "--check", "--json"]);
    assert_eq!(code(&c), 3);
    let j = json(&stdout(&c));
    assert_eq!(j["shards"][1]["file"], "model-00002-of-00002.bs");
    assert!(j["shards"][1]["damaged_blocks"].as_u64().unwrap() > 0);
    assert_eq!(j["lost_blocks"], 0);
    let fixed = dir.path().join("fixed");
    ok(&run(["repair", &dp, "-o", path_str(&fixed)]));
    assert!(fs::read(fixed.join("model-00002-of-00002.bs")).unwrap() == pristine);
    for f in [
        "bigsmall.index.json",
        "config.json",
        "model-00001-of-00002.bs",
    ] {
        assert_eq!(
            fs::read(fixed.join(f)).unwrap(),
            fs::read(d.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(sidecar_path(&fixed.join("model-00002-of-00002.bs")).is_file());
    assert!(ok(&run(["verify", path_str(&fixed)]))
        .trim_end()
        .ends_with("OK"));
    let again = ok(&run(["repair", path_str(&fixed), "--check"]));
    assert_eq!(again.matches("intact").count(), 2, "{again}");

    // Damage beyond the parity: exit 3, nothing written.
    data[1000..60_000].fill(0x55);
    fs::write(&shard, &data).unwrap();
    let never = dir.path().join("never");
    let e = fails(&run(["repair", &dp, "-o", path_str(&never)]), 3);
    assert!(e.contains("exceeds") || e.contains("beyond"), "{e}");
    assert!(!never.exists());
    let c = run(["repair", &dp, "--check"]);
    assert_eq!(code(&c), 3);
    assert!(stdout(&c).contains("NOT repairable"), "{}", stdout(&c));

    // A side file gone: damage (exit 3) before anything is checked or written.
    let config = fs::read(d.join("config.json")).unwrap();
    fs::remove_file(d.join("config.json")).unwrap();
    for args in [
        vec!["repair", &dp, "--check"],
        vec!["repair", &dp, "-o", path_str(&never)],
    ] {
        let e = fails(&run(&args), 3);
        assert!(e.contains("config.json") && e.contains("missing"), "{e}");
    }
    assert!(!never.exists());
    fs::write(d.join("config.json"), config).unwrap();

    // A shard without its sidecar is verified by decoding and copied as it is, while the
    // others are repaired; damaged, it is beyond repair (exit 3, nothing written).
    let first = d.join("model-00001-of-00002.bs");
    fs::remove_file(sidecar_path(&first)).unwrap();
    let mut burst = pristine.clone();
    burst[3000..3400].iter_mut().for_each(|b| *b ^= 0x5a);
    fs::write(&shard, &burst).unwrap();
    let mixed = dir.path().join("mixed");
    let text = ok(&run(["repair", &dp, "-o", path_str(&mixed)]));
    assert!(
        text.contains("intact (no ECC sidecar: every chunk decoded"),
        "{text}"
    );
    assert!(
        text.contains("1 shard without one copied as it was"),
        "{text}"
    );
    assert!(fs::read(mixed.join("model-00002-of-00002.bs")).unwrap() == pristine);
    assert_eq!(
        fs::read(mixed.join("model-00001-of-00002.bs")).unwrap(),
        fs::read(&first).unwrap()
    );
    assert!(!sidecar_path(&mixed.join("model-00001-of-00002.bs")).exists());
    let j = json(&stdout(&run(["repair", &dp, "--check", "--json"])));
    assert!(j["shards"][0]["no_sidecar"].is_string(), "{j}");
    fs::write(&shard, &pristine).unwrap();
    let kept = fs::read(&first).unwrap();
    let mut bad = kept.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0xff;
    fs::write(&first, &bad).unwrap();
    let e = fails(&run(["repair", &dp, "-o", path_str(&never)]), 3);
    assert!(
        e.contains("model-00001-of-00002.bs") && e.contains("no ECC sidecar"),
        "{e}"
    );
    assert!(!never.exists());
    // The check reports it with the others (exit 3), not in place of them.
    let c = run(["repair", &dp, "--check"]);
    assert_eq!(code(&c), 3);
    let text = stdout(&c);
    assert!(
        text.contains("DAMAGED, and no ECC sidecar to repair it from"),
        "{text}"
    );
    assert!(
        text.contains("model-00002-of-00002.bs:\n    intact"),
        "{text}"
    );
    assert!(text.contains("a damaged shard has no sidecar"), "{text}");
    // Too damaged to open (truncated): still one shard's finding among the others.
    fs::write(&first, &kept[..kept.len() - 100]).unwrap();
    let c = run(["repair", &dp, "--check"]);
    assert_eq!(code(&c), 3);
    let text = stdout(&c);
    assert!(text.contains("DAMAGED, and no ECC sidecar"), "{text}");
    assert!(
        text.contains("model-00002-of-00002.bs:\n    intact"),
        "{text}"
    );
    fs::write(&first, &kept).unwrap();

    // No sidecar anywhere: nothing to repair from, said so (a file's too).
    let second_sidecar = sidecar_path(&shard);
    let saved = fs::read(&second_sidecar).unwrap();
    fs::remove_file(&second_sidecar).unwrap();
    let e = fails(&run(["repair", &dp, "--check"]), 1);
    assert!(e.contains("no shard has an ECC sidecar"), "{e}");
    let e = fails(&run(["repair", path_str(&shard), "--check"]), 1);
    assert!(e.contains("no ECC sidecar at"), "{e}");
    fs::write(&second_sidecar, saved).unwrap();

    // --ecc with a directory is a usage error.
    let o = run(["repair", &dp, "--check", "--ecc", "x.ecc"]);
    assert_eq!(code(&o), 2, "a usage error");
    assert!(stderr(&o).contains("--ecc"), "{}", stderr(&o));
    // The output may not be the directory itself, nor lie inside it.
    for o in [d.clone(), d.join("fixed")] {
        let e = fails(&run(["repair", &dp, "-o", path_str(&o), "-f"]), 1);
        assert!(e.contains("the input"), "{e}");
    }
    assert!(!d.join("fixed").exists());
    assert_no_leftovers(dir.path());
}

/// `-f` replaces a file and its sidecar with it: a run without `--ecc` leaves no sidecar of
/// the file it replaced (it would only report the new file as damaged); a directory that had
/// sidecars is replaced too, not refused for holding files this run does not write.
#[test]
fn replacing_an_output_replaces_its_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let bs = compressed_fixture(dir.path());
    ok(&run([
        "compress".as_ref(),
        fixture("minilm-f16.safetensors").as_os_str(),
        "-o".as_ref(),
        bs.as_os_str(),
        "-f".as_ref(),
        "--no-progress".as_ref(),
    ]));
    assert!(!sidecar_path(&bs).exists());
    let v = ok(&run(["verify", path_str(&bs)]));
    assert!(!v.contains("ecc"), "{v}");

    let d = dir.path().join("model");
    let sharded = fixture("sharded");
    for ecc in [true, false] {
        let mut args = vec!["compress", path_str(&sharded), "-o", path_str(&d), "-f"];
        if ecc {
            args.push("--ecc");
        }
        ok(&run(&args));
        assert_eq!(
            sidecar_path(&d.join("model-00001-of-00002.bs")).exists(),
            ecc
        );
    }
}

/// The repaired file's sidecar goes beside it: it may not land on the sidecar being read.
#[test]
fn a_repair_never_writes_over_its_input_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let bs = compressed_fixture(dir.path());
    let side = dir.path().join("side.ecc");
    fs::rename(sidecar_path(&bs), &side).unwrap();
    let before = fs::read(&side).unwrap();
    let out = dir.path().join("side");
    let e = fails(
        &run([
            "repair",
            path_str(&bs),
            "--ecc",
            path_str(&side),
            "-o",
            path_str(&out),
            "-f",
        ]),
        1,
    );
    assert!(e.contains("side.ecc"), "{e}");
    assert_eq!(fs::read(&side).unwrap(), before);
    assert!(!out.exists());
}

/// Bytes appended to a protected file are damage the sidecar finds and a repair drops.
#[test]
fn appended_bytes_are_found_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let bs = compressed_fixture(dir.path());
    let original = fs::read(&bs).unwrap();
    let mut longer = original.clone();
    longer.extend_from_slice(b"garbage\n");
    fs::write(&bs, &longer).unwrap();
    let o = run(["repair", path_str(&bs), "--check"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stdout(&o).contains("8 bytes appended"), "{}", stdout(&o));
    let out = dir.path().join("fixed.bs");
    ok(&run(["repair", path_str(&bs), "-o", path_str(&out)]));
    assert_eq!(fs::read(&out).unwrap(), original);
}

/// `repair --check` reads the parity as well, so it finds a damaged sidecar beside an intact
/// file (exit 3: something is damaged); `-o` writes a fresh one.
#[test]
fn a_check_finds_a_damaged_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let bs = compressed_fixture(dir.path());
    xor_byte(&sidecar_path(&bs), 5000, 0x21);
    let o = run(["repair", path_str(&bs), "--check", "--json"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["clean"], true);
    assert_eq!(v["sidecar_damaged"], true);
    // verify finds it too (all but --fast read the parity): the file's protection is not
    // what was written.
    let o = run(["verify", path_str(&bs)]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("the sidecar itself is damaged"),
        "{}",
        stdout(&o)
    );
    let out = dir.path().join("fresh.bs");
    ok(&run(["repair", path_str(&bs), "-o", path_str(&out)]));
    ok(&run(["repair", path_str(&out), "--check"]));
}

/// Shards swapped under their names take their sidecars along, so each checks as intact:
/// repair finds the swap as verify does (exit 3), and writes nothing.
#[test]
fn swapped_shards_are_damage_for_repair() {
    let dir = tempfile::tempdir().unwrap();
    let d = compressed_dir_fixture(dir.path());
    let (a, b) = (
        d.join("model-00001-of-00002.bs"),
        d.join("model-00002-of-00002.bs"),
    );
    for (x, y) in [(a.clone(), b.clone()), (sidecar_path(&a), sidecar_path(&b))] {
        let t = dir.path().join("t");
        fs::rename(&x, &t).unwrap();
        fs::rename(&y, &x).unwrap();
        fs::rename(&t, &y).unwrap();
    }
    let out = dir.path().join("rec");
    for args in [
        vec!["repair", path_str(&d), "--check"],
        vec!["repair", path_str(&d), "-o", path_str(&out)],
    ] {
        let e = fails(&run(&args), 3);
        assert!(e.contains("swapped or replaced"), "{args:?}: {e}");
    }
    assert!(!out.exists());
}

/// In a directory, a shard whose sidecar cannot be used is checked by decoding, like one
/// without: it does not stop the other shards' repair.
#[test]
fn an_unusable_shard_sidecar_does_not_block_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("model");
    ok(&run([
        "compress",
        path_str(&fixture("sharded")),
        "-o",
        path_str(&d),
        "--ecc",
    ]));
    let first = d.join("model-00001-of-00002.bs");
    let second = sidecar_path(&d.join("model-00002-of-00002.bs"));
    xor_byte(&first, 3000, 0x40);
    let s = fs::read(&second).unwrap();
    fs::write(&second, &s[..s.len() - 100]).unwrap();
    let o = run(["repair", path_str(&d), "--check"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("its ECC sidecar is unusable"),
        "{}",
        stdout(&o)
    );
    let out = dir.path().join("fixed");
    ok(&run(["repair", path_str(&d), "-o", path_str(&out)]));
    // The shard keeps its protection: a fresh sidecar, and the copy checks clean.
    assert!(sidecar_path(&out.join("model-00002-of-00002.bs")).is_file());
    ok(&run(["repair", path_str(&out), "--check"]));
    let back = dir.path().join("back");
    ok(&run(["decompress", path_str(&out), "-o", path_str(&back)]));
    ok(&run([
        "verify",
        path_str(&out),
        "--source",
        path_str(&fixture("sharded")),
    ]));
}

/// `--json` gives the sidecar's size, as the text report does.
#[test]
fn the_json_report_gives_the_sidecar_size() {
    let dir = tempfile::tempdir().unwrap();
    let bs = dir.path().join("m.bs");
    let text = ok(&run([
        "compress",
        path_str(&fixture("minilm-f16.safetensors")),
        "-o",
        path_str(&bs),
        "--ecc",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let side = fs::metadata(sidecar_path(&bs)).unwrap().len();
    assert_eq!(v["ecc_bytes"].as_u64(), Some(side));
}
