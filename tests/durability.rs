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
    let frozen_bytes = fs::read(&f).unwrap();
    // With an ECC sidecar, which protects the old bytes.
    bigsmall::integrity::ecc::create(&f).unwrap();
    let sidecar = fs::read(dir.path().join("m.bs.ecc")).unwrap();
    // A format-1.0 file is older than this build: migrated, with a backup; the sidecar goes
    // with the backup (it protects the old bytes), and the new file gets one of its own.
    let text = ok(&run(["migrate".as_ref(), f.as_os_str()]));
    assert!(text.contains("format 1.0"), "{text}");
    let now = format!(
        "-> format {}.{}",
        bigsmall::format::MAJOR,
        bigsmall::format::MINOR
    );
    assert!(text.contains(&now), "{text}");
    assert!(
        text.contains("every receipt verified; ECC sidecar rewritten"),
        "{text}"
    );
    assert_eq!(fs::read(dir.path().join("m.bs.bak")).unwrap(), frozen_bytes);
    assert_eq!(fs::read(dir.path().join("m.bs.bak.ecc")).unwrap(), sidecar);
    let v = ok(&run(["verify".as_ref(), f.as_os_str()]));
    assert!(v.contains("m.bs.ecc present, file intact"), "{v}");
    let check = ok(&run(["repair".as_ref(), f.as_os_str(), "--check".as_ref()]));
    assert!(check.contains("file is intact"), "{check}");
    // Now current: left alone, the backup of the first run still there (a current file
    // needs none, so it is not in the way).
    let before = fs::read(&f).unwrap();
    let text = ok(&run(["migrate".as_ref(), f.as_os_str()]));
    assert!(text.contains("already current"), "{text}");
    fs::remove_file(dir.path().join("m.bs.bak")).unwrap();
    fs::remove_file(dir.path().join("m.bs.bak.ecc")).unwrap();
    fs::remove_file(dir.path().join("m.bs.ecc")).unwrap();
    let text = ok(&run(["migrate".as_ref(), f.as_os_str()]));
    assert!(text.contains("already current"), "{text}");
    assert_eq!(fs::read(&f).unwrap(), before);
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
    // An earlier backup is never replaced: refused, everything left as it was.
    let (kept, current) = (
        fs::read(dir.path().join("m.bs.bak")).unwrap(),
        fs::read(&f).unwrap(),
    );
    let o = run(["migrate".as_ref(), f.as_os_str(), "--reencode".as_ref()]);
    assert_eq!(code(&o), 1);
    assert!(one_line_error(&stderr(&o)).contains("m.bs.bak"));
    assert_eq!(fs::read(dir.path().join("m.bs.bak")).unwrap(), kept);
    assert_eq!(fs::read(&f).unwrap(), current);
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

/// `compress --resume` with the test hooks: small windows, and an abort (like `kill -9`: no
/// destructor runs) at a named point.
fn compress_resumable(
    src: &std::path::Path,
    out: &std::path::Path,
    abort: Option<&str>,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = bigsmall();
    cmd.env("BIGSMALL_WINDOW_BYTES", "100000");
    if let Some(a) = abort {
        cmd.env("BIGSMALL_TEST_ABORT", a);
    }
    cmd.arg("compress")
        .arg(src)
        .arg("-o")
        .arg(out)
        .arg("--resume")
        .arg("--no-progress")
        .args(extra);
    cmd.output().expect("runs")
}

