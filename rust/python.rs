//! The PyO3 surface (`llama_rs._core`): converts arguments and errors, releases the GIL,
//! and stops every Rust panic at the boundary. No logic of its own.

use crate::batch::Batch;
use crate::error::Error;
use crate::gguf::{GgufFile, TensorSpec, Value, ValueType};
use crate::model::{KvType, Model};
use crate::quant::{dequantize_row, quantize_row, GgmlType};
use crate::quant_policy::FileType;
use crate::sampling::{Seed, TokenLogprob};
use crate::session::{
    check_token_id, check_top_n, parse_seed, Arg, BiasEntries, GenerateArgs, GenerateParams,
    Generation, Session,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// Run `f`, turning a panic into an error so it never unwinds into Python.
fn guard<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown");
            Err(Error::Invalid(format!(
                "internal error in llama_rs (please report): {msg}"
            )))
        }
    }
}

fn to_py(py: Python<'_>, e: Error) -> PyErr {
    match e {
        Error::Io(m) | Error::Format(m) => match py
            .import("llama_rs.errors")
            .and_then(|m| m.getattr("ModelError"))
        {
            Ok(ty) => PyErr::from_type(ty.downcast_into().unwrap(), m),
            Err(_) => PyValueError::new_err(m),
        },
        Error::Invalid(m) if m.starts_with("internal error") => PyRuntimeError::new_err(m),
        Error::Invalid(m) => PyValueError::new_err(m),
        Error::KvFull(m) => match py
            .import("llama_rs.errors")
            .and_then(|m| m.getattr("KvFull"))
        {
            Ok(ty) => PyErr::from_type(ty.downcast_into().unwrap(), m),
            Err(_) => PyRuntimeError::new_err(m),
        },
        Error::Param { name, msg } => match py
            .import("llama_rs.errors")
            .and_then(|m| m.getattr("ParamError"))
        {
            Ok(ty) => PyErr::from_type(ty.downcast_into().unwrap(), (name, msg)),
            Err(_) => PyValueError::new_err(msg),
        },
    }
}

fn repr(ob: &Bound<'_, PyAny>) -> String {
    ob.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unprintable>".into())
}

// Arguments that never fail to convert: what does not fit becomes `Arg::Bad(repr)` and the
// Rust check reports it as a ParamError (no OverflowError/TypeError from PyO3 itself).

fn int_arg(ob: &Bound<'_, PyAny>) -> Arg<i128> {
    ob.extract::<i128>()
        .map_or_else(|_| Arg::Bad(repr(ob)), Arg::Val)
}

fn float_arg(ob: &Bound<'_, PyAny>) -> Arg<f64> {
    ob.extract::<f64>()
        .map_or_else(|_| Arg::Bad(repr(ob)), Arg::Val)
}

/// Any Python integer (huge ones included).
struct IntArg(Arg<i128>);

impl<'py> FromPyObject<'py> for IntArg {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        Ok(IntArg(int_arg(ob)))
    }
}

/// A sequence of token ids: any Python integers, checked against the vocab by `checked`
/// (so -1, 2**40 or 1.5 are a ValueError naming the id, not an OverflowError or a truncation).
struct IdsArg(Vec<Arg<i128>>);

impl<'py> FromPyObject<'py> for IdsArg {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        let items: Vec<IntArg> = ob.extract()?;
        Ok(IdsArg(items.into_iter().map(|a| a.0).collect()))
    }
}

impl IdsArg {
    fn checked(&self, n_vocab: usize) -> Result<Vec<u32>, Error> {
        self.0.iter().map(|a| check_token_id(a, n_vocab)).collect()
    }
}

/// Any Python number convertible to float.
struct FloatArg(Arg<f64>);

impl<'py> FromPyObject<'py> for FloatArg {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        Ok(FloatArg(float_arg(ob)))
    }
}

/// A sequence of strings (PyO3 refuses a str itself, so that is Bad).
struct StopArg(Arg<Vec<String>>);

impl<'py> FromPyObject<'py> for StopArg {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        Ok(StopArg(
            ob.extract::<Vec<String>>()
                .map_or_else(|_| Arg::Bad(repr(ob)), Arg::Val),
        ))
    }
}

/// A logit_bias key: an integer, or its decimal text (JSON objects, hence OpenAI's
/// logit_bias, only have string keys).
fn bias_key(ob: &Bound<'_, PyAny>) -> Arg<i128> {
    match ob.extract::<String>() {
        Ok(text) => text
            .parse::<i128>()
            .map_or_else(|_| Arg::Bad(repr(ob)), Arg::Val),
        Err(_) => int_arg(ob),
    }
}

/// A dict {token id: bias}.
struct BiasArg(Arg<BiasEntries>);

impl<'py> FromPyObject<'py> for BiasArg {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        Ok(BiasArg(match ob.downcast::<PyDict>() {
            Ok(d) => Arg::Val(
                d.iter()
                    .map(|(k, v)| (bias_key(&k), float_arg(&v)))
                    .collect(),
            ),
            Err(_) => Arg::Bad(repr(ob)),
        }))
    }
}

#[allow(clippy::too_many_arguments)]
fn generate_args(
    max_tokens: IntArg,
    top_k: IntArg,
    top_p: FloatArg,
    temp: FloatArg,
    repeat_penalty: FloatArg,
    repeat_lastn: IntArg,
    seed: Option<IntArg>,
    stop: StopArg,
    presence_penalty: FloatArg,
    frequency_penalty: FloatArg,
    logit_bias: Option<BiasArg>,
    logprobs: Option<IntArg>,
) -> GenerateArgs {
    GenerateArgs {
        max_tokens: max_tokens.0,
        top_k: top_k.0,
        top_p: top_p.0,
        temp: temp.0,
        repeat_penalty: repeat_penalty.0,
        repeat_lastn: repeat_lastn.0,
        seed: seed.map(|a| a.0),
        stop: stop.0,
        presence_penalty: presence_penalty.0,
        frequency_penalty: frequency_penalty.0,
        logit_bias: logit_bias.map(|a| a.0),
        logprobs: logprobs.map(|a| a.0),
    }
}

