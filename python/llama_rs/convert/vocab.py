"""The vocab embedded in every converted file, read from a SentencePiece model file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