#[test]
fn resume_after_a_kill_at_any_point_gives_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("smollm-bf16.safetensors");
    let reference = dir.path().join("ref.bs");
    let o = compress_resumable(&src, &reference, None, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let want = fs::read(&reference).unwrap();
    for point in [
        "window:1",
        "window:3",
        "mid-window:2",
        "mid-window:6",
        "before-index:1",
    ] {
        let out = dir.path().join("r.bs");
        let o = compress_resumable(&src, &out, Some(point), &[]);
        assert!(
            !o.status.success(),
            "{point}: the hook did not stop the run"
        );
        assert!(
            !out.exists(),
            "{point}: a partial file under the final name"
        );
        assert!(dir.path().join("r.bs.progress").is_dir());
        let o = compress_resumable(&src, &out, None, &[]);
        assert_eq!(code(&o), 0, "{point}: {}", stderr(&o));
        assert_eq!(
            fs::read(&out).unwrap(),
            want,
            "{point}: resumed output differs"
        );
        assert!(!dir.path().join("r.bs.progress").exists());
        fs::remove_file(&out).unwrap();
    }
}

/// A copy of a fixture (`dir/in.safetensors`) compressed with `--resume` to `dir/r.bs` and
/// stopped after its second window: (input, output).
fn interrupted_copy(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = dir.join("in.safetensors");
    fs::copy(fixture("smollm-bf16.safetensors"), &src).unwrap();
    let out = dir.join("r.bs");
    assert!(!compress_resumable(&src, &out, Some("window:2"), &[])
        .status
        .success());
    (src, out)
}

#[test]
fn resume_refuses_a_changed_input_or_different_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = interrupted_copy(dir.path());
    let o = compress_resumable(&src, &out, None, &["--storage"]);
    let e = fails(&o, 1);
    assert!(e.contains("different"), "{e}");
    // Touch the input: a new modification time is a different input.
    let bytes = fs::read(&src).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(&src, &bytes).unwrap();
    let e = fails(&compress_resumable(&src, &out, None, &[]), 1);
    assert!(e.contains("different"), "{e}");
    assert!(!out.exists());
}

/// `dir/big.safetensors`: 24 tensors, each eight copies of the fixture's largest real BF16
/// tensor (shifted), an input that takes long enough to be interrupted mid-way.
fn big_real_input(dir: &std::path::Path) -> std::path::PathBuf {
    let base =
        bigsmall::model::safetensors::SafetensorsFile::open(&fixture("smollm-bf16.safetensors"))
            .unwrap();
    let t = base.tensors.iter().max_by_key(|t| t.len()).unwrap();
    let bytes = base.tensor_bytes(t);
    let tensors: Vec<_> = (0..24)
        .map(|k| {
            let data: Vec<u8> = bytes
                .iter()
                .cycle()
                .skip(k * 2)
                .take(bytes.len() * 8)
                .copied()
                .collect();
            common::t(&format!("w{k}"), "BF16", &[data.len() / 2], data)
        })
        .collect();
    let src = dir.join("big.safetensors");
    fs::write(&src, common::safetensors(&tensors, None)).unwrap();
    src
}

#[test]
fn resume_survives_a_real_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_real_input(dir.path());
    let reference = dir.path().join("ref.bs");
    assert_eq!(code(&compress_resumable(&src, &reference, None, &[])), 0);
    let out = dir.path().join("k.bs");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bigsmall"))
        .env("BIGSMALL_WINDOW_BYTES", "100000")
        .args([
            "compress".as_ref(),
            src.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--resume".as_ref(),
            "--no-progress".as_ref(),
        ])
        .spawn()
        .unwrap();
    let state = dir.path().join("k.bs.progress").join("state.json");
    let started = std::time::Instant::now();
    while !state.exists() && started.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let o = compress_resumable(&src, &out, None, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&reference).unwrap());
}

#[test]
fn directory_resume_keeps_finished_shards() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("sharded");
    let reference = dir.path().join("ref.bs");
    assert_eq!(code(&compress_resumable(&src, &reference, None, &[])), 0);
    let out = dir.path().join("d.bs");
    assert!(!compress_resumable(&src, &out, Some("window:3"), &[])
        .status
        .success());
    assert!(!out.exists());
    let o = compress_resumable(&src, &out, None, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(tree(&out), tree(&reference));
    for (rel, _) in tree(&reference) {
        let (a, b) = (reference.join(&rel), out.join(&rel));
        if a.is_file() {
            assert_eq!(fs::read(a).unwrap(), fs::read(b).unwrap(), "{rel}");
        }
    }
    assert!(!dir.path().join("d.bs.progress").exists());
}

