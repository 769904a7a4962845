//! Continuous batching: several generations on one model, each in its own slot (a KV cache
//! and the tokens in it), stepped together so each forward pass reads the weights once for
//! all of them. Sequences join and leave at any step; a prompt is evaluated in chunks
//! between decode steps so running streams keep flowing; a new request takes the free slot
//! whose cached tokens share the longest prefix with its prompt (a prefix cache: a chat's
//! history is not evaluated again). Each sequence's tokens are the bits it gets alone
//! (`Model::forward_batch`).

use crate::error::{invalid, Error, Result};
use crate::model::{BatchRow, KvType, Model};
use crate::sampling::TokenLogprob;
use crate::session::{
    check_prompt, common_prefix, FinishReason, GenerateParams, Generation, Next, Session,
};
use std::sync::Arc;

/// Prompt tokens evaluated per step, over all prefilling sequences (the rest wait a step).
/// Prompt speed stops growing at about 64 tokens per pass (TinyLlama Q4_0 on the 2-core Xeon:
/// 107, 165, 162, 154 tok/s at 32, 64, 128, 256; BENCHMARKS.md), while running streams wait
/// for the whole chunk at every step: 64 keeps both.
pub const DEFAULT_PREFILL_CHUNK: usize = 64;

/// What one step produced for one sequence.
#[derive(Debug, PartialEq)]
pub struct Event {
    pub id: u64,
    /// Text (possibly empty while a character or a possible stop string is incomplete).
    pub piece: Option<String>,
    /// Set on the sequence's last event; its slot is free again.
    pub finish: Option<FinishReason>,
    /// Tokens generated so far (end-of-generation tokens not counted).
    pub tokens: usize,
    /// Tokens of the prompt (those reused from the prefix cache included).
    pub prompt_tokens: usize,
    /// The log-probabilities of the tokens sampled since the last event (when asked for).
    pub logprobs: Vec<TokenLogprob>,
}

impl Event {
    fn of(id: u64, piece: Option<String>, gen: &mut Generation) -> Event {
        Event {
            id,
            piece,
            finish: gen.finish,
            tokens: gen.generated,
            prompt_tokens: gen.prompt_tokens,
            logprobs: gen.take_logprobs(),
        }
    }
}

struct Job {
    id: u64,
    prompt: Vec<u32>,
    params: Option<GenerateParams>,
    /// Prompt tokens already in the cache.
    fed: usize,
    gen: Option<Generation>,
}

struct Slot {
    session: Session,
    job: Option<Job>,
}

pub struct Batch {
    model: Arc<Model>,
    pool: rayon::ThreadPool,
    slots: Vec<Slot>,
    prefill_chunk: usize,
    next_id: u64,
}

impl Batch {
    /// `n_parallel` slots of `n_ctx` positions each, stepped on `n_threads` threads.
    pub fn new(
        model: Arc<Model>,
        n_ctx: usize,
        n_threads: usize,
        kv_type: KvType,
        n_parallel: usize,
        prefill_chunk: usize,
    ) -> Result<Batch> {
        if n_parallel == 0 || n_parallel > 256 {
            return invalid(format!(
                "n_parallel must be between 1 and 256, got {n_parallel}"
            ));
        }
        if prefill_chunk == 0 {
            return invalid("prefill_chunk must be at least 1");
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n_threads.max(1))
            .thread_name(|i| format!("llama-rs-batch-{i}"))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start {n_threads} threads: {e}")))?;
        let slots = (0..n_parallel)
            .map(|_| {
                // Each slot's own pool is never used for the batch's passes: one thread.
                Session::new(model.clone(), n_ctx, 1, kv_type)
                    .map(|session| Slot { session, job: None })
            })
            .collect::<Result<_>>()?;
        Ok(Batch {
            model,
            pool,
            slots,
            prefill_chunk,
            next_id: 0,
        })
    }

