//! Codec throughput, one core: encode and decode of real BF16 / F32 / FP8 weights per chunk,
//! with the AVX-512 kernels, as on a CPU with AVX2 but not AVX-512, and with the portable decoders.
//!
//! Data: the largest tensor of each fixture, or of the corpus file named by
//! `BIGSMALL_BENCH_FILE` (e.g. `corpus/minilm-bf16.safetensors`), cut into 1 MiB chunks.
//! Run: `cargo bench --bench codecs`. The `md5` group (tensor receipts, multi-buffer MD5 against
//! md-5) runs alone with `cargo bench --bench codecs -- md5`.

use std::hint::black_box;

use bigsmall::codec::{decode_chunk, encode_chunk, Effort, ElemKind};
use bigsmall::format::CHUNK_BYTES;
use bigsmall::model::safetensors::{elem_kind, SafetensorsFile};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Up to 16 MiB of chunks from the biggest tensor of the file.
fn chunks_of(path: &str) -> (ElemKind, Vec<Vec<u8>>) {
    let f = SafetensorsFile::open(path.as_ref()).expect("bench input opens");
    let t = f.tensors.iter().max_by_key(|t| t.len()).expect("a tensor");
    let kind = elem_kind(t.dtype);
    let step = CHUNK_BYTES / kind.width() * kind.width();
    let chunks = f
        .tensor_bytes(t)
        .chunks(step)
        .take(16)
        .map(|c| c.to_vec())
        .collect();
    (kind, chunks)
}

fn bench_file(c: &mut Criterion, label: &str, path: &str) {
    let (kind, chunks) = chunks_of(path);
    let raw: usize = chunks.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group(label);
    g.throughput(Throughput::Bytes(raw as u64));
    g.sample_size(20);
    for effort in [Effort::Balanced, Effort::Inference] {
        let blobs: Vec<Vec<u8>> = chunks
            .iter()
            .map(|ch| encode_chunk(kind, ch, effort))
            .collect();
        let coded: usize = blobs.iter().map(Vec::len).sum();
        eprintln!(
            "{label} {}: {raw} raw bytes -> {coded} coded ({:.2}%)",
            effort.name(),
            coded as f64 * 100.0 / raw as f64
        );
        g.bench_function(format!("encode/{}", effort.name()), |b| {
            b.iter(|| {
                for ch in &chunks {
                    black_box(encode_chunk(kind, black_box(ch), effort));
                }
            })
        });
        let mut out = vec![0u8; CHUNK_BYTES];
        // "simd": what this CPU runs (AVX-512 here); "avx2": as on a CPU without AVX-512.
        let paths: &[&str] = &["simd", "avx2", "portable"];
        for &name in paths {
            let portable = name == "portable";
            #[cfg(target_arch = "x86_64")]
            {
                use bigsmall::codec::simd;
                if name == "simd" && !simd::cpu_has_avx512() {
                    continue;
                }
                simd::force_portable(portable);
                if name == "avx2" {
                    simd::force_avx2(true);
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            if !portable {
                continue;
            }
            g.bench_function(format!("decode/{}/{name}", effort.name()), |b| {
                b.iter(|| {
                    for (blob, ch) in blobs.iter().zip(&chunks) {
                        decode_chunk(kind, black_box(blob), &mut out[..ch.len()]).unwrap();
                    }
                })
            });
        }
        #[cfg(target_arch = "x86_64")]
        bigsmall::codec::simd::force_portable(false);
    }
    g.finish();
}

fn codecs(c: &mut Criterion) {
    if let Ok(path) = std::env::var("BIGSMALL_BENCH_FILE") {
        bench_file(c, "corpus", &path);
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    bench_file(
        c,
        "bf16",
        &format!("{root}/fixtures/minilm-bf16.safetensors"),
    );
    bench_file(c, "f32", &format!("{root}/fixtures/minilm-f32.safetensors"));
    bench_file(c, "fp8", &format!("{root}/fixtures/minilm-fp8.safetensors"));
}

/// Tensor receipts: md-5 on one 64 MiB stream against `md5x::update_many` hashing the same
/// 64 MiB as many jobs, in AVX-512 lanes where the CPU has them. Content does not matter.
fn md5(c: &mut Criterion) {
    use bigsmall::integrity::md5x;
    use md5::Digest;

    const TOTAL: usize = 64 << 20;
    let data: Vec<u8> = (0..TOTAL as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut g = c.benchmark_group("md5");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);
    g.bench_function("md-5/1x64MiB", |b| {
        b.iter(|| black_box(md5::Md5::digest(black_box(&data))))
    });
    g.bench_function("md5x/1x64MiB", |b| {
        b.iter(|| {
            let mut h = md5x::Md5::new();
            h.update(black_box(&data));
            black_box(h.finalize())
        })
    });
    for jobs in [64, 16, 2] {
        let msgs: Vec<&[u8]> = data.chunks(TOTAL / jobs).collect();
        g.bench_function(format!("update_many/{jobs}x{}MiB", 64 / jobs), |b| {
            b.iter(|| {
                let mut hashers = vec![md5x::Md5::new(); jobs];
                let mut work: Vec<(&mut md5x::Md5, &[u8])> =
                    hashers.iter_mut().zip(msgs.iter().copied()).collect();
                md5x::update_many(black_box(&mut work));
                black_box(hashers.into_iter().map(md5x::Md5::finalize).count())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codecs, md5);
criterion_main!(benches);
