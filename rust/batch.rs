//! Continuous batching: several generations on one model, each in its own slot (a KV cache
//! and the tokens in it), stepped together so each forward pass reads the weights once for
//! all of them. Sequences join and leave at any step; a prompt is evaluated in chunks
//! between decode steps so running streams keep flowing; a new request takes the free slot
//! whose cached tokens share the longest prefix with its prompt (a prefix cache: a chat's
//! history is not evaluated again). Each sequence's tokens are the bits it gets alone
//! (`Model::forward_batch`).
//!
//! KV memory is one pool of `kv_cells` cells (positions) shared by the slots. A slot's cache
//! starts empty and grows on demand (doubling, up to what its sequence may need), so memory
//! follows the tokens held, not `n_parallel x n_ctx`. A sequence is admitted only when the
//! pool can hold all it may need, `min(prompt + max_tokens, n_ctx)` cells, beside what the
//! running sequences hold or have reserved; the caches kept in free slots for the prefix
//! cache give way (least recently used first). Otherwise `add` fails with `Error::KvFull`
//! and the caller keeps the request waiting. So a running sequence never runs out of cells,
//! and only a failed allocation (the machine's memory, not the pool) can end one early:
//! with an error event for that sequence alone.

use crate::error::{invalid, Error, Result};
use crate::model::{BatchRow, KvCache, KvType, Model};
use crate::sampling::TokenLogprob;
use crate::session::{
    check_prompt, common_prefix, FinishReason, GenerateParams, Generation, Next, Session,
};
use std::cmp::Reverse;
use std::sync::Arc;

/// Prompt tokens evaluated per step, over all prefilling sequences (the rest wait a step).
/// Prompt speed stops growing at about 64 tokens per pass (TinyLlama Q4_0 on the 2-core Xeon:
/// 107, 165, 162, 154 tok/s at 32, 64, 128, 256; BENCHMARKS.md), while running streams wait
/// for the whole chunk at every step: 64 keeps both.
pub const DEFAULT_PREFILL_CHUNK: usize = 64;

/// Cells a growing cache takes at least (fewer reallocations while a sequence is short).
const MIN_GROWTH: usize = 32;

/// Most bytes a batch's KV pool may take.
const MAX_KV_BYTES: u128 = 1 << 40;

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
    /// Of those, the ones reused from the prefix cache (not evaluated again).
    pub cached_tokens: usize,
    /// The log-probabilities of the tokens sampled since the last event (when asked for).
    pub logprobs: Vec<TokenLogprob>,
    /// Set (and `finish` None) when the sequence failed: this is its last event.
    pub error: Option<String>,
}

impl Event {
    fn of(id: u64, piece: Option<String>, gen: &mut Generation) -> Event {
        Event {
            id,
            piece,
            finish: gen.finish,
            tokens: gen.generated,
            prompt_tokens: gen.prompt_tokens,
            cached_tokens: gen.cached_tokens,
            logprobs: gen.take_logprobs(),
            error: None,
        }
    }

    fn failed(job: &Job, e: Error) -> Event {
        Event {
            id: job.id,
            piece: None,
            finish: None,
            tokens: job.gen.as_ref().map_or(0, |g| g.generated),
            prompt_tokens: job.prompt.len(),
            cached_tokens: job.cached,
            logprobs: Vec::new(),
            error: Some(e.to_string()),
        }
    }
}

struct Job {
    id: u64,
    prompt: Vec<u32>,
    params: Option<GenerateParams>,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// Prompt tokens the prefix cache held when it started.
    cached: usize,
    gen: Option<Generation>,
    /// Cells the pool keeps for this sequence: all it may hold.
    reserved: usize,
}

struct Slot {
    session: Session,
    job: Option<Job>,
    /// When its last sequence ended (the least recently used prefix cache goes first).
    used: u64,
}

impl Slot {
    fn cells(&self) -> usize {
        self.session.cache().cells()
    }

    /// What the slot takes from the pool: a running sequence its reservation (or the cells
    /// it holds, if more), a free slot the cells it holds.
    fn charge(&self) -> usize {
        let cells = self.cells();
        self.job.as_ref().map_or(cells, |j| j.reserved.max(cells))
    }

