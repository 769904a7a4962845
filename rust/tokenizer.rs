//! SentencePiece-compatible tokenizer (SPM, BPE model type) built from the vocab stored in a
//! model file (GGUF `tokenizer.ggml.tokens` / `.scores` / `.token_type`).
//!
//! The reference is the `sentencepiece` library (`bpe_model.cc`, `normalizer.cc`,
//! `sentencepiece_processor.cc`); ids and decoded text must equal it. Encoding:
//!
//! 1. Normalize (identity normalizer only): with `remove_extra_whitespaces`, drop leading and
//!    trailing spaces and collapse runs of `' '`; if anything is left, prepend `▁` (U+2581) when
//!    `add_space_prefix` (sentencepiece's `add_dummy_prefix`); every `' '` becomes `▁`.
//! 2. Split into UTF-8 characters (a USER_DEFINED piece found at a position is taken whole and
//!    never merged further, as sentencepiece's prefix matcher does).
//! 3. Push every adjacent pair whose concatenation is a NORMAL, USER_DEFINED or UNUSED piece on a
//!    max-heap keyed by (score desc, left index asc); pop, skip stale entries, merge, push the two
//!    new neighbour pairs.
//! 4. UNUSED pieces are resegmented into the pair they were last merged from.
//! 5. Each symbol maps to its id (CONTROL/UNKNOWN/BYTE pieces are looked up first, as
//!    sentencepiece's `PieceToId` does, but are never merge targets); a symbol that is no piece
//!    falls back to its UTF-8 bytes `<0xXX>` (or to unk when the vocab has no byte pieces).
//!
//! Decoding follows `SentencePieceProcessor::Decode`: control pieces are invisible, the unknown
//! piece reads `" ⁇ "`, runs of byte pieces are joined and invalid UTF-8 becomes U+FFFD *per
//! byte*, `▁` becomes `' '`, and the first `▁` of the first visible piece is dropped.
//!
//! Not covered: normalizers other than identity (GGUF stores no charsmap), sentencepiece's
//! `unk_surface` option (GGUF does not store it; `" ⁇ "` is used), and user-defined pieces
//! matched by the *normalizer* (only matters with `remove_extra_whitespaces` and a user-defined
//! piece containing a space).
//!
//! Pieces are in sentencepiece's escaped form (`▁` for space, `<0xXX>` for bytes). Pre-GGUF
//! vocabularies (real spaces, raw single bytes) need a second constructor that either rewrites
//! the pieces into this form or sets a flag for the space symbol; the representation is only
//! used by `normalize` (space symbol) and `new` (byte pieces, decode surfaces).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Error, Result};

/// `▁` (U+2581), sentencepiece's escaped space.
const SPACE_SYMBOL: &str = "\u{2581}";
/// sentencepiece's default `unk_surface`: what the unknown piece decodes to.
const UNK_SURFACE: &str = " \u{2047} ";
const NONE: usize = usize::MAX;

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
    pub fn from_i32(v: i32) -> Option<TokenType> {
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

    /// Pieces that BPE may merge into (sentencepiece's `pieces_`); the others (control,
    /// unknown, byte) are only ever produced by lookup of a whole symbol or by byte fallback.
    fn mergeable(self) -> bool {
        matches!(self, TokenType::Normal | TokenType::UserDefined | TokenType::Unused)
    }
}

// ---------------------------------------------------------------------------------------------
// A small fast hasher for the piece tables (FxHash, as in rustc); no extra crate.

#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while bytes.len() >= 8 {
            self.add(u64::from_le_bytes(bytes[..8].try_into().unwrap()));
            bytes = &bytes[8..];
        }
        if bytes.len() >= 4 {
            self.add(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as u64);
            bytes = &bytes[4..];
        }
        for &b in bytes {
            self.add(b as u64);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

// ---------------------------------------------------------------------------------------------

/// How a token id decodes (after sentencepiece's id -> piece -> id round trip).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodeKind {
    /// Invisible (`<s>`, `</s>`).
    Control,
    /// The unknown piece: `" ⁇ "`.
    Unknown,
    /// One raw byte, joined with neighbouring bytes into UTF-8.
    Byte(u8),
    /// Text (`▁` already turned into `' '` in `surfaces`); `leading_space`: the piece starts
    /// with `▁`, which is dropped when it is the first visible piece.
    Text { leading_space: bool },
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

/// Parse sentencepiece's byte piece `<0xXX>` (upper-case hex, as `ByteToPiece` writes it).
fn parse_byte_piece(p: &str) -> Option<u8> {
    let b = p.as_bytes();
    if b.len() != 6 || &b[..3] != b"<0x" || b[5] != b'>' {
        return None;
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    Some(hex(b[3])? * 16 + hex(b[4])?)
}

/// SentencePiece BPE tokenizer. Immutable after construction; `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<TokenType>,
    /// NORMAL / USER_DEFINED / UNUSED pieces (sentencepiece's `pieces_`), first id wins.
    mergeable: FxMap<Box<str>, u32>,
    /// CONTROL / UNKNOWN / BYTE pieces (sentencepiece's `reserved_id_map_`), first id wins.
    reserved: FxMap<Box<str>, u32>,
    /// Id of the byte piece `<0xXX>` for each byte value.
    byte_ids: [Option<u32>; 256],
    /// sentencepiece's `byte_fallback` (not stored in GGUF: true when the vocab has byte pieces).
    byte_fallback: bool,
    has_unused: bool,
    /// USER_DEFINED piece ids by first byte, longest piece first (prefix matcher).
    user_defined: Vec<Vec<u32>>,
    has_user_defined: bool,
    /// Per id: how it decodes, and its text surface (for `Text`, `Unknown`; empty otherwise).
    decode_kind: Vec<DecodeKind>,
    surfaces: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_space_prefix: bool,
    remove_extra_whitespaces: bool,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.pieces.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("unk", &self.unk)
            .field("byte_fallback", &self.byte_fallback)
            .field("add_space_prefix", &self.add_space_prefix)
            .field("remove_extra_whitespaces", &self.remove_extra_whitespaces)
            .finish()
    }
}

