"""The vocab embedded in every converted file, read from a SentencePiece model file."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import ConvertError


@dataclass
class Vocab:
    path: Path
    tokens: list[str]
    scores: list[float]
    #: SentencePiece piece types, which are GGUF's token types: 1 normal, 2 unknown,
    #: 3 control, 4 user-defined, 5 unused, 6 byte.
    types: list[int]
    bos: int
    eos: int
    unk: int
    pad: int
    add_space_prefix: bool
    remove_extra_whitespaces: bool
    #: SentencePiece's normalization rule; llama_rs (like llama.cpp) applies only "identity".
    normalizer: str = "identity"
    #: `tokenizer.ggml.model`: "llama" (SentencePiece) or "gpt2" (byte-level BPE, whose
    #: readers are in bpe_vocab.py and fill `merges` and `pre`; `scores` may be empty).
    model: str = "llama"
    merges: list[str] = field(default_factory=list)
    #: `tokenizer.ggml.pre`: the BPE pre-tokenizer's name.
    pre: Optional[str] = None
    add_bos: bool = True
    #: End-of-turn and end-of-message ids (`tokenizer.ggml.eot_token_id`, `eom_token_id`), -1: none.
    eot: int = -1
    eom: int = -1

    def __len__(self) -> int:
        return len(self.tokens)


def load_vocab(path: Path) -> Vocab:
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    if not path.is_file():
        raise ConvertError(f"{path}: tokenizer model not found")
    proto = spm_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError, or anything a corrupt file provokes
        raise ConvertError(f"{path}: not a SentencePiece model ({type(e).__name__})") from None
    if not proto.pieces:
        raise ConvertError(f"{path}: not a SentencePiece model (no pieces)")
    t = proto.trainer_spec
    n = len(proto.pieces)
    for what, i in (("bos", t.bos_id), ("eos", t.eos_id), ("unk", t.unk_id)):
        if i >= n:
            raise ConvertError(f"{path}: {what} id {i} is outside the {n} pieces")
    return Vocab(
        path=path,
        tokens=[p.piece for p in proto.pieces],
        scores=[p.score for p in proto.pieces],
        types=[int(p.type) for p in proto.pieces],
        bos=t.bos_id,
        eos=t.eos_id,
        unk=t.unk_id,
        pad=t.pad_id,
        add_space_prefix=proto.normalizer_spec.add_dummy_prefix,
        remove_extra_whitespaces=proto.normalizer_spec.remove_extra_whitespaces,
        normalizer=proto.normalizer_spec.name or "identity",
    )


# GGUF token types (SentencePiece's piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} [0-9]+\r?$")


def tokenizer_kind(path: Path) -> str:
    """ "tiktoken" for Meta's Llama 3 `tokenizer.model` (text lines: base64 of the token's
    bytes, a space, its rank), "sentencepiece" for anything else (a protobuf; load_vocab
    says if it is not one)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
    except OSError as e:
        raise ConvertError(f"{path}: cannot read the tokenizer ({e.strerror})") from None
    return "tiktoken" if _TIKTOKEN_LINE.match(first.rstrip(b"\n")) else "sentencepiece"


def load_any_vocab(path: Path) -> Vocab:
    """The vocab of a tokenizer file, SentencePiece or tiktoken."""
    if not path.is_file():
        raise ConvertError(f"{path}: tokenizer model not found")
    if tokenizer_kind(path) == "tiktoken":
        return _bpe().read_tiktoken(path)
    return load_vocab(path)


def load_hf_bpe(folder: Path) -> Vocab:
    """The byte-level BPE vocab of a Hugging Face `tokenizer.json`."""
    return _bpe().read_hf_tokenizer(folder)


def hf_tokenizer_json_is_bpe(folder: Path) -> bool:
    import json

    p = folder / "tokenizer.json"
    if not p.is_file():
        return False
    try:
        model = json.loads(p.read_text(encoding="utf-8")).get("model") or {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise ConvertError(f"{p}: not valid JSON") from None
    return isinstance(model, dict) and model.get("type") == "BPE"


def _bpe():
    try:
        from . import bpe_vocab
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.bpe_vocab":
            raise
        raise ConvertError("byte-level BPE (Llama 3) vocab conversion is not in this build of llama-rs") from None
    return bpe_vocab


def looks_special(text: str) -> bool:
    """llama.cpp's does_token_look_special: added tokens some models forget to mark special."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def apply_added_tokens(v: Vocab, config_path: Path, cfg: dict) -> None:
    """tokenizer_config.json's `added_tokens_decoder` over a SentencePiece vocab, as
    llama.cpp's converter applies it (_create_vocab_sentencepiece): each entry's content
    replaces the piece, with score -1000, typed CONTROL when special (Mistral v3's [INST],
    [/INST], [AVAILABLE_TOOLS] ...) or looking special, else USER_DEFINED (with `▁` as a
    space). Ids just past the pieces are appended in order."""
    added = cfg.get("added_tokens_decoder") or {}
    if not isinstance(added, dict):
        raise ConvertError(f"{config_path}: added_tokens_decoder is not an object")
    items = []
    for k, t in added.items():
        if not (isinstance(k, str) and k.isdigit() and isinstance(t, dict) and isinstance(t.get("content"), str)):
            raise ConvertError(f"{config_path}: added_tokens_decoder entry {k!r} is not an id with a content")
        items.append((int(k), t["content"], bool(t.get("special"))))
    for i, content, special in sorted(items):
        if special or looks_special(content):
            ty = CONTROL
        else:
            ty, content = USER_DEFINED, content.replace("\u2581", " ")
        if i < len(v.tokens):
            v.tokens[i], v.scores[i], v.types[i] = content, -1000.0, ty
        elif i == len(v.tokens):
            v.tokens.append(content)
            v.scores.append(-1000.0)
            v.types.append(ty)
        else:
            raise ConvertError(f"{config_path}: added token {i} leaves a gap after the {len(v.tokens)} pieces")