/// [(id, logprob)], most likely first.
type Top = Vec<(u32, f64)>;

fn logprob_tuple(t: TokenLogprob) -> (u32, f64, Top) {
    (t.id, t.logprob, t.top)
}

/// Run `f` without the GIL and with panics caught.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, Error> + Send) -> PyResult<T> {
    py.allow_threads(|| guard(f)).map_err(|e| to_py(py, e))
}

fn lock(m: &Mutex<Session>) -> MutexGuard<'_, Session> {
    // A panic while computing leaves the cache half-written: forget it rather than refuse.
    m.lock().unwrap_or_else(|poisoned| {
        let mut s = poisoned.into_inner();
        s.reset();
        s
    })
}

#[pyclass(frozen, module = "llama_rs._core")]
struct Engine {
    session: Arc<Mutex<Session>>,
    model: Arc<Model>,
    /// Used when a generation gives no seed.
    seed: Seed,
}

impl Drop for Engine {
    /// The repack thread reads the file's map: once the Python model is gone, so are its reads
    /// (a file rewritten or truncated after that must not fault them). Batch engines made from
    /// this model keep working, with the matrices repacked by then.
    fn drop(&mut self) {
        self.model.stop_repack();
    }
}

/// The one check of a generation's parameters (`GenerateArgs::validate`), with the engine's
/// seed where the caller gave none.
fn checked_params(
    py: Python<'_>,
    model: &Model,
    seed: Seed,
    args: GenerateArgs,
) -> PyResult<GenerateParams> {
    let mut params = args
        .validate(Some(model.config.n_vocab))
        .map_err(|e| to_py(py, e))?;
    params.seed.get_or_insert(seed);
    Ok(params)
}

/// A prompt as token ids: text is tokenized (with BOS when `bos`), ids pass as they are.
fn prompt_ids(model: &Model, prompt: PyPromptArg, bos: bool) -> Result<Vec<u32>, Error> {
    match prompt {
        PyPromptArg::Text(t) => Ok(model.tokenizer.encode(&t, bos)),
        PyPromptArg::Ids(ids) => ids.checked(model.config.n_vocab),
    }
}

fn parse_kv_type(kv_type: &str) -> PyResult<KvType> {
    match kv_type {
        "f16" => Ok(KvType::F16),
        "f32" => Ok(KvType::F32),
        other => Err(PyValueError::new_err(format!(
            "kv_type must be \"f16\" or \"f32\", got {other:?}"
        ))),
    }
}

/// Several generations on the engine's model, stepped together (`batch.rs`).
#[pyclass(module = "llama_rs._core")]
struct BatchEngine {
    batch: Mutex<Batch>,
    model: Arc<Model>,
    seed: Seed,
}

#[pymethods]
impl BatchEngine {
    /// Start a generation (the parameters of `Engine.start`); its id tags its events.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (
        prompt, max_tokens, top_k, top_p, temp, repeat_penalty, repeat_lastn, seed, stop, bos=true,
        presence_penalty=FloatArg(Arg::Val(0.0)), frequency_penalty=FloatArg(Arg::Val(0.0)), logit_bias=None,
        logprobs=None,
    ))]
    fn add(
        &self,
        py: Python<'_>,
        prompt: PyPromptArg,
        max_tokens: IntArg,
        top_k: IntArg,
        top_p: FloatArg,
        temp: FloatArg,
        repeat_penalty: FloatArg,
        repeat_lastn: IntArg,
        seed: Option<IntArg>,
        stop: StopArg,
        bos: bool,
        presence_penalty: FloatArg,
        frequency_penalty: FloatArg,
        logit_bias: Option<BiasArg>,
        logprobs: Option<IntArg>,
    ) -> PyResult<u64> {
        let args = generate_args(
            max_tokens,
            top_k,
            top_p,
            temp,
            repeat_penalty,
            repeat_lastn,
            seed,
            stop,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            logprobs,
        );
        let params = checked_params(py, &self.model, self.seed, args)?;
        let (batch, model) = (&self.batch, &self.model);
        run(py, move || {
            lock_batch(batch).add(&prompt_ids(model, prompt, bos)?, params)
        })
    }

    /// One forward pass over every running sequence: its events, each `(id, piece or None,
    /// finish or None, tokens generated, prompt tokens, prompt tokens reused from the prefix
    /// cache, [(id, logprob, top)] of the tokens sampled since the last event, error or
    /// None)`; an error (finish None) ends that sequence alone.
    fn step(&self, py: Python<'_>) -> PyResult<Vec<BatchEvent>> {
        let batch = &self.batch;
        let events = run(py, move || lock_batch(batch).step())?;
        Ok(events
            .into_iter()
            .map(|e| {
                (
                    e.id,
                    e.piece,
                    e.finish.map(|f| f.as_str()),
                    e.tokens,
                    e.prompt_tokens,
                    e.cached_tokens,
                    e.logprobs.into_iter().map(logprob_tuple).collect(),
                    e.error,
                )
            })
            .collect())
    }

    /// Stop sequence `id`; False if it is not running.
    fn cancel(&self, id: u64) -> bool {
        lock_batch(&self.batch).cancel(id)
    }

    #[getter]
    fn active(&self) -> usize {
        lock_batch(&self.batch).active()
    }

    #[getter]
    fn capacity(&self) -> usize {
        lock_batch(&self.batch).capacity()
    }

    /// Positions of each sequence's KV cache.
    #[getter]
    fn n_ctx(&self) -> usize {
        lock_batch(&self.batch).n_ctx()
    }

    /// KV cells holding tokens of running sequences.
    #[getter]
    fn kv_used(&self) -> usize {
        lock_batch(&self.batch).kv_used()
    }

    /// KV cells holding tokens kept for the prefix cache (free slots).
    #[getter]
    fn kv_cached(&self) -> usize {
        lock_batch(&self.batch).kv_cached()
    }

    /// The KV pool: cells the sequences' caches may hold together.
    #[getter]
    fn kv_cells(&self) -> usize {
        lock_batch(&self.batch).kv_cells()
    }

    /// KV cells allocated now (caches grow on demand).
    #[getter]
    fn kv_allocated(&self) -> usize {
        lock_batch(&self.batch).kv_allocated()
    }

    /// Bytes of KV cache allocated now.
    #[getter]
    fn kv_bytes(&self) -> usize {
        lock_batch(&self.batch).kv_bytes()
    }
}

