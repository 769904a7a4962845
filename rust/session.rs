//! A model in use: its KV cache, the tokens in it, the thread pool, and text generation
//! (prompt -> sampled tokens -> text pieces, with stop strings and finish reasons).

use crate::error::{invalid, param_err, Result};
use crate::model::{KvCache, KvType, Model};
use crate::sampling::{sample, Rng, SamplingParams, Seed, TokenLogprob};
use crate::threads::Threads;
use crate::tokenizer::StreamDecoder;
use std::sync::Arc;

pub struct Session {
    pub model: Arc<Model>,
    cache: KvCache,
    /// The tokens whose keys and values are in the cache, in order.
    tokens: Vec<u32>,
    /// Runs the passes; a batch's slots share the batch's own.
    pool: Arc<Threads>,
    /// Bumped whenever the cache is changed by anything but the current generation, so a
    /// stale generation notices instead of continuing on someone else's context.
    epoch: u64,
}

impl Session {
    pub fn new(
        model: Arc<Model>,
        n_ctx: usize,
        n_threads: usize,
        kv_type: KvType,
    ) -> Result<Session> {
        if n_ctx == 0 {
            return invalid("n_ctx must be at least 1");
        }
        if n_threads == 0 || n_threads > 1024 {
            return invalid(format!(
                "n_threads must be between 1 and 1024, got {n_threads}"
            ));
        }
        // The cache is sized up front: refuse sizes that cannot be allocated.
        let bytes = (n_ctx as u128)
            * (model.config.kv_dim() as u128)
            * (model.config.n_layer as u128)
            * 2
            * KvCache::bytes_per_value(kv_type) as u128;
        if bytes > (1u128 << 40) {
            return invalid(format!(
                "n_ctx {n_ctx} needs a {bytes}-byte KV cache; choose a smaller context"
            ));
        }
        let cache = KvCache::new(&model.config, n_ctx, kv_type);
        Self::with_cache(model, cache, n_threads)
    }

    /// A session over `cache` (a batch's slots start with empty caches that grow).
    pub(crate) fn with_cache(
        model: Arc<Model>,
        cache: KvCache,
        n_threads: usize,
    ) -> Result<Session> {
        let pool = Threads::new(n_threads, "llama-rs")?;
        Ok(Self::with_pool(model, cache, Arc::new(pool)))
    }

    /// A session over `cache` whose passes run on `pool` (shared, not started anew).
    pub(crate) fn with_pool(model: Arc<Model>, cache: KvCache, pool: Arc<Threads>) -> Session {
        Session {
            model,
            cache,
            tokens: Vec::new(),
            pool,
            epoch: 0,
        }
    }

    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn reset(&mut self) {
        self.tokens.clear();
        self.epoch += 1;
    }

    /// The cache and the tokens in it, for a batch driver that evaluates into it itself
    /// (`batch.rs`); the epoch moves, as for any use from outside a generation.
    pub(crate) fn cache_for_batch(&mut self) -> (&mut KvCache, &mut Vec<u32>) {
        self.epoch += 1;
        (&mut self.cache, &mut self.tokens)
    }

