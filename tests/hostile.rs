//! Hostile inputs: the readers must never panic, never allocate absurdly, and always answer with
//! a one-line error naming the file.
//!
//! Inputs tried per full run (`cargo test --release --test hostile`), besides about 115
//! hand-written cases below:
//! - truncation: every section boundary of a small container plus 200 random lengths (~270);
//! - proptest, 5 properties: random byte flips of a whole container (500 cases), byte flips
//!   inside its index JSON behind a correct checksum (500), `codec::decode_chunk` on random
//!   blobs for every `ElemKind` (10,000), on blobs behind every codec tag (10,000), and on
//!   mutated valid blobs decoded by the native (AVX-512), AVX2 and portable paths (5,000).
//!
//! In all 26,000 proptest cases; about 26,400 inputs with the truncations and hand-written
//! cases (the constants `FLIP_CASES`, `BLOB_CASES`, `MUTATED_CASES` set the counts).

mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Value};
use tempfile::TempDir;

use bigsmall::codec::{decode_chunk, encode_chunk, Effort, ElemKind};
use bigsmall::error::Error;
use bigsmall::format::reader::Container;
use bigsmall::format::{Trailer, DATA_START, MAX_INDEX_JSON, PREAMBLE_LEN, TRAILER_LEN};
use bigsmall::model::safetensors::SafetensorsFile;
use bigsmall::progress::Silent;
use bigsmall::store::{decompress_file, DecompressOptions};
use bigsmall::store_dir::{compress_dir, decompress_dir, read_dir_index, DIR_INDEX};

use common::*;

/// Asserts a library error is one line and names `path`.
fn one_line(e: &Error, path: &Path) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error is not one line: {s:?}");
    assert!(
        s.contains(path_str(path)),
        "error does not name {}: {s}",
        path.display()
    );
    s
}

/// Cases per property: whole-container flips and index flips (each a full decompression).
const FLIP_CASES: u32 = 500;
/// Cases per property: random and tagged blobs for `decode_chunk` (microseconds each).
const BLOB_CASES: u32 = 10_000;
/// Cases for mutated valid blobs, each decoded three times (native, AVX2, portable).
const MUTATED_CASES: u32 = 5_000;

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Never write regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The zoo model and its balanced container, built once per test binary.
struct Zoo {
    _dir: TempDir,
    src: Vec<u8>,
    bs: Vec<u8>,
}

fn zoo_fixture() -> &'static Zoo {
    static ZOO: OnceLock<Zoo> = OnceLock::new();
    ZOO.get_or_init(|| {
        let dir = tmp();
        let src = zoo();
        let sp = dir.path().join("zoo.safetensors");
        fs::write(&sp, &src).expect("write");
        let bp = dir.path().join("zoo.bs");
        compress_lib(&sp, &bp, Effort::Balanced);
        let bs = fs::read(&bp).expect("read");
        Zoo { _dir: dir, src, bs }
    })
}

/// A fresh, unique path in `dir`.
fn unique(dir: &Path, stem: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!("{stem}-{}", N.fetch_add(1, Ordering::Relaxed)))
}

/// What happened to a (possibly damaged) container.
enum Outcome {
    /// Refused, with this one-line message.
    Refused(String),
    /// Decompressed to these bytes.
    Decoded(Vec<u8>),
}

/// Opens and fully decompresses `bytes` (with md5 receipts checked), in its own files under
/// `dir`; panics (with the input described) if the library panics, if an error is not one
/// line, or if a failed decompression leaves an output file.
fn attempt(dir: &Path, bytes: &[u8], what: &str) -> Outcome {
    let p = unique(dir, "case.bs");
    let out = unique(dir, "out.safetensors");
    fs::write(&p, bytes).expect("write");
    let r = catch_unwind(AssertUnwindSafe(|| {
        decompress_file(
            &p,
            &out,
            &DecompressOptions {
                overwrite: false,
                check_md5: true,
            },
            &Silent,
        )
    }))
    .unwrap_or_else(|_| panic!("decompress_file panicked on {what}"));
    let outcome = match r {
        Err(e) => {
            assert!(!out.exists(), "{what}: failed decompression left {out:?}");
            Outcome::Refused(one_line(&e, &p))
        }
        Ok(_) => Outcome::Decoded(fs::read(&out).expect("output")),
    };
    let _ = fs::remove_file(&p);
    let _ = fs::remove_file(&out);
    assert_no_leftovers(dir);
    outcome
}

// ---------------------------------------------------------------------------------------------
// 1. Truncation

#[test]
fn zoo_covers_every_codec() {
    let z = zoo_fixture();
    let dir = tmp();
    let p = dir.path().join("zoo.bs");
    fs::write(&p, &z.bs).expect("write");
    let c = Container::open(&p).expect("opens");
    let tags: std::collections::BTreeSet<u8> = c
        .index
        .tensors
        .iter()
        .flat_map(|t| t.chunks.iter().map(|c| c.codec))
        .collect();
    // raw, zstd, split16, split32, byte rANS, fill, byte planes, palette16
    for tag in 0..=7u8 {
        assert!(
            tags.contains(&tag),
            "no chunk uses codec tag {tag}: {tags:?}"
        );
    }
    assert!(c.index.tensors.iter().any(|t| t.dup_of.is_some()));
    match attempt(dir.path(), &z.bs, "the intact zoo") {
        Outcome::Decoded(b) => assert!(b == z.src, "zoo round trip"),
        Outcome::Refused(e) => panic!("intact zoo refused: {e}"),
    }
}

#[test]
fn truncation_at_every_boundary_is_refused() {
    let z = zoo_fixture();
    let dir = tmp();
    let full = dir.path().join("full.bs");
    fs::write(&full, &z.bs).expect("write");
    let c = Container::open(&full).expect("opens");
    let n = z.bs.len() as u64;
    let t = c.trailer;
    let mut cuts: Vec<u64> = vec![0, 1, 7, 8, 11, 12, PREAMBLE_LEN as u64, 20, DATA_START - 1];
    cuts.push(DATA_START);
    for te in &c.index.tensors {
        for ch in &te.chunks {
            cuts.extend([
                ch.offset,
                ch.offset + 1,
                ch.offset + ch.len / 2,
                ch.offset + ch.len - 1,
                ch.offset + ch.len,
            ]);
        }
    }
    cuts.extend([
        t.index_offset - 1,
        t.index_offset,
        t.index_offset + 1,
        t.index_offset + t.index_len / 2,
        t.index_offset + t.index_len - 1,
        n - TRAILER_LEN as u64,
        n - TRAILER_LEN as u64 + 8,
        n - 20,
        n - 8,
        n - 1,
    ]);
    let mut rng = Rng(0x7275_6e63);
    cuts.extend((0..200).map(|_| rng.next_u64() % n));
    cuts.sort_unstable();
    cuts.dedup();
    drop(c);
    for &cut in &cuts {
        let bytes = &z.bs[..cut as usize];
        // Opening alone must refuse: the trailer is gone.
        let p = unique(dir.path(), "cut.bs");
        fs::write(&p, bytes).expect("write");
        let r = catch_unwind(|| Container::open(&p))
            .unwrap_or_else(|_| panic!("Container::open panicked at length {cut}"));
        match r {
            Err(e) => {
                one_line(&e, &p);
            }
            Ok(_) => panic!("a container truncated to {cut} of {n} bytes opened"),
        }
        let _ = fs::remove_file(&p);
        match attempt(dir.path(), bytes, &format!("truncation to {cut}")) {
            Outcome::Refused(_) => {}
            Outcome::Decoded(_) => panic!("truncation to {cut} decoded"),
        }
    }
    // The CLI agrees, at a few of them.
    for cut in [0, 63, t.index_offset, n - 1] {
        let p = dir.path().join(format!("cli-{cut}.bs"));
        fs::write(&p, &z.bs[..cut as usize]).expect("write");
        let out = dir.path().join("cli-out");
        let want = if cut < 8 { 1 } else { 3 };
        fails(
            &run(["decompress", path_str(&p), "-o", path_str(&out)]),
            want,
        );
        // Verify reports a damaged container as a finding (exit 3); no magic, no container.
        let o = run(["verify", path_str(&p)]);
        if cut < 8 {
            fails(&o, 1);
        } else {
            assert_eq!(code(&o), 3, "truncation to {cut}");
            assert!(stdout(&o).contains("MISMATCH"), "{}", stdout(&o));
        }
        assert!(!out.exists());
    }
}

