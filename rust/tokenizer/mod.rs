//! Tokenizers, built from the vocab stored in a model file. One interface ([`Tokenizer`]:
//! encode, decode, streaming decode with [`StreamDecoder`], the vocab's pieces and special
//! ids) over the families, chosen by [`Vocab::kind`]:
//!
//! - [`Kind::SentencePiece`] (`spm.rs`): SentencePiece BPE, LLaMA 1/2, Mistral, TinyLlama
//!   (GGUF `tokenizer.ggml.model = "llama"`).
//! - [`Kind::BytePair`] (`bpe.rs`, `pretokenize.rs`, `byte_level.rs`): byte-level BPE with
//!   merges, GPT-2 and Llama 3 (GGUF `tokenizer.ggml.model = "gpt2"`).
//!
//! A family turns a checked [`Vocab`] into its encoder and into how each id decodes
//! ([`DecodeKind`] and a byte surface per id); special tokens in text (`special.rs`),
//! the end-of-generation set, decoding and streaming (`stream.rs`) are shared.

mod bpe;
mod byte_level;
mod pretokenize;
mod special;
mod spm;
mod stream;

use crate::error::{Error, Result};
use special::{Fragment, Matcher};
use std::fmt;

pub use pretokenize::{Pre, KNOWN_PRE};
pub use stream::StreamDecoder;

