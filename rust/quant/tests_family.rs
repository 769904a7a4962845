//! A block family added from outside the family files, through the public traits only: this
//! file is all a new family needs (plus its line in `families!` to become a `GgmlType`).
//!
//! `BlockCopy` stores 32 weights as plain f32 (a lossless "quantization") and is multiplied
//! with q8_0 activations like every quantized family: per block `s = sum_j w_j * q_j` in f32,
//! in increasing `j`, then `acc[b % 8] += s * d_x`. Its portable kernel computes 8 blocks at
//! once, one block per lane; it has no AVX2 kernel of its own, so the dispatch runs the
//! portable code built for AVX2 there.

use super::dispatch;
use super::fp16::F16;
use super::fp32::F32;
use super::q8_0::BlockQ8_0;
use super::tests_util::{check_block_dot_paths, known_input, Rng};
use super::{view, view_mut, Activation, Family, Pod, Scale};
use std::simd::prelude::*;

#[repr(C)]
#[derive(Clone, Copy)]
struct BlockCopy {
    v: [F32; 32],
}
const _: () = assert!(std::mem::size_of::<BlockCopy>() == 128);
// SAFETY: an array of Pod values.
unsafe impl Pod for BlockCopy {}

impl Family for BlockCopy {
    const QK: usize = 32;
    type Act = BlockQ8_0;
    type Aux = ();

    fn quantize(x: &[f32], out: &mut Self) {
        for (o, &v) in out.v.iter_mut().zip(x) {
            *o = F32(v.to_le_bytes());
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        for (o, v) in y.iter_mut().zip(&self.v) {
            *o = v.get();
        }
    }

    fn dot_scalar(w: &[Self], y: &[BlockQ8_0]) -> f32 {
        let mut acc = [0f32; 8];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let mut s = 0f32;
            for j in 0..32 {
                s += wb.v[j].get() * yb.qs[j] as f32;
            }
            acc[b % 8] += s * yb.d.get();
        }
        (acc[0] + acc[4] + (acc[2] + acc[6])) + (acc[1] + acc[5] + (acc[3] + acc[7]))
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        let mut s = f32x8::splat(0.0);
        for j in 0..32 {
            let wj = f32x8::from_array(std::array::from_fn(|b| w[b].v[j].get()));
            let yj = f32x8::from_array(std::array::from_fn(|b| y[b].qs[j] as f32));
            s += wj * yj;
        }
        *acc += s * F16::lanes_portable(std::array::from_fn(|b| y[b].d));
    }
}

#[test]
fn a_family_is_one_impl() {
    // Lossless both ways, through the generic row functions.
    let x = known_input(3, 32 * 9);
    let mut blocks = vec![
        BlockCopy {
            v: [F32::default(); 32]
        };
        9
    ];
    dispatch::quantize(&x, &mut blocks);
    let mut back = vec![0f32; x.len()];
    dispatch::dequantize(&blocks, &mut back);
    assert_eq!(back, x);

    // Every kernel level (the dispatch, the portable one, AVX2 where present) equals the
    // scalar reference bit for bit, over ragged lengths, random bytes and odd offsets.
    check_block_dot_paths::<BlockCopy>(|b, rng| {
        for v in &mut b.v {
            *v = F32(((rng.unit() - 0.5) * 0.1).to_le_bytes());
        }
    });

    // And it is the dot product it claims to be, over the bytes of a mapped row.
    let mut rng = Rng::new(9);
    let wf: Vec<f32> = (0..32 * 5).map(|_| rng.normal()).collect();
    let xf: Vec<f32> = (0..32 * 5).map(|_| rng.normal()).collect();
    let mut wb = vec![0u8; 1 + 5 * 128];
    dispatch::quantize::<BlockCopy>(&wf, view_mut(&mut wb[1..]));
    let p = <BlockQ8_0 as Activation>::prepare(&xf);
    let y = <BlockQ8_0 as Activation>::view(&p).unwrap();
    let r = dispatch::dot::<BlockCopy>(view(&wb[1..]), y);
    let mut yd = vec![0f32; xf.len()];
    dispatch::dequantize(y, &mut yd);
    let exact: f64 = wf.iter().zip(&yd).map(|(a, b)| *a as f64 * *b as f64).sum();
    assert!((r as f64 - exact).abs() < 1e-4, "{r} vs {exact}");
}
