//! End-to-end tests of the `bigsmall` binary: round trips of every fixture in every mode,
//! model directories, the report commands, refusals, corruption detection and the one-line
//! error contract. Every test works in its own temporary directory.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use bigsmall::format::reader::Container;
use bigsmall::model::safetensors::SafetensorsFile;

use common::*;

const MODES: [&str; 3] = ["--storage", "--balanced", "--inference"];

/// Compresses `src` to `dst` with the CLI; returns the `--json` report.
fn compress(src: &Path, dst: &Path, mode: &str) -> Value {
    let out = ok(&run([
        "compress",
        path_str(src),
        "-o",
        path_str(dst),
        mode,
        "--no-progress",
        "--json",
    ]));
    json(&out)
}

fn decompress(src: &Path, dst: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "decompress",
        path_str(src),
        "-o",
        path_str(dst),
        "--no-progress",
        "--json",
    ];
    args.extend_from_slice(extra);
    json(&ok(&run(args)))
}

fn len(p: &Path) -> u64 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .len()
}

/// The last non-empty line of a command's stdout.
fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.is_empty()).unwrap_or("")
}

fn roundtrip_all_fixtures(mode: &str) {
    let dir = tmp();
    for src in fixture_files() {
        let name = file_name(&src);
        let bs = dir.path().join(format!("{name}.bs"));
        let back = dir.path().join(format!("{name}.back"));
        let r = compress(&src, &bs, mode);
        assert_eq!(r["source_bytes"].as_u64(), Some(len(&src)), "{name}");
        assert_eq!(r["output_bytes"].as_u64(), Some(len(&bs)), "{name}");
        assert_eq!(r["mode"], mode.trim_start_matches("--"), "{name}");
        let st = SafetensorsFile::open(&src).expect("fixture opens");
        assert_eq!(
            r["tensors"].as_u64(),
            Some(st.tensors.len() as u64),
            "{name}"
        );
        if mode == "--balanced" && !name.starts_with("ints") {
            assert!(
                len(&bs) < len(&src),
                "{name}: {} is not smaller than {}",
                len(&bs),
                len(&src)
            );
        }
        let d = decompress(&bs, &back, &["--md5"]);
        assert_eq!(d["report"]["md5_checked"], true, "{name}");
        assert_eq!(d["report"]["output_bytes"].as_u64(), Some(len(&src)));
        assert_eq!(
            sha256_file(&back),
            sha256_file(&src),
            "{name} {mode}: decompressed bytes differ from the source"
        );
        let v = ok(&run(["verify", path_str(&bs)]));
        assert_eq!(last_line(&v), "OK", "{name} {mode}");
        // Inference mode pairs the symbols of real BF16 and FP8 weights, the others never.
        let paired = match name.as_str() {
            "minilm-bf16.safetensors" => Some(bigsmall::codec::tag::PAIRS16),
            "minilm-fp8.safetensors" => Some(bigsmall::codec::tag::PAIRS8),
            _ => None,
        };
        if let Some(tag) = paired {
            let c = Container::open(&bs).expect("opens");
            let pairs = c
                .index
                .tensors
                .iter()
                .flat_map(|t| &t.chunks)
                .filter(|ch| ch.codec == tag)
                .count();
            assert_eq!(
                pairs > 0,
                mode == "--inference",
                "{name} {mode}: {pairs} chunks"
            );
        }
    }
    assert_no_leftovers(dir.path());
}

#[test]
fn roundtrip_every_fixture_storage() {
    roundtrip_all_fixtures("--storage");
}

#[test]
fn roundtrip_every_fixture_balanced() {
    roundtrip_all_fixtures("--balanced");
}

#[test]
fn roundtrip_every_fixture_inference() {
    roundtrip_all_fixtures("--inference");
}

#[test]
fn fixtures_match_their_checksums() {
    let sums = fs::read_to_string(fixture("SHA256SUMS")).expect("SHA256SUMS");
    let mut n = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, name) = line.split_once(char::is_whitespace).expect("hash name");
        let name = name.trim().trim_start_matches('*');
        assert_eq!(sha256_file(&fixture(name)), hash, "fixtures/{name}");
        n += 1;
    }
    assert!(n >= 9, "SHA256SUMS lists {n} files");
}

#[test]
fn default_output_names() {
    let dir = tmp();
    let src = dir.path().join("model.safetensors");
    fs::copy(fixture("smollm-e5m2.safetensors"), &src).expect("copy");
    let orig = sha256_file(&src);
    ok(&run(["compress", path_str(&src), "--no-progress"]));
    let bs = dir.path().join("model.bs");
    assert!(bs.is_file(), "compress writes SRC with a .bs extension");
    fs::remove_file(&src).expect("rm");
    ok(&run(["decompress", path_str(&bs), "--no-progress"]));
    assert_eq!(sha256_file(&src), orig, "decompress writes SRC.safetensors");
    assert_no_leftovers(dir.path());
}

// ---------------------------------------------------------------------------------------------
// Directories

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

#[test]
fn directory_roundtrip() {
    let dir = tmp();
    let src = fixture("sharded");
    let bs = dir.path().join("sharded.bs");
    let back = dir.path().join("back");
    let r = compress(&src, &bs, "--balanced");
    assert_eq!(r["tensors"], 20);

    let names: BTreeSet<String> = fs::read_dir(&bs)
        .expect("output is a directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = [
        "bigsmall.index.json",
        "config.json",
        "model-00001-of-00002.bs",
        "model-00002-of-00002.bs",
        "model.safetensors.index.json",
        "tokenizer_config.json",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want);
    for side in [
        "config.json",
        "model.safetensors.index.json",
        "tokenizer_config.json",
    ] {
        assert_eq!(sha256_file(&bs.join(side)), sha256_file(&src.join(side)));
    }

    // The directory index: every tensor of every shard, mapped to the .bs that holds it.
    let idx = json(&fs::read_to_string(bs.join("bigsmall.index.json")).expect("index"));
    assert_eq!(idx["format"], "bigsmall-dir");
    assert_eq!(idx["version"], 1);
    let wm = idx["weight_map"].as_object().expect("weight_map");
    let mut expected = BTreeMap::new();
    for shard in ["model-00001-of-00002", "model-00002-of-00002"] {
        let st = SafetensorsFile::open(&src.join(format!("{shard}.safetensors"))).expect("opens");
        for t in &st.tensors {
            expected.insert(t.name.clone(), format!("{shard}.bs"));
        }
    }
    let got: BTreeMap<String, String> = wm
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_string()))
        .collect();
    assert_eq!(got, expected, "weight_map names every tensor and its shard");
    // ...and agrees with the HF index it was made from.
    let hf = json(&fs::read_to_string(src.join("model.safetensors.index.json")).expect("hf"));
    for (name, file) in hf["weight_map"].as_object().expect("hf weight_map") {
        let f = file
            .as_str()
            .expect("string")
            .replace(".safetensors", ".bs");
        assert_eq!(got.get(name), Some(&f), "{name}");
    }
    let shards = idx["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    for s in shards {
        let f = bs.join(s["file"].as_str().expect("file"));
        assert_eq!(s["size"].as_u64(), Some(len(&f)));
        assert_eq!(
            s["source_size"].as_u64(),
            Some(len(&src.join(s["source"].as_str().expect("source"))))
        );
    }

    // Reports understand the directory. info gives one report for the model: its layers
    // span both shards (layer 0 and the embedding in the first, layer 1 in the second), so
    // the layer count and the streaming estimate are the model's, checked here against the
    // rows stat gives.
    let stat = json(&ok(&run(["stat", path_str(&bs), "--json"])));
    let rows = stat.as_array().expect("rows");
    assert_eq!(rows.len(), 20);
    let mut layers: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut non_layer, mut raw) = (0u64, 0u64);
    for r in rows {
        let n = r["raw_bytes"].as_u64().expect("raw");
        raw += n;
        let name = r["name"].as_str().expect("name");
        match name.strip_prefix("model.layers.") {
            Some(rest) => {
                let l = rest
                    .split('.')
                    .next()
                    .expect("index")
                    .parse()
                    .expect("number");
                *layers.entry(l).or_default() += n;
            }
            None => non_layer += n,
        }
    }
    assert_eq!(layers.len(), 2);
    let info = json(&ok(&run(["info", path_str(&bs), "--json"])));
    assert_eq!(info["tensor_count"], 20, "{info}");
    assert_eq!(info["layer_count"], 2, "{info}");
    assert_eq!(info["non_layer_raw_bytes"].as_u64(), Some(non_layer));
    let largest = *layers.values().max().expect("layers");
    let window = (bigsmall::store::DECODE_WINDOW_BYTES as u64).min(raw);
    assert_eq!(
        info["streaming_peak_ram_est"].as_u64(),
        Some(non_layer + largest + window)
    );
    let shard_files = ["model-00001-of-00002.bs", "model-00002-of-00002.bs"];
    let sizes: u64 = shard_files.iter().map(|f| len(&bs.join(f))).sum();
    assert_eq!(info["file_size"].as_u64(), Some(sizes));
    let listed: Vec<&str> = info["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|x| x["file"].as_str().expect("file"))
        .collect();
    assert_eq!(listed, shard_files);
    let text = ok(&run(["info", path_str(&bs)]));
    assert!(text.starts_with("bigsmall directory: "), "{text}");
    assert!(text.contains("  layer_count                2\n"), "{text}");
    for f in shard_files {
        assert!(text.contains(f), "{text}");
    }
    for args in [
        vec!["verify", path_str(&bs)],
        vec!["verify", "--fast", path_str(&bs)],
        vec!["verify", "--source", path_str(&src), path_str(&bs)],
        vec!["verify", "--no-progress", path_str(&bs)],
    ] {
        assert_eq!(last_line(&ok(&run(&args))), "OK", "{args:?}");
    }
    // A source of the other kind (a file for a directory, a directory for a file) is named
    // as such.
    let one = src.join("model-00001-of-00002.safetensors");
    let e = fails(
        &run(["verify", "--source", path_str(&one), path_str(&bs)]),
        1,
    );
    assert!(e.contains("is not a directory"), "{e}");
    let shard = bs.join("model-00001-of-00002.bs");
    let e = fails(
        &run(["verify", "--source", path_str(&src), path_str(&shard)]),
        1,
    );
    assert!(e.contains("is a directory, but"), "{e}");
    let nowhere = dir.path().join("nowhere");
    let e = fails(
        &run(["verify", "--source", path_str(&nowhere), path_str(&bs)]),
        1,
    );
    assert!(e.contains("No such file"), "{e}");
    assert_eq!(
        last_line(&ok(&run([
            "verify",
            "--source",
            path_str(&one),
            path_str(&shard)
        ]))),
        "OK"
    );
    let scan = json(&ok(&run(["scan", path_str(&src), "--json"])));
    assert_eq!(scan["shards"], 2);
    assert_eq!(scan["tensors_total"], 20);
    // Nothing is stored yet: scan reports tensor counts and raw bytes only.
    let bf16 = &scan["dtypes"]["BF16"];
    assert_eq!(bf16["tensors"], 20, "{scan}");
    assert!(bf16.get("stored_bytes").is_none(), "{scan}");

    // And back, byte for byte, nothing more, nothing less.
    let d = decompress(&bs, &back, &["--md5"]);
    assert_eq!(d["report"]["tensors"], 20);
    assert_eq!(all_files(&back), all_files(&src));
    assert_no_leftovers(dir.path());
}

#[test]
fn directory_default_output_names() {
    let dir = tmp();
    let model = dir.path().join("model");
    fs::create_dir(&model).expect("mkdir");
    for e in fs::read_dir(fixture("sharded")).expect("sharded") {
        let e = e.expect("entry");
        fs::copy(e.path(), model.join(e.file_name())).expect("copy");
    }
    let orig = all_files(&model);
    ok(&run(["compress", path_str(&model), "--no-progress"]));
    let bs = dir.path().join("model.bs");
    assert!(bs.join("bigsmall.index.json").is_file(), "DIR -> DIR.bs");
    fs::remove_dir_all(&model).expect("rm");
    ok(&run(["decompress", path_str(&bs), "--no-progress"]));
    assert_eq!(all_files(&model), orig, "DIR.bs -> DIR");
    fs::remove_dir_all(&model).expect("rm");
    let slash = format!("{}/", bs.display());
    ok(&run(["decompress", &slash, "--no-progress"]));
    assert_eq!(all_files(&model), orig, "DIR.bs/ -> DIR");
    assert_no_leftovers(dir.path());
}

