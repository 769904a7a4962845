//! Choosing the next token from logits: logit bias, repeat penalty, presence/frequency
//! penalties, top-k, top-p, temperature, then a seeded draw (greedy at temp <= 0). Same seed,
//! same logits: same token, on any machine. Also the log-probabilities reported to callers.

/// Sampling settings, already checked (see `session::GenerateArgs::validate`).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 keeps every token.
    pub top_k: usize,
    pub top_p: f32,
    pub temp: f32,
    pub repeat_penalty: f32,
    pub repeat_lastn: usize,
    /// OpenAI's penalties, on the counts of the tokens generated so far (not the prompt).
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Added to the raw logits: (token id, bias).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            top_k: 40,
            top_p: 0.9,
            temp: 0.8,
            repeat_penalty: 1.3,
            repeat_lastn: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

/// Where a generation's random numbers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seed {
    /// A fresh seed for every generation (a negative seed from the caller).
    Random,
    Fixed(u64),
}

impl Seed {
    pub fn value(self) -> u64 {
        match self {
            Seed::Random => Rng::random_seed(),
            Seed::Fixed(s) => s,
        }
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
        self.state = old
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
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

/// Add each (token, bias) to the logits; ids outside the vocab are ignored (checked earlier).
pub fn apply_logit_bias(logits: &mut [f32], bias: &[(u32, f32)]) {
    for &(t, b) in bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
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

/// OpenAI's penalties: `logit[j] -= c[j] * frequency + (c[j] > 0) * presence`, where `c[j]`
/// counts `j` in `generated`.
pub fn apply_presence_frequency(
    logits: &mut [f32],
    generated: &[u32],
    presence: f32,
    frequency: f32,
) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    let mut ids = generated.to_vec();
    ids.sort_unstable();
    for run in ids.chunk_by(|a, b| a == b) {
        if let Some(l) = logits.get_mut(run[0] as usize) {
            *l -= run.len() as f32 * frequency + presence;
        }
    }
}

/// The logits the draw sees: bias, then repeat penalty over `history` (the whole context),
/// then presence/frequency over `generated` (this generation's tokens only).
pub fn adjust_logits(logits: &mut [f32], history: &[u32], generated: &[u32], p: &SamplingParams) {
    apply_logit_bias(logits, &p.logit_bias);
    apply_repeat_penalty(logits, history, p.repeat_lastn, p.repeat_penalty);
    apply_presence_frequency(logits, generated, p.presence_penalty, p.frequency_penalty);
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

/// Pick the next token. `history` is every token in the context so far (prompt included);
/// `generated` is its tail produced by this generation.
pub fn sample(
    logits: &[f32],
    history: &[u32],
    generated: &[u32],
    p: &SamplingParams,
    rng: &mut Rng,
) -> u32 {
    let mut logits = logits.to_vec();
    adjust_logits(&mut logits, history, generated, p);
    if p.temp <= 0.0 {
        return argmax(&logits);
    }
    // Candidates sorted by logit, highest first; ties keep the lower id first. With top-k,
    // only the k best are sorted (a 128k vocab would otherwise be sorted for every token).
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, order);
        cand.truncate(p.top_k);
    }
    cand.sort_unstable_by(order);
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
    let exps: Vec<f64> = cand
        .iter()
        .map(|c| ((c.1 as f64 - max) / temp as f64).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// A generated token's log-probability under the raw model logits, with the most likely
/// alternatives (what OpenAI's `logprobs` reports).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f64,
    /// The `n` most likely tokens as (id, logprob), most likely first, ties by lower id.
    pub top: Vec<(u32, f64)>,
}

impl TokenLogprob {
    pub fn new(logits: &[f32], id: u32, n: usize) -> TokenLogprob {
        let lp = log_softmax(logits);
        TokenLogprob {
            id,
            logprob: lp[id as usize],
            top: top_logprobs(&lp, n),
        }
    }
}

/// Log-probabilities of every token: `x - max - ln(sum(exp(x - max)))`, in f64 (every f32 is
/// exact in f64), before any bias, penalty or temperature.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let ln_sum = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln();
    logits.iter().map(|&x| x as f64 - max - ln_sum).collect()
}

/// The `n` largest of `lp` as (id, logprob), largest first; equal values: lower id first.
pub fn top_logprobs(lp: &[f64], n: usize) -> Vec<(u32, f64)> {
    let n = n.min(lp.len());
    if n == 0 {
        return Vec::new();
    }
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut all: Vec<(u32, f64)> = lp.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    if n < all.len() {
        all.select_nth_unstable_by(n - 1, order);
        all.truncate(n);
    }
    all.sort_by(order);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k_one_agree() {
        let logits = vec![0.1, 2.0, -1.0, 1.9];
        let mut rng = Rng::new(1);
        let g = SamplingParams {
            temp: 0.0,
            ..Default::default()
        };
        assert_eq!(sample(&logits, &[], &[], &g, &mut rng), 1);
        let k1 = SamplingParams {
            top_k: 1,
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &[], &[], &k1, &mut rng), 1);
        }
        // The penalty on token 1 (2.0 / 1.3 < 1.9) hands the lead to token 3, in both modes.
        assert_eq!(sample(&logits, &[1], &[], &g, &mut rng), 3);
        assert_eq!(sample(&logits, &[1], &[], &k1, &mut rng), 3);
    }

    /// Selecting the top k before sorting draws what a stable sort of the whole vocab then
    /// truncation draws: logits with many ties, every k, many draws.
    #[test]
    fn top_k_selection_equals_a_full_stable_sort() {
        let logits: Vec<f32> = (0..500).map(|i| ((i * 37) % 23) as f32 * 0.25).collect();
        let reference = |p: &SamplingParams, rng: &mut Rng| {
            let mut cand: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l))
                .collect();
            cand.sort_by(|a, b| b.1.total_cmp(&a.1)); // stable: lower id first among ties
            if p.top_k > 0 && p.top_k < cand.len() {
                cand.truncate(p.top_k);
            }
            let probs = softmax_of(&cand, p.temp);
            let r = rng.next_f64();
            let mut cum = 0.0;
            for (i, pr) in probs.iter().enumerate() {
                cum += pr;
                if r < cum {
                    return cand[i].0;
                }
            }
            cand[cand.len() - 1].0
        };
        for top_k in [0, 1, 2, 5, 21, 22, 23, 40, 499, 500, 600] {
            let p = SamplingParams {
                top_k,
                top_p: 1.0,
                temp: 0.7,
                repeat_penalty: 1.0,
                ..Default::default()
            };
            let (mut a, mut b) = (Rng::new(9), Rng::new(9));
            for _ in 0..200 {
                assert_eq!(
                    sample(&logits, &[], &[], &p, &mut a),
                    reference(&p, &mut b),
                    "top_k {top_k}"
                );
            }
        }
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
        let p = SamplingParams {
            top_k: 0,
            top_p: 0.5,
            temp: 1.0,
            repeat_penalty: 1.0,
            repeat_lastn: 0,
            ..Default::default()
        };
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            assert_eq!(sample(&logits, &[], &[], &p, &mut rng), 0);
        }
        let p = SamplingParams { top_p: 0.95, ..p };
        let drawn: std::collections::HashSet<u32> = (0..500)
            .map(|_| sample(&logits, &[], &[], &p, &mut rng))
            .collect();
        assert_eq!(drawn, [0, 1, 2].into_iter().collect());
    }

    #[test]
    fn seeded_draws_repeat() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams {
            top_k: 0,
            top_p: 1.0,
            temp: 1.0,
            ..Default::default()
        };
        let run = |seed| {
            let mut r = Rng::new(seed);
            (0..30)
                .map(|_| sample(&logits, &[], &[], &p, &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn logit_bias_is_added_to_the_raw_logits() {
        let mut l = vec![1.0, 2.0, 3.0];
        apply_logit_bias(&mut l, &[(0, 5.0), (2, -1.5), (7, 9.0)]); // 7 is outside: ignored
        assert_eq!(l, vec![6.0, 2.0, 1.5]);
        let g = SamplingParams {
            temp: 0.0,
            logit_bias: vec![(0, 100.0)],
            ..Default::default()
        };
        assert_eq!(sample(&[1.0, 2.0, 3.0], &[], &[], &g, &mut Rng::new(1)), 0);
    }

    #[test]
    fn presence_and_frequency_follow_openai() {
        // counts: token 0 twice, token 2 once, token 1 never.
        let mut l = vec![1.0f32, 1.0, 1.0];
        apply_presence_frequency(&mut l, &[0, 2, 0], 0.5, 0.25);
        assert_eq!(l, vec![1.0 - (2.0 * 0.25 + 0.5), 1.0, 1.0 - (0.25 + 0.5)]);
        let mut l = vec![1.0f32, 1.0];
        apply_presence_frequency(&mut l, &[0, 0, 0], -2.0, 0.0); // negative presence rewards
        assert_eq!(l, vec![3.0, 1.0]);
        let mut l = vec![1.0f32, -1.0];
        apply_presence_frequency(&mut l, &[0, 1], 0.0, 0.0);
        assert_eq!(l, vec![1.0, -1.0]);
    }

    #[test]
    fn adjustments_apply_in_order_and_only_generated_tokens_count() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            repeat_lastn: 64,
            presence_penalty: 1.0,
            frequency_penalty: 0.5,
            logit_bias: vec![(0, 2.0)],
            ..Default::default()
        };
        let mut l = vec![2.0f32, 4.0, -1.0, 3.0];
        // history = prompt [1, 2] + generated [2, 3, 3].
        adjust_logits(&mut l, &[1, 2, 2, 3, 3], &[2, 3, 3], &p);
        // 0: bias only, 4. 1: penalty only (prompt), 2. 2: -1*2 - (0.5 + 1) = -3.5.
        // 3: 3/2 - (1.0 + 1) = -0.5. Bias before the penalty: 0 is not in the history.
        assert_eq!(l, vec![4.0, 2.0, -3.5, -0.5]);
    }

    #[test]
    fn defaults_change_nothing() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.7).cos()).collect();
        let p = SamplingParams {
            repeat_penalty: 1.0,
            ..Default::default()
        };
        let mut l = logits.clone();
        adjust_logits(&mut l, &[1, 2, 3], &[2, 3], &p);
        assert_eq!(l, logits);
    }

    #[test]
    fn log_softmax_is_normalized_and_shift_invariant() {
        let logits = vec![1.0f32, 2.0, 3.0, -50.0];
        let lp = log_softmax(&logits);
        let total: f64 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp() + (-50f64).exp()).ln();
        assert!((lp[1] - (2.0 - z)).abs() < 1e-12);
        let shifted = log_softmax(&logits.iter().map(|x| x + 1000.0).collect::<Vec<_>>());
        for (a, b) in lp.iter().zip(&shifted) {
            assert!((a - b).abs() < 1e-9);
        }
    }

    #[test]
    fn top_logprobs_sorted_with_ties_by_id() {
        let lp = vec![-2.0, -1.0, -3.0, -1.0, -0.5];
        assert_eq!(top_logprobs(&lp, 3), vec![(4, -0.5), (1, -1.0), (3, -1.0)]);
        assert_eq!(top_logprobs(&lp, 0), vec![]);
        assert_eq!(top_logprobs(&lp, 99).len(), 5);
        let t = TokenLogprob::new(&[0.0, 0.0], 1, 2);
        assert_eq!(t.top, vec![(0, -(2f64.ln())), (1, -(2f64.ln()))]);
        assert_eq!(t.logprob, -(2f64.ln()));
    }
}
