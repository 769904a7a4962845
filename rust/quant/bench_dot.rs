//! Single-row dot kernels per instruction-set level on a 4096 x 4096 matrix, one thread:
//! weight GB/s (best of 5 passes). Not a test of anything, a measurement:
//! `cargo test --release --lib quant::bench_dot -- --ignored --nocapture`.

use super::block::{view, view_mut, Family};
use super::tests_util::{Rng, TestActivation};
use super::{bf16, dispatch, fp16, iq4_nl, iq4_xs, q2_k, q4_0, q4_k, q5_0, q5_1, q6_k};
use std::time::Instant;

const N: usize = 4096;

fn weights<B: Family>(rng: &mut Rng) -> Vec<u8> {
    let wf: Vec<f32> = (0..N * N).map(|_| rng.normal() * 0.02).collect();
    let mut w = vec![0u8; N * N / B::QK * std::mem::size_of::<B>()];
    dispatch::quantize::<B>(&wf, view_mut(&mut w));
    w
}

/// Best seconds for one pass over the matrix with `dot`.
fn time_rows<B: Family>(w: &[u8], x: &[B::Act], dot: impl Fn(&[B], &[B::Act]) -> f32) -> f64 {
    let rows: &[B] = view(w);
    let per_row = rows.len() / N;
    let mut best = f64::INFINITY;
    let mut sink = 0f32;
    for _ in 0..5 {
        let t = Instant::now();
        for r in rows.chunks_exact(per_row) {
            sink += dot(r, x);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    best
}

fn bench<B: Family>(name: &str, x: &[B::Act]) {
    let mut rng = Rng::new(1);
    let w = weights::<B>(&mut rng);
    let gbs = |s: f64| w.len() as f64 / s / 1e9;
    let mut line = format!(
        "{name:7} portable {:6.1} GB/s",
        gbs(time_rows::<B>(&w, x, dispatch::dot_portable::<B>))
    );
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if super::simd::has_avx2() {
            // SAFETY: checked just above.
            let s = time_rows::<B>(&w, x, |r, x| unsafe { dispatch::dot_avx2::<B>(r, x) });
            line += &format!("  avx2 {:6.1} GB/s", gbs(s));
        }
        if super::simd::has_avx512() {
            // SAFETY: checked just above.
            let s = time_rows::<B>(&w, x, |r, x| unsafe { dispatch::dot_avx512::<B>(r, x) });
            line += &format!("  avx512 {:6.1} GB/s", gbs(s));
        }
    }
    if B::MULTI_ROW {
        // Eight activation rows per weight row (prompt processing), as weight GB/s per token.
        let aux = B::row_aux(x).unwrap();
        let per_row = view::<B>(&w).len() / N;
        let mut out = vec![[0f32; 8]; N];
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            dispatch::dot_rows::<B, 8>(view(&w), per_row, [x; 8], Some([&aux; 8]), &mut out);
            best = best.min(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(&out);
        line += &format!("  8 rows {:6.1} GB/s/token", gbs(best / 8.0));
        // One activation row through the same entry point: the generation path.
        let mut out = vec![[0f32; 1]; N];
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            dispatch::dot_rows::<B, 1>(view(&w), per_row, [x], Some([&aux]), &mut out);
            best = best.min(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(&out);
        line += &format!("  1 row {:6.1} GB/s", gbs(best));
    }
    eprintln!("{line}");
}

fn act<A: TestActivation>(rng: &mut Rng) -> Vec<A> {
    A::quantize_units(&(0..N).map(|_| rng.normal()).collect::<Vec<_>>())
}

#[test]
#[ignore]
fn dot_levels_4096x4096() {
    let mut rng = Rng::new(2);
    let x8 = act::<super::q8_0::BlockQ8_0>(&mut rng);
    let xk = act::<super::q8_k::BlockQ8K>(&mut rng);
    let xf: Vec<f32> = (0..N).map(|_| rng.normal()).collect();
    bench::<q4_0::BlockQ4_0>("Q4_0", &x8);
    bench::<super::q8_0::BlockQ8_0>("Q8_0", &x8);
    bench::<q5_0::BlockQ5_0>("Q5_0", &x8);
    bench::<q5_1::BlockQ5_1>("Q5_1", &x8);
    bench::<iq4_nl::BlockIq4Nl>("IQ4_NL", &x8);
    bench::<iq4_xs::BlockIq4Xs>("IQ4_XS", &xk);
    bench::<q2_k::BlockQ2K>("Q2_K", &xk);
    bench::<q4_k::BlockQ4K>("Q4_K", &xk);
    bench::<q6_k::BlockQ6K>("Q6_K", &xk);
    bench::<fp16::F16>("F16", &xf);
    bench::<bf16::BF16>("BF16", &xf);
}
