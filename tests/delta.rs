//! Fine-tune patches end to end: `compress --delta-from`, `apply`, `decompress --base`, `diff`,
//! `--auto-delta`, `info` and `verify` on patches, and the refusals (wrong base, missing base,
//! corrupt patch, patch as a base).
//!
//! The fine-tunes are made here from real BF16 weights (`fixtures/smollm-bf16.safetensors` and
//! the 2-shard `fixtures/sharded`): SFT-like ±1-ulp nudges of a fraction of the elements (1%,
//! 10%, 50%, 100%), half the tensors replaced, and a resized embedding with one tensor added
//! and one removed. Every test works in its own temporary directory.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use bigsmall::format::reader::Container;
use bigsmall::model::safetensors::{dtype_name, SafetensorsFile};
use bigsmall::store::md5_hex;

use common::path_str as s;
use common::*;

// ---------------------------------------------------------------------------------------------
// Making fine-tunes from real weights

/// The base every single-file pair is made from: 20 real BF16 tensors (800 KB).
fn base_file() -> PathBuf {
    fixture("smollm-bf16.safetensors")
}

fn len(p: &Path) -> u64 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .len()
}

/// One tensor of a safetensors file, owned.
#[derive(Clone)]
struct Tensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Tensor {
    fn width(&self) -> usize {
        let n: usize = self.shape.iter().product();
        self.data.len().checked_div(n).unwrap_or(1).max(1)
    }
}

/// A safetensors file's `__metadata__` (as JSON text) and its tensors in file order.
fn load(path: &Path) -> (Option<String>, Vec<Tensor>) {
    let st = SafetensorsFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Value = serde_json::from_slice(&st.header).expect("header is JSON");
    let meta = header.get("__metadata__").map(Value::to_string);
    let tensors = st
        .tensors
        .iter()
        .map(|t| Tensor {
            name: t.name.clone(),
            dtype: dtype_name(t.dtype),
            shape: t.shape.clone(),
            data: st.tensor_bytes(t).to_vec(),
        })
        .collect();
    (meta, tensors)
}