#[test]
fn directory_with_trailing_slash_compresses_beside_it() {
    let dir = tmp();
    let model = dir.path().join("model");
    fs::create_dir(&model).expect("mkdir");
    for e in fs::read_dir(fixture("sharded")).expect("sharded") {
        let e = e.expect("entry");
        fs::copy(e.path(), model.join(e.file_name())).expect("copy");
    }
    let before = tree(&model);
    let arg = format!("{}/", model.display());
    ok(&run(["compress", &arg, "--no-progress"]));
    assert_eq!(tree(&model), before, "the source directory must not change");
    assert!(dir.path().join("model.bs").is_dir(), "output is DIR.bs");
}

// ---------------------------------------------------------------------------------------------
// Reports: info, stat, scan, verify, help

/// smollm-bf16 compressed (balanced) in a temp dir.
fn compressed_smollm() -> (TempDir, PathBuf, PathBuf) {
    let dir = tmp();
    let src = fixture("smollm-bf16.safetensors");
    let bs = dir.path().join("smollm.bs");
    compress(&src, &bs, "--balanced");
    (dir, src, bs)
}

#[test]
fn info_reports_the_container() {
    let (_dir, src, bs) = compressed_smollm();
    let st = SafetensorsFile::open(&src).expect("opens");
    let text = ok(&run(["info", path_str(&bs)]));
    for key in [
        "tensor_count",
        "ratio",
        "dtype_breakdown",
        "codec_breakdown",
    ] {
        assert!(text.contains(key), "info text lacks {key}: {text}");
    }
    let i = json(&ok(&run(["info", path_str(&bs), "--json"])));
    assert_eq!(i["tensor_count"].as_u64(), Some(st.tensors.len() as u64));
    assert_eq!(i["file_size"].as_u64(), Some(len(&bs)));
    assert_eq!(i["source_size"].as_u64(), Some(len(&src)));
    assert_eq!(i["source_file"], "smollm-bf16.safetensors");
    assert_eq!(i["mode"], "balanced");
    assert_eq!(i["container_version"], "1.3");
    assert_eq!(i["duplicates"], 0);
    assert_eq!(i["layer_count"], 2);
    let ratio = i["ratio_pct"].as_f64().expect("ratio");
    assert!(ratio > 0.0 && ratio < 100.0, "BF16 ratio {ratio}");
    let want = len(&bs) as f64 * 100.0 / len(&src) as f64;
    assert!((ratio - want).abs() < 1e-9, "ratio {ratio} vs {want}");
    assert!(i["chunk_count"].as_u64().expect("chunks") >= 20);
    assert_eq!(i["dtypes"]["BF16"]["tensors"], 20);
    let raw: u64 = st.tensors.iter().map(|t| t.len() as u64).sum();
    assert_eq!(i["dtypes"]["BF16"]["raw_bytes"].as_u64(), Some(raw));
    assert!(i["best"].as_array().expect("best").len() <= 5);
    // A file alone: its kind from its tensor names, said so.
    assert_eq!(i["model_type"], "llama-style decoder (from tensor names)");
    assert!(text.contains("model_type"), "{text}");
    // A directory: from its config.json. And the BERT-style names of the MiniLM cut.
    let dir = tmp();
    let cdir = dir.path().join("model.bs");
    ok(&run([
        "compress",
        path_str(&fixture("sharded")),
        "-o",
        path_str(&cdir),
    ]));
    let i = json(&ok(&run(["info", path_str(&cdir), "--json"])));
    assert_eq!(
        i["model_type"],
        "llama (LlamaForCausalLM; from config.json)"
    );
    let minilm = dir.path().join("minilm.bs");
    ok(&run([
        "compress",
        path_str(&fixture("minilm-bf16.safetensors")),
        "-o",
        path_str(&minilm),
    ]));
    let i = json(&ok(&run(["info", path_str(&minilm), "--json"])));
    assert_eq!(i["model_type"], "BERT-style encoder (from tensor names)");
}

#[test]
fn stat_sorts_and_filters() {
    let (_dir, src, bs) = compressed_smollm();
    let st = SafetensorsFile::open(&src).expect("opens");
    let rows = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["stat", path_str(&bs), "--json"];
        args.extend_from_slice(extra);
        json(&ok(&run(args)))
            .as_array()
            .expect("an array of rows")
            .clone()
    };
    let ratio = |r: &Value| r["ratio_pct"].as_f64().expect("ratio");

    let all = rows(&[]);
    assert_eq!(all.len(), st.tensors.len());
    for (i, (r, t)) in all.iter().zip(&st.tensors).enumerate() {
        assert_eq!(r["index"], i, "default order is file order");
        assert_eq!(r["name"], t.name.as_str());
        assert_eq!(r["raw_bytes"].as_u64(), Some(t.len() as u64));
        assert_eq!(r["dtype"], "BF16");
    }
    let asc = rows(&["--sort", "ratio"]);
    assert!(asc.windows(2).all(|w| ratio(&w[0]) <= ratio(&w[1])));
    let desc = rows(&["--sort", "ratio", "--reverse"]);
    assert!(desc.windows(2).all(|w| ratio(&w[0]) >= ratio(&w[1])));
    assert_eq!(desc.len(), all.len());
    let by_size = rows(&["--sort", "size"]);
    assert!(by_size
        .windows(2)
        .all(|w| w[0]["raw_bytes"].as_u64() <= w[1]["raw_bytes"].as_u64()));
    let by_name = rows(&["--sort", "name"]);
    assert!(by_name
        .windows(2)
        .all(|w| w[0]["name"].as_str() <= w[1]["name"].as_str()));
    let rev_index = rows(&["--reverse"]);
    assert_eq!(
        rev_index.first().map(|r| &r["index"]),
        Some(&Value::from(19))
    );

    let q = rows(&["--tensor", "q_proj"]);
    let want = st
        .tensors
        .iter()
        .filter(|t| t.name.contains("q_proj"))
        .count();
    assert_eq!((q.len(), want), (2, 2));
    assert!(q
        .iter()
        .all(|r| r["name"].as_str().expect("name").contains("q_proj")));
    assert!(rows(&["--tensor", "no-such-tensor"]).is_empty());

    let text = ok(&run([
        "stat",
        path_str(&bs),
        "--sort",
        "ratio",
        "--reverse",
    ]));
    assert_eq!(
        text.lines().count(),
        st.tensors.len() + 1,
        "header + one row each"
    );
    usage_error(&run(["stat", path_str(&bs), "--sort", "bogus"]));
}

#[test]
fn scan_reports_the_source() {
    let src = fixture("minilm-bf16native-f32.safetensors");
    let st = SafetensorsFile::open(&src).expect("opens");
    let text = ok(&run(["scan", path_str(&src)]));
    assert!(text.contains("recommendation"), "{text}");
    let s = json(&ok(&run(["scan", path_str(&src), "--json"])));
    assert_eq!(s["shards"], 1);
    assert_eq!(s["tensors_total"].as_u64(), Some(st.tensors.len() as u64));
    assert_eq!(s["total_bytes"].as_u64(), Some(len(&src)));
    assert!(s["tensors_bf16_native"].as_u64().expect("count") >= 1);
}

#[test]
fn verify_every_mode_passes_on_a_good_file() {
    let (_dir, src, bs) = compressed_smollm();
    let b = path_str(&bs);
    for args in [
        vec!["verify", b],
        vec!["verify", "--fast", b],
        vec!["verify", "--sample", "0.5", "--seed", "1", b],
        vec!["verify", "--sample", "0.001", "--seed", "7", b],
        vec!["verify", "--source", path_str(&src), b],
        vec!["verify", "-v", b],
    ] {
        let out = ok(&run(&args));
        assert_eq!(last_line(&out), "OK", "{args:?}: {out}");
    }
    let v = json(&ok(&run(["verify", "--json", b])));
    assert_eq!(v["ok"], true);
    assert_eq!(v["files"][0]["mode"], "full");
    assert_eq!(v["files"][0]["md5_checked"], 20);
    // The same seed checks the same chunks.
    let sample = |seed: &str| {
        json(&ok(&run([
            "verify", "--sample", "0.5", "--seed", seed, "--json", b,
        ])))
    };
    let (a, a2) = (sample("1"), sample("1"));
    assert_eq!(a["seed"], 1);
    assert_eq!(
        a["files"][0]["chunks_checked"],
        a2["files"][0]["chunks_checked"]
    );
    assert_eq!(
        a["files"][0]["bytes_checked"],
        a2["files"][0]["bytes_checked"]
    );
    assert!(a["files"][0]["chunks_checked"].as_u64().expect("n") >= 1);
}

/// The verdict is the exit code whatever becomes of the report: with stdout a pipe already
/// closed (`verify bad.bs | true`) a damaged file still exits 3, and its stderr line is
/// printed; a good file exits 0 (a closed pipe is no failure), and a report that cannot be
/// written at all (`/dev/full`) is one.
#[test]
fn verify_verdict_survives_a_closed_stdout() {
    let (dir, _src, bs) = compressed_smollm();
    let bad = dir.path().join("bad.bs");
    fs::copy(&bs, &bad).expect("copy");
    xor_byte(&bad, 30_000, 1);
    let with_closed_stdout = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        std::process::Command::new(env!("CARGO_BIN_EXE_bigsmall"))
            .args(args)
            .stdout(writer)
            .output()
            .expect("runs")
    };
    for json in [false, true] {
        let mut args = vec!["verify", path_str(&bad)];
        if json {
            args.push("--json");
        }
        let o = with_closed_stdout(&args);
        assert_eq!(code(&o), 3, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("verification failed"), "{}", stderr(&o));
        let o = with_closed_stdout(&["verify", path_str(&bs)]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    if Path::new("/dev/full").exists() {
        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("opens");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_bigsmall"))
            .args(["verify", path_str(&bs)])
            .stdout(full)
            .output()
            .expect("runs");
        assert_eq!(code(&o), 1, "{}", stderr(&o));
        assert!(
            stderr(&o).contains("cannot write the report to standard output"),
            "{}",
            stderr(&o)
        );
    }
}

/// Tensor names come from files: a crafted one with a newline or a terminal escape sequence
/// is printed escaped, so it can neither split a report's rows nor reach the terminal.
#[test]
fn control_characters_in_names_are_printed_escaped() {
    let dir = tmp();
    let mut rng = Rng(5);
    let src = dir.path().join("names.safetensors");
    let names = [
        "ab\nrow",
        "\u{1b}[31mred",
        "w\u{7f}del",
        "x\u{85}nel",
        "rl\u{202e}txt",
    ];
    let tensors: Vec<T> = names
        .iter()
        .map(|n| t(n, "BF16", &[64, 64], bf16_weights(&mut rng, 64 * 64, 0.02)))
        .collect();
    fs::write(&src, safetensors(&tensors, None)).expect("write");
    let bs = dir.path().join("names.bs");
    ok(&run(["compress", path_str(&src), "-o", path_str(&bs)]));
    let other = dir.path().join("other.safetensors");
    fs::write(&other, safetensors(&tensors[..1], None)).expect("write");
    for args in [
        vec!["info", path_str(&bs)],
        vec!["stat", path_str(&bs)],
        vec!["diff", path_str(&src), path_str(&other), "--all"],
    ] {
        let out = ok(&run(&args));
        assert!(!out.contains('\u{1b}'), "{args:?}: {out}");
        assert!(out.contains("\\u{1b}[31mred"), "{args:?}: {out}");
        assert!(
            out.contains("ab\\nrow") && !out.contains("ab\nrow"),
            "{args:?}: {out}"
        );
        assert!(
            out.contains("rl\\u{202e}txt") && !out.contains('\u{202e}'),
            "{args:?}: {out}"
        );
    }
    // JSON reports stay valid JSON, the names intact once parsed, with nothing raw that a
    // terminal acts on (serde leaves DEL and the C1 controls as they are).
    for args in [
        vec!["stat", path_str(&bs), "--json"],
        vec!["info", path_str(&bs), "--json"],
    ] {
        let out = ok(&run(&args));
        assert!(
            !out.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?}"
        );
        assert!(!out.contains('\u{202e}'), "{args:?}");
        json(&out);
    }
    let rows = json(&ok(&run(["stat", path_str(&bs), "--json"])));
    let got: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(got, names);
    // A damaged file's problem lines name the tensor escaped too.
    let bad = dir.path().join("bad.bs");
    fs::copy(&bs, &bad).expect("copy");
    let c = Container::open(&bad).expect("opens").chunks(0).to_vec();
    xor_byte(&bad, c[0].offset + c[0].len / 2, 0x10);
    let o = run(["verify", path_str(&bad)]);
    assert_eq!(code(&o), 3);
    assert!(stdout(&o).contains("ab\\nrow"), "{}", stdout(&o));
    assert_eq!(stdout(&o).lines().filter(|l| *l == "row").count(), 0);
}

