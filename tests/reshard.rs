//! `bigsmall reshard` end to end: split and join round trips (tensors byte-identical after
//! decompress, the joined container identical to the one that was split), layer groups kept
//! whole, duplicates and empty tensors, model directories with side files, and every refusal
//! (overlapping inputs, a missing shard, bad layouts, a non-empty output, damaged or patch
//! inputs) leaving nothing behind.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use bigsmall::format::reader::Container;
use bigsmall::model::role::layer_index;

use common::path_str as s;
use common::*;

fn compress(src: &Path, dst: &Path) {
    ok(&run(["compress", s(src), "-o", s(dst), "--no-progress"]));
}

fn decompress(src: &Path, dst: &Path) {
    ok(&run(["decompress", s(src), "-o", s(dst), "--no-progress"]));
}

/// `bigsmall reshard INPUTS --output-dir OUT EXTRA --json`, expected to succeed.
fn reshard(inputs: &[&Path], out: &Path, extra: &[&str]) -> Value {
    let mut args: Vec<&str> = vec!["reshard"];
    args.extend(inputs.iter().map(|p| s(p)));
    args.extend(["--output-dir", s(out), "--no-progress", "--json"]);
    args.extend_from_slice(extra);
    json(&ok(&run(args)))
}

/// The same invocation, expected to fail with a one-line error and exit `code`.
fn reshard_fails(inputs: &[&Path], out: &Path, extra: &[&str], code: i32) -> String {
    let mut args: Vec<&str> = vec!["reshard"];
    args.extend(inputs.iter().map(|p| s(p)));
    args.extend(["--output-dir", s(out), "--no-progress"]);
    args.extend_from_slice(extra);
    fails(&run(args), code)
}

/// Every tensor of a safetensors file or of every `.safetensors` in a directory, parsed by
/// the safetensors crate: name -> (dtype, shape, bytes).
fn tensors_of(p: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let files: Vec<PathBuf> = if p.is_dir() {
        let mut v: Vec<PathBuf> = fs::read_dir(p)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|f| f.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        v.sort();
        v
    } else {
        vec![p.to_path_buf()]
    };
    let mut out = BTreeMap::new();
    for f in files {
        let bytes = fs::read(&f).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: safetensors refuses it: {e:?}", f.display()));
        for (name, view) in st.tensors() {
            let prev = out.insert(
                name.clone(),
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            );
            assert!(prev.is_none(), "{name} appears twice");
        }
    }
    out
}

/// Every blob of a container, concatenated in tensor order (duplicates contribute nothing).
fn blob_bytes(bs: &Path) -> Vec<u8> {
    let c = Container::open(bs).expect("opens");
    let mut v = Vec::new();
    for t in &c.index.tensors {
        for ch in &t.chunks {
            v.extend_from_slice(c.blob(ch));
        }
    }
    v
}

/// The directory index of a reshard output.
fn dir_index(dir: &Path) -> Value {
    json(&fs::read_to_string(dir.join("bigsmall.index.json")).expect("directory index"))
}

