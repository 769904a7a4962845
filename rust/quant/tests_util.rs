//! Test helpers: a tiny deterministic PRNG, inputs that numpy can reproduce exactly, and the
//! known-answer hashes computed with the `gguf` Python package.

use super::block::{view, view_mut, Activation, Family, Pod};
use super::dispatch;
use super::fp16::{f16_bits_to_f32, F16};
use super::fp32::F32;
use super::q8_0::BlockQ8_0;
use super::q8_k::{self, BlockQ8K};

/// What the family checks below need of an activation type besides [`Activation`].
pub(crate) trait TestActivation: Activation + Pod {
    /// A row of f32 (whole units) as units, as `Activation::prepare` makes them.
    fn quantize_units(x: &[f32]) -> Vec<Self>;
    /// The units' values.
    fn dequantize_units(units: &[Self]) -> Vec<f32>;
    /// Makes a unit of random bytes valid: a finite random scale, and any invariant the type
    /// keeps (Q8_K's `bsums`).
    fn fix_random(&mut self, rng: &mut Rng);
    /// Sets the scale to the value of these f16 bits (and keeps the invariants).
    fn set_scale_half(&mut self, h: u16);
}

impl TestActivation for BlockQ8_0 {
    fn quantize_units(x: &[f32]) -> Vec<Self> {
        let mut out = vec![<Self as Activation>::ZERO; x.len() / 32];
        dispatch::quantize::<BlockQ8_0>(x, &mut out);
        out
    }
    fn dequantize_units(units: &[Self]) -> Vec<f32> {
        let mut y = vec![0f32; units.len() * 32];
        dispatch::dequantize(units, &mut y);
        y
    }
    fn fix_random(&mut self, rng: &mut Rng) {
        self.d = finite_half(rng);
    }
    fn set_scale_half(&mut self, h: u16) {
        self.d = F16(h.to_le_bytes());
    }
}

impl TestActivation for BlockQ8K {
    fn quantize_units(x: &[f32]) -> Vec<Self> {
        let mut out = vec![<Self as Activation>::ZERO; x.len() / q8_k::QK_K];
        q8_k::quantize_row(x, &mut out);
        out
    }
    fn dequantize_units(units: &[Self]) -> Vec<f32> {
        let mut y = vec![0f32; units.len() * q8_k::QK_K];
        for (u, o) in units.iter().zip(y.chunks_exact_mut(q8_k::QK_K)) {
            u.dequantize(o);
        }
        y
    }
    fn fix_random(&mut self, rng: &mut Rng) {
        self.set_scale_half(u16::from_le_bytes(finite_half(rng).0));
    }
    fn set_scale_half(&mut self, h: u16) {
        self.d = F32(f16_bits_to_f32(h).to_le_bytes());
        for j in 0..q8_k::QK_K / 16 {
            let s: i32 = self.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            self.bsums[j] = (s as i16).to_le_bytes();
        }
    }
}

/// xorshift64* (Vigna). Deterministic, no dependencies.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1) with 24 bits: exactly representable, so numpy gets the same f32.
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0)
    }

    /// Roughly normal (sum of uniforms); only for our own random tests.
    pub(crate) fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.unit()).sum::<f32>() - 2.0
    }
}