/// One symbol of the BPE working list: a byte range of the normalized text.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    /// 0 once merged into its left neighbour.
    len: usize,
    prev: usize,
    next: usize,
    /// A user-defined piece: never merged.
    freeze: bool,
}

/// A candidate merge of symbols `left` and `right` (whose joint length was `size` when pushed).
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    /// Greater = popped first: higher score, then smaller left index (sentencepiece's
    /// `SymbolPairComparator`; NaN scores compare equal, as with C++ `<`).
    fn cmp(&self, other: &Self) -> Ordering {
        match self.score.partial_cmp(&other.score) {
            Some(Ordering::Equal) | None => other.left.cmp(&self.left),
            Some(o) => o,
        }
    }
}

impl Tokenizer {
    /// Build from GGUF-style arrays. `types` (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte; 0 is taken as normal) and `scores` may be empty: then all scores are 0
    /// and types are inferred (`<0xXX>` byte, `<unk>`/`unk` unknown, `<s>`/`</s>`/`bos`/`eos`
    /// control, others normal). `unk` defaults to the first piece of type unknown.
    /// `add_space_prefix` is sentencepiece's `add_dummy_prefix`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        bos: Option<u32>,
        eos: Option<u32>,
        unk: Option<u32>,
        add_space_prefix: bool,
        remove_extra_whitespaces: bool,
    ) -> Result<Tokenizer> {
        let n = tokens.len();
        if n == 0 {
            return Err(Error::Format("the vocab is empty".into()));
        }
        if n > u32::MAX as usize {
            return Err(Error::Format(format!("the vocab is too large ({n} pieces)")));
        }
        let scores = if scores.is_empty() {
            vec![0.0; n]
        } else if scores.len() != n {
            return Err(Error::Format(format!(
                "the vocab has {n} pieces but {} scores",
                scores.len()
            )));
        } else {
            scores
        };
        for (name, id) in [("bos", bos), ("eos", eos), ("unknown", unk)] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(Error::Format(format!(
                        "the {name} token id {id} is out of range (vocab size {n})"
                    )));
                }
            }
        }
        let types: Vec<TokenType> = if types.is_empty() {
            tokens
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let i = Some(i as u32);
                    if parse_byte_piece(p).is_some() {
                        TokenType::Byte
                    } else if p == "<unk>" || i == unk {
                        TokenType::Unknown
                    } else if p == "<s>" || p == "</s>" || i == bos || i == eos {
                        TokenType::Control
                    } else {
                        TokenType::Normal
                    }
                })
                .collect()
        } else if types.len() != n {
            return Err(Error::Format(format!(
                "the vocab has {n} pieces but {} token types",
                types.len()
            )));
        } else {
            let mut v = Vec::with_capacity(n);
            for (i, &t) in types.iter().enumerate() {
                match TokenType::from_i32(t) {
                    Some(t) => v.push(t),
                    None => {
                        return Err(Error::Format(format!(
                            "token {i} ({:?}) has an unknown token type {t}",
                            tokens[i]
                        )))
                    }
                }
            }
            v
        };

        let mut mergeable: FxMap<Box<str>, u32> = FxMap::default();
        let mut reserved: FxMap<Box<str>, u32> = FxMap::default();
        mergeable.reserve(n);
        let mut byte_ids = [None; 256];
        let mut user_defined: Vec<Vec<u32>> = vec![Vec::new(); 256];
        let mut has_user_defined = false;
        let mut has_unused = false;
        for (i, (p, &t)) in tokens.iter().zip(&types).enumerate() {
            let id = i as u32;
            let map = if t.mergeable() { &mut mergeable } else { &mut reserved };
            map.entry(p.as_str().into()).or_insert(id);
            match t {
                TokenType::Byte => match parse_byte_piece(p) {
                    Some(b) => {
                        byte_ids[b as usize].get_or_insert(id);
                    }
                    None => {
                        return Err(Error::Format(format!(
                            "token {i} has type byte but its piece {p:?} is not <0xXX>"
                        )))
                    }
                },
                TokenType::UserDefined if !p.is_empty() => {
                    user_defined[p.as_bytes()[0] as usize].push(id);
                    has_user_defined = true;
                }
                TokenType::Unused => has_unused = true,
                _ => {}
            }
        }
        for list in &mut user_defined {
            list.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].len()));
        }
        let byte_fallback = byte_ids.iter().any(|b| b.is_some());
        let unk = unk.or_else(|| types.iter().position(|&t| t == TokenType::Unknown).map(|i| i as u32));

        // sentencepiece decodes id -> piece -> id (reserved pieces first): the type that counts
        // is that of the first id holding the piece.
        let canonical = |p: &str| -> Option<u32> {
            reserved.get(p).or_else(|| mergeable.get(p)).copied()
        };
        let mut decode_kind = Vec::with_capacity(n);
        let mut surfaces = Vec::with_capacity(n);
        for (i, p) in tokens.iter().enumerate() {
            let c = canonical(p).unwrap_or(i as u32) as usize;
            let (kind, surface) = match types[c] {
                TokenType::Control => (DecodeKind::Control, String::new()),
                TokenType::Unknown => (DecodeKind::Unknown, UNK_SURFACE.to_string()),
                // Validated above.
                TokenType::Byte => (DecodeKind::Byte(parse_byte_piece(p).unwrap()), String::new()),
                _ => (
                    DecodeKind::Text { leading_space: p.starts_with(SPACE_SYMBOL) },
                    p.replace(SPACE_SYMBOL, " "),
                ),
            };
            decode_kind.push(kind);
            surfaces.push(surface);
        }

        Ok(Tokenizer {
            pieces: tokens,
            scores,
            types,
            mergeable,
            reserved,
            byte_ids,
            byte_fallback,
            has_unused,
            user_defined,
            has_user_defined,
            decode_kind,
            surfaces,
            bos,
            eos,
            unk,
            add_space_prefix,
            remove_extra_whitespaces,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    pub fn remove_extra_whitespaces(&self) -> bool {
        self.remove_extra_whitespaces
    }

    /// The piece as stored in the vocab (`▁hello`, `<0x0A>`, `<s>`).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|s| s.as_str())
    }

    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// sentencepiece's `PieceToId` without the unk default: control/unknown/byte pieces first.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.reserved.get(piece).or_else(|| self.mergeable.get(piece)).copied()
    }

    /// The bytes a token stands for in the middle of a text: `▁` -> `' '`, `<0xXX>` -> that
    /// byte, control -> nothing, unknown -> `" ⁇ "` (sentencepiece's default unk surface).
    /// Out of range -> nothing. The first piece's leading space is *not* dropped here (see
    /// `decode` / `StreamDecoder`).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        match self.decode_kind.get(id as usize) {
            None => &[],
            Some(DecodeKind::Byte(b)) => &ALL_BYTES[*b as usize..*b as usize + 1],
            Some(_) => self.surfaces[id as usize].as_bytes(),
        }
    }

    // --- encoding --------------------------------------------------------------------------

    /// Token ids of `text`, with `bos` first when `add_bos` (and the vocab has one). Equal to
    /// sentencepiece's `EncodeAsIds`; control text such as `"<s>"` is plain text.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        let norm = self.normalize(text);
        if !norm.is_empty() {
            self.bpe(&norm, &mut out);
        }
        out
    }

    /// sentencepiece's identity normalizer (`Normalizer::Normalize` with an empty charsmap,
    /// escape_whitespaces on, treat_whitespace_as_suffix off).
    fn normalize(&self, text: &str) -> String {
        let rew = self.remove_extra_whitespaces;
        let input = if rew { text.trim_start_matches(' ') } else { text };
        if input.is_empty() {
            return String::new();
        }
        let mut out = String::with_capacity(input.len() + input.len() / 2 + 3);
        if self.add_space_prefix {
            out.push_str(SPACE_SYMBOL);
        }
        let mut prev_space = rew;
        for c in input.chars() {
            if c == ' ' {
                if !(rew && prev_space) {
                    out.push_str(SPACE_SYMBOL);
                }
                prev_space = true;
            } else {
                out.push(c);
                prev_space = false;
            }
        }
        if rew {
            // sentencepiece strips every trailing `▁`, also one that was in the input.
            while out.ends_with(SPACE_SYMBOL) {
                out.truncate(out.len() - SPACE_SYMBOL.len());
            }
        }
        out
    }

    /// Length of the symbol starting at `rest`: the longest user-defined piece there (frozen),
    /// else one character.
    #[inline]
    fn prefix_match(&self, rest: &str) -> (usize, bool) {
        if self.has_user_defined {
            for &id in &self.user_defined[rest.as_bytes()[0] as usize] {
                let p = &self.pieces[id as usize];
                if rest.starts_with(p.as_str()) {
                    return (p.len(), true);
                }
            }
        }
        let b = rest.as_bytes()[0];
        let len = match b {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        (len.min(rest.len()), false)
    }

    /// sentencepiece `bpe::Model::Encode` followed by the id / byte-fallback step of
    /// `PopulateSentencePieceText`.
    fn bpe(&self, norm: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Symbol> = Vec::with_capacity(norm.len());
        let mut pos = 0;
        while pos < norm.len() {
            let (len, freeze) = self.prefix_match(&norm[pos..]);
            let idx = syms.len();
            syms.push(Symbol {
                start: pos,
                len,
                prev: if idx == 0 { NONE } else { idx - 1 },
                next: if pos + len == norm.len() { NONE } else { idx + 1 },
                freeze,
            });
            pos += len;
        }

        let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(syms.len());
        // UNUSED piece id -> length of the left part it was (last) pushed from.
        let mut rev_merge: FxMap<u32, usize> = FxMap::default();
        for i in 1..syms.len() {
            self.maybe_add(norm, &syms, i - 1, i, &mut heap, &mut rev_merge);
        }

        while let Some(top) = heap.pop() {
            let (l, r) = (top.left, top.right);
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != top.size {
                continue; // stale
            }
            syms[l].len += syms[r].len;
            syms[l].next = syms[r].next;
            if syms[r].next != NONE {
                let nx = syms[r].next;
                syms[nx].prev = l;
            }
            syms[r].len = 0;
            let p = syms[l].prev;
            if p != NONE {
                self.maybe_add(norm, &syms, p, l, &mut heap, &mut rev_merge);
            }
            let nx = syms[l].next;
            if nx != NONE {
                self.maybe_add(norm, &syms, l, nx, &mut heap, &mut rev_merge);
            }
        }

        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            self.resegment(norm, syms[i].start, syms[i].len, &rev_merge, out);
            i = syms[i].next;
        }
    }

    #[inline]
    fn maybe_add(
        &self,
        norm: &str,
        syms: &[Symbol],
        l: usize,
        r: usize,
        heap: &mut BinaryHeap<Candidate>,
        rev_merge: &mut FxMap<u32, usize>,
    ) {
        if syms[l].freeze || syms[r].freeze {
            return;
        }
        let start = syms[l].start;
        let size = syms[l].len + syms[r].len;
        if let Some(&id) = self.mergeable.get(&norm[start..start + size]) {
            heap.push(Candidate { score: self.scores[id as usize], left: l, right: r, size });
            if self.has_unused && self.types[id as usize] == TokenType::Unused {
                rev_merge.insert(id, syms[l].len);
            }
        }
    }

    /// Emit the ids of one final symbol, splitting UNUSED pieces back into their parts.
    fn resegment(
        &self,
        norm: &str,
        start: usize,
        len: usize,
        rev_merge: &FxMap<u32, usize>,
        out: &mut Vec<u32>,
    ) {
        let w = &norm[start..start + len];
        let id = self.piece_to_id(w);
        if let Some(id) = id {
            if self.types[id as usize] == TokenType::Unused {
                if let Some(&left) = rev_merge.get(&id) {
                    self.resegment(norm, start, left, rev_merge, out);
                    self.resegment(norm, start + left, len - left, rev_merge, out);
                    return;
                }
            }
        }
        match id {
            Some(id) if self.types[id as usize] != TokenType::Unknown => out.push(id),
            _ => {
                if self.byte_fallback {
                    for b in w.bytes() {
                        if let Some(bid) = self.byte_ids[b as usize].or(self.unk) {
                            out.push(bid);
                        }
                    }
                } else if let Some(u) = id.or(self.unk) {
                    out.push(u);
                }
                // No unk and no byte pieces: the symbol is dropped (sentencepiece refuses to
                // load such a model).
            }
        }
    }

    // --- decoding --------------------------------------------------------------------------

    /// Text of `ids`, equal to sentencepiece's `DecodeIds`. An id out of range is an
    /// `Error::Invalid` naming it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.pieces.len()) {
            return Err(Error::Invalid(format!(
                "token id {bad} is out of range (vocab size {})",
                self.pieces.len()
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

// ---------------------------------------------------------------------------------------------
// UTF-8 helpers with sentencepiece's rules (`IsValidDecodeUTF8`: a bad byte becomes one U+FFFD).

enum Utf8Prefix {
    /// A whole valid character of this many bytes.
    Complete(usize),
    /// A valid start of a character that needs more bytes.
    Incomplete,
    /// The first byte cannot start a valid character here.
    Invalid,
}

fn utf8_prefix(b: &[u8]) -> Utf8Prefix {
    let b0 = b[0];
    let need = match b0 {
        0x00..=0x7F => return Utf8Prefix::Complete(1),
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return Utf8Prefix::Invalid,
    };
    for (k, &c) in b.iter().enumerate().take(need).skip(1) {
        let ok = if k == 1 {
            match b0 {
                0xE0 => (0xA0..=0xBF).contains(&c),
                0xED => (0x80..=0x9F).contains(&c),
                0xF0 => (0x90..=0xBF).contains(&c),
                0xF4 => (0x80..=0x8F).contains(&c),
                _ => (0x80..=0xBF).contains(&c),
            }
        } else {
            (0x80..=0xBF).contains(&c)
        };
        if !ok {
            return Utf8Prefix::Invalid;
        }
    }
    if b.len() >= need {
        Utf8Prefix::Complete(need)
    } else {
        Utf8Prefix::Incomplete
    }
}

/// Streaming detokenizer for generation. It holds no reference to the tokenizer (pass it to
/// each call), so it can live next to the model in a session. Each `push` returns text that is
/// safe to print: never half a UTF-8 character (an incomplete trailing byte sequence is held
/// back until it completes or turns invalid), the first visible piece's leading space dropped
/// as `decode` does. Concatenating every `push` and `finish` equals `decode` of all the ids.
/// Ids out of range are ignored (empty output). After `finish` the decoder may be reused: it
/// continues the same text (the first-piece rule does not apply again).
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    /// Bytes of an incomplete character from byte pieces.
    pending: Vec<u8>,
    /// sentencepiece's `is_bos_ws`: the next piece may lose its leading `▁`.
    is_bos_ws: bool,
    /// sentencepiece's `bos_ws_seen`: the previous piece lost its leading `▁`.
    bos_ws_seen: bool,
    /// Anything was output so far (sentencepiece's `!text->empty()`).
    any_text: bool,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder { pending: Vec::new(), is_bos_ws: true, bos_ws_seen: false, any_text: false }
    }

    /// A decoder for text that continues earlier text (generation after a prompt): the first
    /// piece keeps its leading space, as it would in the middle of `decode`.
    pub fn continuing() -> Self {
        StreamDecoder { pending: Vec::new(), is_bos_ws: false, bos_ws_seen: false, any_text: true }
    }

    /// Text made printable by token `id` (often empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        let mut out = String::new();
        self.push_into(tok, id, &mut out);
        out
    }

    /// The held-back tail: an incomplete UTF-8 sequence, one U+FFFD per byte.
    pub fn finish(&mut self, _tok: &Tokenizer) -> String {
        let mut out = String::new();
        self.finish_into(&mut out);
        out
    }

    /// Like `push`, appending to `out`.
    pub fn push_into(&mut self, tok: &Tokenizer, id: u32, out: &mut String) {
        let Some(&kind) = tok.decode_kind.get(id as usize) else { return };
        match kind {
            DecodeKind::Byte(b) => {
                self.pending.push(b);
                self.drain(out, false);
            }
            _ => {
                self.drain(out, true);
                if self.bos_ws_seen || self.any_text {
                    self.is_bos_ws = false;
                }
                let surface = tok.surfaces[id as usize].as_str();
                let (text, seen) = match kind {
                    DecodeKind::Text { leading_space: true }
                        if self.is_bos_ws && (tok.add_space_prefix || tok.remove_extra_whitespaces) =>
                    {
                        // `▁` became one ' ' at the start of the surface.
                        (&surface[1..], !tok.remove_extra_whitespaces)
                    }
                    _ => (surface, false),
                };
                self.bos_ws_seen = seen;
                if !text.is_empty() {
                    out.push_str(text);
                    self.any_text = true;
                }
            }
        }
    }

    pub fn finish_into(&mut self, out: &mut String) {
        self.drain(out, true);
    }

    /// Output the complete characters of `pending`; with `flush` also the incomplete tail
    /// (as U+FFFD per byte, as sentencepiece does at the end of a byte run).
    fn drain(&mut self, out: &mut String, flush: bool) {
        let mut i = 0;
        while i < self.pending.len() {
            match utf8_prefix(&self.pending[i..]) {
                Utf8Prefix::Complete(n) => {
                    out.push_str(std::str::from_utf8(&self.pending[i..i + n]).unwrap());
                    i += n;
                }
                Utf8Prefix::Invalid => {
                    out.push('\u{FFFD}');
                    i += 1;
                }
                Utf8Prefix::Incomplete => {
                    if !flush {
                        break;
                    }
                    out.push('\u{FFFD}');
                    i += 1;
                }
            }
        }
        if i > 0 {
            self.any_text = true;
            self.pending.drain(..i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NORMAL: i32 = 1;
    const UNUSED: i32 = 5;
    const USER: i32 = 4;

    /// <unk>, <s>, </s>, optionally the 256 byte pieces, then `extra` (piece, score, type).
    fn build(extra: &[(&str, f32, i32)], bytes: bool, rew: bool) -> Tokenizer {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut scores = vec![0.0, 0.0, 0.0];
        let mut types = vec![2, 3, 3];
        if bytes {
            for b in 0..256 {
                tokens.push(format!("<0x{b:02X}>"));
                scores.push(0.0);
                types.push(6);
            }
        }
        for &(p, s, t) in extra {
            tokens.push(p.to_string());
            scores.push(s);
            types.push(t);
        }
        Tokenizer::new(tokens, scores, types, Some(1), Some(2), Some(0), true, rew).unwrap()
    }

    fn pieces(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&i| t.piece(i).unwrap().to_string()).collect()
    }

    fn basic() -> Tokenizer {
        build(
            &[
                ("▁", -1.0, NORMAL),
                ("a", -2.0, NORMAL),
                ("b", -3.0, NORMAL),
                ("c", -4.0, NORMAL),
                ("ab", -5.0, NORMAL),
                ("bc", -4.5, NORMAL),
                ("aa", -6.0, NORMAL),
                ("▁a", -7.0, NORMAL),
                ("é", -8.0, NORMAL),
                ("<", -9.0, NORMAL),
                ("s", -9.0, NORMAL),
                (">", -9.0, NORMAL),
                ("<s", -1.0, NORMAL),
                ("▁▁", -2.5, NORMAL),
            ],
            true,
            false,
        )
    }

    #[test]
    fn merges_highest_score_first() {
        let t = basic();
        // "▁abc": candidates ▁a(-7), ab(-5), bc(-4.5): bc wins, then ▁a.
        assert_eq!(pieces(&t, &t.encode("abc", false)), ["▁a", "bc"]);
        assert_eq!(pieces(&t, &t.encode("ab", false)), ["▁", "ab"]);
    }

    #[test]
    fn ties_go_to_the_leftmost_pair() {
        let t = build(&[("▁", -1.0, NORMAL), ("a", -1.0, NORMAL), ("aa", -2.0, NORMAL)], true, false);
        assert_eq!(pieces(&t, &t.encode("aaa", false)), ["▁", "aa", "a"]);
        assert_eq!(pieces(&t, &t.encode("aaaaa", false)), ["▁", "aa", "aa", "a"]);
    }

    #[test]
    fn byte_fallback_and_multibyte() {
        let t = basic();
        assert_eq!(pieces(&t, &t.encode("é", false)), ["▁", "é"]);
        // 'ü' (C3 BC) is not a piece.
        assert_eq!(pieces(&t, &t.encode("ü", false)), ["▁", "<0xC3>", "<0xBC>"]);
        // An emoji: four bytes.
        assert_eq!(pieces(&t, &t.encode("🦙", false)), ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]);
        assert_eq!(t.decode(&t.encode("aü🦙é", false)).unwrap(), "aü🦙é");
    }

    #[test]
    fn no_byte_pieces_gives_unk() {
        let t = build(&[("▁", -1.0, NORMAL), ("a", -1.0, NORMAL)], false, false);
        assert_eq!(t.encode("aüa", false), vec![3, 4, 0, 4]);
        assert_eq!(t.decode(&[3, 4, 0, 4]).unwrap(), "a ⁇ a");
    }

    #[test]
    fn empty_and_spaces() {
        let t = basic();
        assert_eq!(t.encode("", false), Vec::<u32>::new());
        assert_eq!(t.encode("", true), vec![1]);
        // " " -> "▁▁"
        assert_eq!(pieces(&t, &t.encode(" ", false)), ["▁▁"]);
        assert_eq!(pieces(&t, &t.encode("  ", false)), ["▁▁", "▁"]);
        assert_eq!(t.decode(&t.encode("  ", false)).unwrap(), "  ");
        let r = build(&[("▁", -1.0, NORMAL), ("a", -1.0, NORMAL), ("b", -1.0, NORMAL)], true, true);
        assert_eq!(r.encode("   ", false), Vec::<u32>::new());
        assert_eq!(r.encode("", true), vec![1]);
    }

    #[test]
    fn remove_extra_whitespaces() {
        let r = build(&[("▁", -1.0, NORMAL), ("a", -1.0, NORMAL), ("b", -1.0, NORMAL)], true, true);
        assert_eq!(pieces(&r, &r.encode("  a    b  ", false)), ["▁", "a", "▁", "b"]);
        // Tabs are not spaces for the identity normalizer.
        assert_eq!(pieces(&r, &r.encode("\ta", false)), ["▁", "<0x09>", "a"]);
        // A literal ▁ at the end is stripped like a space.
        assert_eq!(pieces(&r, &r.encode("a ▁", false)), ["▁", "a"]);
        assert_eq!(r.decode(&r.encode("  a    b  ", false)).unwrap(), "a b");
    }

    #[test]
    fn control_text_is_plain_text() {
        let t = basic();
        let ids = t.encode("<s>", false);
        assert!(!ids.contains(&1));
        assert_eq!(pieces(&t, &ids), ["▁", "<s", ">"]);
        assert_eq!(t.decode(&ids).unwrap(), "<s>");
    }

    #[test]
    fn unused_pieces_are_resegmented() {
        let t = build(
            &[
                ("▁", -1.0, NORMAL),
                ("a", -1.0, NORMAL),
                ("b", -1.0, NORMAL),
                ("c", -1.0, NORMAL),
                ("ab", -2.0, UNUSED),
                ("abc", -3.0, NORMAL),
            ],
            true,
            false,
        );
        assert_eq!(pieces(&t, &t.encode("ab", false)), ["▁", "a", "b"]);
        assert_eq!(pieces(&t, &t.encode("abc", false)), ["▁", "abc"]);
    }

    #[test]
    fn user_defined_pieces_are_atomic() {
        let t = build(
            &[
                ("▁", -1.0, NORMAL),
                ("x", -1.0, NORMAL),
                ("y", -1.0, NORMAL),
                ("▁x", -0.5, NORMAL),
                ("xy", -9.0, USER),
            ],
            true,
            false,
        );
        // "▁xy": the matcher takes "xy" whole, so "▁x" cannot form.
        assert_eq!(pieces(&t, &t.encode("xy", false)), ["▁", "xy"]);
        assert_eq!(pieces(&t, &t.encode("x", false)), ["▁x"]);
    }

    #[test]
    fn types_inferred_when_missing() {
        let tokens: Vec<String> =
            ["<unk>", "<s>", "</s>", "<0x41>", "▁", "b"].iter().map(|s| s.to_string()).collect();
        let t = Tokenizer::new(tokens, vec![], vec![], Some(1), Some(2), None, true, false).unwrap();
        assert_eq!(t.unk(), Some(0));
        assert_eq!(t.token_type(3), Some(TokenType::Byte));
        assert_eq!(t.token_type(1), Some(TokenType::Control));
        assert_eq!(t.encode("bA", true), vec![1, 4, 5, 3]);
        assert_eq!(t.decode(&[1, 4, 5, 3, 2]).unwrap(), "bA");
    }

    #[test]
    fn constructor_errors() {
        let v = |n: usize| (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>();
        let f = |r: Result<Tokenizer>| matches!(r, Err(Error::Format(_)));
        assert!(f(Tokenizer::new(vec![], vec![], vec![], None, None, None, true, false)));
        assert!(f(Tokenizer::new(v(3), vec![0.0; 2], vec![], None, None, None, true, false)));
        assert!(f(Tokenizer::new(v(3), vec![], vec![1; 4], None, None, None, true, false)));
        assert!(f(Tokenizer::new(v(3), vec![], vec![], Some(3), None, None, true, false)));
        assert!(f(Tokenizer::new(v(3), vec![], vec![], None, Some(9), None, true, false)));
        assert!(f(Tokenizer::new(v(3), vec![], vec![], None, None, Some(3), true, false)));
        assert!(f(Tokenizer::new(v(3), vec![], vec![1, 9, 1], None, None, None, true, false)));
        assert!(f(Tokenizer::new(v(3), vec![], vec![1, 6, 1], None, None, None, true, false)));
        assert!(Tokenizer::new(v(3), vec![], vec![], None, None, None, true, false).is_ok());
    }

    #[test]
    fn decode_rules() {
        let t = basic();
        let id = |p: &str| t.piece_to_id(p).unwrap();
        let (sp, a, sa, b) = (id("▁"), id("a"), id("▁a"), id("b"));
        // Leading space of the first visible piece is dropped; control pieces are invisible.
        assert_eq!(t.decode(&[1, sa, b, sa, 2]).unwrap(), "ab a");
        assert_eq!(t.decode(&[sa]).unwrap(), "a");
        // A lone "▁" first: its space is the one dropped; the next one stays.
        assert_eq!(t.decode(&[sp, sa]).unwrap(), " a");
        // Text before (from bytes) keeps the space.
        assert_eq!(t.decode(&[id("<0x41>"), sa]).unwrap(), "A a");
        assert_eq!(t.decode(&[a, sa]).unwrap(), "a a");
        // The unknown piece.
        assert_eq!(t.decode(&[0]).unwrap(), " ⁇ ");
        assert_eq!(t.decode(&[0, sa]).unwrap(), " ⁇  a");
        assert_eq!(t.decode(&[]).unwrap(), "");
        // Out of range.
        assert!(matches!(t.decode(&[a, 100000]), Err(Error::Invalid(m)) if m.contains("100000")));
        assert_eq!(t.token_bytes(sa), b" a");
        assert_eq!(t.token_bytes(id("<0x0A>")), b"\n");
        assert_eq!(t.token_bytes(1), b"");
        assert_eq!(t.token_bytes(0), " ⁇ ".as_bytes());
    }

    #[test]
    fn decode_invalid_utf8_per_byte() {
        let t = basic();
        let by = |b: u8| t.piece_to_id(&format!("<0x{b:02X}>")).unwrap();
        // A truncated emoji (3 of 4 bytes) then text: one U+FFFD per byte.
        let ids = [by(0xF0), by(0x9F), by(0xA6), t.piece_to_id("a").unwrap()];
        assert_eq!(t.decode(&ids).unwrap(), "\u{FFFD}\u{FFFD}\u{FFFD}a");
        // Overlong / surrogate / stray continuation bytes.
        assert_eq!(t.decode(&[by(0xC0), by(0x80)]).unwrap(), "\u{FFFD}\u{FFFD}");
        assert_eq!(t.decode(&[by(0xED), by(0xA0), by(0x80)]).unwrap(), "\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(t.decode(&[by(0xE2), by(0x82), by(0x41)]).unwrap(), "\u{FFFD}\u{FFFD}A");
        assert_eq!(t.decode(&[by(0xE2), by(0x82), by(0xAC)]).unwrap(), "€");
    }

    #[test]
    fn stream_decoder_holds_split_characters() {
        let t = basic();
        let by = |b: u8| t.piece_to_id(&format!("<0x{b:02X}>")).unwrap();
        let sa = t.piece_to_id("▁a").unwrap();
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(&t, 1), "");
        assert_eq!(d.push(&t, sa), "a");
        assert_eq!(d.push(&t, by(0xF0)), "");
        assert_eq!(d.push(&t, by(0x9F)), "");
        assert_eq!(d.push(&t, by(0xA6)), "");
        assert_eq!(d.push(&t, by(0x99)), "🦙");
        assert_eq!(d.push(&t, sa), " a");
        assert_eq!(d.push(&t, by(0xE2)), "");
        assert_eq!(d.finish(&t), "\u{FFFD}");
        // Impossible continuations are released at once.
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(&t, by(0xE0)), "");
        assert_eq!(d.push(&t, by(0x80)), "\u{FFFD}\u{FFFD}");
        assert_eq!(d.push(&t, by(0x80)), "\u{FFFD}");
        assert_eq!(d.finish(&t), "");
    }

    #[test]
    fn stream_equals_decode_on_random_ids() {
        for t in [basic(), build(&[("▁", -1.0, NORMAL), ("▁▁", -1.0, NORMAL), ("x", 0.0, NORMAL)], true, true)] {
            let n = t.n_vocab() as u64;
            let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut rnd = || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            };
            for _ in 0..2000 {
                let len = (rnd() % 12) as usize;
                let ids: Vec<u32> = (0..len)
                    .map(|_| {
                        let r = rnd();
                        // Favour the text pieces and a few interesting bytes.
                        match r % 4 {
                            0 => (r / 4 % n) as u32,
                            1 => 3 + [0xE2u32, 0x82, 0xAC, 0xF0, 0x9F, 0xA6, 0x41, 0xC3][(r / 4 % 8) as usize],
                            _ => (259 + r / 4 % (n - 259)) as u32,
                        }
                    })
                    .collect();
                let whole = t.decode(&ids).unwrap();
                let mut d = StreamDecoder::new();
                let mut streamed = String::new();
                for &id in &ids {
                    streamed.push_str(&d.push(&t, id));
                }
                streamed.push_str(&d.finish(&t));
                assert_eq!(streamed, whole, "{ids:?}");
            }
        }
    }

    #[test]
    fn round_trip_and_long_text() {
        let t = basic();
        let text = "ab abc  aaa é ü\n\t🦙 <s></s>".repeat(4000); // ~120 KB
        let ids = t.encode(&text, true);
        assert_eq!(ids[0], 1);
        assert_eq!(t.decode(&ids).unwrap(), text);
        // A long run with no merge boundary.
        let text = "a".repeat(100_000);
        let ids = t.encode(&text, false);
        assert_eq!(ids.len(), 50_001);
        assert_eq!(t.decode(&ids).unwrap(), text);
    }
}