    /// Give up its prefix cache: no tokens, no memory.
    fn evict(&mut self) {
        let (cache, tokens) = self.session.cache_for_batch();
        tokens.clear();
        cache.shrink(0, 0);
    }

    /// Make the cache hold `need` positions: at least double what it holds (amortized
    /// copies), at most the job's reservation.
    fn grow(&mut self, need: usize) -> Result<()> {
        let (held, cells) = (self.session.tokens().len(), self.cells());
        if need <= cells {
            return Ok(());
        }
        let reserved = self.job.as_ref().map_or(0, |j| j.reserved);
        if need > reserved {
            return invalid(format!(
                "internal error in llama_rs (please report): {need} KV cells needed, {reserved} reserved"
            ));
        }
        let target = need.max(2 * cells).max(MIN_GROWTH).min(reserved);
        self.session.cache_mut().try_resize(target, held)
    }
}

pub struct Batch {
    model: Arc<Model>,
    pool: Arc<crate::threads::Threads>,
    slots: Vec<Slot>,
    prefill_chunk: usize,
    next_id: u64,
    /// The pool: cells all slots' caches may hold together.
    kv_cells: usize,
    /// The context asked for (each slot's is at most the pool).
    n_ctx: usize,
    /// Ticks at every sequence's end, for `Slot::used`.
    clock: u64,
}

