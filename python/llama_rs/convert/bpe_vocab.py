"""Byte-level BPE vocabularies (Llama 3) for GGUF `tokenizer.ggml.model = "gpt2"`, read from
Meta's tiktoken `tokenizer.model` or from a Hugging Face `tokenizer.json`.

Interface for the converters:

- `read_tiktoken(path) -> BpeVocab`: Meta's Llama 3 / 3.x `tokenizer.model` (lines of
  `<base64 token bytes> <rank>`), with the 256 special tokens of `llama_models`' tokenizer.py
  appended (`<|begin_of_text|>` = n_base, ...).
- `read_hf_tokenizer(folder_or_file) -> BpeVocab`: a Hugging Face `tokenizer.json` with a
  byte-level BPE model (`model.type == "BPE"`, merges) and its `added_tokens`; BOS/EOS and
  `add_bos_token` / `add_eos_token` from `tokenizer_config.json` beside it when there is one.
- `BpeVocab.padded(n)`: the vocab grown to `n` pieces (an embedding with spare rows).
- `writer.add_vocab(gguf_writer, vocab)` writes either kind; `writer.write_vocab_gguf(vocab,
  path)` a vocab-only GGUF (what `llama_rs.Tokenizer` opens).

Pieces are stored as GGUF and llama.cpp expect them: normal tokens in GPT-2's
byte-to-unicode mapping (`Ġ` for a space), special tokens as their text with type CONTROL
(user-defined for a Hugging Face added token that is not `special`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Optional

from .errors import ConvertError

# GGUF token types.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

#: Llama 3's pre-tokenizer pattern (`llama_models/llama3/tokenizer.py`), GGUF pre "llama-bpe".
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: The named special tokens of Llama 3.x, in order after the base vocab; the rest of the 256
#: are `<|reserved_special_token_{2 + i}|>` (as `llama_models.llama3.tokenizer`).
LLAMA3_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
N_LLAMA3_SPECIAL = 256


def llama3_special_tokens() -> list[str]:
    n = N_LLAMA3_SPECIAL - len(LLAMA3_SPECIAL)
    return LLAMA3_SPECIAL + [f"<|reserved_special_token_{2 + i}|>" for i in range(n)]


@dataclass
class BpeVocab:
    #: GGUF `tokenizer.ggml.model` (as `vocab.Vocab.model`, for code that takes either kind).
    model: ClassVar[str] = "gpt2"
    path: Path
    #: Pieces in GGUF form (mapped bytes; special tokens as text).
    tokens: list[str]
    #: GGUF token types, one per piece.
    types: list[int]
    #: `"left right"` in the mapped form, lowest rank first.
    merges: list[str]
    #: GGUF `tokenizer.ggml.pre`.
    pre: str = "llama-bpe"
    bos: Optional[int] = None
    eos: Optional[int] = None
    eot: Optional[int] = None
    eom: Optional[int] = None
    pad: Optional[int] = None
    add_bos: bool = True
    add_eos: bool = False
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def id_of(self, text: str) -> Optional[int]:
        try:
            return self.tokens.index(text)
        except ValueError:
            return None

    def padded(self, n: int) -> "BpeVocab":
        """This vocab with `[PAD{i}]` pieces (type unused) up to `n` pieces, as llama.cpp's
        converter fills an embedding larger than the tokenizer."""
        if n < len(self):
            raise ConvertError(f"{self.path}: the tokenizer has {len(self)} pieces, more than the {n} of the model")
        extra = range(len(self), n)
        return replace(
            self, tokens=self.tokens + [f"[PAD{i}]" for i in extra], types=self.types + [UNUSED] * len(extra)
        )


# -- GPT-2's byte-to-unicode mapping ------------------------------------------------------


@lru_cache(maxsize=1)
def byte_to_char() -> tuple[str, ...]:
    """The printable character each byte is stored as (OpenAI's `bytes_to_unicode`)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {}
    n = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return tuple(table[b] for b in range(256))


def bytes_to_piece(b: bytes) -> str:
    m = byte_to_char()
    return "".join(m[x] for x in b)


# -- Meta's tiktoken file -----------------------------------------------------------------


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """`{token bytes: rank}` of a tiktoken BPE file; the ranks must be 0..n-1."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: tokenizer model not found")
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise ConvertError(f"{path}: cannot read ({e.strerror})") from None
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except ValueError:
            raise ConvertError(f"{path}:{k}: not a tiktoken file (lines are '<base64 token> <rank>')") from None
        if token in ranks:
            raise ConvertError(f"{path}:{k}: token {token!r} appears twice")
        ranks[token] = rank
    if not ranks:
        raise ConvertError(f"{path}: not a tiktoken file (empty)")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ConvertError(f"{path}: the ranks are not 0..{len(ranks) - 1}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ConvertError(f"{path}: not a byte-level BPE: {len(missing)} single bytes have no token")
    return ranks


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges a tiktoken vocab implies, as Hugging Face's `TikTokenConverter` (whose
    output llama.cpp converts): every split of each token into two tokens, ordered by the
    token's rank, then by the ranks of the left and right parts."""
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            rl, rr = ranks.get(left), ranks.get(right)
            if rl is not None and rr is not None:
                merges.append((rank, rl, rr, left, right))
    merges.sort()
    return [(m[3], m[4]) for m in merges]


def read_tiktoken(path: Path, special_tokens: Optional[list[str]] = None, pre: str = "llama-bpe") -> BpeVocab:
    """Meta's Llama 3 `tokenizer.model`. `special_tokens` (default: Llama 3's 256) follow the
    base vocab as CONTROL tokens; BOS, EOS, EOT, EOM and pad are found by their Llama 3 names
    (None where absent). `eos` is `<|end_of_text|>`; an instruct model's converter sets it to
    `<|eot_id|>` if it wants (both end generation anyway)."""
    path = Path(path)
    ranks = read_tiktoken_ranks(path)
    by_rank = sorted(ranks, key=ranks.__getitem__)
    specials = llama3_special_tokens() if special_tokens is None else list(special_tokens)
    tokens = [bytes_to_piece(t) for t in by_rank] + specials
    types = [NORMAL] * len(by_rank) + [CONTROL] * len(specials)
    merges = [f"{bytes_to_piece(a)} {bytes_to_piece(b)}" for a, b in merges_from_ranks(ranks)]
    v = BpeVocab(path=path, tokens=tokens, types=types, merges=merges, pre=pre)
    index = {t: i for i, t in enumerate(specials, len(by_rank))}
    v.bos = index.get("<|begin_of_text|>")
    v.eos = index.get("<|end_of_text|>")
    v.eot = index.get("<|eot_id|>")
    v.eom = index.get("<|eom_id|>")
    v.pad = index.get("<|finetune_right_pad_id|>")
    v.add_bos = v.bos is not None
    return v


# -- Hugging Face tokenizer.json ----------------------------------------------------------


def _pre_name(tj: dict, path: Path) -> str:
    """GGUF `pre` of a tokenizer.json's pre-tokenizer (byte-level only)."""
    pt = tj.get("pre_tokenizer") or {}
    steps = pt.get("pretokenizers", [pt]) if pt.get("type") == "Sequence" else [pt]
    kinds = [s.get("type") for s in steps]
    if "ByteLevel" not in kinds:
        raise ConvertError(f"{path}: pre-tokenizer {kinds} is not byte-level (no ByteLevel step)")
    splits = [s for s in steps if s.get("type") == "Split"]
    if not splits:
        bl = steps[kinds.index("ByteLevel")]
        if bl.get("use_regex", True):
            return "gpt-2"
        raise ConvertError(f"{path}: a ByteLevel pre-tokenizer without its regex is not supported")
    pattern = splits[0].get("pattern", {})
    regex = pattern.get("Regex") if isinstance(pattern, dict) else None
    if len(splits) == 1 and regex == LLAMA3_PATTERN:
        return "llama-bpe"
    raise ConvertError(f"{path}: pre-tokenizer pattern {regex!r} is not one llama_rs knows (Llama 3's, GPT-2's)")


def _token_text(t) -> Optional[str]:
    if isinstance(t, str):
        return t
    if isinstance(t, dict) and isinstance(t.get("content"), str):
        return t["content"]
    return None


def read_hf_tokenizer(path: Path) -> BpeVocab:
    """A Hugging Face byte-level BPE tokenizer: `path` is `tokenizer.json` or its folder."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ConvertError(f"{file}: tokenizer.json not found")
    try:
        tj = json.loads(file.read_text(encoding="utf-8"))
        model = tj["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConvertError(f"{file}: not a Hugging Face tokenizer.json ({type(e).__name__})") from None
    if model.get("type") != "BPE":
        raise ConvertError(f"{file}: model type {model.get('type')!r} is not BPE")
    vocab: dict[str, int] = model.get("vocab") or {}
    raw_merges = model.get("merges") or []
    if not vocab or not raw_merges:
        raise ConvertError(f"{file}: the BPE model has no vocab or no merges")
    pre = _pre_name(tj, file)
    added = tj.get("added_tokens") or []

    n = max([*vocab.values(), *(a.get("id", -1) for a in added)]) + 1
    tokens: list[Optional[str]] = [None] * n
    types = [NORMAL] * n
    for text, i in vocab.items():
        if not (isinstance(i, int) and 0 <= i):
            raise ConvertError(f"{file}: token {text!r} has id {i!r}")
        tokens[i] = text
    for a in added:
        i, text = a.get("id"), a.get("content")
        if not isinstance(i, int) or i < 0 or not isinstance(text, str):
            raise ConvertError(f"{file}: malformed added token {a!r}")
        tokens[i] = text
        types[i] = CONTROL if a.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:  # a gap in the ids (llama.cpp's converter does the same)
            tokens[i] = f"[PAD{i}]"
            types[i] = UNUSED
    merges = []
    for m in raw_merges:
        if isinstance(m, str):
            merges.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            merges.append(f"{m[0]} {m[1]}")  # the newer [left, right] form
        else:
            raise ConvertError(f"{file}: malformed merge {m!r}")

    v = BpeVocab(path=file, tokens=tokens, types=types, merges=merges, pre=pre)  # type: ignore[arg-type]
    cfg_file = file.with_name("tokenizer_config.json")
    cfg = {}
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConvertError(f"{cfg_file}: not JSON ({type(e).__name__})") from None
    index = {t: i for i, t in enumerate(v.tokens) if types[i] in (CONTROL, USER_DEFINED)}

    def named(key: str, default: Optional[str]) -> Optional[int]:
        text = _token_text(cfg.get(key)) if key in cfg else default
        return index.get(text) if text is not None else None

    v.bos = named("bos_token", "<|begin_of_text|>")
    v.eos = named("eos_token", "<|end_of_text|>")
    v.pad = named("pad_token", None)
    v.eot = index.get("<|eot_id|>")
    v.eom = index.get("<|eom_id|>")
    v.add_bos = bool(cfg.get("add_bos_token", v.bos is not None and pre == "llama-bpe"))
    v.add_eos = bool(cfg.get("add_eos_token", False))
    if v.add_bos and v.bos is None:
        raise ConvertError(f"{file}: add_bos_token is set but the BOS token is not in the vocab")
    # Llama 3's post-processor adds BOS itself (add_bos_token is absent from its config).
    if "add_bos_token" not in cfg:
        post = json.dumps(tj.get("post_processor") or {})
        if v.bos is not None and v.tokens[v.bos] in post:
            v.add_bos = True
    return v