/// Token types as stored in GGUF `tokenizer.ggml.token_type` (and sentencepiece's proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    /// GGUF / llama.cpp value; 0 ("undefined" in llama.cpp) is taken as normal.
    pub fn from_gguf(v: i32) -> Option<TokenType> {
        Some(match v {
            0 | 1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

/// Which family of tokenizer a vocab is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SentencePiece BPE (GGUF `tokenizer.ggml.model = "llama"`).
    SentencePiece,
    /// Byte-level BPE with merges (GGUF `tokenizer.ggml.model = "gpt2"`).
    BytePair,
}

/// A vocab as a model file describes it: everything a tokenizer is built from.
#[derive(Clone, Debug)]
pub struct Vocab {
    pub kind: Kind,
    /// Pieces in the family's escaped form (SentencePiece: `▁` for space, `<0xXX>` for bytes;
    /// byte-level BPE: GPT-2's byte-to-unicode mapping; control and user-defined pieces as
    /// their text).
    pub pieces: Vec<String>,
    /// Merge scores, one per piece; empty: all 0.
    pub scores: Vec<f32>,
    /// One per piece; empty: inferred (`<0xXX>` byte, `<unk>` or the `unk` id unknown,
    /// `<s>`/`</s>` or the `bos`/`eos` ids control, others normal).
    pub types: Vec<TokenType>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// None: the first piece of type unknown, if any.
    pub unk: Option<u32>,
    /// sentencepiece's `add_dummy_prefix`: a space before the text.
    pub add_space_prefix: bool,
    /// sentencepiece's `remove_extra_whitespaces`.
    pub remove_extra_whitespaces: bool,
    /// Byte-level BPE: the merges, `"left right"` in the pieces' form, lowest rank first.
    pub merges: Vec<String>,
    /// Byte-level BPE: the pre-tokenizer (`tokenizer.ggml.pre`).
    pub pre: Pre,
    /// End of turn / end of message (`tokenizer.ggml.eot_token_id`, `eom_token_id`); None: found
    /// by text as llama.cpp does (`<|eot_id|>`, `<|im_end|>`, ... / `<|eom_id|>`).
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    /// Encoding with the model's special tokens puts `bos` first / `eos` last
    /// (`tokenizer.ggml.add_bos_token` / `add_eos_token`).
    pub add_bos: bool,
    pub add_eos: bool,
}

impl Vocab {
    /// A SentencePiece vocab of these pieces with the defaults: no scores, types inferred, no
    /// special ids, a space prefix, whitespace kept.
    pub fn new(pieces: Vec<String>) -> Vocab {
        Vocab {
            kind: Kind::SentencePiece,
            pieces,
            scores: Vec::new(),
            types: Vec::new(),
            bos: None,
            eos: None,
            unk: None,
            add_space_prefix: true,
            remove_extra_whitespaces: false,
            merges: Vec::new(),
            pre: Pre::Gpt2,
            eot: None,
            eom: None,
            add_bos: true,
            add_eos: false,
        }
    }

    /// A byte-level BPE vocab of these pieces (GPT-2 mapped) and merges, with the defaults of
    /// `pre` (llama.cpp's): BOS added for Llama 3 only; no scores, types inferred.
    pub fn byte_pair(pieces: Vec<String>, merges: Vec<String>, pre: Pre) -> Vocab {
        Vocab {
            kind: Kind::BytePair,
            merges,
            pre,
            add_bos: pre == Pre::Llama3,
            add_space_prefix: false,
            ..Vocab::new(pieces)
        }
    }

    /// With the types given as GGUF `tokenizer.ggml.token_type` numbers (one per piece).
    pub fn with_gguf_types(mut self, raw: &[i32]) -> Result<Vocab> {
        let n = self.pieces.len();
        if raw.len() != n {
            return Err(Error::Format(format!(
                "the vocab has {n} pieces but {} token types",
                raw.len()
            )));
        }
        self.types = Vec::with_capacity(n);
        for (i, &t) in raw.iter().enumerate() {
            let Some(t) = TokenType::from_gguf(t) else {
                return Err(Error::Format(format!(
                    "token {i} ({:?}) has an unknown token type {t}",
                    self.pieces[i]
                )));
            };
            self.types.push(t);
        }
        Ok(self)
    }

    /// Check the counts and ids, fill in the scores and types, resolve `unk`.
    fn complete(mut self) -> Result<Vocab> {
        let n = self.pieces.len();
        if n == 0 {
            return Err(Error::Format("the vocab is empty".into()));
        }
        if n > u32::MAX as usize {
            return Err(Error::Format(format!(
                "the vocab is too large ({n} pieces)"
            )));
        }
        if self.scores.is_empty() {
            self.scores = vec![0.0; n];
        } else if self.scores.len() != n {
            return Err(Error::Format(format!(
                "the vocab has {n} pieces but {} scores",
                self.scores.len()
            )));
        }
        for (name, id) in [
            ("bos", self.bos),
            ("eos", self.eos),
            ("unknown", self.unk),
            ("end-of-turn", self.eot),
            ("end-of-message", self.eom),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(Error::Format(format!(
                    "the {name} token id {id} is out of range (vocab size {n})"
                )));
            }
        }
        if self.types.is_empty() {
            self.types = self
                .pieces
                .iter()
                .enumerate()
                .map(|(i, p)| self.inferred_type(i as u32, p))
                .collect();
        } else if self.types.len() != n {
            return Err(Error::Format(format!(
                "the vocab has {n} pieces but {} token types",
                self.types.len()
            )));
        }
        if self.unk.is_none() && self.kind == Kind::SentencePiece {
            self.unk = self
                .types
                .iter()
                .position(|&t| t == TokenType::Unknown)
                .map(|i| i as u32);
        }
        let find = |texts: &[&str]| {
            self.pieces
                .iter()
                .position(|p| texts.contains(&p.as_str()))
                .map(|i| i as u32)
        };
        self.eot = self.eot.or_else(|| find(&special::EOT_TEXTS));
        self.eom = self.eom.or_else(|| find(&special::EOM_TEXTS));
        // llama.cpp makes the end-of-generation tokens it finds by text control tokens.
        for (p, t) in self.pieces.iter().zip(self.types.iter_mut()) {
            if special::EOG_TEXTS.contains(&p.as_str()) {
                *t = TokenType::Control;
            }
        }
        Ok(self)
    }

    /// End-of-generation ids: eos, eot, eom and the tokens named by `special::EOG_TEXTS`,
    /// sorted.
    fn eog_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = [self.eos, self.eot, self.eom]
            .into_iter()
            .flatten()
            .collect();
        ids.extend(
            self.pieces
                .iter()
                .enumerate()
                .filter(|(_, p)| special::EOG_TEXTS.contains(&p.as_str()))
                .map(|(i, _)| i as u32),
        );
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn inferred_type(&self, id: u32, piece: &str) -> TokenType {
        let id = Some(id);
        if self.kind == Kind::BytePair {
            return if id == self.bos || id == self.eos {
                TokenType::Control
            } else {
                TokenType::Normal
            };
        }
        if spm::parse_byte_piece(piece).is_some() {
            TokenType::Byte
        } else if piece == "<unk>" || id == self.unk {
            TokenType::Unknown
        } else if piece == "<s>" || piece == "</s>" || id == self.bos || id == self.eos {
            TokenType::Control
        } else {
            TokenType::Normal
        }
    }
}

/// How a token id decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodeKind {
    /// Invisible (`<s>`, `</s>`).
    Control,
    /// The unknown piece (SentencePiece: `" ⁇ "`).
    Unknown,
    /// One raw byte, joined with neighbouring bytes into UTF-8.
    Byte(u8),
    /// Raw bytes (the surface), joined with neighbouring bytes into UTF-8 (byte-level BPE).
    Raw,
    /// Text (its surface, with spaces as spaces); `leading_space`: the piece starts with a
    /// space, which is dropped when it is the first visible piece.
    Text { leading_space: bool },
}