/// A directory given as `.` (run inside it) gets its default output beside it and named after
/// it, as `model/` does: `model.bs` from `model`, and `model` back from `model.bs` (refused
/// while that name is taken), never inside the input.
#[test]
fn default_outputs_of_dot_land_beside_the_directory() {
    let dir = tmp();
    let model = dir.path().join("model");
    copy_tree(&fixture("sharded"), &model);
    let o = bigsmall()
        .current_dir(&model)
        .args(["compress", ".", "--no-progress"])
        .output()
        .expect("runs");
    ok(&o);
    let bs = dir.path().join("model.bs");
    assert!(bs.join("bigsmall.index.json").is_file());
    // Decompressing `.` inside model.bs names the output `model` beside it: taken, refused.
    let o = bigsmall()
        .current_dir(&bs)
        .args(["decompress", ".", "--no-progress"])
        .output()
        .expect("runs");
    let e = fails(&o, 1);
    assert!(e.contains("already exists"), "{e}");
    fs::remove_dir_all(&model).expect("rm");
    let o = bigsmall()
        .current_dir(&bs)
        .args(["decompress", ".", "--no-progress"])
        .output()
        .expect("runs");
    ok(&o);
    assert_eq!(tree(&model), tree(&fixture("sharded")));
}

/// A full verify reports every damaged chunk, not only each tensor's first: what a repair or a
/// re-download has to cover.
#[test]
fn verify_reports_every_damaged_chunk() {
    let dir = tmp();
    let mut rng = Rng(9);
    let src = dir.path().join("big.safetensors");
    let n = 3 << 19; // 3 MiB of BF16: three chunks
    fs::write(
        &src,
        safetensors(
            &[t("w", "BF16", &[n], bf16_weights(&mut rng, n, 0.02))],
            None,
        ),
    )
    .expect("write");
    let bs = dir.path().join("big.bs");
    ok(&run(["compress", path_str(&src), "-o", path_str(&bs)]));
    let chunks = Container::open(&bs).expect("opens").chunks(0).to_vec();
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    for c in [&chunks[0], &chunks[2]] {
        xor_byte(&bs, c.offset + c.len / 2, 0x10);
    }
    for args in [
        vec!["verify", path_str(&bs), "--json"],
        vec![
            "verify",
            path_str(&bs),
            "--json",
            "--source",
            path_str(&src),
        ],
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        let v = json(&stdout(&o));
        let problems = v["files"][0]["problems"].as_array().expect("list");
        assert_eq!(problems.len(), 2, "{args:?}: {problems:?}");
    }
}

/// Storage mode promises the smallest file: on every fixture no tensor is stored larger than
/// in balanced mode (zstd's high level is not always smaller on a few KiB: both are tried).
#[test]
fn storage_stores_no_tensor_larger_than_balanced() {
    let dir = tmp();
    let stored = |src: &Path, mode: &str| -> BTreeMap<String, u64> {
        let out = dir.path().join(format!("{mode}.bs"));
        ok(&run([
            "compress",
            path_str(src),
            "-o",
            path_str(&out),
            mode,
            "-f",
            "--no-progress",
        ]));
        json(&ok(&run(["stat", path_str(&out), "--json"])))
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().expect("name").to_string(),
                    r["stored_bytes"].as_u64().expect("bytes"),
                )
            })
            .collect()
    };
    for f in fixture_files() {
        let (s, b) = (stored(&f, "--storage"), stored(&f, "--balanced"));
        for (name, n) in &s {
            assert!(
                *n <= b[name],
                "{}: {name} {n} bytes in storage, {} balanced",
                f.display(),
                b[name]
            );
        }
    }
}

#[test]
fn help_of_every_subcommand_has_examples() {
    let top = ok(&run(["--help"]));
    assert!(top.contains("Examples"), "{top}");
    let every = [
        "compress",
        "decompress",
        "info",
        "stat",
        "scan",
        "verify",
        "apply",
        "diff",
        "repair",
        "migrate",
        "transcode",
        "reshard",
        "benchmark",
    ];
    for sub in every {
        let h = ok(&run([sub, "--help"]));
        assert!(h.contains("Examples"), "{sub} --help: {h}");
        // Every command that reads weights can take long and shows a progress bar that
        // --no-progress hides; info and stat read only the index.
        if sub != "info" && sub != "stat" {
            assert!(h.contains("--no-progress"), "{sub} --help: {h}");
        }
    }
    let v = ok(&run(["--version"]));
    assert!(v.starts_with("bigsmall "), "{v}");
}

// ---------------------------------------------------------------------------------------------
// Hand-built inputs

/// Duplicate candidates are screened by sampled pages: tensors that agree on every sample but
/// differ elsewhere must stay two tensors.
#[test]
fn tensors_equal_only_where_sampled_are_not_duplicates() {
    let dir = tmp();
    let mut rng = Rng(7);
    let a = bf16_weights(&mut rng, 64 * 1024, 0.02); // 128 KiB: samples at 0, 64 and 124 KiB
    let mut b = a.clone();
    b[20_000] ^= 0x10;
    let bytes = safetensors(
        &[
            t("a.weight", "BF16", &[64, 1024], a),
            t("b.weight", "BF16", &[64, 1024], b),
        ],
        None,
    );
    let src = dir.path().join("near.safetensors");
    fs::write(&src, &bytes).expect("write");
    let bs = dir.path().join("near.bs");
    let r = compress(&src, &bs, "--balanced");
    assert_eq!(r["duplicates"], 0);
    let back = dir.path().join("back.safetensors");
    decompress(&bs, &back, &["--md5"]);
    assert_eq!(fs::read(&back).expect("read"), bytes);
}

#[test]
fn duplicate_tensors_are_stored_once() {
    let dir = tmp();
    let mut rng = Rng(42);
    let w = bf16_weights(&mut rng, 64 * 32, 0.02);
    let bytes = safetensors(
        &[
            t("model.embed_tokens.weight", "BF16", &[64, 32], w.clone()),
            t(
                "model.norm.weight",
                "BF16",
                &[32],
                bf16_weights(&mut rng, 32, 1.0),
            ),
            t("lm_head.weight", "BF16", &[64, 32], w.clone()),
        ],
        Some("{\"format\":\"pt\"}"),
    );
    let src = dir.path().join("tied.safetensors");
    fs::write(&src, &bytes).expect("write");
    let bs = dir.path().join("tied.bs");
    let text = ok(&run([
        "compress",
        path_str(&src),
        "-o",
        path_str(&bs),
        "--no-progress",
    ]));
    assert!(text.contains("duplicates: 1 tensors stored once"), "{text}");
    let r = compress(&src, &bs.with_extension("bs2"), "--balanced");
    assert_eq!(r["duplicates"], 1);
    let i = json(&ok(&run(["info", path_str(&bs), "--json"])));
    assert_eq!(i["duplicates"], 1);
    let rows = json(&ok(&run(["stat", path_str(&bs), "--json"])));
    let lm = &rows[2];
    assert_eq!(lm["name"], "lm_head.weight");
    assert_eq!(lm["codec"], "dup_ref");
    assert_eq!(lm["stored_bytes"], 0);
    // Stored once: the file is smaller than one copy of the raw tensor plus the rest.
    assert!(len(&bs) < (bytes.len() - w.len()) as u64);
    let c = Container::open(&bs).expect("opens");
    assert_eq!(c.index.tensors[2].dup_of, Some(0));
    assert!(c.index.tensors[2].chunks.is_empty());
    assert_eq!(c.index.tensors[2].md5, c.index.tensors[0].md5);

    let back = dir.path().join("back.safetensors");
    decompress(&bs, &back, &["--md5"]);
    assert_eq!(fs::read(&back).expect("read"), bytes);
    for args in [
        vec!["verify", path_str(&bs)],
        vec!["verify", "--source", path_str(&src), path_str(&bs)],
        vec!["verify", "--sample", "1", "--seed", "3", path_str(&bs)],
    ] {
        assert_eq!(last_line(&ok(&run(&args))), "OK", "{args:?}");
    }
}

#[test]
fn metadata_and_odd_header_spacing_roundtrip() {
    let dir = tmp();
    let mut rng = Rng(9);
    let a = bf16_weights(&mut rng, 128, 0.1);
    let b = f32_weights(&mut rng, 48, 0.1);
    let z = 0.5f32.to_le_bytes().to_vec();
    // Valid but unusual: newlines and spaces around tokens, keys not in data order, escaped
    // and non-ASCII metadata, an empty tensor, a scalar, an odd header length, trailing
    // spaces.
    let header = format!(
        "{{\n  \"b.weight\" : {{ \"dtype\" : \"F32\", \"shape\" : [ 4 , 12 ], \"data_offsets\" : [ {a}, {ab} ] }},\n\t\"__metadata__\": {{\"format\": \"pt\", \"note\": \"h\\u00e9llo \u{2713} \\\"q\\\"\", \"empty\": \"\"}},\r\n  \"a.weight\":{{\"dtype\":\"BF16\",\"shape\":[8,16],\"data_offsets\":[0,{a}]}}, \"none\": {{\"dtype\": \"F16\", \"shape\": [0], \"data_offsets\": [{ab},{ab}]}},\"s\":{{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[{ab},{abz}]}}\n}}     ",
        a = a.len(),
        ab = a.len() + b.len(),
        abz = a.len() + b.len() + z.len(),
    );
    assert!(!header.len().is_multiple_of(8), "odd header length");
    let data = [a, b, z].concat();
    let bytes = safetensors_raw(&header, &data);
    let src = dir.path().join("odd.safetensors");
    fs::write(&src, &bytes).expect("write");
    SafetensorsFile::open(&src).expect("the hand-made file is valid safetensors");
    for mode in MODES {
        let bs = dir.path().join(format!("odd{mode}.bs"));
        let back = dir.path().join(format!("odd{mode}.safetensors"));
        compress(&src, &bs, mode);
        decompress(&bs, &back, &["--md5"]);
        assert_eq!(fs::read(&back).expect("read"), bytes, "{mode}");
        let out = ok(&run(["verify", "--source", path_str(&src), path_str(&bs)]));
        assert_eq!(last_line(&out), "OK");
    }
}

#[test]
fn file_without_tensors_roundtrips() {
    let dir = tmp();
    for header in ["{}      ", "{\"__metadata__\":{\"format\":\"pt\"}}"] {
        let bytes = safetensors_raw(header, &[]);
        let src = dir.path().join("none.safetensors");
        fs::write(&src, &bytes).expect("write");
        let bs = dir.path().join("none.bs");
        let back = dir.path().join("none.back");
        let _ = fs::remove_file(&bs);
        let _ = fs::remove_file(&back);
        compress(&src, &bs, "--balanced");
        decompress(&bs, &back, &["--md5"]);
        assert_eq!(fs::read(&back).expect("read"), bytes, "{header}");
        for args in [
            vec!["verify", path_str(&bs)],
            vec!["verify", "--sample", "0.5", path_str(&bs)],
            vec!["info", path_str(&bs)],
            vec!["stat", path_str(&bs)],
        ] {
            ok(&run(&args));
        }
        let scan = ok(&run(["scan", path_str(&src)]));
        assert!(
            scan.contains("recommendation:          no tensor data"),
            "{scan}"
        );
    }
}