/// Ctrl-C (SIGINT) or SIGTERM in the middle of a write: the partial output under its temporary
/// name is removed and the exit code is 130. The run is caught by watching for that temporary
/// file; a run that finishes first is simply tried again.
#[test]
fn an_interrupt_leaves_no_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_real_input(dir.path());
    let bs = dir.path().join("big.bs");
    assert_eq!(code(&compress_resumable(&src, &bs, None, &[])), 0);
    let mut interrupted = 0;
    for (attempt, signal) in ["-INT", "-TERM", "-INT", "-TERM", "-INT", "-TERM"]
        .iter()
        .enumerate()
    {
        let (what, out) = if attempt % 2 == 0 {
            ("compress", dir.path().join("k.bs"))
        } else {
            ("decompress", dir.path().join("k.safetensors"))
        };
        let input = if what == "compress" { &src } else { &bs };
        let _ = fs::remove_file(&out);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bigsmall"))
            .env("BIGSMALL_WINDOW_BYTES", "100000")
            .args([
                what.as_ref(),
                input.as_os_str(),
                "-o".as_ref(),
                out.as_os_str(),
            ])
            .args(
                ["--no-progress", "--md5"]
                    .iter()
                    .filter(|a| what == "decompress" || **a == "--no-progress"),
            )
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while leftovers(dir.path()).is_empty() && started.elapsed().as_secs() < 10 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let _ = std::process::Command::new("kill")
            .args([*signal, &child.id().to_string()])
            .status();
        let o = child.wait_with_output().unwrap();
        match o.status.code() {
            Some(130) => {
                interrupted += 1;
                assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
                assert!(!out.exists(), "{what}: nothing under the final name");
                assert_no_leftovers(dir.path());
            }
            Some(0) => {} // finished before the signal
            other => panic!("{what} {signal}: exit {other:?}"),
        }
    }
    assert!(
        interrupted >= 2,
        "only {interrupted} of 6 runs were caught mid-write"
    );
}

