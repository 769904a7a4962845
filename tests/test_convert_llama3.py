"""`llama-rs convert` for Llama 3.x and Mistral checkpoints: Llama 3.1 rotary scaling
(`rope_freqs.weight`), tied embeddings, Meta's params.json and Hugging Face's config.json
layouts, chat templates and special ids, Mistral's SentencePiece v1/v3 tokenizers. Checked
against transformers' LlamaForCausalLM, Meta's llama_models, the float64 reference and
sentencepiece. Tiny random checkpoints written here; no network."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import llama_rs
from llama_rs.convert import ConvertError, convert
from llama_rs.convert.meta import params_ffn
from llama_rs.convert.rope import llama3_rope_factors

from convert_helpers import hf_logits, random_hf_llama, train_tokenizer, write_meta
from reference import Shape, random_weights, reference_logits

IDS = [1, 17, 250, 3, 99, 42, 7, 300, 120, 64, 5, 2, 200]
# Llama 3.1's constants, with a short original context so that the scaling bites on a few
# positions of a 16-wide head (pairs with wavelengths above 8 / 32 positions are scaled).
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tok", vocab_size=320)


def engine_logits(path: Path, ids=IDS) -> np.ndarray:
    m = llama_rs.Model(path, n_ctx=64, n_threads=2, kv_type="f32")
    return m.eval(ids, all_logits=True)


def rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


def field(r: gguf.GGUFReader, key: str):
    return r.fields[key].contents()


def tensor(r: gguf.GGUFReader, name: str) -> np.ndarray:
    return next(np.asarray(t.data) for t in r.tensors if t.name == name)


# -- rope_freqs.weight: the factors themselves ---------------------------------------------
@pytest.mark.parametrize("base, head_dim, old_ctx", [(500000.0, 128, 8192), (500000.0, 64, 8192), (500000.0, 16, 32)])
def test_llama3_factors_are_what_transformers_divides_by(base, head_dim, old_ctx) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        rope_theta=base,
        rope_scaling={**LLAMA3, "original_max_position_embeddings": old_ctx},
        max_position_embeddings=4 * old_ctx,
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ours = llama3_rope_factors(base, head_dim, 8.0, 1.0, 4.0, old_ctx)
    assert ours.dtype == np.float32 and ours.shape == (head_dim // 2,)
    np.testing.assert_allclose(ours, (plain / scaled).numpy(), rtol=1e-6)
    assert ours.min() == 1.0 and ours.max() == 8.0  # both ends of the band are present


def test_meta_defaults_are_llama_models_apply_scaling() -> None:
    """Meta's reference (llama_models/llama3/model.py's apply_scaling, taken from its source:
    the module imports fairscale, which is not needed for this one function)."""
    import ast

    import llama_models

    source = (Path(llama_models.__file__).parent / "llama3" / "model.py").read_text()
    fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "apply_scaling")
    scope = {"torch": torch}
    exec(compile(ast.Module([fn], []), "llama_models/llama3/model.py", "exec"), scope)
    apply_scaling = scope["apply_scaling"]
    freqs = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).float() / 128))
    np.testing.assert_allclose(llama3_rope_factors(500000.0, 128), (freqs / apply_scaling(freqs)).numpy(), rtol=1e-6)


# -- Hugging Face Llama 3: rope_scaling llama3, tied embeddings, vs transformers ----------
def llama3_hf(tmp_path: Path, tokenizer: Path, layout: str, tie: bool, seed: int = 4):
    """A tiny LlamaForCausalLM with Llama 3.1 rotary, saved by transformers; `layout`
    "rope_scaling" rewrites config.json as Llama 3.1's release has it (rope_theta and
    rope_scaling at the top, transformers 4) instead of transformers 5's rope_parameters."""
    model = random_hf_llama(vocab=320, seed=seed, tie=tie, rope_theta=500000.0)
    model.config.rope_parameters = {**LLAMA3, "original_max_position_embeddings": 32, "rope_theta": 500000.0}
    from transformers import LlamaForCausalLM

    fresh = LlamaForCausalLM(model.config).eval()  # rotary tables built from the new config
    fresh.load_state_dict(model.state_dict())
    src = tmp_path / f"hf-{layout}-{tie}"
    fresh.save_pretrained(src)
    shutil.copy(tokenizer, src / "tokenizer.model")
    if layout == "rope_scaling":
        cfg = json.loads((src / "config.json").read_text())
        rp = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rp.pop("rope_theta")
        cfg["rope_scaling"] = rp
        (src / "config.json").write_text(json.dumps(cfg))
    return fresh, src