/// A truncated blob region behind an intact index and trailer (the index then points past the
/// shortened data): refused before any blob is read.
#[test]
fn blob_region_cut_out_is_refused() {
    let z = zoo_fixture();
    let dir = tmp();
    let t = trailer_of(&z.bs);
    let tail = &z.bs[t.index_offset as usize..];
    for keep in [
        DATA_START as usize,
        t.index_offset as usize / 2,
        t.index_offset as usize - 1,
    ] {
        let mut b = z.bs[..keep].to_vec();
        b.extend_from_slice(tail);
        match attempt(dir.path(), &b, &format!("blob region cut to {keep}")) {
            Outcome::Refused(e) => assert!(e.contains("trailer"), "{e}"),
            Outcome::Decoded(_) => panic!("decoded with the blob region cut"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Random damage

proptest! {
    #![proptest_config(proptest_config(FLIP_CASES))]

    /// Any few flipped bytes anywhere: refused, or decoded to exactly the original.
    #[test]
    fn random_byte_flips_are_caught(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4)
    ) {
        let z = zoo_fixture();
        let dir = tmp();
        let mut b = z.bs.clone();
        let mut at = Vec::new();
        for (i, m) in &flips {
            let k = i.index(b.len());
            b[k] ^= m;
            at.push((k, *m));
        }
        if let Outcome::Decoded(out) = attempt(dir.path(), &b, &format!("flips {at:?}")) {
            prop_assert!(out == z.src, "flips {:?} decoded to different bytes", at);
        }
    }

    /// Byte flips inside the index JSON, behind a correct checksum: the index lies. Refused,
    /// or the output is a valid safetensors file whose tensors match their md5 receipts.
    #[test]
    fn lying_index_flips_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..3)
    ) {
        let z = zoo_fixture();
        let dir = tmp();
        let mut json = index_json(&z.bs);
        for (i, m) in &flips {
            let k = i.index(json.len());
            json[k] ^= m;
        }
        let b = with_index_json(&z.bs, &json);
        let what = format!("index flips {flips:?}");
        if let Outcome::Decoded(out) = attempt(dir.path(), &b, &what) {
            let p = dir.path().join("decoded.safetensors");
            fs::write(&p, &out).expect("write");
            let st = SafetensorsFile::open(&p);
            prop_assert!(st.is_ok(), "{}: output is not safetensors: {:?}", what, st.err());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A lying index (and trailer, and preamble)

fn tensors(v: &mut Value) -> &mut Vec<Value> {
    v["tensors"].as_array_mut().expect("tensors")
}

fn chunk0(v: &mut Value, t: usize) -> &mut Value {
    &mut tensors(v)[t]["chunks"][0]
}

/// Index of the zoo's duplicate tensor (checking the layout the cases below rely on).
fn zoo_dup() -> usize {
    let v = index_value(&zoo_fixture().bs);
    let ts = v["tensors"].as_array().expect("tensors");
    let dup = ts
        .iter()
        .position(|t| t.get("dup_of").is_some())
        .expect("a duplicate");
    assert_eq!(ts[0]["dtype"], "BF16");
    assert!(!ts[0]["chunks"].as_array().expect("chunks").is_empty());
    assert!(!ts[1]["chunks"].as_array().expect("chunks").is_empty());
    dup
}

#[test]
fn lying_index_is_refused() {
    let z = zoo_fixture();
    let bs = &z.bs;
    let dup = zoo_dup();
    let n = bs.len() as u64;
    let t = trailer_of(bs);
    let json = index_json(bs);
    let text = String::from_utf8(json.clone()).expect("utf-8 index");
    let v0 = index_value(bs);
    let name0 = v0["tensors"][0]["name"].as_str().expect("name").to_string();
    let name_field = format!("\"name\":\"{name0}\"");
    assert!(text.contains(&name_field));
    let ix = |f: &dyn Fn(&mut Value)| edit_index(bs, f);

    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "chunk offset past EOF",
            ix(&|v| chunk0(v, 0)["o"] = json!(n + 100)),
            "outside the data section",
        ),
        (
            "chunk offset u64::MAX",
            ix(&|v| chunk0(v, 0)["o"] = json!(u64::MAX)),
            "outside the data section",
        ),
        (
            "chunk len u64::MAX",
            ix(&|v| chunk0(v, 0)["l"] = json!(u64::MAX)),
            "outside the data section",
        ),
        (
            "chunk len 0",
            ix(&|v| chunk0(v, 0)["l"] = json!(0)),
            "outside the data section",
        ),
        (
            "chunk in the preamble",
            ix(&|v| chunk0(v, 0)["o"] = json!(0)),
            "outside the data section",
        ),
        (
            "chunk running into the index",
            ix(&|v| {
                chunk0(v, 0)["o"] = json!(t.index_offset - 1);
                chunk0(v, 0)["l"] = json!(2);
            }),
            "outside the data section",
        ),
        (
            "raw_len 1<<60",
            ix(&|v| chunk0(v, 0)["n"] = json!(1u64 << 60)),
            "impossible chunk length",
        ),
        (
            "raw_len 0",
            ix(&|v| chunk0(v, 0)["n"] = json!(0)),
            "impossible chunk length",
        ),
        (
            "raw_len not whole elements",
            ix(&|v| {
                let k = chunk0(v, 0)["n"].as_u64().expect("n");
                chunk0(v, 0)["n"] = json!(k - 1);
            }),
            "impossible chunk length",
        ),
        (
            "chunks cover too little",
            ix(&|v| {
                let k = chunk0(v, 0)["n"].as_u64().expect("n");
                chunk0(v, 0)["n"] = json!(k - 2);
            }),
            "chunks cover",
        ),
        (
            "shape [2^40, 2^40]",
            ix(&|v| tensors(v)[0]["shape"] = json!([1u64 << 40, 1u64 << 40])),
            "overflowing shape",
        ),
        (
            "shape [2^62]",
            ix(&|v| tensors(v)[0]["shape"] = json!([1u64 << 62])),
            "overflowing shape",
        ),
        (
            "shape disagreeing with offsets",
            ix(&|v| tensors(v)[0]["shape"] = json!([48, 65])),
            "inconsistent",
        ),
        (
            "dtype NOPE",
            ix(&|v| tensors(v)[0]["dtype"] = json!("NOPE")),
            "unknown dtype",
        ),
        (
            "dtype changed to a valid other one",
            ix(&|v| tensors(v)[0]["dtype"] = json!("F32")),
            "inconsistent",
        ),
        (
            "duplicated names",
            ix(&|v| {
                let a = tensors(v)[0]["name"].clone();
                tensors(v)[1]["name"] = a;
            }),
            "appears twice",
        ),
        (
            "dup_of pointing forward",
            ix(&|v| {
                tensors(v)[0]["dup_of"] = json!(dup);
                tensors(v)[0]["chunks"] = json!([]);
            }),
            "invalid duplicate",
        ),
        (
            "dup_of pointing at itself",
            ix(&|v| tensors(v)[dup]["dup_of"] = json!(dup)),
            "invalid duplicate",
        ),
        (
            "dup_of out of range",
            ix(&|v| tensors(v)[dup]["dup_of"] = json!(usize::MAX)),
            "invalid duplicate",
        ),
        (
            "dup_of a tensor of another size",
            ix(&|v| tensors(v)[dup]["dup_of"] = json!(1)),
            "invalid duplicate",
        ),
        (
            "dup_of with chunks of its own",
            ix(&|v| {
                let c = tensors(v)[0]["chunks"].clone();
                tensors(v)[dup]["chunks"] = c;
            }),
            "invalid duplicate",
        ),
        (
            "dup_of a duplicate",
            ix(&|v| {
                // A copy of the duplicate, placed right after it (later offsets shifted so
                // the offsets stay consistent), pointing at the duplicate.
                let mut extra = tensors(v)[dup].clone();
                let [s, e] = [0, 1].map(|k| extra["offsets"][k].as_u64().expect("offset"));
                let len = e - s;
                extra["offsets"] = json!([e, e + len]);
                extra["dup_of"] = json!(dup);
                extra["name"] = json!("extra");
                for t in tensors(v)[dup + 1..].iter_mut() {
                    let [a, b] = [0, 1].map(|k| t["offsets"][k].as_u64().expect("offset"));
                    t["offsets"] = json!([a + len, b + len]);
                }
                tensors(v).insert(dup + 1, extra);
            }),
            "invalid duplicate",
        ),
        (
            "overlapping chunks",
            ix(&|v| {
                let o = chunk0(v, 0)["o"].clone();
                chunk0(v, 1)["o"] = o;
            }),
            "overlapping",
        ),
        (
            "chunks out of order",
            ix(&|v| {
                let a = chunk0(v, 0).clone();
                let b = chunk0(v, 1).clone();
                chunk0(v, 0)["o"] = b["o"].clone();
                chunk0(v, 0)["l"] = b["l"].clone();
                chunk0(v, 1)["o"] = a["o"].clone();
                chunk0(v, 1)["l"] = a["l"].clone();
            }),
            "overlapping",
        ),
        (
            "overlapping tensor offsets",
            ix(&|v| {
                let s = tensors(v)[1]["offsets"][0].as_u64().expect("s");
                let e = tensors(v)[1]["offsets"][1].as_u64().expect("e");
                tensors(v)[1]["offsets"] = json!([s - 2, e - 2]);
            }),
            "inconsistent",
        ),
        (
            "reversed tensor offsets",
            ix(&|v| {
                let s = tensors(v)[0]["offsets"][0].clone();
                let e = tensors(v)[0]["offsets"][1].clone();
                tensors(v)[0]["offsets"] = json!([e, s]);
            }),
            "inconsistent",
        ),
        (
            "offsets near u64::MAX",
            ix(&|v| {
                let last = tensors(v).len() - 1;
                tensors(v)[last]["offsets"] = json!([u64::MAX - 3, u64::MAX]);
            }),
            "inconsistent",
        ),
        (
            "malformed md5",
            ix(&|v| tensors(v)[0]["md5"] = json!("zz")),
            "md5",
        ),
        (
            "source size lies",
            ix(&|v| {
                let s = v["source"]["file_size"].as_u64().expect("size");
                v["source"]["file_size"] = json!(s + 1);
            }),
            "source size",
        ),
        (
            "stored header renames a tensor",
            ix(&|v| {
                let h = v["source"]["header"].as_str().expect("header");
                let h = h.replacen("model.embed_tokens.weight", "model.embed_tokens.weighX", 1);
                v["source"]["header"] = json!(h);
            }),
            "header disagrees",
        ),
        (
            "stored header is not JSON",
            ix(&|v| v["source"]["header"] = json!("nope")),
            "header is invalid",
        ),
        (
            "stored header lists no tensors",
            ix(&|v| v["source"]["header"] = json!("{}")),
            "header disagrees",
        ),
        (
            "empty tensor name",
            ix(&|v| tensors(v)[0]["name"] = json!("")),
            "header disagrees",
        ),
        (
            "format is not bigsmall",
            ix(&|v| v["format"] = json!("smallbig")),
            "not bigsmall",
        ),
        (
            "source kind",
            ix(&|v| v["source"]["kind"] = json!("gguf")),
            "unknown source kind",
        ),
        (
            "mode unknown",
            ix(&|v| v["mode"] = json!("turbo")),
            "malformed",
        ),
        (
            "negative shape",
            ix(&|v| tensors(v)[0]["shape"] = json!([-1, 64])),
            "malformed",
        ),
        (
            "tensors is not a list",
            ix(&|v| v["tensors"] = json!({"a": 1})),
            "malformed",
        ),
        (
            "tensors missing",
            ix(&|v| {
                v.as_object_mut().expect("object").remove("tensors");
            }),
            "malformed",
        ),
        (
            "non-UTF-8 tensor name",
            with_index_json(
                bs,
                &text
                    .replacen(&name_field, "\"name\":\"\u{0}\"", 1)
                    .into_bytes()
                    .into_iter()
                    .map(|b| if b == 0 { 0xff } else { b })
                    .collect::<Vec<u8>>(),
            ),
            "malformed",
        ),
        (
            "lone surrogate in a tensor name",
            with_index_json(
                bs,
                text.replacen(&name_field, "\"name\":\"\\ud800\"", 1)
                    .as_bytes(),
            ),
            "malformed",
        ),
        (
            "index JSON cut in half",
            with_index_json(bs, &json[..json.len() / 2]),
            "malformed",
        ),
        (
            "index is not JSON",
            with_index_json(bs, b"\x00\x01not json at all"),
            "malformed",
        ),
        (
            "index nested 100000 deep",
            with_index_json(bs, "[".repeat(100_000).as_bytes()),
            "malformed",
        ),
        ("index JSON is empty", with_index_json(bs, b""), "malformed"),
    ];

    // The trailer.
    let tr = |f: &dyn Fn(&mut Trailer)| {
        let mut t2 = t;
        f(&mut t2);
        with_trailer(bs, t2)
    };
    cases.extend([
        (
            "index_json_len 2^40",
            tr(&|t| t.index_json_len = 1 << 40),
            "more than",
        ),
        (
            "index_json_len u64::MAX",
            tr(&|t| t.index_json_len = u64::MAX),
            "more than",
        ),
        (
            "index_json_len one short",
            tr(&|t| t.index_json_len -= 1),
            "index",
        ),
        (
            "index_json_len one long",
            tr(&|t| t.index_json_len += 1),
            "index",
        ),
        (
            "index_json_len at the limit",
            tr(&|t| t.index_json_len = MAX_INDEX_JSON),
            "index",
        ),
        ("index_json_len 0", tr(&|t| t.index_json_len = 0), "index"),
        ("index hash", tr(&|t| t.index_hash ^= 1), "checksum"),
        (
            "index offset + len overflow",
            tr(&|t| t.index_offset = u64::MAX - 10),
            "outside the file",
        ),
        (
            "index offset and len both shifted",
            tr(&|t| {
                t.index_offset += 1;
                t.index_len -= 1;
            }),
            "checksum",
        ),
        (
            "index inside the preamble",
            tr(&|t| {
                t.index_len += t.index_offset - 10;
                t.index_offset = 10;
            }),
            "impossible index location",
        ),
        (
            "index len 0",
            tr(&|t| {
                t.index_offset += t.index_len;
                t.index_len = 0;
            }),
            "impossible index location",
        ),
    ]);
    // An index that is not a zstd frame, behind a correct checksum.
    {
        let mut b = bs[..t.index_offset as usize].to_vec();
        let junk = Rng(3).bytes(200);
        b.extend_from_slice(&junk);
        b.extend_from_slice(
            &Trailer {
                index_offset: t.index_offset,
                index_len: junk.len() as u64,
                index_json_len: 1000,
                index_hash: bigsmall::format::fast_hash(&junk),
            }
            .to_bytes(),
        );
        cases.push(("index is not zstd", b, "does not decompress"));
    }
    // The preamble.
    let pre = |at: usize, val: &[u8]| {
        let mut b = bs.clone();
        b[at..at + val.len()].copy_from_slice(val);
        b
    };
    cases.extend([
        // Only the version differs from a good file whose index reads as this build's
        // format: damage (a newer major whose index does not read: newer_minor_version_still_reads).
        (
            "newer major version",
            pre(8, &2u16.to_le_bytes()),
            "version bytes read 2.",
        ),
        (
            "major version 0xffff",
            pre(8, &[0xff, 0xff]),
            "version bytes read 65535.",
        ),
        ("major version 0", pre(8, &0u16.to_le_bytes()), "version"),
        ("flags set", pre(12, &[1, 0, 0, 0]), "version"),
        // The trailer and index still read: damage, said as such.
        ("bad magic", pre(0, b"SMALLBIG"), "not the container magic"),
    ]);

    let dir = tmp();
    let out_dir = tmp();
    for (what, bytes, expect) in &cases {
        let p = dir
            .path()
            .join(format!("{}.bs", what.replace([' ', '/'], "_")));
        fs::write(&p, bytes).expect("write");
        let r = catch_unwind(|| Container::open(&p))
            .unwrap_or_else(|_| panic!("Container::open panicked on: {what}"));
        let e = match r {
            Ok(_) => panic!("{what}: a lying container opened"),
            Err(e) => one_line(&e, &p),
        };
        assert!(e.contains(expect), "{what}: expected '{expect}' in: {e}");
        if what.contains("major") && !what.ends_with(" 0") {
            assert!(matches!(
                Container::open(&p),
                Err(Error::BadContainer { .. })
            ));
        }
        match attempt(out_dir.path(), bytes, what) {
            Outcome::Refused(_) => {}
            Outcome::Decoded(_) => panic!("{what}: decompress_file succeeded"),
        }
        // The CLI: exit 3 (damage found), one line, no output; exit 1 where the file is not
        // a container (no magic) or says it is a newer format.
        let want = match Container::open(&p) {
            Err(Error::NewerFormat { .. }) => 1,
            _ if bigsmall::format::is_container(&p) => 3,
            _ => 1,
        };
        let out = out_dir.path().join("cli.safetensors");
        let e = fails(
            &run(["decompress", path_str(&p), "-o", path_str(&out)]),
            want,
        );
        assert!(e.contains(expect), "{what}: {e}");
        assert!(!out.exists());
        fails(&run(["info", path_str(&p)]), want);
    }
    assert_no_leftovers(out_dir.path());
    assert!(cases.len() >= 50, "{} cases", cases.len());
}

/// Lies the structure checks cannot see (they only change blob meanings or receipts) are caught
/// when the data is decoded: exit 3.
#[test]
fn lying_receipts_are_integrity_failures() {
    let z = zoo_fixture();
    let bs = &z.bs;
    let dir = tmp();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "chunk hash",
            edit_index(bs, |v| {
                let h = chunk0(v, 0)["h"].as_u64().expect("h");
                chunk0(v, 0)["h"] = json!(h ^ 1);
            }),
            false,
        ),
        (
            "chunk pointing at another blob",
            edit_index(bs, |v| {
                // tensor 0's only chunk moved onto the start of tensor 1's blob, same length
                // budget: still inside the file and not overlapping anything before it.
                let o1 = chunk0(v, 1)["o"].as_u64().expect("o");
                let l0 = chunk0(v, 0)["l"].as_u64().expect("l");
                let o0 = chunk0(v, 0)["o"].as_u64().expect("o");
                chunk0(v, 0)["o"] = json!(o0.min(o1));
                chunk0(v, 0)["l"] = json!(l0 - 1);
            }),
            false,
        ),
        (
            "codec field other than the blob's tag",
            edit_index(bs, |v| {
                let c = chunk0(v, 0)["c"].as_u64().expect("codec");
                chunk0(v, 0)["c"] = json!((c + 1) % 8);
            }),
            false,
        ),
        (
            "md5 receipt",
            edit_index(bs, |v| {
                // Its duplicates carry the same receipt (the index requires it).
                for t in tensors(v).iter_mut() {
                    if t["dup_of"] == json!(0) {
                        t["md5"] = json!("0123456789abcdef0123456789abcdef");
                    }
                }
                tensors(v)[0]["md5"] = json!("0123456789abcdef0123456789abcdef");
            }),
            true,
        ),
    ];
    for (what, bytes, md5_only) in &cases {
        let p = dir.path().join(format!("{}.bs", what.replace(' ', "_")));
        fs::write(&p, bytes).expect("write");
        let c = Container::open(&p).unwrap_or_else(|e| panic!("{what}: {e}"));
        drop(c);
        let out = dir.path().join("out.safetensors");
        let plain = run(["decompress", path_str(&p), "-o", path_str(&out)]);
        if *md5_only {
            ok(&plain);
            fs::remove_file(&out).expect("rm");
        } else {
            fails(&plain, 3);
        }
        fails(
            &run(["decompress", path_str(&p), "-o", path_str(&out), "--md5"]),
            3,
        );
        assert!(!out.exists());
        let r = run(["verify", path_str(&p)]);
        assert_eq!(code(&r), 3, "{what}");
        assert!(stdout(&r).contains("MISMATCH"), "{what}");
        ok(&run(["verify", "--fast", path_str(&p)]));
    }
    assert_no_leftovers(dir.path());
}

