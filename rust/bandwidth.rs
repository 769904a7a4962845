//! This machine's memory read bandwidth: the roofline that generation (which reads every
//! weight once per token) is measured against in `bench/compare.py`.

use crate::error::{Error, Result};
use crate::quant::simd::{has_avx2, has_avx512, prefetch_ahead};
use rayon::prelude::*;
use std::simd::prelude::*;
use std::time::Instant;

/// Best bytes per second over `passes` reads of a `bytes` buffer (make it larger than any
/// cache) split evenly over `threads` threads, each summing its part with the widest loads
/// the kernels use here (64 bytes with AVX-512, 32 with AVX2).
/// Passes alternate with and without software prefetch, and the faster counts: the aim is
/// the most this machine can read, not what one access pattern gets.
pub fn read_bandwidth(bytes: usize, threads: usize, passes: usize) -> Result<f64> {
    if bytes < 1 << 20 || threads == 0 || passes == 0 {
        return Err(Error::Invalid(
            "read_bandwidth needs at least 1 MiB, 1 thread and 1 pass".into(),
        ));
    }
    // Written once, so every page is really there before the clock starts.
    let buf = vec![u64x8::splat(1); bytes / 64];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start {threads} threads: {e}")))?;
    let part = buf.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for pass in 0..2 * passes {
        let prefetch = pass % 2 == 0;
        let start = Instant::now();
        let sum: u64 = pool.install(|| buf.par_chunks(part).map(|c| sum_widest(c, prefetch)).sum());
        best = best.min(start.elapsed().as_secs_f64());
        sink = sink.wrapping_add(sum);
    }
    std::hint::black_box(sink);
    Ok((buf.len() * 64) as f64 / best)
}

/// [`sum_part`] built for the widest vectors this CPU has.
fn sum_widest(c: &[u64x8], prefetch: bool) -> u64 {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if has_avx512() {
            // SAFETY: checked just above.
            return unsafe { sum_avx512(c, prefetch) };
        }
        if has_avx2() {
            // SAFETY: checked just above.
            return unsafe { sum_avx2(c, prefetch) };
        }
    }
    sum_part(c, prefetch)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(c: &[u64x8], prefetch: bool) -> u64 {
    sum_part(c, prefetch)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(c: &[u64x8], prefetch: bool) -> u64 {
    sum_part(c, prefetch)
}

#[inline(always)]
fn sum_part(c: &[u64x8], prefetch: bool) -> u64 {
    // Four independent accumulators: the adds never wait on each other.
    let mut acc = [u64x8::splat(0); 4];
    let (quads, rest) = c.as_chunks::<4>();
    for q in quads {
        if prefetch {
            prefetch_ahead(q.as_ptr().cast(), 256);
        }
        for k in 0..4 {
            acc[k] += q[k];
        }
    }
    rest.iter()
        .fold(acc[0] + acc[1] + acc[2] + acc[3], |a, v| a + v)
        .reduce_sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_something_plausible() {
        let bw = super::read_bandwidth(8 << 20, 1, 2).unwrap();
        assert!(bw > 1e8 && bw.is_finite(), "{bw}");
        assert!(super::read_bandwidth(100, 1, 1).is_err());
    }
}
