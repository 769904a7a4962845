//! Tokenizers, built from the vocab stored in a model file. One interface ([`Tokenizer`]:
//! encode, decode, streaming decode with [`StreamDecoder`], the vocab's pieces and special
//! ids) over the families, chosen by [`Vocab::kind`]:
//!
//! - [`Kind::SentencePiece`] (`spm.rs`): SentencePiece BPE, LLaMA 1/2, Mistral, TinyLlama
//!   (GGUF `tokenizer.ggml.model = "llama"`).
//!
//! Byte-level BPE (`gpt2`, Llama 3) comes next: a variant of [`Kind`], a module beside
//! `spm.rs`, and its arm in [`Tokenizer::new`], [`Tokenizer::encode`] and
//! [`Tokenizer::piece_to_id`].
//!
//! A family turns a checked [`Vocab`] into its encoder and into how each id decodes
//! ([`DecodeKind`] and a text surface per id); decoding and streaming are shared
//! (`stream.rs`).

mod spm;
mod stream;

use crate::error::{Error, Result};
use std::fmt;

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
}

/// A vocab as a model file describes it: everything a tokenizer is built from.
#[derive(Clone, Debug)]
pub struct Vocab {
    pub kind: Kind,
    /// Pieces in the family's escaped form (SentencePiece: `▁` for space, `<0xXX>` for bytes).
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
        for (name, id) in [("bos", self.bos), ("eos", self.eos), ("unknown", self.unk)] {
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
        if self.unk.is_none() {
            self.unk = self
                .types
                .iter()
                .position(|&t| t == TokenType::Unknown)
                .map(|i| i as u32);
        }
        Ok(self)
    }

    fn inferred_type(&self, id: u32, piece: &str) -> TokenType {
        let id = Some(id);
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
    /// Text (its surface, with spaces as spaces); `leading_space`: the piece starts with a
    /// space, which is dropped when it is the first visible piece.
    Text { leading_space: bool },
}

/// The family-specific part of a tokenizer: its encoder.
#[derive(Clone)]
enum Family {
    SentencePiece(spm::Spm),
}

/// A tokenizer of any family. Immutable after construction; `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    /// Complete: one score and one type per piece.
    vocab: Vocab,
    family: Family,
    /// Per id: how it decodes, and its text surface (for `Text` and `Unknown`; empty otherwise).
    decode_kind: Vec<DecodeKind>,
    surfaces: Vec<String>,
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
                let (spm, kinds, surfaces) = spm::Spm::new(&vocab)?;
                (Family::SentencePiece(spm), kinds, surfaces)
            }
        };
        Ok(Tokenizer {
            vocab,
            family,
            decode_kind,
            surfaces,
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

    pub fn add_space_prefix(&self) -> bool {
        self.vocab.add_space_prefix
    }

    pub fn remove_extra_whitespaces(&self) -> bool {
        self.vocab.remove_extra_whitespaces
    }

    /// The piece as stored in the vocab (`▁hello`, `<0x0A>`, `<s>`).
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
            Some(_) => self.surfaces[id as usize].as_bytes(),
        }
    }

    /// Token ids of `text`, with `bos` first when `add_bos` (and the vocab has one). Control
    /// text such as `"<s>"` is plain text.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            out.extend(self.vocab.bos);
        }
        match &self.family {
            Family::SentencePiece(m) => m.encode(&self.vocab, text, &mut out),
        }
        out
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
mod tests;