/// `BatchEngine.step`'s event tuple.
type BatchEvent = (
    u64,
    Option<String>,
    Option<&'static str>,
    usize,
    usize,
    usize,
    Vec<(u32, f64, Top)>,
    Option<String>,
);

fn lock_batch(m: &Mutex<Batch>) -> MutexGuard<'_, Batch> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[pymethods]
impl Engine {
    /// A batch engine over this engine's model (shared, not loaded again): `n_parallel`
    /// sequences of up to `n_ctx` positions each sharing `kv_cells` KV cells (None: room
    /// for all of them), on `n_threads` threads.
    #[pyo3(signature = (n_parallel, n_ctx, n_threads, kv_type="f16", prefill_chunk=crate::batch::DEFAULT_PREFILL_CHUNK, kv_cells=None))]
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &self,
        py: Python<'_>,
        n_parallel: usize,
        n_ctx: usize,
        n_threads: usize,
        kv_type: &str,
        prefill_chunk: usize,
        kv_cells: Option<usize>,
    ) -> PyResult<BatchEngine> {
        let kv = parse_kv_type(kv_type)?;
        let model = self.model.clone();
        let batch = run(py, move || {
            Batch::new(
                model,
                n_ctx,
                n_threads,
                kv,
                n_parallel,
                prefill_chunk,
                kv_cells,
            )
        })?;
        Ok(BatchEngine {
            batch: Mutex::new(batch),
            model: self.model.clone(),
            seed: self.seed,
        })
    }

    #[new]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        n_ctx: usize,
        n_threads: usize,
        seed: IntArg,
        kv_type: &str,
    ) -> PyResult<Engine> {
        let seed = parse_seed(&seed.0).map_err(|e| to_py(py, e))?;
        let kv = parse_kv_type(kv_type)?;
        let model = run(py, || Model::load(&path))?;
        let session = run(py, || Session::new(model.clone(), n_ctx, n_threads, kv))?;
        Ok(Engine {
            session: Arc::new(Mutex::new(session)),
            model,
            seed,
        })
    }

    #[getter]
    fn n_ctx(&self) -> usize {
        lock(&self.session).n_ctx()
    }
    #[getter]
    fn n_vocab(&self) -> usize {
        self.model.config.n_vocab
    }
    #[getter]
    fn n_threads(&self) -> usize {
        lock(&self.session).n_threads()
    }
    #[getter]
    fn path(&self) -> PathBuf {
        self.model.path.clone()
    }
    #[getter]
    fn bos(&self) -> Option<u32> {
        self.model.tokenizer.bos()
    }
    #[getter]
    fn eos(&self) -> Option<u32> {
        self.model.tokenizer.eos()
    }
    #[getter]
    fn file_type(&self) -> String {
        self.model.file_type.clone()
    }
    /// How many weight matrices were repacked for this CPU's kernels, once the repack that
    /// starts at load is over (waits for it).
    #[getter]
    fn repacked(&self, py: Python<'_>) -> usize {
        py.allow_threads(|| self.model.wait_repacked());
        self.model.repacked_matrices()
    }

    /// Hyperparameters as a dict (dim, n_layer, n_head, n_head_kv, ffn_dim, ...).
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.model.config;
        let d = PyDict::new(py);
        d.set_item("dim", c.dim)?;
        d.set_item("n_layer", c.n_layer)?;
        d.set_item("n_head", c.n_head)?;
        d.set_item("n_head_kv", c.n_head_kv)?;
        d.set_item("ffn_dim", c.ffn_dim)?;
        d.set_item("n_vocab", c.n_vocab)?;
        d.set_item("train_ctx", c.train_ctx)?;
        d.set_item("n_rot", c.n_rot)?;
        d.set_item("rms_eps", c.rms_eps)?;
        d.set_item("freq_base", c.freq_base)?;
        d.set_item("freq_scale", c.freq_scale)?;
        d.set_item("rope_factors", self.model.rope.factors.clone())?;
        Ok(d)
    }

    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        metadata_dict(py, &self.model.metadata)
    }

    #[pyo3(signature = (text, bos, special=false))]
    fn tokenize(&self, py: Python<'_>, text: &str, bos: bool, special: bool) -> PyResult<Vec<u32>> {
        let tok = &self.model.tokenizer;
        run(py, || Ok(tok.encode_with(text, bos, special)))
    }

    /// A rendered chat template's ids (`Tokenizer::encode_template`).
    fn tokenize_template(&self, py: Python<'_>, text: &str, bos: bool) -> PyResult<Vec<u32>> {
        let tok = &self.model.tokenizer;
        run(py, || Ok(tok.encode_template(text, bos)))
    }

    /// End-of-generation token ids (eos, eot, eom, ...), sorted.
    #[getter]
    fn eog(&self) -> Vec<u32> {
        self.model.tokenizer.eog().to_vec()
    }

    fn detokenize(&self, py: Python<'_>, ids: IdsArg) -> PyResult<String> {
        let tok = &self.model.tokenizer;
        run(py, || tok.decode(&ids.checked(tok.n_vocab())?))
    }

    fn token_piece(&self, py: Python<'_>, id: IntArg) -> PyResult<Option<String>> {
        let tok = &self.model.tokenizer;
        let id = check_token_id(&id.0, tok.n_vocab()).map_err(|e| to_py(py, e))?;
        Ok(tok.piece(id).map(str::to_owned))
    }

    /// The bytes a token stands for in the middle of a text (`▁` as a space, `<0x0A>` as a
    /// newline, control tokens as nothing).
    fn token_bytes<'py>(&self, py: Python<'py>, id: IntArg) -> PyResult<Bound<'py, PyBytes>> {
        let tok = &self.model.tokenizer;
        let id = check_token_id(&id.0, tok.n_vocab()).map_err(|e| to_py(py, e))?;
        Ok(PyBytes::new(py, tok.token_bytes(id)))
    }

    /// [(logprob of ids[i + 1] after ids[..=i], [(id, logprob)] of the top_n alternatives)]
    /// for i in 0..len(ids)-1; empties the cache first and leaves it holding ids.
    fn score(&self, py: Python<'_>, ids: IdsArg, top_n: IntArg) -> PyResult<Vec<(f64, Top)>> {
        let n_vocab = self.model.config.n_vocab;
        let checked = || -> Result<(Vec<u32>, usize), Error> {
            Ok((ids.checked(n_vocab)?, check_top_n(&top_n.0, n_vocab)?))
        };
        let (ids, top_n) = checked().map_err(|e| to_py(py, e))?;
        let session = self.session.clone();
        let scored = run(py, move || lock(&session).score(&ids, top_n))?;
        Ok(scored.into_iter().map(|t| (t.logprob, t.top)).collect())
    }

    /// Evaluate ids after the cache; returns (logits bytes as f32, rows).
    fn eval<'py>(
        &self,
        py: Python<'py>,
        ids: IdsArg,
        all_logits: bool,
    ) -> PyResult<(Bound<'py, PyBytes>, usize)> {
        let session = self.session.clone();
        let ids = ids
            .checked(self.model.config.n_vocab)
            .map_err(|e| to_py(py, e))?;
        let logits = run(py, move || {
            let mut s = lock(&session);
            if all_logits {
                s.eval_all(&ids)
            } else {
                s.eval(&ids)
            }
        })?;
        let rows = logits.len() / self.model.config.n_vocab;
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok((PyBytes::new(py, &bytes), rows))
    }

    fn reset(&self) {
        lock(&self.session).reset();
    }

    /// Perplexity of one chunk (llama.cpp's method): (sum of NLL, tokens scored). Empties the cache.
    fn perplexity_chunk(&self, py: Python<'_>, ids: IdsArg) -> PyResult<(f64, usize)> {
        let session = self.session.clone();
        let ids = ids
            .checked(self.model.config.n_vocab)
            .map_err(|e| to_py(py, e))?;
        run(py, move || {
            crate::perplexity::score_chunk(&mut lock(&session), &ids)
        })
    }

    fn n_past(&self) -> usize {
        lock(&self.session).tokens().len()
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (
        prompt, max_tokens, top_k, top_p, temp, repeat_penalty, repeat_lastn, seed, stop, bos=true,
        presence_penalty=FloatArg(Arg::Val(0.0)), frequency_penalty=FloatArg(Arg::Val(0.0)), logit_bias=None, logprobs=None,
    ))]
    fn start(
        &self,
        py: Python<'_>,
        prompt: PyPromptArg,
        max_tokens: IntArg,
        top_k: IntArg,
        top_p: FloatArg,
        temp: FloatArg,
        repeat_penalty: FloatArg,
        repeat_lastn: IntArg,
        seed: Option<IntArg>,
        stop: StopArg,
        bos: bool,
        presence_penalty: FloatArg,
        frequency_penalty: FloatArg,
        logit_bias: Option<BiasArg>,
        logprobs: Option<IntArg>,
    ) -> PyResult<GenerationIter> {
        let args = generate_args(
            max_tokens,
            top_k,
            top_p,
            temp,
            repeat_penalty,
            repeat_lastn,
            seed,
            stop,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            logprobs,
        );
        let params = checked_params(py, &self.model, self.seed, args)?;
        let session = self.session.clone();
        let model = self.model.clone();
        let generation = run(py, move || {
            let ids = prompt_ids(&model, prompt, bos)?;
            let mut s = lock(&session);
            Generation::start(&mut s, &ids, params)
        })?;
        Ok(GenerationIter {
            session: self.session.clone(),
            generation: Mutex::new(generation),
        })
    }

    fn __repr__(&self) -> String {
        let c = &self.model.config;
        format!(
            "Model({:?}, {}, dim={}, layers={}, heads={}/{}, vocab={}, n_ctx={})",
            self.model.path.display().to_string(),
            self.model.file_type,
            c.dim,
            c.n_layer,
            c.n_head,
            c.n_head_kv,
            c.n_vocab,
            lock(&self.session).n_ctx()
        )
    }
}

