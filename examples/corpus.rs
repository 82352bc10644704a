//! `corpus`: builds bigsmall's test corpus and its small committed fixtures.
//!
//! ```text
//! cargo run --release --example corpus -- cast <in.safetensors> <out.safetensors> --to bf16|f16|fp8
//! cargo run --release --example corpus -- gguf <in.gguf> <out_dir>
//! cargo run --release --example corpus -- fp8-block <in_bf16.safetensors> <out.safetensors>
//! cargo run --release --example corpus -- fixtures <minilm_model.safetensors> <smollm_bf16_dir> <fixtures_dir>
//! ```
//!
//! All conversions are written by hand (FP8 E4M3/E5M2 encoders, GGUF parser and
//! dequantizers, safetensors writer) so the output does not depend on numpy, torch
//! or llama.cpp. Safetensors files are written with tensors in the order given
//! (normally the source file's order, i.e. the order of its `data_offsets`), not
//! in the dtype-then-name order that `safetensors::serialize` would impose.
//! `scripts/fetch-corpus.sh` drives the subcommands; `fixtures/README` documents
//! every fixture this program writes.

use anyhow::{anyhow, bail, ensure, Context, Result};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const USAGE: &str = "\
usage: corpus <subcommand> ...

  cast <in.safetensors> <out.safetensors> --to bf16|f16|fp8
      Cast every F32 tensor to BF16/F16 (round to nearest even), or to per-tensor
      scaled F8_E4M3 with an F32 scalar `<name>_scale` stored right after it.
      Other tensors are copied unchanged; tensor order and __metadata__ are kept.
  gguf <in.gguf> <out_dir>
      Dequantize a llama GGUF (F32/F16/BF16/Q4_0/Q4_1/Q8_0) to a HF-style BF16
      <out_dir>/model.safetensors + config.json + gguf_tokenizer.json.
  fp8-block <in.safetensors> <out.safetensors>
      128x128 block-scaled F8_E4M3 for 2-D *_proj / embed / lm_head weights with
      both dims >= 128, plus an F32 `<name>_scale_inv` [ceil(r/128), ceil(c/128)].
  fixtures <minilm_model.safetensors> <smollm_bf16_dir> <fixtures_dir>
      Write the small committed test fixtures (see fixtures/README).
  pair <base.safetensors> <out.safetensors> --kind ulp|replace|resize --frac F [--seed N]
      A synthetic fine-tune of a BF16/F16 base for patch tests: `ulp` moves a fraction F of
      the elements of every float tensor by +-1 ulp; `replace` leaves half of the tensors
      untouched and redraws the others' elements with probability F (values copied from
      elsewhere in the same tensor); `resize` is `ulp` plus the first 2-D tensor with 16 rows
      appended (a resized embedding).";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some(cmd) = args.first() else {
        bail!("missing subcommand\n\n{USAGE}");
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "cast" => cmd_cast(rest),
        "gguf" => cmd_gguf(rest),
        "fp8-block" => cmd_fp8_block(rest),
        "fixtures" => cmd_fixtures(rest),
        "pair" => cmd_pair(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown subcommand {other:?}\n\n{USAGE}"),
    }
}

/// Splits `args` into positionals and `--key value` / `--key=value` options.
fn parse_args(args: &[String], known: &[&str]) -> Result<(Vec<String>, BTreeMap<String, String>)> {
    let mut pos = Vec::new();
    let mut opts = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(opt) = a.strip_prefix("--") {
            let (key, val) = match opt.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => {
                    let v = it
                        .next()
                        .ok_or_else(|| anyhow!("option --{opt} needs a value\n\n{USAGE}"))?;
                    (opt.to_string(), v.clone())
                }
            };
            ensure!(
                known.contains(&key.as_str()),
                "unknown option --{key}\n\n{USAGE}"
            );
            opts.insert(key, val);
        } else {
            pos.push(a.clone());
        }
    }
    Ok((pos, opts))
}

fn positional<const N: usize>(pos: &[String], what: &str) -> Result<[PathBuf; N]> {
    ensure!(
        pos.len() == N,
        "{what}: expected {N} arguments, got {}\n\n{USAGE}",
        pos.len()
    );
    Ok(std::array::from_fn(|i| PathBuf::from(&pos[i])))
}

// ---------------------------------------------------------------------------
// In-memory safetensors model, reader and order-preserving writer
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct Tensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Tensor {
    fn new(
        name: impl Into<String>,
        dtype: Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) -> Result<Self> {
        let name = name.into();
        let numel = numel(&shape).with_context(|| format!("tensor {name}"))?;
        let bits = numel
            .checked_mul(dtype.bitsize())
            .ok_or_else(|| anyhow!("tensor {name}: size overflows"))?;
        ensure!(
            bits % 8 == 0 && bits / 8 == data.len(),
            "tensor {name}: {dtype} {shape:?} needs {} bits but has {} bytes",
            bits,
            data.len()
        );
        Ok(Self {
            name,
            dtype,
            shape,
            data,
        })
    }

    /// Values of a BF16/F16/F32 tensor widened to f32 (exact).
    fn to_f32(&self) -> Result<Vec<f32>> {
        Ok(match self.dtype {
            Dtype::F32 => self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => self
                .data
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            Dtype::F16 => self
                .data
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            other => bail!("tensor {}: expected a float tensor, got {other}", self.name),
        })
    }
}

fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow!("shape {shape:?} overflows"))
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bf16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes())
        .collect()
}

fn f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
        .collect()
}

#[derive(Clone, Debug, Default, PartialEq)]
struct StFile {
    metadata: Option<BTreeMap<String, String>>,
    /// In file order.
    tensors: Vec<Tensor>,
}

impl StFile {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| anyhow!("no tensor named {name:?}"))
    }
}

fn read_safetensors(path: &Path) -> Result<StFile> {
    let buf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_safetensors(&buf).with_context(|| format!("parsing safetensors file {}", path.display()))
}

/// Parses a safetensors buffer; tensors come back in the order of their
/// `data_offsets`, which is the order the data is laid out in the file.
fn parse_safetensors(buf: &[u8]) -> Result<StFile> {
    let (n, meta) =
        SafeTensors::read_metadata(buf).map_err(|e| anyhow!("invalid safetensors: {e}"))?;
    let data_start = 8 + n;
    let mut tensors = Vec::new();
    for name in meta.offset_keys() {
        let info = meta
            .info(&name)
            .ok_or_else(|| anyhow!("tensor {name:?} missing from header"))?;
        let (s, e) = info.data_offsets;
        let bytes = data_start
            .checked_add(s)
            .zip(data_start.checked_add(e))
            .and_then(|(s, e)| buf.get(s..e))
            .ok_or_else(|| anyhow!("tensor {name:?}: data_offsets out of bounds"))?;
        tensors.push(Tensor::new(
            name,
            info.dtype,
            info.shape.clone(),
            bytes.to_vec(),
        )?);
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    Ok(StFile { metadata, tensors })
}

/// The JSON header exactly as the reference implementation formats it (compact,
/// `__metadata__` first, fields dtype/shape/data_offsets), but with tensors in
/// the given order, padded with spaces to a multiple of 8 bytes.
fn header_bytes(st: &StFile) -> Result<Vec<u8>> {
    let mut seen = HashSet::new();
    let mut s = String::from("{");
    let mut first = true;
    if let Some(m) = &st.metadata {
        s.push_str("\"__metadata__\":");
        s.push_str(&serde_json::to_string(m)?);
        first = false;
    }
    let mut off = 0usize;
    for t in &st.tensors {
        ensure!(
            t.name != "__metadata__",
            "a tensor cannot be named __metadata__"
        );
        ensure!(
            seen.insert(t.name.as_str()),
            "duplicate tensor name {:?}",
            t.name
        );
        if !first {
            s.push(',');
        }
        first = false;
        let end = off + t.data.len();
        s.push_str(&serde_json::to_string(&t.name)?);
        s.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{off},{end}]}}",
            t.dtype,
            serde_json::to_string(&t.shape)?
        ));
        off = end;
    }
    s.push('}');
    let mut b = s.into_bytes();
    b.resize(b.len().next_multiple_of(8), b' ');
    Ok(b)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `st` to `path` (via `<path>.tmp` + rename), then reads it back with the
