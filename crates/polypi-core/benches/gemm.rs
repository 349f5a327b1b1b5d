//! GEMM and im2col benchmarks (OWNER: ring helper).
//!
//! Run: `cargo bench -p polypi-core --bench gemm -- --warm-up-time 1 --measurement-time 3`
//! (append a filter such as `gemm/128x576x1024` to run a subset).
//!
//! - `gemm/<m>x<k>x<n>/<kernel>-<a>/st`: one thread (`gemm_packed_with` with `parallel = false`).
//! - `gemm/<m>x<k>x<n>/<kernel>-<a>/mt`: rayon's global pool (as `gemm_packed` runs it; the
//!   thread count follows `RAYON_NUM_THREADS`, default: one per logical CPU).
//! - `<a>` = `w`: `A` holds fixed-point weights (`|a| < 2^20`, as in the server's online GEMM:
//!   AVX2 takes its narrow path); `full`: `A` holds full-range ring elements (AVX2's wide path).
//!
//! Every kernel the CPU supports is measured (`avx512`, `avx2`, `scalar`; on an AVX-512 machine
//! the AVX2 kernels run too, which is how the AVX2 path is measured there); the dispatched one
//! is printed first. `B` is packed once outside the timed loop (weights are packed once per
//! session). Throughput is `Elements(m*k*n)`, so criterion's "elem/s" are multiply-accumulates
//! per second (MAC/s). `im2col/64x32x32_k3p1` unfolds one 64-channel 32x32 input for a 3x3,
//! padding-1 convolution (elements = entries of the column matrix); `im2col/packed_...` writes
//! the same matrix directly in the packed GEMM layout (`im2col_packed`).
//! `depthwise/<c>x<h>x<w>_s<stride>/conv_ring` runs one of MobileNetV2's 3x3 depthwise
//! convolutions (padding 1, batch 1) through `conv_ring` (the direct kernel of
//! `ring::depthwise`, on the unit `POLYPI_GEMM_KERNEL` selects; elements = multiply-accumulates).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use polypi_core::model::ConvGeom;
use polypi_core::mpc::ops::conv_ring;
use polypi_core::ring::gemm::{gemm_packed_with, GemmKernel, PackedB};
use polypi_core::ring::im2col;
use polypi_core::ring::im2col::im2col_packed;
use polypi_core::ring::RingTensor;

fn rand_vec(len: usize, seed: u64) -> Vec<u64> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        })
        .collect()
}

fn bench_gemm(c: &mut Criterion) {
    eprintln!(
        "gemm kernel dispatched: {} (available: {:?}); rayon threads: {}",
        polypi_core::ring::gemm_kernel_name(),
        GemmKernel::available().iter().map(|k| k.name()).collect::<Vec<_>>(),
        rayon::current_num_threads()
    );
    for &(m, k, n) in &[(128usize, 576usize, 1024usize), (512, 512, 512), (256, 2304, 784)] {
        let full = rand_vec(m * k, 1);
        let weights: Vec<u64> = full.iter().map(|&x| ((x as i64) >> 44) as u64).collect();
        let b = rand_vec(k * n, 2);
        let pb = PackedB::pack(&b, k, n);
        let mut out = vec![0u64; m * n];
        let mut group = c.benchmark_group(format!("gemm/{m}x{k}x{n}"));
        group.throughput(Throughput::Elements((m * k * n) as u64));
        group.sample_size(10);
        for kernel in GemmKernel::available() {
            for (atag, a) in [("w", &weights), ("full", &full)] {
                for (tag, parallel) in [("st", false), ("mt", true)] {
                    let id = BenchmarkId::new(format!("{}-{atag}", kernel.name()), tag);
                    group.bench_function(id, |bch| {
                        bch.iter(|| {
                            gemm_packed_with(black_box(a), &pb, &mut out, m, kernel, parallel);
                            black_box(&out);
                        })
                    });
                }
            }
        }
        group.finish();
    }
}

fn bench_im2col(c: &mut Criterion) {
    let geom = ConvGeom {
        c_in: 64,
        h: 32,
        w: 32,
        c_out: 64,
        kh: 3,
        kw: 3,
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let x = rand_vec(64 * 32 * 32, 3);
    let mut group = c.benchmark_group("im2col");
    let elems = (64 * 9) * (geom.out_h() * geom.out_w());
    group.throughput(Throughput::Elements(elems as u64));
    group.bench_function("64x32x32_k3p1", |bch| {
        bch.iter(|| black_box(im2col(black_box(&x), 1, &geom, 0)))
    });
    group.bench_function("packed_64x32x32_k3p1", |bch| {
        bch.iter(|| black_box(im2col_packed(black_box(&x), 1, &geom, 0)))
    });
    group.finish();
}

/// MobileNetV2's depthwise convolutions (3x3, padding 1, batch 1), `(channels, size, stride)`.
const DEPTHWISE_SHAPES: [(usize, usize, usize); 5] =
    [(32, 112, 1), (96, 112, 2), (144, 56, 1), (576, 14, 1), (960, 7, 1)];

fn bench_depthwise(c: &mut Criterion) {
    for &(ch, size, stride) in &DEPTHWISE_SHAPES {
        let geom = ConvGeom {
            c_in: ch,
            h: size,
            w: size,
            c_out: ch,
            kh: 3,
            kw: 3,
            stride,
            padding: 1,
            groups: ch,
        };
        let x = RingTensor { shape: vec![1, ch, size, size], data: rand_vec(ch * size * size, 4) };
        let weights: Vec<Vec<u64>> = rand_vec(ch * 9, 5).chunks(9).map(|w| w.to_vec()).collect();
        let mut group = c.benchmark_group(format!("depthwise/{ch}x{size}x{size}_s{stride}"));
        group.throughput(Throughput::Elements((ch * geom.out_h() * geom.out_w() * 9) as u64));
        group.sample_size(10);
        group.bench_function("conv_ring", |bch| {
            bch.iter(|| black_box(conv_ring(black_box(&x), &weights, &geom, "dw").unwrap()))
        });
        group.finish();
    }
}

criterion_group!(benches, bench_gemm, bench_im2col, bench_depthwise);
criterion_main!(benches);
