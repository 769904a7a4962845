//! A model in use: its KV cache, the tokens in it, the thread pool, and text generation
//! (prompt -> sampled tokens -> text pieces, with stop strings and finish reasons).

use crate::error::{invalid, Error, Result};
use crate::model::{KvCache, KvType, Model};
use crate::sampling::{sample, Rng, SamplingParams};
use crate::tokenizer::StreamDecoder;
use std::sync::Arc;

pub struct Session {
    pub model: Arc<Model>,
    cache: KvCache,
    /// The tokens whose keys and values are in the cache, in order.
    tokens: Vec<u32>,
    pool: rayon::ThreadPool,
    n_threads: usize,
    /// Bumped whenever the cache is changed by anything but the current generation, so a
    /// stale generation notices instead of continuing on someone else's context.
    epoch: u64,
}

impl Session {
    pub fn new(model: Arc<Model>, n_ctx: usize, n_threads: usize, kv_type: KvType) -> Result<Session> {
        if n_ctx == 0 {
            return invalid("n_ctx must be at least 1");
        }
        if n_threads == 0 || n_threads > 1024 {
            return invalid(format!("n_threads must be between 1 and 1024, got {n_threads}"));
        }
        // The cache is sized up front: refuse sizes that cannot be allocated.
        let bytes = (n_ctx as u128) * (model.config.kv_dim() as u128) * (model.config.n_layer as u128) * 2 * KvCache::bytes_per_value(kv_type) as u128;
        if bytes > (1u128 << 40) {
            return invalid(format!("n_ctx {n_ctx} needs a {bytes}-byte KV cache; choose a smaller context"));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n_threads)
            .thread_name(|i| format!("llama-rs-{i}"))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start {n_threads} threads: {e}")))?;
        let cache = KvCache::new(&model.config, n_ctx, kv_type);
        Ok(Session { model, cache, tokens: Vec::new(), pool, n_threads, epoch: 0 })
    }

    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn reset(&mut self) {
        self.tokens.clear();
        self.epoch += 1;
    }

    /// Evaluate `ids` after what is already cached; logits of the last (or every) position.
    pub fn eval(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.epoch += 1;
        self.eval_inner(ids, false)
    }

    pub fn eval_all(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.epoch += 1;
        self.eval_inner(ids, true)
    }

    fn eval_inner(&mut self, ids: &[u32], all: bool) -> Result<Vec<f32>> {
        let n_past = self.tokens.len();
        let model = &self.model;
        let cache = &mut self.cache;
        let logits = self.pool.install(|| model.forward(cache, ids, n_past, all))?;
        self.tokens.extend_from_slice(ids);
        Ok(logits)
    }

    /// Make the cache hold exactly `prompt` and return the logits after its last token,
    /// reusing the longest prefix already cached (a chat that grows re-evaluates only the end).
    fn load_prompt(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        if prompt.is_empty() {
            return invalid("the prompt is empty (no text and no BOS token)");
        }
        if prompt.len() > self.n_ctx() {
            return invalid(format!(
                "the prompt is {} tokens, longer than the context of {} tokens (n_ctx)",
                prompt.len(),
                self.n_ctx()
            ));
        }
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        // At least the last prompt token is evaluated again: its logits are not kept.
        let keep = common.min(prompt.len() - 1);
        self.tokens.truncate(keep);
        self.epoch += 1;
        self.eval_inner(&prompt[keep..], false)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Length,
    Eos,
    Stop,
    Context,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Context => "context",
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub stop: Vec<String>,
}

/// One generation in progress. Call `step` until it returns None.
pub struct Generation {
    params: GenerateParams,
    rng: Rng,
    logits: Vec<f32>,
    /// Sampled but not yet evaluated (evaluated lazily: the last token never needs it).
    pending: Option<u32>,
    decoder: StreamDecoder,
    /// Text held back because it may be the start of a stop string.
    held: String,
    pub prompt_tokens: usize,
    pub generated: usize,
    pub finish: Option<FinishReason>,
    epoch: u64,
}

impl Generation {
    pub fn start(s: &mut Session, prompt: &[u32], params: GenerateParams) -> Result<Generation> {
        params.sampling.validate()?;
        if params.stop.iter().any(|x| x.is_empty()) {
            return invalid("stop strings must not be empty");
        }
        let logits = s.load_prompt(prompt)?;
        // After prompt text the first piece keeps its space ("is" + " a"); after BOS alone
        // the text starts fresh, as a whole decode would.
        let follows_text = prompt.iter().any(|&t| Some(t) != s.model.tokenizer.bos());
        let decoder = if follows_text { StreamDecoder::continuing() } else { StreamDecoder::new() };
        Ok(Generation {
            rng: Rng::new(params.seed),
            params,
            logits,
            pending: None,
            decoder,
            held: String::new(),
            prompt_tokens: prompt.len(),
            generated: 0,
            finish: None,
            epoch: s.epoch,
        })
    }

    /// The next piece of text (possibly empty while a UTF-8 character or a possible stop
    /// string is incomplete), or None once finished and everything was returned.
    pub fn step(&mut self, s: &mut Session) -> Result<Option<String>> {
        if self.finish.is_some() {
            return Ok(None);
        }
        if s.epoch != self.epoch {
            return invalid("the model was used for something else since this generation started; start it again");
        }
        if self.generated >= self.params.max_tokens {
            return Ok(self.end(s, FinishReason::Length));
        }
        if let Some(t) = self.pending.take() {
            if s.tokens.len() >= s.n_ctx() {
                return Ok(self.end(s, FinishReason::Context));
            }
            self.logits = s.eval_inner(&[t], false)?;
        }
        let tok = sample(&self.logits, &s.tokens, &self.params.sampling, &mut self.rng);
        if Some(tok) == s.model.tokenizer.eos() {
            return Ok(self.end(s, FinishReason::Eos));
        }
        self.generated += 1;
        self.pending = Some(tok);
        let piece = self.decoder.push(&s.model.tokenizer, tok);
        Ok(Some(self.filter_stop(piece)))
    }

    fn end(&mut self, s: &Session, reason: FinishReason) -> Option<String> {
        self.finish = Some(reason);
        let mut rest = std::mem::take(&mut self.held);
        rest.push_str(&self.decoder.finish(&s.model.tokenizer));
        (!rest.is_empty()).then_some(rest)
    }

    /// Pass text through, cutting before the first stop string and holding back any tail
    /// that could still become one.
    fn filter_stop(&mut self, piece: String) -> String {
        if self.params.stop.is_empty() {
            return piece;
        }
        self.held.push_str(&piece);
        let first = self.params.stop.iter().filter_map(|x| self.held.find(x.as_str())).min();
        if let Some(pos) = first {
            let out = self.held[..pos].to_string();
            self.held.clear();
            self.finish = Some(FinishReason::Stop);
            return out;
        }
        let hold = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.params.stop.iter().any(|x| x.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out = self.held[..hold].to_string();
        self.held.drain(..hold);
        out
    }
}
