//! SentencePiece BPE (`bpe_model.cc`, `normalizer.cc`, `sentencepiece_processor.cc`); ids and
//! decoded text must equal the `sentencepiece` library's. Encoding:
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
//! Decoding follows `SentencePieceProcessor::Decode` (see `stream.rs`): control pieces are
//! invisible, the unknown piece reads `" ⁇ "`, runs of byte pieces are joined and invalid UTF-8
//! becomes U+FFFD *per byte*, `▁` becomes `' '`, and the first `▁` of the first visible piece
//! is dropped.
//!
//! Not covered: normalizers other than identity (GGUF stores no charsmap), sentencepiece's
//! `unk_surface` option (GGUF does not store it; `" ⁇ "` is used), and user-defined pieces
//! matched by the *normalizer* (only matters with `remove_extra_whitespaces` and a user-defined
//! piece containing a space).
//!
//! Pieces are in sentencepiece's escaped form (`▁` for space, `<0xXX>` for bytes); pre-GGUF
//! vocabularies are rewritten into it when they are loaded (`load.rs`).

use super::{DecodeKind, DecodeTable, TokenType, Vocab};
use crate::error::{Error, Result};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// `▁` (U+2581), sentencepiece's escaped space.
pub(super) const SPACE_SYMBOL: &str = "\u{2581}";
/// sentencepiece's default `unk_surface`: what the unknown piece decodes to.
const UNK_SURFACE: &str = " \u{2047} ";
const NONE: usize = usize::MAX;

/// The piece tables' map: FxHash (short string keys; the table is filled from the model
/// file, text only looks keys up, so hash flooding is not a concern).
type Map<K, V> = rustc_hash::FxHashMap<K, V>;