/// Writes tensors (in the given order) with tests/common's builder.
fn save(path: &Path, meta: Option<&str>, tensors: &[Tensor]) {
    let ts: Vec<T> = tensors
        .iter()
        .map(|x| {
            // `T` wants a static dtype name; a handful of short strings leak per test run.
            let dtype: &'static str = Box::leak(x.dtype.clone().into_boxed_str());
            t(&x.name, dtype, &x.shape, x.data.clone())
        })
        .collect();
    fs::write(path, safetensors(&ts, meta)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Reads `src`, lets `f` edit its tensor list, writes the result to `dst`.
fn derive(src: &Path, dst: &Path, f: impl FnOnce(&mut Vec<Tensor>)) {
    let (meta, mut tensors) = load(src);
    f(&mut tensors);
    save(dst, meta.as_deref(), &tensors);
}

/// Moves a fraction `frac` of the BF16 words by ±1 (on the raw u16), always to a finite value.
fn nudge(data: &mut [u8], frac: f32, rng: &mut Rng) {
    let finite = |x: u16| (x >> 7) & 0xff != 0xff;
    for w in data.chunks_exact_mut(2) {
        if rng.unit() >= frac {
            continue;
        }
        let v = u16::from_le_bytes([w[0], w[1]]);
        assert!(finite(v), "real weights are finite");
        let (a, b) = if rng.next_u64() & 1 == 0 {
            (v.wrapping_add(1), v.wrapping_sub(1))
        } else {
            (v.wrapping_sub(1), v.wrapping_add(1))
        };
        // +0 - 1 and -0 - 1 wrap to NaN patterns, max finite + 1 is infinity: the other way
        // round is then finite.
        let n = if finite(a) { a } else { b };
        assert!(finite(n));
        w.copy_from_slice(&n.to_le_bytes());
    }
}

/// An SFT-like fine-tune: every BF16 tensor with a fraction `frac` of its elements nudged.
fn sft(src: &Path, dst: &Path, frac: f32, seed: u64) {
    let mut rng = Rng(seed);
    derive(src, dst, |ts| {
        for t in ts.iter_mut().filter(|t| t.dtype == "BF16") {
            nudge(&mut t.data, frac, &mut rng);
        }
    });
}

/// Half the tensors untouched (even positions), the others' values replaced.
fn half_replaced(src: &Path, dst: &Path) {
    let mut rng = Rng(0xba5e);
    derive(src, dst, |ts| {
        for t in ts.iter_mut().skip(1).step_by(2) {
            assert_eq!(t.dtype, "BF16");
            t.data = bf16_weights(&mut rng, t.data.len() / 2, 0.05);
        }
    });
}

/// A copy of `src` whose first BF16 tensor reads as F16: the same bytes and shape, only the
/// dtype differs. Returns its name.
fn retyped(src: &Path, dst: &Path) -> String {
    let mut name = String::new();
    derive(src, dst, |ts| {
        let t = ts
            .iter_mut()
            .find(|t| t.dtype == "BF16")
            .expect("a BF16 tensor");
        t.dtype = "F16".into();
        name = t.name.clone();
    });
    name
}

const ADDED: &str = "model.extra_adapter.weight";

/// What `reshaped` did: (resized, added, removed) tensor names.
struct Reshape {
    resized: String,
    added: String,
    removed: String,
}

/// 1% nudges everywhere, plus: the first 2-D tensor (the embedding) with 8 rows appended, a
/// new tensor at the end, and the second-to-last tensor removed.
fn reshaped(src: &Path, dst: &Path) -> Reshape {
    let mut rng = Rng(0x7e5);
    let mut r = Reshape {
        resized: String::new(),
        added: ADDED.into(),
        removed: String::new(),
    };
    derive(src, dst, |ts| {
        for t in ts.iter_mut().filter(|t| t.dtype == "BF16") {
            nudge(&mut t.data, 0.01, &mut rng);
        }
        let e = ts
            .iter_mut()
            .find(|t| t.shape.len() == 2)
            .expect("a 2-D tensor");
        let cols = e.shape[1];
        e.data.extend(bf16_weights(&mut rng, 8 * cols, 0.02));
        e.shape[0] += 8;
        r.resized = e.name.clone();
        let gone = ts.remove(ts.len() - 2);
        r.removed = gone.name;
        ts.push(Tensor {
            name: ADDED.into(),
            dtype: "BF16".into(),
            shape: vec![16, 32],
            data: bf16_weights(&mut rng, 16 * 32, 0.02),
        });
    });
    r
}

/// The single-file pairs against `base_file()`, written into `dir`: (label, fine-tune).
fn make_pairs(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let base = base_file();
    let mut v = Vec::new();
    for (label, frac, seed) in [
        ("sft-1", 0.01, 1),
        ("sft-10", 0.10, 10),
        ("sft-50", 0.50, 50),
        ("sft-100", 1.0, 100),
    ] {
        let p = dir.join(format!("{label}.safetensors"));
        sft(&base, &p, frac, seed);
        v.push((label, p));
    }
    let p = dir.join("half-replaced.safetensors");
    half_replaced(&base, &p);
    v.push(("half-replaced", p));
    let p = dir.join("reshaped.safetensors");
    reshaped(&base, &p);
    v.push(("reshaped", p));
    v
}

/// Writes a fine-tune of a model directory: every weight file nudged like `sft`, side files
/// copied.
fn sft_dir(src: &Path, dst: &Path, frac: f32) {
    fs::create_dir_all(dst).expect("mkdir");
    let mut names: Vec<PathBuf> = fs::read_dir(src)
        .expect("model dir")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    for (i, p) in names.iter().enumerate() {
        let out = dst.join(p.file_name().expect("name"));
        if p.extension().is_some_and(|e| e == "safetensors") {
            sft(p, &out, frac, 1000 + i as u64);
        } else {
            fs::copy(p, &out).expect("copy side file");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the pairs should give, computed here from the files themselves

/// Expected `compress --json` delta figures for a fine-tune against a base.
#[derive(Debug, Default, PartialEq)]
struct Expect {
    matched_tensors: u64,
    matched_bytes: u64,
    changed_bytes: u64,
    unchanged_tensors: u64,
    added: Vec<String>,
    removed: Vec<String>,
    /// Of `added`, those the base has with another dtype or shape.
    resized: Vec<String>,
}

fn expect(base: &[Tensor], fine: &[Tensor]) -> Expect {
    let by_name: BTreeMap<&str, &Tensor> = base.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut e = Expect::default();
    for f in fine {
        match by_name.get(f.name.as_str()) {
            Some(b) if b.dtype == f.dtype && b.shape == f.shape => {
                e.matched_tensors += 1;
                e.matched_bytes += f.data.len() as u64;
                let w = f.width();
                let changed = f
                    .data
                    .chunks_exact(w)
                    .zip(b.data.chunks_exact(w))
                    .filter(|(x, y)| x != y)
                    .count();
                e.changed_bytes += (changed * w) as u64;
                e.unchanged_tensors += u64::from(f.data == b.data);
            }
            Some(_) => {
                e.added.push(f.name.clone());
                e.resized.push(f.name.clone());
            }
            None => e.added.push(f.name.clone()),
        }
    }
    let fine_names: BTreeSet<&str> = fine.iter().map(|t| t.name.as_str()).collect();
    e.removed = base
        .iter()
        .filter(|t| !fine_names.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();
    e
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().expect("a string").to_string())
        .collect()
}

fn check_stats(label: &str, d: &Value, e: &Expect) {
    let got = Expect {
        matched_tensors: d["matched_tensors"].as_u64().expect("matched_tensors"),
        matched_bytes: d["matched_bytes"].as_u64().expect("matched_bytes"),
        changed_bytes: d["changed_bytes"].as_u64().expect("changed_bytes"),
        unchanged_tensors: d["unchanged_tensors"].as_u64().expect("unchanged_tensors"),
        // Added and resized tensors in file order: both are stored standalone.
        added: e
            .added
            .iter()
            .filter(|n| {
                strings(&d["added_tensors"]).contains(n)
                    || strings(&d["resized_tensors"]).contains(n)
            })
            .cloned()
            .collect(),
        removed: strings(&d["removed_tensors"]),
        resized: strings(&d["resized_tensors"]),
    };
    let listed = d["added_tensors"].as_array().map_or(0, Vec::len)
        + d["resized_tensors"].as_array().map_or(0, Vec::len);
    assert_eq!(
        listed,
        e.added.len(),
        "{label}: added and resized listed once each"
    );
    assert_eq!(&got, e, "{label}: delta stats of compress --json");
}

/// Zeroth-order entropy, in bytes, of the XOR stream of the matched tensors: per tensor, the
/// histogram of `fine_u16 ^ base_u16` over the whole tensor, n·H bits, summed.
fn xor_entropy_bytes(base: &[Tensor], fine: &[Tensor]) -> f64 {
    let by_name: BTreeMap<&str, &Tensor> = base.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut bits = 0.0;
    for f in fine {
        let Some(b) = by_name.get(f.name.as_str()) else {
            continue;
        };
        if b.dtype != f.dtype || b.shape != f.shape {
            continue;
        }
        let mut hist = vec![0u64; 1 << 16];
        for (x, y) in f.data.chunks_exact(2).zip(b.data.chunks_exact(2)) {
            let v = u16::from_le_bytes([x[0], x[1]]) ^ u16::from_le_bytes([y[0], y[1]]);
            hist[v as usize] += 1;
        }
        let n: u64 = hist.iter().sum();
        bits += hist
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| -(c as f64) * (c as f64 / n as f64).log2())
            .sum::<f64>();
    }
    bits / 8.0
}

// ---------------------------------------------------------------------------------------------
// Running the CLI

/// `compress SRC -o OUT --json EXTRA...`: asserts exit 0; returns the report and stderr.
fn compress_json(src: &Path, out: &Path, extra: &[&str]) -> (Value, String) {
    let mut args = vec!["compress", s(src), "-o", s(out), "--no-progress", "--json"];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert_eq!(
        code(&o),
        0,
        "{args:?}\nstdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    (json(&stdout(&o)), stderr(&o))
}

/// A standalone `.bs`.
fn standalone(src: &Path, out: &Path) -> Value {
    json(&ok(&run([
        "compress",
        s(src),
        "-o",
        s(out),
        "--no-progress",
        "--json",
    ])))
}

/// A patch of `fine` against `base` (regime warning silenced); returns the `--json` report.
/// A copy of `model` in `dir`: a fine-tune that changed nothing (the base itself is refused as
/// its own base).
fn unchanged_copy(model: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join(format!(
        "unchanged-{}",
        model.file_name().unwrap().to_string_lossy()
    ));
    fs::copy(model, &copy).unwrap();
    copy
}

fn patch(fine: &Path, base: &Path, out: &Path) -> Value {
    json(&ok(&run([
        "compress",
        s(fine),
        "-o",
        s(out),
        "--delta-from",
        s(base),
        "--force-delta",
        "--no-progress",
        "--json",
    ])))
}

fn apply(base: &Path, patch: &Path, out: &Path) {
    ok(&run([
        "apply",
        s(base),
        s(patch),
        "-o",
        s(out),
        "--no-progress",
    ]));
}

fn decompress_with_base(patch: &Path, base: &Path, out: &Path) {
    ok(&run([
        "decompress",
        s(patch),
        "--base",
        s(base),
        "-o",
        s(out),
        "--no-progress",
    ]));
}

/// Rebuilds `fine` from `patch` with `base`, by `apply` and by `decompress --base`, and checks
/// both are byte-identical to it (files or directories).
fn assert_rebuilds(fine: &Path, patch: &Path, base: &Path, scratch: &Path, what: &str) {
    let a = scratch.join("applied");
    let d = scratch.join("decompressed");
    apply(base, patch, &a);
    decompress_with_base(patch, base, &d);
    for out in [&a, &d] {
        if fine.is_dir() {
            assert_eq!(
                all_files(out),
                all_files(fine),
                "{what}: rebuilt directory differs"
            );
            fs::remove_dir_all(out).expect("rm");
        } else {
            assert_eq!(
                sha256_file(out),
                sha256_file(fine),
                "{what}: rebuilt file differs from the fine-tune"
            );
            fs::remove_file(out).expect("rm");
        }
    }
    assert_no_leftovers(scratch);
}

/// Relative path -> sha256 of every file under `root`.
fn all_files(root: &Path) -> BTreeMap<String, String> {
    tree(root)
        .into_iter()
        .filter(|(_, size)| size.is_some())
        .map(|(rel, _)| {
            let h = sha256_file(&root.join(&rel));
            (rel, h)
        })
        .collect()
}

/// Total size of the `.bs` files of a compressed directory (or of one file).
fn bs_size(p: &Path) -> u64 {
    if p.is_dir() {
        tree(p)
            .into_iter()
            .filter(|(rel, _)| rel.ends_with(".bs"))
            .map(|(_, size)| size.expect("a file"))
            .sum()
    } else {
        len(p)
    }
}

// ---------------------------------------------------------------------------------------------
// 1, 2: every pair rebuilds exactly, from every kind of base, and is no larger than standalone

#[test]
fn every_pair_rebuilds_exactly_and_is_no_larger_than_standalone() {
    let dir = tmp();
    let d = dir.path();
    let base = base_file();
    let base_bs = d.join("base.bs");
    standalone(&base, &base_bs);
    let (_, base_t) = load(&base);
    let scratch = d.join("scratch");
    fs::create_dir(&scratch).expect("mkdir");

    for (label, fine) in make_pairs(d) {
        let (_, fine_t) = load(&fine);
        let alone = d.join(format!("{label}.bs"));
        standalone(&fine, &alone);
        let p_file = d.join(format!("{label}.patch-vs-file.bs"));
        let p_bs = d.join(format!("{label}.patch-vs-bs.bs"));
        let r_file = patch(&fine, &base, &p_file);
        let r_bs = patch(&fine, &base_bs, &p_bs);

        // The report describes the pair exactly, whichever form the base had.
        let e = expect(&base_t, &fine_t);
        for r in [&r_file, &r_bs] {
            check_stats(label, &r["delta"], &e);
            assert_eq!(r["source_bytes"].as_u64(), Some(len(&fine)), "{label}");
        }
        assert_eq!(r_file["output_bytes"].as_u64(), Some(len(&p_file)));
        assert_eq!(
            r_file["delta"]["base_fingerprint"], r_bs["delta"]["base_fingerprint"],
            "{label}: a base and its .bs have one fingerprint"
        );

        for p in [&p_file, &p_bs] {
            for b in [&base, &base_bs] {
                let what = format!("{label}: {} with base {}", file_name(p), file_name(b));
                assert_rebuilds(&fine, p, b, &scratch, &what);
            }
            assert!(
                len(p) <= len(&alone),
                "{label}: patch {} is {} bytes, the standalone .bs {}",
                file_name(p),
                len(p),
                len(&alone)
            );
        }
        println!(
            "{label:>14}: patch {:>7} B (vs .bs base {:>7} B), standalone {:>7} B, fine-tune {:>7} B",
            len(&p_file),
            len(&p_bs),
            len(&alone),
            len(&fine)
        );
    }
}

#[test]
fn directory_patches_rebuild_from_model_and_compressed_dir_bases() {
    let dir = tmp();
    let d = dir.path();
    let base_dir = fixture("sharded");
    let base_bsdir = d.join("base.bs");
    ok(&run([
        "compress",
        s(&base_dir),
        "-o",
        s(&base_bsdir),
        "--no-progress",
    ]));
    let scratch = d.join("scratch");
    fs::create_dir(&scratch).expect("mkdir");

    // Directory fine-tune -> directory patch -> directory back, against both base forms.
    let fine_dir = d.join("fine");
    sft_dir(&base_dir, &fine_dir, 0.10);
    let alone = d.join("fine-alone.bs");
    ok(&run([
        "compress",
        s(&fine_dir),
        "-o",
        s(&alone),
        "--no-progress",
    ]));
    for (tag, b) in [("model-dir", &base_dir), ("compressed-dir", &base_bsdir)] {
        let p = d.join(format!("patch-vs-{tag}.bs"));
        let r = patch(&fine_dir, b, &p);
        assert!(p.join(bigsmall::store_dir::DIR_INDEX).is_file(), "{tag}");
        assert_eq!(r["delta"]["matched_tensors"].as_u64(), Some(20), "{tag}");
        assert_eq!(
            r["delta"]["removed_tensors"],
            serde_json::json!([]),
            "{tag}"
        );
        assert_eq!(r["delta"]["added_tensors"], serde_json::json!([]), "{tag}");
        assert!(
            bs_size(&p) <= bs_size(&alone),
            "{tag}: patch dir {} > standalone dir {}",
            bs_size(&p),
            bs_size(&alone)
        );
        for b2 in [&base_dir, &base_bsdir] {
            let what = format!("dir patch vs {tag}, base {}", b2.display());
            assert_rebuilds(&fine_dir, &p, b2, &scratch, &what);
        }
        // verify needs the base for every shard.
        let v = ok(&run(["verify", s(&p), "--base", s(b)]));
        assert_eq!(v.lines().last(), Some("OK"), "{v}");
        // info sums the shards' patch figures: every tensor is unchanged, a delta or
        // standalone, and the base is the whole 20-tensor model.
        let i = json(&ok(&run(["info", s(&p), "--json"])));
        let pi = &i["patch"];
        let kinds: u64 = ["unchanged_tensors", "delta_tensors", "standalone_tensors"]
            .iter()
            .map(|k| pi[k].as_u64().expect("count"))
            .sum();
        assert_eq!(kinds, 20, "{tag}: {i}");
        assert!(pi["delta_tensors"].as_u64() > Some(0), "{tag}: {i}");
        assert_eq!(pi["base_tensor_count"], 20, "{tag}: {i}");
        assert_eq!(
            pi["base_fingerprint"].as_str().map(str::len),
            Some(32),
            "{tag}: one base for every shard: {i}"
        );
    }

    // A tensor retyped in the second shard: the directory's report names it like a single
    // file's (each shard's list is summed), and the counts cover every tensor.
    let retyped_dir = d.join("retyped");
    copy_tree(&base_dir, &retyped_dir);
    let shard = retyped_dir.join("model-00002-of-00002.safetensors");
    let edited = d.join("shard2.safetensors");
    let name = retyped(&shard, &edited);
    fs::rename(&edited, &shard).expect("mv");
    let p = d.join("retyped.patch.bs");
    let r = patch(&retyped_dir, &base_dir, &p);
    assert_eq!(strings(&r["delta"]["resized_tensors"]), vec![name], "{r}");
    assert_eq!(r["delta"]["matched_tensors"].as_u64(), Some(19), "{r}");
    assert_rebuilds(&retyped_dir, &p, &base_dir, &scratch, "retyped dir");

    // A single-file fine-tune of the same model against the sharded base, both forms; and a
    // patch made against the single-file base applies with the sharded one (same tensors).
    let fine = d.join("sft-10.safetensors");
    sft(&base_file(), &fine, 0.10, 10);
    for (tag, b) in [("model-dir", &base_dir), ("compressed-dir", &base_bsdir)] {
        let p = d.join(format!("file-patch-vs-{tag}.bs"));
        patch(&fine, b, &p);
        for b2 in [&base_dir, &base_bsdir] {
            let what = format!("file patch vs {tag}, base {}", b2.display());
            assert_rebuilds(&fine, &p, b2, &scratch, &what);
        }
    }
    let p = d.join("file-patch-vs-file.bs");
    patch(&fine, &base_file(), &p);
    for b in [&base_dir, &base_bsdir] {
        assert_rebuilds(&fine, &p, b, &scratch, "patch vs file, base a directory");
    }
}

// ---------------------------------------------------------------------------------------------
// 3: unchanged tensors cost an index entry

/// Formulation: the patch of the base against itself has every tensor unchanged, so beyond
/// what any container costs it holds only per-tensor index entries (plus one small base
/// reference). The floor is the `.bs` of a safetensors file with no tensors (same metadata):
/// preamble, trailer and a minimal index. `(patch − floor) / tensors` then bounds the cost of
/// one unchanged tensor from above (the base reference and the stored header's tensor entries
/// are charged to the tensors too), and it does not depend on how well any codec does on data.
#[test]
fn unchanged_tensors_cost_at_most_200_bytes_each() {
    let dir = tmp();
    let d = dir.path();
    let base = base_file();
    let (meta, tensors) = load(&base);

    let empty = d.join("empty.safetensors");
    save(&empty, meta.as_deref(), &[]);
    let floor = d.join("empty.bs");
    standalone(&empty, &floor);

    let selfp = d.join("self.patch.bs");
    let r = patch(&unchanged_copy(&base, d), &base, &selfp);
    let dl = &r["delta"];
    let n = tensors.len() as u64;
    assert_eq!(dl["unchanged_tensors"].as_u64(), Some(n), "{r}");
    assert_eq!(dl["delta_chunks"].as_u64(), Some(0), "{r}");
    assert_eq!(dl["standalone_chunks"].as_u64(), Some(0), "{r}");
    assert_eq!(dl["changed_bytes"].as_u64(), Some(0), "{r}");

    let per = (len(&selfp) - len(&floor)) as f64 / n as f64;
    println!(
        "self-patch {} B, empty-file floor {} B, {n} unchanged tensors: {per:.1} B per tensor",
        len(&selfp),
        len(&floor)
    );
    assert!(per <= 200.0, "{per:.1} bytes per unchanged tensor");

    // And it still rebuilds the base exactly, from the base or its .bs.
    let base_bs = d.join("base.bs");
    standalone(&base, &base_bs);
    let scratch = d.join("scratch");
    fs::create_dir(&scratch).expect("mkdir");
    for b in [&base, &base_bs] {
        assert_rebuilds(&base, &selfp, b, &scratch, "self-patch");
    }
    let i = json(&ok(&run(["info", s(&selfp), "--json"])));
    assert_eq!(i["patch"]["unchanged_tensors"].as_u64(), Some(n));
    assert_eq!(i["patch"]["delta_tensors"].as_u64(), Some(0));
    assert_eq!(i["patch"]["standalone_tensors"].as_u64(), Some(0));
}

/// The receipts of base tensors no coded tensor is paired with (unchanged, removed) are hashed
/// on a thread of their own during the coding, a long one piece by piece: the patch must
/// record exactly the md5 and xxh3 of their bytes, its fingerprint must cover the removed one,
/// and it must rebuild. The first tensor here (6 MiB of real weights, cycled) is longer than a
/// piece.
#[test]
fn unpaired_base_receipts_are_exact() {
    let dir = tmp();
    let d = dir.path();
    let base = d.join("base.safetensors");
    let fine = d.join("fine.safetensors");
    derive(&base_file(), &base, |ts| {
        let pool: Vec<u8> = ts.iter().flat_map(|t| t.data.iter().copied()).collect();
        let rows = 3 << 10;
        ts.insert(
            0,
            Tensor {
                name: "model.long_table.weight".into(),
                dtype: "BF16".into(),
                shape: vec![rows, 1024],
                data: pool.iter().cycle().take(rows * 1024 * 2).copied().collect(),
            },
        );
    });
    // The long tensor and every other one after it untouched, the rest nudged, the last
    // removed.
    let mut rng = Rng(7);
    derive(&base, &fine, |ts| {
        for t in ts.iter_mut().skip(1).step_by(2) {
            nudge(&mut t.data, 0.1, &mut rng);
        }
        ts.pop();
    });
    let p = d.join("patch.bs");
    patch(&fine, &base, &p);
    let (_, base_ts) = load(&base);
    let index = Container::open(&p).expect("opens").index;
    let mut unchanged = 0;
    for (e, b) in index.tensors.iter().zip(&base_ts) {
        let r = e.delta.as_ref().expect("every tensor is matched");
        assert_eq!(r.base_md5, md5_hex(&b.data), "{}: base md5", e.name);
        assert_eq!(
            r.base_hash,
            xxhash_rust::xxh3::xxh3_64(&b.data),
            "{}",
            e.name
        );
        if r.same {
            assert_eq!(e.md5, r.base_md5, "{}: receipt", e.name);
            unchanged += 1;
        }
    }
    assert_eq!(unchanged, (base_ts.len() - 1).div_ceil(2));
    let mut lines: Vec<String> = base_ts
        .iter()
        .map(|t| format!("{}\t{}\n", t.name, md5_hex(&t.data)))
        .collect();
    lines.sort_unstable();
    let base_ref = index.base.as_ref().expect("a patch");
    assert_eq!(base_ref.fingerprint, md5_hex(lines.concat().as_bytes()));
    let scratch = d.join("scratch");
    fs::create_dir(&scratch).expect("mkdir");
    assert_rebuilds(&fine, &p, &base, &scratch, "half unchanged");
}

// ---------------------------------------------------------------------------------------------
// 4: sparse ±1 fine-tunes come within 10% of the XOR stream's zeroth-order entropy

/// A model laid out like a real checkpoint's big matrices: four [1024, 512] BF16 tensors (one
/// full 1 MiB chunk each) and a norm, filled with smollm-bf16's real weight values (its matrix
/// elements in file order, cycled from a different start for each tensor).
fn large_real(dst: &Path) {
    let (meta, ts) = load(&base_file());
    let pool: Vec<u8> = ts
        .iter()
        .filter(|t| t.dtype == "BF16" && t.shape.len() == 2)
        .flat_map(|t| t.data.iter().copied())
        .collect();
    let mut out = Vec::new();
    for k in 0..4usize {
        let start = (k * 200_003 * 2) % pool.len();
        out.push(Tensor {
            name: format!("model.layers.{k}.mlp.up_proj.weight"),
            dtype: "BF16".into(),
            shape: vec![1024, 512],
            data: pool
                .iter()
                .cycle()
                .skip(start)
                .take(1024 * 512 * 2)
                .copied()
                .collect(),
        });
    }
    let mut norm = ts
        .iter()
        .find(|t| t.shape.len() == 1)
        .expect("a norm")
        .clone();
    norm.name = "model.norm.weight".into();
    out.push(norm);
    save(dst, meta.as_deref(), &out);
}

/// Patch size against the XOR stream's zeroth-order entropy.
///
/// On a model with full-size chunks (`large_real`) both the 1% and the 10% pair must come
/// within 1.10x. On the small fixture itself (smollm-bf16, 800 KB, 20 tensors of <= 147 KB)
/// the 10% pair must too; the 1% pair's entropy is only ~5 KB there, and two costs that do not
/// shrink with the data dominate it: the container's index (what the patch of the base against
/// itself measures, ~1.6 KB) and the rANS coder's final lane states (`LANES` x 4 bytes per
/// chunk, 2.5 KB over 20 chunks). Together they are ~80% of that entropy, so 1.10x is out of
/// reach by construction; there the bound is 1.10x plus exactly those two costs.
#[test]
fn sparse_sft_patches_are_near_the_xor_entropy() {
    let dir = tmp();
    let d = dir.path();
    let large = d.join("large-real.safetensors");
    large_real(&large);
    for (model, small) in [(base_file(), true), (large.clone(), false)] {
        let (_, base_t) = load(&model);
        let overhead = if small {
            let selfp = d.join("self.patch.bs");
            patch(&unchanged_copy(&model, d), &model, &selfp);
            len(&selfp)
        } else {
            0
        };
        for (label, frac, seed) in [("sft-1", 0.01f32, 1u64), ("sft-10", 0.10, 10)] {
            let fine = d.join(format!("{label}.safetensors"));
            sft(&model, &fine, frac, seed);
            let (_, fine_t) = load(&fine);
            let h = xor_entropy_bytes(&base_t, &fine_t);
            let p = d.join(format!("{label}.patch.bs"));
            if p.exists() {
                fs::remove_file(&p).expect("rm");
            }
            patch(&fine, &model, &p);
            let size = len(&p) as f64;
            let index = Container::open(&p).expect("opens").index;
            let chunks: usize = index.tensors.iter().map(|t| t.chunks.len()).sum();
            if !small {
                // Whole 1 MiB chunks with few changes are coded as SPARSE16; they must come
                // back exactly.
                let sparse = index
                    .tensors
                    .iter()
                    .flat_map(|t| &t.chunks)
                    .filter(|c| c.codec == bigsmall::codec::tag::SPARSE16)
                    .count();
                assert!(sparse > 0, "{label}: no SPARSE16 chunk");
                let back = d.join(format!("{label}.back.safetensors"));
                apply(&model, &p, &back);
                assert_eq!(
                    fs::read(&back).expect("back"),
                    fs::read(&fine).expect("fine")
                );
            }
            println!(
                "{label} on {}: patch {size:.0} B, XOR zeroth-order entropy {h:.0} B, ratio {:.3} ({chunks} chunks)",
                file_name(&model),
                size / h
            );
            let allowance = if small && frac < 0.05 {
                (overhead as usize + chunks * bigsmall::codec::rans::LANES * 4) as f64
            } else {
                0.0
            };
            assert!(
                size <= 1.10 * h + allowance,
                "{label} on {}: patch {size:.0} B > 1.10 x XOR entropy {h:.0} B + {allowance:.0} B",
                file_name(&model)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5: refusals

/// A base, the 1% and 10% fine-tunes, a standalone `.bs` of the base and the 10% patch.
struct Setup {
    dir: TempDir,
    base: PathBuf,
    sft1: PathBuf,
    sft10: PathBuf,
    base_bs: PathBuf,
    patch10: PathBuf,
}

fn setup() -> Setup {
    let dir = tmp();
    let d = dir.path();
    let base = base_file();
    let sft1 = d.join("sft-1.safetensors");
    let sft10 = d.join("sft-10.safetensors");
    sft(&base, &sft1, 0.01, 1);
    sft(&base, &sft10, 0.10, 10);
    let base_bs = d.join("base.bs");
    standalone(&base, &base_bs);
    let patch10 = d.join("sft-10.patch.bs");
    patch(&sft10, &base, &patch10);
    Setup {
        dir,
        base,
        sft1,
        sft10,
        base_bs,
        patch10,
    }
}

#[test]
fn wrong_base_is_refused_naming_a_tensor() {
    let st = setup();
    let d = st.dir.path();
    let out = d.join("out.safetensors");
    let names: Vec<String> = load(&st.base).1.into_iter().map(|t| t.name).collect();
    let wrong_bs = d.join("sft-1.bs");
    standalone(&st.sft1, &wrong_bs);
    for wrong in [&st.sft1, &wrong_bs] {
        for args in [
            vec!["apply", s(wrong), s(&st.patch10), "-o", s(&out)],
            vec![
                "decompress",
                s(&st.patch10),
                "--base",
                s(wrong),
                "-o",
                s(&out),
            ],
        ] {
            let e = fails(&run(&args), 1);
            assert!(e.contains("wrong base"), "{args:?}: {e}");
            assert!(
                names.iter().any(|n| e.contains(&format!("'{n}'"))),
                "{args:?}: names a tensor: {e}"
            );
            assert!(!out.exists(), "{args:?}: no output");
            assert_no_leftovers(d);
        }
        let e = fails(&run(["verify", s(&st.patch10), "--base", s(wrong)]), 1);
        assert!(e.contains("wrong base"), "{e}");
    }
    // So is a base with the referenced tensors and one more, and, with receipts checked
    // (--md5, verify), a patch whose recorded base receipt was altered.
    let extra = d.join("extra.safetensors");
    derive(&st.base, &extra, |ts| {
        let mut t = ts[0].clone();
        t.name = "extra.weight".into();
        ts.push(t);
    });
    let e = fails(&run(["apply", s(&extra), s(&st.patch10), "-o", s(&out)]), 1);
    assert!(e.contains("wrong base") && e.contains("21 tensors"), "{e}");
    assert!(!out.exists());
    let bytes = fs::read(&st.patch10).unwrap();
    let altered = d.join("altered.bs");
    fs::write(
        &altered,
        edit_index(&bytes, |v| {
            let t = v["tensors"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|t| t["delta"].is_object())
                .unwrap();
            t["delta"]["base_md5"] = "0".repeat(32).into();
        }),
    )
    .unwrap();
    ok(&run(["apply", s(&st.base), s(&altered), "-o", s(&out)]));
    fs::remove_file(&out).unwrap();
    for args in [
        vec!["apply", s(&st.base), s(&altered), "-o", s(&out), "--md5"],
        vec!["verify", s(&altered), "--base", s(&st.base)],
    ] {
        let e = fails(&run(&args), 3);
        assert!(e.contains("base md5 receipt mismatch"), "{args:?}: {e}");
        assert!(!out.exists());
    }
    ok(&run(["verify", s(&st.patch10), "--base", s(&st.base)]));
    // A damaged .bs base is a damaged file (exit 3), not a wrong base.
    let damaged = d.join("damaged-base.bs");
    fs::copy(&st.base_bs, &damaged).unwrap();
    let c = Container::open(&damaged).unwrap();
    let at = c.index.tensors[0].chunks[0].offset + 40;
    drop(c);
    xor_byte(&damaged, at, 0x5a);
    let e = fails(
        &run(["apply", s(&damaged), s(&st.patch10), "-o", s(&out)]),
        3,
    );
    assert!(!e.contains("wrong base"), "{e}");
    assert!(!out.exists());
    // A base missing a tensor the patch refers to is a wrong base too.
    let partial = d.join("partial.safetensors");
    derive(&st.base, &partial, |ts| {
        ts.pop();
    });
    let e = fails(
        &run(["apply", s(&partial), s(&st.patch10), "-o", s(&out)]),
        1,
    );
    assert!(e.contains("wrong base"), "{e}");
    assert!(!out.exists());
}

#[test]
fn missing_or_unneeded_bases_are_one_line_errors() {
    let st = setup();
    let d = st.dir.path();
    let out = d.join("out.safetensors");
    let nowhere = d.join("no-such-base.safetensors");

    // Missing base path, wherever a base is taken.
    for args in [
        vec!["apply", s(&nowhere), s(&st.patch10), "-o", s(&out)],
        vec![
            "decompress",
            s(&st.patch10),
            "--base",
            s(&nowhere),
            "-o",
            s(&out),
        ],
        vec!["verify", s(&st.patch10), "--base", s(&nowhere)],
        vec![
            "compress",
            s(&st.sft10),
            "--delta-from",
            s(&nowhere),
            "-o",
            s(&d.join("p.bs")),
        ],
    ] {
        let e = fails(&run(&args), 1);
        assert!(e.contains("no-such-base"), "{args:?}: names the path: {e}");
        assert!(!out.exists() && !d.join("p.bs").exists(), "{args:?}");
    }

    // A patch without its base.
    for args in [
        vec!["decompress", s(&st.patch10), "-o", s(&out)],
        vec!["verify", s(&st.patch10)],
        vec!["verify", "--sample", "1", s(&st.patch10)],
    ] {
        let o = run(&args);
        assert_ne!(code(&o), 0, "{args:?}");
        let e = one_line_error(&stderr(&o));
        assert!(e.contains("--base"), "{args:?}: {e}");
        assert!(!out.exists(), "{args:?}");
    }

    // A base for something that is not a patch.
    for args in [
        vec![
            "decompress",
            s(&st.base_bs),
            "--base",
            s(&st.base),
            "-o",
            s(&out),
        ],
        vec!["apply", s(&st.base), s(&st.base_bs), "-o", s(&out)],
        vec!["verify", s(&st.base_bs), "--base", s(&st.base)],
    ] {
        let e = fails(&run(&args), 1);
        assert!(e.contains("not a patch"), "{args:?}: {e}");
        assert!(!out.exists(), "{args:?}");
    }
    assert_no_leftovers(d);
}

/// `-f` replaces outputs, never inputs: an output that is one of the run's inputs (by its
/// path, a symlink or a hard link), or a directory that holds one, is refused before any work,
/// and every input is left as it was.
#[test]
fn force_never_replaces_an_input() {
    let st = setup();
    let d = st.dir.path();
    let base = d.join("base.safetensors");
    fs::copy(&st.base, &base).unwrap();
    let link = d.join("link.safetensors");
    std::os::unix::fs::symlink(&base, &link).unwrap();
    let hard = d.join("hard.safetensors");
    fs::hard_link(&base, &hard).unwrap();
    let model = d.join("model");
    copy_tree(&fixture("sharded"), &model);
    let model_bs = d.join("model.bs");
    ok(&run(["compress", s(&model), "-o", s(&model_bs)]));
    let inputs = [
        &base,
        &st.sft10,
        &st.patch10,
        &st.base_bs,
        &model,
        &model_bs,
    ];
    let before: Vec<_> = inputs.iter().map(|p| tree(p)).collect();
    let sums = [&base, &st.sft10, &st.patch10, &st.base_bs].map(|p| sha256_file(p));
    for args in [
        vec!["compress", s(&st.sft10), "--base", s(&base), "-o", s(&base)],
        vec!["compress", s(&st.sft10), "--base", s(&link), "-o", s(&base)],
        vec![
            "compress",
            s(&st.sft10),
            "--base",
            s(&st.base_bs),
            "-o",
            s(&st.base_bs),
        ],
        vec!["compress", s(&st.sft10), "-o", s(&st.sft10)],
        vec!["apply", s(&base), s(&st.patch10), "-o", s(&base)],
        vec!["apply", s(&hard), s(&st.patch10), "-o", s(&base)],
        vec!["apply", s(&base), s(&st.patch10), "-o", s(&st.patch10)],
        vec![
            "decompress",
            s(&st.patch10),
            "--base",
            s(&base),
            "-o",
            s(&st.patch10),
        ],
        vec!["diff", s(&base), s(&st.sft10), "--patch", s(&base)],
        vec!["transcode", s(&st.base_bs), s(&st.base_bs)],
        vec!["apply", s(&model), s(&model_bs), "-o", s(&model)],
        vec!["decompress", s(&model_bs), "-o", s(&model_bs)],
        vec!["decompress", s(&st.base_bs), "-o", s(d)],
    ] {
        let mut args = args;
        args.push("-f");
        let e = fails(&run(&args), 1);
        assert!(
            e.contains("is the input") || e.contains("holds the input"),
            "{args:?}: {e}"
        );
    }
    let after: Vec<_> = inputs.iter().map(|p| tree(p)).collect();
    assert_eq!(before, after);
    assert_eq!(
        sums,
        [&base, &st.sft10, &st.patch10, &st.base_bs].map(|p| sha256_file(p))
    );
}

#[test]
fn a_patch_is_not_a_base() {
    let st = setup();
    let d = st.dir.path();
    let out = d.join("out.safetensors");
    let p2 = d.join("p2.bs");
    for args in [
        vec!["apply", s(&st.patch10), s(&st.patch10), "-o", s(&out)],
        vec![
            "decompress",
            s(&st.patch10),
            "--base",
            s(&st.patch10),
            "-o",
            s(&out),
        ],
        vec![
            "compress",
            s(&st.sft1),
            "--delta-from",
            s(&st.patch10),
            "-o",
            s(&p2),
        ],
    ] {
        let e = fails(&run(&args), 1);
        assert!(e.contains("patch"), "{args:?}: {e}");
        assert!(!out.exists() && !p2.exists(), "{args:?}");
    }
    // A compressed directory of patches is refused as a base too.
    let fine_dir = d.join("fine");
    sft_dir(&fixture("sharded"), &fine_dir, 0.10);
    let pdir = d.join("patch-dir.bs");
    patch(&fine_dir, &fixture("sharded"), &pdir);
    let e = fails(&run(["apply", s(&pdir), s(&st.patch10), "-o", s(&out)]), 1);
    assert!(e.contains("patch"), "{e}");
    assert!(!out.exists());
    assert_no_leftovers(d);
}

#[test]
fn corrupt_delta_chunk_is_exit_3_and_leaves_nothing() {
    let st = setup();
    let d = st.dir.path();
    let c = Container::open(&st.patch10).expect("opens");
    let (name, ch) = c
        .index
        .tensors
        .iter()
        .flat_map(|t| t.chunks.iter().map(move |ch| (t.name.clone(), *ch)))
        .filter(|(_, ch)| ch.delta && ch.len > 64)
        .max_by_key(|(_, ch)| ch.len)
        .expect("the 10% patch has delta chunks");
    drop(c);
    xor_byte(&st.patch10, ch.offset + ch.len / 2, 0x10);

    let out = d.join("out.safetensors");
    for args in [
        vec![
            "decompress",
            s(&st.patch10),
            "--base",
            s(&st.base),
            "-o",
            s(&out),
            "--no-progress",
        ],
        vec![
            "apply",
            s(&st.base_bs),
            s(&st.patch10),
            "-o",
            s(&out),
            "--no-progress",
        ],
    ] {
        let e = fails(&run(&args), 3);
        assert!(e.contains(&name), "{args:?}: names the tensor: {e}");
        assert!(!out.exists(), "{args:?}: no output after a failed decode");
        assert_no_leftovers(d);
    }
    let r = run(["verify", s(&st.patch10), "--base", s(&st.base)]);
    assert_eq!(code(&r), 3, "{}", stderr(&r));
    assert!(stdout(&r).contains(&name), "{}", stdout(&r));
    // Structure only: still fine without a base.
    assert_eq!(
        ok(&run(["verify", "--fast", s(&st.patch10)]))
            .lines()
            .last(),
        Some("OK")
    );
}

// ---------------------------------------------------------------------------------------------
// 6: diff

/// The diff report inside `diff --json`'s output (`{"diff": ..., "entropy": ...}`).
fn diff_report(v: &Value) -> &Value {
    assert!(v["diff"]["rows"].is_array(), "diff --json: {v}");
    &v["diff"]
}

fn diff_json(a: &Path, b: &Path) -> Value {
    json(&ok(&run(["diff", s(a), s(b), "--json"])))
}

/// (status, name) of each listed row of `diff` text output.
fn diff_rows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| {
            let mut w = l.split_whitespace();
            (
                w.next().expect("status").to_string(),
                w.next().expect("name").to_string(),
            )
        })
        .collect()
}

#[test]
fn diff_lists_changes_from_files_or_receipts_and_writes_patches() {
    let dir = tmp();
    let d = dir.path();
    let base = base_file();
    let (_, base_t) = load(&base);
    let names: BTreeSet<String> = base_t.iter().map(|t| t.name.clone()).collect();
    let fine = d.join("sft-10.safetensors");
    sft(&base, &fine, 0.10, 10);

    // (base, 10%): every tensor changed, nothing added or removed.
    let text = ok(&run(["diff", s(&base), s(&fine)]));
    let rows = diff_rows(&text);
    let changed: BTreeSet<String> = rows
        .iter()
        .filter(|(st, _)| st == "changed")
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!(changed, names, "{text}");
    assert_eq!(rows.len(), names.len(), "{text}");
    let last = text.lines().last().expect("summary");
    assert!(
        last.starts_with(&format!(
            "added 0, removed 0, changed {}, resized 0, unchanged 0",
            names.len()
        )),
        "{text}"
    );
    let v = diff_json(&base, &fine);
    let r = diff_report(&v);
    assert_eq!(r["added"], 0, "{v}");
    assert_eq!(r["removed"], 0, "{v}");
    assert_eq!(r["changed"].as_u64(), Some(names.len() as u64), "{v}");

    assert!(v["entropy"].is_null(), "entropy only on request: {v}");

    // --entropy: the same XOR-stream figure this file computes, and the difference stream
    // (what patches code) below it for ±1 steps.
    let v = json(&ok(&run([
        "diff",
        s(&base),
        s(&fine),
        "--json",
        "--entropy",
    ])));
    let (_, fine_t) = load(&fine);
    let want = xor_entropy_bytes(&base_t, &fine_t);
    let xor = v["entropy"]["xor_bytes"].as_f64().expect("xor_bytes");
    let sub = v["entropy"]["sub_bytes"].as_f64().expect("sub_bytes");
    assert!(
        (xor - want).abs() < 1.0,
        "diff --entropy XOR {xor} vs {want}"
    );
    assert!(sub < xor, "difference {sub} vs XOR {xor}");
    assert_eq!(v["entropy"]["tensors"].as_u64(), Some(names.len() as u64));
    let text = ok(&run(["diff", s(&base), s(&fine), "--entropy"]));
    assert!(text.contains("entropy"), "{text}");

    // --all lists the unchanged ones too.
    let text = ok(&run(["diff", s(&base), s(&base), "--all"]));
    assert_eq!(
        diff_rows(&text)
            .iter()
            .filter(|(st, _)| st == "unchanged")
            .count(),
        names.len(),
        "{text}"
    );
    assert!(diff_rows(&ok(&run(["diff", s(&base), s(&base)]))).is_empty());

    // Pair (c): resized, added, removed.
    let reshaped_p = d.join("reshaped.safetensors");
    let rs = reshaped(&base, &reshaped_p);
    let text = ok(&run(["diff", s(&base), s(&reshaped_p)]));
    let rows = diff_rows(&text);
    for (status, name) in [
        ("resized", &rs.resized),
        ("added", &rs.added),
        ("removed", &rs.removed),
    ] {
        assert!(
            rows.iter().any(|(st, n)| st == status && n == name),
            "{status} {name}: {text}"
        );
    }
    let v = diff_json(&base, &reshaped_p);
    let r = diff_report(&v);
    assert_eq!(r["added"], 1, "{v}");
    assert_eq!(r["removed"], 1, "{v}");
    assert_eq!(r["resized"], 1, "{v}");
    let status_of = |name: &str| -> Value {
        r["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|row| row["name"] == name)
            .map(|row| row["status"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(status_of(&rs.resized), "resized");
    assert_eq!(status_of(&rs.added), "added");
    assert_eq!(status_of(&rs.removed), "removed");

    // Two .bs files (and a patch): answered from receipts, no safetensors anywhere.
    let only_bs = d.join("only-bs");
    fs::create_dir(&only_bs).expect("mkdir");
    let (base_bs, fine_bs, reshaped_bs, patch_bs) = (
        only_bs.join("base.bs"),
        only_bs.join("fine.bs"),
        only_bs.join("reshaped.bs"),
        only_bs.join("fine.patch.bs"),
    );
    standalone(&base, &base_bs);
    standalone(&fine, &fine_bs);
    standalone(&reshaped_p, &reshaped_bs);
    patch(&fine, &base, &patch_bs);
    let want_fine = diff_report(&diff_json(&base, &fine)).clone();
    let want_reshaped = diff_report(&diff_json(&base, &reshaped_p)).clone();
    fs::remove_file(&fine).expect("rm");
    fs::remove_file(&reshaped_p).expect("rm");
    let strip = |r: &Value| -> Value {
        let mut r = r.clone();
        r["a"] = Value::Null;
        r["b"] = Value::Null;
        r
    };
    let got = diff_json(&base_bs, &fine_bs);
    assert_eq!(strip(diff_report(&got)), strip(&want_fine));
    let got = diff_json(&base_bs, &reshaped_bs);
    assert_eq!(strip(diff_report(&got)), strip(&want_reshaped));
    // A patch carries the fine-tune's receipts.
    let got = diff_json(&base_bs, &patch_bs);
    assert_eq!(strip(diff_report(&got)), strip(&want_fine));

    // diff --patch writes a patch that applies byte-identically.
    let fine = d.join("sft-10b.safetensors");
    sft(&base, &fine, 0.10, 11);
    for (tag, a) in [("file", &base), ("bs", &base_bs)] {
        let p = d.join(format!("diff-{tag}.patch.bs"));
        // Success: nothing on stderr; the patch written is the report's last line.
        let out = ok(&run([
            "diff",
            s(a),
            s(&fine),
            "--patch",
            s(&p),
            "--no-progress",
        ]));
        assert!(diff_rows(&out).len() == names.len(), "{out}");
        let last = out.lines().last().unwrap_or("");
        assert!(
            last.starts_with("patch: ")
                && last
                    .replace(',', "")
                    .ends_with(&format!("({} bytes)", len(&p))),
            "{out}"
        );
        let back = d.join(format!("diff-{tag}.back"));
        apply(&base, &p, &back);
        assert_eq!(
            sha256_file(&back),
            sha256_file(&fine),
            "diff --patch ({tag})"
        );
        assert!(len(&p) <= len(&fine) / 2, "a 10% patch is small");
    }
}

#[test]
fn a_dtype_change_is_retyped_and_stored_standalone() {
    let dir = tmp();
    let d = dir.path();
    let base = base_file();
    let fine = d.join("retyped.safetensors");
    let name = retyped(&base, &fine);
    let text = ok(&run(["diff", s(&base), s(&fine)]));
    assert_eq!(
        diff_rows(&text),
        vec![("retyped".to_string(), name.clone())]
    );
    assert!(text.contains("BF16") && text.contains("-> F16"), "{text}");
    assert!(text.contains(", retyped 1,"), "{text}");
    let r = diff_json(&base, &fine);
    let r = diff_report(&r);
    assert_eq!(
        (r["retyped"].as_u64(), r["resized"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    assert_eq!(
        r["retyped_bytes"],
        r["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|x| x["name"] == *name)
            .expect("row")["b"]["bytes"]
    );
    // No dtype change: the word is not printed at all.
    assert!(!ok(&run(["diff", s(&base), s(&base)])).contains("retyped"));

    let p = d.join("retyped.patch.bs");
    let v = patch(&fine, &base, &p);
    assert_eq!(
        strings(&v["delta"]["resized_tensors"]),
        vec![name.clone()],
        "{v}"
    );
    let back = d.join("retyped.back");
    apply(&base, &p, &back);
    assert_eq!(sha256_file(&back), sha256_file(&fine));
    // apply --json says which base it used.
    let j = json(&ok(&run([
        "apply",
        s(&base),
        s(&p),
        "-o",
        s(&back),
        "-f",
        "--json",
    ])));
    assert_eq!(j["base"], s(&base), "{j}");
}

/// Header metadata is part of a model: `diff` reports an entry added, removed or changed even
/// where every tensor is equal, from safetensors files and from containers alike.
#[test]
fn diff_reports_metadata_changes() {
    let dir = tmp();
    let d = dir.path();
    let base = base_file();
    let (meta, tensors) = load(&base);
    assert_eq!(meta.as_deref(), Some(r#"{"format":"pt"}"#));
    let other = d.join("tf.safetensors");
    save(&other, Some(r#"{"format":"tf","note":"x"}"#), &tensors);
    let text = ok(&run(["diff", s(&base), s(&other)]));
    assert!(
        text.contains("  metadata  format  \"pt\" -> \"tf\"\n"),
        "{text}"
    );
    assert!(
        text.contains("  metadata  note  (none) -> \"x\"\n"),
        "{text}"
    );
    assert!(
        text.contains("unchanged 20 ") && text.contains("; 2 metadata entries differ"),
        "{text}"
    );
    let (a, b) = (d.join("a.bs"), d.join("b.bs"));
    standalone(&base, &a);
    standalone(&other, &b);
    let v = diff_json(&a, &b);
    let m = &diff_report(&v)["metadata"];
    assert_eq!(
        m,
        &serde_json::json!([
            {"key": "format", "a": "pt", "b": "tf"},
            {"key": "note", "a": null, "b": "x"}
        ]),
        "{v}"
    );
    assert_eq!(
        diff_report(&diff_json(&base, &base))["metadata"],
        serde_json::json!([])
    );
}

// ---------------------------------------------------------------------------------------------
// 7: the regime gate

fn gate_warning(stderr: &str) -> Option<f64> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("bigsmall: warning:"))?;
    assert!(line.contains("over 30%"), "{line}");
    assert!(line.contains("--force-delta"), "{line}");
    assert!(
        line.contains("were smaller as differences and"),
        "the measured split: {line}"
    );
    let pct = line
        .trim_start_matches("bigsmall: warning: ")
        .split('%')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no percentage in {line}"));
    Some(pct)
}

#[test]
fn regime_gate_warns_for_dense_changes_only() {
    let dir = tmp();
    let d = dir.path();
    let base = base_file();
    for (label, frac, seed, warn) in [
        ("sft-1", 0.01f32, 1u64, false),
        ("sft-10", 0.10, 10, false),
        ("sft-50", 0.50, 50, true),
        ("sft-100", 1.0, 100, true),
    ] {
        let fine = d.join(format!("{label}.safetensors"));
        sft(&base, &fine, frac, seed);
        let out = d.join(format!("{label}.patch.bs"));
        let (r, err) = compress_json(&fine, &out, &["--delta-from", s(&base)]);
        assert!(out.is_file(), "{label}: the patch is written either way");
        let pct = gate_warning(&err);
        if warn {
            let pct = pct.unwrap_or_else(|| panic!("{label}: no warning in {err:?}"));
            let want = f64::from(frac) * 100.0;
            assert!(
                (pct - want).abs() <= 3.0,
                "{label}: warning says {pct}%, about {want}% changed"
            );
            assert_eq!(err.lines().count(), 1, "{err:?}");
        } else {
            assert!(err.is_empty(), "{label}: no warning expected: {err:?}");
        }
        let changed = r["delta"]["changed_bytes"].as_f64().expect("changed_bytes")
            / r["delta"]["matched_bytes"].as_f64().expect("matched_bytes");
        assert_eq!(changed > 0.30, warn, "{label}: {changed}");
        // --force-delta silences it.
        let (_, err) = compress_json(
            &fine,
            &out,
            &["--delta-from", s(&base), "--force-delta", "-f"],
        );
        assert!(err.is_empty(), "{label} --force-delta: {err:?}");
        // The text report says the same on stdout, the warning still on stderr.
        let o = run([
            "compress",
            s(&fine),
            "-o",
            s(&out),
            "-f",
            "--delta-from",
            s(&base),
            "--no-progress",
        ]);
        assert_eq!(code(&o), 0);
        assert_eq!(gate_warning(&stderr(&o)).is_some(), warn, "{label}");
        assert!(stdout(&o).contains("changed:"), "{}", stdout(&o));
    }
}

// ---------------------------------------------------------------------------------------------
// 8: --auto-delta

/// The model with every tensor replaced by random weights of a much larger scale: same names
/// and shapes, unrelated values.
fn rescaled_random(src: &Path, dst: &Path) {
    let mut rng = Rng(0x5ca1e);
    derive(src, dst, |ts| {
        for t in ts.iter_mut() {
            t.data = bf16_weights(&mut rng, t.data.len() / 2, 4.0);
        }
    });
}

/// The base path and distance of an `auto-delta: base PATH (distance D; ...)` line.
fn parse_pick(line: &str) -> (PathBuf, f64) {
    let rest = line
        .strip_prefix("auto-delta: base ")
        .unwrap_or_else(|| panic!("not a pick: {line}"));
    let (path, rest) = rest.split_once(" (distance ").expect("distance");
    let d = rest.split([';', ',']).next().expect("number");
    (
        PathBuf::from(path),
        d.parse().unwrap_or_else(|_| panic!("distance in {line}")),
    )
}

fn auto_line(err: &str) -> &str {
    err.lines()
        .find(|l| l.starts_with("auto-delta: "))
        .unwrap_or_else(|| panic!("no auto-delta line in {err:?}"))
}

/// The base with each BF16 tensor's elements in another order: the same names, shapes and
/// histograms, other values at every position.
fn shuffled(src: &Path, dst: &Path) {
    let mut rng = Rng(0x5eed);
    derive(src, dst, |ts| {
        for t in ts.iter_mut().filter(|t| t.dtype == "BF16") {
            let n = t.data.len() / 2;
            for i in (1..n).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                for b in 0..2 {
                    t.data.swap(2 * i + b, 2 * j + b);
                }
            }
        }
    });
}

/// Candidates that histograms cannot tell from the base (another fine-tune of it, the base's
/// values shuffled) sort before it by name; the sampled values pick the base all the same,
/// fresh and from the cache, and its estimated patch is the smallest.
#[test]
fn auto_delta_tells_the_base_from_a_sibling_and_a_shuffle() {
    let dir = tmp();
    let d = dir.path();
    let bases = d.join("bases");
    fs::create_dir(&bases).expect("mkdir");
    let real = bases.join("c-base.safetensors");
    fs::copy(base_file(), &real).expect("copy");
    let sibling = bases.join("a-sibling.safetensors");
    sft(&base_file(), &sibling, 0.10, 77);
    shuffled(&base_file(), &bases.join("b-shuffled.safetensors"));
    let fine = d.join("sft-10.safetensors");
    sft(&base_file(), &fine, 0.10, 10);
    for round in ["fresh", "cached"] {
        let out = d.join(format!("{round}.bs"));
        let o = run([
            "compress",
            s(&fine),
            "-o",
            s(&out),
            "--auto-delta",
            "--base-dir",
            s(&bases),
            "--json",
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v = json(&stdout(&o));
        let a = &v["auto_delta"];
        assert_eq!(a["base"], s(&real), "{round}: {a}");
        let cands = a["candidates"].as_array().expect("candidates");
        assert_eq!(cands.len(), 3, "{a}");
        for c in cands {
            assert!(c["distance"].as_f64() < Some(0.05), "{round}: {c}");
        }
        let share = |c: &Value| c["patch_share_est"].as_f64().expect("estimate");
        assert_eq!(cands[0]["path"], s(&real), "{a}");
        assert!(share(&cands[0]) < share(&cands[1]), "{a}");
        assert_eq!(cands[1]["path"], s(&sibling), "{a}");
        let cached = if round == "fresh" { 0 } else { 3 };
        assert_eq!(a["cached_fingerprints"], cached, "{round}: {a}");
        assert_rebuilds(&fine, &out, &real, d, round);
    }
    // The pick line of a run over `dir`, writing `out`.
    let pick_line = |dir: &Path, out: &str| {
        let o = run([
            "compress",
            s(&fine),
            "-o",
            s(&d.join(out)),
            "--auto-delta",
            "--base-dir",
            s(dir),
            "--no-progress",
        ]);
        auto_line(&stderr(&o)).to_string()
    };
    // A cache written before values were sampled is not used: it is rewritten.
    let cache = bases.join(".bigsmall-fingerprints.json");
    let mut old = json(&fs::read_to_string(&cache).expect("cache"));
    old.as_object_mut().expect("object").remove("version");
    fs::write(&cache, old.to_string()).expect("write");
    let line = pick_line(&bases, "again.bs");
    assert_eq!(parse_pick(&line).0, real, "{line}");
    assert!(line.contains("0 fingerprints cached"), "{line}");
    assert!(line.contains("patch ~"), "{line}");

    // The base as a speed-tuned .bsr (chunks cut four to a tensor): its sample is the same
    // elements as the fine-tune's, so it still beats the sibling.
    let other = d.join("bases-bsr");
    fs::create_dir(&other).expect("mkdir");
    let base_bs = d.join("base.bs");
    ok(&run([
        "compress",
        s(&real),
        "-o",
        s(&base_bs),
        "--no-progress",
    ]));
    let base_bsr = other.join("base.bsr");
    ok(&run([
        "transcode",
        s(&base_bs),
        s(&base_bsr),
        "--n-streams",
        "4",
        "--no-measure",
        "--no-progress",
    ]));
    fs::copy(&sibling, other.join("a-sibling.safetensors")).expect("copy");
    let line = pick_line(&other, "vs-bsr.bs");
    assert_eq!(parse_pick(&line).0, base_bsr, "{line}");
}

#[test]
fn auto_delta_picks_the_real_base_and_caches_fingerprints() {
    let dir = tmp();
    let d = dir.path();
    let bases = d.join("bases");
    fs::create_dir(&bases).expect("mkdir");
    let real = bases.join("smollm-base.safetensors");
    fs::copy(base_file(), &real).expect("copy");
    rescaled_random(&base_file(), &bases.join("random-same-names.safetensors"));
    fs::copy(
        fixture("minilm-f32.safetensors"),
        bases.join("minilm-f32.safetensors"),
    )
    .expect("copy");
    let fine = d.join("sft-10.safetensors");
    sft(&base_file(), &fine, 0.10, 10);

    let auto = |out: &Path| -> (String, String) {
        let o = run([
            "compress",
            s(&fine),
            "-o",
            s(out),
            "--auto-delta",
            "--base-dir",
            s(&bases),
            "--no-progress",
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        (stdout(&o), stderr(&o))
    };
    let p1 = d.join("auto1.bs");
    let (out, err) = auto(&p1);
    let line = auto_line(&err);
    let (p, distance) = parse_pick(line);
    assert_eq!(p, real, "{line}");
    assert!(distance < 0.01, "{line}");
    assert!(
        line.contains("3 candidates, 0 fingerprints cached"),
        "{line}"
    );
    assert!(out.contains("base:"), "{out}");
    assert!(
        bases.join(".bigsmall-fingerprints.json").is_file(),
        "fingerprint cache written"
    );
    let i = json(&ok(&run(["info", s(&p1), "--json"])));
    assert_eq!(i["patch"]["made_from"], s(&real), "{i}");
    // --json carries the pick and every candidate instead of the stderr line.
    let pj = d.join("auto-json.bs");
    let o = run([
        "compress",
        s(&fine),
        "-o",
        s(&pj),
        "--auto-delta",
        "--base-dir",
        s(&bases),
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&stdout(&o));
    assert_eq!(v["auto_delta"]["base"], s(&real), "{v}");
    assert_eq!(
        v["auto_delta"]["candidates"].as_array().map(Vec::len),
        Some(3),
        "{v}"
    );
    assert!(
        v["auto_delta"]["distance"]
            .as_f64()
            .is_some_and(|x| x < 0.01),
        "{v}"
    );
    // The estimate is of the patch's size: within a factor of two of the patch written.
    let est = v["auto_delta"]["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .find(|c| c["path"] == s(&real))
        .and_then(|c| c["patch_share_est"].as_f64())
        .expect("an estimate for the base");
    let actual = len(&pj) as f64 / len(&fine) as f64;
    assert!(
        est > actual / 2.0 && est < actual * 2.0,
        "estimated {est:.4}, patch {actual:.4}"
    );

    let scratch = d.join("scratch");
    fs::create_dir(&scratch).expect("mkdir");
    assert_rebuilds(&fine, &p1, &real, &scratch, "auto-delta patch");

    // Second run: every fingerprint comes from the cache, same pick, same patch.
    let p2 = d.join("auto2.bs");
    let (_, err) = auto(&p2);
    let line = auto_line(&err);
    assert!(
        line.starts_with(&format!("auto-delta: base {} (distance ", real.display())),
        "{line}"
    );
    assert!(
        line.contains("3 candidates, 3 fingerprints cached"),
        "{line}"
    );
    assert_eq!(len(&p1), len(&p2));
    assert_rebuilds(&fine, &p2, &real, &scratch, "auto-delta patch, cached");

    // A candidate rewritten in place with its size and time kept (`cp -p`) is not taken
    // from the cache: its stamp samples its bytes.
    let other = fs::read_dir(&bases)
        .expect("bases")
        .map(|e| e.expect("entry").path())
        .find(|p| p != &real && p.extension().is_some_and(|x| x == "safetensors"))
        .expect("another candidate");
    let mtime = fs::metadata(&other).unwrap().modified().unwrap();
    let mut bytes = fs::read(&other).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x01;
    fs::write(&other, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&other)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (_, err) = auto(&d.join("auto-rewritten.bs"));
    let line = auto_line(&err);
    assert!(
        line.contains("3 candidates, 2 fingerprints cached"),
        "{line}"
    );

    // A compressed base is a candidate too, and a model directory for a directory input.
    let bases2 = d.join("bases2");
    fs::create_dir(&bases2).expect("mkdir");
    let real_bs = bases2.join("smollm-base.bs");
    standalone(&base_file(), &real_bs);
    rescaled_random(&base_file(), &bases2.join("random-same-names.safetensors"));
    let sharded = bases2.join("sharded");
    fs::create_dir(&sharded).expect("mkdir");
    for e in fs::read_dir(fixture("sharded")).expect("fixture dir") {
        let e = e.expect("entry");
        fs::copy(e.path(), sharded.join(e.file_name())).expect("copy");
    }
    let p4 = d.join("auto4.bs");
    let o = run([
        "compress",
        s(&fine),
        "-o",
        s(&p4),
        "--auto-delta",
        "--base-dir",
        s(&bases),
        "--base-dir",
        s(&bases2),
        "--no-progress",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let line = auto_line(&stderr(&o)).to_string();
    assert!(
        line.contains("6 candidates, 3 fingerprints cached"),
        "{line}"
    );
    // smollm-base.safetensors, smollm-base.bs and sharded/ hold the same weights: any of them.
    let (picked, distance) = parse_pick(&line);
    assert!([&real, &real_bs, &sharded].contains(&&picked), "{line}");
    assert!(distance < 0.01, "{line}");
    assert_rebuilds(
        &fine,
        &p4,
        &picked,
        &scratch,
        "auto-delta over two base dirs",
    );
    assert_rebuilds(
        &fine,
        &p4,
        &real_bs,
        &scratch,
        "auto-delta, compressed base",
    );
    let fine_dir = d.join("fine-dir");
    sft_dir(&fixture("sharded"), &fine_dir, 0.10);
    let p5 = d.join("auto5.bs");
    let o = run([
        "compress",
        s(&fine_dir),
        "-o",
        s(&p5),
        "--auto-delta",
        "--base-dir",
        s(&bases2),
        "--no-progress",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    let line = auto_line(&err);
    let (picked, distance) = parse_pick(line);
    assert!([&real_bs, &sharded].contains(&&picked), "{line}");
    assert!(distance < 0.01, "{line}");
    assert!(p5.join(bigsmall::store_dir::DIR_INDEX).is_file());
    assert_rebuilds(&fine_dir, &p5, &sharded, &scratch, "auto-delta, directory");

    // Only unrelated models: a standalone file.
    fs::remove_file(&real).expect("rm");
    let p3 = d.join("auto3.bs");
    let (_, err) = auto(&p3);
    let line = auto_line(&err);
    assert!(line.contains("no base close enough"), "{line}");
    assert!(line.contains("standalone"), "{line}");
    let i = json(&ok(&run(["info", s(&p3), "--json"])));
    assert!(i["patch"].is_null(), "standalone: {i}");
    let back = d.join("auto3.back");
    ok(&run([
        "decompress",
        s(&p3),
        "-o",
        s(&back),
        "--no-progress",
    ]));
    assert_eq!(sha256_file(&back), sha256_file(&fine));
}

// ---------------------------------------------------------------------------------------------
// 9: info and verify on patches

/// The whole-base fingerprint, computed here: md5 over `name \t md5 \n`, sorted by name.
fn fingerprint_of(tensors: &[Tensor]) -> String {
    let mut rows: Vec<(String, String)> = tensors
        .iter()
        .map(|t| (t.name.clone(), md5_hex(&t.data)))
        .collect();
    rows.sort();
    let text: String = rows.iter().map(|(n, m)| format!("{n}\t{m}\n")).collect();
    md5_hex(text.as_bytes())
}

#[test]
fn info_and_verify_describe_patches() {
    let dir = tmp();
    let d = dir.path();
    let base = base_file();
    let (_, base_t) = load(&base);
    let fp = fingerprint_of(&base_t);
    let n = base_t.len() as u64;

    // 10%: every tensor stored against the base.
    let fine = d.join("sft-10.safetensors");
    sft(&base, &fine, 0.10, 10);
    let p = d.join("sft-10.patch.bs");
    let r = patch(&fine, &base, &p);
    assert_eq!(r["delta"]["base_fingerprint"], fp.as_str(), "{r}");
    let i = json(&ok(&run(["info", s(&p), "--json"])));
    let pi = &i["patch"];
    assert_eq!(pi["base_fingerprint"], fp.as_str(), "{i}");
    assert_eq!(pi["made_from"], s(&base), "{i}");
    assert_eq!(pi["unchanged_tensors"], 0, "{i}");
    // Every tensor here is one chunk, so tensors and chunks agree with compress's report.
    assert_eq!(pi["delta_tensors"], r["delta"]["delta_chunks"], "{i} {r}");
    assert_eq!(
        pi["standalone_tensors"], r["delta"]["standalone_chunks"],
        "{i} {r}"
    );
    assert!(pi["delta_tensors"].as_u64().expect("count") >= n / 2, "{i}");
    assert_eq!(pi["removed"], serde_json::json!([]), "{i}");
    let text = ok(&run(["info", s(&p)]));
    assert!(text.contains(&fp), "{text}");
    assert!(text.contains("patch_tensors"), "{text}");

    let v = ok(&run(["verify", s(&p), "--base", s(&base)]));
    assert_eq!(v.lines().last(), Some("OK"), "{v}");
    let v = ok(&run(["verify", "--fast", s(&p)]));
    assert_eq!(v.lines().last(), Some("OK"), "{v}");
    let v = json(&ok(&run(["verify", s(&p), "--base", s(&base), "--json"])));
    assert_eq!(v["ok"], true, "{v}");
    let v = ok(&run([
        "verify",
        "--sample",
        "0.5",
        "--seed",
        "7",
        s(&p),
        "--base",
        s(&base),
    ]));
    assert_eq!(v.lines().last(), Some("OK"), "{v}");

    // Half replaced: half the tensors unchanged, the rest stored.
    let half = d.join("half.safetensors");
    half_replaced(&base, &half);
    let p = d.join("half.patch.bs");
    let r = patch(&half, &base, &p);
    let i = json(&ok(&run(["info", s(&p), "--json"])));
    let pi = &i["patch"];
    assert_eq!(pi["unchanged_tensors"].as_u64(), Some(n.div_ceil(2)), "{i}");
    assert_eq!(
        pi["delta_tensors"].as_u64().expect("count")
            + pi["standalone_tensors"].as_u64().expect("count"),
        n / 2,
        "{i}"
    );
    assert_eq!(pi["delta_tensors"], r["delta"]["delta_chunks"], "{i} {r}");
    assert_eq!(
        ok(&run(["verify", s(&p), "--base", s(&base)]))
            .lines()
            .last(),
        Some("OK")
    );

    // Resized/added/removed: the removed tensor and the base's size are recorded.
    let resh = d.join("reshaped.safetensors");
    let rs = reshaped(&base, &resh);
    let p = d.join("reshaped.patch.bs");
    let r = patch(&resh, &base, &p);
    let i = json(&ok(&run(["info", s(&p), "--json"])));
    let pi = &i["patch"];
    assert_eq!(pi["removed"], serde_json::json!([rs.removed]), "{i}");
    assert_eq!(pi["base_tensor_count"].as_u64(), Some(n), "{i}");
    assert!(
        pi["standalone_tensors"].as_u64().expect("count") >= 2,
        "{i}"
    );
    assert_eq!(
        strings(&r["delta"]["added_tensors"]),
        vec![rs.added.clone()],
        "{r}"
    );
    assert_eq!(
        strings(&r["delta"]["resized_tensors"]),
        vec![rs.resized.clone()],
        "{r}"
    );
    assert_eq!(
        ok(&run(["verify", s(&p), "--base", s(&base)]))
            .lines()
            .last(),
        Some("OK")
    );
    assert_eq!(
        ok(&run(["verify", "--fast", s(&p)])).lines().last(),
        Some("OK")
    );
}

#[test]
fn verify_against_the_source_works_on_patches() {
    let st = setup();
    let v = ok(&run([
        "verify",
        s(&st.patch10),
        "--base",
        s(&st.base),
        "--source",
        s(&st.sft10),
    ]));
    assert_eq!(v.lines().last(), Some("OK"), "{v}");
    // The 1% fine-tune is not what this patch rebuilds.
    let r = run([
        "verify",
        s(&st.patch10),
        "--base",
        s(&st.base),
        "--source",
        s(&st.sft1),
    ]);
    assert_eq!(code(&r), 3, "{}", stderr(&r));
    assert_eq!(stdout(&r).lines().last(), Some("FAILED"));
}

// ---------------------------------------------------------------------------------------------
// Bugs found while writing these tests

/// Tied tensors (a fine-tune's `lm_head.weight` with the same bytes as its embedding) are
/// stored once: the second is a duplicate of the first. When the first is stored against the
/// base (unchanged, or as a difference), the duplicate must be rebuilt from the base tensor
/// of the *storage* tensor; the reader uses the duplicate's own name instead.
#[test]
fn tied_duplicates_in_patches_rebuild_exactly() {
    let dir = tmp();
    let d = dir.path();
    let (meta, ts) = load(&base_file());
    let embed = ts[0].clone();
    assert_eq!(embed.shape.len(), 2);
    let tied = |data: &[u8]| Tensor {
        name: "lm_head.weight".into(),
        dtype: embed.dtype.clone(),
        shape: embed.shape.clone(),
        data: data.to_vec(),
    };
    // A base with an untied lm_head (other values).
    let untied_base = d.join("untied-base.safetensors");
    let mut rng = Rng(0x71ed);
    let mut v = ts.clone();
    v.push(tied(&bf16_weights(&mut rng, embed.data.len() / 2, 0.02)));
    save(&untied_base, meta.as_deref(), &v);
    // The embedding nudged (1%).
    let mut nudged = embed.data.clone();
    nudge(&mut nudged, 0.01, &mut rng);

    let cases: Vec<(&str, PathBuf, Vec<Tensor>)> = vec![
        // Base without lm_head; the fine-tune adds it tied to the unchanged embedding.
        ("new tie to an unchanged tensor", base_file(), {
            let mut v = ts.clone();
            v.push(tied(&embed.data));
            v
        }),
        // Untied base; the fine-tune ties lm_head to its unchanged embedding.
        (
            "tie to an unchanged tensor, untied base",
            untied_base.clone(),
            {
                let mut v = ts.clone();
                v.push(tied(&embed.data));
                v
            },
        ),
        // Untied base; the fine-tune changes the embedding and ties lm_head to it.
        (
            "tie to a changed tensor, untied base",
            untied_base.clone(),
            {
                let mut v = ts.clone();
                v[0].data = nudged.clone();
                v.push(tied(&nudged));
                v
            },
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, base, tensors)) in cases.into_iter().enumerate() {
        let fine = d.join(format!("fine-{i}.safetensors"));
        save(&fine, meta.as_deref(), &tensors);
        let p = d.join(format!("fine-{i}.patch.bs"));
        let r = patch(&fine, &base, &p);
        let c = Container::open(&p).expect("opens");
        let lm = c.find("lm_head.weight").expect("lm_head");
        assert!(
            c.index.tensors[lm].dup_of.is_some(),
            "{what}: stored as a duplicate: {r}"
        );
        drop(c);
        let out = d.join(format!("fine-{i}.back"));
        let o = run(["apply", s(&base), s(&p), "-o", s(&out), "--no-progress"]);
        if code(&o) != 0 {
            failures.push(format!("{what}: apply failed: {}", stderr(&o).trim()));
        } else if sha256_file(&out) != sha256_file(&fine) {
            failures.push(format!("{what}: apply exited 0 but the output differs"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `verify --sample` on a patch draws from every chunk, the virtual base copies of unchanged
/// tensors included, but `chunks_total` counts stored chunks only.
#[test]
fn verify_sample_counts_agree_on_patches() {
    let dir = tmp();
    let base = base_file();
    let p = dir.path().join("self.patch.bs");
    patch(&unchanged_copy(&base, dir.path()), &base, &p);
    let v = json(&ok(&run([
        "verify",
        "--json",
        "--sample",
        "1",
        "--seed",
        "1",
        s(&p),
        "--base",
        s(&base),
    ])));
    let f = &v["files"][0];
    assert!(
        f["chunks_checked"].as_u64() <= f["chunks_total"].as_u64(),
        "{v}"
    );
}

/// The base's receipts are hashed beside the coding, except in a resumable run, which needs
/// its fingerprint first: both ways give the same patch, byte for byte.
#[test]
fn base_hashed_beside_the_coding_or_first_gives_the_same_patch() {
    let dir = tmp();
    let d = dir.path();
    let base = base_file();
    for (label, fine) in make_pairs(d) {
        let plain = d.join(format!("{label}.plain.bs"));
        patch(&fine, &base, &plain);
        let resumable = d.join(format!("{label}.resumable.bs"));
        compress_json(
            &fine,
            &resumable,
            &["--delta-from", s(&base), "--force-delta", "--resume"],
        );
        assert_eq!(
            fs::read(&plain).expect("plain"),
            fs::read(&resumable).expect("resumable"),
            "{label}"
        );
    }
}

/// Flags that would do nothing are usage errors; benchmark names what it takes instead of a
/// patch; a patch larger than its source says so instead of "saved 0 bytes".
#[test]
fn idle_flags_benchmark_of_a_patch_and_a_patch_that_grows() {
    let st = setup();
    let d = st.dir.path();
    let out = d.join("p.bs");
    for args in [
        vec!["compress", s(&st.sft10), "--force-delta", "-o", s(&out)],
        vec!["compress", s(&st.sft10), "--base-dir", s(d), "-o", s(&out)],
        vec!["diff", s(&st.base), s(&st.sft10), "--force-delta"],
    ] {
        usage_error(&run(&args));
        assert!(!out.exists(), "{args:?}");
    }
    let e = fails(&run(["benchmark", s(&st.patch10)]), 1);
    assert!(
        e.contains("apply the patch first") && !e.contains("--base"),
        "{e}"
    );

    // Against an unrelated base nothing matches: the file is written standalone (it would
    // need the base for nothing), and the run says so.
    let shrink = |ts: &mut Vec<Tensor>| {
        ts.truncate(1);
        let w = ts[0].width();
        ts[0].shape = vec![4];
        ts[0].data.truncate(w * 4);
    };
    let tiny = d.join("tiny.safetensors");
    derive(&st.base, &tiny, shrink);
    let other = d.join("other.safetensors");
    derive(&st.base, &other, |ts| {
        shrink(ts);
        ts[0].name = "renamed".into();
    });
    let o = run(["compress", s(&tiny), "--base", s(&other), "-o", s(&out)]);
    assert_eq!(code(&o), 0);
    assert!(
        stderr(&o).contains("wrote a standalone file"),
        "{}",
        stderr(&o)
    );
    let text = stdout(&o);
    assert!(!text.contains("matched tensors"), "{text}");
    assert!(text.contains("saved:      none: the output is"), "{text}");
    let plain = d.join("plain.bs");
    standalone(&tiny, &plain);
    assert_eq!(len(&out), len(&plain));
    let back = d.join("tiny.back");
    ok(&run(["decompress", s(&out), "-o", s(&back)]));
    assert_eq!(fs::read(&back).unwrap(), fs::read(&tiny).unwrap());
}

/// Every chunk standalone and no tensor unchanged (all values redrawn): the base gave nothing,
/// and the file is written standalone, no larger than a plain compression.
#[test]
fn a_base_that_gives_nothing_is_not_referenced() {
    let st = setup();
    let d = st.dir.path();
    let redrawn = d.join("redrawn.safetensors");
    derive(&st.base, &redrawn, |ts| {
        let mut rng = Rng(77);
        for t in ts.iter_mut() {
            for b in t.data.iter_mut() {
                *b = rng.next_u64() as u8;
            }
        }
    });
    let out = d.join("r.bs");
    let plain = d.join("r-plain.bs");
    standalone(&redrawn, &plain);
    let (r, err) = compress_json(&redrawn, &out, &["--delta-from", s(&st.base)]);
    assert_eq!(r["base_unused"], true, "{r}");
    assert!(r.get("delta").is_none(), "{r}");
    assert!(err.is_empty(), "{err}");
    assert!(len(&out) <= len(&plain), "{} > {}", len(&out), len(&plain));
    let info = ok(&run(["info", s(&out)]));
    assert!(!info.contains("base"), "{info}");
}