#[derive(FromPyObject)]
enum PyPromptArg {
    Text(String),
    Ids(IdsArg),
}

/// Iterator of text pieces; `step()` computes one token without the GIL.
#[pyclass(module = "llama_rs._core")]
struct GenerationIter {
    session: Arc<Mutex<Session>>,
    generation: Mutex<Generation>,
}

impl GenerationIter {
    /// The generation, for a look at its counts (a panic elsewhere left it usable).
    fn locked(&self) -> MutexGuard<'_, Generation> {
        self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl GenerationIter {
    /// Next piece of text ("" while a character or a stop string is incomplete), or None at the end.
    fn step(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let session = self.session.clone();
        let gen = &self.generation;
        run(py, move || {
            let mut g = gen.lock().unwrap_or_else(|p| p.into_inner());
            let mut s = lock(&session);
            g.step(&mut s)
        })
    }

    /// [(id, logprob, [(id, logprob)] top alternatives)] of the tokens generated since the
    /// last call (empty unless started with logprobs).
    fn take_logprobs(&self) -> Vec<(u32, f64, Top)> {
        let taken = self.locked().take_logprobs();
        taken.into_iter().map(logprob_tuple).collect()
    }

    #[getter]
    fn finish_reason(&self) -> Option<&'static str> {
        self.locked().finish.map(|f| f.as_str())
    }
    #[getter]
    fn generated(&self) -> usize {
        self.locked().generated
    }
    #[getter]
    fn prompt_tokens(&self) -> usize {
        self.locked().prompt_tokens
    }
    /// Prompt tokens the session's cache already held (not evaluated again).
    #[getter]
    fn cached_tokens(&self) -> usize {
        self.locked().cached_tokens
    }
}

