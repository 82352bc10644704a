//! `compress --group-streams` end to end: never larger than without it, bit-exact through every
//! reader (decompress, verify, transcode, migrate, patches, directories, resume), every
//! decision recorded and reported, and lying group entries refused.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// A 12-layer model whose per-layer norms, biases and small k/v projections are the
/// candidates, plus an embedding and a final norm outside the layers.
fn layered_model(dir: &Path, layers: usize) -> PathBuf {
    let mut rng = Rng(0x9e0);
    let mut ts = vec![t(
        "model.embed_tokens.weight",
        "BF16",
        &[256, 64],
        bf16_weights(&mut rng, 256 * 64, 0.02),
    )];
    for l in 0..layers {
        let norm: Vec<u8> = (0..64)
            .flat_map(|i| {
                half::bf16::from_f32(1.0 + 0.01 * ((i * 7 + l) % 13) as f32).to_le_bytes()
            })
            .collect();
        ts.push(t(
            &format!("model.layers.{l}.input_layernorm.weight"),
            "BF16",
            &[64],
            norm.clone(),
        ));
        ts.push(t(
            &format!("model.layers.{l}.post_attention_layernorm.weight"),
            "BF16",
            &[64],
            norm.iter().rev().copied().collect(),
        ));
        for p in ["k_proj", "v_proj"] {
            ts.push(t(
                &format!("model.layers.{l}.self_attn.{p}.weight"),
                "BF16",
                &[16, 64],
                bf16_weights(&mut rng, 16 * 64, 0.05),
            ));
        }
        ts.push(t(
            &format!("model.layers.{l}.mlp.up_proj.bias"),
            "F32",
            &[32],
            f32_weights(&mut rng, 32, 0.01),
        ));
    }
    ts.push(t(
        "model.norm.weight",
        "BF16",
        &[64],
        bf16_weights(&mut rng, 64, 0.1),
    ));
    let p = dir.join(format!("layered{layers}.safetensors"));
    fs::write(&p, safetensors(&ts, Some(r#"{"format":"pt"}"#))).unwrap();
    p
}

fn compress_json(src: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args: Vec<std::ffi::OsString> = vec![
        "compress".into(),
        src.into(),
        "-o".into(),
        out.into(),
        "--no-progress".into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.into()));
    serde_json::from_str(&ok(&run(&args))).expect("json")
}

fn decompress_sha(bs: &Path, dir: &Path) -> String {
    let out = dir.join(format!("{}.back.safetensors", file_name(bs)));
    ok(&run([
        "decompress".as_ref(),
        bs.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "-f".as_ref(),
        "--md5".as_ref(),
        "--no-progress".as_ref(),
    ]));
    sha256_file(&out)
}

#[test]
fn grouped_is_never_larger_and_round_trips_bit_exactly() {
    let d = tmp();
    let src = layered_model(d.path(), 12);
    let plain = d.path().join("plain.bs");
    let grouped = d.path().join("grouped.bs");
    compress_json(&src, &plain, &[]);
    let r = compress_json(&src, &grouped, &["--group-streams"]);
    let (p, g) = (
        fs::metadata(&plain).unwrap().len(),
        fs::metadata(&grouped).unwrap().len(),
    );
    assert!(g < p, "grouped {g} vs plain {p}");

    // Every candidate group is reported with its measurement; the layer-less tensors are not
    // candidates.
    let groups = r["groups"].as_array().expect("groups in the report");
    let keys: Vec<&str> = groups.iter().map(|g| g["key"].as_str().unwrap()).collect();
    for k in [
        "model.layers.*.input_layernorm.weight",
        "model.layers.*.post_attention_layernorm.weight",
        "model.layers.*.self_attn.k_proj.weight",
        "model.layers.*.self_attn.v_proj.weight",
        "model.layers.*.mlp.up_proj.bias",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    assert!(!keys
        .iter()
        .any(|k| k.contains("embed") || *k == "model.norm.weight"));
    for gr in groups {
        assert_eq!(gr["members"], 12);
        let (sep, grp) = (
            gr["separate_bytes"].as_u64().unwrap(),
            gr["grouped_bytes"].as_u64().unwrap(),
        );
        assert_eq!(gr["grouped"].as_bool().unwrap(), grp + 8 * 12 < sep, "{gr}");
    }
    assert!(groups.iter().any(|g| g["grouped"] == true));

    // The index records it; members point into one shared blob each.
    let idx = index_value(&fs::read(&grouped).unwrap());
    assert_eq!(idx["groups"].as_array().unwrap().len(), groups.len());
    let norms: Vec<&Value> = idx["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["name"]
                .as_str()
                .unwrap()
                .ends_with("input_layernorm.weight")
        })
        .collect();
    let offsets: std::collections::BTreeSet<u64> = norms
        .iter()
        .map(|t| t["chunks"][0]["o"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets.len(), 1, "one shared blob for the norm chain");
    assert!(norms
        .iter()
        .all(|t| t["chunks"][0]["t"].as_u64() == Some(12 * 128)));

    // Bit-exact through decompress (with md5), verify, and the portable decoders.
    assert_eq!(decompress_sha(&grouped, d.path()), sha256_file(&src));
    ok(&run(["verify".as_ref(), grouped.as_os_str()]));
    let back = d.path().join("portable.safetensors");
    ok(&bigsmall()
        .env("BIGSMALL_NO_SIMD", "1")
        .args([
            "decompress".as_ref(),
            grouped.as_os_str(),
            "-o".as_ref(),
            back.as_os_str(),
        ])
        .arg("--no-progress")
        .output()
        .unwrap());
    assert_eq!(sha256_file(&back), sha256_file(&src));

    // info says so, per group; stat's per-tensor sizes still add up to the blobs.
    let info = ok(&run(["info".as_ref(), grouped.as_os_str()]));
    assert!(info.contains("grouped_streams"), "{info}");
    assert!(
        info.contains("model.layers.*.input_layernorm.weight"),
        "{info}"
    );
    let plain_info = ok(&run(["info".as_ref(), plain.as_os_str()]));
    assert!(!plain_info.contains("grouped_streams"));
    let text = ok(&run([
        "compress".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        d.path().join("t.bs").as_os_str(),
        "--group-streams".as_ref(),
        "--no-progress".as_ref(),
    ]));
    assert!(text.contains("groups:"), "{text}");
    assert!(text.contains("grouped ("), "{text}");
}

#[test]
fn never_larger_on_any_fixture() {
    let d = tmp();
    for src in fixture_files() {
        let plain = d.path().join("p.bs");
        let grouped = d.path().join("g.bs");
        compress_json(&src, &plain, &["-f"]);
        compress_json(&src, &grouped, &["-f", "--group-streams"]);
        let (p, g) = (
            fs::metadata(&plain).unwrap().len(),
            fs::metadata(&grouped).unwrap().len(),
        );
        assert!(g <= p, "{}: grouped {g} > plain {p}", file_name(&src));
        assert_eq!(decompress_sha(&grouped, d.path()), sha256_file(&src));
    }
}

#[test]
fn other_commands_read_grouped_files() {
    let d = tmp();
    let src = layered_model(d.path(), 8);
    let grouped = d.path().join("g.bs");
    compress_json(&src, &grouped, &["--group-streams"]);
    let want = sha256_file(&src);

    // transcode (every mode) writes tensors on their own again.
    for mode in ["speed", "balanced", "ratio"] {
        let out = d.path().join(format!("g.{mode}.bsr"));
        ok(&run([
            "transcode".as_ref(),
            grouped.as_os_str(),
            out.as_os_str(),
            "--mode".as_ref(),
            mode.as_ref(),
            "--no-progress".as_ref(),
            "--no-measure".as_ref(),
        ]));
        assert_eq!(decompress_sha(&out, d.path()), want, "{mode}");
        assert!(index_value(&fs::read(&out).unwrap())["groups"].is_null());
    }

    // migrate re-encodes members on their own.
    let m = d.path().join("m.bs");
    fs::copy(&grouped, &m).unwrap();
    ok(&run([
        "migrate".as_ref(),
        m.as_os_str(),
        "--reencode".as_ref(),
        "--no-backup".as_ref(),
        "--no-progress".as_ref(),
    ]));
    assert_eq!(decompress_sha(&m, d.path()), want);
    ok(&run(["verify".as_ref(), m.as_os_str()]));

    // A grouped container as a patch base, and a grouped patch's added tensors.
    let fine = layered_model(d.path(), 9);
    let patch = d.path().join("patch.bs");
    compress_json(
        &fine,
        &patch,
        &["--delta-from", grouped.to_str().unwrap(), "--group-streams"],
    );
    let out = d.path().join("fine.back.safetensors");
    ok(&run([
        "apply".as_ref(),
        grouped.as_os_str(),
        patch.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--no-progress".as_ref(),
    ]));
    assert_eq!(sha256_file(&out), sha256_file(&fine));

    // ECC sidecar and repair work on grouped files like any other.
    let e = d.path().join("e.bs");
    compress_json(&src, &e, &["--group-streams", "--ecc"]);
    let c = bigsmall::format::reader::Container::open(&e).unwrap();
    let shared = c
        .index
        .tensors
        .iter()
        .flat_map(|t| t.chunks.iter())
        .find(|ch| ch.total > 0)
        .copied()
        .unwrap();
    drop(c);
    xor_byte(&e, shared.offset + 3, 0x41);
    assert_eq!(code(&run(["verify".as_ref(), e.as_os_str()])), 3);
    let fixed = d.path().join("fixed.bs");
    ok(&run([
        "repair".as_ref(),
        e.as_os_str(),
        "-o".as_ref(),
        fixed.as_os_str(),
    ]));
    assert_eq!(decompress_sha(&fixed, d.path()), want);
}

#[test]
fn directories_and_resume_group_too() {
    let d = tmp();
    let model = d.path().join("model");
    fs::create_dir(&model).unwrap();
    let a = layered_model(d.path(), 6);
    fs::copy(&a, model.join("model-00001-of-00002.safetensors")).unwrap();
    let b = layered_model(d.path(), 7);
    fs::copy(&b, model.join("model-00002-of-00002.safetensors")).unwrap();
    let out = d.path().join("model.bs");
    let r = compress_json(&model, &out, &["--group-streams"]);
    assert!(r["groups"].as_array().unwrap().len() >= 8, "{r}");
    // Both shards hold layers, so the same keys arise in each: every group names its shard.
    for g in r["groups"].as_array().unwrap() {
        let key = g["key"].as_str().unwrap();
        assert!(
            key.starts_with("model-00001-of-00002.bs: ")
                || key.starts_with("model-00002-of-00002.bs: "),
            "{key}"
        );
    }
    let back = d.path().join("back");
    ok(&run([
        "decompress".as_ref(),
        out.as_os_str(),
        "-o".as_ref(),
        back.as_os_str(),
        "--no-progress".as_ref(),
    ]));
    for f in ["model-00001-of-00002", "model-00002-of-00002"] {
        assert_eq!(
            sha256_file(&back.join(format!("{f}.safetensors"))),
            sha256_file(&model.join(format!("{f}.safetensors")))
        );
    }

    // --resume with grouped streams: killed after a window, run again, same file.
    let src = layered_model(d.path(), 12);
    let reference = d.path().join("ref.bs");
    compress_json(&src, &reference, &["--group-streams"]);
    let resumed = d.path().join("resumed.bs");
    let go = |abort: Option<&str>| {
        let mut cmd = bigsmall();
        cmd.env("BIGSMALL_WINDOW_BYTES", "8000");
        if let Some(a) = abort {
            cmd.env("BIGSMALL_TEST_ABORT", a);
        }
        cmd.arg("compress")
            .arg(&src)
            .arg("-o")
            .arg(&resumed)
            .args(["--resume", "--group-streams", "--no-progress"])
            .output()
            .unwrap()
    };
    assert!(!go(Some("window:2")).status.success());
    assert!(!resumed.exists());
    assert_eq!(code(&go(None)), 0);
    assert_eq!(decompress_sha(&resumed, d.path()), sha256_file(&src));
    // The same bytes as an uninterrupted run with the same small windows.
    let straight = d.path().join("straight.bs");
    let o = bigsmall()
        .env("BIGSMALL_WINDOW_BYTES", "8000")
        .arg("compress")
        .arg(&src)
        .arg("-o")
        .arg(&straight)
        .args(["--group-streams", "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0);
    assert_eq!(fs::read(&resumed).unwrap(), fs::read(&straight).unwrap());
    // A checkpoint made without --group-streams is not continued with it.
    let other = d.path().join("other.bs");
    let mut cmd = bigsmall();
    cmd.env("BIGSMALL_WINDOW_BYTES", "8000")
        .env("BIGSMALL_TEST_ABORT", "window:1")
        .arg("compress")
        .arg(&src)
        .arg("-o")
        .arg(&other)
        .args(["--resume", "--no-progress"]);
    assert!(!cmd.output().unwrap().status.success());
    let o = bigsmall()
        .arg("compress")
        .arg(&src)
        .arg("-o")
        .arg(&other)
        .args(["--resume", "--group-streams", "--no-progress"])
        .output()
        .unwrap();
    assert_ne!(code(&o), 0);
    assert!(one_line_error(&stderr(&o)).contains("different input"));
}

#[test]
fn reshard_refuses_grouped_files_until_they_are_transcoded() {
    let d = tmp();
    let src = layered_model(d.path(), 6);
    let grouped = d.path().join("g.bs");
    compress_json(&src, &grouped, &["--group-streams"]);
    let out = d.path().join("shards");
    let o = run([
        "reshard".as_ref(),
        grouped.as_os_str(),
        "--output-dir".as_ref(),
        out.as_os_str(),
        "--shards".as_ref(),
        "2".as_ref(),
    ]);
    let e = fails(&o, 1);
    assert!(
        e.contains("grouped streams") && e.contains("transcode"),
        "{e}"
    );
    assert!(!out.exists());
    // The way out the message names works.
    let plain = d.path().join("plain.bs");
    ok(&run([
        "transcode".as_ref(),
        grouped.as_os_str(),
        plain.as_os_str(),
        "--mode".as_ref(),
        "balanced".as_ref(),
        "--no-progress".as_ref(),
        "--no-measure".as_ref(),
    ]));
    ok(&run([
        "reshard".as_ref(),
        plain.as_os_str(),
        "--output-dir".as_ref(),
        out.as_os_str(),
        "--shards".as_ref(),
        "2".as_ref(),
        "--no-progress".as_ref(),
    ]));
    let back = d.path().join("back");
    ok(&run([
        "decompress".as_ref(),
        out.as_os_str(),
        "-o".as_ref(),
        back.as_os_str(),
        "--no-progress".as_ref(),
    ]));
}

#[test]
fn lying_group_entries_are_refused() {
    let d = tmp();
    let src = layered_model(d.path(), 4);
    let grouped = d.path().join("g.bs");
    compress_json(&src, &grouped, &["--group-streams"]);
    let bytes = fs::read(&grouped).unwrap();
    let member = |v: &mut Value| -> usize {
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .position(|t| t["chunks"][0]["t"].as_u64().is_some())
            .unwrap()
    };
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "slice past the blob",
            Box::new(move |v: &mut Value| {
                let i = member(v);
                let t = v["tensors"][i]["chunks"][0]["t"].as_u64().unwrap();
                v["tensors"][i]["chunks"][0]["s"] = t.into();
            }),
        ),
        (
            "huge blob",
            Box::new(move |v: &mut Value| {
                let i = member(v);
                v["tensors"][i]["chunks"][0]["t"] = (1u64 << 40).into();
            }),
        ),
        (
            "members disagree",
            Box::new(move |v: &mut Value| {
                let i = member(v);
                let t = v["tensors"][i]["chunks"][0]["t"].as_u64().unwrap();
                v["tensors"][i]["chunks"][0]["t"] = (t + 2).into();
            }),
        ),
        (
            "grouped delta",
            Box::new(move |v: &mut Value| {
                let i = member(v);
                v["tensors"][i]["chunks"][0]["d"] = true.into();
            }),
        ),
    ];
    for (what, edit) in cases {
        let f = d.path().join("bad.bs");
        fs::write(&f, edit_index(&bytes, |v| edit(v))).unwrap();
        let o = run(["info".as_ref(), f.as_os_str()]);
        assert_ne!(code(&o), 0, "{what}: info accepted it");
        one_line_error(&stderr(&o));
        // For verify a damaged index is a finding: exit 3, one MISMATCH line.
        let o = run(["verify".as_ref(), f.as_os_str()]);
        assert_eq!(code(&o), 3, "{what}: verify");
        let out = stdout(&o);
        assert_eq!(
            out.lines().filter(|l| l.starts_with("MISMATCH")).count(),
            1,
            "{what}: {out}"
        );
    }
    // A member pointing at the wrong slice of a real blob: the members no longer tile it.
    let f = d.path().join("shifted.bs");
    fs::write(
        &f,
        edit_index(&bytes, |v| {
            let i = member(v);
            let s = v["tensors"][i]["chunks"][0]["s"].as_u64().unwrap_or(0);
            let t = v["tensors"][i]["chunks"][0]["t"].as_u64().unwrap();
            let n = v["tensors"][i]["chunks"][0]["n"].as_u64().unwrap();
            let moved = if s + n + 2 <= t { s + 2 } else { s - 2 };
            v["tensors"][i]["chunks"][0]["s"] = moved.into();
        }),
    )
    .unwrap();
    let o = run(["verify".as_ref(), f.as_os_str()]);
    assert_eq!(code(&o), 3);
    assert!(stdout(&o).contains("tiled"), "{}", stdout(&o));
    fails(&run(["info".as_ref(), f.as_os_str()]), 3);
    // A slice offset on a chunk of its own.
    let f = d.path().join("skip.bs");
    fs::write(
        &f,
        edit_index(&bytes, |v| {
            let i = v["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .position(|t| {
                    t["chunks"].as_array().is_some_and(|c| !c.is_empty())
                        && t["chunks"][0]["t"].is_null()
                })
                .unwrap();
            v["tensors"][i]["chunks"][0]["s"] = 2.into();
        }),
    )
    .unwrap();
    assert_eq!(code(&run(["verify".as_ref(), f.as_os_str()])), 3);
    fails(&run(["info".as_ref(), f.as_os_str()]), 3);
}
