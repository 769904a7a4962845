"""What every source format shares: the hyperparameters, the list of tensors to write (each
loaded on demand), the checks against the LLaMA shapes, and the streaming GGUF writer.

Memory: the writer loads one tensor, converts it, appends it to the file and lets it go; the
header and tensor infos are written first (shapes are known without reading any data). After
each tensor, the pages of the source files' memory maps are handed back to the kernel
(`madvise(MADV_DONTNEED)` on read-only-used file mappings), so the resident size stays near
the largest tensor instead of growing with the checkpoint.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol, Union

import numpy as np

from .bpe_vocab import BpeVocab
from .errors import ConvertError
from .rope import RopeScaling
from .vocab import Vocab

#: Either kind of vocab a converted file carries.
AnyVocab = Union[Vocab, BpeVocab]

# Per-layer GGUF names in the order they are written.
LAYER_TENSORS = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]


@dataclass
class Hparams:
    name: str
    context_length: int
    dim: int
    n_layer: int
    n_head: int
    n_head_kv: int
    ffn: int
    eps: float
    rope_base: float = 10000.0
    #: None: plain rotary.
    rope_scaling: Optional[RopeScaling] = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head


ROPE_FREQS = "rope_freqs.weight"


def rope_tensors(h: Hparams, source: Path) -> list[Tensor]:
    """The tensor Llama 3.1 scaling adds (`rope_freqs.weight`, computed, not read), or none."""
    r = h.rope_scaling
    if r is None or r.freq_factors is None:
        return []
    factors = r.freq_factors
    return [Tensor(ROPE_FREQS, tuple(factors.shape), lambda: factors, source, (source,), "rope_scaling")]


@dataclass
class Tensor:
    #: GGUF name.
    name: str
    #: numpy order, [out, in] for matrices (ggml ne reversed).
    shape: tuple[int, ...]
    #: Returns the data as a float32-convertible numpy array of `shape` (a view on a memory
    #: map when possible).
    load: Callable[[], np.ndarray]
    #: The file the tensor comes from (named in errors), and every file it is read from.
    source: Path
    files: tuple[Path, ...] = ()
    #: The tensor's name in the checkpoint (for messages).
    src_name: str = ""

    def __post_init__(self) -> None:
        if not self.files:
            self.files = (self.source,)
        if not self.src_name:
            self.src_name = self.name


@dataclass
class Plan:
    """A checkpoint ready to write: metadata, vocab, and the tensors in writing order."""

    hparams: Hparams
    vocab: AnyVocab
    tensors: list[Tensor]
    #: Every file the conversion reads (the output may be none of them).
    inputs: list[Path]
    #: The file to blame for a wrong tensor set (params.json, config.json, the .bin ...).
    described_by: Path
    #: Called when the conversion ends, to drop open handles and mappings.
    close: Callable[[], None] = field(default=lambda: None)
    #: Chat templates by name ("" the default: `tokenizer.chat_template`; others
    #: `tokenizer.chat_template.NAME`, as llama.cpp writes them).
    chat_templates: dict[str, str] = field(default_factory=dict)


def expected_shapes(h: Hparams, n_vocab: int, with_output: bool) -> dict[str, tuple[int, ...]]:
    kv = h.head_dim * h.n_head_kv
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, h.dim)}
    if h.rope_scaling is not None and h.rope_scaling.freq_factors is not None:
        shapes[ROPE_FREQS] = (h.head_dim // 2,)
    per_layer = {
        "attn_norm": (h.dim,),
        "attn_q": (h.dim, h.dim),
        "attn_k": (kv, h.dim),
        "attn_v": (kv, h.dim),
        "attn_output": (h.dim, h.dim),
        "ffn_norm": (h.dim,),
        "ffn_gate": (h.ffn, h.dim),
        "ffn_up": (h.ffn, h.dim),
        "ffn_down": (h.dim, h.ffn),
    }
    for i in range(h.n_layer):
        for k in LAYER_TENSORS:
            shapes[f"blk.{i}.{k}.weight"] = per_layer[k]
    shapes["output_norm.weight"] = (h.dim,)
    if with_output:
        shapes["output.weight"] = (n_vocab, h.dim)
    return shapes


def canonical_order(names: list[str]) -> list[str]:
    def key(n: str) -> tuple[int, int, str]:
        if n in ("token_embd.weight", ROPE_FREQS):
            return (0, 0 if n == "token_embd.weight" else 1, n)
        if n.startswith("blk."):
            i, rest = n[4:].split(".", 1)
            k = rest.rsplit(".", 1)[0]
            return (1 + int(i), LAYER_TENSORS.index(k) if k in LAYER_TENSORS else 99, n)
        return (1 << 30, 0 if n == "output_norm.weight" else 1, n)

    return sorted(names, key=key)


def check_hparams(h: Hparams, source: Path) -> None:
    for k in ("dim", "n_layer", "n_head", "n_head_kv", "ffn", "context_length"):
        v = getattr(h, k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConvertError(f"{source}: {k} = {v!r} is not a positive integer")
    if h.dim % h.n_head or (h.dim // h.n_head) % 2:
        raise ConvertError(f"{source}: dim {h.dim} is not divisible by {h.n_head} heads into an even head size")
    if h.n_head % h.n_head_kv:
        raise ConvertError(f"{source}: {h.n_head} heads are not a multiple of {h.n_head_kv} KV heads")
    if not (0 < h.eps < 1):
        raise ConvertError(f"{source}: RMSNorm eps {h.eps!r} is out of range")
    if not h.rope_base > 0:
        raise ConvertError(f"{source}: rope theta {h.rope_base!r} is out of range")


def check_plan(p: Plan) -> None:
    """The tensor set must be exactly LLaMA's for these hyperparameters, and the vocab must
    have as many pieces as the embedding has rows."""
    check_hparams(p.hparams, p.described_by)
    have = {t.name: t for t in p.tensors}
    if len(have) != len(p.tensors):
        raise ConvertError(f"{p.described_by}: duplicate tensors")
    emb = have.get("token_embd.weight")
    if emb is None:
        raise ConvertError(f"{p.described_by}: no token embedding tensor")
    n_vocab = emb.shape[0]
    want = expected_shapes(p.hparams, n_vocab, "output.weight" in have)
    for name, t in have.items():
        if name not in want:
            raise ConvertError(f"{t.source}: unexpected tensor {t.src_name} (shape {list(t.shape)})")
        if tuple(t.shape) != want[name]:
            raise ConvertError(
                f"{t.source}: tensor {t.src_name} has shape {list(t.shape)}, expected {list(want[name])}"
            )
    for name in want:
        if name not in have:
            raise ConvertError(f"{p.described_by}: tensor {name} is missing")
    if len(p.vocab) != n_vocab:
        raise ConvertError(
            f"{p.vocab.path}: the tokenizer has {len(p.vocab)} pieces but the embedding in {emb.source} has {n_vocab} rows"
        )


def check_output(out: Path, inputs: list[Path], force: bool) -> None:
    for i in inputs:
        if out.resolve() == i.resolve() or (out.exists() and i.exists() and os.path.samefile(out, i)):
            raise ConvertError(f"{out}: the output path is one of the input files")
    if out.is_dir():
        raise ConvertError(f"{out}: is a directory; give a file name with -o")
    if out.exists() and not force:
        raise ConvertError(f"{out}: already exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: no such directory for the output")


class Progress(Protocol):
    def start(self, n_tensors: int, n_bytes: int) -> None: ...
    def advance(self, name: str, n_bytes: int) -> None: ...


@dataclass
class Summary:
    path: Path
    tensors: int
    parameters: int
    bytes: int
    outtype: str
    seconds: float
    source_format: str = ""
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"wrote {self.path}: {self.tensors} tensors, {self.parameters:,} parameters, "
            f"{_human(self.bytes)}, {self.outtype}, {self.seconds:.1f} s"
        )


def _human(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


def temp_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.{os.getpid()}.partial")


def write_gguf(
    p: Plan, out: Path, outtype: str, progress: Optional[Progress] = None, source_format: str = ""
) -> Summary:
    """Write `p` to `out` via a temporary file in the same folder, renamed at the end; the
    temporary file is removed on any failure (including Ctrl+C)."""
    import gguf

    t0 = time.monotonic()
    h, v = p.hparams, p.vocab
    tmp = temp_path(out)
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(h.name)
    w.add_context_length(h.context_length)
    w.add_embedding_length(h.dim)
    w.add_block_count(h.n_layer)
    w.add_feed_forward_length(h.ffn)
    w.add_rope_dimension_count(h.head_dim)
    w.add_head_count(h.n_head)
    w.add_head_count_kv(h.n_head_kv)
    w.add_layer_norm_rms_eps(h.eps)
    w.add_rope_freq_base(h.rope_base)
    if h.rope_scaling is not None and h.rope_scaling.kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(h.rope_scaling.factor)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)
    add_vocab(w, v)
    for name, template in p.chat_templates.items():
        w.add_string(f"tokenizer.chat_template.{name}" if name else "tokenizer.chat_template", template)

    dtypes = []
    total = 0
    params = 0
    for t in p.tensors:
        dt = np.dtype(np.float16 if outtype == "f16" and len(t.shape) == 2 else np.float32)
        n = int(np.prod(t.shape))
        w.add_tensor_info(t.name, t.shape, dt, n * dt.itemsize)
        dtypes.append(dt)
        total += n * dt.itemsize
        params += n
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        if progress is not None:
            progress.start(len(p.tensors), total)
        for t, dt in zip(p.tensors, dtypes):
            try:
                a = t.load()
            except ConvertError:
                raise
            except Exception as e:
                raise ConvertError(f"{t.source}: cannot read tensor {t.name}: {_one_line(e)}") from e
            if tuple(a.shape) != tuple(t.shape):
                raise ConvertError(f"{t.source}: tensor {t.name} has shape {list(a.shape)}, expected {list(t.shape)}")
            data = np.ascontiguousarray(a, dtype=dt)
            w.write_tensor_data(data)
            del a, data
            drop_mapped_pages(t.files)
            if progress is not None:
                progress.advance(t.name, int(np.prod(t.shape)) * dt.itemsize)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    warnings = list(getattr(v, "warnings", []))
    if isinstance(v, Vocab) and v.normalizer not in ("identity", ""):
        warnings.append(
            f"{v.path}: normalizer {v.normalizer!r} is not applied by llama_rs (only 'identity', as LLaMA's "
            f"tokenizer): text needing normalization may tokenize differently from sentencepiece"
        )
    return Summary(
        out, len(p.tensors), params, out.stat().st_size, outtype, time.monotonic() - t0, source_format, warnings
    )


def write_vocab(w, v: Vocab) -> None:
    """The `tokenizer.ggml.*` keys of a SentencePiece ("llama") or byte-level BPE ("gpt2") vocab."""
    w.add_tokenizer_model(v.model)
    if v.pre is not None:
        w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    if v.scores:
        w.add_token_scores(v.scores)
    w.add_token_types(v.types)
    if v.merges:
        w.add_token_merges(v.merges)
    w.add_bos_token_id(v.bos)
    w.add_eos_token_id(v.eos)
    for key, i in (("unknown", v.unk), ("padding", v.pad), ("eot", v.eot), ("eom", v.eom)):
        if 0 <= i < len(v):
            w.add_uint32(f"tokenizer.ggml.{key}_token_id", i)
    w.add_add_bos_token(v.add_bos)
    w.add_add_eos_token(False)
    if v.model == "llama":
        w.add_add_space_prefix(v.add_space_prefix)
        w.add_remove_extra_whitespaces(v.remove_extra_whitespaces)


def add_vocab(w, v: AnyVocab) -> None:
    """The `tokenizer.ggml.*` keys of either kind of vocab, on a `gguf.GGUFWriter`."""
    if isinstance(v, BpeVocab):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(v.pre)
        w.add_token_list(v.tokens)
        w.add_token_types(v.types)
        w.add_token_merges(v.merges)
        for add, i in (
            (w.add_bos_token_id, v.bos),
            (w.add_eos_token_id, v.eos),
            (w.add_eot_token_id, v.eot),
            (w.add_eom_token_id, v.eom),
            (w.add_pad_token_id, v.pad),
        ):
            if i is not None:
                add(i)
        w.add_add_bos_token(v.add_bos)
        w.add_add_eos_token(v.add_eos)
        return
    write_vocab(w, v)


def write_vocab_gguf(v: AnyVocab, out: Path, name: str = "vocab") -> Path:
    """A vocab-only GGUF (no tensors), as llama.cpp's `ggml-vocab-*.gguf`: what
    `llama_rs.Tokenizer` opens."""
    import gguf

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(name)
    add_vocab(w, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out)


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


# -- giving mapped pages back ------------------------------------------------------------

_MADV_DONTNEED = 4


def drop_mapped_pages(files: tuple[Path, ...]) -> None:
    """Release this process's resident pages of the memory maps of `files` (torch's and
    safetensors' mmaps). Only file-backed mappings of exactly these files are touched; their
    pages were only read, so the kernel re-reads them from the page cache if needed again.
    Linux only; elsewhere a no-op (the pages are clean and reclaimable anyway)."""
    if not sys.platform.startswith("linux") or not files:
        return
    want = set()
    for f in files:
        try:
            want.add(os.path.realpath(f))
        except OSError:
            pass
    try:
        with open("/proc/self/maps") as fh:
            lines = fh.readlines()
    except OSError:
        return
    libc = _libc()
    if libc is None:
        return
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[5].rstrip("\n") not in want:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED)


_LIBC: list = []


def _libc():
    if not _LIBC:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.madvise.restype = ctypes.c_int
            _LIBC.append(libc)
        except (OSError, AttributeError):
            _LIBC.append(None)
    return _LIBC[0]