/// Tensors larger than a chunk (1 MiB) and a model larger than a decode window: chunk
/// boundaries, partial last chunks, md5 receipts across chunks and windows, a tied copy of a
/// multi-chunk tensor. The fixtures are all single-chunk.
#[test]
fn multi_chunk_tensors_roundtrip() {
    let dir = tmp();
    let mut rng = Rng(77);
    let big = bf16_weights(&mut rng, 2048 * 1536, 0.02); // 6 MiB: 6 chunks
    let bytes = safetensors(
        &[
            t(
                "model.embed_tokens.weight",
                "BF16",
                &[2048, 1536],
                big.clone(),
            ),
            t(
                "model.layers.0.mlp.up_proj.weight",
                "F32",
                &[700, 1000],
                f32_weights(&mut rng, 700_000, 0.02),
            ), // 2.8 MB: 3 chunks, the last partial
            t(
                "mask",
                "BOOL",
                &[1_500_000],
                (0..1_500_000).map(|_| u8::from(rng.unit() < 0.2)).collect(),
            ),
            t("lm_head.weight", "BF16", &[2048, 1536], big),
        ],
        None,
    );
    let src = dir.path().join("big.safetensors");
    fs::write(&src, &bytes).expect("write");
    for mode in ["--balanced", "--inference"] {
        let bs = dir.path().join(format!("big{mode}.bs"));
        let r = compress(&src, &bs, mode);
        assert_eq!(r["duplicates"], 1);
        let c = Container::open(&bs).expect("opens");
        let n: Vec<usize> = c.index.tensors.iter().map(|t| t.chunks.len()).collect();
        assert_eq!(n, vec![6, 3, 2, 0], "{mode}: chunks per tensor");
        drop(c);
        let back = dir.path().join(format!("big{mode}.back"));
        decompress(&bs, &back, &["--md5"]);
        assert!(
            fs::read(&back).expect("read") == bytes,
            "{mode}: round trip"
        );
        for args in [
            vec!["verify", path_str(&bs)],
            vec!["verify", "--sample", "0.3", "--seed", "2", path_str(&bs)],
            vec!["verify", "--source", path_str(&src), path_str(&bs)],
        ] {
            assert_eq!(last_line(&ok(&run(&args))), "OK", "{args:?}");
        }
    }
    // Damage the last chunk of the file: earlier windows are already written when it fails.
    let bs = dir.path().join("big--balanced.bs");
    let c = Container::open(&bs).expect("opens");
    let ch = *c.index.tensors[2].chunks.last().expect("chunk");
    drop(c);
    xor_byte(&bs, ch.offset + ch.len / 2, 0x04);
    let out = dir.path().join("damaged.safetensors");
    let e = fails(&run(["decompress", path_str(&bs), "-o", path_str(&out)]), 3);
    assert!(e.contains("'mask'") && e.contains("chunk 1"), "{e}");
    assert!(!out.exists());
    assert_no_leftovers(dir.path());
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[test]
fn existing_output_is_refused_unless_forced() {
    let dir = tmp();
    let src = fixture("smollm-e5m2.safetensors");
    let bs = dir.path().join("out.bs");
    fs::write(&bs, b"precious").expect("write");
    let e = fails(
        &run([
            "compress",
            path_str(&src),
            "-o",
            path_str(&bs),
            "--no-progress",
        ]),
        1,
    );
    assert!(e.contains("exists"), "{e}");
    assert!(e.contains(path_str(&bs)), "names the output: {e}");
    assert_eq!(fs::read(&bs).expect("read"), b"precious", "untouched");
    ok(&run([
        "compress",
        path_str(&src),
        "-o",
        path_str(&bs),
        "-f",
        "--no-progress",
    ]));
    Container::open(&bs).expect("-f replaced it with a container");

    let back = dir.path().join("back.safetensors");
    fs::write(&back, b"also precious").expect("write");
    let e = fails(
        &run(["decompress", path_str(&bs), "-o", path_str(&back)]),
        1,
    );
    assert!(e.contains("exists"), "{e}");
    assert_eq!(fs::read(&back).expect("read"), b"also precious");
    ok(&run([
        "decompress",
        path_str(&bs),
        "-o",
        path_str(&back),
        "--force",
    ]));
    assert_eq!(sha256_file(&back), sha256_file(&src));

    // Compressing onto the source itself is refused, with -f too, and the source survives.
    let copy = dir.path().join("copy.safetensors");
    fs::copy(&src, &copy).expect("copy");
    for force in [None, Some("-f")] {
        let mut args = vec!["compress", path_str(&copy), "-o", path_str(&copy)];
        args.extend(force);
        let e = fails(&run(&args), 1);
        assert!(e.contains("is the input"), "{e}");
        assert_eq!(sha256_file(&copy), sha256_file(&src));
    }

    // Directories: a non-empty output directory is refused, then replaced with -f.
    let out = dir.path().join("dir.bs");
    fs::create_dir(&out).expect("mkdir");
    fs::write(out.join("keep.txt"), b"keep").expect("write");
    let e = fails(
        &run([
            "compress",
            path_str(&fixture("sharded")),
            "-o",
            path_str(&out),
        ]),
        1,
    );
    assert!(e.contains("exists"), "{e}");
    assert_eq!(fs::read(out.join("keep.txt")).expect("read"), b"keep");
    // With -f too, while it holds something the run does not write: nothing is deleted.
    let sharded = fixture("sharded");
    let forced = ["compress", path_str(&sharded), "-o", path_str(&out), "-f"];
    let e = fails(&run(forced), 1);
    assert!(
        e.contains("'keep.txt'") && e.contains("does not write"),
        "{e}"
    );
    assert_eq!(fs::read(out.join("keep.txt")).expect("read"), b"keep");
    assert_eq!(fs::read_dir(&out).expect("list").count(), 1, "untouched");
    // Without it, -f replaces the directory, and replaces that output again.
    fs::remove_file(out.join("keep.txt")).expect("rm");
    fs::write(out.join("bigsmall.index.json"), b"stale").expect("write");
    ok(&run(forced));
    assert!(out.join("bigsmall.index.json").is_file());
    let first = fs::read(out.join("bigsmall.index.json")).expect("read");
    assert_ne!(first, b"stale");
    ok(&run(forced));
    assert_eq!(
        fs::read(out.join("bigsmall.index.json")).expect("read"),
        first
    );
    let back_dir = dir.path().join("back-dir");
    fs::create_dir(&back_dir).expect("mkdir");
    fs::write(back_dir.join("x"), b"x").expect("write");
    let e = fails(
        &run(["decompress", path_str(&out), "-o", path_str(&back_dir)]),
        1,
    );
    assert!(e.contains("exists"), "{e}");
    assert_eq!(fs::read(back_dir.join("x")).expect("read"), b"x");
    assert_no_leftovers(dir.path());
}

#[test]
fn missing_input_is_one_line() {
    let dir = tmp();
    let missing = dir.path().join("nope.safetensors");
    let m = path_str(&missing);
    let out = path_str(&dir.path().join("out")).to_string();
    for args in [
        vec!["compress", m, "-o", &out],
        vec!["decompress", m, "-o", &out],
        vec!["info", m],
        vec!["stat", m],
        vec!["scan", m],
        vec!["verify", m],
        vec!["verify", "--fast", m],
    ] {
        let e = fails(&run(&args), 1);
        assert!(e.contains("nope.safetensors"), "{args:?}: {e}");
    }
    assert!(!dir.path().join("out").exists());
    // --source pointing nowhere
    let (_d, _src, bs) = compressed_smollm();
    let e = fails(&run(["verify", "--source", m, path_str(&bs)]), 1);
    assert!(e.contains("nope.safetensors"), "{e}");
}

#[test]
fn non_safetensors_inputs_are_refused() {
    let dir = tmp();
    let mut rng = Rng(1);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random.safetensors", rng.bytes(4096)),
        (
            "text.safetensors",
            b"hello, this is not a model\n".repeat(20),
        ),
        ("empty.safetensors", Vec::new()),
        ("seven.safetensors", vec![1, 0, 0, 0, 0, 0, 0]),
        ("json.safetensors", b"{\"a\": 1}".to_vec()),
    ];
    for (name, bytes) in &cases {
        let src = dir.path().join(name);
        fs::write(&src, bytes).expect("write");
        let out = dir.path().join(format!("{name}.bs"));
        let e = fails(
            &run([
                "compress",
                path_str(&src),
                "-o",
                path_str(&out),
                "--no-progress",
            ]),
            1,
        );
        assert!(e.contains(name), "{name}: {e}");
        assert!(!out.exists(), "{name}: output created");
        let e = fails(&run(["scan", path_str(&src)]), 1);
        assert!(e.contains(name), "{name}: {e}");
        // Nor are they containers.
        let back = dir.path().join(format!("{name}.back"));
        fails(
            &run(["decompress", path_str(&src), "-o", path_str(&back)]),
            1,
        );
        assert!(!back.exists(), "{name}: decompress output created");
        for cmd in ["info", "stat", "verify"] {
            fails(&run([cmd, path_str(&src)]), 1);
        }
    }
    // A directory without weights, and a directory that is not a compressed one.
    let empty = dir.path().join("emptydir");
    fs::create_dir(&empty).expect("mkdir");
    fails(
        &run([
            "compress",
            path_str(&empty),
            "-o",
            path_str(&dir.path().join("e.bs")),
        ]),
        1,
    );
    assert!(!dir.path().join("e.bs").exists());
    for cmd in ["info", "stat", "verify"] {
        fails(&run([cmd, path_str(&fixture("sharded"))]), 1);
    }
    fails(
        &run([
            "decompress",
            path_str(&fixture("sharded")),
            "-o",
            path_str(&dir.path().join("d")),
        ]),
        1,
    );
    assert!(!dir.path().join("d").exists());
    assert_no_leftovers(dir.path());
}

#[test]
fn unwritable_output_leaves_nothing() {
    let dir = tmp();
    let src = fixture("smollm-e5m2.safetensors");
    let sharded = fixture("sharded");
    let (_d, _s, bs) = compressed_smollm();
    let plain = dir.path().join("plain-file");
    fs::write(&plain, b"x").expect("write");
    let mut targets = vec![
        dir.path().join("no-such-dir").join("out"),
        plain.join("out"), // parent is a regular file
    ];
    // A read-only directory (meaningless when running as root, who can write anyway).
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).expect("mkdir");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).expect("chmod");
    }
    if fs::write(ro.join("probe"), b"").is_err() {
        targets.push(ro.join("out"));
    } else {
        let _ = fs::remove_file(ro.join("probe"));
        eprintln!("note: running with write access to read-only directories (root?); skipped");
    }
    for out in &targets {
        let o = path_str(out);
        let mut runs = vec![
            vec!["compress", path_str(&src), "-o", o, "--no-progress"],
            vec!["decompress", path_str(&bs), "-o", o, "--no-progress"],
        ];
        if !out.starts_with(dir.path().join("no-such-dir")) {
            // (directory outputs create missing parents: see the ignored test below)
            runs.push(vec!["compress", path_str(&sharded), "-o", o]);
        }
        for args in runs {
            let r = run(&args);
            assert_ne!(code(&r), 0, "{args:?} succeeded");
            one_line_error(&stderr(&r));
            assert!(!out.exists(), "{args:?} created {o}");
            if let Some(parent) = out.parent() {
                assert_no_leftovers(parent);
            }
        }
    }
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    assert_no_leftovers(dir.path());
}