#[test]
fn newer_minor_version_still_reads() {
    let z = zoo_fixture();
    let dir = tmp();
    // A file of a newer minor, from a newer bigsmall, that uses nothing new: read as it is.
    let newer = |bs: &[u8]| edit_index(bs, |v| v["created_by"] = json!("bigsmall 9.0.0"));
    let mut b = newer(&z.bs);
    b[10..12].copy_from_slice(&7u16.to_le_bytes());
    match attempt(dir.path(), &b, "minor version 7") {
        Outcome::Decoded(out) => assert!(out == z.src),
        Outcome::Refused(e) => panic!("a minor version bump must stay readable: {e}"),
    }
    // The same minor in a file this bigsmall wrote, which writes no such minor: its version
    // bytes are damaged (exit 3).
    let mut b = z.bs.clone();
    b[10..12].copy_from_slice(&0xffffu16.to_le_bytes());
    let p = dir.path().join("minor-damaged.bs");
    fs::write(&p, &b).expect("write");
    let e = fails(&run(["info", path_str(&p)]), 3);
    assert!(e.contains("version bytes read 1.65535"), "{e}");
    // A newer minor format with a dtype or a codec this build does not know (its index
    // checksum right): a newer format to upgrade for (exit 1), not damage. The same index
    // under this build's version is a lie (exit 3).
    let dtype = newer(&edit_index(&z.bs, |v| {
        tensors(v)[0]["dtype"] = json!("F5_NEW")
    }));
    let codec = newer(&edit_index(&z.bs, |v| chunk0(v, 0)["c"] = json!(200)));
    for (what, unknown) in [("dtype", dtype), ("codec", codec)] {
        for (minor, want) in [(7u16, 1), (bigsmall::format::MINOR, 3)] {
            let mut b = unknown.clone();
            b[10..12].copy_from_slice(&minor.to_le_bytes());
            let p = dir.path().join(format!("unknown-{what}-{minor}.bs"));
            fs::write(&p, &b).expect("write");
            let e = fails(&run(["info", path_str(&p)]), want);
            assert_eq!(e.contains("newer bigsmall"), want == 1, "{what}: {e}");
        }
        // A newer major whose index does not read as this build's: a newer format (exit 1),
        // which may also be damaged version bytes, as the message says.
        let mut b = unknown.clone();
        b[8..10].copy_from_slice(&2u16.to_le_bytes());
        let p = dir.path().join(format!("unknown-{what}-major.bs"));
        fs::write(&p, &b).expect("write");
        let e = fails(&run(["info", path_str(&p)]), 1);
        assert!(
            e.contains("newer bigsmall") && e.contains("version bytes are damaged"),
            "{what}: {e}"
        );
    }
    // A newer major whose index reads under this build's rules, written by a newer bigsmall:
    // a newer format too, not damage.
    let mut b = edit_index(&z.bs, |v| v["created_by"] = json!("bigsmall 9.0.0"));
    b[8..10].copy_from_slice(&2u16.to_le_bytes());
    let p = dir.path().join("newer-writer-major.bs");
    fs::write(&p, &b).expect("write");
    let e = fails(&run(["info", path_str(&p)]), 1);
    assert!(e.contains("newer bigsmall"), "{e}");
}

