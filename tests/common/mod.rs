//! Helpers shared by the integration tests: temp dirs, paths and JSON, fixture paths,
//! running the binary, one-line error checks, hand-built safetensors files and container
//! surgery (rewriting the index or trailer of a `.bs` with a correct checksum).
#![allow(dead_code)] // each test crate uses a different subset

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use sha2::{Digest, Sha256};

use bigsmall::codec::Effort;
use bigsmall::format::{fast_hash, Trailer, TRAILER_LEN};
use bigsmall::progress::Silent;
use bigsmall::store::{compress_file, CompressOptions, CompressReport};

// ---------------------------------------------------------------------------------------------
// Fixtures

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// Every `*.safetensors` directly inside `fixtures/`, sorted by name.
pub fn fixture_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(fixtures_dir())
        .expect("fixtures/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    assert!(v.len() >= 9, "expected the fixture set, found {v:?}");
    v
}

pub fn file_name(p: &Path) -> String {
    p.file_name()
        .expect("has a file name")
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------------------------
// Running the binary

pub fn bigsmall() -> Command {
    Command::cargo_bin("bigsmall").expect("the bigsmall binary is built for integration tests")
}

/// Runs `bigsmall ARGS`; never panics on a non-zero exit.
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    bigsmall().args(args).output().expect("bigsmall runs")
}

pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("bigsmall was killed by a signal: {o:?}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success (exit 0, nothing on stderr) and returns stdout.
pub fn ok(o: &Output) -> String {
    assert_eq!(
        code(o),
        0,
        "expected success\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    assert!(
        o.stderr.is_empty(),
        "success must print nothing on stderr: {:?}",
        stderr(o)
    );
    stdout(o)
}

/// Asserts that `text` is exactly one line `bigsmall: ...\n` and returns it without the newline.
pub fn one_line_error(text: &str) -> String {
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "error output must be exactly one line, got {text:?}"
    );
    assert!(
        text.starts_with("bigsmall: "),
        "error line must start with 'bigsmall: ', got {text:?}"
    );
    text.trim_end_matches('\n').to_string()
}

/// Asserts exit code `want`, nothing on stdout, and a one-line error on stderr; returns it.
pub fn fails(o: &Output, want: i32) -> String {
    assert_eq!(
        code(o),
        want,
        "exit code\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    assert!(
        o.stdout.is_empty(),
        "a failed command printed on stdout: {:?}",
        stdout(o)
    );
    one_line_error(&stderr(o))
}