/// A write that fails part-way (here the file-size limit, `ulimit -f`, as a full disk would)
/// is one error line, and no temporary file is left: at every limit, including one that only
/// the final flush of the index crosses.
#[test]
fn a_write_that_fails_part_way_leaves_nothing() {
    let dir = tmp();
    let d = dir.path();
    let src = fixture("smollm-bf16.safetensors");
    let full = d.join("full.bs");
    ok(&run([
        "compress",
        path_str(&src),
        "-o",
        path_str(&full),
        "--no-progress",
    ]));
    let size = len(&full);
    let sharded = fixture("sharded");
    let out_dir = d.join("outs");
    fs::create_dir(&out_dir).expect("mkdir");
    // (sh's ulimit -f counts 512-byte blocks; the directory's shards are under 300 KB)
    for blocks in [8, size / 1024, (size - 1) / 512] {
        for (what, input, name) in [
            ("compress", &src, "x.bs"),
            ("decompress", &full, "x.safetensors"),
            ("compress", &sharded, "x-dir.bs"),
        ] {
            if input == &sharded && blocks * 512 > 200_000 {
                continue;
            }
            let out = out_dir.join(name);
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ulimit -f {blocks}; exec \"$0\" {what} \"$1\" -o \"$2\" --no-progress"
                ))
                .arg(env!("CARGO_BIN_EXE_bigsmall"))
                .arg(input)
                .arg(&out)
                .output()
                .expect("sh runs");
            let e = fails(&o, 1);
            assert!(
                e.contains("File too large"),
                "{what} at {blocks} blocks: {e}"
            );
            assert!(
                !out.exists(),
                "{what} at {blocks} blocks: output under its final name"
            );
            assert_no_leftovers(&out_dir);
        }
    }
    // What a killed run left (its process gone) is removed by the next run to the same
    // output; a live process's temporary output is not.
    let stale = out_dir.join(".x.bs.bigsmall-tmp-99999999");
    let stale_dir = out_dir.join(".x-dir.bs.bigsmall-tmp-99999998");
    let live = out_dir.join(format!(".x.bs.bigsmall-tmp-{}", std::process::id()));
    fs::write(&stale, b"partial").expect("write");
    fs::create_dir_all(stale_dir.join("sub")).expect("mkdir");
    fs::write(&live, b"partial").expect("write");
    // A run in another PID namespace looks dead by its number; its lock says it is not.
    let locked = out_dir.join(".x.bs.bigsmall-tmp-99999997");
    fs::write(&locked, b"partial").expect("write");
    let held = fs::File::open(&locked).expect("open");
    assert!(bigsmall::fsutil::try_lock(&held));
    let x = out_dir.join("x.bs");
    ok(&run([
        "compress",
        path_str(&src),
        "-o",
        path_str(&x),
        "--no-progress",
    ]));
    let xd = out_dir.join("x-dir.bs");
    ok(&run(["compress", path_str(&sharded), "-o", path_str(&xd)]));
    assert!(!stale.exists() && !stale_dir.exists());
    assert!(live.exists() && locked.exists());
    drop(held);
}

/// An output path that is an existing directory, with -f: the final rename fails, and the
/// temporary file must not be left beside it.
#[test]
fn output_that_is_a_directory_leaves_nothing() {
    let (dir, src, bs) = compressed_smollm();
    let target = dir.path().join("target");
    fs::create_dir(&target).expect("mkdir");
    fs::write(target.join("keep"), b"keep").expect("write");
    for args in [
        vec!["compress", path_str(&src), "-o", path_str(&target), "-f"],
        vec!["decompress", path_str(&bs), "-o", path_str(&target), "-f"],
    ] {
        let r = run(&args);
        assert_ne!(code(&r), 0, "{args:?}");
        one_line_error(&stderr(&r));
        assert_eq!(fs::read(target.join("keep")).expect("read"), b"keep");
        assert_no_leftovers(dir.path());
    }
}

/// A model directory whose side files share a name with a compressed shard (`w.bs` beside
/// `w.safetensors`) or with the directory index: compress must refuse, or the round trip
/// must still be exact. Today the side file silently replaces the shard (compress exits 0,
/// the compressed directory no longer holds the weights).
#[test]
fn directory_name_collisions_are_safe() {
    let dir = tmp();
    for (i, side) in ["w.bs", "bigsmall.index.json"].into_iter().enumerate() {
        let model = dir.path().join(format!("model{i}"));
        fs::create_dir(&model).expect("mkdir");
        fs::copy(
            fixture("smollm-e5m2.safetensors"),
            model.join("w.safetensors"),
        )
        .expect("cp");
        fs::write(model.join(side), b"a side file\n").expect("write");
        let bs = dir.path().join(format!("model{i}.bs"));
        let r = run(["compress", path_str(&model), "-o", path_str(&bs)]);
        if code(&r) != 0 {
            one_line_error(&stderr(&r)); // refusing is fine
            continue;
        }
        let back = dir.path().join(format!("back{i}"));
        ok(&run(["decompress", path_str(&bs), "-o", path_str(&back)]));
        assert_eq!(all_files(&back), all_files(&model), "{side}");
    }
}

/// File outputs refuse a missing parent directory; directory outputs silently create the whole
/// path (`create_dir_all` of the staging directory), and leave it behind when they then fail.
#[test]
fn directory_output_into_missing_parent_is_refused() {
    let dir = tmp();
    // A model directory whose second weight file is not safetensors: compression fails late.
    let model = dir.path().join("model");
    fs::create_dir(&model).expect("mkdir");
    fs::copy(
        fixture("sharded/model-00001-of-00002.safetensors"),
        model.join("a.safetensors"),
    )
    .expect("copy");
    fs::write(model.join("b.safetensors"), b"not a model").expect("write");
    let out = dir.path().join("x").join("y").join("out.bs");
    fails(
        &run(["compress", path_str(&model), "-o", path_str(&out)]),
        1,
    );
    assert!(
        !dir.path().join("x").exists(),
        "a failed compress left the parent directories it created"
    );
    // And a good one, like a file output, refuses a parent that does not exist.
    let r = run([
        "compress",
        path_str(&fixture("sharded")),
        "-o",
        path_str(&out),
    ]);
    assert_ne!(code(&r), 0, "created {}", out.display());
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (_d, _s, bs) = compressed_smollm();
    let b = path_str(&bs);
    for f in ["0", "2", "-1", "1.0001", "nan", "abc", ""] {
        usage_error(&run(["verify", "--sample", f, b]));
    }
    usage_error(&run(["verify", "--fast", "--sample", "0.5", b]));
    usage_error(&run(["verify", "--sample", "0.5", "--source", b, b]));
    usage_error(&run(["compress", b, "--storage", "--inference"]));
    usage_error(&run(["compress"]));
    usage_error(&run(["frobnicate"]));
    usage_error(&run::<[&str; 0], &str>([]));
    usage_error(&run(["info", b, "--bogus"]));
    // Edge of the accepted range.
    let text = ok(&run(["verify", "--sample", "1", "--seed", "42", b]));
    assert_eq!(last_line(&text), "OK");
    assert!(text.contains("seed: 42 "), "the seed is printed: {text}");
}

// ---------------------------------------------------------------------------------------------
// Corruption

#[test]
fn flipped_blob_byte_is_caught() {
    let (dir, src, bs) = compressed_smollm();
    let c = Container::open(&bs).expect("opens");
    let (ti, ch) = (0, c.index.tensors[0].chunks[0]);
    let name = c.index.tensors[ti].name.clone();
    drop(c);
    assert!(ch.len > 100, "a real blob");
    xor_byte(&bs, ch.offset + ch.len / 2, 0x10);
    let b = path_str(&bs);

    let back = dir.path().join("back.safetensors");
    for extra in [&[][..], &["--md5"][..]] {
        let mut args = vec!["decompress", b, "-o", path_str(&back), "--no-progress"];
        args.extend_from_slice(extra);
        let e = fails(&run(&args), 3);
        assert!(e.contains(&name), "names the tensor: {e}");
        assert!(!back.exists(), "no output after a failed decode");
        assert_no_leftovers(dir.path());
    }

    let r = run(["verify", b]);
    assert_eq!(code(&r), 3, "{}", stderr(&r));
    let out = stdout(&r);
    assert!(
        out.lines()
            .any(|l| l.starts_with("MISMATCH") && l.contains(&name)),
        "{out}"
    );
    assert_eq!(last_line(&out), "FAILED");
    let r = run(["verify", "--json", b]);
    assert_eq!(code(&r), 3);
    let v = json(&stdout(&r));
    assert_eq!(v["ok"], false);
    assert!(!v["files"][0]["problems"]
        .as_array()
        .expect("problems")
        .is_empty());
    for args in [
        vec!["verify", "--sample", "1", b],
        vec!["verify", "--source", path_str(&src), b],
    ] {
        let r = run(&args);
        assert_eq!(code(&r), 3, "{args:?}");
        assert_eq!(last_line(&stdout(&r)), "FAILED", "{args:?}");
    }
    // Structure only: still fine. The index is intact, so reports work too.
    assert_eq!(last_line(&ok(&run(["verify", "--fast", b]))), "OK");
    ok(&run(["info", b]));
    ok(&run(["stat", b]));
}

/// A receipt that lies while every chunk checksum holds: benchmark's round trip fails (exit 3),
/// and stderr, not only the report on stdout, names the file and the tensor.
#[test]
fn benchmark_of_a_damaged_container_says_why_on_stderr() {
    let (dir, _src, bs) = compressed_smollm();
    let bytes = fs::read(&bs).expect("read");
    let mut name = String::new();
    let bad = edit_index(&bytes, |v| {
        let t = &mut v["tensors"][3];
        name = t["name"].as_str().expect("name").to_string();
        t["md5"] = Value::from("0".repeat(32));
    });
    let bad_bs = dir.path().join("bad.bs");
    fs::write(&bad_bs, bad).expect("write");
    let o = run([
        "benchmark",
        path_str(&bad_bs),
        "--no-progress",
        "--runs",
        "1",
    ]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("MD5 RECEIPT MISMATCH"),
        "{}",
        stdout(&o)
    );
    let e = one_line_error(&stderr(&o));
    assert!(e.contains("bad.bs"), "{e}");
    assert!(e.contains(&name), "{e}");
    assert!(e.contains("the report is on stdout"), "{e}");
    assert_no_leftovers(dir.path());
}

#[test]
fn flipped_index_byte_is_caught() {
    let (dir, src, bs) = compressed_smollm();
    let bytes = fs::read(&bs).expect("read");
    let t = trailer_of(&bytes);
    xor_byte(&bs, t.index_offset + t.index_len / 2, 0x01);
    let b = path_str(&bs);
    let back = dir.path().join("back.safetensors");
    for args in [
        vec!["decompress", b, "-o", path_str(&back)],
        vec!["decompress", b, "-o", path_str(&back), "--md5"],
        vec!["info", b],
        vec!["info", b, "--json"],
        vec!["stat", b],
    ] {
        let e = fails(&run(&args), 3);
        assert!(e.contains("index"), "{args:?}: {e}");
        assert!(!back.exists());
    }
    // For verify, a damaged index is a finding: exit 3, reported like a damaged chunk.
    for args in [
        vec!["verify", b],
        vec!["verify", "--fast", b],
        vec!["verify", "--sample", "0.5", "--seed", "1", b],
        vec!["verify", "--source", path_str(&src), b],
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 3, "{args:?}");
        let out = stdout(&o);
        assert!(
            out.contains("MISMATCH") && out.contains("index"),
            "{args:?}: {out}"
        );
        assert_eq!(last_line(&out), "FAILED", "{args:?}");
    }
    let o = run(["verify", "--json", b]);
    assert_eq!(code(&o), 3);
    let v = json(&stdout(&o));
    assert_eq!(v["ok"], false);
    assert!(v["files"][0]["problems"][0]
        .as_str()
        .unwrap()
        .contains("index"));
    assert_no_leftovers(dir.path());
}