/// How each id decodes and its surface, as a family builds them.
type DecodeTable = (Vec<DecodeKind>, Vec<Box<[u8]>>);

/// The family-specific part of a tokenizer: its encoder.
#[derive(Clone)]
enum Family {
    SentencePiece(Box<spm::Spm>),
    BytePair(Box<bpe::Bpe>),
}

/// A tokenizer of any family. Immutable after construction; `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    /// Complete: one score and one type per piece.
    vocab: Vocab,
    family: Family,
    /// Per id: how it decodes, and its surface (UTF-8 text for `Text` and `Unknown`, bytes for
    /// `Raw`; empty otherwise).
    decode_kind: Vec<DecodeKind>,
    surfaces: Vec<Box<[u8]>>,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
    /// Special tokens found in any text (byte-level BPE: user-defined ones, as llama.cpp and
    /// Hugging Face do; SentencePiece matches its user-defined pieces itself).
    specials_always: Option<Matcher>,
    /// Special tokens found in text with `parse_special`: also control and unknown ones.
    specials_parsed: Option<Matcher>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.vocab;
        f.debug_struct("Tokenizer")
            .field("kind", &v.kind)
            .field("n_vocab", &v.pieces.len())
            .field("bos", &v.bos)
            .field("eos", &v.eos)
            .field("unk", &v.unk)
            .field("add_space_prefix", &v.add_space_prefix)
            .field("remove_extra_whitespaces", &v.remove_extra_whitespaces)
            .field("pre", &v.pre)
            .field("eog", &self.eog)
            .finish()
    }
}

/// All 256 byte values, so `token_bytes` can hand out a slice for a byte piece.
static ALL_BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

impl Tokenizer {
    /// Build the tokenizer of `vocab`'s family. Errors (`Error::Format`) name what does not
    /// fit: counts that differ, ids out of range, pieces that contradict their type.
    pub fn new(vocab: Vocab) -> Result<Tokenizer> {
        let vocab = vocab.complete()?;
        let (family, decode_kind, surfaces) = match vocab.kind {
            Kind::SentencePiece => {
                let (spm, (kinds, surfaces)) = spm::Spm::new(&vocab)?;
                (Family::SentencePiece(Box::new(spm)), kinds, surfaces)
            }
            Kind::BytePair => {
                let (bpe, (kinds, surfaces)) = bpe::Bpe::new(&vocab, vocab.pre)?;
                (Family::BytePair(Box::new(bpe)), kinds, surfaces)
            }
        };
        let specials = |want: &dyn Fn(TokenType) -> bool| {
            Matcher::new(
                vocab
                    .pieces
                    .iter()
                    .zip(&vocab.types)
                    .enumerate()
                    .filter(|(_, (_, &t))| want(t))
                    .map(|(i, (p, _))| (i as u32, p.as_str())),
            )
        };
        let bpe = vocab.kind == Kind::BytePair;
        let specials_always = specials(&|t| bpe && t == TokenType::UserDefined);
        let specials_parsed = specials(&|t| {
            matches!(t, TokenType::Control | TokenType::Unknown)
                || (bpe && t == TokenType::UserDefined)
        });
        Ok(Tokenizer {
            eog: vocab.eog_ids(),
            vocab,
            family,
            decode_kind,
            surfaces,
            specials_always,
            specials_parsed,
        })
    }

    pub fn kind(&self) -> Kind {
        self.vocab.kind
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.pieces.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.vocab.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.vocab.eos
    }

    pub fn unk(&self) -> Option<u32> {
        self.vocab.unk
    }

    pub fn eot(&self) -> Option<u32> {
        self.vocab.eot
    }

    pub fn eom(&self) -> Option<u32> {
        self.vocab.eom
    }

    /// The end-of-generation ids (eos, eot, eom and llama.cpp's by-text ones), sorted.
    pub fn eog(&self) -> &[u32] {
        &self.eog
    }

    /// Whether generation ends at `id`.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }

    pub fn add_eos(&self) -> bool {
        self.vocab.add_eos
    }

    pub fn pre(&self) -> Option<Pre> {
        (self.vocab.kind == Kind::BytePair).then_some(self.vocab.pre)
    }