impl Batch {
    /// `n_parallel` slots of up to `n_ctx` positions each, sharing a pool of `kv_cells` KV
    /// cells (None: `n_parallel * n_ctx`, room for every slot's whole context; more is
    /// lowered to that), stepped on `n_threads` threads.
    pub fn new(
        model: Arc<Model>,
        n_ctx: usize,
        n_threads: usize,
        kv_type: KvType,
        n_parallel: usize,
        prefill_chunk: usize,
        kv_cells: Option<usize>,
    ) -> Result<Batch> {
        if n_parallel == 0 || n_parallel > 256 {
            return invalid(format!(
                "n_parallel must be between 1 and 256, got {n_parallel}"
            ));
        }
        if prefill_chunk == 0 {
            return invalid("prefill_chunk must be at least 1");
        }
        if n_ctx == 0 {
            return invalid("n_ctx must be at least 1");
        }
        let all = n_parallel.saturating_mul(n_ctx);
        let kv_cells = kv_cells.unwrap_or(all).min(all);
        if kv_cells == 0 {
            return invalid("kv_cells must be at least 1");
        }
        let bytes = kv_cells as u128 * KvCache::bytes_per_cell(&model.config, kv_type) as u128;
        if bytes > MAX_KV_BYTES {
            return invalid(format!(
                "{kv_cells} KV cells (n_parallel {n_parallel} x n_ctx {n_ctx}, or kv_cells) need {bytes} bytes; choose fewer"
            ));
        }
        let pool = Arc::new(crate::threads::Threads::new(
            n_threads.max(1),
            "llama-rs-batch",
        )?);
        // No sequence can hold more than the whole pool.
        let slot_ctx = n_ctx.min(kv_cells);
        let slots = (0..n_parallel)
            .map(|_| {
                let cache = KvCache::empty(&model.config, slot_ctx, kv_type);
                // The slots' sessions hold the batch's threads: no idle pool per slot.
                let session = Session::with_pool(model.clone(), cache, pool.clone());
                Slot {
                    session,
                    job: None,
                    used: 0,
                }
            })
            .collect();
        Ok(Batch {
            model,
            pool,
            slots,
            prefill_chunk,
            next_id: 0,
            kv_cells,
            n_ctx,
            clock: 0,
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

    /// The pool: KV cells the slots may hold together.
    pub fn kv_cells(&self) -> usize {
        self.kv_cells
    }

    /// KV cells the slots' caches hold allocated now (used, cached or room to grow into).
    pub fn kv_allocated(&self) -> usize {
        self.slots.iter().map(Slot::cells).sum()
    }

    /// Bytes the slots' KV caches hold allocated now.
    pub fn kv_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.session.cache().bytes()).sum()
    }

    /// Positions per slot: the context, or the whole pool if that is smaller.
    pub fn n_ctx(&self) -> usize {
        self.slots[0].session.n_ctx()
    }

    /// Start a generation of `prompt`; its events carry the returned id. `Error::KvFull`
    /// when the pool cannot hold what it may need beside the running sequences (it can once
    /// they finish); another error when every slot is busy or the prompt can never fit.
    pub fn add(&mut self, prompt: &[u32], params: GenerateParams) -> Result<u64> {
        if prompt.len() > self.kv_cells && self.kv_cells < self.n_ctx {
            return invalid(format!(
                "the prompt is {} tokens, more than the {} KV cells of the whole pool (kv_cells)",
                prompt.len(),
                self.kv_cells
            ));
        }
        check_prompt(prompt, self.n_ctx(), self.model.config.n_vocab)?;
        // The free slot that already holds the longest prefix of this prompt (or else the
        // least recently used one, so recent caches stay).
        let common = |s: &Slot| common_prefix(s.session.tokens(), prompt);
        let Some(chosen) = (0..self.slots.len())
            .filter(|&i| self.slots[i].job.is_none())
            .max_by_key(|&i| (common(&self.slots[i]), Reverse(self.slots[i].used)))
        else {
            return invalid(format!("all {} sequences are busy", self.slots.len()));
        };
        let reserved = prompt
            .len()
            .saturating_add(params.max_tokens)
            .min(self.n_ctx());
        let running: usize = self
            .slots
            .iter()
            .filter(|s| s.job.is_some())
            .map(Slot::charge)
            .sum();
        if running + reserved > self.kv_cells {
            return Err(Error::KvFull(format!(
                "the KV cache is full: running sequences hold or reserve {running} of its {} cells and this one needs {reserved}",
                self.kv_cells
            )));
        }
        // Room: other free slots' prefix caches go, least recently used first.
        let mut cached: Vec<usize> = (0..self.slots.len())
            .filter(|&i| i != chosen && self.slots[i].job.is_none() && self.slots[i].cells() > 0)
            .collect();
        cached.sort_by_key(|&i| self.slots[i].used);
        let mut total = running
            + cached.iter().map(|&i| self.slots[i].cells()).sum::<usize>()
            + reserved.max(self.slots[chosen].cells());
        for &i in &cached {
            if total <= self.kv_cells {
                break;
            }
            total -= self.slots[i].cells();
            self.slots[i].evict();
        }
        // At least the last prompt token is evaluated again: its logits are not kept.
        let keep = common(&self.slots[chosen]).min(prompt.len() - 1);
        let slot = &mut self.slots[chosen];
        let (cache, tokens) = slot.session.cache_for_batch();
        tokens.truncate(keep);
        if total > self.kv_cells {
            // Still short: the chosen slot holds more than this sequence may need.
            cache.shrink(reserved, keep);
        }
        let id = self.next_id;
        self.next_id += 1;
        slot.job = Some(Job {
            id,
            prompt: prompt.to_vec(),
            params: Some(params),
            fed: keep,
            cached: keep,
            gen: None,
            reserved,
        });
        Ok(id)
    }

    /// The slot's sequence is over: its cache stays for the prefix cache.
    fn release(slot: &mut Slot, clock: &mut u64) {
        slot.job = None;
        *clock += 1;
        slot.used = *clock;
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
                Self::release(s, &mut self.clock);
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
                        Self::release(slot, &mut self.clock);
                    }
                    Next::Eval(t) => {
                        let pos = slot.session.tokens().len();
                        if let Err(e) = slot.grow(pos + 1) {
                            events.push(Event::failed(slot.job.as_ref().expect("running"), e));
                            Self::release(slot, &mut self.clock);
                            continue;
                        }
                        rows.push(BatchRow {
                            seq,
                            token: t,
                            pos,
                            logits: true,
                        });
                        takers.push(i);
                        seqs.push(i);
                    }
                    Next::Sample => unreachable!("a generation samples right after its logits"),
                }
            } else if budget > 0 {
                let (fed, n) = (job.fed, (job.prompt.len() - job.fed).min(budget));
                if let Err(e) = slot.grow(fed + n) {
                    events.push(Event::failed(slot.job.as_ref().expect("running"), e));
                    Self::release(slot, &mut self.clock);
                    continue;
                }
                let job = slot.job.as_ref().expect("running");
                budget -= n;
                for k in 0..n {
                    let pos = fed + k;
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
                .install(|| model.forward_batch(&mut caches, &rows))??
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
                        job.cached,
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
                Self::release(slot, &mut self.clock);
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
    use crate::session::Generation;

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
        let (text, finish, tokens, _) = alone_in(model, 64, prompt, p);
        (text, finish, tokens)
    }

    /// A generation on a session of its own with an `n_ctx` cache allocated up front: its
    /// text, finish, cached tokens and log-probabilities.
    fn alone_in(
        model: &Arc<Model>,
        n_ctx: usize,
        prompt: &[u32],
        p: GenerateParams,
    ) -> (String, Option<FinishReason>, Vec<u32>, Vec<TokenLogprob>) {
        let mut s = Session::new(model.clone(), n_ctx, 1, KvType::F16).unwrap();
        let mut g = Generation::start(&mut s, prompt, p).unwrap();
        let mut text = String::new();
        let mut logprobs = g.take_logprobs();
        while let Some(piece) = g.step(&mut s).unwrap() {
            text.push_str(&piece);
            logprobs.extend(g.take_logprobs());
        }
        (text, g.finish, s.tokens().to_vec(), logprobs)
    }

    /// Runs `requests` (prompt, params) through `b`, adding each in order as soon as `add`
    /// takes it (a KV-full answer keeps it waiting, as a server's queue does): per request
    /// its text, finish and log-probabilities, and the most sequences that ran at once.
    #[allow(clippy::type_complexity)]
    fn run_all(
        b: &mut Batch,
        requests: &[(Vec<u32>, GenerateParams)],
    ) -> (
        Vec<(String, Option<FinishReason>, Vec<TokenLogprob>)>,
        usize,
        usize,
    ) {
        let n = requests.len();
        let mut out: Vec<(String, Option<FinishReason>, Vec<TokenLogprob>)> =
            (0..n).map(|_| (String::new(), None, Vec::new())).collect();
        let mut ids: Vec<Option<u64>> = vec![None; n];
        let (mut next, mut most, mut waits, mut steps) = (0, 0, 0, 0);
        while out.iter().any(|o| o.1.is_none()) {
            while next < n && b.active() < b.capacity() {
                let (prompt, p) = &requests[next];
                match b.add(prompt, p.clone()) {
                    Ok(id) => ids[next] = Some(id),
                    Err(Error::KvFull(_)) => {
                        waits += 1;
                        break;
                    }
                    Err(e) => panic!("request {next}: {e}"),
                }
                next += 1;
            }
            most = most.max(b.active());
            assert!(b.kv_allocated() <= b.kv_cells(), "the pool's budget holds");
            for e in b.step().unwrap() {
                assert_eq!(e.error, None);
                // (Sequences added before are not ours.)
                let Some(k) = ids.iter().position(|&i| i == Some(e.id)) else {
                    continue;
                };
                out[k].0.push_str(e.piece.as_deref().unwrap_or(""));
                out[k].2.extend(e.logprobs);
                if e.finish.is_some() {
                    out[k].1 = e.finish;
                }
            }
            steps += 1;
            assert!(steps < 5000, "no progress");
        }
        (out, most, waits)
    }

    fn scored(p: GenerateParams, n: usize) -> GenerateParams {
        GenerateParams {
            logprobs: Some(n),
            ..p
        }
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
            let mut b = Batch::new(model.clone(), 64, 2, KvType::F16, 3, chunk, None).unwrap();
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
        let mut b = Batch::new(model.clone(), 64, 1, KvType::F16, 2, 256, None).unwrap();
        let history: Vec<u32> = (1..25).collect();
        let other: Vec<u32> = (30..40).collect();
        let a = b.add(&history, params(1, 3)).unwrap();
        let o = b.add(&other, params(2, 3)).unwrap();
        while b.active() > 0 {
            let ev = b.step().unwrap();
            assert!(
                ev.iter().all(|e| e.cached_tokens == 0),
                "nothing cached yet: {ev:?}"
            );
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
        let kept = slot.session.tokens().len();
        assert_eq!(slot.job.as_ref().unwrap().fed, kept);
        let ev = b2.step().unwrap();
        assert_eq!(ev.len(), 1, "the whole new part fit in one chunk: {ev:?}");
        assert_eq!(
            ev[0].cached_tokens, kept,
            "its event counts the reused tokens"
        );
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
            let mut fresh = Batch::new(model.clone(), 64, 1, KvType::F16, 1, chunk, None).unwrap();
            let want = first_logprobs(&mut fresh, &turn);
            let mut reused = Batch::new(model.clone(), 64, 1, KvType::F16, 1, chunk, None).unwrap();
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
        let mut b = Batch::new(model, 16, 1, KvType::F16, 1, 8, None).unwrap();
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

    /// A pool of 100 cells runs four sequences of a 64-position context at once (a fixed
    /// allocation of 64 per slot would hold one), each with the bits it gets alone (every
    /// log-probability of the vocab compared, at every token).
    #[test]
    fn a_small_pool_runs_more_sequences_than_fixed_slots_would() {
        let model = Arc::new(tiny_model(GgmlType::Q4_0));
        let nv = model.config.n_vocab;
        let requests: Vec<(Vec<u32>, GenerateParams)> = (0..6)
            .map(|k| {
                let prompt: Vec<u32> = (0..4 + k).map(|i| (i * 5 + k) as u32 % 40 + 1).collect();
                (prompt, scored(params(40 + k as u64, 12), nv))
            })
            .collect();
        let mut b = Batch::new(model.clone(), 64, 2, KvType::F16, 4, 3, Some(100)).unwrap();
        assert_eq!((b.kv_cells(), b.kv_allocated(), b.kv_bytes()), (100, 0, 0));
        let (got, most, _) = run_all(&mut b, &requests);
        assert_eq!(most, 4, "four sequences ran at once in 100 cells");
        for (k, (prompt, p)) in requests.iter().enumerate() {
            let (text, finish, _, logprobs) = alone_in(&model, 64, prompt, p.clone());
            assert_eq!(got[k], (text, finish, logprobs), "sequence {k}");
        }
        // Memory follows the tokens: at most the pool, far less than 4 x 64 cells.
        assert!(b.kv_allocated() <= 100 && b.kv_bytes() > 0);
        assert_eq!(b.kv_used(), 0);
    }

    /// A sequence the pool cannot hold beside the running ones is refused with KvFull while a
    /// slot is free, and gets in (with its alone bits) when the other finishes; a prompt
    /// longer than the whole pool is a plain error at once; a sequence that may need more
    /// than the pool gets all of it and ends at its edge, as with a context that size.
    #[test]
    fn a_sequence_that_does_not_fit_waits_for_kv_cells() {
        let model = Arc::new(tiny_model(GgmlType::Q8_0));
        let mut b = Batch::new(model.clone(), 64, 1, KvType::F16, 3, 8, Some(48)).unwrap();
        assert_eq!(b.n_ctx(), 48, "no sequence holds more than the pool");
        let a: Vec<u32> = (1..11).collect();
        let c: Vec<u32> = (11..16).collect();
        let too_long = b.add(&[1; 49], params(1, 1)).unwrap_err();
        assert!(
            matches!(&too_long, Error::Invalid(m) if m.contains("whole pool")),
            "{too_long:?}"
        );
        b.add(&a, params(1, 20)).unwrap();
        let full = b.add(&c, params(2, 20)).unwrap_err();
        assert!(matches!(full, Error::KvFull(_)), "{full:?}");
        assert_eq!(b.active(), 1, "the refused sequence took no slot");
        let requests = vec![(c.clone(), params(2, 20))];
        let (got, _, waits) = run_all(&mut b, &requests);
        assert!(waits > 0, "it waited for the first to finish");
        let want = alone_in(&model, 64, &c, params(2, 20));
        assert_eq!(got[0].0, want.0);
        // Prompt 40 + 100 tokens may need more than 48 cells: it gets the pool, and ends
        // where a context of 48 ends.
        let long: Vec<u32> = (0..40).map(|i| i % 30 + 1).collect();
        let (got, _, _) = run_all(&mut b, &[(long.clone(), params(3, 100))]);
        let want = alone_in(&model, 48, &long, params(3, 100));
        assert_eq!((&got[0].0, got[0].1), (&want.0, want.1));
        assert_eq!(got[0].1, Some(FinishReason::Context));
    }

    /// A cache that grows many times while a sequence runs (32 -> 64 -> 128 -> 200 cells,
    /// prompt chunks of 7 crossing each boundary) gives the bits of a cache of 200 cells
    /// from the start, and so does the same sequence batched beside others.
    #[test]
    fn growth_across_chunks_keeps_every_bit() {
        let model = Arc::new(tiny_model(GgmlType::Q4_0));
        let nv = model.config.n_vocab;
        let prompt: Vec<u32> = (0..45).map(|i| (i * 13 % 47) as u32 + 1).collect();
        let p = scored(params(77, 200), nv);
        let want = alone_in(&model, 200, &prompt, p.clone());
        for others in [0, 2] {
            let mut b = Batch::new(model.clone(), 200, 2, KvType::F16, 3, 7, None).unwrap();
            let mut requests = vec![(prompt.clone(), p.clone())];
            for k in 0..others {
                requests.push((vec![k as u32 + 3; 10 + k], params(k as u64, 30)));
            }
            let (got, _, _) = run_all(&mut b, &requests);
            assert_eq!(
                got[0],
                (want.0.clone(), want.1, want.3.clone()),
                "{others} others"
            );
            assert_eq!(want.1, Some(FinishReason::Context));
        }
    }

    /// Free slots' prefix caches give way to a new sequence, least recently used first; the
    /// others stay.
    #[test]
    fn prefix_caches_are_evicted_least_recently_used_first() {
        let model = Arc::new(tiny_model(GgmlType::Q8_0));
        let mut b = Batch::new(model.clone(), 64, 1, KvType::F16, 3, 256, Some(96)).unwrap();
        let prompts: Vec<Vec<u32>> = (0..3)
            .map(|k| (0..20).map(|i| (i + 10 * k) as u32 % 45 + 1).collect())
            .collect();
        for pr in &prompts {
            run_all(&mut b, &[(pr.clone(), params(1, 4))]);
        }
        let holding = |b: &Batch, pr: &[u32]| {
            b.slots
                .iter()
                .position(|s| s.session.tokens().starts_with(pr))
        };
        let slot_of: Vec<usize> = prompts.iter().map(|p| holding(&b, p).unwrap()).collect();
        // Each grew to what it may need: 20 + 4 cells.
        assert_eq!(b.kv_allocated(), 72, "three caches of 24 cells");
        assert!(b.kv_cached() >= 60);
        // The next turn of the second conversation needs 60 cells: the first (least
        // recently used) cache goes, the third stays.
        let mut turn = prompts[1].clone();
        turn.extend([7, 8, 9, 10]);
        b.add(&turn, params(9, 36)).unwrap();
        assert_eq!(b.slots[slot_of[0]].session.tokens().len(), 0, "evicted");
        assert_eq!(b.slots[slot_of[0]].cells(), 0, "its memory given back");
        assert_eq!(holding(&b, &prompts[2]), Some(slot_of[2]), "kept");
        let running = b.slots.iter().position(|s| s.job.is_some()).unwrap();
        assert_eq!(running, slot_of[1], "the turn took its history's slot");
        assert!(
            b.slots[running].session.tokens().len() >= 20,
            "prefix reused"
        );
        let mut text = String::new();
        while b.active() > 0 {
            for e in b.step().unwrap() {
                text.push_str(e.piece.as_deref().unwrap_or(""));
            }
            assert!(b.kv_allocated() <= 96);
        }
        assert_eq!(text, alone(&model, &turn, params(9, 36)).0);
    }
}