/// The tokenizer of any GGUF file (vocab-only files included).
#[pyclass(frozen, module = "llama_rs._core")]
struct TokenizerFile {
    tok: crate::tokenizer::Tokenizer,
}

#[pymethods]
impl TokenizerFile {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<TokenizerFile> {
        let tok = run(py, || {
            crate::load::tokenizer_from_gguf(&GgufFile::open(&path)?)
        })?;
        Ok(TokenizerFile { tok })
    }

    #[getter]
    fn n_vocab(&self) -> usize {
        self.tok.n_vocab()
    }

    #[pyo3(signature = (text, bos, special=false))]
    fn encode(&self, py: Python<'_>, text: &str, bos: bool, special: bool) -> PyResult<Vec<u32>> {
        run(py, || Ok(self.tok.encode_with(text, bos, special)))
    }

    #[getter]
    fn bos(&self) -> Option<u32> {
        self.tok.bos()
    }

    #[getter]
    fn eos(&self) -> Option<u32> {
        self.tok.eos()
    }

    #[getter]
    fn eog(&self) -> Vec<u32> {
        self.tok.eog().to_vec()
    }

    /// "llama" (SentencePiece) or "gpt2" (byte-level BPE), as GGUF names them.
    #[getter]
    fn model(&self) -> &'static str {
        match self.tok.kind() {
            crate::tokenizer::Kind::SentencePiece => "llama",
            crate::tokenizer::Kind::BytePair => "gpt2",
        }
    }

    fn decode(&self, py: Python<'_>, ids: IdsArg) -> PyResult<String> {
        run(py, || self.tok.decode(&ids.checked(self.tok.n_vocab())?))
    }

    /// The pieces the streaming decoder emits for `ids`, one per id, then the final flush.
    fn stream_decode(&self, py: Python<'_>, ids: IdsArg) -> PyResult<Vec<String>> {
        run(py, || {
            let ids = ids.checked(self.tok.n_vocab())?;
            let mut d = crate::tokenizer::StreamDecoder::new();
            let mut out: Vec<String> = ids.iter().map(|&i| d.push(&self.tok, i)).collect();
            out.push(d.finish(&self.tok));
            Ok(out)
        })
    }

    fn piece(&self, py: Python<'_>, id: IntArg) -> PyResult<Option<String>> {
        let id = check_token_id(&id.0, self.tok.n_vocab()).map_err(|e| to_py(py, e))?;
        Ok(self.tok.piece(id).map(str::to_owned))
    }
}

fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::U8(x) => x.into_pyobject(py)?.into_any(),
        Value::I8(x) => x.into_pyobject(py)?.into_any(),
        Value::U16(x) => x.into_pyobject(py)?.into_any(),
        Value::I16(x) => x.into_pyobject(py)?.into_any(),
        Value::U32(x) => x.into_pyobject(py)?.into_any(),
        Value::I32(x) => x.into_pyobject(py)?.into_any(),
        Value::U64(x) => x.into_pyobject(py)?.into_any(),
        Value::I64(x) => x.into_pyobject(py)?.into_any(),
        Value::F32(x) => x.into_pyobject(py)?.into_any(),
        Value::F64(x) => x.into_pyobject(py)?.into_any(),
        Value::Bool(x) => pyo3::types::PyBool::new(py, *x).to_owned().into_any(),
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(_, items) => {
            let list = PyList::empty(py);
            for it in items {
                list.append(value_to_py(py, it)?)?;
            }
            list.into_any()
        }
    })
}

fn metadata_dict<'py>(py: Python<'py>, meta: &[(String, Value)]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in meta {
        d.set_item(k, value_to_py(py, v)?)?;
    }
    Ok(d)
}

/// Metadata with its GGUF type ids: {key: (type_id, value)}; arrays as (9, (elem_type, [..])).
fn typed_metadata<'py>(py: Python<'py>, meta: &[(String, Value)]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in meta {
        let typed = match v {
            Value::Array(elem, _) => PyTuple::new(
                py,
                [
                    (*elem as u32).into_pyobject(py)?.into_any(),
                    value_to_py(py, v)?,
                ],
            )?
            .into_any(),
            _ => value_to_py(py, v)?,
        };
        d.set_item(k, (v.value_type() as u32, typed))?;
    }
    Ok(d)
}

