//! `transcode` end to end: every mode round-trips every fixture bit-exactly, speed mode lays out
//! what it promises (raw hot tensors aligned for in-place use, big tensors in many
//! nibble-palette streams), balanced and ratio never grow a file, and bad input is refused
//! without leaving anything behind.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

fn compress(src: &Path, dst: &Path) {
    ok(&run([
        "compress".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        dst.as_os_str(),
        "--no-progress".as_ref(),
    ]));
}

fn transcode(src: &Path, dst: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args: Vec<std::ffi::OsString> = vec![
        "transcode".into(),
        src.into(),
        dst.into(),
        "--no-progress".into(),
        "--no-measure".into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.into()));
    serde_json::from_str(&ok(&run(&args))).expect("json report")
}

fn decompress(src: &Path, dst: &Path) {
    ok(&run([
        "decompress".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        dst.as_os_str(),
        "--no-progress".as_ref(),
    ]));
}

/// Chunk entries of the tensor called `name`: (offset, len, raw_len, codec).
fn chunks_of(bs: &Path, name: &str) -> Vec<(u64, u64, u64, u64)> {
    let idx = index_value(&fs::read(bs).unwrap());
    let t = idx["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    t["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["o"].as_u64().unwrap(),
                c["l"].as_u64().unwrap(),
                c["n"].as_u64().unwrap(),
                c["c"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A small "model" shaped like a 4-bit group-quantized checkpoint dequantized to BF16: a big
/// MLP weight (every 32-value block has at most 16 levels), a norm and a small bias.
fn quantized_model(dir: &Path) -> PathBuf {
    let mut rng = Rng(0x4b1d);
    let n = 1 << 20; // 2 MiB of BF16
    let mut words = Vec::with_capacity(2 * n);
    for _ in 0..n / 32 {
        let scale = 0.001 + 0.004 * rng.unit();
        let min = -8.0 * scale;
        for _ in 0..32 {
            let level = (rng.next_u64() >> 60) as f32;
            words.extend_from_slice(&half::bf16::from_f32(min + level * scale).to_le_bytes());
        }
    }
    let norm: Vec<u8> = (0..576)
        .flat_map(|i| half::bf16::from_f32(1.0 + i as f32 * 1e-3).to_le_bytes())
        .collect();
    let bias = bf16_weights(&mut rng, 64, 0.1);
    let bytes = safetensors(
        &[
            t(
                "model.layers.0.mlp.up_proj.weight",
                "BF16",
                &[1024, 1024],
                words,
            ),
            t(
                "model.layers.0.post_attention_layernorm.weight",
                "BF16",
                &[576],
                norm,
            ),
            t("model.layers.0.mlp.up_proj.bias", "BF16", &[64], bias),
        ],
        None,
    );
    let p = dir.join("quant.safetensors");
    fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn every_mode_round_trips_every_fixture() {
    let d = tmp();
    for src in fixture_files() {
        let name = file_name(&src);
        let bs = d.path().join(format!("{name}.bs"));
        compress(&src, &bs);
        let bs_len = fs::metadata(&bs).unwrap().len();
        for mode in ["speed", "balanced", "ratio"] {
            let out = d.path().join(format!("{name}.{mode}.bsr"));
            let r = transcode(&bs, &out, &["--mode", mode]);
            assert_eq!(r["mode"], mode);
            assert_eq!(
                r["after_bytes"].as_u64().unwrap(),
                fs::metadata(&out).unwrap().len()
            );
            if mode != "speed" {
                assert!(
                    fs::metadata(&out).unwrap().len() <= bs_len,
                    "{name}: {mode} grew the file"
                );
            }
            let back = d.path().join(format!("{name}.{mode}.safetensors"));
            decompress(&out, &back);
            assert_eq!(sha256_file(&back), sha256_file(&src), "{name} {mode}");
            ok(&run(["verify".as_ref(), out.as_os_str()]));
            if mode == "speed" {
                assert!(ok(&run(["info".as_ref(), out.as_os_str()])).contains("speed"));
            }
        }
    }
    assert_no_leftovers(d.path());
}

#[test]
fn speed_mode_lays_out_hot_tensors_raw_and_big_ones_in_streams() {
    let d = tmp();
    let src = quantized_model(d.path());
    let bs = d.path().join("q.bs");
    compress(&src, &bs);
    let bsr = d.path().join("q.bsr");
    let r = transcode(&bs, &bsr, &[]);
    assert_eq!(r["raw_tensors"], 2, "{r}");

    let big = chunks_of(&bsr, "model.layers.0.mlp.up_proj.weight");
    // 2 MiB in 16 streams of 128 KiB, each a nibble palette (tag 9).
    assert_eq!(big.len(), 16, "{big:?}");
    assert!(big.iter().all(|c| c.2 == 128 << 10 && c.3 == 9), "{big:?}");
    let coded: u64 = big.iter().map(|c| c.1).sum();
    assert!(
        coded < (2 << 20) * 60 / 100,
        "nibble palettes: {coded} bytes"
    );

    // Hot tensors: one raw chunk whose payload (after the tag byte) is 64-byte aligned, so it
    // is the tensor itself, usable in place from a mapping.
    let file = fs::read(&bsr).unwrap();
    let raw_src = fs::read(&src).unwrap();
    for name in [
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.mlp.up_proj.bias",
    ] {
        let c = chunks_of(&bsr, name);
        assert_eq!(c.len(), 1);
        let (o, l, n, codec) = c[0];
        assert_eq!(codec, 0, "{name} raw");
        assert_eq!((o + 1) % 64, 0, "{name} payload aligned");
        assert_eq!(l, n + 1);
        let payload = &file[(o + 1) as usize..(o + l) as usize];
        assert!(
            raw_src.windows(payload.len()).any(|w| w == payload),
            "{name} payload is the tensor"
        );
    }

    // More streams on request.
    let more = d.path().join("q64.bsr");
    transcode(&bs, &more, &["--n-streams", "32"]);
    assert_eq!(
        chunks_of(&more, "model.layers.0.mlp.up_proj.weight").len(),
        32
    );

    // Bit-exact, with and without the AVX-512 kernels.
    for simd in [true, false] {
        let back = d.path().join(format!("back-{simd}.safetensors"));
        let mut cmd = bigsmall();
        if !simd {
            cmd.env("BIGSMALL_NO_SIMD", "1");
        }
        ok(&cmd
            .args([
                "decompress".as_ref(),
                bsr.as_os_str(),
                "-o".as_ref(),
                back.as_os_str(),
            ])
            .arg("--no-progress")
            .output()
            .unwrap());
        assert_eq!(sha256_file(&back), sha256_file(&src));
    }

    // Back to ratio: the size of the original .bs at most.
    let again = d.path().join("again.bs");
    transcode(&bsr, &again, &["--mode", "ratio"]);
    let back = d.path().join("again.safetensors");
    decompress(&again, &back);
    assert_eq!(sha256_file(&back), sha256_file(&src));
}

#[test]
fn a_compressed_directory_is_transcoded_shard_by_shard() {
    let d = tmp();
    let src = fixture("sharded");
    let bs = d.path().join("sharded.bs");
    ok(&run([
        "compress".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        bs.as_os_str(),
        "--no-progress".as_ref(),
    ]));
    let bsr = d.path().join("sharded.bsr");
    let r = transcode(&bs, &bsr, &[]);
    assert_eq!(r["tensors"], 20, "{r}");
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(bsr.join("bigsmall.index.json")).unwrap()).unwrap();
    for sh in idx["shards"].as_array().unwrap() {
        let f = sh["file"].as_str().unwrap();
        assert!(f.ends_with(".bsr"), "{f}");
        assert_eq!(
            sh["size"].as_u64(),
            Some(fs::metadata(bsr.join(f)).unwrap().len())
        );
    }
    assert!(idx["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v.as_str().unwrap().ends_with(".bsr")));
    // Side files carried; decompress gives the original directory back.
    let back = d.path().join("back");
    decompress(&bsr, &back);
    for entry in fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(
            sha256_file(&back.join(p.file_name().unwrap())),
            sha256_file(&p),
            "{}",
            p.display()
        );
    }
    ok(&run(["verify".as_ref(), bsr.as_os_str()]));
    // And back to ratio, as a directory again.
    let small = d.path().join("small.bs");
    transcode(&bsr, &small, &["--mode", "ratio"]);
    let back2 = d.path().join("back2");
    decompress(&small, &back2);
    assert_eq!(
        sha256_file(&back2.join("model-00001-of-00002.safetensors")),
        sha256_file(&src.join("model-00001-of-00002.safetensors"))
    );
    // An output that holds the input, or lies inside it, is refused even with -f, and the
    // input survives.
    let models = d.path().join("models");
    fs::create_dir(&models).unwrap();
    let inner = models.join("m.bs");
    fs::rename(&bs, &inner).unwrap();
    fs::write(models.join("precious.txt"), b"keep").unwrap();
    for out in [models.clone(), d.path().to_path_buf(), inner.join("sub")] {
        let e = fails(
            &run([
                "transcode".as_ref(),
                inner.as_os_str(),
                out.as_os_str(),
                "-f".as_ref(),
            ]),
            1,
        );
        assert!(e.contains("input"), "{e}");
    }
    assert_eq!(fs::read(models.join("precious.txt")).unwrap(), b"keep");
    ok(&run(["verify".as_ref(), inner.as_os_str()]));
    // compress and decompress of directories refuse the same (on a copy: a regression here
    // must not be able to delete the fixtures).
    let copy = models.join("sharded");
    fs::create_dir(&copy).unwrap();
    for entry in fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        fs::copy(&p, copy.join(p.file_name().unwrap())).unwrap();
    }
    let e = fails(
        &run([
            "compress".as_ref(),
            copy.as_os_str(),
            "-o".as_ref(),
            models.as_os_str(),
            "-f".as_ref(),
        ]),
        1,
    );
    assert!(e.contains("holds the input"), "{e}");
    assert!(copy.join("config.json").exists());
    let e = fails(
        &run([
            "decompress".as_ref(),
            inner.as_os_str(),
            "-o".as_ref(),
            models.as_os_str(),
            "-f".as_ref(),
        ]),
        1,
    );
    assert!(e.contains("holds the input"), "{e}");
    fs::rename(&inner, &bs).unwrap();
    // An existing non-empty output directory is refused without -f.
    let e = fails(
        &run(["transcode".as_ref(), bs.as_os_str(), bsr.as_os_str()]),
        1,
    );
    assert!(e.contains("exists"), "{e}");
    assert_no_leftovers(d.path());
}

#[test]
fn the_raw_budget_decides_how_many_hot_tensors_stay_raw() {
    let d = tmp();
    let bs = d.path().join("m.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let raw = |budget: &str| -> (u64, u64) {
        let out = d.path().join(format!("m{budget}.bsr"));
        let r = transcode(&bs, &out, &["--raw-budget", budget]);
        let back = d.path().join(format!("m{budget}.safetensors"));
        decompress(&out, &back);
        assert_eq!(
            sha256_file(&back),
            sha256_file(&fixture("smollm-bf16.safetensors"))
        );
        (
            r["raw_tensors"].as_u64().unwrap(),
            r["after_bytes"].as_u64().unwrap(),
        )
    };
    let (none, default, all) = (raw("0"), raw("2"), raw("100"));
    assert!(
        none.0 <= default.0 && default.0 < all.0,
        "{none:?} {default:?} {all:?}"
    );
    assert!(none.1 <= default.1 && default.1 < all.1);
    // Every tensor of this small model is hot (under 1 MiB): all raw with the whole budget.
    assert_eq!(all.0, 20);
    let o = run([
        "transcode".as_ref(),
        bs.as_os_str(),
        d.path().join("x.bsr").as_os_str(),
        "--raw-budget".as_ref(),
        "-1".as_ref(),
    ]);
    assert_ne!(code(&o), 0);
}

/// A `.bsr` transcoded again keeps the same tensors raw: a tensor the input already stores raw
/// is charged what coding would save on it, not nothing, so the budget is not spent again on
/// each pass (the file grew by about the budget every time).
#[test]
fn speed_mode_on_its_own_output_does_not_grow_it() {
    let d = tmp();
    let mut rng = Rng(0xb5);
    // Twelve hot tensors (under 1 MiB) that coding shrinks by about a third, and a big one.
    let mut tensors: Vec<T> = (0..12)
        .map(|l| {
            t(
                &format!("model.layers.{l}.self_attn.q_proj.weight"),
                "BF16",
                &[256, 256],
                bf16_weights(&mut rng, 256 * 256, 0.02),
            )
        })
        .collect();
    tensors.push(t(
        "model.layers.0.mlp.up_proj.weight",
        "BF16",
        &[1024, 1024],
        bf16_weights(&mut rng, 1024 * 1024, 0.02),
    ));
    let src = d.path().join("m.safetensors");
    fs::write(&src, safetensors(&tensors, None)).unwrap();
    let bs = d.path().join("m.bs");
    compress(&src, &bs);
    let a = d.path().join("a.bsr");
    let b = d.path().join("b.bsr");
    let ra = transcode(&bs, &a, &["--raw-budget", "5"]);
    let rb = transcode(&a, &b, &["--raw-budget", "5"]);
    // The budget keeps some hot tensors raw, not all of them.
    let raw = ra["raw_tensors"].as_u64().unwrap();
    assert!((1..12).contains(&raw), "{ra}");
    assert_eq!(rb["raw_tensors"], ra["raw_tensors"], "{ra}\n{rb}");
    let len = |p: &Path| fs::metadata(p).unwrap().len();
    assert!(len(&b) <= len(&a) + 64, "{} -> {}", len(&a), len(&b));
    decompress(&b, &d.path().join("back.safetensors"));
    assert_eq!(
        fs::read(d.path().join("back.safetensors")).unwrap(),
        fs::read(&src).unwrap()
    );
}

#[test]
fn report_measures_decode_speed_of_both_files() {
    let d = tmp();
    let bs = d.path().join("m.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let out = d.path().join("m.bsr");
    let text = ok(&run([
        "transcode".as_ref(),
        bs.as_os_str(),
        out.as_os_str(),
        "--no-progress".as_ref(),
        "--workers".as_ref(),
        "1".as_ref(),
    ]));
    assert!(text.starts_with("transcode[speed]: "), "{text}");
    assert!(
        text.contains("decode to memory (1 thread, best of 3)"),
        "{text}"
    );
    assert!(text.contains("all md5-verified"), "{text}");

    // benchmark reads the .bsr directly and reports decode-to-memory apart from whole files.
    let j: serde_json::Value = serde_json::from_str(&ok(&run([
        "benchmark".as_ref(),
        out.as_os_str(),
        "--json".as_ref(),
        "--no-progress".as_ref(),
    ])))
    .unwrap();
    assert_eq!(j["input"], "container");
    assert_eq!(j["mode"], "speed");
    assert!(j["compress_mb_s"].is_null());
    assert!(j["decode_memory_mb_s"].as_f64().unwrap() > 0.0);
    assert!(j["decompress_file_mb_s"].as_f64().unwrap() > 0.0);
    assert_eq!(j["byte_identical"], true);
    let text = ok(&run([
        "benchmark".as_ref(),
        out.as_os_str(),
        "--runs".as_ref(),
        "1".as_ref(),
        "--no-progress".as_ref(),
    ]));
    assert!(!text.contains("1 threads"), "{text}");
    // A container's modes were fixed when it was made: a mode flag would be ignored.
    for flag in ["--storage", "--balanced", "--inference"] {
        let o = run(["benchmark".as_ref(), out.as_os_str(), flag.as_ref()]);
        usage_error(&o);
        assert!(
            stderr(&o).contains("fixed when it is made"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn a_shard_replaced_or_duplicated_in_a_directory_is_damage() {
    let d = tmp();
    let bs = d.path().join("m.bs");
    compress(&fixture("smollm-bf16.safetensors"), &bs);
    let split = d.path().join("split");
    ok(&run([
        "reshard".as_ref(),
        bs.as_os_str(),
        "-o".as_ref(),
        split.as_os_str(),
        "--shards".as_ref(),
        "3".as_ref(),
        "--no-progress".as_ref(),
    ]));
    let other = d.path().join("other.bs");
    compress(&fixture("minilm-bf16.safetensors"), &other);
    let two = split.join("model-00002-of-00003.bs");
    let three = split.join("model-00003-of-00003.bs");
    let out = d.path().join("out");
    // A foreign shard, then shard 2 (as many tensors, as many bytes) copied over shard 3:
    // either would be transcoded as if it were the model the index describes.
    for replacement in [&other, &two] {
        fs::copy(replacement, &three).unwrap();
        let e = fails(
            &run([
                "transcode".as_ref(),
                split.as_os_str(),
                out.as_os_str(),
                "--no-progress".as_ref(),
                "--no-measure".as_ref(),
            ]),
            3,
        );
        assert!(e.contains("model-00003-of-00003.bs"), "{e}");
        assert!(e.contains("shard files swapped or replaced"), "{e}");
        assert!(!out.exists());
        assert_no_leftovers(d.path());
    }
}

#[test]
fn bad_input_is_refused_and_nothing_is_left() {
    let d = tmp();
    let src = fixture("minilm-bf16.safetensors");
    let bs = d.path().join("m.bs");
    compress(&src, &bs);
    let out = d.path().join("m.bsr");

    // Existing output without -f: refused, untouched.
    fs::write(&out, b"keep me").unwrap();
    let e = fails(
        &run(["transcode".as_ref(), bs.as_os_str(), out.as_os_str()]),
        1,
    );
    assert!(e.contains("exists"), "{e}");
    assert_eq!(fs::read(&out).unwrap(), b"keep me");
    transcode(&bs, &out, &["-f"]);

    // The source as its own output, with -f or without.
    for force in [&["-f"][..], &[]] {
        let mut args = vec!["transcode".as_ref(), bs.as_os_str(), bs.as_os_str()];
        args.extend(force.iter().map(std::ffi::OsStr::new));
        let e = fails(&run(args), 1);
        assert!(e.contains("is the input"), "{force:?}: {e}");
    }

    // Values out of range are usage errors (exit 2), like every other bad argument.
    for bad in [
        ["--n-streams", "0"],
        ["--workers", "0"],
        ["--raw-budget", "101"],
        ["--raw-budget", "-1"],
        ["--raw-budget", "NaN"],
    ] {
        usage_error(&run([
            "transcode".as_ref(),
            bs.as_os_str(),
            d.path().join("x.bsr").as_os_str(),
            bad[0].as_ref(),
            bad[1].as_ref(),
        ]));
    }
    // --raw-budget outside speed mode, too.
    usage_error(&run([
        "transcode".as_ref(),
        bs.as_os_str(),
        d.path().join("x.bs").as_os_str(),
        "--mode".as_ref(),
        "balanced".as_ref(),
        "--raw-budget".as_ref(),
        "5".as_ref(),
    ]));
    usage_error(&run([
        "transcode".as_ref(),
        bs.as_os_str(),
        d.path().join("x.bsr").as_os_str(),
        "--mode".as_ref(),
        "fastest".as_ref(),
    ]));

    // A flipped byte in a blob: an integrity failure (exit 3), no output.
    let damaged = d.path().join("damaged.bs");
    fs::copy(&bs, &damaged).unwrap();
    xor_byte(&damaged, 200, 0x55);
    let o = run([
        "transcode".as_ref(),
        damaged.as_os_str(),
        d.path().join("d.bsr").as_os_str(),
    ]);
    let e = fails(&o, 3);
    assert!(e.contains("damaged.bs"), "{e}");
    assert!(!d.path().join("d.bsr").exists());

    // A duplicate whose receipt disagrees with its original's is refused on open.
    let zoo = d.path().join("zoo.safetensors");
    fs::write(&zoo, common::zoo()).unwrap();
    let zbs = d.path().join("zoo.bs");
    compress(&zoo, &zbs);
    let lying = d.path().join("lying.bs");
    fs::write(
        &lying,
        edit_index(&fs::read(&zbs).unwrap(), |v| {
            let t = v["tensors"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|t| !t["dup_of"].is_null())
                .expect("the zoo has a duplicate");
            t["md5"] = "0".repeat(32).into();
        }),
    )
    .unwrap();
    let e = fails(
        &run([
            "transcode".as_ref(),
            lying.as_os_str(),
            d.path().join("l.bsr").as_os_str(),
        ]),
        3,
    );
    assert!(e.contains("duplicate"), "{e}");

    // A patch needs its base first.
    let fine = d.path().join("fine.safetensors");
    let mut bytes = fs::read(&src).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    fs::write(&fine, bytes).unwrap();
    let patch = d.path().join("patch.bs");
    ok(&run([
        "compress".as_ref(),
        fine.as_os_str(),
        "-o".as_ref(),
        patch.as_os_str(),
        "--delta-from".as_ref(),
        src.as_os_str(),
        "--no-progress".as_ref(),
    ]));
    let e = fails(
        &run([
            "transcode".as_ref(),
            patch.as_os_str(),
            d.path().join("p.bsr").as_os_str(),
        ]),
        1,
    );
    assert!(e.contains("patch"), "{e}");

    // Not a container at all.
    let e = fails(
        &run([
            "transcode".as_ref(),
            src.as_os_str(),
            d.path().join("s.bsr").as_os_str(),
        ]),
        1,
    );
    assert!(e.contains("minilm-bf16.safetensors"), "{e}");
    assert_no_leftovers(d.path());
}