/// The reader promises (reader.rs, `check_header`) that whatever the index says, a
/// decompressed file is a valid safetensors file. safetensors refuses headers over 100 MB; a
/// lying index can store a longer one (padding spaces are valid JSON). Heavy: ~0.5 GB of RAM.
#[test]
fn stored_header_must_be_readable_safetensors() {
    let z = zoo_fixture();
    let dir = tmp();
    let pad = 100_000_001;
    let b = edit_index(&z.bs, |v| {
        let h = v["source"]["header"].as_str().expect("header").to_string();
        v["source"]["header"] = json!(format!("{h}{}", " ".repeat(pad)));
        let s = v["source"]["file_size"].as_u64().expect("size");
        v["source"]["file_size"] = json!(s + pad as u64);
    });
    if let Outcome::Decoded(out) = attempt(dir.path(), &b, "a 100 MB stored header") {
        let p = dir.path().join("x.safetensors");
        fs::write(&p, out).expect("write");
        SafetensorsFile::open(&p).expect("decompressed output must be valid safetensors");
    }
}

/// Tensors that tie on their offsets (several empty tensors at one place) have no defined
/// order in safetensors' parsed header; the container must read back every time regardless.
#[test]
fn empty_tensors_at_one_offset_read_back() {
    let dir = tmp();
    let empties = ["a", "b", "c", "d", "e"];
    let mut ts: Vec<T> = empties
        .iter()
        .map(|n| t(n, "F32", &[0, 3], Vec::new()))
        .collect();
    ts.push(t("w", "F32", &[4], 1.5f32.to_le_bytes().repeat(4)));
    let bytes = safetensors(&ts, None);
    let src = dir.path().join("empties.safetensors");
    fs::write(&src, &bytes).expect("write");
    // 5 tied names: a random order matches the stored one with probability 1/120 per parse.
    for i in 0..8 {
        let bs = dir.path().join(format!("e{i}.bs"));
        compress_lib(&src, &bs, Effort::Balanced);
        for _ in 0..4 {
            Container::open(&bs).unwrap_or_else(|e| panic!("reopen: {e}"));
        }
        match attempt(dir.path(), &fs::read(&bs).expect("read"), "empties") {
            Outcome::Decoded(out) => assert!(out == bytes),
            Outcome::Refused(e) => panic!("{e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Hostile safetensors inputs

#[test]
fn hostile_safetensors_are_refused() {
    let f32_4 = |off: (usize, usize)| {
        format!(
            "{{\"a\":{{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[{},{}]}}}}",
            off.0, off.1
        )
    };
    let valid = safetensors_raw(&f32_4((0, 16)), &[0u8; 16]);
    let with_len = |n: u64, rest: &[u8]| {
        let mut b = n.to_le_bytes().to_vec();
        b.extend_from_slice(rest);
        b
    };
    // "{}" -> "{\xff": invalid UTF-8 inside the header.
    let mut non_utf8 = safetensors_raw("{}", &[]);
    non_utf8[9] = 0xff;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("header length past the end", with_len(1000, b"{}")),
        ("header length 2^63", with_len(1 << 63, b"{}      ")),
        ("header length u64::MAX", with_len(u64::MAX, b"{}      ")),
        ("header length 200 MB", with_len(200_000_000, b"{}      ")),
        ("header length 0", with_len(0, b"")),
        ("invalid JSON", safetensors_raw("{\"a\":{\"dtype\":", &[0u8; 16])),
        ("JSON array header", safetensors_raw("[1,2,3]", &[])),
        ("non-UTF-8 header", non_utf8),
        ("offsets past the end", safetensors_raw(&f32_4((0, 16)), &[0u8; 8])),
        (
            "overlapping tensors",
            safetensors_raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                &[0u8; 24],
            ),
        ),
        (
            "gap between tensors",
            safetensors_raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
                &[0u8; 24],
            ),
        ),
        (
            "shape overflow",
            safetensors_raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776,1099511627776],\"data_offsets\":[0,16]}}",
                &[0u8; 16],
            ),
        ),
        (
            "10^12 elements",
            safetensors_raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[1000000,1000000],\"data_offsets\":[0,4000000000000]}}",
                &[0u8; 16],
            ),
        ),
        (
            "shape disagrees with offsets",
            safetensors_raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}",
                &[0u8; 16],
            ),
        ),
        (
            "unknown dtype",
            safetensors_raw(
                "{\"a\":{\"dtype\":\"Q4_K\",\"shape\":[4],\"data_offsets\":[0,16]}}",
                &[0u8; 16],
            ),
        ),
        (
            "negative offset",
            safetensors_raw(
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[-16,0]}}",
                &[0u8; 16],
            ),
        ),
        (
            "a name twice",
            safetensors_raw(
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
                &[0u8; 8],
            ),
        ),
        ("truncated data", valid[..valid.len() - 4].to_vec()),
        ("trailing data", [valid.clone(), vec![0u8; 4]].concat()),
        ("only the length", 8u64.to_le_bytes().to_vec()),
    ];
    let dir = tmp();
    for (what, bytes) in &cases {
        let p = dir
            .path()
            .join(format!("{}.safetensors", what.replace([' ', '^'], "_")));
        fs::write(&p, bytes).expect("write");
        let r = catch_unwind(|| SafetensorsFile::open(&p))
            .unwrap_or_else(|_| panic!("SafetensorsFile::open panicked on: {what}"));
        match r {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => {
                one_line(&e, &p);
            }
        }
        let out = dir.path().join("out.bs");
        let e = fails(
            &run([
                "compress",
                path_str(&p),
                "-o",
                path_str(&out),
                "--no-progress",
            ]),
            1,
        );
        assert!(e.contains(&file_name(&p)), "{what}: {e}");
        // Where the safetensors crate's words are vague, the error says what is wrong.
        let why = match *what {
            "offsets past the end" | "truncated data" | "10^12 elements" => "truncated",
            "trailing data" => "4 bytes after the last tensor",
            "shape overflow" => "tensor 'a': its shape overflows",
            "shape disagrees with offsets" => "need 12 bytes, its data_offsets [0, 16] give 16",
            "header length past the end" => "does not fit in the file",
            "a name twice" => "names tensor `a` twice",
            _ => "",
        };
        assert!(e.contains(why), "{what}: {e}");
        assert!(!out.exists(), "{what}: output created");
        fails(&run(["scan", path_str(&p)]), 1);
    }
    assert_no_leftovers(dir.path());
    // The control case is accepted.
    let p = dir.path().join("valid.safetensors");
    fs::write(&p, &valid).expect("write");
    SafetensorsFile::open(&p).expect("the valid control opens");
}