/// Damaged structure is damage found: exit 3 from every command, unless the file is not a
/// container at all (no magic: exit 1); verify reports it like a damaged chunk.
#[test]
fn damaged_structure_is_exit_3() {
    let (dir, _src, bs) = compressed_smollm();
    let good = fs::read(&bs).expect("read");
    let t = trailer_of(&good);
    let damaged = |name: &str, bytes: Vec<u8>| {
        let p = dir.path().join(name);
        fs::write(&p, bytes).expect("write");
        p
    };
    let mut magic = good.clone();
    magic[0] ^= 0x20;
    let mut tmagic = good.clone();
    let n = tmagic.len();
    tmagic[n - 1] ^= 0x20;
    let mut toff = good.clone();
    toff[n - 40] ^= 0x01;
    let cases = [
        damaged("magic.bs", magic),
        damaged("trailer-magic.bs", tmagic),
        damaged("trailer-offset.bs", toff),
        damaged("truncated.bs", good[..good.len() - 1].to_vec()),
        damaged("half.bs", good[..(t.index_offset / 2) as usize].to_vec()),
        damaged("tiny.bs", good[..20].to_vec()),
    ];
    // (A damaged magic before an intact trailer is damage too, not another kind of file.)
    for p in &cases {
        let back = dir.path().join("back");
        for args in [
            vec!["decompress", path_str(p), "-o", path_str(&back)],
            vec!["info", path_str(p)],
        ] {
            let e = fails(&run(&args), 3);
            assert!(e.contains(&file_name(p)), "{args:?}: {e}");
        }
        for args in [
            vec!["verify", path_str(p)],
            vec!["verify", "--fast", path_str(p)],
        ] {
            let o = run(&args);
            assert_eq!(code(&o), 3, "{args:?}");
            let out = stdout(&o);
            assert!(
                out.contains(&format!("MISMATCH {}", path_str(p))),
                "{args:?}: {out}"
            );
        }
        assert!(!back.exists());
    }
    assert_no_leftovers(dir.path());
}

#[test]
fn tensor_name_with_newline_still_gives_one_line() {
    // Error lines quote tensor names; a name with a line break must not split the line.
    let dir = tmp();
    let mut rng = Rng(5);
    let bytes = safetensors(
        &[t(
            "evil\nname\r\nx",
            "BF16",
            &[32, 32],
            bf16_weights(&mut rng, 1024, 0.02),
        )],
        None,
    );
    let src = dir.path().join("nl.safetensors");
    fs::write(&src, &bytes).expect("write");
    let bs = dir.path().join("nl.bs");
    compress(&src, &bs, "--balanced");
    let c = Container::open(&bs).expect("opens");
    let ch = c.index.tensors[0].chunks[0];
    drop(c);
    xor_byte(&bs, ch.offset + ch.len / 2, 0x40);
    let back = dir.path().join("back");
    let e = fails(
        &run(["decompress", path_str(&bs), "-o", path_str(&back)]),
        3,
    );
    assert!(e.contains("evil\\nname\\r\\nx"), "{e}");
    assert!(!back.exists());
}

/// `-f` replaces files and directories only: a pipe or a device under the output name is
/// refused, and left as it is.
#[test]
fn force_refuses_a_pipe_or_device() {
    let (dir, src, _bs) = compressed_smollm();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let e = fails(
        &run(["compress", path_str(&src), "-o", path_str(&fifo), "-f"]),
        1,
    );
    assert!(e.contains("not a regular file"), "{e}");
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_no_leftovers(dir.path());

    // A directory output neither: every command that writes one (compress, decompress,
    // reshard of a model directory) stops before any work, and leaves the pipe as it was.
    let model = fixture("sharded");
    let cdir = dir.path().join("cdir");
    ok(&run(["compress", path_str(&model), "-o", path_str(&cdir)]));
    for args in [
        vec!["compress", path_str(&model), "-o", path_str(&fifo), "-f"],
        vec!["decompress", path_str(&cdir), "-o", path_str(&fifo), "-f"],
        vec![
            "reshard",
            path_str(&cdir),
            "--output-dir",
            path_str(&fifo),
            "-f",
        ],
    ] {
        let e = fails(&run(&args), 1);
        assert!(e.contains("not a regular file"), "{args:?}: {e}");
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    }

    // -f replaces only an output's own kind: a file is not turned into a directory, nor a
    // directory into a file (that one used to fail only after all the work).
    let file = dir.path().join("notes.txt");
    fs::write(&file, b"mine").expect("write");
    let e = fails(
        &run(["compress", path_str(&model), "-o", path_str(&file), "-f"]),
        1,
    );
    assert!(
        e.contains("is a file, and this output is a directory"),
        "{e}"
    );
    assert_eq!(fs::read(&file).expect("read"), b"mine");
    let e = fails(
        &run(["compress", path_str(&src), "-o", path_str(&cdir), "-f"]),
        1,
    );
    assert!(
        e.contains("is a directory, and this output is a file"),
        "{e}"
    );
    assert!(cdir.join("bigsmall.index.json").is_file());
    assert_no_leftovers(dir.path());
}

/// A sharded model whose index names a shard that is not there (an interrupted download) is
/// refused, naming the shard, not compressed into a smaller model that still carries an
/// index naming the missing file.
#[test]
fn a_shard_missing_from_a_model_directory_is_refused() {
    let dir = tmp();
    let model = dir.path().join("model");
    copy_tree(&fixture("sharded"), &model);
    fs::remove_file(model.join("model-00002-of-00002.safetensors")).expect("rm");
    let out = dir.path().join("out.bs");
    let sharded = fixture("sharded");
    for args in [
        vec!["compress", path_str(&model), "-o", path_str(&out)],
        vec!["scan", path_str(&model)],
        // As the base of a patch too: the patch would need the incomplete directory.
        vec![
            "compress",
            path_str(&sharded),
            "--delta-from",
            path_str(&model),
            "-o",
            path_str(&out),
        ],
    ] {
        let e = fails(&run(&args), 1);
        assert!(
            e.contains("model-00002-of-00002.safetensors")
                && e.contains("model.safetensors.index.json")
                && e.contains("missing"),
            "{args:?}: {e}"
        );
    }
    assert!(!out.exists());

    // Without the index, the shards' names still count them.
    let index = model.join("model.safetensors.index.json");
    let listing = fs::read(&index).expect("index");
    fs::remove_file(&index).expect("rm");
    for args in [
        vec!["compress", path_str(&model), "-o", path_str(&out)],
        vec!["scan", path_str(&model)],
    ] {
        let e = fails(&run(&args), 1);
        assert!(
            e.contains("model-00002-of-00002.safetensors") && e.contains("count 2"),
            "{args:?}: {e}"
        );
    }
    // An index that cannot be read cannot vouch for the shards: refused, not carried blind.
    fs::copy(
        fixture("sharded").join("model-00002-of-00002.safetensors"),
        model.join("model-00002-of-00002.safetensors"),
    )
    .expect("copy");
    for garbled in [
        b"{\"weight_map\": {".to_vec(),
        b"{\"weight_map\": []}".to_vec(),
        b"[]".to_vec(),
    ] {
        fs::write(&index, &garbled).expect("write");
        let e = fails(
            &run(["compress", path_str(&model), "-o", path_str(&out)]),
            1,
        );
        assert!(
            e.contains("model.safetensors.index.json") && e.contains("not a readable shard index"),
            "{e}"
        );
    }
    fs::write(&index, &listing).expect("write");
    ok(&run(["compress", path_str(&model), "-o", path_str(&out)]));
    assert_no_leftovers(dir.path());
}