/// Rows of `n` (a multiple of 32) f32 whose every value is computed exactly (integers, 24-bit
/// fractions, powers of two), so numpy regenerates them bit for bit. Each block picks a
/// pattern and a power-of-two scale. The tables below came from this Python twin:
///
/// ```text
/// M = 2**64 - 1
/// class Rng:
///     def __init__(s, seed): s.s = (seed * 0x9e3779b97f4a7c15 + 1) & M
///     def next(s):
///         x = s.s; x ^= x >> 12; x ^= (x << 25) & M; x ^= x >> 27; s.s = x
///         return (x * 0x2545f4914f6cdd1d) & M
///     def unit(s): return np.float32(s.next() >> 40) * np.float32(1 / 16777216)
/// def known_input(seed, n):   # same branches as below, every step in np.float32
/// ```
pub(crate) fn known_input(seed: u64, n: usize) -> Vec<f32> {
    assert_eq!(n % 32, 0);
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n / 32 {
        let r = rng.next_u64();
        let mode = r % 6;
        // Seeds below 1000: f16-friendly scales 2^-16 .. 2^11; from 1000 on: 2^-35 .. 2^24,
        // where scales underflow and overflow f16 (gguf's behaviour is the reference there too).
        let e = if seed < 1000 {
            ((r >> 8) % 28) as i32 - 16
        } else {
            ((r >> 8) % 60) as i32 - 35
        };
        let scale = 2f32.powi(e);
        let pos = ((r >> 16) % 32) as usize;
        for i in 0..32 {
            let v = match mode {
                // uniform, or uniform with one outlier 16x larger
                0..=2 => {
                    let v = (rng.unit() - 0.5) * scale;
                    if mode == 2 && i == pos {
                        v * 16.0
                    } else {
                        v
                    }
                }
                // a grid: values land exactly on rounding boundaries
                3 => ((rng.next_u64() % 16) as f32 - 8.0) * scale,
                // a constant block
                4 => (((r >> 24) % 7) as f32 - 3.0) * scale,
                // mostly zeros
                _ => {
                    if rng.next_u64().is_multiple_of(4) {
                        (rng.unit() - 0.5) * scale
                    } else {
                        0.0
                    }
                }
            };
            out.push(v);
        }
    }
    out
}