/// Asserts a clap usage error (exit 2).
pub fn usage_error(o: &Output) {
    assert_eq!(
        code(o),
        2,
        "expected a usage error\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    assert!(!o.stderr.is_empty(), "usage errors explain themselves");
}

/// Names in `dir` left behind by an interrupted or failed write (`.NAME.bigsmall-tmp-PID`, or
/// the `.NAME.old` a directory swap uses).
pub fn leftovers(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.map(|e| {
        e.expect("readable entry")
            .file_name()
            .to_string_lossy()
            .into_owned()
    })
    .filter(|n| n.contains(".bigsmall-tmp-") || (n.starts_with('.') && n.ends_with(".old")))
    .collect()
}

pub fn assert_no_leftovers(dir: &Path) {
    let l = leftovers(dir);
    assert!(
        l.is_empty(),
        "temporary files left in {}: {l:?}",
        dir.display()
    );
}

/// Every path under `root` (relative, sorted), with file sizes: a snapshot to compare.
pub fn tree(root: &Path) -> Vec<(String, Option<u64>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Option<u64>)>) {
        let Ok(rd) = fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.expect("readable entry");
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&p).expect("stat");
            if meta.is_dir() {
                out.push((rel, None));
                walk(root, &p, out);
            } else {
                out.push((rel, Some(meta.len())));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Hashing and byte surgery

/// Makes a named pipe at `path`.
pub fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// Copies a directory tree (a fixture model to edit).
pub fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
    for e in fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let p = e.expect("entry").path();
        let to = dst.join(p.file_name().expect("name"));
        if p.is_dir() {
            copy_tree(&p, &to);
        } else {
            fs::copy(&p, &to).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d.iter() {
        write!(s, "{b:02x}").expect("writing to a String");
    }
    s
}

pub fn sha256_file(p: &Path) -> String {
    sha256_hex(&fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// Flips (xors) one byte of a file in place.
pub fn xor_byte(p: &Path, at: u64, mask: u8) {
    let mut b = fs::read(p).expect("read");
    b[at as usize] ^= mask;
    fs::write(p, b).expect("write");
}

/// A small deterministic generator (splitmix64) for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A cheap bell curve with standard deviation about `scale`.
    pub fn normal(&mut self, scale: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit() - 0.5).sum();
        s * scale * 1.7
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// `n` weight-like F32 values, little-endian.
pub fn f32_weights(rng: &mut Rng, n: usize, scale: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|_| rng.normal(scale).to_le_bytes())
        .collect()
}

/// `n` weight-like BF16 values (F32 rounded to nearest even), little-endian.
pub fn bf16_weights(rng: &mut Rng, n: usize, scale: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|_| half::bf16::from_f32(rng.normal(scale)).to_le_bytes())
        .collect()
}

/// `n` weight-like F16 values, little-endian.
pub fn f16_weights(rng: &mut Rng, n: usize, scale: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|_| half::f16::from_f32(rng.normal(scale)).to_le_bytes())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Hand-built safetensors files

/// A whole safetensors file from a header (used verbatim) and the data section.
pub fn safetensors_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// One tensor of a hand-built file.
pub struct T {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn t(name: &str, dtype: &'static str, shape: &[usize], data: Vec<u8>) -> T {
    T {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

/// A safetensors file with the tensors' data in the given order, compact JSON header padded
/// with spaces to a multiple of 8 (like the reference writer). `metadata` goes in as
/// `__metadata__` when given (a JSON object, as text).
pub fn safetensors(tensors: &[T], metadata: Option<&str>) -> Vec<u8> {
    let mut parts = Vec::new();
    if let Some(m) = metadata {
        parts.push(format!("\"__metadata__\":{m}"));
    }
    let mut data = Vec::new();
    for t in tensors {
        let start = data.len();
        data.extend_from_slice(&t.data);
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        parts.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            serde_json::to_string(&t.name).expect("name serialises"),
            t.dtype,
            shape.join(","),
            start,
            data.len()
        ));
    }
    let mut header = format!("{{{}}}", parts.join(","));
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    safetensors_raw(&header, &data)
}

/// A small model exercising every codec path: BF16/F16/F32 weights, a BF16-native F32, a
/// boolean mask (byte rANS), 16-bit integers (byte planes), a constant tensor (fill), incompressible bytes (raw), a repetitive
/// tensor (zstd), a tied duplicate, an empty tensor and a scalar.
pub fn zoo() -> Vec<u8> {
    let mut rng = Rng(0x5eed);
    let w = bf16_weights(&mut rng, 48 * 64, 0.02);
    let native: Vec<u8> = bf16_weights(&mut rng, 16 * 32, 0.05)
        .chunks_exact(2)
        .flat_map(|b| [0, 0, b[0], b[1]])
        .collect();
    let mask: Vec<u8> = (0..4096).map(|_| u8::from(rng.unit() < 0.3)).collect();
    let ints: Vec<u8> = (0..2048)
        .flat_map(|_| (rng.normal(8000.0) as i16).to_le_bytes())
        .collect();
    // Once-quantized weights: every block of 32 takes one of 16 levels of its own scale.
    let quantized: Vec<u8> = (0..64 * 64 / 32)
        .flat_map(|_| {
            let scale = 0.001 + rng.unit() * 0.01;
            let levels: Vec<u8> = (0..32).map(|_| (rng.unit() * 16.0) as u8).collect();
            levels
                .into_iter()
                .flat_map(move |q| half::bf16::from_f32((f32::from(q) - 8.0) * scale).to_le_bytes())
        })
        .collect();
    let pattern: Vec<u8> = (0..512)
        .flat_map(|i| half::bf16::from_f32((i % 7) as f32 * 0.25).to_le_bytes())
        .collect();
    let tensors = vec![
        t("model.embed_tokens.weight", "BF16", &[48, 64], w.clone()),
        t(
            "model.layers.0.self_attn.q_proj.weight",
            "F16",
            &[32, 32],
            f16_weights(&mut rng, 32 * 32, 0.03),
        ),
        t(
            "model.layers.0.mlp.up_proj.weight",
            "F32",
            &[32, 32],
            f32_weights(&mut rng, 32 * 32, 0.03),
        ),
        t(
            "model.layers.0.mlp.down_proj.weight",
            "F32",
            &[16, 32],
            native,
        ),
        t("mask", "BOOL", &[4096], mask),
        t("quant.i16", "I16", &[2048], ints),
        t(
            "model.layers.0.input_layernorm.weight",
            "F32",
            &[64],
            1.0f32.to_le_bytes().repeat(64),
        ),
        t("noise", "U8", &[512], rng.bytes(512)),
        t("pattern", "BF16", &[512], pattern),
        t(
            "model.layers.0.self_attn.k_proj.weight",
            "BF16",
            &[64, 64],
            quantized,
        ),
        t("lm_head.weight", "BF16", &[48, 64], w),
        t("empty", "F32", &[0, 4], Vec::new()),
        t("scale", "F32", &[], 0.125f32.to_le_bytes().to_vec()),
    ];
    safetensors(&tensors, Some("{\"format\":\"pt\"}"))
}

/// Compresses with the library (overwriting).
pub fn compress_lib(src: &Path, dst: &Path, effort: Effort) -> CompressReport {
    compress_file(
        src,
        dst,
        &CompressOptions {
            effort,
            overwrite: true,
            resume: false,
            group_streams: false,
            ecc: false,
        },
        &Silent,
    )
    .unwrap_or_else(|e| panic!("compress {}: {e}", src.display()))
}

// ---------------------------------------------------------------------------------------------
// Container surgery

pub fn trailer_of(bs: &[u8]) -> Trailer {
    let tb: &[u8; TRAILER_LEN] = bs[bs.len() - TRAILER_LEN..]
        .try_into()
        .expect("trailer length");
    Trailer::from_bytes(tb).expect("valid trailer magic")
}

/// The index JSON of a valid container.
pub fn index_json(bs: &[u8]) -> Vec<u8> {
    let t = trailer_of(bs);
    let packed = &bs[t.index_offset as usize..(t.index_offset + t.index_len) as usize];
    zstd::bulk::decompress(packed, t.index_json_len as usize).expect("index inflates")
}

pub fn index_value(bs: &[u8]) -> serde_json::Value {
    serde_json::from_slice(&index_json(bs)).expect("index is JSON")
}

/// The container with its index replaced by `json` (zstd-packed) and a trailer that locates
/// and checksums it correctly: only the index's content lies.
pub fn with_index_json(bs: &[u8], json: &[u8]) -> Vec<u8> {
    let t = trailer_of(bs);
    let mut out = bs[..t.index_offset as usize].to_vec();
    let packed = zstd::bulk::compress(json, 3).expect("zstd compresses");
    let nt = Trailer {
        index_offset: t.index_offset,
        index_len: packed.len() as u64,
        index_json_len: json.len() as u64,
        index_hash: fast_hash(&packed),
    };
    out.extend_from_slice(&packed);
    out.extend_from_slice(&nt.to_bytes());
    out
}

/// The container with its index edited as JSON.
pub fn edit_index(bs: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = index_value(bs);
    f(&mut v);
    with_index_json(bs, &serde_json::to_vec(&v).expect("serialises"))
}

/// The container with its trailer replaced.
pub fn with_trailer(bs: &[u8], t: Trailer) -> Vec<u8> {
    let mut out = bs[..bs.len() - TRAILER_LEN].to_vec();
    out.extend_from_slice(&t.to_bytes());
    out
}