#[test]
fn hostile_model_directory_input_is_refused() {
    // A weight file that is not safetensors inside a model directory: no output directory,
    // nothing left behind.
    let dir = tmp();
    let model = dir.path().join("model");
    fs::create_dir(&model).expect("mkdir");
    fs::copy(
        fixture("sharded/model-00001-of-00002.safetensors"),
        model.join("a.safetensors"),
    )
    .expect("copy");
    fs::write(model.join("b.safetensors"), b"not a model").expect("write");
    let out = dir.path().join("model.bs");
    let e = fails(
        &run(["compress", path_str(&model), "-o", path_str(&out)]),
        1,
    );
    assert!(e.contains("b.safetensors"), "{e}");
    assert!(!out.exists());
    assert_no_leftovers(dir.path());
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile bigsmall.index.json

#[test]
fn hostile_directory_index_is_refused() {
    let root = tmp();
    let work = root.path().join("work");
    fs::create_dir(&work).expect("mkdir");
    let good = work.join("good.bs");
    compress_dir(
        &fixture("sharded"),
        &good,
        &bigsmall::store::CompressOptions::default(),
        &Silent,
    )
    .expect("compress_dir");
    let idx: Value =
        serde_json::from_slice(&fs::read(good.join(DIR_INDEX)).expect("read")).expect("json");
    read_dir_index(&good).expect("the good index reads");
    let abs = root.path().join("abs.safetensors");
    let abs_s = path_str(&abs).to_string();

    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v = idx.clone();
        f(&mut v);
        serde_json::to_vec(&v).expect("json")
    };
    // (what, index bytes, read_dir_index must fail, expected text)
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "shard file with ..",
            edit(&|v| v["shards"][0]["file"] = json!("../good.bs/model-00001-of-00002.bs")),
            true,
            "unsafe path",
        ),
        (
            "shard source with ..",
            edit(&|v| v["shards"][0]["source"] = json!("../escape.safetensors")),
            true,
            "unsafe path",
        ),
        (
            "shard source naming a directory",
            edit(&|v| v["shards"][0]["source"] = json!("model.safetensors/")),
            true,
            "unsafe path",
        ),
        (
            "shard source sneaking out",
            edit(&|v| v["shards"][0]["source"] = json!("a/../../escape.safetensors")),
            true,
            "unsafe path",
        ),
        (
            "absolute shard source",
            edit(&|v| v["shards"][0]["source"] = json!(abs_s.clone())),
            true,
            "unsafe path",
        ),
        (
            "absolute shard file",
            edit(&|v| {
                v["shards"][0]["file"] = json!("/etc/hostname");
            }),
            true,
            "unsafe path",
        ),
        (
            "empty shard file",
            edit(&|v| v["shards"][0]["file"] = json!("")),
            true,
            "unsafe path",
        ),
        (
            "side file with ..",
            edit(&|v| v["side_files"] = json!(["../outside.txt"])),
            true,
            "unsafe path",
        ),
        (
            "absolute side file",
            edit(&|v| v["side_files"] = json!([abs_s.clone()])),
            true,
            "unsafe path",
        ),
        (
            "version 99",
            edit(&|v| v["version"] = json!(99)),
            true,
            "newer",
        ),
        (
            "wrong format",
            edit(&|v| v["format"] = json!("bigsmall")),
            true,
            "not a bigsmall directory index",
        ),
        (
            "shards not a list",
            edit(&|v| v["shards"] = json!("all of them")),
            true,
            "malformed",
        ),
        (
            "malformed JSON",
            b"{\"format\": \"bigsmall-dir\", ".to_vec(),
            true,
            "malformed",
        ),
        ("empty file", Vec::new(), true, "malformed"),
        (
            "missing shard file",
            edit(&|v| {
                let old = v["shards"][0]["file"].clone();
                v["shards"][0]["file"] = json!("missing.bs");
                for (_, f) in v["weight_map"].as_object_mut().expect("map").iter_mut() {
                    if *f == old {
                        *f = json!("missing.bs");
                    }
                }
            }),
            false,
            "missing.bs",
        ),
        (
            "missing side file",
            edit(&|v| v["side_files"] = json!(["nowhere.json"])),
            false,
            "nowhere.json",
        ),
        (
            // Also a side file: named twice, refused with the index.
            "shard that is not a container",
            edit(&|v| v["shards"][0]["file"] = json!("config.json")),
            true,
            "config.json",
        ),
    ];
    for (what, bytes, index_fails, expect) in &cases {
        let bad = work.join("bad.bs");
        let _ = fs::remove_dir_all(&bad);
        fs::create_dir(&bad).expect("mkdir");
        for e in fs::read_dir(&good).expect("good") {
            let e = e.expect("entry");
            fs::copy(e.path(), bad.join(e.file_name())).expect("copy");
        }
        fs::write(bad.join(DIR_INDEX), bytes).expect("write");
        let before = tree(root.path());

        let r = catch_unwind(|| read_dir_index(&bad))
            .unwrap_or_else(|_| panic!("read_dir_index panicked on: {what}"));
        match (r, index_fails) {
            (Err(e), true) => {
                let s = one_line(&e, &bad);
                assert!(s.contains(expect), "{what}: {s}");
            }
            (Ok(_), false) => {}
            (Err(e), false) => panic!("{what}: index refused: {e}"),
            (Ok(_), true) => panic!("{what}: index accepted"),
        }
        let out = work.join("out");
        let r = catch_unwind(|| decompress_dir(&bad, &out, &DecompressOptions::default(), &Silent))
            .unwrap_or_else(|_| panic!("decompress_dir panicked on: {what}"));
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{what}: decompress_dir succeeded"));
        let s = e.to_string();
        assert!(!s.contains('\n') && s.contains(expect), "{what}: {s}");
        assert!(!out.exists(), "{what}: output directory created");
        assert_eq!(tree(root.path()), before, "{what}: files written");

        // An index that is not ours, or is newer, is an error (exit 1); every other lie, and
        // a shard or side file gone, is damage found (exit 3).
        let want = if matches!(*what, "version 99" | "wrong format") {
            1
        } else {
            3
        };
        let e = fails(
            &run(["decompress", path_str(&bad), "-o", path_str(&out)]),
            want,
        );
        assert!(e.contains(expect), "{what}: {e}");
        assert_eq!(tree(root.path()), before, "{what}: the CLI wrote files");
        if *index_fails {
            for cmd in ["info", "stat"] {
                fails(&run([cmd, path_str(&bad)]), want);
            }
            // verify reports damage as a finding, on stdout.
            let o = run(["verify", path_str(&bad)]);
            assert_eq!(code(&o), want, "{what}: {}", stderr(&o));
            if want == 3 {
                assert!(stdout(&o).contains("MISMATCH"), "{what}: {}", stdout(&o));
            }
        }
    }
    // A weight_map full of hostile paths is never used to write: it places tensors in files
    // that are not shards, so the index is damage, refused before anything is written.
    let bad = work.join("bad.bs");
    let _ = fs::remove_dir_all(&bad);
    fs::create_dir(&bad).expect("mkdir");
    for e in fs::read_dir(&good).expect("good") {
        let e = e.expect("entry");
        fs::copy(e.path(), bad.join(e.file_name())).expect("copy");
    }
    let mut v = idx.clone();
    for (_, f) in v["weight_map"]
        .as_object_mut()
        .expect("weight_map")
        .iter_mut()
    {
        *f = json!("../../escape.safetensors");
    }
    v["weight_map"]["/abs"] = json!(abs_s);
    fs::write(bad.join(DIR_INDEX), serde_json::to_vec(&v).expect("json")).expect("write");
    let out = work.join("out");
    let before = tree(root.path());
    let e =
        decompress_dir(&bad, &out, &DecompressOptions::default(), &Silent).expect_err("refused");
    assert!(e.to_string().contains("not one of its shards"), "{e}");
    fails(
        &run(["decompress", path_str(&bad), "-o", path_str(&out)]),
        3,
    );
    assert_eq!(tree(root.path()), before, "nothing written");

    assert!(!abs.exists());
    assert!(!work.join("escape.safetensors").exists());
    assert!(!root.path().join("escape.safetensors").exists());
}