/// `verify DIR --source MODEL` says OK only if the model directory can be rebuilt in full: a
/// weight or side file in the source that the compressed directory does not hold is a
/// mismatch (hidden entries, which compress skips, are not).
#[test]
fn verify_source_dir_finds_files_the_container_lacks() {
    let dir = tmp();
    let bs = dir.path().join("model.bs");
    ok(&run([
        "compress",
        path_str(&fixture("sharded")),
        "-o",
        path_str(&bs),
    ]));
    let model = dir.path().join("model");
    copy_tree(&fixture("sharded"), &model);
    fs::write(model.join(".gitattributes"), "*.safetensors filter=lfs\n").expect("write");
    let out = ok(&run([
        "verify",
        path_str(&bs),
        "--source",
        path_str(&model),
    ]));
    assert_eq!(last_line(&out), "OK", "{out}");
    fs::copy(fixture("ints.safetensors"), model.join("extra.safetensors")).expect("copy");
    fs::write(model.join("generation_config.json"), "{}").expect("write");
    let o = run(["verify", path_str(&bs), "--source", path_str(&model)]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let out = stdout(&o);
    for name in ["extra.safetensors", "generation_config.json"] {
        assert!(
            out.contains(&format!("{name}: in the source but not in")),
            "{out}"
        );
    }
}

/// A shard replaced by a directory, a link to nothing or a pipe is damage that verify
/// reports like a missing shard (exit 3, a report), and that every other command refuses.
#[test]
fn verify_reports_a_shard_that_is_not_a_file() {
    let dir = tmp();
    let bs = dir.path().join("model.bs");
    ok(&run([
        "compress",
        path_str(&fixture("sharded")),
        "-o",
        path_str(&bs),
    ]));
    let shard = bs.join("model-00002-of-00002.bs");
    let pristine = fs::read(&shard).expect("read");
    let out = dir.path().join("back");
    type Make = fn(&Path);
    let kinds: [(Make, &str); 3] = [
        (
            |p| fs::create_dir(p).expect("mkdir"),
            "is a directory where a file should be",
        ),
        (
            |p| std::os::unix::fs::symlink("/nonexistent/shard.bs", p).expect("ln"),
            "is a link to nothing",
        ),
        (|p| mkfifo(p), "is not a regular file"),
    ];
    for (make, said) in kinds {
        fs::remove_file(&shard).expect("rm");
        make(&shard);
        for args in [
            vec!["verify", path_str(&bs)],
            vec!["verify", "--fast", path_str(&bs)],
        ] {
            let o = run(&args);
            assert_eq!(code(&o), 3, "{args:?}: {}", stderr(&o));
            assert!(stdout(&o).contains(said), "{args:?}: {}", stdout(&o));
        }
        for args in [
            vec!["decompress", path_str(&bs), "-o", path_str(&out)],
            vec!["info", path_str(&bs)],
        ] {
            let e = fails(&run(&args), 3);
            assert!(e.contains(said), "{args:?}: {e}");
        }
        assert!(!out.exists());
        if shard.is_dir() {
            fs::remove_dir(&shard).expect("rmdir");
        } else {
            fs::remove_file(&shard).expect("rm");
        }
        fs::write(&shard, &pristine).expect("write");
    }
}

/// A link is no way round the rule that -f replaces only files and directories: a link to a
/// pipe (or to /dev/stdout) is refused and stays a link; a source side file that is a pipe is
/// a mismatch for `verify --source`, not a read that blocks.
#[test]
fn links_to_pipes_are_not_outputs_and_pipes_are_not_sources() {
    let dir = tmp();
    let (_d, _src, bs) = compressed_smollm();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let link = dir.path().join("out.safetensors");
    std::os::unix::fs::symlink(&fifo, &link).expect("ln");
    let e = fails(
        &run(["decompress", path_str(&bs), "-o", path_str(&link), "-f"]),
        1,
    );
    assert!(e.contains("is a link to a pipe or device"), "{e}");
    assert!(fs::symlink_metadata(&link)
        .expect("still there")
        .file_type()
        .is_symlink());

    let cdir = dir.path().join("model.bs");
    ok(&run([
        "compress",
        path_str(&fixture("sharded")),
        "-o",
        path_str(&cdir),
    ]));
    let model = dir.path().join("model");
    copy_tree(&fixture("sharded"), &model);
    fs::remove_file(model.join("config.json")).expect("rm");
    mkfifo(&model.join("config.json"));
    let o = run(["verify", path_str(&cdir), "--source", path_str(&model)]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("is not a regular file"),
        "{}",
        stdout(&o)
    );
}

/// A model directory holding a tensor name in two weight files (a consolidated file beside
/// the shards) is refused by diff, which would otherwise compare one of the two.
#[test]
fn diff_refuses_a_name_in_two_weight_files() {
    let dir = tmp();
    let model = dir.path().join("model");
    copy_tree(&fixture("sharded"), &model);
    fs::copy(
        model.join("model-00001-of-00002.safetensors"),
        model.join("consolidated.safetensors"),
    )
    .expect("copy");
    for (a, b) in [
        (fixture("sharded"), model.clone()),
        (model.clone(), fixture("sharded")),
    ] {
        let e = fails(&run(["diff", path_str(&a), path_str(&b)]), 1);
        assert!(e.contains("appears in two weight files"), "{e}");
    }
}

/// A compressed directory's side files (config, tokenizer) carry md5 receipts in its index:
/// one replaced is damage for verify, decompress and transcode (exit 3, nothing written), and
/// `verify --source` compares them with the source's. An index from before the receipts
/// still reads.
#[test]
fn side_files_are_checked_against_their_receipts() {
    let dir = tmp();
    let model = fixture("sharded");
    let bs = dir.path().join("model.bs");
    let text = ok(&run(["compress", path_str(&model), "-o", path_str(&bs)]));
    // The report says what its figures cover.
    assert!(text.contains(" bytes in 2 weight files\n"), "{text}");
    assert!(text.contains("%) in 2 shards\n"), "{text}");
    assert!(
        text.contains("carried:    3 side files, copied as they are"),
        "{text}"
    );
    let index = bs.join("bigsmall.index.json");
    let v = json(&fs::read_to_string(&index).expect("index"));
    let recorded = v["side_file_md5"].as_object().expect("receipts").clone();
    assert_eq!(
        recorded.len(),
        v["side_files"].as_array().expect("list").len()
    );
    assert_eq!(
        recorded["config.json"],
        bigsmall::store::md5_hex(&fs::read(model.join("config.json")).expect("read"))
    );
    let v_ok = ok(&run([
        "verify",
        path_str(&bs),
        "--source",
        path_str(&model),
    ]));
    assert_eq!(v_ok.lines().last(), Some("OK"), "{v_ok}");

    // Replaced in the compressed directory.
    let config = bs.join("config.json");
    let pristine = fs::read(&config).expect("read");
    fs::write(&config, b"{\"x\": 1}").expect("write");
    let back = dir.path().join("back");
    let bsr = dir.path().join("t.bs");
    // Each damage is reported by verify and refused by decompress and transcode (exit 3).
    let found_everywhere = |report: &str, error: &dyn Fn(&str) -> bool| {
        let o = run(["verify", path_str(&bs)]);
        assert_eq!(code(&o), 3, "{}", stdout(&o));
        assert!(stdout(&o).contains(report), "{}", stdout(&o));
        for args in [
            vec!["decompress", path_str(&bs), "-o", path_str(&back)],
            vec!["transcode", path_str(&bs), path_str(&bsr)],
        ] {
            let e = fails(&run(&args), 3);
            assert!(error(&e), "{args:?}: {e}");
        }
        assert!(!back.exists() && !bsr.exists());
    };
    found_everywhere("config.json: side file is not the one compressed", &|e| {
        e.contains("config.json") && e.contains("md5")
    });
    // Replaced by a directory: damage for every command, as a missing one is.
    fs::remove_file(&config).expect("rm");
    fs::create_dir(&config).expect("mkdir");
    found_everywhere("where a file should be", &|e| {
        e.contains("is a directory where a file should be")
    });
    fs::remove_dir(&config).expect("rmdir");
    fs::write(&config, &pristine).expect("write");

    // Different in the source: verify --source says so.
    let src = dir.path().join("src");
    copy_tree(&model, &src);
    fs::write(src.join("config.json"), b"{}").expect("write");
    let o = run(["verify", path_str(&bs), "--source", path_str(&src)]);
    assert_eq!(code(&o), 3, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("differs from the source's"),
        "{}",
        stdout(&o)
    );

    // Reshard records receipts for what it writes, its new HF index included.
    let re = dir.path().join("re");
    ok(&run([
        "reshard",
        path_str(&bs),
        "--output-dir",
        path_str(&re),
        "--shards",
        "1",
    ]));
    let rv = json(&fs::read_to_string(re.join("bigsmall.index.json")).expect("index"));
    for f in rv["side_files"].as_array().expect("list") {
        let f = f.as_str().expect("name");
        assert_eq!(
            rv["side_file_md5"][f],
            bigsmall::store::md5_hex(&fs::read(re.join(f)).expect("read")),
            "{f}"
        );
    }
    assert_eq!(
        ok(&run(["verify", path_str(&re)])).lines().last(),
        Some("OK")
    );

    // A side file's permissions travel with it (a script stays executable, a private file
    // private).
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let private = dir.path().join("private");
        copy_tree(&model, &private);
        let run_sh = private.join("run.sh");
        fs::write(&run_sh, b"#!/bin/sh\n").expect("write");
        fs::set_permissions(&run_sh, fs::Permissions::from_mode(0o755)).expect("chmod");
        let token = private.join("token.txt");
        fs::write(&token, b"secret").expect("write");
        fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).expect("chmod");
        let (pbs, pback) = (
            dir.path().join("private.bs"),
            dir.path().join("private.back"),
        );
        ok(&run(["compress", path_str(&private), "-o", path_str(&pbs)]));
        ok(&run(["decompress", path_str(&pbs), "-o", path_str(&pback)]));
        for d in [&pbs, &pback] {
            assert_eq!(mode(&d.join("run.sh")), 0o755, "{}", d.display());
            assert_eq!(mode(&d.join("token.txt")), 0o600, "{}", d.display());
        }
    }

    // Files the index does not list are not carried, and decompress says which.
    fs::write(bs.join("NOTES.md"), b"mine").expect("write");
    // A hidden directory is one entry, not its every file.
    fs::create_dir_all(bs.join(".git/objects")).expect("mkdir");
    fs::write(bs.join(".git/objects/a"), b"x").expect("write");
    let notes_back = dir.path().join("notes-back");
    let text = ok(&run([
        "decompress",
        path_str(&bs),
        "-o",
        path_str(&notes_back),
    ]));
    assert!(
        text.contains("not carried (not in the directory index): .git/, NOTES.md\n"),
        "{text}"
    );
    assert!(!notes_back.join("NOTES.md").exists());
    let j = json(&ok(&run([
        "decompress",
        path_str(&bs),
        "-o",
        path_str(&notes_back),
        "-f",
        "--json",
    ])));
    assert_eq!(
        j["report"]["not_carried"],
        serde_json::json!([".git/", "NOTES.md"]),
        "{j}"
    );
    fs::remove_file(bs.join("NOTES.md")).expect("rm");
    fs::remove_dir_all(bs.join(".git")).expect("rm");

    // An index without receipts (an earlier bigsmall's) reads, and round-trips.
    let mut old = v.clone();
    old.as_object_mut().expect("object").remove("side_file_md5");
    fs::write(&index, old.to_string()).expect("write");
    ok(&run(["decompress", path_str(&bs), "-o", path_str(&back)]));
    assert_eq!(
        fs::read(back.join("config.json")).expect("read"),
        fs::read(model.join("config.json")).expect("read")
    );
    assert_no_leftovers(dir.path());
}