/// Checks the layout rules on an output directory: every layer in exactly one shard, the
/// tensors without a layer in the first shard, every shard passes `verify`. Returns the shard
/// files in order.
fn check_layout(dir: &Path) -> Vec<String> {
    let idx = dir_index(dir);
    let files: Vec<String> = idx["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["file"].as_str().expect("file").to_string())
        .collect();
    let mut layer_files: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (name, file) in idx["weight_map"].as_object().expect("weight_map") {
        let file = file.as_str().expect("file").to_string();
        match layer_index(name) {
            Some(l) => {
                layer_files.entry(l).or_default().insert(file);
            }
            None => assert_eq!(file, files[0], "{name}: non-layer tensor outside shard 0"),
        }
    }
    for (l, f) in &layer_files {
        assert_eq!(f.len(), 1, "layer {l} split across {f:?}");
    }
    for f in &files {
        let v = ok(&run(["verify", s(&dir.join(f))]));
        assert_eq!(v.lines().last(), Some("OK"), "{f}: {v}");
    }
    files
}

/// A model with `layers` transformer layers of two BF16 tensors each, an embedding, a final
/// norm and a tied lm_head (stored as a duplicate of the embedding).
fn llm(layers: usize, rows: usize) -> Vec<u8> {
    let mut rng = Rng(7);
    let embed = bf16_weights(&mut rng, 64 * 32, 0.02);
    let mut v = vec![t(
        "model.embed_tokens.weight",
        "BF16",
        &[64, 32],
        embed.clone(),
    )];
    for l in 0..layers {
        v.push(t(
            &format!("model.layers.{l}.self_attn.q_proj.weight"),
            "BF16",
            &[rows, 32],
            bf16_weights(&mut rng, rows * 32, 0.03),
        ));
        v.push(t(
            &format!("model.layers.{l}.input_layernorm.weight"),
            "BF16",
            &[32],
            bf16_weights(&mut rng, 32, 1.0),
        ));
    }
    v.push(t(
        "model.norm.weight",
        "BF16",
        &[32],
        bf16_weights(&mut rng, 32, 1.0),
    ));
    v.push(t("lm_head.weight", "BF16", &[64, 32], embed));
    safetensors(&v, Some("{\"format\":\"pt\",\"origin\":\"test\"}"))
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn split_then_join_is_byte_identical() {
    let dir = tmp();
    let src = fixture("smollm-bf16.safetensors");
    let bs = dir.path().join("smol.bs");
    compress(&src, &bs);
    let before = sha256_file(&bs);

    let two = dir.path().join("two");
    let r = reshard(&[&bs], &two, &["--shards", "2"]);
    assert_eq!(r["shards"].as_array().map(Vec::len), Some(2));
    assert_eq!(r["verified_tensors"], 20);
    assert_eq!(r["md5_checked"], false);
    let files = check_layout(&two);
    assert_eq!(
        files,
        ["model-00001-of-00002.bs", "model-00002-of-00002.bs"]
    );
    assert!(two.join("model.safetensors.index.json").is_file());

    // Decompressed shards are valid safetensors files holding exactly the source's tensors.
    let two_out = dir.path().join("two.out");
    decompress(&two, &two_out);
    assert_eq!(tensors_of(&two_out), tensors_of(&src));
    let hf = json(&fs::read_to_string(two_out.join("model.safetensors.index.json")).expect("hf"));
    assert_eq!(hf["metadata"]["total_size"], 798_336);
    for (name, f) in hf["weight_map"].as_object().expect("weight_map") {
        let f = two_out.join(f.as_str().expect("file"));
        assert!(f.is_file(), "{name} -> {}", f.display());
    }

    // Joined back: the very container that was split, and the very source file.
    let one = dir.path().join("one");
    let r = reshard(&[&two], &one, &["--join", "--md5"]);
    assert_eq!(r["md5_checked"], true);
    assert_eq!(r["shards"][0]["file"], "model.bs");
    assert_eq!(r["shards"][0]["original_header"], true);
    let joined = one.join("model.bs");
    assert_eq!(blob_bytes(&joined), blob_bytes(&bs));
    assert_eq!(sha256_file(&joined), before);
    let one_out = dir.path().join("one.out");
    decompress(&one, &one_out);
    assert_eq!(
        sha256_file(&one_out.join("model.safetensors")),
        sha256_file(&src)
    );
    assert!(!one_out.join("model.safetensors.index.json").exists());
    assert_eq!(sha256_file(&bs), before, "the input was modified");

    // What the split directory records of its origins survives rewriting its index
    // (migrate), so joining it still gives back the very container.
    let origins = dir_index(&two)["origins"].clone();
    assert!(origins.is_array(), "the split records its origins");
    ok(&run([
        "migrate",
        path_str(&two),
        "--reencode",
        "--no-backup",
        "--no-progress",
    ]));
    assert_eq!(dir_index(&two)["origins"], origins);
    let again = dir.path().join("again");
    reshard(&[&two], &again, &["--join"]);
    assert_eq!(sha256_file(&again.join("model.bs")), before);
    assert_no_leftovers(dir.path());
}

#[test]
fn shard_files_given_one_by_one_join_too() {
    let dir = tmp();
    let bs = dir.path().join("smol.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let two = dir.path().join("two");
    reshard(&[&bs], &two, &["--shards", "2"]);
    // Without the directory index the origin is unknown: a new header, the same tensors.
    let one = dir.path().join("one");
    let a = two.join("model-00001-of-00002.bs");
    let b = two.join("model-00002-of-00002.bs");
    let r = reshard(&[&a, &b], &one, &["--join"]);
    assert_eq!(r["shards"][0]["original_header"], false);
    check_layout(&one);
    let out = dir.path().join("one.out");
    decompress(&one, &out);
    assert_eq!(
        tensors_of(&out.join("model.safetensors")),
        tensors_of(&fixture("smollm-bf16.safetensors"))
    );
}

#[test]
fn size_target_makes_several_shards_without_splitting_layers() {
    let dir = tmp();
    let src = dir.path().join("llm.safetensors");
    fs::write(&src, llm(7, 96)).expect("write");
    let bs = dir.path().join("llm.bs");
    compress(&src, &bs);
    let c = Container::open(&bs).expect("opens");
    let layer_bytes = c.index.tensors[1].stored_len() + c.index.tensors[2].stored_len();
    drop(c);
    // Room for about two layers per shard.
    let gb = format!("{}", (2 * layer_bytes + layer_bytes / 2) as f64 / 1e9);
    let out = dir.path().join("sized");
    let r = reshard(&[&bs], &out, &["--size-gb", &gb]);
    let files = check_layout(&out);
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(r["shards"][0]["non_layer_tensors"], 3);
    let back = dir.path().join("sized.out");
    decompress(&out, &back);
    assert_eq!(tensors_of(&back), tensors_of(&src));

    // Exactly N shards, and more shards than layer groups is refused.
    let four = dir.path().join("four");
    let r = reshard(&[&bs], &four, &["--shards", "4"]);
    assert_eq!(check_layout(&four).len(), 4);
    assert_eq!(r["tensors"], 17);
    let err = reshard_fails(&[&bs], &dir.path().join("nine"), &["--shards", "9"], 1);
    assert!(err.contains("only 8 layer groups"), "{err}");
    assert!(!dir.path().join("nine").exists());
    let one_layer = dir.path().join("e5m2.bs");
    compress(&fixture("smollm-e5m2.safetensors"), &one_layer);
    let err = reshard_fails(
        &[&one_layer],
        &dir.path().join("nine"),
        &["--shards", "9"],
        1,
    );
    assert!(err.contains("only 1 layer group (1 layer)"), "{err}");

    // The default target (2 GB) keeps a small model in one file named like a single shard.
    let single = dir.path().join("single");
    let r = reshard(&[&bs], &single, &[]);
    assert_eq!(r["shards"][0]["file"], "model.bs");
    // One shard's source is named, not counted ("1 safetensors shards").
    let info = json(&ok(&run(["info", s(&single), "--json"])));
    assert_eq!(info["source_file"], "llm.safetensors", "{info}");
    assert!(!single.join("model.safetensors.index.json").exists());
    // One shard of exactly one input's tensors: its container comes back unchanged.
    assert_eq!(sha256_file(&single.join("model.bs")), sha256_file(&bs));
}

#[test]
fn duplicates_empty_tensors_and_metadata_survive() {
    let dir = tmp();
    let src = dir.path().join("zoo.safetensors");
    fs::write(&src, zoo()).expect("write");
    let bs = dir.path().join("zoo.bs");
    compress(&src, &bs);
    let two = dir.path().join("two");
    reshard(&[&bs], &two, &["--shards", "2", "--md5"]);
    check_layout(&two);
    // lm_head is a duplicate of the embedding and stays one in shard 0.
    let c = Container::open(&two.join("model-00001-of-00002.bs")).expect("opens");
    let lm = c.find("lm_head.weight").expect("lm_head in shard 0");
    assert!(c.index.tensors[lm].dup_of.is_some());
    // The synthesized header carries the source's metadata.
    assert!(c
        .index
        .source
        .header
        .starts_with("{\"__metadata__\":{\"format\":\"pt\"},"));
    drop(c);
    let out = dir.path().join("two.out");
    decompress(&two, &out);
    assert_eq!(tensors_of(&out), tensors_of(&src));

    let one = dir.path().join("one");
    reshard(&[&two], &one, &["--join"]);
    assert_eq!(sha256_file(&one.join("model.bs")), sha256_file(&bs));
}

#[test]
fn a_model_without_tensors_still_reshards() {
    let dir = tmp();
    let src = dir.path().join("empty.safetensors");
    fs::write(&src, safetensors(&[], Some("{\"format\":\"pt\"}"))).expect("write");
    let bs = dir.path().join("empty.bs");
    compress(&src, &bs);
    let out = dir.path().join("out");
    let r = reshard(&[&bs], &out, &[]);
    assert_eq!(r["tensors"], 0);
    let back = dir.path().join("back");
    decompress(&out, &back);
    assert_eq!(
        sha256_file(&back.join("model.safetensors")),
        sha256_file(&src)
    );
    let err = reshard_fails(&[&bs], &dir.path().join("two"), &["--shards", "2"], 1);
    assert!(err.contains("no tensors"), "{err}");
}

#[test]
fn a_duplicate_whose_original_lands_elsewhere_is_copied_and_relinked_on_join() {
    let dir = tmp();
    let mut rng = Rng(3);
    let w = bf16_weights(&mut rng, 96 * 32, 0.02);
    let other = bf16_weights(&mut rng, 96 * 32, 0.02);
    let src = dir.path().join("tied.safetensors");
    fs::write(
        &src,
        safetensors(
            &[
                t("model.layers.0.mlp.weight", "BF16", &[96, 32], w.clone()),
                t("model.layers.1.mlp.weight", "BF16", &[96, 32], w.clone()),
                t("model.layers.1.other.weight", "BF16", &[96, 32], other),
                // Its original is in layer 0, but it sorts before every layer.
                t("lm_head.weight", "BF16", &[96, 32], w),
            ],
            None,
        ),
    )
    .expect("write");
    let bs = dir.path().join("tied.bs");
    compress(&src, &bs);
    let c = Container::open(&bs).expect("opens");
    assert_eq!(c.index.tensors[1].dup_of, Some(0));
    assert_eq!(c.index.tensors[3].dup_of, Some(0));
    drop(c);

    let two = dir.path().join("two");
    reshard(&[&bs], &two, &["--shards", "2", "--md5"]);
    check_layout(&two);
    let a = Container::open(&two.join("model-00001-of-00002.bs")).expect("opens");
    let b = Container::open(&two.join("model-00002-of-00002.bs")).expect("opens");
    // Shard 0: lm_head first holds the bytes; layer 0's tensor refers back to it.
    let names: Vec<&str> = a.index.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["lm_head.weight", "model.layers.0.mlp.weight"]);
    assert_eq!(a.index.tensors[0].dup_of, None);
    assert_eq!(a.index.tensors[1].dup_of, Some(0));
    // Shard 1: the original is elsewhere, so the bytes are copied in.
    let l1 = b.find("model.layers.1.mlp.weight").expect("layer 1");
    assert_eq!(b.index.tensors[l1].dup_of, None);
    assert!(!b.index.tensors[l1].chunks.is_empty());
    drop((a, b));
    let out = dir.path().join("two.out");
    decompress(&two, &out);
    assert_eq!(tensors_of(&out), tensors_of(&src));

    // Joined, the copies become duplicates again: the original container, byte for byte.
    let one = dir.path().join("one");
    reshard(&[&two], &one, &["--join"]);
    assert_eq!(sha256_file(&one.join("model.bs")), sha256_file(&bs));
}

#[test]
fn model_directory_with_side_files() {
    let dir = tmp();
    let src = fixture("sharded");
    let bs = dir.path().join("sharded.bs");
    compress(&src, &bs);

    let one = dir.path().join("one");
    let r = reshard(&[&bs], &one, &["--join"]);
    assert_eq!(
        r["side_files"],
        serde_json::json!(["config.json", "tokenizer_config.json"])
    );
    for side in ["config.json", "tokenizer_config.json"] {
        assert_eq!(sha256_file(&one.join(side)), sha256_file(&src.join(side)));
    }
    // The old HF shard index would name files that no longer exist.
    assert!(!one.join("model.safetensors.index.json").exists());
    let out = dir.path().join("one.out");
    decompress(&one, &out);
    assert_eq!(tensors_of(&out.join("model.safetensors")), tensors_of(&src));
    assert_eq!(
        sha256_file(&out.join("config.json")),
        sha256_file(&src.join("config.json"))
    );

    let three = dir.path().join("three");
    reshard(&[&bs], &three, &["--shards", "3"]);
    check_layout(&three);
    let out = dir.path().join("three.out");
    decompress(&three, &out);
    assert_eq!(tensors_of(&out), tensors_of(&src));
    let hf = json(&fs::read_to_string(out.join("model.safetensors.index.json")).expect("hf"));
    let files: BTreeSet<&str> = hf["weight_map"]
        .as_object()
        .expect("map")
        .values()
        .map(|v| v.as_str().expect("file"))
        .collect();
    assert_eq!(files.len(), 3);

    // Joined again from the new layout.
    let back = dir.path().join("back");
    reshard(&[&three], &back, &["--join"]);
    let out = dir.path().join("back.out");
    decompress(&back, &out);
    assert_eq!(tensors_of(&out), tensors_of(&src));
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[test]
fn overlapping_tensor_names_are_refused() {
    let dir = tmp();
    let bs = dir.path().join("smol.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let out = dir.path().join("out");
    let err = reshard_fails(&[&bs, &bs], &out, &[], 1);
    assert!(err.contains("'model.embed_tokens.weight'"), "{err}");
    assert!(err.contains("given twice"), "{err}");

    let e5 = dir.path().join("e5m2.bs");
    compress(&fixture("smollm-e5m2.safetensors"), &e5);
    let err = reshard_fails(&[&bs, &e5], &out, &["--join"], 1);
    assert!(
        err.contains("'model.layers.0.input_layernorm.weight'"),
        "{err}"
    );
    assert!(err.contains("smol.bs") && err.contains("e5m2.bs"), "{err}");
    assert!(!out.exists());
    assert_no_leftovers(dir.path());
}

#[test]
fn side_files_of_one_name_must_be_the_same_file() {
    let dir = tmp();
    let mut rng = Rng(5);
    let mut model = |name: &str, tensor: &str, config: &str| -> PathBuf {
        let d = dir.path().join(name);
        fs::create_dir(&d).expect("mkdir");
        let w = bf16_weights(&mut rng, 64 * 32, 0.02);
        fs::write(
            d.join("model.safetensors"),
            safetensors(&[t(tensor, "BF16", &[64, 32], w)], None),
        )
        .expect("write");
        fs::write(d.join("config.json"), config).expect("write");
        fs::write(d.join("tokenizer.json"), "{}").expect("write");
        let bs = dir.path().join(format!("{name}.bs"));
        compress(&d, &bs);
        bs
    };
    let a = model("a", "a.weight", r#"{"model_type":"bert"}"#);
    let b = model("b", "b.weight", r#"{"model_type":"llama"}"#);
    let c = model("c", "c.weight", r#"{"model_type":"bert"}"#);
    let out = dir.path().join("out");
    let err = reshard_fails(&[&a, &b], &out, &["--join"], 1);
    assert!(err.contains("b.bs/config.json"), "{err}");
    assert!(err.contains("a.bs/config.json"), "{err}");
    assert!(!out.exists());
    assert_no_leftovers(dir.path());
    // The same bytes under the same name are one side file.
    let r = reshard(&[&a, &c], &out, &["--join"]);
    assert_eq!(
        r["side_files"],
        serde_json::json!(["config.json", "tokenizer.json"])
    );
    assert_eq!(
        fs::read(out.join("config.json")).expect("read"),
        br#"{"model_type":"bert"}"#
    );
}

#[test]
fn a_shard_missing_from_a_directory_is_named() {
    let dir = tmp();
    let bs = dir.path().join("sharded.bs");
    compress(&fixture("sharded"), &bs);
    fs::remove_file(bs.join("model-00002-of-00002.bs")).expect("rm");
    let out = dir.path().join("out");
    // Damage found: exit 3, as from every command.
    let err = reshard_fails(&[&bs], &out, &[], 3);
    assert!(err.contains("model-00002-of-00002.bs"), "{err}");
    assert!(err.contains("missing"), "{err}");
    assert!(!out.exists());

    let plain = dir.path().join("plain");
    fs::create_dir(&plain).expect("mkdir");
    let err = reshard_fails(&[&plain], &out, &[], 1);
    assert!(err.contains("bigsmall.index.json"), "{err}");
}

#[test]
fn a_shard_replaced_or_duplicated_in_a_directory_is_damage() {
    let dir = tmp();
    let bs = dir.path().join("m.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let split = dir.path().join("split");
    reshard(&[&bs], &split, &["--shards", "3"]);
    let other = dir.path().join("other.bs");
    compress(&fixture("minilm-bf16.safetensors"), &other);
    let (two, three) = (
        split.join("model-00002-of-00003.bs"),
        split.join("model-00003-of-00003.bs"),
    );
    let out = dir.path().join("out");
    // A foreign shard, then shard 2 (as many tensors, as many bytes) copied over shard 3:
    // both would reshard into a fresh, self-consistent index of the wrong model.
    for replacement in [&other, &two] {
        fs::copy(replacement, &three).expect("cp");
        let err = reshard_fails(&[&split], &out, &["--join"], 3);
        assert!(err.contains("model-00003-of-00003.bs"), "{err}");
        assert!(err.contains("shard files swapped or replaced"), "{err}");
        assert!(!out.exists());
        assert_no_leftovers(dir.path());
    }
}

#[test]
fn bad_layouts_are_usage_errors() {
    let dir = tmp();
    let bs = dir.path().join("smol.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let out = dir.path().join("out");
    for bad in [
        &["--shards", "0"][..],
        &["--shards", "-1"],
        &["--size-gb", "0"],
        &["--size-gb", "-2"],
        &["--size-gb", "nan"],
        &["--size-gb", "inf"],
    ] {
        let mut args = vec!["reshard", s(&bs), "--output-dir", s(&out)];
        args.extend_from_slice(bad);
        usage_error(&run(args));
    }
    usage_error(&run(["reshard", s(&bs)]));
    usage_error(&run(["reshard", "--output-dir", s(&out)]));
    assert!(!out.exists());
    let h = ok(&run(["reshard", "--help"]));
    assert!(h.contains("Examples"), "{h}");
}

#[test]
fn a_non_empty_output_needs_force() {
    let dir = tmp();
    let bs = dir.path().join("smol.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let out = dir.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    fs::write(out.join("keep.txt"), "precious").expect("write");
    let before = tree(&out);
    let err = reshard_fails(&[&bs], &out, &["--shards", "2"], 1);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(tree(&out), before, "the output was touched");
    assert_no_leftovers(dir.path());

    // -f does not delete what the run would not write either.
    let err = reshard_fails(&[&bs], &out, &["--shards", "2", "-f"], 1);
    assert!(err.contains("'keep.txt'"), "{err}");
    assert_eq!(tree(&out), before, "the output was touched");
    assert_no_leftovers(dir.path());
    fs::remove_file(out.join("keep.txt")).expect("rm");
    reshard(&[&bs], &out, &["--shards", "2", "-f"]);
    check_layout(&out);
    // A compressed directory's own files may go: 3 shards replace 2 of other names.
    reshard(&[&bs], &out, &["--shards", "3", "-f"]);
    check_layout(&out);
    assert_eq!(check_layout(&out).len(), 3);
    let names: Vec<String> = fs::read_dir(&out)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("-of-00002")), "{names:?}");
    assert_no_leftovers(dir.path());

    // An existing empty directory is fine without -f.
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    reshard(&[&bs], &empty, &["--join"]);
    assert!(empty.join("model.bs").is_file());

    // Writing over the directory being read is refused even with -f.
    let err = reshard_fails(&[&out], &out, &["--join", "-f"], 1);
    assert!(err.contains("is the input"), "{err}");
    check_layout(&out);
}

#[test]
fn a_damaged_input_fails_and_leaves_nothing() {
    let dir = tmp();
    let bs = dir.path().join("smol.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let c = Container::open(&bs).expect("opens");
    let t = c.find("model.layers.1.mlp.up_proj.weight").expect("tensor");
    let ch = c.index.tensors[t].chunks[0];
    drop(c);
    xor_byte(&bs, ch.offset + ch.len / 2, 0x40);
    let out = dir.path().join("out");
    let o = run([
        "reshard",
        s(&bs),
        "--output-dir",
        s(&out),
        "--shards",
        "2",
        "--no-progress",
    ]);
    let err = fails(&o, 3);
    assert!(err.contains("smol.bs"), "the input is named: {err}");
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
    assert!(!out.exists());
    assert_no_leftovers(dir.path());

    // Structural damage is caught before anything is written.
    let bytes = fs::read(&bs).expect("read");
    fs::write(&bs, &bytes[..bytes.len() - 3]).expect("truncate");
    let err = reshard_fails(&[&bs], &out, &[], 3);
    assert!(err.contains("smol.bs"), "{err}");
    assert!(!out.exists());
    assert_no_leftovers(dir.path());
}

/// Errors name what the user gave: a receipt that fails while the copy is read back is damage
/// in the input, and a full disk is met writing the output asked for, not its temporary name.
#[test]
fn errors_name_the_input_and_the_output_not_temporary_names() {
    let dir = tmp();
    let bs = dir.path().join("smol.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let bad = dir.path().join("bad.bs");
    let bytes = fs::read(&bs).expect("read");
    fs::write(
        &bad,
        edit_index(&bytes, |v| {
            v["tensors"][3]["md5"] = Value::from("0".repeat(32))
        }),
    )
    .expect("write");
    let out = dir.path().join("out");
    let err = reshard_fails(&[&bad], &out, &["--join", "--md5"], 3);
    assert!(err.contains("bad.bs: tensor '"), "{err}");
    assert!(!err.contains("bigsmall-tmp"), "{err}");
    assert_no_leftovers(dir.path());

    let split = dir.path().join("split");
    reshard(&[&bs], &split, &["--shards", "2"]);
    for (args, named) in [
        (
            r#"reshard "$1" -o "$2" --shards 2"#,
            "model-00001-of-00002.bs",
        ),
        (r#"transcode "$3" "$2""#, "model-00001-of-00002.bsr"),
        (
            r#"decompress "$3" -o "$2""#,
            "model-00001-of-00002.safetensors",
        ),
    ] {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -f 100; exec \"$0\" {args} --no-progress"))
            .arg(env!("CARGO_BIN_EXE_bigsmall"))
            .arg(&bs)
            .arg(&out)
            .arg(&split)
            .output()
            .expect("sh runs");
        let err = fails(&o, 1);
        let want = format!("{}: File too large", out.join(named).display());
        assert!(err.contains(&want), "{args}: {err}");
        assert!(!out.exists());
        assert_no_leftovers(dir.path());
    }
}

#[test]
fn a_patch_is_refused() {
    let dir = tmp();
    let mut rng = Rng(11);
    let w = bf16_weights(&mut rng, 64 * 64, 0.02);
    let mut w2 = w.clone();
    w2[10] ^= 1;
    let base = dir.path().join("base.safetensors");
    let fine = dir.path().join("fine.safetensors");
    fs::write(
        &base,
        safetensors(&[t("model.layers.0.w", "BF16", &[64, 64], w)], None),
    )
    .expect("write");
    fs::write(
        &fine,
        safetensors(&[t("model.layers.0.w", "BF16", &[64, 64], w2)], None),
    )
    .expect("write");
    let patch = dir.path().join("patch.bs");
    ok(&run([
        "compress",
        s(&fine),
        "-o",
        s(&patch),
        "--delta-from",
        s(&base),
        "--force-delta",
        "--no-progress",
    ]));
    let out = dir.path().join("out");
    let err = reshard_fails(&[&patch], &out, &["--join"], 1);
    assert!(err.contains("patch") && err.contains("apply"), "{err}");
    assert!(!out.exists());
}

#[test]
fn text_report_names_shards_and_checks() {
    let dir = tmp();
    let bs = dir.path().join("smol.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let out = dir.path().join("out");
    let text = ok(&run([
        "reshard",
        s(&bs),
        "--output-dir",
        s(&out),
        "--shards",
        "2",
        "--md5",
        "--no-progress",
    ]));
    assert!(text.contains("model-00001-of-00002.bs"), "{text}");
    assert!(text.contains("2 non-layer tensors + layer 0)"), "{text}");
    assert!(text.contains("MB/s"), "{text}");
    assert!(
        text.contains("verified: 20 tensors (chunk checksums, md5)"),
        "{text}"
    );
    // `info` reads the outputs.
    ok(&run(["info", s(&out)]));
}

/// `verify --source` maps each shard to the file it was made from; a split has none, and
/// says so instead of naming a file that never existed as if it were missing.
#[test]
fn verify_against_a_source_explains_a_split() {
    let dir = tmp();
    let bs = dir.path().join("smol.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let two = dir.path().join("two");
    reshard(&[&bs], &two, &["--shards", "2"]);
    let model = dir.path().join("model");
    fs::create_dir(&model).unwrap();
    fs::copy(
        fixture("smollm-bf16.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    let e = fails(&run(["verify", s(&two), "--source", s(&model)]), 1);
    assert!(e.contains("shards made by reshard have none"), "{e}");
}
