//! Bytes per second of the one-token matmul for Llama 3.2 1B's shapes: the output projection
//! (128256 x 2048, the largest tensor) against the layer matmuls (q: 2048 x 2048, gate:
//! 8192 x 2048, down: 2048 x 8192), in F16 and Q8_0, on the current rayon pool. The layer
//! matrices fit in the cache alone, so they are also timed as generation reads them: cold,
//! cycling through 16 copies (one per layer, ~300 MB in all). The machine's read bandwidth
//! (bandwidth.rs) is the roofline for the cold figures.
//!
//!     cargo run --release --example output_matmul [threads]

use llama_rs::ops::{matmul, WeightView};
use llama_rs::quant::{quantize_row, GgmlType};
use rayon::prelude::*;
use std::time::Instant;

struct Owned {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl WeightView for Owned {
    fn ty(&self) -> GgmlType {
        self.ty
    }
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn bytes(&self) -> (&[u8], bool) {
        (&self.data, false)
    }
}

fn random_weight(ty: GgmlType, rows: usize, cols: usize) -> Owned {
    let rb = ty.row_bytes(cols).unwrap();
    let mut data = vec![0u8; rb * rows];
    data.par_chunks_mut(rb).enumerate().for_each(|(r, out)| {
        let mut s = r as u64 + 1;
        let vals: Vec<f32> = (0..cols)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        quantize_row(ty, &vals, out);
    });
    Owned {
        ty,
        rows,
        cols,
        data,
    }
}

/// Best GB/s of `reps` passes of one-token matmuls over `ws` in turn (one pass: each once).
fn gbps(ws: &[Owned], reps: usize) -> f64 {
    let x: Vec<f32> = (0..ws[0].cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut out = vec![0.0; ws[0].rows];
    for w in ws {
        matmul(w, &x, 1, &mut out); // warm: pages in, pool up
    }
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        for w in ws {
            matmul(w, &x, 1, &mut out);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&out);
    ws.iter().map(|w| w.data.len()).sum::<usize>() as f64 / best / 1e9
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(2, |a| a.parse().expect("threads"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let bw = llama_rs::bandwidth::read_bandwidth(512 << 20, threads, 3).unwrap();
    println!("read bandwidth: {:.2} GB/s ({threads} threads)", bw / 1e9);
    pool.install(|| {
        for ty in [GgmlType::F16, GgmlType::Q8_0] {
            let out = [random_weight(ty, 128256, 2048)];
            println!(
                "{ty:?} output 128256x2048: {:.1} MB, {:.2} GB/s",
                out[0].data.len() as f64 / 1e6,
                gbps(&out, 5)
            );
            for (name, rows, cols) in [
                ("attn_q 2048x2048", 2048, 2048),
                ("ffn_gate 8192x2048", 8192, 2048),
                ("ffn_down 2048x8192", 2048, 8192),
            ] {
                let copies: Vec<Owned> = (0..16).map(|_| random_weight(ty, rows, cols)).collect();
                println!(
                    "{ty:?} {name}: {:.1} MB, cached {:.2} GB/s, cold (16 copies) {:.2} GB/s",
                    copies[0].data.len() as f64 / 1e6,
                    gbps(&copies[..1], 50),
                    gbps(&copies, 5)
                );
            }
        }
    });
}