@pytest.mark.parametrize("layout", ["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("tie", [False, True])
def test_hf_llama3_rope_matches_transformers(tokenizer, tmp_path, layout, tie) -> None:
    model, src = llama3_hf(tmp_path, tokenizer, layout, tie)
    out = tmp_path / "l3.gguf"
    convert(src, out, "f32")
    r = gguf.GGUFReader(out)
    names = [t.name for t in r.tensors]
    assert ("output.weight" in names) == (not tie)
    np.testing.assert_array_equal(tensor(r, "rope_freqs.weight"), llama3_rope_factors(500000.0, 16, 8.0, 1.0, 4.0, 32))
    assert field(r, "llama.rope.freq_base") == 500000.0
    want = hf_logits(model, IDS)
    got = engine_logits(out)
    assert rel(got, want) < 2e-5, rel(got, want)
    # The factors matter here: transformers without them is far from us.
    plain = random_hf_llama(vocab=320, seed=4, tie=tie, rope_theta=500000.0)
    plain.load_state_dict(model.state_dict())
    assert rel(got, hf_logits(plain, IDS)) > 1e-3


def test_hf_linear_rope_scaling_matches_transformers(tokenizer, tmp_path) -> None:
    model = random_hf_llama(vocab=320, seed=5, rope_theta=10000.0)
    model.config.rope_parameters = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    from transformers import LlamaForCausalLM

    fresh = LlamaForCausalLM(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    src = tmp_path / "lin"
    fresh.save_pretrained(src)
    shutil.copy(tokenizer, src / "tokenizer.model")
    out = tmp_path / "lin.gguf"
    convert(src, out, "f32")
    r = gguf.GGUFReader(out)
    assert field(r, "llama.rope.scaling.type") == "linear" and field(r, "llama.rope.scaling.factor") == 4.0
    assert rel(engine_logits(out), hf_logits(fresh, IDS)) < 2e-5


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0}, {"type": "dynamic", "factor": 2.0}])
def test_hf_unsupported_rope_scaling_is_refused(tokenizer, tmp_path, scaling) -> None:
    model, src = llama3_hf(tmp_path, tokenizer, "rope_scaling", False)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_scaling"] = scaling
    (src / "config.json").write_text(json.dumps(cfg))
    kind = scaling.get("rope_type") or scaling.get("type")
    with pytest.raises(ConvertError, match=f"config.json: rope scaling '{kind}' is not supported"):
        convert(src, tmp_path / "x.gguf", "f32")
    assert not (tmp_path / "x.gguf").exists()


def test_hf_llama3_bad_scaling_values_are_refused(tokenizer, tmp_path) -> None:
    _, src = llama3_hf(tmp_path, tokenizer, "rope_scaling", False)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_scaling"]["high_freq_factor"] = 1.0  # equal to low_freq_factor: no band
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="low_freq_factor and high_freq_factor are equal"):
        convert(src, tmp_path / "x.gguf", "f32")
    cfg["rope_scaling"]["high_freq_factor"] = 4.0
    cfg["rope_scaling"]["factor"] = -8
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match=r"rope_scaling.factor = -8 is not a positive number"):
        convert(src, tmp_path / "x.gguf", "f32")