/// Parse sentencepiece's byte piece `<0xXX>` (upper-case hex, as `ByteToPiece` writes it).
pub(super) fn parse_byte_piece(p: &str) -> Option<u8> {
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

/// Pieces that BPE may merge into (sentencepiece's `pieces_`); the others (control, unknown,
/// byte) are only ever produced by lookup of a whole symbol or by byte fallback.
fn mergeable(t: TokenType) -> bool {
    matches!(
        t,
        TokenType::Normal | TokenType::UserDefined | TokenType::Unused
    )
}

/// The SentencePiece encoder's tables.
#[derive(Clone)]
pub(super) struct Spm {
    /// NORMAL / USER_DEFINED / UNUSED pieces (sentencepiece's `pieces_`), first id wins.
    mergeable: Map<Box<str>, u32>,
    /// CONTROL / UNKNOWN / BYTE pieces (sentencepiece's `reserved_id_map_`), first id wins.
    reserved: Map<Box<str>, u32>,
    /// Id of the byte piece `<0xXX>` for each byte value.
    byte_ids: [Option<u32>; 256],
    /// sentencepiece's `byte_fallback` (not stored in GGUF: true when the vocab has byte pieces).
    byte_fallback: bool,
    has_unused: bool,
    /// USER_DEFINED piece ids by first byte, longest piece first (prefix matcher).
    user_defined: Vec<Vec<u32>>,
    has_user_defined: bool,
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

impl Spm {
    /// The encoder's tables, and how each id decodes (its kind and surface), from a complete
    /// vocab.
    pub(super) fn new(v: &Vocab) -> Result<(Spm, DecodeTable)> {
        let n = v.pieces.len();
        let mut m = Spm {
            mergeable: Map::default(),
            reserved: Map::default(),
            byte_ids: [None; 256],
            byte_fallback: false,
            has_unused: false,
            user_defined: vec![Vec::new(); 256],
            has_user_defined: false,
        };
        m.mergeable.reserve(n);
        for (i, (p, &t)) in v.pieces.iter().zip(&v.types).enumerate() {
            let id = i as u32;
            let map = if mergeable(t) {
                &mut m.mergeable
            } else {
                &mut m.reserved
            };
            map.entry(p.as_str().into()).or_insert(id);
            match t {
                TokenType::Byte => match parse_byte_piece(p) {
                    Some(b) => {
                        m.byte_ids[b as usize].get_or_insert(id);
                    }
                    None => {
                        return Err(Error::Format(format!(
                            "token {i} has type byte but its piece {p:?} is not <0xXX>"
                        )))
                    }
                },
                TokenType::UserDefined if !p.is_empty() => {
                    m.user_defined[p.as_bytes()[0] as usize].push(id);
                    m.has_user_defined = true;
                }
                TokenType::Unused => m.has_unused = true,
                _ => {}
            }
        }
        for list in &mut m.user_defined {
            list.sort_by_key(|&id| std::cmp::Reverse(v.pieces[id as usize].len()));
        }
        m.byte_fallback = m.byte_ids.iter().any(|b| b.is_some());
        let table = m.decode_table(v);
        Ok((m, table))
    }

    /// How each id decodes. sentencepiece decodes id -> piece -> id (reserved pieces first):
    /// the type that counts is that of the first id holding the piece.
    fn decode_table(&self, v: &Vocab) -> DecodeTable {
        let n = v.pieces.len();
        let mut kinds = Vec::with_capacity(n);
        let mut surfaces = Vec::with_capacity(n);
        for (i, p) in v.pieces.iter().enumerate() {
            let canonical = self.piece_to_id(p).unwrap_or(i as u32) as usize;
            let (kind, surface) = match v.types[canonical] {
                TokenType::Control => (DecodeKind::Control, String::new()),
                TokenType::Unknown => (DecodeKind::Unknown, UNK_SURFACE.to_string()),
                // Checked in `new`.
                TokenType::Byte => (
                    DecodeKind::Byte(parse_byte_piece(p).unwrap()),
                    String::new(),
                ),
                _ => (
                    DecodeKind::Text {
                        leading_space: p.starts_with(SPACE_SYMBOL),
                    },
                    p.replace(SPACE_SYMBOL, " "),
                ),
            };
            kinds.push(kind);
            surfaces.push(surface.into_bytes().into_boxed_slice());
        }
        (kinds, surfaces)
    }

    /// sentencepiece's `PieceToId` without the unk default: control/unknown/byte pieces first.
    pub(super) fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.reserved
            .get(piece)
            .or_else(|| self.mergeable.get(piece))
            .copied()
    }

    /// sentencepiece's `EncodeAsIds`, appended to `out`; `space_prefix`: the vocab's
    /// `add_space_prefix` applies (false for text right after a special token).
    pub(super) fn encode(&self, v: &Vocab, text: &str, space_prefix: bool, out: &mut Vec<u32>) {
        let norm = normalize(v, text, space_prefix && v.add_space_prefix);
        if !norm.is_empty() {
            self.bpe(v, &norm, out);
        }
    }

    /// Length of the symbol starting at `rest`: the longest user-defined piece there (frozen),
    /// else one character.
    #[inline]
    fn prefix_match(&self, v: &Vocab, rest: &str) -> (usize, bool) {
        if self.has_user_defined {
            for &id in &self.user_defined[rest.as_bytes()[0] as usize] {
                let p = &v.pieces[id as usize];
                if rest.starts_with(p.as_str()) {
                    return (p.len(), true);
                }
            }
        }
        let len = match rest.as_bytes()[0] {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        (len.min(rest.len()), false)
    }

    /// sentencepiece `bpe::Model::Encode` followed by the id / byte-fallback step of
    /// `PopulateSentencePieceText`.
    fn bpe(&self, v: &Vocab, norm: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Symbol> = Vec::with_capacity(norm.len());
        let mut pos = 0;
        while pos < norm.len() {
            let (len, freeze) = self.prefix_match(v, &norm[pos..]);
            let idx = syms.len();
            let prev = if idx == 0 { NONE } else { idx - 1 };
            let next = if pos + len == norm.len() {
                NONE
            } else {
                idx + 1
            };
            syms.push(Symbol {
                start: pos,
                len,
                prev,
                next,
                freeze,
            });
            pos += len;
        }

        let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(syms.len());
        // UNUSED piece id -> length of the left part it was (last) pushed from.
        let mut rev_merge: Map<u32, usize> = Map::default();
        for i in 1..syms.len() {
            self.maybe_add(v, norm, &syms, i - 1, i, &mut heap, &mut rev_merge);
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
                self.maybe_add(v, norm, &syms, p, l, &mut heap, &mut rev_merge);
            }
            let nx = syms[l].next;
            if nx != NONE {
                self.maybe_add(v, norm, &syms, l, nx, &mut heap, &mut rev_merge);
            }
        }

        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            self.resegment(v, norm, syms[i].start, syms[i].len, &rev_merge, out);
            i = syms[i].next;
        }
    }

    /// Push the merge of symbols `l` and `r` when their concatenation is a mergeable piece.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn maybe_add(
        &self,
        v: &Vocab,
        norm: &str,
        syms: &[Symbol],
        l: usize,
        r: usize,
        heap: &mut BinaryHeap<Candidate>,
        rev_merge: &mut Map<u32, usize>,
    ) {
        if syms[l].freeze || syms[r].freeze {
            return;
        }
        let start = syms[l].start;
        let size = syms[l].len + syms[r].len;
        if let Some(&id) = self.mergeable.get(&norm[start..start + size]) {
            heap.push(Candidate {
                score: v.scores[id as usize],
                left: l,
                right: r,
                size,
            });
            if self.has_unused && v.types[id as usize] == TokenType::Unused {
                rev_merge.insert(id, syms[l].len);
            }
        }
    }

    /// Emit the ids of one final symbol, splitting UNUSED pieces back into their parts.
    fn resegment(
        &self,
        v: &Vocab,
        norm: &str,
        start: usize,
        len: usize,
        rev_merge: &Map<u32, usize>,
        out: &mut Vec<u32>,
    ) {
        let w = &norm[start..start + len];
        let id = self.piece_to_id(w);
        if let Some(id) = id {
            if v.types[id as usize] == TokenType::Unused {
                if let Some(&left) = rev_merge.get(&id) {
                    self.resegment(v, norm, start, left, rev_merge, out);
                    self.resegment(v, norm, start + left, len - left, rev_merge, out);
                    return;
                }
            }
        }
        match id {
            Some(id) if v.types[id as usize] != TokenType::Unknown => out.push(id),
            _ => {
                if self.byte_fallback {
                    for b in w.bytes() {
                        if let Some(bid) = self.byte_ids[b as usize].or(v.unk) {
                            out.push(bid);
                        }
                    }
                } else if let Some(u) = id.or(v.unk) {
                    out.push(u);
                }
                // No unk and no byte pieces: the symbol is dropped (sentencepiece refuses to
                // load such a model).
            }
        }
    }
}

/// sentencepiece's identity normalizer (`Normalizer::Normalize` with an empty charsmap,
/// escape_whitespaces on, treat_whitespace_as_suffix off).
fn normalize(v: &Vocab, text: &str, add_space_prefix: bool) -> String {
    let rew = v.remove_extra_whitespaces;
    let input = if rew {
        text.trim_start_matches(' ')
    } else {
        text
    };
    if input.is_empty() {
        return String::new();
    }
    let mut out = String::with_capacity(input.len() + input.len() / 2 + 3);
    if add_space_prefix {
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