    /// The cache alone, for a generation's own steps driven by a batch (no epoch change).
    pub(crate) fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }

    pub(crate) fn cache(&self) -> &KvCache {
        &self.cache
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
        let logits = self
            .pool
            .install(|| model.forward(cache, ids, n_past, all))??;
        self.tokens.extend_from_slice(ids);
        Ok(logits)
    }

    /// For each `i`, the log-probability of `ids[i + 1]` after `ids[..=i]` with the `top_n`
    /// most likely alternatives (under the raw logits). Evaluates from an empty cache and
    /// leaves the cache holding `ids`.
    pub fn score(&mut self, ids: &[u32], top_n: usize) -> Result<Vec<TokenLogprob>> {
        let n_vocab = self.model.config.n_vocab;
        if ids.is_empty() {
            return invalid("no token ids to score");
        }
        if ids.len() > self.n_ctx() {
            return invalid(format!(
                "{} token ids are more than the context of {} tokens (n_ctx)",
                ids.len(),
                self.n_ctx()
            ));
        }
        for &t in ids {
            check_token_id(&Arg::Val(t as i128), n_vocab)?;
        }
        check_top_n(&Arg::Val(top_n as i128), n_vocab)?;
        self.reset();
        let logits = self.eval_all(ids)?;
        let rows = logits.chunks_exact(n_vocab);
        Ok(rows
            .zip(&ids[1..])
            .map(|(row, &next)| TokenLogprob::new(row, next, top_n))
            .collect())
    }

    /// Make the cache hold exactly `prompt` and return the logits after its last token and
    /// how many of its tokens were already cached: the longest prefix already there is
    /// reused (a chat that grows re-evaluates only the end).
    fn load_prompt(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
        check_prompt(prompt, self.n_ctx(), self.model.config.n_vocab)?;
        let common = common_prefix(&self.tokens, prompt);
        // At least the last prompt token is evaluated again: its logits are not kept.
        let keep = common.min(prompt.len() - 1);
        self.tokens.truncate(keep);
        self.epoch += 1;
        Ok((self.eval_inner(&prompt[keep..], false)?, keep))
    }
}

/// The one check of a prompt before it is evaluated: not empty, within the context, ids in
/// the vocab.
pub fn check_prompt(prompt: &[u32], n_ctx: usize, n_vocab: usize) -> Result<()> {
    if prompt.is_empty() {
        return invalid("the prompt is empty (no text and no BOS token)");
    }
    if prompt.len() > n_ctx {
        return invalid(format!(
            "the prompt is {} tokens, longer than the context of {n_ctx} tokens (n_ctx)",
            prompt.len()
        ));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
        return invalid(format!(
            "token id {bad} is outside the vocab (0..{n_vocab})"
        ));
    }
    Ok(())
}

/// How many leading tokens `a` and `b` share (the part of a cache a prompt can reuse).
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
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

/// A value as the caller passed it, or the caller's text (repr) for something that is not a
/// value of this kind (a float for an integer, an integer beyond 128 bits, a string...), so
/// that the error can still say what was given.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg<T> {
    Val(T),
    Bad(String),
}

impl<T> From<T> for Arg<T> {
    fn from(v: T) -> Self {
        Arg::Val(v)
    }
}

/// The (token id, bias) entries of a logit_bias dict, unchecked.
pub type BiasEntries = Vec<(Arg<i128>, Arg<f64>)>;

/// Generation parameters as the caller gives them, unchecked; `validate` is the one place
/// that checks them. The defaults are the Python `GenerationConfig`'s.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateArgs {
    pub max_tokens: Arg<i128>,
    pub top_k: Arg<i128>,
    pub top_p: Arg<f64>,
    pub temp: Arg<f64>,
    pub repeat_penalty: Arg<f64>,
    pub repeat_lastn: Arg<i128>,
    /// None: the model's seed.
    pub seed: Option<Arg<i128>>,
    pub stop: Arg<Vec<String>>,
    pub presence_penalty: Arg<f64>,
    pub frequency_penalty: Arg<f64>,
    /// None, or the entries of a {token id: bias} dict.
    pub logit_bias: Option<Arg<BiasEntries>>,
    pub logprobs: Option<Arg<i128>>,
}

impl Default for GenerateArgs {
    fn default() -> Self {
        GenerateArgs {
            max_tokens: Arg::Val(128),
            top_k: Arg::Val(40),
            top_p: Arg::Val(0.9),
            temp: Arg::Val(0.8),
            repeat_penalty: Arg::Val(1.3),
            repeat_lastn: Arg::Val(64),
            seed: None,
            stop: Arg::Val(Vec::new()),
            presence_penalty: Arg::Val(0.0),
            frequency_penalty: Arg::Val(0.0),
            logit_bias: None,
            logprobs: None,
        }
    }
}

/// Counts (max_tokens, top_k, repeat_lastn, token ids without a vocab) stay within i32, the
/// range every client library can represent.
const MAX_COUNT: i128 = (1 << 31) - 1;
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_CHARS: usize = 256;
pub const MAX_LOGPROBS: i128 = 20;

