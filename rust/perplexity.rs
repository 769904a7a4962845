//! Perplexity, llama.cpp's method (DESIGN.md, "Perplexity"): the text's tokens (with BOS)
//! in chunks of `ctx`; in each chunk the first token is replaced by BOS, the chunk is
//! evaluated from an empty cache, and the negative log-likelihood of each token at positions
//! `ctx/2 + 1 .. ctx - 1` given everything before it is summed; perplexity =
//! `exp(total / count)`.

use crate::error::{invalid, Result};
use crate::session::Session;

/// `log softmax(row)[tok]` as llama.cpp computes it: max in f32, sum of `exp(x - max)` in
/// f64, result in f64.
pub fn log_softmax(row: &[f32], tok: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| (x - max).exp() as f64).sum();
    (row[tok] - max) as f64 - sum.ln()
}

/// Sum of `-log p(tokens[j + 1] | ..j)` over `j` in `first .. tokens.len() - 1`, from the
/// logits of every position (`tokens.len()` rows of `n_vocab`); and the count.
pub fn chunk_nll(logits: &[f32], n_vocab: usize, tokens: &[u32], first: usize) -> (f64, usize) {
    let mut nll = 0.0f64;
    let mut n = 0;
    for j in first..tokens.len().saturating_sub(1) {
        let row = &logits[j * n_vocab..(j + 1) * n_vocab];
        nll -= log_softmax(row, tokens[j + 1] as usize);
        n += 1;
    }
    (nll, n)
}

/// Evaluate one chunk (its first token replaced by BOS) from an empty cache and score its
/// second half. Returns (sum of NLL, number of tokens scored).
pub fn score_chunk(session: &mut Session, chunk: &[u32]) -> Result<(f64, usize)> {
    if chunk.len() < 4 {
        return invalid(format!(
            "a perplexity chunk needs at least 4 tokens, got {}",
            chunk.len()
        ));
    }
    let Some(bos) = session.model.tokenizer.bos() else {
        return invalid("the model has no BOS token; llama.cpp's perplexity needs one");
    };
    let mut ids = chunk.to_vec();
    ids[0] = bos;
    session.reset();
    let logits = session.eval_all(&ids)?;
    session.reset();
    Ok(chunk_nll(
        &logits,
        session.model.config.n_vocab,
        chunk,
        chunk.len() / 2,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_vocab_size() {
        let v = 10;
        let logits = vec![0.5f32; 8 * v];
        let toks = [1u32, 2, 3, 4, 5, 6, 7, 8];
        let (nll, n) = chunk_nll(&logits, v, &toks, 4);
        assert_eq!(n, 3);
        assert!(((nll / n as f64).exp() - v as f64).abs() < 1e-9);
    }
}