/// safetensors crate and checks names, order, dtypes, shapes and bytes.
fn write_safetensors(path: &Path, st: &StFile) -> Result<()> {
    let header =
        header_bytes(st).with_context(|| format!("building header for {}", path.display()))?;
    let tmp = tmp_path(path);
    let io = || -> Result<()> {
        let f = fs::File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for t in &st.tensors {
            w.write_all(&t.data)?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(())
    };
    io().with_context(|| format!("writing {}", tmp.display()))?;
    let back = read_safetensors(&tmp)?;
    ensure!(
        back == *st,
        "{}: read-back does not match what was written",
        tmp.display()
    );
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    write_text(path, &s)
}

fn write_text(path: &Path, s: &str) -> Result<()> {
    let tmp = tmp_path(path);
    fs::write(&tmp, s).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

// ---------------------------------------------------------------------------
// FP8 encoders / decoders (OCP E4M3FN and E5M2), written by hand
// ---------------------------------------------------------------------------

/// Largest finite E4M3FN magnitude.
const E4M3_MAX: f32 = 448.0;

/// Shifts `v` right by `s` bits, rounding to nearest, ties to even.
fn shift_rne(v: u32, s: u32) -> u32 {
    if s == 0 {
        return v;
    }
    if s >= 32 {
        return 0; // v < 2^32 <= half an ulp of the result: rounds to 0
    }
    let q = v >> s;
    let rem = v & ((1u32 << s) - 1);
    let half = 1u32 << (s - 1);
    if rem > half || (rem == half && q & 1 == 1) {
        q + 1
    } else {
        q
    }
}

/// Magnitude code (sign excluded) of the finite, non-negative f32 with bit
/// pattern `abs_bits` in a 1-e-m float with `mbits` mantissa bits and exponent
/// bias `bias`, rounded to nearest even. Not clamped: may exceed the format's max.
fn fp8_magnitude(abs_bits: u32, mbits: u32, bias: i32) -> u32 {
    let exp_field = (abs_bits >> 23) as i32;
    let mant = abs_bits & 0x7f_ffff;
    if exp_field == 0 {
        return 0; // zero or f32 subnormal (< 2^-126): far below any fp8 subnormal
    }
    let e_t = exp_field - 127 + bias; // biased exponent in the target format
    if e_t >= 1 {
        // Normal: exponent and mantissa are contiguous, so a mantissa carry
        // correctly bumps the exponent.
        shift_rne(((e_t as u32) << 23) | mant, 23 - mbits)
    } else {
        // Subnormal: code = value / 2^(1 - bias - mbits).
        let s = (23 - mbits as i32 + 1 - e_t) as u32;
        shift_rne(mant | 0x80_0000, s)
    }
}

/// f32 -> F8_E4M3 (e4m3fn: bias 7, no infinities, NaN = 0x7f/0xff), round to
/// nearest even, saturating finite overflow and ±inf to ±448.
fn f32_to_e4m3(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let a = bits & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return sign | 0x7f;
    }
    if a == 0x7f80_0000 {
        return sign | 0x7e;
    }
    sign | fp8_magnitude(a, 3, 7).min(0x7e) as u8
}

#[cfg(test)]
fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0xf);
    let man = f32::from(b & 7);
    if b & 0x7f == 0x7f {
        return f32::NAN;
    }
    sign * if exp == 0 {
        man * 2f32.powi(-9)
    } else {
        (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// f32 -> F8_E5M2 (bias 15, IEEE-like: ±inf = 0x7c/0xfc, NaN written as
/// 0x7f/0xff), round to nearest even, finite overflow saturating to ±57344,
/// ±inf kept as ±inf.
fn f32_to_e5m2(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let a = bits & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return sign | 0x7f;
    }
    if a == 0x7f80_0000 {
        return sign | 0x7c;
    }
    sign | fp8_magnitude(a, 2, 15).min(0x7b) as u8
}

#[cfg(test)]
fn e5m2_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 2) & 0x1f);
    let man = f32::from(b & 3);
    sign * match exp {
        31 if man == 0.0 => f32::INFINITY,
        31 => return f32::NAN,
        0 => man * 2f32.powi(-16),
        _ => (1.0 + man / 4.0) * 2f32.powi(exp - 15),
    }
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs())) // f32::max ignores NaN
}

/// Scale such that `max / scale == 448`; 1.0 when that is not a usable number
/// (all zeros, NaN-only, infinite max, or an underflowing quotient).
fn fp8_scale(max: f32) -> f32 {
    let s = max / E4M3_MAX;
    if s > 0.0 && s.is_finite() {
        s
    } else {
        1.0
    }
}

// ---------------------------------------------------------------------------
// cast
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CastTo {
    Bf16,
    F16,
    Fp8,
}

fn cast_file(src: &StFile, to: CastTo) -> Result<StFile> {
    let names: HashSet<&str> = src.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut tensors = Vec::with_capacity(src.tensors.len());
    for t in &src.tensors {
        if t.dtype != Dtype::F32 {
            tensors.push(t.clone());
            continue;
        }
        let x = t.to_f32()?;
        match to {
            CastTo::Bf16 => tensors.push(Tensor::new(
                &t.name,
                Dtype::BF16,
                t.shape.clone(),
                bf16_bytes(&x),
            )?),
            CastTo::F16 => tensors.push(Tensor::new(
                &t.name,
                Dtype::F16,
                t.shape.clone(),
                f16_bytes(&x),
            )?),
            CastTo::Fp8 => {
                let scale_name = format!("{}_scale", t.name);
                ensure!(
                    !names.contains(scale_name.as_str()),
                    "cannot add {scale_name:?}: the source already has a tensor with that name"
                );
                let s = fp8_scale(max_abs(&x));
                let q: Vec<u8> = x.iter().map(|&v| f32_to_e4m3(v / s)).collect();
                tensors.push(Tensor::new(&t.name, Dtype::F8_E4M3, t.shape.clone(), q)?);
                tensors.push(Tensor::new(
                    scale_name,
                    Dtype::F32,
                    vec![],
                    s.to_le_bytes().to_vec(),
                )?);
            }
        }
    }
    Ok(StFile {
        metadata: src.metadata.clone(),
        tensors,
    })
}

