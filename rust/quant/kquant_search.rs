//! The K-quant encoders' shared search (for Q2_K, Q4_K, Q5_K): llama.cpp's `make_qkx2_quants`
//! and the super-block body that `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref` share.
//!
//! Byte-for-byte with llama.cpp (ggml-quants.c, built without FMA contraction): plain IEEE f32
//! operations in the C source's order, ggml's `nearest_int`, the same comparisons (so NaN
//! takes the same branches). Only `llama-rs quantize` runs this: scalar code.

use super::fp16::{f16_bits_to_f32, f32_to_f16_bits};
use super::kquant_scales::{get_scale_min_k4, pack_scales_mins, K_SCALE_SIZE};
use super::q8_k::{nearest_int, QK_K};

/// The parameters of one `make_qkx2_quants` call.
#[derive(Clone, Copy)]
pub(crate) struct Qkx2 {
    /// Largest level (3, 15, 31).
    pub nmax: i32,
    /// First trial offset of the inverse scale and its step (`rmin + rdelta * is`).
    pub rmin: f32,
    pub rdelta: f32,
    /// Number of trial steps after the first (`is = 0..=nstep`).
    pub nstep: i32,
    /// Weighted absolute error (Q2_K) instead of weighted squared error.
    pub use_mad: bool,
}

/// ggml's `make_qkx2_quants`: levels `l` (0..=nmax) for `x` with an affine map
/// `x ~ scale * l - min`, searched over `nstep + 1` trial scales by weighted least squares.
/// Returns `(scale, min)` where `min` is `*the_min` (>= 0 for finite input). `laux` is
/// scratch of `x.len()`.
pub(crate) fn make_qkx2_quants(
    p: Qkx2,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    let nmax_f = p.nmax as f32;
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let level = |v: f32| nearest_int(v).clamp(0, p.nmax) as u8;
    let err = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0f32;
    for i in 0..n {
        l[i] = level(iscale * (x[i] - min));
        let diff = scale * l[i] as f32 + min - x[i];
        best_mad += weights[i] * err(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let li = level(iscale * (x[i] - min));
            laux[i] = li;
            let (w, lf) = (weights[i], li as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                mad += weights[i] * err(diff);
            }
            if mad < best_mad {
                l[..n].copy_from_slice(&laux[..n]);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// One super-block encoded the Q4_K / Q5_K way: f16 `d` and `dmin` (as bits), the packed
/// 6-bit scales and minimums, and the 256 levels (0..=nmax) in element order.
pub(crate) struct K4Levels {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub l: [u8; QK_K],
}

/// The common body of `quantize_row_q4_K_ref` (`nmax` 15, `rmin` -1, 20 steps) and
/// `quantize_row_q5_K_ref` (31, -0.5, 15 steps): per 32 values `make_qkx2_quants` with weights
/// `sqrt(mean x^2) + |x|`, the scales and minimums quantized to 6 bits against their largest,
/// then every value re-quantized with the stored (f16, 6-bit) scale and minimum.
pub(crate) fn quantize_k4_superblock(
    x: &[f32; QK_K],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> K4Levels {
    let p = Qkx2 {
        nmax,
        rmin,
        rdelta: 0.1,
        nstep,
        use_mad: false,
    };
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) =
            make_qkx2_quants(p, xs, &weights, &mut l[32 * j..32 * j + 32], &mut laux);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // C: `uint8_t ls = nearest_int(..)` (wraps modulo 256), then MIN(63, ls).
    let six = |v: f32| (nearest_int(v) as u8).min(63);
    let ls: [u8; 8] = std::array::from_fn(|j| six(inv_scale * scales[j]));
    let lm: [u8; 8] = std::array::from_fn(|j| six(inv_min * mins[j]));
    let packed = pack_scales_mins(&ls, &lm);
    let d = f32_to_f16_bits(max_scale / 63.0);
    let dmin = f32_to_f16_bits(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dj = f16_bits_to_f32(d) * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = f16_bits_to_f32(dmin) * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    K4Levels {
        d,
        dmin,
        scales: packed,
        l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_and_zero_inputs() {
        let p = Qkx2 {
            nmax: 15,
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        };
        let (mut l, mut laux) = ([7u8; 32], [0u8; 32]);
        // All equal and positive: min clamps to 0, max > min, so one level for all.
        let x = [2.0f32; 32];
        let (s, m) = make_qkx2_quants(p, &x, &[1.0; 32], &mut l, &mut laux);
        assert_eq!(m, 0.0);
        assert!(l.iter().all(|&v| v == l[0]));
        assert_eq!(s * l[0] as f32, 2.0);
        // All zero: scale 0, every level 0.
        let (s, m) = make_qkx2_quants(p, &[0.0; 32], &[1.0; 32], &mut l, &mut laux);
        assert_eq!((s, m), (0.0, -0.0));
        assert!(l.iter().all(|&v| v == 0));
        // A ramp from -1 to 1 at 16 levels: scale near 2/15, min near 1.
        let x: [f32; 32] = std::array::from_fn(|i| i as f32 / 15.5 - 1.0);
        let (s, m) = make_qkx2_quants(p, &x, &[1.0; 32], &mut l, &mut laux);
        assert!(
            (s - 2.0 / 15.0).abs() < 0.01 && (m - 1.0).abs() < 0.05,
            "{s} {m}"
        );
        for (i, &v) in x.iter().enumerate() {
            assert!((s * l[i] as f32 - m - v).abs() <= s, "{i}");
        }
    }
}