/// FNV-1a 64.
pub(crate) fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &v| {
        (h ^ v as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// f32 activations as they are (for [`byte_shims`]).
pub(crate) fn f32s(x: &[f32]) -> &[f32] {
    x
}

/// q8_0 activation bytes as blocks (for [`byte_shims`]).
pub(crate) fn q8s(y: &[u8]) -> &[BlockQ8_0] {
    view(y)
}

/// Byte-level row functions of one family for its tests, in the shape the tests were written
/// against: `quantize_row(src, dst_bytes)`, `dequantize_row`, `vec_dot_scalar`,
/// `vec_dot_portable`, `vec_dot`, `vec_dot_avx2` (weights as bytes; activations as f32 or
/// q8_0 bytes), and `BLOCK_BYTES`.
macro_rules! byte_shims {
    ($t:ty, $x:ty, $act:path) => {
        #[allow(dead_code)]
        const BLOCK_BYTES: usize = std::mem::size_of::<$t>();
        #[allow(dead_code)]
        fn quantize_row(src: &[f32], dst: &mut [u8]) {
            crate::quant::dispatch::quantize::<$t>(src, crate::quant::view_mut(dst))
        }
        #[allow(dead_code)]
        fn quantize_row_portable(src: &[f32], dst: &mut [u8]) {
            crate::quant::dispatch::quantize_portable::<$t>(src, crate::quant::view_mut(dst))
        }
        #[allow(dead_code)]
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        unsafe fn quantize_row_avx2(src: &[f32], dst: &mut [u8]) {
            crate::quant::dispatch::quantize_avx2::<$t>(src, crate::quant::view_mut(dst))
        }
        #[allow(dead_code)]
        fn dequantize_row(src: &[u8], dst: &mut [f32]) {
            crate::quant::dispatch::dequantize::<$t>(crate::quant::view(src), dst)
        }
        #[allow(dead_code)]
        fn vec_dot_scalar(w: &[u8], x: &$x) -> f32 {
            <$t as crate::quant::Family>::dot_scalar(crate::quant::view(w), $act(x))
        }
        #[allow(dead_code)]
        fn vec_dot_portable(w: &[u8], x: &$x) -> f32 {
            crate::quant::dispatch::dot_portable::<$t>(crate::quant::view(w), $act(x))
        }
        #[allow(dead_code)]
        fn vec_dot(w: &[u8], x: &$x) -> f32 {
            crate::quant::dispatch::dot::<$t>(crate::quant::view(w), $act(x))
        }
        #[allow(dead_code)]
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        unsafe fn vec_dot_avx2(w: &[u8], x: &$x) -> f32 {
            crate::quant::dispatch::dot_avx2::<$t>(crate::quant::view(w), $act(x))
        }
    };
}
pub(crate) use byte_shims;

/// A normal f16 of any sign (random f16 bytes could be NaN).
pub(crate) fn finite_half(rng: &mut Rng) -> F16 {
    let h = (rng.next_u64() as u16 & 0x83ff) | (((rng.next_u64() % 29) as u16 + 1) << 10);
    F16(h.to_le_bytes())
}

/// Checks, for a block family against its quantized activations, that every kernel level
/// equals the scalar reference bit for bit over many sizes (ragged groups of 8 blocks
/// included), on quantized data and on raw random bytes (every nibble and every int8, -128
/// too; `finite` gives a random block finite scales), and at odd byte offsets; and that the
/// reference is a dot product of the dequantized rows.
pub(crate) fn check_block_dot_paths<B: Family>(finite: impl Fn(&mut B, &mut Rng))
where
    B::Act: TestActivation,
{
    let bb = std::mem::size_of::<B>();
    let qb = std::mem::size_of::<B::Act>();
    let mut rng = Rng::new(1234);
    // 32-weight blocks: up to 256 of them; 256-weight super-blocks: up to 40 (the same
    // ragged groups of 8, a tenth of the work).
    let sizes: Vec<usize> = if B::QK >= 256 {
        (0..=20).chain([31, 32, 33, 40]).collect()
    } else {
        (0..=40).chain([63, 64, 65, 127, 128, 129, 256]).collect()
    };
    for &nb in &sizes {
        let n = nb * B::QK;
        for round in 0..6 {
            let (w, y) = if round % 2 == 0 {
                let wf: Vec<f32> = (0..n).map(|_| rng.normal() * 0.02).collect();
                let xf: Vec<f32> = (0..n).map(|_| rng.normal() * 4.0).collect();
                let mut w = vec![0u8; nb * bb];
                dispatch::quantize::<B>(&wf, view_mut(&mut w));
                let y = bytes_of_units(&B::Act::quantize_units(&xf));
                (w, y)
            } else {
                let mut w: Vec<u8> = (0..nb * bb).map(|_| rng.next_u64() as u8).collect();
                let mut y: Vec<u8> = (0..nb * qb).map(|_| rng.next_u64() as u8).collect();
                for (wb, yb) in view_mut::<B>(&mut w)
                    .iter_mut()
                    .zip(view_mut::<B::Act>(&mut y))
                {
                    finite(wb, &mut rng);
                    yb.fix_random(&mut rng);
                }
                (w, y)
            };
            let (wv, yv) = (view::<B>(&w), view::<B::Act>(&y));
            let ctx = format!("nb={nb} round={round}");
            let r = check_dot_levels(wv, yv, &ctx);
            // Unaligned copies.
            let mut wb = vec![0u8; w.len() + 3];
            wb[3..].copy_from_slice(&w);
            let mut yb = vec![0u8; y.len() + 1];
            yb[1..].copy_from_slice(&y);
            assert_eq!(
                dispatch::dot::<B>(view(&wb[3..]), view(&yb[1..])).to_bits(),
                r.to_bits(),
                "unaligned {ctx}"
            );

            // The reference is the dot product of the dequantized rows (up to f32 rounding).
            if round < 2 && r.is_finite() {
                let mut wd = vec![0f32; n];
                dispatch::dequantize(wv, &mut wd);
                let yd = B::Act::dequantize_units(yv);
                let exact: f64 = wd.iter().zip(&yd).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mag: f64 = wd
                    .iter()
                    .zip(&yd)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                assert!(
                    (r as f64 - exact).abs() <= 1e-5 * mag + 1e-30,
                    "{ctx}: {r} vs {exact}"
                );
            }
        }
    }
    note_skipped_levels();
}

/// The bytes of a slice of Pod units.
pub(crate) fn bytes_of_units<T: Pod>(u: &[T]) -> Vec<u8> {
    // SAFETY: Pod: no padding, alignment 1, so the slice is exactly its bytes.
    unsafe { std::slice::from_raw_parts(u.as_ptr().cast::<u8>(), std::mem::size_of_val(u)) }
        .to_vec()
}

/// Asserts that every kernel level this CPU has (portable, AVX2, AVX-512, and the dispatch's
/// choice; the multi-row kernels too, with one and with three copies of `y`) gives the scalar
/// reference's bits for `w` against `y`; returns the reference.
pub(crate) fn check_dot_levels<B: Family>(w: &[B], y: &[B::Act], ctx: &str) -> f32 {
    let r = B::dot_scalar(w, y);
    let mut levels = vec![("portable", dispatch::dot_portable(w, y))];
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if super::simd::has_avx2() {
            // SAFETY: checked just above.
            levels.push(("avx2", unsafe { dispatch::dot_avx2(w, y) }));
        }
        if super::simd::has_avx512() {
            // SAFETY: checked just above.
            levels.push(("avx512", unsafe { dispatch::dot_avx512(w, y) }));
        }
        if B::MULTI_ROW {
            let aux = B::row_aux(y).unwrap();
            let (mut o1, mut o3) = ([[0f32; 1]], [[0f32; 3]]);
            if super::simd::has_avx2() {
                // SAFETY: checked just above.
                unsafe {
                    dispatch::rows_avx2::<B, 1>(w, w.len(), [&aux], &mut o1);
                    dispatch::rows_avx2::<B, 3>(w, w.len(), [&aux; 3], &mut o3);
                }
                levels.push(("avx2 1 row", o1[0][0]));
                levels.extend(o3[0].map(|v| ("avx2 3 rows", v)));
            }
            if super::simd::has_avx512() {
                // SAFETY: checked just above.
                unsafe {
                    dispatch::rows_avx512::<B, 1>(w, w.len(), [&aux], &mut o1);
                    dispatch::rows_avx512::<B, 3>(w, w.len(), [&aux; 3], &mut o3);
                }
                levels.push(("avx512 1 row", o1[0][0]));
                levels.extend(o3[0].map(|v| ("avx512 3 rows", v)));
            }
        }
    }
    levels.push(("dispatch", dispatch::dot(w, y)));
    for (name, v) in levels {
        assert_eq!(v.to_bits(), r.to_bits(), "{name} {ctx}: {v} vs {r}");
    }
    r
}

/// Tells whoever runs the tests which kernel levels this CPU could not check.
pub(crate) fn note_skipped_levels() {
    if !super::simd::has_avx2() {
        eprintln!("note: AVX2 kernels not available here, not checked");
    }
    if !super::simd::has_avx512() {
        eprintln!("note: AVX-512 (F/BW/VL/VNNI) kernels not available here, not checked");
    }
}

/// Quant bytes that stress the integer kernels: both int8 extremes (-128 is the one a
/// sign trick gets wrong), -1, 0, and every Q4_0 nibble edge (0x0, 0x8, 0xf in either half).
pub(crate) const EXTREME_BYTES: [u8; 10] =
    [0x80, 0x7f, 0x81, 0xff, 0x00, 0x01, 0x88, 0x08, 0xf0, 0x0f];

/// f16 scale bits at the ends of the range: +-65504, the smallest normal, subnormals, both
/// zeros, 1 (every product of two stays finite in f32).
pub(crate) const EXTREME_HALVES: [u16; 9] = [
    0x7bff, 0xfbff, 0x0400, 0x8400, 0x0001, 0x03ff, 0x0000, 0x8000, 0x3c00,
];

/// Random blocks built from the extremes above (per block: all one byte, or each byte drawn
/// from the list, or random bytes; scales from the list, or random), both sides, through
/// every kernel level. `set_scale(block, half bits)` writes a weight block's scale(s).
pub(crate) fn check_extreme_blocks<B: Family>(set_scale: impl Fn(&mut B, u16))
where
    B::Act: TestActivation,
{
    let bb = std::mem::size_of::<B>();
    let qb = std::mem::size_of::<B::Act>();
    let mut rng = Rng::new(4321);
    let fill = |bytes: &mut [u8], rng: &mut Rng| match rng.next_u64() % 3 {
        0 => bytes.fill(EXTREME_BYTES[(rng.next_u64() % 10) as usize]),
        1 => bytes
            .iter_mut()
            .for_each(|b| *b = EXTREME_BYTES[(rng.next_u64() % 10) as usize]),
        _ => bytes.iter_mut().for_each(|b| *b = rng.next_u64() as u8),
    };
    let half = |rng: &mut Rng| {
        if rng.next_u64().is_multiple_of(4) {
            finite_half(rng).0
        } else {
            EXTREME_HALVES[(rng.next_u64() % 9) as usize].to_le_bytes()
        }
    };
    let sizes: Vec<usize> = if B::QK >= 256 {
        (1..=12).chain([17]).collect()
    } else {
        (1..=24).chain([63, 64, 65, 129]).collect()
    };
    for nb in sizes {
        for round in 0..8 {
            let mut w = vec![0u8; nb * bb];
            let mut y = vec![0u8; nb * qb];
            for b in w.chunks_exact_mut(bb) {
                fill(b, &mut rng);
            }
            for b in y.chunks_exact_mut(qb) {
                fill(b, &mut rng);
            }
            for (wb, yb) in view_mut::<B>(&mut w)
                .iter_mut()
                .zip(view_mut::<B::Act>(&mut y))
            {
                set_scale(wb, u16::from_le_bytes(half(&mut rng)));
                yb.set_scale_half(u16::from_le_bytes(half(&mut rng)));
            }
            check_dot_levels(
                view::<B>(&w),
                view::<B::Act>(&y),
                &format!("extreme nb={nb} round={round}"),
            );
        }
    }
    // The all-(-128) block on both sides: the largest block sums.
    let mut w = vec![0x80u8; 9 * bb];
    let mut y = vec![0x80u8; 9 * qb];
    for (wb, yb) in view_mut::<B>(&mut w)
        .iter_mut()
        .zip(view_mut::<B::Act>(&mut y))
    {
        set_scale(wb, 0x7bff);
        yb.set_scale_half(0xfbff);
    }
    check_dot_levels(view::<B>(&w), view::<B::Act>(&y), "all -128");
    note_skipped_levels();
}

/// (seed, n, FNV-1a of the bytes of `gguf.quants.quantize(known_input(seed, n), type)`,
///  FNV-1a of the f32 bytes of `gguf.quants.dequantize` of those), from gguf 0.19.0 / numpy 2.4.6.
/// F16 is numpy's `astype(np.float16)`.
pub(crate) const GGUF_Q4_0: [(u64, usize, u64, u64); 9] = [
    (1, 32, 0x95b4c86f9754abf3, 0xf3c6ad7f1ae16ea0),
    (2, 64, 0xf97ff955ce09ea1b, 0x81db26a1fc6ba325),
    (3, 256, 0x3dd0a6d3dba478c4, 0x7437e10f3dd37f59),
    (4, 4096, 0x734965719c434fdc, 0x53d143e8ec12d6a8),
    (5, 2048, 0xa1f7cc56e9c449cb, 0x915843ff1155c155),
    (6, 9600, 0xfc812f9581c85cd7, 0x672701c4cf47026d),
    (1001, 6400, 0xf8390cee57799330, 0x236d3309b0738a3f),
    (1002, 4096, 0x810a309e06614fad, 0xec295c3687e09444),
    (1003, 16000, 0xf548a9d7442ef7a7, 0xa5e21fa86f9a91da),
];
pub(crate) const GGUF_Q4_1: [(u64, usize, u64, u64); 9] = [
    (1, 32, 0x8dc019536836033b, 0x498924889d1b522e),
    (2, 64, 0x25ef5aaed12e19c3, 0x81db26a1fc6ba325),
    (3, 256, 0x53605a6b01fcee9b, 0x7aba09db0b6469f0),
    (4, 4096, 0x5e31bd0a71030cb7, 0xc00f45965c727249),
    (5, 2048, 0x222fccb1da8be592, 0xf0f19ca75a5ff98d),
    (6, 9600, 0xe0efdc15527cb461, 0x3308b99aa8ed6ea8),
    (1001, 6400, 0x7fc342acbdeaf548, 0x017131a52807a6f2),
    (1002, 4096, 0x1c5581f5ef2d062e, 0x1ea94fdf6fcdeba0),
    (1003, 16000, 0x470847698a009960, 0x84f388e9cd70f590),
];
pub(crate) const GGUF_Q8_0: [(u64, usize, u64, u64); 9] = [
    (1, 32, 0x13f0e1a889569752, 0x648e04cb0ea15ef6),
    (2, 64, 0xadd8d071946d08c9, 0x4d7dbfcd67105de5),
    (3, 256, 0x5e117fd1eb7dc3e7, 0xeb5f854acae87640),
    (4, 4096, 0xd2ca719bc8b2ac07, 0x82dc7d7e97a29ba3),
    (5, 2048, 0xe57d7bce6f11d43e, 0x53680ab49d932ae8),
    (6, 9600, 0x165b23c9b4737f40, 0x345eb8f2b7d449d7),
    (1001, 6400, 0xfb42c348dc741886, 0x86a4f25092338623),
    (1002, 4096, 0xfd01672d9c899039, 0xe579fe1cde6e9fff),
    (1003, 16000, 0x1073602df7540839, 0x80905624f2ca49c3),
];
pub(crate) const GGUF_F16: [(u64, usize, u64, u64); 9] = [
    (1, 32, 0x797a4c2a2b68eb0d, 0x4da7d7870aaf339e),
    (2, 64, 0xac32cc5bbb6c6a25, 0x81db26a1fc6ba325),
    (3, 256, 0xd68ab8dcaf3dbad0, 0x85cfa13f33372039),
    (4, 4096, 0x699caf04d77e19cd, 0x96c69039e4ee4723),
    (5, 2048, 0xb1f8a27c098bcfc5, 0x885e47361ba2236e),
    (6, 9600, 0x60e8a19332c41be3, 0xe014a697508ca378),
    (1001, 6400, 0xbcd7cfe960ff4e4f, 0xdfedcbaadc7b2293),
    (1002, 4096, 0x4441ad7bd3a93a81, 0x229bb295fd1b3e48),
    (1003, 16000, 0x35c12bd15aef6288, 0xd049cf7d2936f194),
];

/// Runs a multi-row kernel over tokens `t0 .. t0 + N` (`run` fills one `[f32; N]` per weight
/// row) and asserts every result has the bits of `want[row][t0 + k]`.
pub(crate) fn check_multi_row<const N: usize>(
    want: &[[f32; 8]],
    t0: usize,
    run: impl FnOnce(&mut [[f32; N]]),
) {
    let mut out = vec![[0f32; N]; want.len()];
    run(&mut out);
    for (r, (o, w)) in out.iter().zip(want).enumerate() {
        for k in 0..N {
            assert_eq!(
                o[k].to_bits(),
                w[t0 + k].to_bits(),
                "N={N} row {r} token {}",
                t0 + k
            );
        }
    }
}

/// Every multi-row kernel level this CPU has (AVX2, AVX-512), called directly, for weight
/// rows `w` (bytes of `want.len()` rows) against activation rows `ys[t0..t0 + N]` (their
/// activation type's bytes): each result has the bits of `want[row][t0 + k]`.
pub(crate) fn check_rows_levels<B: Family, const N: usize>(
    w: &[u8],
    ys: &[Vec<u8>],
    t0: usize,
    want: &[[f32; 8]],
) where
    B::Act: Pod,
{
    let wv = view::<B>(w);
    let row_len = wv.len() / want.len().max(1);
    let aux: Vec<B::Aux> = ys[t0..t0 + N]
        .iter()
        .map(|y| B::row_aux(view::<B::Act>(y)).unwrap())
        .collect();
    let aux: [&B::Aux; N] = std::array::from_fn(|k| &aux[k]);
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if super::simd::has_avx2() {
            // SAFETY: checked just above.
            check_multi_row::<N>(want, t0, |out| unsafe {
                dispatch::rows_avx2::<B, N>(wv, row_len, aux, out)
            });
        }
        if super::simd::has_avx512() {
            // SAFETY: checked just above.
            check_multi_row::<N>(want, t0, |out| unsafe {
                dispatch::rows_avx512::<B, N>(wv, row_len, aux, out)
            });
        }
    }
    let _ = (aux, row_len);
}