/// A GGUF file's header, for tools and tests: (version, alignment, typed metadata,
/// [(name, dims, type_name, offset, nbytes)]).
#[pyfunction]
fn gguf_read<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyTuple>> {
    let f = run(py, || GgufFile::open(&path))?;
    let tensors = PyList::empty(py);
    for t in &f.tensors {
        tensors.append((
            t.name.clone(),
            t.dims.clone(),
            t.ty.name(),
            t.offset,
            t.range.len(),
        ))?;
    }
    PyTuple::new(
        py,
        [
            f.version.into_pyobject(py)?.into_any(),
            f.alignment.into_pyobject(py)?.into_any(),
            typed_metadata(py, &f.metadata)?.into_any(),
            tensors.into_any(),
        ],
    )
}

/// Raw bytes of one tensor of a GGUF file.
#[pyfunction]
fn gguf_tensor_bytes<'py>(
    py: Python<'py>,
    path: PathBuf,
    name: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let f = run(py, || GgufFile::open(&path))?;
    let t = f
        .tensor(name)
        .ok_or_else(|| PyValueError::new_err(format!("{}: no tensor {name:?}", path.display())))?;
    Ok(PyBytes::new(py, f.tensor_data(t)))
}

fn value_from_py(ty: u32, obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    let vt = ValueType::from_id(ty)
        .ok_or_else(|| PyValueError::new_err(format!("unknown GGUF value type {ty}")))?;
    Ok(match vt {
        ValueType::U8 => Value::U8(obj.extract()?),
        ValueType::I8 => Value::I8(obj.extract()?),
        ValueType::U16 => Value::U16(obj.extract()?),
        ValueType::I16 => Value::I16(obj.extract()?),
        ValueType::U32 => Value::U32(obj.extract()?),
        ValueType::I32 => Value::I32(obj.extract()?),
        ValueType::U64 => Value::U64(obj.extract()?),
        ValueType::I64 => Value::I64(obj.extract()?),
        ValueType::F32 => Value::F32(obj.extract()?),
        ValueType::F64 => Value::F64(obj.extract()?),
        ValueType::Bool => Value::Bool(obj.extract()?),
        ValueType::String => Value::String(obj.extract()?),
        ValueType::Array => {
            let (elem, items): (u32, Vec<Bound<'_, PyAny>>) = obj.extract()?;
            let et = ValueType::from_id(elem)
                .ok_or_else(|| PyValueError::new_err(format!("unknown GGUF value type {elem}")))?;
            let vals = items
                .iter()
                .map(|it| value_from_py(elem, it))
                .collect::<PyResult<Vec<_>>>()?;
            Value::Array(et, vals)
        }
    })
}

/// Write a GGUF v3 file: metadata [(key, type_id, value)] (arrays: (9, (elem_type, [..]))),
/// tensors [(name, dims, type_name, bytes)].
#[pyfunction]
fn gguf_write(
    py: Python<'_>,
    path: PathBuf,
    metadata: Vec<(String, u32, Bound<'_, PyAny>)>,
    tensors: Vec<(String, Vec<u64>, String, Vec<u8>)>,
) -> PyResult<()> {
    let meta = metadata
        .iter()
        .map(|(k, t, v)| Ok((k.clone(), value_from_py(*t, v)?)))
        .collect::<PyResult<Vec<_>>>()?;
    let mut specs = Vec::new();
    for (name, dims, ty, _) in &tensors {
        specs.push(TensorSpec {
            name: name.clone(),
            dims: dims.clone(),
            ty: type_by_name(ty)?,
        });
    }
    run(py, move || {
        let file = std::fs::File::create(&path)
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        let mut w = crate::gguf::GgufWriter::new(std::io::BufWriter::new(file), &meta, specs)?;
        for (_, _, _, bytes) in &tensors {
            w.write_tensor(bytes)?;
        }
        w.finish().map(|_| ())
    })
}

fn type_by_name(name: &str) -> PyResult<GgmlType> {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            let known: Vec<&str> = GgmlType::ALL.iter().map(|t| t.name()).collect();
            PyValueError::new_err(format!(
                "unknown tensor type {name:?} ({})",
                known.join(", ")
            ))
        })
}

fn check_row(ty: GgmlType, n: usize) -> PyResult<usize> {
    ty.row_bytes(n).ok_or_else(|| {
        PyValueError::new_err(format!(
            "{} rows need a multiple of {} values, got {n}",
            ty.name(),
            ty.block_size()
        ))
    })
}

/// Quantize f32 values (little-endian bytes) into blocks of `type_name`.
#[pyfunction]
fn quantize<'py>(
    py: Python<'py>,
    type_name: &str,
    values: Vec<u8>,
) -> PyResult<Bound<'py, PyBytes>> {
    let ty = type_by_name(type_name)?;
    let x: Vec<f32> = values
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut out = vec![0u8; check_row(ty, x.len())?];
    run(py, || {
        quantize_row(ty, &x, &mut out);
        Ok(())
    })?;
    Ok(PyBytes::new(py, &out))
}

/// Dequantize `n` values of `type_name` blocks into f32 (little-endian bytes).
#[pyfunction]
fn dequantize<'py>(
    py: Python<'py>,
    type_name: &str,
    data: Vec<u8>,
    n: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let ty = type_by_name(type_name)?;
    if check_row(ty, n)? != data.len() {
        return Err(PyValueError::new_err(format!(
            "{n} {} values take {} bytes, got {}",
            ty.name(),
            check_row(ty, n)?,
            data.len()
        )));
    }
    let mut out = vec![0f32; n];
    run(py, || {
        dequantize_row(ty, &data, &mut out);
        Ok(())
    })?;
    let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(PyBytes::new(py, &bytes))
}