/// Ctrl-C during `benchmark`: its workspace (a compressed and a decompressed copy of the
/// model, under the temporary directory) goes with the partial outputs.
#[test]
fn an_interrupted_benchmark_leaves_no_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_real_input(dir.path());
    let scratch = dir.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bigsmall"))
        .env("TMPDIR", &scratch)
        .args(["benchmark".as_ref(), src.as_os_str()])
        .args(["--no-progress", "--runs", "1000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let workspace = scratch.join(format!("bigsmall-bench-{}", child.id()));
    let started = std::time::Instant::now();
    while !workspace.join("model.bs").exists() && started.elapsed().as_secs() < 30 {
        assert!(child.try_wait().unwrap().is_none(), "finished too soon");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
    assert_eq!(tree(&scratch), vec![], "the workspace is left behind");
}

/// A compressed directory: migrating its shards records their new sizes in the directory
/// index. A patch: its difference chunks are copied unchecked, and the report says so.
#[test]
fn migrate_records_a_directorys_sizes_and_says_what_a_patch_leaves_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    fs::create_dir(&model).unwrap();
    fs::copy(
        fixture("minilm-bf16.safetensors"),
        model.join("minilm-bf16.safetensors"),
    )
    .unwrap();
    let out = dir.path().join("model.bs");
    ok(&run([
        "compress".as_ref(),
        model.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]));
    // The shard as the format-1.0 file of the same weights, its size recorded as such.
    let shard = out.join("minilm-bf16.bs");
    fs::copy(frozen(), &shard).unwrap();
    let index = out.join("bigsmall.index.json");
    let mut v = json(&fs::read_to_string(&index).unwrap());
    let old = fs::metadata(&shard).unwrap().len();
    v["shards"][0]["size"] = old.into();
    v["metadata"]["total_size"] = old.into();
    fs::write(&index, v.to_string()).unwrap();
    ok(&run([
        "migrate".as_ref(),
        out.as_os_str(),
        "--no-backup".as_ref(),
    ]));
    let new = fs::metadata(&shard).unwrap().len();
    assert_ne!(new, old, "the 1.0 file is re-encoded");
    let v = json(&fs::read_to_string(&index).unwrap());
    assert_eq!(v["shards"][0]["size"].as_u64(), Some(new), "{v}");
    assert_eq!(v["metadata"]["total_size"].as_u64(), Some(new), "{v}");
    let back = dir.path().join("back");
    ok(&run([
        "decompress".as_ref(),
        out.as_os_str(),
        "-o".as_ref(),
        back.as_os_str(),
    ]));
    assert_eq!(
        sha256_file(&back.join("minilm-bf16.safetensors")),
        sha256_file(&fixture("minilm-bf16.safetensors"))
    );

    // A fine-tune with a few changed bytes, as a patch.
    let fine = dir.path().join("fine.safetensors");
    fs::copy(fixture("minilm-bf16.safetensors"), &fine).unwrap();
    let len = fs::metadata(&fine).unwrap().len();
    for k in 1..40 {
        xor_byte(&fine, len - k * 997, 1);
    }
    let patch = dir.path().join("fine.patch.bs");
    ok(&run([
        "compress".as_ref(),
        fine.as_os_str(),
        "--delta-from".as_ref(),
        fixture("minilm-bf16.safetensors").as_os_str(),
        "-o".as_ref(),
        patch.as_os_str(),
    ]));
    let text = ok(&run([
        "migrate".as_ref(),
        patch.as_os_str(),
        "--reencode".as_ref(),
        "--dry-run".as_ref(),
    ]));
    assert!(
        text.contains("difference chunks copied unchecked"),
        "{text}"
    );
    assert!(!text.contains("every receipt verified"), "{text}");
    assert_no_leftovers(dir.path());
}

/// Rewrites one byte of the first tensor's data in place and puts the file's modification
/// time back, as `cp -p` or `rsync -t` would leave it: size, header and time all as before.
fn rewrite_keeping_time(path: &std::path::Path) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = fs::read(path).unwrap();
    let start = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[start + 1] ^= 0x01;
    fs::write(path, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn resume_refuses_a_source_rewritten_with_its_time_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = interrupted_copy(dir.path());
    rewrite_keeping_time(&src);
    let e = fails(&compress_resumable(&src, &out, None, &[]), 1);
    assert!(e.contains("changed since the interrupted run"), "{e}");
    assert!(!out.exists());
}

#[test]
fn resume_refuses_a_damaged_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = interrupted_copy(dir.path());
    let partial = dir.path().join("r.bs.progress").join("partial.bs");
    let mut bytes = fs::read(&partial).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&partial, &bytes).unwrap();
    let e = fails(&compress_resumable(&src, &out, None, &[]), 1);
    assert!(
        e.contains("differs from what its checkpoint recorded"),
        "{e}"
    );
    assert!(!out.exists());
}

/// `dir/model` (a small `a.safetensors`, then `b.safetensors`) compressed with `--resume` to
/// `dir/d.bs` and stopped in b's second window, a's `.bs` finished: (model, output).
fn interrupted_two_file_dir(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = dir.join("model");
    fs::create_dir(&src).unwrap();
    fs::copy(fixture("ints.safetensors"), src.join("a.safetensors")).unwrap();
    fs::copy(
        fixture("smollm-bf16.safetensors"),
        src.join("b.safetensors"),
    )
    .unwrap();
    let out = dir.join("d.bs");
    assert!(!compress_resumable(&src, &out, Some("window:2"), &[])
        .status
        .success());
    assert!(dir.join("d.bs.progress").join("a.bs").is_file());
    (src, out)
}