#[test]
fn oversized_directory_index_is_not_read() {
    let dir = tmp();
    let d = dir.path().join("x.bs");
    fs::create_dir(&d).expect("mkdir");
    let f = fs::File::create(d.join(DIR_INDEX)).expect("create");
    f.set_len(300 << 20).expect("sparse 300 MiB");
    drop(f);
    let e = read_dir_index(&d).expect_err("refused");
    let s = one_line(&e, &d);
    assert!(s.contains("implausibly large"), "{s}");
    fails(&run(["info", path_str(&d)]), 3);
}

// ---------------------------------------------------------------------------------------------
// 6. decode_chunk fuzz

const KINDS: [ElemKind; 6] = [
    ElemKind::Bf16,
    ElemKind::F16,
    ElemKind::F32,
    ElemKind::Byte,
    ElemKind::Other(2),
    ElemKind::Other(8),
];

/// Valid encodings of weight-like data to mutate: every kind, every effort, a few shapes, and
/// once-quantized BF16 for the palette codec.
fn seed_blobs() -> &'static Vec<(ElemKind, usize, Vec<u8>)> {
    static SEEDS: OnceLock<Vec<(ElemKind, usize, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut rng = Rng(11);
        let mut v = Vec::new();
        for kind in KINDS {
            for n in [1usize, 33, 1000, 5000] {
                let data: Vec<u8> = match kind {
                    ElemKind::Bf16 | ElemKind::Other(2) => bf16_weights(&mut rng, n, 0.02),
                    ElemKind::F16 => f16_weights(&mut rng, n, 0.02),
                    ElemKind::F32 => f32_weights(&mut rng, n, 0.02),
                    ElemKind::Byte => (0..n).map(|_| (rng.normal(20.0) as i8) as u8).collect(),
                    ElemKind::Other(w) => (0..n)
                        .flat_map(|_| {
                            let mut e = vec![0u8; w];
                            e[0] = rng.next_u64() as u8 & 0x1f;
                            e
                        })
                        .collect(),
                };
                for effort in [Effort::Storage, Effort::Balanced, Effort::Inference] {
                    let blob = encode_chunk(kind, &data, effort);
                    v.push((kind, data.len(), blob));
                }
            }
        }
        // Once-quantized BF16 (per-32-block levels): the palette codec's input.
        for n in [32usize, 1000, 4096] {
            let data: Vec<u8> = (0..n.div_ceil(32))
                .flat_map(|_| {
                    let scale = 0.001 + rng.unit() * 0.01;
                    let levels: Vec<u8> = (0..32).map(|_| (rng.unit() * 16.0) as u8).collect();
                    levels.into_iter().flat_map(move |q| {
                        half::bf16::from_f32((f32::from(q) - 8.0) * scale).to_le_bytes()
                    })
                })
                .take(2 * n)
                .collect();
            for effort in [Effort::Storage, Effort::Balanced, Effort::Inference] {
                v.push((
                    ElemKind::Bf16,
                    data.len(),
                    encode_chunk(ElemKind::Bf16, &data, effort),
                ));
            }
        }
        let tags: std::collections::BTreeSet<u8> = v.iter().map(|(_, _, b)| b[0]).collect();
        assert!(tags.len() >= 6, "seed blobs cover codec tags {tags:?}");
        v
    })
}

