//! Choosing the next token from logits: repeat penalty, top-k, top-p, temperature, then a
//! seeded draw (greedy at temp <= 0). Same seed, same logits: same token, on any machine.

use crate::error::{invalid, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 keeps every token.
    pub top_k: usize,
    pub top_p: f32,
    pub temp: f32,
    pub repeat_penalty: f32,
    pub repeat_lastn: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { top_k: 40, top_p: 0.9, temp: 0.8, repeat_penalty: 1.3, repeat_lastn: 64 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.temp >= 0.0) || !self.temp.is_finite() {
            return invalid(format!("temp must be >= 0, got {}", self.temp));
        }
        if !(self.repeat_penalty > 0.0) || !self.repeat_penalty.is_finite() {
            return invalid(format!("repeat_penalty must be > 0, got {}", self.repeat_penalty));
        }
        Ok(())
    }
}

/// A small, fast, seedable generator (PCG-XSH-RR 64/32); fixed so outputs are reproducible
/// across versions of any dependency.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng { state: 0 };
        r.next_u32();
        r.state = r.state.wrapping_add(seed);
        r.next_u32();
        r
    }

    /// A seed from the clock and the process, for seed = -1.
    pub fn random_seed() -> u64 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ ((std::process::id() as u64) << 32)
    }

    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        let hi = (self.next_u32() as u64) << 21;
        let lo = (self.next_u32() >> 11) as u64;
        (hi | lo) as f64 / (1u64 << 53) as f64
    }
}

/// Divide positive logits (multiply negative ones) of tokens seen in the last `lastn`.
pub fn apply_repeat_penalty(logits: &mut [f32], history: &[u32], lastn: usize, penalty: f32) {
    if penalty == 1.0 || lastn == 0 {
        return;
    }
    let start = history.len().saturating_sub(lastn);
    let mut seen = vec![false; logits.len()];
    for &t in &history[start..] {
        let t = t as usize;
        if t < logits.len() && !seen[t] {
            seen[t] = true;
            let l = &mut logits[t];
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Pick the next token. `history` is every token in the context so far (prompt included).
pub fn sample(logits: &[f32], history: &[u32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    let mut logits = logits.to_vec();
    apply_repeat_penalty(&mut logits, history, p.repeat_lastn, p.repeat_penalty);
    if p.temp <= 0.0 {
        return argmax(&logits);
    }
    // Candidates sorted by logit, highest first; ties keep the lower id first (stable sort).
    let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1));
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.truncate(p.top_k);
    }
    // top-p on the probabilities at temperature 1: the smallest prefix reaching top_p.
    if p.top_p < 1.0 {
        let probs = softmax_of(&cand, 1.0);
        let mut cum = 0.0f64;
        let mut keep = cand.len();
        for (i, pr) in probs.iter().enumerate() {
            cum += pr;
            if cum >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
    }
    let probs = softmax_of(&cand, p.temp);
    let r = rng.next_f64();
    let mut cum = 0.0f64;
    for (i, pr) in probs.iter().enumerate() {
        cum += pr;
        if r < cum {
            return cand[i].0;
        }
    }
    cand[cand.len() - 1].0
}

fn softmax_of(cand: &[(u32, f32)], temp: f32) -> Vec<f64> {
    let max = cand[0].1 as f64;
    let exps: Vec<f64> = cand.iter().map(|c| ((c.1 as f64 - max) / temp as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k_one_agree() {
        let logits = vec![0.1, 2.0, -1.0, 1.9];
        let mut rng = Rng::new(1);
        let g = SamplingParams { temp: 0.0, ..Default::default() };
        assert_eq!(sample(&logits, &[], &g, &mut rng), 1);
        let k1 = SamplingParams { top_k: 1, ..Default::default() };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &[], &k1, &mut rng), 1);
        }
        // The penalty on token 1 (2.0 / 1.3 < 1.9) hands the lead to token 3, in both modes.
        assert_eq!(sample(&logits, &[1], &g, &mut rng), 3);
        assert_eq!(sample(&logits, &[1], &k1, &mut rng), 3);
    }

    #[test]
    fn penalty_divides_positive_and_multiplies_negative() {
        let mut l = vec![2.0, -2.0, 2.0];
        apply_repeat_penalty(&mut l, &[0, 1, 0], 64, 2.0);
        assert_eq!(l, vec![1.0, -4.0, 2.0]);
        let mut l = vec![2.0, 2.0];
        apply_repeat_penalty(&mut l, &[0, 1], 1, 2.0); // only the last token counts
        assert_eq!(l, vec![2.0, 1.0]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 keeps only the first.
        let logits = vec![3.0, 2.0, 1.0, 0.0];
        let p = SamplingParams { top_k: 0, top_p: 0.5, temp: 1.0, repeat_penalty: 1.0, repeat_lastn: 0 };
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            assert_eq!(sample(&logits, &[], &p, &mut rng), 0);
        }
        let p = SamplingParams { top_p: 0.95, ..p };
        let drawn: std::collections::HashSet<u32> = (0..500).map(|_| sample(&logits, &[], &p, &mut rng)).collect();
        assert_eq!(drawn, [0, 1, 2].into_iter().collect());
    }

    #[test]
    fn seeded_draws_repeat() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams { top_k: 0, top_p: 1.0, temp: 1.0, ..Default::default() };
        let run = |seed| {
            let mut r = Rng::new(seed);
            (0..30).map(|_| sample(&logits, &[], &p, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn validation() {
        assert!(SamplingParams { top_p: 0.0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { top_p: 1.5, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { temp: -0.1, ..Default::default() }.validate().is_err());
        assert!(SamplingParams::default().validate().is_ok());
    }
}