    pub fn add_space_prefix(&self) -> bool {
        self.vocab.add_space_prefix
    }

    pub fn remove_extra_whitespaces(&self) -> bool {
        self.vocab.remove_extra_whitespaces
    }

    /// The piece as stored in the vocab (`▁hello`, `<0x0A>`, `<s>`; `Ġhello`, `<|eot_id|>`).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.vocab.pieces.get(id as usize).map(|s| s.as_str())
    }

    pub fn score(&self, id: u32) -> Option<f32> {
        self.vocab.scores.get(id as usize).copied()
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.vocab.types.get(id as usize).copied()
    }

    /// The id of a piece (SentencePiece's `PieceToId` without the unk default: control,
    /// unknown and byte pieces first).
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        match &self.family {
            Family::SentencePiece(m) => m.piece_to_id(piece),
            Family::BytePair(m) => m.piece_to_id(piece),
        }
    }

    /// The bytes a token stands for in the middle of a text: spaces as spaces, a byte piece
    /// as that byte, control pieces as nothing, the unknown piece as its surface (`" ⁇ "`).
    /// Out of range: nothing. The first piece's leading space is *not* dropped here (see
    /// `decode` / `StreamDecoder`).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        match self.decode_kind.get(id as usize) {
            None => &[],
            Some(DecodeKind::Byte(b)) => &ALL_BYTES[*b as usize..*b as usize + 1],
            Some(_) => &self.surfaces[id as usize],
        }
    }

    /// `encode_with(text, add_special, false)`: control text such as `"<s>"` or
    /// `"<|eot_id|>"` is plain text.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        self.encode_with(text, add_special, false)
    }

    /// Token ids of `text` (llama.cpp's `llama_tokenize`). `add_special`: `bos` first and `eos`
    /// last as the vocab says (`add_bos` / `add_eos`). `parse_special`: control tokens
    /// written in the text (`<|begin_of_text|>`, `<s>`, `[INST]`) are those tokens; otherwise
    /// they are ordinary text. (User-defined tokens are always matched: SentencePiece and
    /// Hugging Face do so.)
    pub fn encode_with(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.encode_fragments(text, add_special, parse_special, false)
    }

    /// Token ids of a rendered chat template: control tokens parsed, and (SentencePiece) the
    /// text after one gets the space prefix only if it does not start with a space already.
    /// Templates are written for transformers' tokenizers, which add no second space there:
    /// `"[INST] " + content` is `[INST]` then `▁content`, as mistral-common encodes it, where
    /// llama.cpp's rule would give `▁▁content`; Llama 2's `"<s>[INST]"` still gets `▁[`.
    pub fn encode_template(&self, text: &str, add_special: bool) -> Vec<u32> {
        self.encode_fragments(text, add_special, true, true)
    }

    fn encode_fragments(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        template: bool,
    ) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.vocab.add_bos {
            out.extend(self.vocab.bos);
        }
        let matcher = if parse_special {
            &self.specials_parsed
        } else {
            &self.specials_always
        };
        match matcher {
            None => self.encode_text(text, true, &mut out),
            Some(m) => {
                // SentencePiece: the text after a special token gets the space prefix again
                // (llama.cpp's `is_prev_special`).
                let mut after_special = true;
                let mut fragments = Vec::new();
                m.split(text, |f| fragments.push(f));
                for f in fragments {
                    match f {
                        Fragment::Text(t) => {
                            let prefix = after_special && !(template && t.starts_with(' '));
                            self.encode_text(t, prefix, &mut out);
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                    }
                }
            }
        }
        if add_special && self.vocab.add_eos {
            out.extend(self.vocab.eos);
        }
        out
    }

    /// Ordinary text (no special tokens), appended to `out`.
    fn encode_text(&self, text: &str, space_prefix: bool, out: &mut Vec<u32>) {
        match &self.family {
            Family::SentencePiece(m) => m.encode(&self.vocab, text, space_prefix, out),
            Family::BytePair(m) => m.encode(text, out),
        }
    }

    /// Text of `ids` (SentencePiece: equal to its `DecodeIds`). An id out of range is an
    /// `Error::Invalid` naming it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let n = self.n_vocab();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(Error::Invalid(format!(
                "token id {bad} is out of range (vocab size {n})"
            )));
        }
        let mut st = StreamDecoder::new();
        let mut out = String::new();
        for &id in ids {
            st.push_into(self, id, &mut out);
        }
        st.finish_into(&mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod bpe_tests;
#[cfg(test)]
mod tests;