/// Python's spelling of a float (nan, inf, 5.0), for messages.
fn show_f64(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v:?}")
    }
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn show_int(a: &Arg<i128>) -> String {
    match a {
        Arg::Val(v) => v.to_string(),
        Arg::Bad(s) => clip(s),
    }
}

fn show_float(a: &Arg<f64>) -> String {
    match a {
        Arg::Val(v) => show_f64(*v),
        Arg::Bad(s) => clip(s),
    }
}

/// An integer in `lo..=hi`; `range` completes "{name} must be ...".
fn int_in(name: &'static str, a: &Arg<i128>, lo: i128, hi: i128, range: &str) -> Result<i128> {
    match a {
        Arg::Val(v) if (lo..=hi).contains(v) => Ok(*v),
        _ => param_err(name, format!("{name} must be {range}, got {}", show_int(a))),
    }
}

/// A finite float accepted by `ok`, both as given and as the f32 the sampler uses (1e300 is
/// finite, its f32 is not; 1e-50 is positive, its f32 is 0).
fn float_in(
    name: &'static str,
    a: &Arg<f64>,
    ok: impl Fn(f64) -> bool,
    range: &str,
) -> Result<f32> {
    if let Arg::Val(v) = a {
        let f = *v as f32;
        if v.is_finite() && f.is_finite() && ok(*v) && ok(f as f64) {
            return Ok(f);
        }
    }
    param_err(
        name,
        format!("{name} must be {range}, got {}", show_float(a)),
    )
}

/// A seed: negative means a fresh random seed per generation, the rest of u64 is used as is.
pub fn parse_seed(a: &Arg<i128>) -> Result<Seed> {
    let v = int_in(
        "seed",
        a,
        -(1 << 63),
        (1 << 64) - 1,
        "an integer from -2^63 to 2^64-1 (negative = random)",
    )?;
    Ok(if v < 0 {
        Seed::Random
    } else {
        Seed::Fixed(v as u64)
    })
}

/// `id` as a token of a vocab of `n_vocab`.
pub fn check_token_id(id: &Arg<i128>, n_vocab: usize) -> Result<u32> {
    match id {
        Arg::Val(v) if (0..n_vocab as i128).contains(v) => Ok(*v as u32),
        _ => invalid(format!(
            "token id {} is outside the vocab of {n_vocab}",
            show_int(id)
        )),
    }
}

/// How many alternatives `Session::score` may report: 0 to the vocab size.
pub fn check_top_n(top_n: &Arg<i128>, n_vocab: usize) -> Result<usize> {
    match top_n {
        Arg::Val(v) if (0..=n_vocab as i128).contains(v) => Ok(*v as usize),
        _ => invalid(format!(
            "top_n must be from 0 to the vocab size {n_vocab}, got {}",
            show_int(top_n)
        )),
    }
}