/// A directory run interrupted in its second file: the first file's finished `.bs` is kept
/// only while it still decodes to its source; one whose source was rewritten since is made
/// again, and one whose source is gone is not carried into the output.
#[test]
fn directory_resume_remakes_shards_whose_source_changed() {
    for removed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = interrupted_two_file_dir(dir.path());
        if removed {
            fs::remove_file(src.join("a.safetensors")).unwrap();
        } else {
            rewrite_keeping_time(&src.join("a.safetensors"));
        }
        let o = compress_resumable(&src, &out, None, &[]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(out.join("a.bs").exists(), !removed);
        ok(&run([
            "verify",
            path_str(&out),
            "--source",
            path_str(&src),
            "--no-progress",
        ]));
        assert!(!dir.path().join("d.bs.progress").exists());
    }
}

/// A directory run resumed with `--ecc` protects every shard, those finished before the
/// interruption included.
#[test]
fn directory_resume_with_ecc_protects_finished_shards_too() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = interrupted_two_file_dir(dir.path());
    let o = compress_resumable(&src, &out, None, &["--ecc"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for shard in ["a.bs", "b.bs"] {
        assert!(out.join(format!("{shard}.ecc")).is_file(), "{shard}");
    }
    let v = ok(&run(["verify", path_str(&out), "--fast"]));
    assert_eq!(v.matches("file intact").count(), 2, "{v}");
}

/// A run without `--resume` that writes the output makes an interrupted run's checkpoint for
/// it stale: it is removed, for a file and for a directory.
#[test]
fn a_plain_run_removes_a_stale_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for src in [fixture("smollm-bf16.safetensors"), fixture("sharded")] {
        let out = dir.path().join("o.bs");
        let _ = fs::remove_dir_all(&out);
        let _ = fs::remove_file(&out);
        assert!(!compress_resumable(&src, &out, Some("window:2"), &[])
            .status
            .success());
        let progress = dir.path().join("o.bs.progress");
        assert!(progress.is_dir());
        ok(&run(["compress", path_str(&src), "-o", path_str(&out)]));
        assert!(!progress.exists(), "{}", src.display());
    }
}

/// A checkpoint from a build that did not record what a resumed run now checks is refused
/// as such (not as a changed source, which it is not).
#[test]
fn resume_refuses_a_checkpoint_from_an_earlier_build() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = interrupted_copy(dir.path());
    let state = dir.path().join("r.bs.progress").join("state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("plan").unwrap();
    o.remove("data_hash").unwrap();
    fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = fails(&compress_resumable(&src, &out, None, &[]), 1);
    assert!(e.contains("earlier bigsmall build"), "{e}");
}

/// A directory resumed with other flags is refused, as a file's checkpoint is: its finished
/// shards would keep the first run's mode.
#[test]
fn directory_resume_refuses_other_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = interrupted_two_file_dir(dir.path());
    for flag in ["--storage", "--group-streams"] {
        let e = fails(&compress_resumable(&src, &out, None, &[flag]), 1);
        assert!(e.contains("other flags"), "{flag}: {e}");
    }
    let o = compress_resumable(&src, &out, None, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!out.join(".bigsmall-resume.json").exists());
}

/// A fresh `--resume` run that fails before its first checkpoint (here a file-size limit, as
/// a full disk would) leaves no progress directory: without a checkpoint, its partial file
/// could never be resumed.
#[test]
fn a_resumable_run_failing_before_its_first_checkpoint_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.bs");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 100; exec \"$0\" compress \"$1\" -o \"$2\" --resume --no-progress")
        .arg(env!("CARGO_BIN_EXE_bigsmall"))
        .arg(fixture("smollm-bf16.safetensors"))
        .arg(&out)
        .env("BIGSMALL_WINDOW_BYTES", "10000000")
        .output()
        .expect("sh runs");
    let e = fails(&o, 1);
    assert!(e.contains("File too large"), "{e}");
    assert!(!out.exists());
    assert!(!dir.path().join("r.bs.progress").exists());
}