fn cmd_cast(rest: &[String]) -> Result<()> {
    let (pos, opts) = parse_args(rest, &["to"])?;
    let [input, output] = positional::<2>(&pos, "cast")?;
    let to = match opts.get("to").map(String::as_str) {
        Some("bf16") => CastTo::Bf16,
        Some("f16") => CastTo::F16,
        Some("fp8") => CastTo::Fp8,
        Some(other) => bail!("cast: --to must be bf16, f16 or fp8, got {other:?}"),
        None => bail!("cast: missing --to bf16|f16|fp8\n\n{USAGE}"),
    };
    let src = read_safetensors(&input)?;
    let out = cast_file(&src, to).with_context(|| format!("casting {}", input.display()))?;
    write_safetensors(&output, &out)?;
    println!(
        "cast {} -> {} ({:?}): {} tensors in, {} out",
        input.display(),
        output.display(),
        to,
        src.tensors.len(),
        out.tensors.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// fp8-block
// ---------------------------------------------------------------------------

const FP8_BLOCK: usize = 128;

fn is_fp8_block_target(t: &Tensor) -> bool {
    t.shape.len() == 2
        && t.shape[0] >= FP8_BLOCK
        && t.shape[1] >= FP8_BLOCK
        && matches!(t.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32)
        && (t.name.ends_with("_proj.weight")
            || t.name.contains("embed_tokens")
            || t.name.contains("lm_head"))
}

/// Quantizes a row-major `rows x cols` matrix in 128x128 blocks; returns the
/// E4M3 codes and the per-block scales `s` (dequant: x ≈ e4m3(q) * s).
fn fp8_block_quantize(x: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let (nbr, nbc) = (rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK));
    let mut q = vec![0u8; x.len()];
    let mut scales = Vec::with_capacity(nbr * nbc);
    for br in 0..nbr {
        let r_range = br * FP8_BLOCK..((br + 1) * FP8_BLOCK).min(rows);
        for bc in 0..nbc {
            let c_range = bc * FP8_BLOCK..((bc + 1) * FP8_BLOCK).min(cols);
            let mut m = 0f32;
            for r in r_range.clone() {
                m = m.max(max_abs(
                    &x[r * cols + c_range.start..r * cols + c_range.end],
                ));
            }
            let s = fp8_scale(m);
            for r in r_range.clone() {
                for c in c_range.clone() {
                    q[r * cols + c] = f32_to_e4m3(x[r * cols + c] / s);
                }
            }
            scales.push(s);
        }
    }
    (q, scales)
}

fn fp8_block_file(src: &StFile) -> Result<StFile> {
    let names: HashSet<&str> = src.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut tensors = Vec::with_capacity(src.tensors.len());
    for t in &src.tensors {
        if !is_fp8_block_target(t) {
            tensors.push(t.clone());
            continue;
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let scale_name = format!("{}_scale_inv", t.name);
        ensure!(
            !names.contains(scale_name.as_str()),
            "cannot add {scale_name:?}: the source already has a tensor with that name"
        );
        let (q, scales) = fp8_block_quantize(&t.to_f32()?, rows, cols);
        tensors.push(Tensor::new(&t.name, Dtype::F8_E4M3, t.shape.clone(), q)?);
        tensors.push(Tensor::new(
            scale_name,
            Dtype::F32,
            vec![rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK)],
            f32_bytes(&scales),
        )?);
    }
    Ok(StFile {
        metadata: src.metadata.clone(),
        tensors,
    })
}

fn cmd_fp8_block(rest: &[String]) -> Result<()> {
    let (pos, _) = parse_args(rest, &[])?;
    let [input, output] = positional::<2>(&pos, "fp8-block")?;
    let src = read_safetensors(&input)?;
    let out = fp8_block_file(&src).with_context(|| format!("quantizing {}", input.display()))?;
    let nq = out.tensors.len() - src.tensors.len(); // one `_scale_inv` per quantized tensor
    write_safetensors(&output, &out)?;
    println!(
        "fp8-block {} -> {}: {nq} of {} tensors block-quantized",
        input.display(),
        output.display(),
        src.tensors.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// GGUF
// ---------------------------------------------------------------------------

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                anyhow!(
                    "truncated: need {n} bytes at offset {}, file has {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.bytes()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| anyhow!("length {n} does not fit in memory"))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<GVal> {
        Ok(match ty {
            0 => GVal::U8(self.u8()?),
            1 => GVal::I8(self.u8()? as i8),
            2 => GVal::U16(self.u16()?),
            3 => GVal::I16(self.u16()? as i16),
            4 => GVal::U32(self.u32()?),
            5 => GVal::I32(self.u32()? as i32),
            6 => GVal::F32(f32::from_bits(self.u32()?)),
            7 => GVal::Bool(self.u8()? != 0),
            8 => GVal::Str(self.string()?),
            9 => {
                ensure!(depth < 8, "arrays nested too deeply");
                let ety = self.u32()?;
                let n = self.len()?;
                // Every element takes at least one byte: cap the allocation.
                let mut v = Vec::with_capacity(n.min(self.remaining()));
                for i in 0..n {
                    v.push(
                        self.value(ety, depth + 1)
                            .with_context(|| format!("array element {i} of {n}"))?,
                    );
                }
                GVal::Arr(v)
            }
            10 => GVal::U64(self.u64()?),
            11 => GVal::I64(self.u64()? as i64),
            12 => GVal::F64(f64::from_bits(self.u64()?)),
            other => bail!("unknown GGUF value type {other}"),
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
enum GVal {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Arr(Vec<GVal>),
}

impl GVal {
    fn as_u64(&self) -> Option<u64> {
        match *self {
            GVal::U8(v) => Some(v.into()),
            GVal::U16(v) => Some(v.into()),
            GVal::U32(v) => Some(v.into()),
            GVal::U64(v) => Some(v),
            GVal::I8(v) => u64::try_from(v).ok(),
            GVal::I16(v) => u64::try_from(v).ok(),
            GVal::I32(v) => u64::try_from(v).ok(),
            GVal::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    fn to_json(&self) -> Value {
        match self {
            GVal::U8(v) => json!(v),
            GVal::I8(v) => json!(v),
            GVal::U16(v) => json!(v),
            GVal::I16(v) => json!(v),
            GVal::U32(v) => json!(v),
            GVal::I32(v) => json!(v),
            GVal::U64(v) => json!(v),
            GVal::I64(v) => json!(v),
            GVal::F32(v) => json_f32(*v),
            GVal::F64(v) => serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
            GVal::Bool(v) => json!(v),
            GVal::Str(v) => json!(v),
            GVal::Arr(v) => Value::Array(v.iter().map(GVal::to_json).collect()),
        }
    }
}

/// An f32 as the JSON number with the same shortest decimal (1e-5, not
/// 9.999999747378752e-6).
fn json_f32(v: f32) -> Value {
    format!("{v}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

#[derive(Clone, Debug)]
struct GgufTensorInfo {
    name: String,
    /// ne[0] first (fastest varying); row-major shape is the reverse.
    dims: Vec<u64>,
    ggml_type: u32,
    offset: u64,
}

struct Gguf<'a> {
    version: u32,
    kv: Vec<(String, GVal)>,
    tensors: Vec<GgufTensorInfo>,
    /// The data section (from the aligned start to the end of the file).
    data: &'a [u8],
}

impl Gguf<'_> {
    fn get(&self, key: &str) -> Option<&GVal> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| anyhow!("metadata {key}: expected an unsigned integer, got {v:?}")),
        }
    }
    fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(GVal::F32(v)) => Ok(Some(*v)),
            Some(GVal::F64(v)) => Ok(Some(*v as f32)),
            Some(v) => bail!("metadata {key}: expected a float, got {v:?}"),
        }
    }
    fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(GVal::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn req_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key)?
            .ok_or_else(|| anyhow!("metadata key {key} is missing"))
    }
}

fn parse_gguf(buf: &[u8]) -> Result<Gguf<'_>> {
    let mut r = Reader { buf, pos: 0 };
    let magic = r.bytes::<4>().context("reading magic")?;
    ensure!(&magic == b"GGUF", "not a GGUF file (magic {magic:02x?})");
    let version = r.u32()?;
    ensure!(
        version == 2 || version == 3,
        "unsupported GGUF version {version} (2 and 3 are supported)"
    );
    let n_tensors = r.len().context("reading tensor_count")?;
    let n_kv = r.len().context("reading kv_count")?;
    let mut kv = Vec::with_capacity(n_kv.min(r.remaining()));
    for i in 0..n_kv {
        let key = r
            .string()
            .with_context(|| format!("reading key of KV pair {i}"))?;
        let ty = r.u32().with_context(|| format!("reading type of {key}"))?;
        let v = r
            .value(ty, 0)
            .with_context(|| format!("reading value of {key}"))?;
        kv.push((key, v));
    }
    let mut tensors = Vec::with_capacity(n_tensors.min(r.remaining()));
    for i in 0..n_tensors {
        let name = r
            .string()
            .with_context(|| format!("reading name of tensor info {i}"))?;
        let ctx = || format!("reading tensor info {name}");
        let n_dims = r.u32().with_context(ctx)?;
        ensure!(n_dims <= 8, "tensor {name}: {n_dims} dimensions");
        let dims = (0..n_dims)
            .map(|_| r.u64())
            .collect::<Result<Vec<_>>>()
            .with_context(ctx)?;
        let ggml_type = r.u32().with_context(ctx)?;
        let offset = r.u64().with_context(ctx)?;
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let g = Gguf {
        version,
        kv,
        tensors,
        data: &[],
    };
    let alignment = g.get_u64("general.alignment")?.unwrap_or(32);
    ensure!(
        alignment > 0 && alignment <= 1 << 20,
        "bad general.alignment {alignment}"
    );
    let start = r.pos.next_multiple_of(alignment as usize);
    let data = buf.get(start..).unwrap_or(&[]);
    Ok(Gguf { data, ..g })
}

/// (name, elements per block, bytes per block) of the supported ggml types.
fn ggml_type_info(ty: u32) -> Result<(&'static str, usize, usize)> {
    Ok(match ty {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        8 => ("Q8_0", 32, 34),
        30 => ("BF16", 1, 2),
        other => {
            bail!("unsupported ggml type {other} (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)")
        }
    })
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `n` elements of ggml type `ty` from `src` (exactly `n` elements'
/// worth of bytes), with llama.cpp's formulas (`dequantize_row_*`).
fn ggml_dequantize(ty: u32, src: &[u8], n: usize) -> Result<Vec<f32>> {
    let (name, blk, bytes) = ggml_type_info(ty)?;
    ensure!(
        n.is_multiple_of(blk) && src.len() == n / blk * bytes,
        "{name}: {} bytes do not hold {n} elements",
        src.len()
    );
    let mut y = Vec::with_capacity(n);
    match ty {
        0 => y.extend(
            src.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        1 => y.extend(src.chunks_exact(2).map(|c| f16_at(c, 0))),
        30 => y.extend(
            src.chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        2 => {
            // block_q4_0 { half d; u8 qs[16]; }: x[j] = (lo - 8) * d, x[j+16] = (hi - 8) * d
            let mut out = [0f32; 32];
            for b in src.chunks_exact(18) {
                let d = f16_at(b, 0);
                for (j, &q) in b[2..18].iter().enumerate() {
                    out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
                    out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
                y.extend_from_slice(&out);
            }
        }
        3 => {
            // block_q4_1 { half d; half m; u8 qs[16]; }: x[j] = lo * d + m, x[j+16] = hi * d + m
            let mut out = [0f32; 32];
            for b in src.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for (j, &q) in b[4..20].iter().enumerate() {
                    out[j] = (q & 0x0f) as f32 * d + m;
                    out[j + 16] = (q >> 4) as f32 * d + m;
                }
                y.extend_from_slice(&out);
            }
        }
        8 => {
            // block_q8_0 { half d; i8 qs[32]; }: x[j] = qs[j] * d
            for b in src.chunks_exact(34) {
                let d = f16_at(b, 0);
                y.extend(b[2..34].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        _ => unreachable!("ggml_type_info accepted an unhandled type"),
    }
    Ok(y)
}

impl Gguf<'_> {
    /// Row-major shape, element count and raw bytes of a tensor.
    fn tensor_data(&self, t: &GgufTensorInfo) -> Result<(Vec<usize>, usize, &[u8])> {
        let (tname, blk, bytes) = ggml_type_info(t.ggml_type)?;
        let shape = t
            .dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).map_err(|_| anyhow!("dimension {d} too large")))
            .collect::<Result<Vec<_>>>()?;
        let n = numel(&shape)?;
        let ne0 = shape.last().copied().unwrap_or(1);
        ensure!(
            ne0 % blk == 0,
            "{tname} needs ne[0] ({ne0}) to be a multiple of {blk}"
        );
        let nbytes = (n / blk)
            .checked_mul(bytes)
            .ok_or_else(|| anyhow!("size overflows"))?;
        let off =
            usize::try_from(t.offset).map_err(|_| anyhow!("offset {} too large", t.offset))?;
        let data = off
            .checked_add(nbytes)
            .and_then(|end| self.data.get(off..end))
            .ok_or_else(|| {
                anyhow!(
                    "data [{off}, +{nbytes}) is outside the {}-byte data section",
                    self.data.len()
                )
            })?;
        Ok((shape, n, data))
    }
}

/// llama.cpp's `convert_hf_to_gguf.py` `LlamaModel.permute`, applied to HF q/k
/// rows: `w.reshape(n_head, 2, hd/2, *rest).swapaxes(1, 2).reshape(w.shape)`.
/// Row `h*hd + i*2 + j` of the result is row `h*hd + j*(hd/2) + i` of `w`.
#[cfg(test)]
fn llama_cpp_permute_rows<T: Copy>(w: &[T], rows: usize, n_head: usize) -> Vec<T> {
    let cols = w.len() / rows;
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + j * half + i;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Inverse of `llama_cpp_permute_rows`: GGUF q/k rows back to HF order, i.e.
/// `w.reshape(n_head, hd/2, 2, *rest).swapaxes(1, 2).reshape(w.shape)`.
fn unpermute_rows<T: Copy + Default>(w: &[T], rows: usize, n_head: usize) -> Result<Vec<T>> {
    ensure!(
        n_head > 0 && rows > 0 && rows.is_multiple_of(2 * n_head) && w.len().is_multiple_of(rows),
        "cannot un-permute {rows} rows into {n_head} heads of even size"
    );
    let cols = w.len() / rows;
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![T::default(); w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + i * 2 + j;
                let dst = h * hd + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QkPerm {
    Q,
    K,
}

/// Output order: (group: embed 0, layers 1, norm 2, lm_head 3, other 4; layer; position in layer).
type SortKey = (u8, u64, u8);

/// HF Llama name, sort key and q/k permutation of a GGUF tensor name.
fn map_gguf_name(name: &str) -> Option<(String, SortKey, Option<QkPerm>)> {
    match name {
        "token_embd.weight" => return Some(("model.embed_tokens.weight".into(), (0, 0, 0), None)),
        "output_norm.weight" => return Some(("model.norm.weight".into(), (2, 0, 0), None)),
        "output.weight" => return Some(("lm_head.weight".into(), (3, 0, 0), None)),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (n, leaf) = rest.split_once('.')?;
    let layer: u64 = n.parse().ok()?;
    let (hf, pos, perm) = match leaf {
        "attn_norm.weight" => ("input_layernorm.weight", 0, None),
        "attn_q.weight" => ("self_attn.q_proj.weight", 1, Some(QkPerm::Q)),
        "attn_k.weight" => ("self_attn.k_proj.weight", 2, Some(QkPerm::K)),
        "attn_v.weight" => ("self_attn.v_proj.weight", 3, None),
        "attn_output.weight" => ("self_attn.o_proj.weight", 4, None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", 5, None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", 6, None),
        "ffn_up.weight" => ("mlp.up_proj.weight", 7, None),
        "ffn_down.weight" => ("mlp.down_proj.weight", 8, None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}"), (1, layer, pos), perm))
}

/// A HF `LlamaConfig` from GGUF metadata.
fn llama_config(g: &Gguf, tie_word_embeddings: bool, embed_rows: Option<usize>) -> Result<Value> {
    let hidden = g.req_u64("llama.embedding_length")?;
    let heads = g.req_u64("llama.attention.head_count")?;
    ensure!(heads > 0, "llama.attention.head_count is 0");
    let kv_heads = g.get_u64("llama.attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = g
        .get_u64("llama.attention.key_length")?
        .unwrap_or(hidden / heads);
    let vocab = match g.get_u64("llama.vocab_size")? {
        Some(v) => Some(v),
        None => match g.get("tokenizer.ggml.tokens") {
            Some(GVal::Arr(a)) => Some(a.len() as u64),
            _ => embed_rows.map(|r| r as u64),
        },
    };
    let mut c = serde_json::Map::new();
    c.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    c.insert("model_type".into(), json!("llama"));
    c.insert("attention_bias".into(), json!(false));
    c.insert("mlp_bias".into(), json!(false));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert(
        "intermediate_size".into(),
        json!(g.req_u64("llama.feed_forward_length")?),
    );
    c.insert(
        "num_hidden_layers".into(),
        json!(g.req_u64("llama.block_count")?),
    );
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert(
        "rms_norm_eps".into(),
        json_f32(
            g.get_f32("llama.attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-6),
        ),
    );
    c.insert(
        "rope_theta".into(),
        json_f32(g.get_f32("llama.rope.freq_base")?.unwrap_or(10000.0)),
    );
    if let Some(v) = vocab {
        c.insert("vocab_size".into(), json!(v));
    }
    if let Some(v) = g.get_u64("llama.context_length")? {
        c.insert("max_position_embeddings".into(), json!(v));
    }
    c.insert("tie_word_embeddings".into(), json!(tie_word_embeddings));
    for (key, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(v) = g.get_u64(key)? {
            c.insert(hf.into(), json!(v));
        }
    }
    c.insert("torch_dtype".into(), json!("bfloat16"));
    c.insert("use_cache".into(), json!(true));
    Ok(Value::Object(c))
}

fn cmd_gguf(rest: &[String]) -> Result<()> {
    let (pos, _) = parse_args(rest, &[])?;
    let [input, out_dir] = positional::<2>(&pos, "gguf")?;
    let buf = fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
    let g = parse_gguf(&buf).with_context(|| format!("parsing GGUF file {}", input.display()))?;
    gguf_to_hf(&g, &out_dir).with_context(|| format!("converting {}", input.display()))
}

fn gguf_to_hf(g: &Gguf, out_dir: &Path) -> Result<()> {
    let arch = g.get_str("general.architecture").unwrap_or("");
    ensure!(
        arch == "llama",
        "general.architecture is {arch:?}; only llama is supported"
    );
    let n_head = usize::try_from(g.req_u64("llama.attention.head_count")?)?;
    let n_head_kv = match g.get_u64("llama.attention.head_count_kv")? {
        Some(v) => usize::try_from(v)?,
        None => n_head,
    };
    println!(
        "GGUF v{}: {} tensors, {} metadata keys, arch {arch}, n_head {n_head}, n_head_kv {n_head_kv}",
        g.version,
        g.tensors.len(),
        g.kv.len()
    );
    let mut out: Vec<(SortKey, Tensor)> = Vec::with_capacity(g.tensors.len());
    for t in &g.tensors {
        let ctx = || format!("tensor {}", t.name);
        let (shape, n, raw) = g.tensor_data(t).with_context(ctx)?;
        let (hf, key, perm) = match map_gguf_name(&t.name) {
            Some(m) => m,
            None => {
                eprintln!(
                    "warning: no HF name for GGUF tensor {}; keeping it as is",
                    t.name
                );
                (t.name.clone(), (4, 0, 0), None)
            }
        };
        let mut x = ggml_dequantize(t.ggml_type, raw, n).with_context(ctx)?;
        if let Some(p) = perm {
            let heads = if p == QkPerm::Q { n_head } else { n_head_kv };
            let rows = shape.first().copied().unwrap_or(0);
            x = unpermute_rows(&x, rows, heads).with_context(ctx)?;
        }
        let (tname, _, _) = ggml_type_info(t.ggml_type)?;
        println!(
            "  {:<28} {:<5} {:<14} -> {:<48} {:?}",
            t.name,
            tname,
            format!("{:?}", t.dims),
            hf,
            shape
        );
        out.push((key, Tensor::new(hf, Dtype::BF16, shape, bf16_bytes(&x))?));
    }
    out.sort_by(|(ka, ta), (kb, tb)| ka.cmp(kb).then_with(|| ta.name.cmp(&tb.name)));
    let tensors: Vec<Tensor> = out.into_iter().map(|(_, t)| t).collect();
    let has_output = tensors.iter().any(|t| t.name == "lm_head.weight");
    let embed_rows = tensors
        .iter()
        .find(|t| t.name == "model.embed_tokens.weight")
        .and_then(|t| t.shape.first().copied());
    let config = llama_config(g, !has_output, embed_rows)?;
    if let (Some(rows), Some(v)) = (embed_rows, config.get("vocab_size").and_then(Value::as_u64)) {
        if rows as u64 != v {
            eprintln!("warning: vocab_size {v} != embed_tokens rows {rows}");
        }
    }
    let tok: serde_json::Map<String, Value> =
        g.kv.iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let st = StFile {
        metadata: Some(BTreeMap::from([("format".to_string(), "pt".to_string())])),
        tensors,
    };
    let model = out_dir.join("model.safetensors");
    write_safetensors(&model, &st)?;
    write_json(&out_dir.join("config.json"), &config)?;
    let tok_path = out_dir.join("gguf_tokenizer.json");
    write_text(
        &tok_path,
        &(serde_json::to_string(&Value::Object(tok))? + "\n"),
    )?;
    let bytes: usize = st.tensors.iter().map(|t| t.data.len()).sum();
    println!(
        "wrote {} ({} tensors, {bytes} data bytes), config.json, gguf_tokenizer.json",
        model.display(),
        st.tensors.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// fixtures
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Cut {
    Full,
    /// Leading rows (first dimension) `0..n`.
    Rows(usize),
    /// Leading `rows x cols` sub-block of a 2-D tensor (1-D tensors are kept whole).
    Block(usize, usize),
}

fn cut_tensor(t: &Tensor, cut: Cut) -> Result<Tensor> {
    let esize = t.dtype.bitsize() / 8;
    ensure!(
        t.dtype.bitsize().is_multiple_of(8),
        "{}: cannot cut sub-byte dtype {}",
        t.name,
        t.dtype
    );
    match cut {
        Cut::Full => Ok(t.clone()),
        Cut::Rows(n) => {
            let Some(&rows) = t.shape.first() else {
                bail!("{}: cannot cut rows of a scalar", t.name);
            };
            let n = n.min(rows);
            let row_bytes = t.data.len().checked_div(rows).unwrap_or(0);
            let mut shape = t.shape.clone();
            shape[0] = n;
            Tensor::new(&t.name, t.dtype, shape, t.data[..n * row_bytes].to_vec())
        }
        Cut::Block(r, c) => {
            if t.shape.len() != 2 {
                return Ok(t.clone());
            }
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let (r, c) = (r.min(rows), c.min(cols));
            let mut data = Vec::with_capacity(r * c * esize);
            for i in 0..r {
                data.extend_from_slice(&t.data[i * cols * esize..(i * cols + c) * esize]);
            }
            Tensor::new(&t.name, t.dtype, vec![r, c], data)
        }
    }
}

/// The cut of all-MiniLM-L6-v2 committed as fixtures/minilm-f32.safetensors.
const MINILM_CUT: &[(&str, Cut)] = &[
    ("embeddings.position_ids", Cut::Full),
    ("embeddings.word_embeddings.weight", Cut::Rows(128)),
    (
        "encoder.layer.0.attention.output.LayerNorm.weight",
        Cut::Full,
    ),
    ("encoder.layer.0.attention.self.query.bias", Cut::Full),
    ("encoder.layer.0.attention.self.query.weight", Cut::Rows(64)),
    ("encoder.layer.0.intermediate.dense.weight", Cut::Rows(64)),
    ("pooler.dense.bias", Cut::Full),
];

/// SmolLM2 cut: embed rows, every tensor of layers 0 and 1 (2-D ones as their
/// leading sub-block), final norm.
const SMOLLM_EMBED_ROWS: usize = 128;
const SMOLLM_BLOCK: (usize, usize) = (160, 144);
const SMOLLM_LAYERS: &[&str] = &["model.layers.0.", "model.layers.1."];

/// The tensors named in `cuts`, in `src`'s order.
fn cut_file(src: &StFile, cuts: &[(&str, Cut)]) -> Result<StFile> {
    for (name, _) in cuts {
        src.get(name)?;
    }
    let tensors = src
        .tensors
        .iter()
        .filter_map(|t| {
            cuts.iter()
                .find(|(n, _)| *n == t.name)
                .map(|&(_, c)| cut_tensor(t, c))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(StFile {
        metadata: src.metadata.clone(),
        tensors,
    })
}

fn smollm_cut(src: &StFile) -> Result<StFile> {
    let mut cuts: Vec<(&str, Cut)> = vec![
        ("model.embed_tokens.weight", Cut::Rows(SMOLLM_EMBED_ROWS)),
        ("model.norm.weight", Cut::Full),
    ];
    for prefix in SMOLLM_LAYERS {
        let before = cuts.len();
        for t in &src.tensors {
            if t.name.starts_with(prefix) {
                cuts.push((&t.name, Cut::Block(SMOLLM_BLOCK.0, SMOLLM_BLOCK.1)));
            }
        }
        ensure!(cuts.len() > before, "no tensors starting with {prefix}");
    }
    cut_file(src, &cuts)
}

/// BF16-representable F32 file: every F32 tensor rounded to BF16 and widened
/// back (low 16 bits zero), plus `extra_name`: a copy of `base_name` where ~1%
/// of elements keep their original F32 bits (nonzero low bits).
fn bf16native_file(cut: &StFile, base_name: &str, extra_name: &str) -> Result<StFile> {
    let widen = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
    let mut tensors = Vec::with_capacity(cut.tensors.len() + 1);
    for t in &cut.tensors {
        if t.dtype == Dtype::F32 {
            tensors.push(Tensor::new(
                &t.name,
                Dtype::F32,
                t.shape.clone(),
                f32_bytes(&widen(&t.to_f32()?)),
            )?);
        } else {
            tensors.push(t.clone());
        }
    }
    let base = cut.get(base_name)?;
    let orig = base.to_f32()?;
    let mut x = widen(&orig);
    let k = orig.len().div_ceil(100);
    let mut rng = SplitMix64(0x6269_6773_6d61_6c6c); // "bigsmall"
    let mut chosen = vec![false; orig.len()];
    let mut picked = 0;
    while picked < k {
        let i = (rng.next() % orig.len() as u64) as usize;
        if !chosen[i] {
            chosen[i] = true;
            picked += 1;
            let mut bits = orig[i].to_bits();
            if bits & 0xffff == 0 {
                bits |= 1;
            }
            x[i] = f32::from_bits(bits);
        }
    }
    tensors.push(Tensor::new(
        extra_name,
        Dtype::F32,
        base.shape.clone(),
        f32_bytes(&x),
    )?);
    Ok(StFile {
        metadata: cut.metadata.clone(),
        tensors,
    })
}

fn cmd_pair(rest: &[String]) -> Result<()> {
    let (pos, opts) = parse_args(rest, &["kind", "frac", "seed"])?;
    let [src, out] = pos.as_slice() else {
        bail!("usage: pair <base.safetensors> <out.safetensors> --kind K --frac F\n\n{USAGE}");
    };
    let kind = opts.get("kind").map(String::as_str).unwrap_or("ulp");
    let frac: f64 = opts
        .get("frac")
        .map(|f| f.parse())
        .transpose()
        .context("--frac")?
        .unwrap_or(0.1);
    let seed: u64 = opts
        .get("seed")
        .map(|f| f.parse())
        .transpose()
        .context("--seed")?
        .unwrap_or(1);
    let mut st = read_safetensors(Path::new(src))?;
    let mut rng = SplitMix64(seed);
    let mut resized = false;
    for (ti, t) in st.tensors.iter_mut().enumerate() {
        if !matches!(t.dtype, Dtype::BF16 | Dtype::F16) {
            continue;
        }
        let n = t.data.len() / 2;
        let threshold = (frac * (u64::MAX as f64)) as u64;
        match kind {
            "ulp" | "resize" => {
                for i in 0..n {
                    if rng.next() < threshold {
                        let w = u16::from_le_bytes([t.data[2 * i], t.data[2 * i + 1]]);
                        // +-1 on the magnitude bits; zero and the largest finite values
                        // only move inwards/outwards where that stays finite.
                        let w2 = if rng.next() & 1 == 0 && (w & 0x7fff) < 0x7f7f {
                            w + 1
                        } else if w & 0x7fff != 0 {
                            w - 1
                        } else {
                            w + 1
                        };
                        t.data[2 * i..2 * i + 2].copy_from_slice(&w2.to_le_bytes());
                    }
                }
            }
            "replace" => {
                if ti % 2 == 0 || n == 0 {
                    continue;
                }
                for i in 0..n {
                    if rng.next() < threshold {
                        let j = (rng.next() % n as u64) as usize;
                        let (a, b) = (t.data[2 * j], t.data[2 * j + 1]);
                        t.data[2 * i] = a;
                        t.data[2 * i + 1] = b;
                    }
                }
            }
            other => bail!("unknown --kind {other:?} (ulp, replace, resize)"),
        }
        if kind == "resize" && !resized && t.shape.len() == 2 {
            let row = t.shape[1] * 2;
            let extra: Vec<u8> = t.data[..row.min(t.data.len())].repeat(16);
            t.data.extend_from_slice(&extra);
            t.shape[0] += 16;
            resized = true;
        }
    }
    write_safetensors(Path::new(out), &st)?;
    println!("wrote {out} ({kind}, frac {frac})");
    Ok(())
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Named E5M2 casts (no scaling) of some tensors of `src`; the other listed
/// tensors are kept as they are.
fn e5m2_file(src: &StFile, cast: &[&str], keep: &[&str]) -> Result<StFile> {
    for n in cast.iter().chain(keep) {
        src.get(n)?;
    }
    let mut tensors = Vec::new();
    for t in &src.tensors {
        if cast.contains(&t.name.as_str()) {
            let q = t.to_f32()?.iter().map(|&v| f32_to_e5m2(v)).collect();
            tensors.push(Tensor::new(&t.name, Dtype::F8_E5M2, t.shape.clone(), q)?);
        } else if keep.contains(&t.name.as_str()) {
            tensors.push(t.clone());
        }
    }
    Ok(StFile {
        metadata: src.metadata.clone(),
        tensors,
    })
}

/// Integer / bool / f64 / empty / scalar tensors derived from real weights:
/// `w` (F32 values) and `bf` (a BF16 tensor's raw bits).
fn ints_file(w: &[f32], bf: &[u8]) -> Result<StFile> {
    ensure!(
        w.len() >= 4096 && bf.len() >= 8192,
        "ints: source tensors too small"
    );
    let w = &w[..4096];
    let m = max_abs(w);
    let (lo, hi) = w
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let sym = |x: f32, q: f32| {
        if m > 0.0 {
            (x * q / m).round().clamp(-q, q)
        } else {
            0.0
        }
    };
    let i8s: Vec<u8> = w.iter().map(|&x| sym(x, 127.0) as i8 as u8).collect();
    let u8s: Vec<u8> = w
        .iter()
        .map(|&x| {
            if hi > lo {
                ((x - lo) / (hi - lo) * 255.0).round().clamp(0.0, 255.0) as u8
            } else {
                0
            }
        })
        .collect();
    let i16s: Vec<u8> = w
        .iter()
        .flat_map(|&x| (sym(x, 32767.0) as i16).to_le_bytes())
        .collect();
    let i32s: Vec<u8> = w[..2048]
        .iter()
        .flat_map(|&x| ((x as f64 * (1u64 << 24) as f64).round() as i32).to_le_bytes())
        .collect();
    let u32s: Vec<u8> = w[..2048]
        .iter()
        .flat_map(|x| x.to_bits().to_le_bytes())
        .collect();
    let i64s: Vec<u8> = w[..1024]
        .iter()
        .flat_map(|&x| ((x as f64 * (1u64 << 48) as f64).round() as i64).to_le_bytes())
        .collect();
    let u64s: Vec<u8> = w[..1024]
        .iter()
        .flat_map(|&x| (x as f64).to_bits().to_le_bytes())
        .collect();
    let bools: Vec<u8> = w.iter().map(|&x| u8::from(x > 0.0)).collect();
    let f64s: Vec<u8> = w[..2048]
        .iter()
        .flat_map(|&x| (x as f64).to_le_bytes())
        .collect();
    let tensors = vec![
        Tensor::new("i8.symmetric_q127", Dtype::I8, vec![64, 64], i8s)?,
        Tensor::new("u8.asymmetric_q255", Dtype::U8, vec![64, 64], u8s)?,
        Tensor::new("i16.symmetric_q32767", Dtype::I16, vec![64, 64], i16s)?,
        Tensor::new(
            "u16.bf16_bits",
            Dtype::U16,
            vec![64, 64],
            bf[..8192].to_vec(),
        )?,
        Tensor::new("i32.fixed_q24", Dtype::I32, vec![32, 64], i32s)?,
        Tensor::new("u32.f32_bits", Dtype::U32, vec![32, 64], u32s)?,
        Tensor::new("i64.fixed_q48", Dtype::I64, vec![16, 64], i64s)?,
        Tensor::new("u64.f64_bits", Dtype::U64, vec![16, 64], u64s)?,
        Tensor::new("bool.positive", Dtype::BOOL, vec![64, 64], bools)?,
        Tensor::new("f64.widened", Dtype::F64, vec![32, 64], f64s)?,
        Tensor::new("f32.empty", Dtype::F32, vec![0, 384], vec![])?,
        Tensor::new(
            "f32.scalar_max_abs",
            Dtype::F32,
            vec![],
            m.to_le_bytes().to_vec(),
        )?,
    ];
    Ok(StFile {
        metadata: Some(BTreeMap::from([("format".to_string(), "pt".to_string())])),
        tensors,
    })
}

/// A HF tokenizer_config.json built from the GGUF tokenizer dump.
fn tokenizer_config(tok: &Value, config: &Value) -> Result<Value> {
    let tokens = tok
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no tokenizer.ggml.tokens array"))?;
    let token = |key: &str| -> Option<Value> {
        let id = tok.get(key)?.as_u64()?;
        tokens.get(usize::try_from(id).ok()?).cloned()
    };
    let mut c = serde_json::Map::new();
    for (key, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token"),
        ("tokenizer.ggml.eos_token_id", "eos_token"),
        ("tokenizer.ggml.padding_token_id", "pad_token"),
        ("tokenizer.ggml.unknown_token_id", "unk_token"),
    ] {
        if let Some(t) = token(key) {
            c.insert(hf.into(), t);
        }
    }
    if let Some(t) = tok.get("tokenizer.chat_template") {
        c.insert("chat_template".into(), t.clone());
    }
    if let Some(b) = tok.get("tokenizer.ggml.add_bos_token") {
        c.insert("add_bos_token".into(), b.clone());
    }
    if let Some(n) = config.get("max_position_embeddings") {
        c.insert("model_max_length".into(), n.clone());
    }
    c.insert("clean_up_tokenization_spaces".into(), json!(false));
    c.insert("tokenizer_class".into(), json!("GPT2Tokenizer"));
    Ok(Value::Object(c))
}

fn read_json(path: &Path) -> Result<Value> {
    let s = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| format!("parsing JSON {}", path.display()))
}

fn cmd_fixtures(rest: &[String]) -> Result<()> {
    let (pos, _) = parse_args(rest, &[])?;
    let [minilm_path, smollm_dir, out] = positional::<3>(&pos, "fixtures")?;
    let sharded = out.join("sharded");
    fs::create_dir_all(&sharded).with_context(|| format!("creating {}", sharded.display()))?;
    let mut written: Vec<PathBuf> = Vec::new();
    let mut put = |name: &str, st: &StFile| -> Result<()> {
        let p = out.join(name);
        write_safetensors(&p, st)?;
        written.push(p);
        Ok(())
    };

    // MiniLM (F32) and its casts.
    let minilm = read_safetensors(&minilm_path)?;
    let cut = cut_file(&minilm, MINILM_CUT)
        .with_context(|| format!("cutting {}", minilm_path.display()))?;
    put("minilm-f32.safetensors", &cut)?;
    put("minilm-bf16.safetensors", &cast_file(&cut, CastTo::Bf16)?)?;
    put("minilm-f16.safetensors", &cast_file(&cut, CastTo::F16)?)?;
    put("minilm-fp8.safetensors", &cast_file(&cut, CastTo::Fp8)?)?;
    let q = "encoder.layer.0.attention.self.query.weight";
    put(
        "minilm-bf16native-f32.safetensors",
        &bf16native_file(&cut, q, &format!("{q}.f32_exceptions"))?,
    )?;

    // SmolLM2 (BF16, from the GGUF conversion) and its FP8 variants.
    let smol_path = smollm_dir.join("model.safetensors");
    let smol = read_safetensors(&smol_path)?;
    let scut = smollm_cut(&smol).with_context(|| format!("cutting {}", smol_path.display()))?;
    put("smollm-bf16.safetensors", &scut)?;
    put("smollm-fp8block.safetensors", &fp8_block_file(&scut)?)?;
    put(
        "smollm-e5m2.safetensors",
        &e5m2_file(
            &scut,
            &[
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.mlp.gate_proj.weight",
            ],
            &["model.layers.0.input_layernorm.weight"],
        )?,
    )?;

    // Integer, bool, f64, empty and scalar tensors.
    let w = cut
        .get("encoder.layer.0.intermediate.dense.weight")?
        .to_f32()?;
    let bf = &scut.get("model.layers.0.self_attn.q_proj.weight")?.data;
    put("ints.safetensors", &ints_file(&w, bf)?)?;

    // Sharded HF-style model dir.
    let (first, second): (Vec<Tensor>, Vec<Tensor>) = scut.tensors.iter().cloned().partition(|t| {
        t.name == "model.embed_tokens.weight" || t.name.starts_with(SMOLLM_LAYERS[0])
    });
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (file, tensors) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        for t in &tensors {
            weight_map.insert(t.name.clone(), json!(file));
            total += t.data.len();
        }
        put(
            &format!("sharded/{file}"),
            &StFile {
                metadata: scut.metadata.clone(),
                tensors,
            },
        )?;
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let config = read_json(&smollm_dir.join("config.json"))?;
    let tok = read_json(&smollm_dir.join("gguf_tokenizer.json"))?;
    for (name, v) in [
        ("model.safetensors.index.json", index),
        ("tokenizer_config.json", tokenizer_config(&tok, &config)?),
        ("config.json", config),
    ] {
        let p = sharded.join(name);
        write_json(&p, &v)?;
        written.push(p);
    }

    let mut total_size = 0;
    for p in &written {
        let len = fs::metadata(p)
            .with_context(|| format!("stat {}", p.display()))?
            .len();
        total_size += len;
        println!("{len:>9}  {}", p.display());
    }
    println!("{total_size:>9}  total");
    Ok(())
}

// ---------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: nearest finite code by exhaustive search (ties to the even
    /// code, i.e. even mantissa), saturating at the largest finite code.
    fn nearest_code(x: f32, decode: fn(u8) -> f32, max_code: u8) -> u8 {
        let a = (x as f64).abs();
        let mut best = 0u8;
        let mut best_d = f64::INFINITY;
        for c in 0..=max_code {
            let d = (decode(c) as f64 - a).abs();
            if d < best_d || (d == best_d && c % 2 == 0) {
                best = c;
                best_d = d;
            }
        }
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        sign | best
    }

    fn check_against_reference(encode: fn(f32) -> u8, decode: fn(u8) -> f32, max_code: u8) {
        let max = decode(max_code);
        let mut xs = Vec::new();
        // Every code, the midpoints between neighbours, and 1 ulp either side.
        for c in 0..max_code {
            let (a, b) = (decode(c), decode(c + 1));
            let mid = ((a as f64 + b as f64) / 2.0) as f32;
            for v in [a, b, mid, mid.next_down(), mid.next_up()] {
                xs.push(v);
                xs.push(-v);
            }
        }
        let mut rng = SplitMix64(7);
        for _ in 0..200_000 {
            let u = (rng.next() >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            let e = (rng.next() % 40) as i32 - 30;
            let v = u * 2f32.powi(e) * max;
            xs.push(if rng.next() & 1 == 0 { v } else { -v });
        }
        for x in xs {
            if x.abs() > max {
                continue; // saturation checked separately
            }
            assert_eq!(
                encode(x),
                nearest_code(x, decode, max_code),
                "x = {x:e} ({:#010x})",
                x.to_bits()
            );
        }
    }

    #[test]
    fn e4m3_edges() {
        assert_eq!(f32_to_e4m3(0.0), 0x00);
        assert_eq!(f32_to_e4m3(-0.0), 0x80);
        assert_eq!(f32_to_e4m3(448.0), 0x7e);
        assert_eq!(f32_to_e4m3(-448.0), 0xfe);
        assert_eq!(f32_to_e4m3(1.0), 0x38);
        assert_eq!(f32_to_e4m3(-2.0), 0xc0);
        // Saturation: 464 is the tie between 448 and (non-existent) 480.
        assert_eq!(f32_to_e4m3(464.0), 0x7e);
        assert_eq!(f32_to_e4m3(479.0), 0x7e);
        assert_eq!(f32_to_e4m3(500.0), 0x7e);
        assert_eq!(f32_to_e4m3(-1e30), 0xfe);
        assert_eq!(f32_to_e4m3(f32::MAX), 0x7e);
        assert_eq!(f32_to_e4m3(f32::INFINITY), 0x7e);
        assert_eq!(f32_to_e4m3(f32::NEG_INFINITY), 0xfe);
        // NaN.
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7f);
        assert_eq!(f32_to_e4m3(-f32::NAN), 0xff);
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
        // Subnormals: 2^-9 is the smallest, 7 * 2^-9 the largest; 2^-6 the smallest normal.
        let t = 2f32.powi(-9);
        assert_eq!(f32_to_e4m3(t), 0x01);
        assert_eq!(f32_to_e4m3(-t), 0x81);
        assert_eq!(f32_to_e4m3(7.0 * t), 0x07);
        assert_eq!(f32_to_e4m3(2f32.powi(-6)), 0x08);
        assert_eq!(e4m3_to_f32(0x01), t);
        assert_eq!(e4m3_to_f32(0x07), 7.0 * t);
        // Ties to even.
        assert_eq!(f32_to_e4m3(0.5 * t), 0x00); // 0 | 1 -> 0
        assert_eq!(f32_to_e4m3(0.5 * t + f32::EPSILON * t), 0x01);
        assert_eq!(f32_to_e4m3(1.5 * t), 0x02); // 1 | 2 -> 2
        assert_eq!(f32_to_e4m3(2.5 * t), 0x02); // 2 | 3 -> 2
        assert_eq!(f32_to_e4m3(7.5 * t), 0x08); // largest subnormal | smallest normal
        assert_eq!(f32_to_e4m3(1.0625), 0x38); // 1.0 | 1.125 -> 1.0
        assert_eq!(f32_to_e4m3(1.1875), 0x3a); // 1.125 | 1.25 -> 1.25
        assert_eq!(f32_to_e4m3(1.0625f32.next_up()), 0x39);
        assert_eq!(f32_to_e4m3(15.5), 0x58); // 15 | 16 -> 16 (exponent carry)
                                             // Tiny values and f32 subnormals flush to (signed) zero.
        assert_eq!(f32_to_e4m3(1e-30), 0x00);
        assert_eq!(f32_to_e4m3(-f32::from_bits(1)), 0x80);
        // Every non-NaN code round-trips.
        for c in 0..=255u8 {
            if c & 0x7f != 0x7f {
                assert_eq!(f32_to_e4m3(e4m3_to_f32(c)), c, "code {c:#04x}");
            }
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
    }

    #[test]
    fn e4m3_matches_exhaustive_nearest() {
        check_against_reference(f32_to_e4m3, e4m3_to_f32, 0x7e);
    }

    #[test]
    fn e5m2_edges() {
        assert_eq!(f32_to_e5m2(0.0), 0x00);
        assert_eq!(f32_to_e5m2(-0.0), 0x80);
        assert_eq!(f32_to_e5m2(57344.0), 0x7b);
        assert_eq!(f32_to_e5m2(-57344.0), 0xfb);
        assert_eq!(e5m2_to_f32(0x7b), 57344.0);
        assert_eq!(f32_to_e5m2(1.0), 0x3c);
        // Finite overflow saturates (61440 is the tie with 65536 = inf); inf stays inf.
        assert_eq!(f32_to_e5m2(61440.0), 0x7b);
        assert_eq!(f32_to_e5m2(1e10), 0x7b);
        assert_eq!(f32_to_e5m2(f32::INFINITY), 0x7c);
        assert_eq!(f32_to_e5m2(f32::NEG_INFINITY), 0xfc);
        assert_eq!(e5m2_to_f32(0x7c), f32::INFINITY);
        assert_eq!(e5m2_to_f32(0xfc), f32::NEG_INFINITY);
        assert_eq!(f32_to_e5m2(f32::NAN), 0x7f);
        assert_eq!(f32_to_e5m2(-f32::NAN), 0xff);
        for c in [0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff] {
            assert!(e5m2_to_f32(c).is_nan());
        }
        // Subnormals: 2^-16 .. 3 * 2^-16; 2^-14 the smallest normal.
        let t = 2f32.powi(-16);
        assert_eq!(f32_to_e5m2(t), 0x01);
        assert_eq!(f32_to_e5m2(3.0 * t), 0x03);
        assert_eq!(f32_to_e5m2(2f32.powi(-14)), 0x04);
        assert_eq!(f32_to_e5m2(0.5 * t), 0x00);
        assert_eq!(f32_to_e5m2(1.5 * t), 0x02);
        assert_eq!(f32_to_e5m2(3.5 * t), 0x04);
        assert_eq!(f32_to_e5m2(1.125), 0x3c); // 1.0 | 1.25 -> 1.0
        assert_eq!(f32_to_e5m2(1.375), 0x3e); // 1.25 | 1.5 -> 1.5
        assert_eq!(f32_to_e5m2(-1.375), 0xbe);
        for c in 0..=255u8 {
            if c & 0x7f <= 0x7c {
                assert_eq!(f32_to_e5m2(e5m2_to_f32(c)), c, "code {c:#04x}");
            }
        }
    }

    #[test]
    fn e5m2_matches_exhaustive_nearest() {
        check_against_reference(f32_to_e5m2, e5m2_to_f32, 0x7b);
    }

    #[test]
    fn qk_permutation_inverse() {
        // One head of 6 rows: reshape (2, 3) -> swapaxes -> (3, 2).
        let w: Vec<u32> = (0..6).collect();
        assert_eq!(llama_cpp_permute_rows(&w, 6, 1), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(unpermute_rows(&[0u32, 3, 1, 4, 2, 5], 6, 1).unwrap(), w);
        // Three heads of 8 rows, 5 columns (rows carry their columns along).
        let (rows, cols, heads) = (24, 5, 3);
        let w: Vec<u32> = (0..rows * cols).map(|i| i as u32).collect();
        let p = llama_cpp_permute_rows(&w, rows, heads);
        assert_ne!(p, w);
        assert_eq!(&p[cols..2 * cols], &w[4 * cols..5 * cols]); // head 0 row 1 <- row hd/2
        assert_eq!(unpermute_rows(&p, rows, heads).unwrap(), w);
        // GQA sizes: q has 9 heads, k 3, head_dim 64.
        for heads in [9, 3] {
            let rows = heads * 64;
            let w: Vec<u32> = (0..rows * 2).map(|i| i as u32).collect();
            let p = llama_cpp_permute_rows(&w, rows, heads);
            assert_eq!(unpermute_rows(&p, rows, heads).unwrap(), w);
        }
        assert!(unpermute_rows(&[0u32; 10], 10, 3).is_err());
        assert!(unpermute_rows(&[0u32; 0], 0, 1).is_err());
    }

    fn f16le(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    #[test]
    fn q4_1_block() {
        let mut b = Vec::new();
        b.extend(f16le(0.5));
        b.extend(f16le(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = ggml_dequantize(3, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], 0.5 * j as f32 - 1.0);
            assert_eq!(y[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
        // Two blocks, and a non-trivial d: x = q * d + m in f32.
        let d = f16::from_f32(0.0123).to_f32();
        let m = f16::from_f32(-0.0456).to_f32();
        let mut b2 = b.clone();
        b2.extend(f16le(0.0123));
        b2.extend(f16le(-0.0456));
        b2.extend([0x5au8; 16]);
        let y = ggml_dequantize(3, &b2, 64).unwrap();
        assert_eq!(y[32], 10.0 * d + m);
        assert_eq!(y[48], 5.0 * d + m);
        assert!(ggml_dequantize(3, &b, 64).is_err());
    }

    #[test]
    fn q8_0_and_q4_0_blocks() {
        let mut b = Vec::new();
        b.extend(f16le(0.25));
        b.extend((0..32).map(|j| (j as i8 * 4 - 64) as u8)); // -64 ..= 60
        b[2] = 0x80; // -128
        let y = ggml_dequantize(8, &b, 32).unwrap();
        assert_eq!(y[0], -32.0);
        for (j, &v) in y.iter().enumerate().skip(1) {
            assert_eq!(v, (j as f32 * 4.0 - 64.0) * 0.25);
        }
        let mut b = Vec::new();
        b.extend(f16le(2.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = ggml_dequantize(2, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 2.0);
        }
        assert!(ggml_dequantize(8, &b, 32).is_err());
        assert!(ggml_dequantize(99, &b, 32).is_err());
    }

    /// A tiny GGUF v3: a few KV pairs and two tensors (Q8_0 [32], F32 [2, 3]).
    fn tiny_gguf() -> Vec<u8> {
        fn s(b: &mut Vec<u8>, v: &str) {
            b.extend((v.len() as u64).to_le_bytes());
            b.extend(v.as_bytes());
        }
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "llama.attention.head_count");
        b.extend(4u32.to_le_bytes());
        b.extend(9u32.to_le_bytes());
        s(&mut b, "llama.rope.freq_base");
        b.extend(6u32.to_le_bytes());
        b.extend(100000f32.to_le_bytes());
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "<s>");
        s(&mut b, "hé");
        // tensor infos
        s(&mut b, "blk.0.attn_norm.weight");
        b.extend(1u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        s(&mut b, "token_embd.weight");
        b.extend(2u32.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(64u64.to_le_bytes());
        b.resize(b.len().next_multiple_of(32), 0);
        let mut q8 = f16le(0.5).to_vec();
        q8.extend((0..32).map(|j| j as u8));
        q8.resize(64, 0);
        b.extend(q8);
        for v in 0..6 {
            b.extend((v as f32).to_le_bytes());
        }
        b
    }

    #[test]
    fn gguf_parse_tiny_and_truncated() {
        let buf = tiny_gguf();
        let g = parse_gguf(&buf).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get_str("general.architecture"), Some("llama"));
        assert_eq!(g.get_u64("llama.attention.head_count").unwrap(), Some(9));
        assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), Some(100000.0));
        assert_eq!(
            g.get("tokenizer.ggml.tokens"),
            Some(&GVal::Arr(vec![
                GVal::Str("<s>".into()),
                GVal::Str("hé".into())
            ]))
        );
        let (shape, n, raw) = g.tensor_data(&g.tensors[0]).unwrap();
        assert_eq!((shape, n), (vec![32], 32));
        let y = ggml_dequantize(8, raw, n).unwrap();
        assert_eq!(y[31], 15.5);
        let (shape, n, raw) = g.tensor_data(&g.tensors[1]).unwrap();
        assert_eq!((shape.clone(), n), (vec![2, 3], 6));
        assert_eq!(
            ggml_dequantize(0, raw, n).unwrap(),
            vec![0., 1., 2., 3., 4., 5.]
        );
        assert_eq!(
            map_gguf_name("token_embd.weight").unwrap().0,
            "model.embed_tokens.weight"
        );
        assert_eq!(
            map_gguf_name("blk.12.attn_k.weight").unwrap(),
            (
                "model.layers.12.self_attn.k_proj.weight".to_string(),
                (1, 12, 2),
                Some(QkPerm::K)
            )
        );
        assert!(map_gguf_name("blk.x.attn_k.weight").is_none());
        // Every truncation is an error (or a file whose tensor data is missing), never a panic.
        for len in 0..buf.len() {
            if let Ok(g) = parse_gguf(&buf[..len]) {
                assert!(
                    g.tensors.iter().any(|t| g.tensor_data(t).is_err()),
                    "len {len}"
                );
            }
        }
        // Garbage counts must not allocate wildly.
        let mut bad = buf.clone();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_gguf(&bad).is_err());
    }

    fn tmp_file(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("corpus-test-{}-{name}", std::process::id()))
    }

    #[test]
    fn writer_keeps_order_and_pads_header() {
        let st = StFile {
            metadata: Some(BTreeMap::from([("format".to_string(), "pt".to_string())])),
            tensors: vec![
                Tensor::new("z.first", Dtype::U8, vec![3], vec![1, 2, 3]).unwrap(),
                Tensor::new(
                    "a.second",
                    Dtype::F32,
                    vec![],
                    1.5f32.to_le_bytes().to_vec(),
                )
                .unwrap(),
                Tensor::new("m.empty", Dtype::BF16, vec![0, 4], vec![]).unwrap(),
                Tensor::new(
                    "b.\"quoted\"",
                    Dtype::I64,
                    vec![1],
                    7i64.to_le_bytes().to_vec(),
                )
                .unwrap(),
            ],
        };
        let p = tmp_file("order.safetensors");
        write_safetensors(&p, &st).unwrap();
        let buf = fs::read(&p).unwrap();
        fs::remove_file(&p).unwrap();
        let n = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert!(buf[8..8 + n].starts_with(b"{\"__metadata__\":{\"format\":\"pt\"},\"z.first\":"));
        assert_eq!(parse_safetensors(&buf).unwrap(), st);
        let sf = SafeTensors::deserialize(&buf).unwrap();
        assert_eq!(sf.tensor("a.second").unwrap().data(), 1.5f32.to_le_bytes());
        // Bad inputs are errors.
        assert!(parse_safetensors(&buf[..buf.len() - 1]).is_err());
        assert!(parse_safetensors(b"").is_err());
        let dup = StFile {
            metadata: None,
            tensors: vec![st.tensors[0].clone(), st.tensors[0].clone()],
        };
        assert!(header_bytes(&dup).is_err());
    }

    #[test]
    fn cast_fp8_puts_scale_after_tensor() {
        let x: Vec<f32> = (0..10).map(|i| i as f32 - 4.5).collect();
        let src = StFile {
            metadata: None,
            tensors: vec![
                Tensor::new("w", Dtype::F32, vec![2, 5], f32_bytes(&x)).unwrap(),
                Tensor::new("ids", Dtype::I64, vec![1], 3i64.to_le_bytes().to_vec()).unwrap(),
                Tensor::new("zero", Dtype::F32, vec![2], vec![0; 8]).unwrap(),
            ],
        };
        let out = cast_file(&src, CastTo::Fp8).unwrap();
        let names: Vec<&str> = out.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["w", "w_scale", "ids", "zero", "zero_scale"]);
        let s = out.tensors[1].to_f32().unwrap()[0];
        assert_eq!(s, 4.5 / 448.0);
        assert_eq!(out.tensors[0].data[0], 0xfe); // -4.5 / s = -448
        assert_eq!(out.tensors[4].to_f32().unwrap(), vec![1.0]);
        let bf = cast_file(&src, CastTo::Bf16).unwrap();
        assert_eq!(bf.tensors[0].dtype, Dtype::BF16);
        assert_eq!(bf.tensors[1], src.tensors[1]);
    }

    #[test]
    fn fp8_block_shapes_and_error() {
        let (rows, cols) = (130, 257);
        let mut rng = SplitMix64(1);
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| ((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1)
            .collect();
        let src = StFile {
            metadata: None,
            tensors: vec![
                Tensor::new("model.norm.weight", Dtype::BF16, vec![4], vec![0; 8]).unwrap(),
                Tensor::new(
                    "l.q_proj.weight",
                    Dtype::BF16,
                    vec![rows, cols],
                    bf16_bytes(&x),
                )
                .unwrap(),
            ],
        };
        let out = fp8_block_file(&src).unwrap();
        assert_eq!(out.tensors[0], src.tensors[0]);
        assert_eq!(out.tensors[1].dtype, Dtype::F8_E4M3);
        assert_eq!(out.tensors[2].name, "l.q_proj.weight_scale_inv");
        assert_eq!(out.tensors[2].shape, vec![2, 3]);
        let s = out.tensors[2].to_f32().unwrap();
        let xb = src.tensors[1].to_f32().unwrap();
        for r in 0..rows {
            for c in 0..cols {
                let v = e4m3_to_f32(out.tensors[1].data[r * cols + c]) * s[(r / 128) * 3 + c / 128];
                let want = xb[r * cols + c];
                assert!(
                    (v - want).abs() <= want.abs() / 16.0 + s[0] * 2f32.powi(-9),
                    "{v} vs {want}"
                );
            }
        }
    }
}