impl GenerateArgs {
    /// Check every parameter (ranges in the messages) and convert to the engine's types.
    /// Token ids in `logit_bias` are checked against `n_vocab` when it is known.
    pub fn validate(&self, n_vocab: Option<usize>) -> Result<GenerateParams> {
        let count = "an integer from 0 to 2^31-1";
        let max_tokens = int_in("max_tokens", &self.max_tokens, 0, MAX_COUNT, count)? as usize;
        let top_k = int_in(
            "top_k",
            &self.top_k,
            0,
            MAX_COUNT,
            "an integer from 0 (all tokens) to 2^31-1",
        )? as usize;
        let repeat_lastn =
            int_in("repeat_lastn", &self.repeat_lastn, 0, MAX_COUNT, count)? as usize;
        let top_p = float_in("top_p", &self.top_p, |v| v > 0.0 && v <= 1.0, "in (0, 1]")?;
        let temp = float_in(
            "temp",
            &self.temp,
            |v| v >= 0.0,
            "a finite number >= 0 (0 = greedy)",
        )?;
        let repeat_penalty = float_in(
            "repeat_penalty",
            &self.repeat_penalty,
            |v| v > 0.0,
            "a finite number > 0 (1 = off)",
        )?;
        let openai = |v: f64| (-2.0..=2.0).contains(&v);
        let presence_penalty = float_in(
            "presence_penalty",
            &self.presence_penalty,
            openai,
            "in [-2, 2]",
        )?;
        let frequency_penalty = float_in(
            "frequency_penalty",
            &self.frequency_penalty,
            openai,
            "in [-2, 2]",
        )?;
        let seed = self.seed.as_ref().map(parse_seed).transpose()?;
        let stop_rule = format!(
            "a list of at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} characters"
        );
        let stop = match &self.stop {
            Arg::Bad(s) => {
                return param_err("stop", format!("stop must be {stop_rule}, got {}", clip(s)))
            }
            Arg::Val(v) if v.len() > MAX_STOP_STRINGS => {
                return param_err(
                    "stop",
                    format!("stop must be {stop_rule}, got {} strings", v.len()),
                )
            }
            Arg::Val(v) => {
                if let Some(bad) = v
                    .iter()
                    .find(|s| s.is_empty() || s.chars().count() > MAX_STOP_CHARS)
                {
                    return param_err(
                        "stop",
                        format!("stop must be {stop_rule}, got {:?}", clip(bad)),
                    );
                }
                v.clone()
            }
        };
        let mut logit_bias = Vec::new();
        match &self.logit_bias {
            None => {}
            Some(Arg::Bad(s)) => {
                return param_err(
                    "logit_bias",
                    format!(
                        "logit_bias must be a dict {{token id: bias}}, got {}",
                        clip(s)
                    ),
                )
            }
            Some(Arg::Val(entries)) => {
                let (hi, vocab) = match n_vocab {
                    Some(n) => (
                        n as i128 - 1,
                        format!("{} (the vocab has {n})", n as i128 - 1),
                    ),
                    None => (MAX_COUNT, "2^31-1".to_string()),
                };
                for (id, bias) in entries {
                    let id = match id {
                        Arg::Val(v) if (0..=hi).contains(v) => *v as u32,
                        _ => {
                            let got = show_int(id);
                            return param_err("logit_bias", format!("logit_bias keys must be token ids from 0 to {vocab}, got {got}"));
                        }
                    };
                    let b = match bias {
                        Arg::Val(v) if v.is_finite() && (-100.0..=100.0).contains(v) => *v as f32,
                        _ => {
                            let got = show_float(bias);
                            return param_err("logit_bias", format!("logit_bias values must be in [-100, 100], got {got} for token {id}"));
                        }
                    };
                    logit_bias.push((id, b));
                }
            }
        }
        let logprobs = match &self.logprobs {
            None => None,
            Some(a) => Some(int_in(
                "logprobs",
                a,
                0,
                MAX_LOGPROBS,
                "None (off) or an integer from 0 to 20 (alternatives per token)",
            )? as usize),
        };
        Ok(GenerateParams {
            max_tokens,
            sampling: SamplingParams {
                top_k,
                top_p,
                temp,
                repeat_penalty,
                repeat_lastn,
                presence_penalty,
                frequency_penalty,
                logit_bias,
            },
            seed,
            stop,
            logprobs,
        })
    }
}

/// Checked generation parameters: build them with `GenerateArgs::validate`.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// None: random, unless the caller fills in its default first.
    pub seed: Option<Seed>,
    pub stop: Vec<String>,
    /// Record each token's log-probability with this many alternatives; None: off.
    pub logprobs: Option<usize>,
}

/// What a generation needs next ([`Generation::next_input`]).
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Finished; the last text, if any.
    Done(Option<String>),
    /// Evaluate this token (the one sampled last) and [`Generation::feed`] the logits.
    Eval(u32),
    /// Logits are ready: [`Generation::sample`].
    Sample,
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
    /// Of those, the ones the cache already held (not evaluated again).
    pub cached_tokens: usize,
    pub generated: usize,
    pub finish: Option<FinishReason>,
    /// Log-probabilities recorded since the last `take_logprobs` (when `params.logprobs`).
    logprobs: Vec<TokenLogprob>,
    epoch: u64,
}