/// The chunk decoded the way this CPU decodes, then as a CPU with AVX2 but not AVX-512, then
/// with the portable code alone.
fn decode_every_way(kind: ElemKind, blob: &[u8], n: usize) -> [Result<Vec<u8>, String>; 3] {
    let go = || {
        let mut out = vec![0u8; n];
        decode_chunk(kind, blob, &mut out)
            .map(|_| out)
            .map_err(|e| e.to_string())
    };
    #[cfg(target_arch = "x86_64")]
    {
        use bigsmall::codec::simd;
        let native = go();
        simd::force_avx2(true);
        let avx2 = go();
        simd::force_portable(true);
        let portable = go();
        simd::force_portable(false);
        [native, avx2, portable]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let a = go();
        [a.clone(), a.clone(), a]
    }
}

proptest! {
    #![proptest_config(proptest_config(BLOB_CASES))]

    /// Random blobs, random lengths, every kind.
    #[test]
    fn decode_random_blobs_never_panics(
        k in 0usize..6,
        blob in proptest::collection::vec(any::<u8>(), 0..600),
        n in 0usize..2000,
    ) {
        let kind = KINDS[k];
        let mut out = vec![0u8; n];
        let r = decode_chunk(kind, &blob, &mut out);
        if let Err(e) = r {
            prop_assert!(!e.to_string().contains('\n'));
        }
    }

    /// Random bodies behind every codec tag (0..=7 exist today, 8..16 are unknown), so the
    /// fuzz reaches the codecs instead of stopping at the tag.
    #[test]
    fn decode_tagged_blobs_never_panics(
        k in 0usize..6,
        tag in 0u8..16,
        body in proptest::collection::vec(any::<u8>(), 0..800),
        elems in 0usize..3000,
    ) {
        let kind = KINDS[k];
        let mut blob = vec![tag];
        blob.extend_from_slice(&body);
        let mut out = vec![0u8; elems * kind.width()];
        let _ = decode_chunk(kind, &blob, &mut out);
        // A lying length that is not a whole number of elements.
        if kind.width() > 1 {
            let mut odd = vec![0u8; elems * kind.width() + 1];
            prop_assert!(decode_chunk(kind, &blob, &mut odd).is_err());
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(MUTATED_CASES))]

    /// Valid blobs with a few bytes flipped, decoded with a right or wrong length, by the
    /// AVX-512 and the portable paths: never a panic, and both paths agree exactly.
    #[test]
    fn decode_mutated_blobs_never_panics(
        seed in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        len_delta in prop_oneof![Just(0i64), -64i64..64],
    ) {
        let seeds = seed_blobs();
        let (kind, n, blob) = &seeds[seed.index(seeds.len())];
        let mut b = blob.clone();
        for (i, m) in &flips {
            let k = i.index(b.len());
            b[k] ^= m;
        }
        let len = (*n as i64 + len_delta * kind.width() as i64).max(0) as usize;
        let [simd, avx2, portable] = decode_every_way(*kind, &b, len);
        prop_assert_eq!(&simd, &portable, "SIMD and portable decoders disagree");
        prop_assert_eq!(&avx2, &portable, "AVX2 and portable decoders disagree");
        if flips.is_empty() && len == *n {
            prop_assert!(simd.is_ok(), "a valid blob failed: {:?}", simd);
        }
    }
}