def test_hf_untied_without_lm_head_is_refused(tokenizer, tmp_path) -> None:
    model = random_hf_llama(vocab=320, seed=2, tie=True)
    src = tmp_path / "hf"
    model.save_pretrained(src)
    shutil.copy(tokenizer, src / "tokenizer.model")
    cfg = json.loads((src / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="lm_head.weight is missing .*tie_word_embeddings false"):
        convert(src, tmp_path / "x.gguf", "f32")


# -- Meta's Llama 3 layout: params.json -----------------------------------------------------
L3 = Shape(dim=64, n_layer=2, n_head=4, n_head_kv=2, ffn=96, vocab=320, eps=1e-5, rope_base=500000.0)


@pytest.mark.parametrize("extra", [{}, {"rope_scaling_factor": 32.0}])
def test_meta_use_scaled_rope_matches_reference(tokenizer, tmp_path, extra) -> None:
    w = random_weights(L3, seed=11)
    src = write_meta(tmp_path / "m", L3, w, 1, tokenizer, extra_params={"use_scaled_rope": True, **extra})
    out = tmp_path / "m.gguf"
    convert(src, out, "f32")
    factors = llama3_rope_factors(500000.0, 16, extra.get("rope_scaling_factor", 8.0), 1.0, 4.0, 8192)
    r = gguf.GGUFReader(out)
    np.testing.assert_array_equal(tensor(r, "rope_freqs.weight"), factors)
    s = replace(L3, rope_factors=tuple(float(f) for f in factors))
    ref = reference_logits(s, w, IDS)
    got = engine_logits(out)
    assert rel(got, ref) < 2e-5, rel(got, ref)
    # With Meta's 8192-position original context only the lowest frequencies are scaled:
    # small on 13 positions, but there.
    assert rel(got, reference_logits(L3, w, IDS)) > 10 * rel(got, ref)


def test_meta_without_scaled_rope_has_no_rope_freqs(tokenizer, tmp_path) -> None:
    src = write_meta(tmp_path / "m", L3, random_weights(L3), 1, tokenizer, extra_params={"use_scaled_rope": False})
    out = tmp_path / "m.gguf"
    convert(src, out, "f16")
    assert "rope_freqs.weight" not in [t.name for t in gguf.GGUFReader(out).tensors]


def hf_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' convert_llama_weights_to_hf `permute`: Meta's interleaved rotary pairs
    (2i, 2i+1) of each head to rotate-half order (i, i + head_dim / 2)."""
    t = torch.from_numpy(w)
    rows, cols = t.shape
    return t.view(n_head, rows // n_head // 2, 2, cols).transpose(1, 2).reshape(rows, cols).numpy()


# GGUF (= Meta) name -> transformers' name
HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    **{
        f"blk.{i}.{g}.weight": f"model.layers.{i}.{h}.weight"
        for i in range(2)
        for g, h in {
            "attn_norm": "input_layernorm",
            "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj",
            "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
        }.items()
    },
}


def gguf_dump(path: Path) -> tuple[dict, dict]:
    """({key: (GGUF value type, value)}, {tensor name: (dims, type, bytes)}), read with our own
    reader (the `gguf` package takes 20 s over a 128256-token vocab; test_gguf checks ours
    against it)."""
    from llama_rs import _core

    _, _, meta, tensors = _core.gguf_read(path)
    return meta, {name: (tuple(dims), ty, _core.gguf_tensor_bytes(path, name)) for name, dims, ty, _, _ in tensors}


@pytest.mark.parametrize("tie", [False, True])
def test_meta_and_hf_layouts_of_the_same_weights_convert_alike(tmp_path, tie) -> None:
    """One random Llama-3.1-configured model (Meta's tokenizer.model, scaled rope, GQA)
    written as Meta's release (consolidated.00.pth + params.json + tokenizer.model) and as
    transformers' save_pretrained (q/k permuted to rotate-half, tokenizer.json from the same
    tokenizer.model): both converts give the same tensors, byte for byte, and metadata."""
    import llama_models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    s = replace(L3, vocab=128256)
    w = random_weights(s, seed=21)
    if tie:  # Meta's checkpoints of tied models (Llama 3.2 1B/3B) still hold output.weight
        w["output.weight"] = w["token_embd.weight"].copy()
    meta_src = write_meta(
        tmp_path / "meta" / "tiny-llama3", s, w, 1, tok, max_seq_len=131072, extra_params={"use_scaled_rope": True}
    )

    cfg = LlamaConfig(
        vocab_size=s.vocab,
        hidden_size=s.dim,
        intermediate_size=s.ffn,
        num_hidden_layers=s.n_layer,
        num_attention_heads=s.n_head,
        num_key_value_heads=s.n_head_kv,
        rms_norm_eps=s.eps,
        max_position_embeddings=131072,
        rope_parameters={**LLAMA3, "original_max_position_embeddings": 8192, "rope_theta": s.rope_base},
        tie_word_embeddings=tie,
        bos_token_id=128000,
        eos_token_id=128001,
    )
    model = LlamaForCausalLM(cfg).eval()
    sd = {}
    for g, a in w.items():
        if g.endswith("attn_q.weight"):
            a = hf_permute(a, s.n_head)
        elif g.endswith("attn_k.weight"):
            a = hf_permute(a, s.n_head_kv)
        sd[HF_NAMES[g]] = torch.from_numpy(np.ascontiguousarray(a))
    model.load_state_dict(sd, strict=True)
    hf_src = tmp_path / "hf" / "tiny-llama3"
    model.save_pretrained(hf_src)
    specials = list(read_meta_specials(tok))
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=TikTokenConverter(vocab_file=str(tok), extra_special_tokens=specials).converted(),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|finetune_right_pad_id|>",  # Meta's Tokenizer.pad_id
    )
    hf_tok.save_pretrained(hf_src)
    # The permutation is transformers' own: its forward equals Meta's on these weights.
    ids = [128000, 9906, 1917, 11, 358, 1097, 264, 94776, 13]
    s_scaled = replace(s, rope_factors=tuple(float(f) for f in llama3_rope_factors(s.rope_base, s.head_dim)))
    assert rel(hf_logits(model, ids), reference_logits(s_scaled, w, ids)) < 1e-5  # its rotary tables are float32

    convert(meta_src, tmp_path / "meta.gguf", "f16")
    convert(hf_src, tmp_path / "hf.gguf", "f16")
    meta_kv, meta_t = gguf_dump(tmp_path / "meta.gguf")
    hf_kv, hf_t = gguf_dump(tmp_path / "hf.gguf")
    assert sorted(meta_t) == sorted(hf_t)  # the order is the writers' (HF: shard by shard)
    assert "rope_freqs.weight" in meta_t and ("output.weight" in meta_t) == (not tie)
    for name in meta_t:
        assert meta_t[name] == hf_t[name], name
    assert {k: v for k, v in meta_kv.items() if meta_kv.get(k) != hf_kv.get(k)} == {}
    assert set(hf_kv) - set(meta_kv) <= {"tokenizer.chat_template"}


def read_meta_specials(tok: Path) -> list[str]:
    from llama_rs.convert.bpe_vocab import read_tiktoken

    v = read_tiktoken(tok)
    return [p for p, t in zip(v.tokens, v.types) if t == gguf.TokenType.CONTROL]


@pytest.mark.parametrize(
    "dim, mult, multiple_of, ffn",
    [
        (4096, None, 256, 11008),  # Llama 2 7B
        (4096, 1.3, 1024, 14336),  # Llama 3 8B
        (8192, 1.3, 4096, 28672),  # Llama 3 70B
        (16384, 1.2, 4096, 53248),  # Llama 3.1 405B
        (2048, 1.5, 256, 8192),  # Llama 3.2 1B
        (3072, 1.0, 256, 8192),  # Llama 3.2 3B
        (128, None, 32, 352),  # fortunes-1M
    ],
)
def test_meta_feed_forward_width_from_params(dim, mult, multiple_of, ffn) -> None:
    """The widths of the released models' config.json intermediate_size."""
    p = {"dim": dim, "multiple_of": multiple_of, "ffn_dim_multiplier": mult}
    assert params_ffn(Path("params.json"), p) == ffn


def test_meta_feed_forward_width_disagreeing_with_tensors_is_refused(tokenizer, tmp_path) -> None:
    src = write_meta(tmp_path / "m", L3, random_weights(L3), 1, tokenizer, extra_params={"ffn_dim_multiplier": 1.3})
    with pytest.raises(ConvertError, match=r"feed_forward.w1.weight has 96 rows but params.json's multiple_of 96"):
        convert(src, tmp_path / "x.gguf")
    src = write_meta(tmp_path / "n", L3, random_weights(L3), 1, tokenizer, extra_params={"multiple_of": 0})
    with pytest.raises(ConvertError, match="multiple_of = 0 is not a positive integer"):
        convert(src, tmp_path / "x.gguf")


# -- tokenizer metadata: chat templates, special ids ---------------------------------------
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def hf_folder(tmp_path: Path, tokenizer: Path, name: str = "hf") -> Path:
    model = random_hf_llama(vocab=320, seed=1)
    src = tmp_path / name
    model.save_pretrained(src)
    shutil.copy(tokenizer, src / "tokenizer.model")
    return src


@pytest.mark.parametrize("where", ["tokenizer_config", "named", "jinja"])
def test_chat_template_is_copied(tokenizer, tmp_path, where) -> None:
    src = hf_folder(tmp_path, tokenizer)
    if where == "tokenizer_config":
        (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    elif where == "named":
        named = [{"name": "default", "template": TEMPLATE}, {"name": "tool_use", "template": "T"}]
        (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    else:
        (src / "chat_template.jinja").write_text(TEMPLATE)
    out = tmp_path / "c.gguf"
    convert(src, out, "f16")
    r = gguf.GGUFReader(out)
    assert field(r, "tokenizer.chat_template") == TEMPLATE
    assert ("tokenizer.chat_template.tool_use" in r.fields) == (where == "named")
    if where == "named":
        assert field(r, "tokenizer.chat_template.tool_use") == "T"
    assert llama_rs.Model(out, n_ctx=8).metadata["tokenizer.chat_template"] == TEMPLATE


def test_bad_chat_template_is_refused(tokenizer, tmp_path) -> None:
    src = hf_folder(tmp_path, tokenizer)
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": 7}))
    with pytest.raises(ConvertError, match="tokenizer_config.json: chat_template is neither"):
        convert(src, tmp_path / "x.gguf")


def test_special_ids_from_generation_config_and_config(tokenizer, tmp_path) -> None:
    src = hf_folder(tmp_path, tokenizer)
    cfg = json.loads((src / "config.json").read_text())
    cfg["eos_token_id"] = [2, 7]  # a list, as Llama 3.1 instruct's: the first is EOS
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "generation_config.json").write_text(json.dumps({"bos_token_id": 5}))
    (src / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    out = tmp_path / "s.gguf"
    convert(src, out, "f16")
    r = gguf.GGUFReader(out)
    assert (field(r, "tokenizer.ggml.bos_token_id"), field(r, "tokenizer.ggml.eos_token_id")) == (5, 2)
    assert field(r, "tokenizer.ggml.add_bos_token") is False
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": 320}))
    with pytest.raises(ConvertError, match=r"generation_config.json: eos_token_id = 320 is not a token id of the 320"):
        convert(src, tmp_path / "x.gguf")


# -- Mistral: SentencePiece v1 and v3 (control tokens), MistralForCausalLM ------------------
def mistral_tokenizer(version: str) -> Path:
    pytest.importorskip("mistral_common", reason="mistral-common ships Mistral's tokenizer files")
    import mistral_common

    data = Path(mistral_common.__file__).parent / "data"
    return data / {"v1": "tokenizer.model.v1", "v3": "mistral_instruct_tokenizer_240323.model.v3"}[version]


def mistral_folder(tmp_path: Path, version: str, tokenizer_config: dict | None = None) -> tuple[Path, Path]:
    from transformers import MistralConfig, MistralForCausalLM

    tok = mistral_tokenizer(version)
    import sentencepiece as spm

    n = spm.SentencePieceProcessor(model_file=str(tok)).vocab_size()
    cfg = MistralConfig(
        vocab_size=n,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=None,
        rope_theta=1e6,
    )
    torch.manual_seed(0)
    src = tmp_path / f"mistral-{version}"
    MistralForCausalLM(cfg).save_pretrained(src)
    shutil.copy(tok, src / ("tokenizer.model.v3" if version == "v3" else "tokenizer.model"))
    if tokenizer_config is not None:
        (src / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return src, tok


TEXTS = ["[INST] What is a llama? [/INST]", "Hello world", " ünïcödé 🦙 [AVAILABLE_TOOLS]"]


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_mistral_tokenizers(tmp_path, version) -> None:
    import sentencepiece as spm

    src, tok = mistral_folder(tmp_path, version)
    out = tmp_path / "mistral.gguf"
    convert(src, out, "f16")
    r = gguf.GGUFReader(out)
    tokens, types = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.token_type")
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    assert len(tokens) == sp.vocab_size()
    if version == "v3":
        for name in ["[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[TOOL_CALLS]"]:
            assert types[tokens.index(name)] == gguf.TokenType.CONTROL, name
    m = llama_rs.Model(out, n_ctx=16)
    for text in TEXTS:
        # Control tokens are not parsed from plain text, as sentencepiece does not.
        assert m.tokenize(text, bos=False) == sp.encode(text), text


def test_mistral_added_tokens_decoder_types_as_llama_cpp(tmp_path) -> None:
    """tokenizer_config.json's added_tokens_decoder: special tokens CONTROL, others
    USER_DEFINED, scores -1000 (llama.cpp's _create_vocab_sentencepiece)."""
    added = {
        "3": {"content": "[INST]", "special": True},
        "10": {"content": "[IMG]", "special": False},
    }
    src, _ = mistral_folder(tmp_path, "v3", {"added_tokens_decoder": added})
    out = tmp_path / "m.gguf"
    convert(src, out, "f16")
    r = gguf.GGUFReader(out)
    types, scores = field(r, "tokenizer.ggml.token_type"), field(r, "tokenizer.ggml.scores")
    assert types[3] == gguf.TokenType.CONTROL and types[10] == gguf.TokenType.USER_DEFINED
    assert scores[3] == scores[10] == -1000.0
    # A content replaces the piece, and one that looks special is CONTROL (llama.cpp's rules).
    (src / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"4": {"content": "<|im_end|>"}}}))
    convert(src, out, "f16", force=True)
    r = gguf.GGUFReader(out)
    assert field(r, "tokenizer.ggml.tokens")[4] == "<|im_end|>"
    assert field(r, "tokenizer.ggml.token_type")[4] == gguf.TokenType.CONTROL
    # A gap past the pieces is an error.
    (src / "tokenizer_config.json").write_text(
        json.dumps({"added_tokens_decoder": {"4": {"content": "<|im_end|>"}, "32770": {"content": "x"}}})
    )
    with pytest.raises(ConvertError, match="added token 32770 leaves a gap after the 32768 pieces"):
        convert(src, tmp_path / "x.gguf", "f16")


def test_mistral_sliding_window_caps_the_context(tmp_path) -> None:
    src, _ = mistral_folder(tmp_path, "v1")
    cfg = json.loads((src / "config.json").read_text())
    cfg["sliding_window"] = 64
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "m.gguf"
    convert(src, out, "f16")
    assert field(gguf.GGUFReader(out), "llama.context_length") == 64


# -- byte-level BPE vocabs (the bpe_vocab readers; these run once that module is merged) ---
def test_meta_llama3_tiktoken_tokenizer_is_converted_as_bpe(tmp_path) -> None:
    from llama_rs.convert import bpe_vocab  # noqa: F401  (written on the bpe branch)
    import llama_models

    tok = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    s = replace(L3, vocab=128256, n_layer=1)
    src = write_meta(tmp_path / "m", s, random_weights(s), 1, tok, extra_params={"use_scaled_rope": True})
    out = tmp_path / "l3.gguf"
    convert(src, out, "f16")
    r = gguf.GGUFReader(out)
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == 128256 and tokens[128000] == "<|begin_of_text|>"
    assert "rope_freqs.weight" in [t.name for t in r.tensors]


def test_hf_tokenizer_json_bpe_is_converted_as_bpe(tmp_path) -> None:
    from llama_rs.convert import bpe_vocab  # noqa: F401  (written on the bpe branch)
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = "the quick brown llama jumps over the lazy dog".split()
    t.train_from_iterator(
        [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"]),
    )
    n = t.get_vocab_size()
    model = random_hf_llama(vocab=n, seed=3, tie=True)
    model.config.bos_token_id, model.config.eos_token_id = 0, 1
    # generation_config.json wins over config.json (as in HF releases): keep them the same.
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = 0, 1
    src = tmp_path / "hf"
    model.save_pretrained(src)
    t.save(str(src / "tokenizer.json"))
    out = tmp_path / "bpe.gguf"
    convert(src, out, "f16")
    r = gguf.GGUFReader(out)
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    vocab = t.get_vocab()
    assert field(r, "tokenizer.ggml.tokens") == sorted(vocab, key=vocab.get)
    assert (field(r, "tokenizer.ggml.bos_token_id"), field(r, "tokenizer.ggml.eos_token_id")) == (0, 1)


def test_tokenizer_kind_tells_tiktoken_from_sentencepiece(tokenizer, tmp_path) -> None:
    import llama_models

    from llama_rs.convert.vocab import tokenizer_kind

    assert tokenizer_kind(Path(llama_models.__file__).parent / "llama3" / "tokenizer.model") == "tiktoken"
    assert tokenizer_kind(tokenizer) == "sentencepiece"
    (tmp_path / "junk.model").write_bytes(b"not a tokenizer\n")
    assert tokenizer_kind(tmp_path / "junk.model") == "sentencepiece"  # load_vocab then says it is not one