/// Dot products of one weight row with activations: (simd, scalar), for kernel tests.
#[pyfunction]
fn vec_dot(type_name: &str, w_row: Vec<u8>, x: Vec<f32>) -> PyResult<(f32, f32)> {
    let ty = type_by_name(type_name)?;
    if check_row(ty, x.len())? != w_row.len() {
        return Err(PyValueError::new_err(
            "weight row and activations differ in length",
        ));
    }
    let p = crate::quant::prepare_activation(ty, &x);
    Ok((
        crate::quant::vec_dot(ty, &w_row, &p),
        crate::quant::vec_dot_scalar(ty, &w_row, &p),
    ))
}

/// Check generation parameters without a model (the checks `Engine.start` makes); raises
/// ParamError. Token ids in `logit_bias` are checked against `n_vocab` when given.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (
    max_tokens, top_k, top_p, temp, repeat_penalty, repeat_lastn, seed, stop,
    presence_penalty=FloatArg(Arg::Val(0.0)), frequency_penalty=FloatArg(Arg::Val(0.0)), logit_bias=None, logprobs=None, n_vocab=None,
))]
fn check_generation(
    py: Python<'_>,
    max_tokens: IntArg,
    top_k: IntArg,
    top_p: FloatArg,
    temp: FloatArg,
    repeat_penalty: FloatArg,
    repeat_lastn: IntArg,
    seed: Option<IntArg>,
    stop: StopArg,
    presence_penalty: FloatArg,
    frequency_penalty: FloatArg,
    logit_bias: Option<BiasArg>,
    logprobs: Option<IntArg>,
    n_vocab: Option<usize>,
) -> PyResult<()> {
    let args = generate_args(
        max_tokens,
        top_k,
        top_p,
        temp,
        repeat_penalty,
        repeat_lastn,
        seed,
        stop,
        presence_penalty,
        frequency_penalty,
        logit_bias,
        logprobs,
    );
    args.validate(n_vocab).map(|_| ()).map_err(|e| to_py(py, e))
}

/// Memory read bandwidth in bytes/s (see `bandwidth::read_bandwidth`), for benchmarks.
#[pyfunction]
#[pyo3(signature = (bytes = 1 << 30, threads = 1, passes = 3))]
fn read_bandwidth(py: Python<'_>, bytes: usize, threads: usize, passes: usize) -> PyResult<f64> {
    run(py, || {
        crate::bandwidth::read_bandwidth(bytes, threads, passes)
    })
}

/// The kernels' instruction-set level: (name, forced by LLAMA_RS_ISA, the CPU's own level).
/// Raises ValueError for an invalid LLAMA_RS_ISA.
#[pyfunction]
fn kernel_level() -> PyResult<(&'static str, bool, &'static str)> {
    use crate::quant::Level;
    let forced = Level::requested().map_err(PyValueError::new_err)?;
    Ok((
        Level::active().name(),
        forced.is_some(),
        Level::cpu().name(),
    ))
}

/// Whether generation's kernels over repacked weights send prefetch hints: (on, forced by
/// LLAMA_RS_PREFETCH).
/// Raises ValueError for an invalid LLAMA_RS_PREFETCH.
#[pyfunction]
fn prefetch_hints() -> PyResult<(bool, bool)> {
    let forced = crate::quant::prefetch_requested().map_err(PyValueError::new_err)?;
    Ok((crate::quant::prefetch_hints(), forced.is_some()))
}

/// What `llama-rs info` shows: a dict (format, version, size, paths, n_vocab, hparams,
/// metadata, tensors [(name, type, dims, offset, nbytes)], types [(type, count, elements)],
/// n_elements, tensor_bytes, bits_per_weight, file_type (llama.cpp's name or None)).
#[pyfunction]
fn file_info<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let info = run(py, || crate::info::file_info(&path))?;
    let d = PyDict::new(py);
    d.set_item("format", &info.format)?;
    d.set_item("version", info.version)?;
    d.set_item("size", info.size)?;
    d.set_item(
        "paths",
        info.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
    )?;
    d.set_item("n_vocab", info.n_vocab)?;
    d.set_item("hparams", metadata_dict(py, &info.hparams)?)?;
    d.set_item("metadata", metadata_dict(py, &info.metadata)?)?;
    let tensors = PyList::empty(py);
    for t in &info.tensors {
        tensors.append((
            t.name.clone(),
            t.ty.clone(),
            t.dims.clone(),
            t.offset,
            t.n_bytes,
        ))?;
    }
    d.set_item("tensors", tensors)?;
    d.set_item("types", info.types())?;
    d.set_item("n_elements", info.n_elements())?;
    d.set_item("tensor_bytes", info.tensor_bytes())?;
    d.set_item("bits_per_weight", info.bits_per_weight())?;
    d.set_item("file_type", info.file_type())?;
    Ok(d)
}

/// What quantizing `path` to `type_name` would give each tensor, without writing:
/// [(name, dims, from_type, to_type, fallback_from or None)] in file order. The types need not
/// be ones this build computes.
#[pyfunction]
#[pyo3(signature = (path, type_name, pure = false))]
#[allow(clippy::type_complexity)]
fn quantize_plan(
    py: Python<'_>,
    path: PathBuf,
    type_name: &str,
    pure: bool,
) -> PyResult<Vec<(String, Vec<u64>, String, String, Option<String>)>> {
    let ftype = FileType::parse(type_name).map_err(|e| to_py(py, e))?;
    let plan = run(py, || {
        let f = crate::gguf::GgufFile::open(&path)?;
        crate::quantize::plan(&f, ftype, pure)
    })?;
    Ok(plan
        .into_iter()
        .map(|p| {
            let fb = p.fallback_from.map(|t| t.name());
            (p.name, p.dims, p.from.name(), p.to.name(), fb)
        })
        .collect())
}