/// Hand-made blobs aimed at arithmetic edges of the decoders' headers.
#[test]
fn crafted_blob_headers_are_refused() {
    // tag, then bytes; every one must be refused for a 64-element output.
    let mut cases: Vec<(ElemKind, Vec<u8>)> = Vec::new();
    // BYTES, zstd stream whose length varint is u64::MAX.
    cases.push((ElemKind::Byte, [&[4u8, 3][..], &BIG_VARINT].concat()));
    // SPLIT16 keep = 255.
    cases.push((ElemKind::Bf16, vec![2, 255, 0, 0, 0]));
    // SPLIT16 keep = 15 (widest allowed) with a constant symbol and no rest bits.
    cases.push((ElemKind::Bf16, vec![2, 15, 0, 0, 0]));
    // SPLIT32 with an unknown low-half mode.
    cases.push((ElemKind::F32, vec![3, 7, 0, 0, 0]));
    // FILL with a short pattern.
    cases.push((ElemKind::F32, vec![5, 1, 2]));
    // PLANES with too few planes.
    cases.push((ElemKind::Other(8), vec![6, 0, 9]));
    for (kind, blob) in &cases {
        let mut out = vec![0u8; 64 * kind.width()];
        let r = catch_unwind(AssertUnwindSafe(|| decode_chunk(*kind, blob, &mut out)))
            .unwrap_or_else(|_| panic!("decode_chunk panicked on {kind:?} {blob:?}"));
        assert!(r.is_err(), "{kind:?} {blob:?} decoded");
    }
}

const BIG_VARINT: [u8; 10] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];

/// A rANS symbol table whose value gaps add up past u64::MAX (stream.rs `next + varint`).
#[test]
fn symbol_value_gap_overflow_is_refused() {
    // BYTES tag, KIND_RANS, alphabet of 2 (varint 1), first value 5, second gap u64::MAX.
    let blob = [&[4u8, 1, 1, 5][..], &BIG_VARINT, &[0u8; 40][..]].concat();
    let mut out = vec![0u8; 64];
    let r = catch_unwind(AssertUnwindSafe(|| {
        decode_chunk(ElemKind::Byte, &blob, &mut out)
    }));
    assert!(matches!(r, Ok(Err(_))), "must be refused without a panic");
}

/// A rANS alphabet size of u64::MAX (stream.rs `varint as usize + 1`).
#[test]
fn symbol_alphabet_size_overflow_is_refused() {
    let blob = [&[4u8, 1][..], &BIG_VARINT].concat();
    let mut out = vec![0u8; 64];
    let r = catch_unwind(AssertUnwindSafe(|| {
        decode_chunk(ElemKind::Byte, &blob, &mut out)
    }));
    assert!(matches!(r, Ok(Err(_))), "must be refused without a panic");
}