/// Every multi-row kernel level of family `B` (called directly; 8, 4 and 1 activation rows)
/// against its scalar reference: ragged and whole groups, quantized data and raw random bytes
/// (-128 among the activations; `finite` gives a random weight block finite scales).
pub(crate) fn check_multi_row_paths<B: Family>(finite: impl Fn(&mut B, &mut Rng))
where
    B::Act: TestActivation,
{
    let (bb, qb) = (std::mem::size_of::<B>(), std::mem::size_of::<B::Act>());
    let mut rng = Rng::new(78);
    let rows = 3;
    for nb in (0..=20).chain([63, 64, 65]) {
        for round in 0..2 {
            let n = nb * B::QK;
            let (w, ys): (Vec<u8>, Vec<Vec<u8>>) = if round == 0 {
                let wf: Vec<f32> = (0..rows * n).map(|_| rng.normal() * 0.02).collect();
                let mut w = vec![0u8; rows * nb * bb];
                dispatch::quantize::<B>(&wf, view_mut(&mut w));
                let ys = (0..8)
                    .map(|_| {
                        let xf: Vec<f32> = (0..n).map(|_| rng.normal() * 4.0).collect();
                        bytes_of_units(&B::Act::quantize_units(&xf))
                    })
                    .collect();
                (w, ys)
            } else {
                let mut w: Vec<u8> = (0..rows * nb * bb).map(|_| rng.next_u64() as u8).collect();
                for b in view_mut::<B>(&mut w) {
                    finite(b, &mut rng);
                }
                let ys = (0..8)
                    .map(|_| {
                        let mut y: Vec<u8> = (0..nb * qb).map(|_| rng.next_u64() as u8).collect();
                        for u in view_mut::<B::Act>(&mut y) {
                            u.fix_random(&mut rng);
                        }
                        y
                    })
                    .collect();
                (w, ys)
            };
            let wv = view::<B>(&w);
            let want: Vec<[f32; 8]> = (0..rows)
                .map(|r| {
                    std::array::from_fn(|t| {
                        B::dot_scalar(&wv[r * nb..(r + 1) * nb], view::<B::Act>(&ys[t]))
                    })
                })
                .collect();
            check_rows_levels::<B, 8>(&w, &ys, 0, &want);
            check_rows_levels::<B, 4>(&w, &ys, 3, &want);
            check_rows_levels::<B, 1>(&w, &ys, 7, &want);
        }
    }
    note_skipped_levels();
}

/// This thread's CPU time in seconds (Linux): unlike the wall clock, it does not count
/// the time another process held the core.
fn thread_cpu_secs() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    assert_eq!(
        unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) },
        0
    );
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

/// The least thread CPU time of `passes` runs of `f`, in seconds (kernel benchmarks: a busy
/// host's other work does not count).
pub(crate) fn best_cpu_secs(passes: usize, mut f: impl FnMut()) -> f64 {
    (0..passes)
        .map(|_| {
            let t = thread_cpu_secs();
            f();
            thread_cpu_secs() - t
        })
        .fold(f64::INFINITY, f64::min)
}