    /// Sequences running (or waiting to finish).
    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.job.is_some()).count()
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// KV cells holding a token of a running sequence.
    pub fn kv_used(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.job.is_some())
            .map(|s| s.session.tokens().len())
            .sum()
    }

    /// KV cells holding a token kept for the prefix cache (in free slots).
    pub fn kv_cached(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.job.is_none())
            .map(|s| s.session.tokens().len())
            .sum()
    }

    /// Positions per slot.
    pub fn n_ctx(&self) -> usize {
        self.slots[0].session.n_ctx()
    }

    /// Start a generation of `prompt`; its events carry the returned id. An error when every
    /// slot is busy or the prompt does not fit.
    pub fn add(&mut self, prompt: &[u32], params: GenerateParams) -> Result<u64> {
        check_prompt(prompt, self.n_ctx(), self.model.config.n_vocab)?;
        // The free slot that already holds the longest prefix of this prompt.
        let common = |s: &Slot| common_prefix(s.session.tokens(), prompt);
        let Some(slot) = self
            .slots
            .iter_mut()
            .filter(|s| s.job.is_none())
            .max_by_key(|s| common(s))
        else {
            return invalid(format!("all {} sequences are busy", self.slots.len()));
        };
        // At least the last prompt token is evaluated again: its logits are not kept.
        let keep = common(slot).min(prompt.len() - 1);
        let (_, tokens) = slot.session.cache_for_batch();
        tokens.truncate(keep);
        let id = self.next_id;
        self.next_id += 1;
        slot.job = Some(Job {
            id,
            prompt: prompt.to_vec(),
            params: Some(params),
            fed: keep,
            gen: None,
        });
        Ok(id)
    }

    /// Stop sequence `id` now (its slot is free; its cached tokens stay for the prefix cache).
    /// False if no such sequence is running.
    pub fn cancel(&mut self, id: u64) -> bool {
        match self
            .slots
            .iter_mut()
            .find(|s| s.job.as_ref().is_some_and(|j| j.id == id))
        {
            Some(s) => {
                s.job = None;
                true
            }
            None => false,
        }
    }

    /// One forward pass over the next token of every decoding sequence and a chunk of each
    /// prefilling one; the events it produced (at most one per sequence).
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut rows: Vec<BatchRow> = Vec::new();
        // Which slot each batch row's logits go to, in order.
        let mut takers: Vec<usize> = Vec::new();
        let mut seqs: Vec<usize> = Vec::new();
        let mut budget = self.prefill_chunk;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(job) = slot.job.as_mut() else {
                continue;
            };
            let seq = seqs.len();
            if let Some(gen) = job.gen.as_mut() {
                match gen.next_input(&slot.session)? {
                    Next::Done(piece) => {
                        events.push(Event::of(job.id, piece, gen));
                        slot.job = None;
                    }
                    Next::Eval(t) => {
                        rows.push(BatchRow {
                            seq,
                            token: t,
                            pos: slot.session.tokens().len(),
                            logits: true,
                        });
                        takers.push(i);
                        seqs.push(i);
                    }
                    Next::Sample => unreachable!("a generation samples right after its logits"),
                }
            } else if budget > 0 {
                let n = (job.prompt.len() - job.fed).min(budget);
                budget -= n;
                for k in 0..n {
                    let pos = job.fed + k;
                    let last = pos + 1 == job.prompt.len();
                    rows.push(BatchRow {
                        seq,
                        token: job.prompt[pos],
                        pos,
                        logits: last,
                    });
                    if last {
                        takers.push(i);
                    }
                }
                seqs.push(i);
            }
        }
        if rows.is_empty() {
            return Ok(events);
        }
        let model = self.model.clone();
        let logits = {
            let mut caches: Vec<&mut crate::model::KvCache> = Vec::with_capacity(seqs.len());
            // Slots in `seqs` order (ascending, so one pass of iter_mut finds them).
            let mut want = seqs.iter().peekable();
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if want.peek() == Some(&&i) {
                    want.next();
                    caches.push(slot.session.cache_mut());
                }
            }
            self.pool
                .install(|| model.forward_batch(&mut caches, &rows))?
        };
        let n_vocab = self.model.config.n_vocab;
        let mut rows_logits = logits.chunks_exact(n_vocab);
        // Prompt tokens evaluated this step become cached tokens.
        for row in &rows {
            let slot = &mut self.slots[seqs[row.seq]];
            let job = slot.job.as_mut().expect("a batch row's slot has a job");
            if job.gen.is_none() {
                let (_, tokens) = slot.session.cache_for_batch();
                tokens.push(row.token);
                job.fed += 1;
            }
        }
        for &i in &takers {
            let l = rows_logits
                .next()
                .expect("one logits row per taker")
                .to_vec();
            let slot = &mut self.slots[i];
            let job = slot.job.as_mut().expect("a taker has a job");
            let gen = match job.gen.as_mut() {
                Some(gen) => {
                    gen.feed(&mut slot.session, l);
                    gen
                }
                None => {
                    let params = job.params.take().expect("params until the prompt is in");
                    job.gen.insert(Generation::after_prompt(
                        &slot.session,
                        &job.prompt,
                        params,
                        l,
                    ))
                }
            };
            // A new generation may be over before its first token (max_tokens 0).
            let piece = match gen.next_input(&slot.session)? {
                Next::Sample => gen.sample(&slot.session),
                Next::Done(piece) => piece,
                Next::Eval(_) => unreachable!("logits were just fed"),
            };
            let finish = gen.finish;
            events.push(Event::of(job.id, piece, gen));
            if finish.is_some() {
                slot.job = None;
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny_model;
    use crate::quant::GgmlType;
    use crate::sampling::{SamplingParams, Seed};

    fn params(seed: u64, max_tokens: usize) -> GenerateParams {
        GenerateParams {
            max_tokens,
            sampling: SamplingParams {
                temp: 1.0,
                ..SamplingParams::default()
            },
            seed: Some(Seed::Fixed(seed)),
            stop: Vec::new(),
            logprobs: None,
        }
    }

    fn alone(
        model: &Arc<Model>,
        prompt: &[u32],
        p: GenerateParams,
    ) -> (String, Option<FinishReason>, Vec<u32>) {
        let mut s = Session::new(model.clone(), 64, 1, KvType::F16).unwrap();
        let mut g = Generation::start(&mut s, prompt, p).unwrap();
        let mut text = String::new();
        while let Some(piece) = g.step(&mut s).unwrap() {
            text.push_str(&piece);
        }
        (text, g.finish, s.tokens().to_vec())
    }

    /// Every sequence generates what it generates alone (same seed), whatever runs beside it
    /// and whenever it joins, with prompts prefilled in chunks between decode steps.
    #[test]
    fn batched_generations_equal_each_alone() {
        let model = Arc::new(tiny_model(GgmlType::Q4_0));
        let prompts: Vec<Vec<u32>> = vec![
            (0..30).map(|i| (i * 7 % 47) as u32).collect(),
            vec![1, 2, 3],
            (0..19).map(|i| (i * 5 % 43) as u32 + 1).collect(),
            vec![5],
            (0..30).map(|i| (i * 7 % 47) as u32).chain([9, 9]).collect(),
        ];
        let lens = [12, 20, 7, 0, 16]; // 0: over before its first token
        let want: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(k, p)| alone(&model, p, params(100 + k as u64, lens[k])))
            .collect();
        for chunk in [1, 5, 256] {
            let mut b = Batch::new(model.clone(), 64, 2, KvType::F16, 3, chunk).unwrap();
            let mut texts: Vec<String> = vec![String::new(); prompts.len()];
            let mut finish = vec![None; prompts.len()];
            let mut ids: Vec<Option<u64>> = vec![None; prompts.len()];
            let mut next = 0;
            let mut steps = 0;
            while finish.iter().any(Option::is_none) {
                // Join whenever a slot is free (three slots for five requests).
                while next < prompts.len() && b.active() < b.capacity() {
                    ids[next] = Some(
                        b.add(&prompts[next], params(100 + next as u64, lens[next]))
                            .unwrap(),
                    );
                    next += 1;
                }
                for e in b.step().unwrap() {
                    let k = ids.iter().position(|&i| i == Some(e.id)).unwrap();
                    texts[k].push_str(e.piece.as_deref().unwrap_or(""));
                    if e.finish.is_some() {
                        finish[k] = e.finish;
                    }
                }
                steps += 1;
                assert!(steps < 1000, "no progress");
            }
            for k in 0..prompts.len() {
                assert_eq!(
                    (&texts[k], finish[k]),
                    (&want[k].0, want[k].1),
                    "chunk {chunk} sequence {k}"
                );
            }
        }
    }

    #[test]
    fn a_prompt_sharing_a_cached_prefix_takes_that_slot() {
        let model = Arc::new(tiny_model(GgmlType::Q8_0));
        let mut b = Batch::new(model.clone(), 64, 1, KvType::F16, 2, 256).unwrap();
        let history: Vec<u32> = (1..25).collect();
        let other: Vec<u32> = (30..40).collect();
        let a = b.add(&history, params(1, 3)).unwrap();
        let o = b.add(&other, params(2, 3)).unwrap();
        while b.active() > 0 {
            b.step().unwrap();
        }
        let _ = (a, o);
        // The next turn extends the history: only its new tokens are evaluated (one step
        // with a chunk of 4 finishes the prompt instead of 7).
        let mut longer = history.clone();
        longer.extend([3, 4, 5]);
        let mut b2 = b;
        b2.prefill_chunk = 4;
        b2.add(&longer, params(3, 1)).unwrap();
        let slot = b2.slots.iter().find(|s| s.job.is_some()).unwrap();
        assert!(
            slot.session.tokens().starts_with(&history[..20]),
            "prefix kept"
        );
        assert_eq!(slot.job.as_ref().unwrap().fed, slot.session.tokens().len());
        let ev = b2.step().unwrap();
        assert_eq!(ev.len(), 1, "the whole new part fit in one chunk: {ev:?}");
        assert_eq!(
            alone(&model, &longer, params(3, 1)).0,
            ev[0].piece.clone().unwrap_or_default()
        );
    }

    /// The logits after a prompt whose start was reused from the cache are the bits of a
    /// prompt evaluated from nothing (all of the vocab's log-probabilities compared).
    #[test]
    fn prefix_reuse_gives_the_logits_of_no_reuse() {
        let model = Arc::new(tiny_model(GgmlType::Q4_0));
        let n_vocab = model.config.n_vocab;
        let history: Vec<u32> = (0..27).map(|i| (i * 11 % 45) as u32 + 1).collect();
        let mut turn = history.clone();
        turn.extend([7, 8, 9, 10, 11]);
        let scored = |p: GenerateParams| GenerateParams {
            logprobs: Some(n_vocab),
            ..p
        };
        let first_logprobs = |b: &mut Batch, prompt: &[u32]| {
            b.add(prompt, scored(params(5, 1))).unwrap();
            let mut got = Vec::new();
            while b.active() > 0 {
                for e in b.step().unwrap() {
                    got.extend(e.logprobs);
                }
            }
            got
        };
        for chunk in [3, 256] {
            let mut fresh = Batch::new(model.clone(), 64, 1, KvType::F16, 1, chunk).unwrap();
            let want = first_logprobs(&mut fresh, &turn);
            let mut reused = Batch::new(model.clone(), 64, 1, KvType::F16, 1, chunk).unwrap();
            first_logprobs(&mut reused, &history);
            let before = reused.kv_cached();
            let got = first_logprobs(&mut reused, &turn);
            assert!(before >= history.len(), "the history stayed cached");
            assert_eq!(want.len(), 1);
            assert_eq!(want[0].top.len(), n_vocab);
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn full_and_bad_requests_are_errors() {
        let model = Arc::new(tiny_model(GgmlType::Q8_0));
        let mut b = Batch::new(model, 16, 1, KvType::F16, 1, 8).unwrap();
        assert!(b
            .add(&[], params(1, 1))
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(b
            .add(&[1; 17], params(1, 1))
            .unwrap_err()
            .to_string()
            .contains("longer than the context"));
        assert!(b
            .add(&[99], params(1, 1))
            .unwrap_err()
            .to_string()
            .contains("outside the vocab"));
        let id = b.add(&[1, 2], params(1, 5)).unwrap();
        assert!(b
            .add(&[1, 2], params(1, 5))
            .unwrap_err()
            .to_string()
            .contains("busy"));
        assert!(b.cancel(id));
        assert!(!b.cancel(id));
        assert_eq!(b.active(), 0);
        // Running into the context ends with Context.
        b.add(&[1; 10], params(1, 100)).unwrap();
        let mut last = None;
        while b.active() > 0 {
            for e in b.step().unwrap() {
                last = e.finish;
            }
        }
        assert_eq!(last, Some(FinishReason::Context));
    }
}