/// The file types `quantize` writes, in llama-quantize's order: [(name, general.file_type id,
/// base type, bits per weight of the base type, bits per weight of LLaMA-2 7B in this file
/// type, whether this build has the kernels for every type it uses on LLaMA-2 7B)], and the
/// aliases [(alias, name)].
#[pyfunction]
#[allow(clippy::type_complexity)]
fn quantize_types(
    py: Python<'_>,
) -> PyResult<(
    Vec<(&'static str, u32, String, f64, f64, bool)>,
    Vec<(&'static str, &'static str)>,
)> {
    let shape = crate::quant_policy::LlamaShape::LLAMA2_7B;
    let mut out = vec![];
    for f in FileType::all() {
        let bpw = shape.bits_per_weight(f).map_err(|e| to_py(py, e))?;
        let plan = shape.plan(f, false).map_err(|e| to_py(py, e))?;
        let built = plan.iter().all(|(_, c)| c.ty.kernel().is_ok());
        let base = f.base();
        out.push((
            f.name(),
            f.id(),
            base.name(),
            base.bits_per_weight().unwrap_or(0.0),
            bpw,
            built,
        ));
    }
    let aliases = crate::quant_policy::ALIASES
        .iter()
        .map(|(a, f)| (*a, f.name()))
        .collect();
    Ok((out, aliases))
}

/// The ggml types this build computes with (names), in id order.
#[pyfunction]
fn kernel_types() -> Vec<&'static str> {
    GgmlType::ALL.iter().map(|t| t.name()).collect()
}

/// A quantization in progress (see rust/quantize.rs): `step()` writes one tensor without the
/// GIL, `finish()` writes the rest and moves the file into place, `abort()` removes it.
#[pyclass(frozen, module = "llama_rs._core")]
struct QuantizeJob {
    job: Mutex<Option<crate::quantize::Quantizer>>,
    plan: Vec<(String, Vec<u64>, String, String)>,
    file_type: &'static str,
    fallbacks: Vec<(String, String, String)>,
}

#[pymethods]
impl QuantizeJob {
    #[new]
    fn new(
        py: Python<'_>,
        input: PathBuf,
        output: PathBuf,
        type_name: &str,
        pure: bool,
        allow_requantize: bool,
        force: bool,
    ) -> PyResult<QuantizeJob> {
        let ftype = FileType::parse(type_name).map_err(|e| to_py(py, e))?;
        let opts = crate::quantize::Options {
            ftype,
            pure,
            allow_requantize,
            force,
        };
        let q = run(py, || {
            crate::quantize::Quantizer::new(&input, &output, &opts)
        })?;
        let plan = q
            .plan
            .iter()
            .map(|p| (p.name.clone(), p.dims.clone(), p.from.name(), p.to.name()))
            .collect();
        let fallbacks = q
            .plan
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.to.name(), p.fallback_from?.name())))
            .collect();
        Ok(QuantizeJob {
            job: Mutex::new(Some(q)),
            plan,
            file_type: ftype.name(),
            fallbacks,
        })
    }

    /// The file type written, by llama.cpp's name ("Q4_K_M"; aliases resolved).
    #[getter]
    fn file_type(&self) -> &'static str {
        self.file_type
    }

    /// Tensors whose rows forced a fallback type: [(name, type, the type it would have had)].
    #[getter]
    fn fallbacks(&self) -> Vec<(String, String, String)> {
        self.fallbacks.clone()
    }

    /// [(name, dims, from_type, to_type)] in file order.
    #[getter]
    fn plan(&self) -> Vec<(String, Vec<u64>, String, String)> {
        self.plan.clone()
    }

    /// Write the next tensor; its index, or None when all are written.
    fn step(&self, py: Python<'_>) -> PyResult<Option<usize>> {
        let job = &self.job;
        run(py, move || {
            let mut g = job.lock().unwrap_or_else(|p| p.into_inner());
            match g.as_mut() {
                None => Err(Error::Invalid("this quantization has already ended".into())),
                Some(q) => {
                    let r = q.step();
                    if r.is_err() {
                        g.take(); // removes the partial output
                    }
                    r
                }
            }
        })
    }

    /// Finish and return the summary (n_tensors, n_elements, bytes_in, bytes_out, file_in, file_out).
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let job = &self.job;
        let s = run(py, move || {
            let q = job.lock().unwrap_or_else(|p| p.into_inner()).take();
            match q {
                None => Err(Error::Invalid("this quantization has already ended".into())),
                Some(q) => q.finish(),
            }
        })?;
        let d = PyDict::new(py);
        d.set_item("n_tensors", s.n_tensors)?;
        d.set_item("n_elements", s.n_elements)?;
        d.set_item("bytes_in", s.bytes_in)?;
        d.set_item("bytes_out", s.bytes_out)?;
        d.set_item("file_in", s.file_in)?;
        d.set_item("file_out", s.file_out)?;
        Ok(d)
    }

    /// Stop and remove the partial output.
    fn abort(&self) {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<BatchEngine>()?;
    m.add_class::<GenerationIter>()?;
    m.add_class::<TokenizerFile>()?;
    m.add_class::<QuantizeJob>()?;
    m.add_function(wrap_pyfunction!(file_info, m)?)?;
    m.add_function(wrap_pyfunction!(gguf_read, m)?)?;
    m.add_function(wrap_pyfunction!(gguf_tensor_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(gguf_write, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_plan, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_types, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_types, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(vec_dot, m)?)?;
    m.add_function(wrap_pyfunction!(read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_level, m)?)?;
    m.add_function(wrap_pyfunction!(prefetch_hints, m)?)?;
    m.add_function(wrap_pyfunction!(check_generation, m)?)?;
    Ok(())
}