/// Inputs of the wrong kind are named for what they are: a device or pipe (bigsmall maps its
/// inputs), a container given where a safetensors file is expected; `-o -` (stdout) is
/// refused rather than written as a file named `-`; `apply` with its arguments swapped and
/// `--seed` without `--sample` are usage errors.
#[test]
fn wrong_kinds_of_input_and_output_are_named() {
    let (dir, src, bs) = compressed_smollm();
    for args in [
        vec!["compress", "/dev/null", "-o", "x.bs"],
        vec!["decompress", "/dev/null", "-o", "x.safetensors"],
    ] {
        let e = fails(&run(&args), 1);
        assert!(e.contains("not a regular file"), "{args:?}: {e}");
    }
    for args in [
        vec!["compress", path_str(&bs), "-o", "x.bs"],
        vec!["scan", path_str(&bs)],
    ] {
        let e = fails(&run(&args), 1);
        assert!(e.contains("is a bigsmall container"), "{args:?}: {e}");
    }
    // Standard output as the output is a usage error, from every command that writes one.
    for args in [
        vec!["compress", path_str(&src), "-o", "-"],
        vec!["decompress", path_str(&bs), "-o", "-"],
        vec!["apply", path_str(&src), path_str(&bs), "-o", "-"],
        vec!["diff", path_str(&src), path_str(&src), "--patch", "-"],
        vec!["repair", path_str(&bs), "-o", "-"],
        vec!["reshard", path_str(&bs), "-o", "-"],
        vec!["transcode", path_str(&bs), "-"],
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("standard output"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty(), "{args:?}");
    }
    assert!(!Path::new("-").exists());
    // An output that cannot be created is said so before any work, in words: an empty name
    // (usage), a file name ending in '/', a folder that does not exist, a file as folder.
    let o = run(["compress", path_str(&src), "-o", ""]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("empty output path"), "{}", stderr(&o));
    let missing = dir.path().join("nope").join("x.bs");
    let slash = format!("{}/", dir.path().join("newdir").display());
    let under_file = src.join("x.safetensors");
    for (args, want) in [
        (
            vec!["compress", path_str(&src), "-o", path_str(&missing)],
            "its folder",
        ),
        (
            vec!["compress", path_str(&src), "-o", &slash],
            "ends in '/'",
        ),
        (
            vec!["decompress", path_str(&bs), "-o", path_str(&under_file)],
            "is not a directory",
        ),
    ] {
        let e = fails(&run(&args), 1);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    // The input as its own base is a usage error: the patch would need the input to decode.
    let patch = dir.path().join("p.bs");
    let o = run([
        "compress",
        path_str(&src),
        "--delta-from",
        path_str(&src),
        "-o",
        path_str(&patch),
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("itself"), "{}", stderr(&o));
    assert!(!patch.exists());
    let base = dir.path().join("base.safetensors");
    fs::copy(&src, &base).expect("copy");
    ok(&run([
        "compress",
        path_str(&src),
        "--delta-from",
        path_str(&base),
        "-o",
        path_str(&patch),
    ]));
    let o = run(["apply", path_str(&patch), path_str(&base), "-o", "x"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("look swapped"), "{}", stderr(&o));
    // A patch argument that is missing is not a swap.
    let e = fails(
        &run(["apply", path_str(&patch), "no-such.bs", "-o", "x"]),
        1,
    );
    assert!(!e.contains("swapped"), "{e}");
    // A FIFO is refused before it is opened (opening one with no writer would block), by
    // every command that reads one, benchmark and repair included.
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    for args in [
        vec!["benchmark", path_str(&fifo)],
        vec!["repair", path_str(&fifo), "--check"],
        vec!["repair", path_str(&bs), "--ecc", path_str(&fifo), "--check"],
        vec!["info", path_str(&fifo)],
    ] {
        let e = fails(&run(&args), 1);
        assert!(e.contains("not a regular file"), "{args:?}: {e}");
    }
    fs::remove_file(&fifo).expect("rm");
    assert_eq!(code(&run(["verify", "--seed", "3", path_str(&bs)])), 2);
    assert_no_leftovers(dir.path());
}

/// An output's sidecar name (`OUT.ecc`) is part of the output: a file there is not ours to
/// replace without -f (with --ecc or without: a stale one would be taken for this file's),
/// and a directory there is refused even with -f, before any work, leaving an old output as
/// it was.
#[test]
fn an_existing_sidecar_name_is_refused_up_front() {
    let (dir, src, _bs) = compressed_smollm();
    let out = dir.path().join("out.bs");
    let side = dir.path().join("out.bs.ecc");
    fs::write(&side, b"precious").expect("write");
    for ecc in [false, true] {
        let mut args = vec!["compress", path_str(&src), "-o", path_str(&out)];
        if ecc {
            args.push("--ecc");
        }
        let e = fails(&run(&args), 1);
        assert!(e.contains("out.bs.ecc: already exists"), "{e}");
        assert!(!out.exists());
        assert_eq!(fs::read(&side).expect("kept"), b"precious");
    }
    fs::remove_file(&side).expect("rm");
    fs::create_dir(&side).expect("mkdir");
    fs::write(side.join("keep"), b"keep").expect("write");
    fs::write(&out, b"an old output").expect("write");
    fails(
        &run([
            "compress",
            path_str(&src),
            "-o",
            path_str(&out),
            "--ecc",
            "-f",
        ]),
        1,
    );
    assert_eq!(fs::read(&out).expect("kept"), b"an old output");
    assert_eq!(fs::read(side.join("keep")).expect("kept"), b"keep");
    assert_no_leftovers(dir.path());
}

/// An output inside a base directory would change the base (and break it: two copies of
/// each tensor): refused like one inside the model being compressed.
#[test]
fn output_inside_the_base_is_refused() {
    let dir = tmp();
    let base = dir.path().join("base");
    copy_tree(&fixture("sharded"), &base);
    let fine = dir.path().join("fine");
    copy_tree(&fixture("sharded"), &fine);
    let before = tree(&base);
    let patch = dir.path().join("p.bs");
    ok(&run([
        "compress",
        path_str(&fine),
        "--delta-from",
        path_str(&base),
        "-o",
        path_str(&patch),
    ]));
    let inside = base.join("out");
    for args in [
        vec![
            "decompress",
            path_str(&patch),
            "--base",
            path_str(&base),
            "-o",
            path_str(&inside),
            "-f",
        ],
        vec![
            "apply",
            path_str(&base),
            path_str(&patch),
            "-o",
            path_str(&inside),
            "-f",
        ],
        vec![
            "compress",
            path_str(&fine),
            "--delta-from",
            path_str(&base),
            "-o",
            path_str(&inside),
            "-f",
        ],
        vec![
            "diff",
            path_str(&base),
            path_str(&base),
            "--patch",
            path_str(&inside),
            "-f",
        ],
    ] {
        let e = fails(&run(&args), 1);
        assert!(e.contains("is inside the input"), "{args:?}: {e}");
    }
    assert_eq!(tree(&base), before, "the base is untouched");
}

/// Stat marks an empty tensor's ratio as none ("-", JSON null) and sorts it after the others,
/// and says when a name filter matches nothing.
#[test]
fn stat_of_empty_tensors_and_empty_filters() {
    let dir = tmp();
    let bs = dir.path().join("ints.bs");
    ok(&run([
        "compress",
        path_str(&fixture("ints.safetensors")),
        "-o",
        path_str(&bs),
    ]));
    let rows = json(&ok(&run([
        "stat",
        path_str(&bs),
        "--json",
        "--sort",
        "ratio",
    ])));
    let rows = rows.as_array().expect("rows");
    let empty: Vec<&Value> = rows.iter().filter(|r| r["raw_bytes"] == 0).collect();
    assert!(!empty.is_empty(), "the fixture has an empty tensor");
    assert!(empty.iter().all(|r| r["ratio_pct"].is_null()));
    let first_empty = rows.iter().position(|r| r["raw_bytes"] == 0).unwrap();
    assert!(rows[first_empty..].iter().all(|r| r["raw_bytes"] == 0));
    let text = ok(&run(["stat", path_str(&bs)]));
    let line = text
        .lines()
        .find(|l| l.contains(empty[0]["name"].as_str().unwrap()))
        .unwrap();
    assert!(line.trim_end().ends_with(" -"), "{line}");
    let text = ok(&run(["stat", path_str(&bs), "--tensor", "no-such"]));
    assert!(text.contains("no tensor name contains 'no-such'"), "{text}");
}

/// A compressed directory whose shard files were swapped, or whose index names one file
/// twice, is refused by decompress (nothing written) and fails verify: never a model with
/// shards under the wrong names, or one silently missing.
#[test]
fn swapped_or_doubled_shards_are_refused() {
    let dir = tmp();
    let bs = dir.path().join("model.bs");
    ok(&run([
        "compress",
        path_str(&fixture("sharded")),
        "-o",
        path_str(&bs),
    ]));
    let index = bs.join("bigsmall.index.json");
    let v = json(&fs::read_to_string(&index).expect("index"));
    let files: Vec<String> = v["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["file"].as_str().expect("file").to_string())
        .collect();
    assert_eq!(files.len(), 2);
    let back = dir.path().join("back");

    let swapped = dir.path().join("swapped.bs");
    fs::create_dir(&swapped).expect("mkdir");
    for e in fs::read_dir(&bs).expect("ls") {
        let p = e.expect("entry").path();
        fs::copy(&p, swapped.join(p.file_name().expect("name"))).expect("copy");
    }
    fs::copy(bs.join(&files[0]), swapped.join(&files[1])).expect("copy");
    fs::copy(bs.join(&files[1]), swapped.join(&files[0])).expect("copy");
    let e = fails(
        &run(["decompress", path_str(&swapped), "-o", path_str(&back)]),
        3,
    );
    assert!(e.contains("swapped"), "{e}");
    assert!(!back.exists());
    let o = run(["verify", path_str(&swapped)]);
    assert_eq!(code(&o), 3, "{}", stdout(&o));
    assert!(stdout(&o).contains("swapped"));
    // One line on stderr too, for a script that keeps only that.
    let e = one_line_error(&stderr(&o));
    assert!(e.contains("verification failed (1 problem found"), "{e}");

    // A side file gone from the directory: verify says which.
    let side = v["side_files"][0]
        .as_str()
        .expect("a side file")
        .to_string();
    fs::copy(swapped.join(&files[0]), swapped.join(&files[1])).expect("copy");
    fs::copy(bs.join(&files[0]), swapped.join(&files[0])).expect("copy");
    fs::copy(bs.join(&files[1]), swapped.join(&files[1])).expect("copy");
    fs::remove_file(swapped.join(&side)).expect("rm");
    let o = run(["verify", path_str(&swapped)]);
    assert_eq!(code(&o), 3, "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!("{side}: side file")),
        "{}",
        stdout(&o)
    );

    // A shard gone: damage found by verify (reported) and by decompress (exit 3).
    fs::copy(bs.join(&side), swapped.join(&side)).expect("copy");
    fs::remove_file(swapped.join(&files[1])).expect("rm");
    let o = run(["verify", path_str(&swapped)]);
    assert_eq!(code(&o), 3, "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!(
            "{}: shard listed in the directory index is missing",
            files[1]
        )),
        "{}",
        stdout(&o)
    );
    let e = fails(
        &run(["decompress", path_str(&swapped), "-o", path_str(&back)]),
        3,
    );
    assert!(e.contains("is missing"), "{e}");
    fails(&run(["info", path_str(&swapped)]), 3);
    let bsr = dir.path().join("t.bsr");
    for args in [
        vec!["repair", path_str(&swapped), "--check"],
        vec!["repair", path_str(&swapped), "-o", path_str(&back)],
        vec!["transcode", path_str(&swapped), path_str(&bsr)],
        vec!["reshard", path_str(&swapped), "-o", path_str(&back)],
        // As a base too.
        vec!["diff", path_str(&swapped), path_str(&fixture("sharded"))],
        vec![
            "compress",
            path_str(&fixture("sharded")),
            "--delta-from",
            path_str(&swapped),
            "-o",
            path_str(&back),
        ],
        vec![
            "apply",
            path_str(&swapped),
            path_str(&bs),
            "-o",
            path_str(&back),
        ],
    ] {
        let e = fails(&run(&args), 3);
        assert!(e.contains("is missing"), "{args:?}: {e}");
    }
    assert!(!back.exists() && !bsr.exists());

    // Swapped shards are damage for the report commands too, not a report of wrong sizes.
    fs::copy(bs.join(&files[0]), swapped.join(&files[1])).expect("copy");
    fs::copy(bs.join(&files[1]), swapped.join(&files[0])).expect("copy");
    for args in [
        vec!["info", path_str(&swapped)],
        vec!["stat", path_str(&swapped)],
    ] {
        let e = fails(&run(&args), 3);
        assert!(e.contains("swapped"), "{args:?}: {e}");
    }

    // An index that does not hold together is damage (exit 3) for every command: a shard
    // named twice, a shard dropped from the list (which the weight map still names: it
    // would pass for a smaller model), no shards at all, unreadable JSON. A newer index is
    // for an upgrade (exit 1).
    let mut doubled = v.clone();
    doubled["shards"][1]["source"] = doubled["shards"][0]["source"].clone();
    let mut dropped = v.clone();
    dropped["shards"].as_array_mut().expect("shards").remove(1);
    let mut none = v.clone();
    none["shards"] = serde_json::json!([]);
    let mut ghost = v.clone();
    ghost["weight_map"]["ghost.weight"] = ghost["shards"][0]["file"].clone();
    let mut newer = v.clone();
    newer["version"] = serde_json::json!(2);
    newer["shards"] = serde_json::json!("a shape this build does not know");
    let text = v.to_string();
    for (edited, want, says) in [
        (doubled.to_string(), 3, "twice"),
        (dropped.to_string(), 3, "not one of its shards"),
        (none.to_string(), 3, "lists no shards"),
        (ghost.to_string(), 3, "which does not hold it"),
        (
            text[..text.len() / 2].to_string(),
            3,
            "malformed directory index",
        ),
        (newer.to_string(), 1, "newer than this bigsmall reads"),
    ] {
        fs::write(&index, &edited).expect("write");
        for args in [
            vec!["decompress", path_str(&bs), "-o", path_str(&back)],
            vec!["info", path_str(&bs)],
        ] {
            let e = fails(&run(&args), want);
            assert!(e.contains(says), "{args:?} {says}: {e}");
        }
        // verify reports the damage as a finding (a report on stdout, in --json too).
        let o = run(["verify", path_str(&bs)]);
        assert_eq!(code(&o), want, "{says}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(says) || stdout(&o).contains(says),
            "{says}: {}",
            stderr(&o)
        );
        if want == 3 {
            assert!(stdout(&o).contains("MISMATCH"), "{says}: {}", stdout(&o));
            let v = json(&stdout(&run(["verify", path_str(&bs), "--json"])));
            assert_eq!(v["ok"], false, "{says}");
        }
        assert!(!back.exists());
    }
    assert_no_leftovers(dir.path());
}

/// Hidden entries of a model directory (`.git`, `.gitattributes`) are not carried, and the
/// report says which.
#[test]
fn hidden_entries_are_reported_as_skipped() {
    let dir = tmp();
    let model = dir.path().join("model");
    fs::create_dir(&model).expect("mkdir");
    for e in fs::read_dir(fixture("sharded")).expect("ls") {
        let p = e.expect("entry").path();
        fs::copy(&p, model.join(p.file_name().expect("name"))).expect("copy");
    }
    fs::write(model.join(".gitattributes"), "*.safetensors filter=lfs\n").expect("write");
    fs::create_dir(model.join(".cache")).expect("mkdir");
    let out = dir.path().join("model.bs");
    let text = ok(&run(["compress", path_str(&model), "-o", path_str(&out)]));
    assert!(
        text.contains("skipped:    2 hidden entries, not carried: .cache, .gitattributes"),
        "{text}"
    );
    let v = compress(&model, &dir.path().join("again.bs"), "--balanced");
    assert_eq!(
        v["skipped"],
        serde_json::json!([".cache", ".gitattributes"]),
        "{v}"
    );
    assert!(!out.join(".gitattributes").exists());
}

#[test]
fn stat_of_a_directory_names_each_rows_shard() {
    let dir = tmp();
    let out = dir.path().join("model");
    let sharded = fixture("sharded");
    ok(&run([
        "compress",
        path_str(&sharded),
        "-o",
        path_str(&out),
        "--no-progress",
    ]));
    let rows = json(&ok(&run(["stat", path_str(&out), "--json"])));
    let rows = rows.as_array().expect("rows");
    let shards: std::collections::BTreeSet<&str> = rows
        .iter()
        .map(|r| r["shard"].as_str().expect("a shard on every row"))
        .collect();
    assert_eq!(
        shards.into_iter().collect::<Vec<_>>(),
        ["model-00001-of-00002.bs", "model-00002-of-00002.bs"]
    );
    let text = ok(&run(["stat", path_str(&out), "--sort", "ratio"]));
    assert!(text.starts_with("shard"), "{text}");
    assert_eq!(text.lines().count(), rows.len() + 1);
    // One file: no shard column or field.
    let one = json(&ok(&run([
        "stat",
        path_str(&out.join("model-00001-of-00002.bs")),
        "--json",
    ])));
    assert!(one[0].get("shard").is_none());
}

/// A shard of a compressed directory whose index is damaged is one problem, reported by its
/// own check (not again by the directory's shard check).
#[test]
fn a_damaged_shard_is_reported_once() {
    let dir = tmp();
    let d = dir.path().join("d");
    ok(&run([
        "compress",
        path_str(&fixture("sharded")),
        "-o",
        path_str(&d),
    ]));
    let shard = d.join("model-00002-of-00002.bs");
    let n = fs::metadata(&shard).expect("shard").len();
    xor_byte(&shard, n - 100, 0x40);
    let o = run(["verify", path_str(&d), "--json"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let problems: usize = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["problems"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(problems, 1, "{v}");
}