impl Generation {
    /// Evaluate the prompt and get ready to generate. `params` come from
    /// `GenerateArgs::validate`; a `seed` of None draws a random one.
    pub fn start(s: &mut Session, prompt: &[u32], params: GenerateParams) -> Result<Generation> {
        let (logits, cached) = s.load_prompt(prompt)?;
        Ok(Generation::after_prompt(s, prompt, cached, params, logits))
    }

    /// A generation whose prompt is already in `s` (its last token's `logits` given; its
    /// first `cached_tokens` were in the cache before).
    pub fn after_prompt(
        s: &Session,
        prompt: &[u32],
        cached_tokens: usize,
        params: GenerateParams,
        logits: Vec<f32>,
    ) -> Generation {
        // After prompt text the first piece keeps its space ("is" + " a"); after BOS alone
        // the text starts fresh, as a whole decode would.
        let follows_text = prompt.iter().any(|&t| Some(t) != s.model.tokenizer.bos());
        let decoder = if follows_text {
            StreamDecoder::continuing()
        } else {
            StreamDecoder::new()
        };
        Generation {
            rng: Rng::new(params.seed.unwrap_or(Seed::Random).value()),
            params,
            logits,
            pending: None,
            decoder,
            held: String::new(),
            prompt_tokens: prompt.len(),
            cached_tokens,
            generated: 0,
            finish: None,
            logprobs: Vec::new(),
            epoch: s.epoch,
        }
    }

    /// The next piece of text (possibly empty while a UTF-8 character or a possible stop
    /// string is incomplete), or None once finished and everything was returned.
    pub fn step(&mut self, s: &mut Session) -> Result<Option<String>> {
        match self.next_input(s)? {
            Next::Done(piece) => return Ok(piece),
            Next::Eval(t) => self.logits = s.eval_inner(&[t], false)?,
            Next::Sample => {}
        }
        Ok(self.sample(s))
    }

    /// What the generation needs before its next token: nothing more (finished, with the
    /// last text), the evaluation of the token it sampled last, or just sampling (right
    /// after the prompt). A batch driver evaluates the `Eval` tokens of many generations in
    /// one forward pass and hands each its logits ([`Generation::feed`]).
    pub fn next_input(&mut self, s: &Session) -> Result<Next> {
        if self.finish.is_some() {
            return Ok(Next::Done(None));
        }
        if s.epoch != self.epoch {
            return invalid("the model was used for something else since this generation started; start it again");
        }
        if self.generated >= self.params.max_tokens {
            return Ok(Next::Done(self.end(s, FinishReason::Length)));
        }
        match self.pending.take() {
            Some(_) if s.tokens.len() >= s.n_ctx() => {
                Ok(Next::Done(self.end(s, FinishReason::Context)))
            }
            Some(t) => {
                self.pending = Some(t);
                Ok(Next::Eval(t))
            }
            None => Ok(Next::Sample),
        }
    }

    /// The logits after the `Eval` token of [`Generation::next_input`], evaluated by the
    /// caller into `s`'s cache (position `s.tokens().len()`), which this records.
    pub fn feed(&mut self, s: &mut Session, logits: Vec<f32>) {
        let t = self.pending.take().expect("feed follows next_input's Eval");
        s.tokens.push(t);
        self.logits = logits;
    }

    /// Sample the next token from the current logits: its text piece, or the end.
    pub fn sample(&mut self, s: &Session) -> Option<String> {
        // The cache holds the prompt and every token generated so far (the epoch says so).
        let generated = s.tokens.get(self.prompt_tokens..).unwrap_or(&[]);
        let tok = sample(
            &self.logits,
            &s.tokens,
            generated,
            &self.params.sampling,
            &mut self.rng,
        );
        // Any end-of-generation token (eos, end of turn, end of message) ends it, unprinted.
        if s.model.tokenizer.is_eog(tok) {
            return self.end(s, FinishReason::Eos);
        }
        if let Some(n) = self.params.logprobs {
            self.logprobs.push(TokenLogprob::new(&self.logits, tok, n));
        }
        self.generated += 1;
        self.pending = Some(tok);
        let piece = self.decoder.push(&s.model.tokenizer, tok);
        Some(self.filter_stop(piece))
    }

    /// The log-probabilities recorded since the last call (none unless `logprobs` was set).
    pub fn take_logprobs(&mut self) -> Vec<TokenLogprob> {
        std::mem::take(&mut self.logprobs)
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
        let first = self
            .params
            .stop
            .iter()
            .filter_map(|x| self.held.find(x.as_str()))
            .min();
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
            .find(|&i| {
                self.params
                    .stop
                    .iter()
                    .any(|x| x.starts_with(&self.held[i..]))
            })
            .unwrap_or(self.held.len());
        let out = self.held[..hold].to_string();
        self.held.drain(..hold);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn param_of(r: Result<GenerateParams>) -> (&'static str, String) {
        match r {
            Err(Error::Param { name, msg }) => (name, msg),
            other => panic!("expected a parameter error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_validate_to_the_sampler_defaults() {
        let p = GenerateArgs::default().validate(None).unwrap();
        assert_eq!(p.sampling, SamplingParams::default());
        assert_eq!((p.max_tokens, p.seed, p.logprobs), (128, None, None));
        assert!(p.stop.is_empty());
    }

    #[test]
    fn seeds_cover_i64_negatives_and_all_of_u64() {
        let seed = |v: i128| {
            GenerateArgs {
                seed: Some(v.into()),
                ..Default::default()
            }
            .validate(None)
            .map(|p| p.seed)
        };
        assert_eq!(seed(-1).unwrap(), Some(Seed::Random));
        assert_eq!(seed(-(1 << 63)).unwrap(), Some(Seed::Random));
        assert_eq!(seed(0).unwrap(), Some(Seed::Fixed(0)));
        assert_eq!(seed((1 << 64) - 1).unwrap(), Some(Seed::Fixed(u64::MAX)));
        for bad in [1 << 64, -(1 << 63) - 1, i128::MAX] {
            let (name, msg) = param_of(
                GenerateArgs {
                    seed: Some(bad.into()),
                    ..Default::default()
                }
                .validate(None),
            );
            assert_eq!(name, "seed");
            assert!(
                msg.contains("-2^63 to 2^64-1") && msg.ends_with(&bad.to_string()),
                "{msg}"
            );
        }
    }

    #[test]
    fn every_bad_value_names_its_parameter() {
        let d = GenerateArgs::default;
        let cases: Vec<(GenerateArgs, &str)> = vec![
            (
                GenerateArgs {
                    max_tokens: (-1).into(),
                    ..d()
                },
                "max_tokens",
            ),
            (
                GenerateArgs {
                    max_tokens: (1i128 << 31).into(),
                    ..d()
                },
                "max_tokens",
            ),
            (
                GenerateArgs {
                    max_tokens: Arg::Bad("5.0".into()),
                    ..d()
                },
                "max_tokens",
            ),
            (
                GenerateArgs {
                    top_k: (-1).into(),
                    ..d()
                },
                "top_k",
            ),
            (
                GenerateArgs {
                    repeat_lastn: (1i128 << 40).into(),
                    ..d()
                },
                "repeat_lastn",
            ),
            (
                GenerateArgs {
                    top_p: 0.0.into(),
                    ..d()
                },
                "top_p",
            ),
            (
                GenerateArgs {
                    top_p: 5.0.into(),
                    ..d()
                },
                "top_p",
            ),
            (
                GenerateArgs {
                    top_p: f64::NAN.into(),
                    ..d()
                },
                "top_p",
            ),
            (
                GenerateArgs {
                    top_p: 1e-50.into(),
                    ..d()
                },
                "top_p",
            ), // 0 as f32
            (
                GenerateArgs {
                    temp: (-0.5).into(),
                    ..d()
                },
                "temp",
            ),
            (
                GenerateArgs {
                    temp: f64::INFINITY.into(),
                    ..d()
                },
                "temp",
            ),
            (
                GenerateArgs {
                    temp: 1e300.into(),
                    ..d()
                },
                "temp",
            ), // inf as f32
            (
                GenerateArgs {
                    repeat_penalty: 0.0.into(),
                    ..d()
                },
                "repeat_penalty",
            ),
            (
                GenerateArgs {
                    presence_penalty: 2.5.into(),
                    ..d()
                },
                "presence_penalty",
            ),
            (
                GenerateArgs {
                    frequency_penalty: (-2.01).into(),
                    ..d()
                },
                "frequency_penalty",
            ),
            (
                GenerateArgs {
                    stop: vec![String::new()].into(),
                    ..d()
                },
                "stop",
            ),
            (
                GenerateArgs {
                    stop: vec!["x".repeat(257)].into(),
                    ..d()
                },
                "stop",
            ),
            (
                GenerateArgs {
                    stop: vec!["x".to_string(); 17].into(),
                    ..d()
                },
                "stop",
            ),
            (
                GenerateArgs {
                    stop: Arg::Bad("5".into()),
                    ..d()
                },
                "stop",
            ),
            (
                GenerateArgs {
                    logit_bias: Some(Arg::Bad("[1]".into())),
                    ..d()
                },
                "logit_bias",
            ),
            (
                GenerateArgs {
                    logit_bias: Some(vec![((-1).into(), 1.0.into())].into()),
                    ..d()
                },
                "logit_bias",
            ),
            (
                GenerateArgs {
                    logit_bias: Some(vec![(3.into(), 1e9.into())].into()),
                    ..d()
                },
                "logit_bias",
            ),
            (
                GenerateArgs {
                    logit_bias: Some(vec![(3.into(), f64::NAN.into())].into()),
                    ..d()
                },
                "logit_bias",
            ),
            (
                GenerateArgs {
                    logprobs: Some(21.into()),
                    ..d()
                },
                "logprobs",
            ),
            (
                GenerateArgs {
                    logprobs: Some((-1).into()),
                    ..d()
                },
                "logprobs",
            ),
        ];
        for (args, want) in cases {
            let (name, msg) = param_of(args.validate(None));
            assert_eq!(name, want, "{msg}");
            assert!(msg.starts_with(want), "{msg}");
        }
        let (_, msg) = param_of(
            GenerateArgs {
                top_p: 5.0.into(),
                ..d()
            }
            .validate(None),
        );
        assert_eq!(msg, "top_p must be in (0, 1], got 5.0");
    }

    #[test]
    fn logit_bias_ids_are_checked_against_the_vocab_when_known() {
        let args = GenerateArgs {
            logit_bias: Some(vec![(99.into(), (-100.0).into()), (5.into(), 100.0.into())].into()),
            ..Default::default()
        };
        assert_eq!(
            args.validate(Some(100)).unwrap().sampling.logit_bias,
            vec![(99, -100.0), (5, 100.0)]
        );
        assert!(args.validate(None).is_ok());
        let (name, msg) = param_of(args.validate(Some(99)));
        assert_eq!(name, "logit_bias");
        assert!(
            msg.contains("from 0 to 98") && msg.ends_with("got 99"),
            "{msg}"
        );
    }

    #[test]
    fn token_ids_are_checked() {
        assert_eq!(check_token_id(&4.into(), 5).unwrap(), 4);
        assert_eq!(
            check_token_id(&5.into(), 5),
            invalid("token id 5 is outside the vocab of 5")
        );
        assert!(check_token_id(&(-1).into(), 5).is_err());
        assert_eq!(
            check_token_id(&Arg::Bad("10**50".into()), 5),
            invalid("token id 10**50 is outside the vocab of 5")
        );
        assert_eq!(check_top_n(&5.into(), 5).unwrap(), 5);
        assert!(check_top_n(&6.into(), 5).is_err() && check_top_n(&(-1).into(), 5).is_err());
    }
}
