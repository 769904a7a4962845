//! Byte-level BPE (GPT-2, Llama 3; GGUF `tokenizer.ggml.model = "gpt2"`), as llama.cpp's
//! `llm_tokenizer_bpe` and Hugging Face's byte-level BPE:
//!
//! 1. The pre-tokenizer (`pretokenize.rs`) splits the text into words.
//! 2. With `ignore_merges` (Llama 3), a word that is a token as a whole is that token.
//! 3. Otherwise the word's bytes start as single-byte tokens, and the adjacent pair with the
//!    lowest merge rank (its line in `tokenizer.ggml.merges`, `"left right"` in the mapped
//!    form) is merged, leftmost first among equal ranks, until no pair has a rank.
//!
//! Everything runs on token ids and raw bytes: pieces are mapped back to bytes once, when the
//! tokenizer is built (`byte_level.rs`), and a merge is a lookup of an id pair. Short words
//! (nearly all) use the plain lowest-rank scan; long ones a heap, so a long run without a
//! word boundary costs O(n log n), not O(n²).
//!
//! Decoding: a normal token is its bytes, joined with its neighbours into UTF-8 by the shared
//! stream decoder; a user-defined token is its text as stored; control tokens are invisible.
//!
//! A merge that names a piece the vocab lacks (either side, or the joined result) is an
//! error, as in Hugging Face's `tokenizers` (llama.cpp loads it and would spell such a
//! symbol out byte by byte): a vocab and merges that disagree mean a broken convert.

use super::byte_level::{is_mapped, piece_to_bytes};
use super::pretokenize::{Pre, Pretokenizer};
use super::{DecodeKind, DecodeTable, TokenType, Vocab};
use crate::error::{Error, Result};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Piece tables: FxHash (keys from the model file; text only looks them up).
type Map<K, V> = rustc_hash::FxHashMap<K, V>;

/// Words up to this many bytes use the quadratic scan (cache-friendly, no allocation but
/// one small vector); longer ones the heap.
const SCAN_MAX: usize = 64;
const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Merge {
    rank: u32,
    id: u32,
}

/// The byte-level BPE encoder's tables.
#[derive(Clone, Debug)]
pub(super) struct Bpe {
    pretokenizer: Pretokenizer,
    ignore_merges: bool,
    /// The token of each single byte (None: the vocab lacks it; the byte becomes unk or
    /// nothing).
    byte_ids: [Option<u32>; 256],
    /// Normal tokens by their bytes (first id wins).
    by_bytes: Map<Box<[u8]>, u32>,
    /// `(left << 32) | right` -> the merge's rank and the merged token.
    merges: Map<u64, Merge>,
    unk: Option<u32>,
}

impl std::fmt::Debug for Merge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}", self.rank, self.id)
    }
}

/// Buffers reused from word to word.
#[derive(Default)]
struct Scratch {
    syms: Vec<u32>,
    ranks: Vec<Option<Merge>>,
}

#[inline]
fn pair(l: u32, r: u32) -> u64 {
    ((l as u64) << 32) | r as u64
}

/// Types whose piece is text the merges can produce.
fn mergeable(t: TokenType) -> bool {
    matches!(t, TokenType::Normal | TokenType::Byte | TokenType::Unused)
}

impl Bpe {
    /// The encoder's tables and how each id decodes, from a complete vocab.
    pub(super) fn new(v: &Vocab, pre: Pre) -> Result<(Bpe, DecodeTable)> {
        let n = v.pieces.len();
        let mut by_piece: Map<&str, u32> = Map::default();
        by_piece.reserve(n);
        // Every piece, of any type: a merge naming anything else is an error.
        let known: rustc_hash::FxHashSet<&str> = v.pieces.iter().map(String::as_str).collect();
        let mut by_bytes: Map<Box<[u8]>, u32> = Map::default();
        by_bytes.reserve(n);
        let mut byte_ids = [None; 256];
        let mut kinds = Vec::with_capacity(n);
        let mut surfaces = Vec::with_capacity(n);
        for (i, (p, &t)) in v.pieces.iter().zip(&v.types).enumerate() {
            let id = i as u32;
            let (kind, surface): (DecodeKind, Box<[u8]>) = match t {
                TokenType::Control | TokenType::Unknown => (DecodeKind::Control, Box::default()),
                // Added tokens are stored as their text, not in the byte mapping.
                TokenType::UserDefined => (DecodeKind::Raw, p.as_bytes().into()),
                _ => (DecodeKind::Raw, piece_to_bytes(p).into()),
            };
            if mergeable(t) && is_mapped(p) {
                by_piece.entry(p.as_str()).or_insert(id);
                if surface.len() == 1 {
                    byte_ids[surface[0] as usize].get_or_insert(id);
                }
                by_bytes.entry(surface.clone()).or_insert(id);
            }
            kinds.push(kind);
            surfaces.push(surface);
        }

        let mut merges: Map<u64, Merge> = Map::default();
        merges.reserve(v.merges.len());
        for (rank, line) in v.merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first character.
            let split = line
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(k, _)| k);
            let Some(k) = split else {
                return Err(Error::Format(format!(
                    "merge {rank} ({line:?}) is not two pieces separated by a space"
                )));
            };
            let (l, r) = (&line[..k], &line[k + 1..]);
            let joined = [l, r].concat();
            if let Some(missing) = [l, r, joined.as_str()]
                .into_iter()
                .find(|p| !known.contains(p))
            {
                return Err(Error::Format(format!(
                    "merge {rank} ({line:?}) names {missing:?}, which is not a token of the vocab"
                )));
            }
            // Pieces that are control or added tokens never come out of the byte mapping: such a
            // merge can never apply.
            let (Some(&li), Some(&ri), Some(&id)) = (
                by_piece.get(l),
                by_piece.get(r),
                by_piece.get(joined.as_str()),
            ) else {
                continue;
            };
            // The first line of a pair counts (as llama.cpp's `bpe_ranks.emplace`).
            merges.entry(pair(li, ri)).or_insert(Merge {
                rank: rank as u32,
                id,
            });
        }
        let bpe = Bpe {
            pretokenizer: Pretokenizer::new(pre)?,
            ignore_merges: pre.ignore_merges(),
            byte_ids,
            by_bytes,
            merges,
            unk: v.unk,
        };
        Ok((bpe, (kinds, surfaces)))
    }

    /// The id of a piece in the vocab's mapped form (normal tokens).
    pub(super) fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.by_bytes.get(piece_to_bytes(piece).as_slice()).copied()
    }

    /// Token ids of `text` (no special tokens), appended to `out`.
    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut scratch = Scratch::default();
        self.pretokenizer
            .split(text, |w| self.encode_word(w.as_bytes(), &mut scratch, out));
    }

    #[inline]
    fn encode_word(&self, word: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        if word.len() == 1 {
            self.push_byte(word[0], out);
            return;
        }
        if self.ignore_merges {
            if let Some(&id) = self.by_bytes.get(word) {
                out.push(id);
                return;
            }
        }
        let syms = &mut scratch.syms;
        syms.clear();
        syms.extend(
            word.iter()
                .map(|&b| self.byte_ids[b as usize].unwrap_or(NONE)),
        );
        if word.len() <= SCAN_MAX {
            self.merge_scan(syms, &mut scratch.ranks);
        } else {
            self.merge_heap(syms);
        }
        for &s in syms.iter() {
            if s != NONE {
                out.push(s);
            } else if let Some(u) = self.unk {
                out.push(u);
            }
        }
    }

    #[inline]
    fn push_byte(&self, b: u8, out: &mut Vec<u32>) {
        if let Some(id) = self.byte_ids[b as usize].or(self.unk) {
            out.push(id);
        }
    }

    #[inline]
    fn merge_of(&self, l: u32, r: u32) -> Option<Merge> {
        if l == NONE || r == NONE {
            return None;
        }
        self.merges.get(&pair(l, r)).copied()
    }

    /// Lowest rank first, leftmost among equals, by rescanning the cached pair ranks.
    fn merge_scan(&self, syms: &mut Vec<u32>, ranks: &mut Vec<Option<Merge>>) {
        // ranks[i]: the merge of syms[i] and syms[i + 1].
        ranks.clear();
        ranks.extend(syms.windows(2).map(|w| self.merge_of(w[0], w[1])));
        loop {
            let mut best: Option<(usize, Merge)> = None;
            for (i, m) in ranks.iter().enumerate() {
                if let Some(m) = *m {
                    if best.is_none_or(|(_, b)| m.rank < b.rank) {
                        best = Some((i, m));
                    }
                }
            }
            let Some((i, m)) = best else { break };
            syms[i] = m.id;
            syms.remove(i + 1);
            ranks.remove(i);
            if i + 1 < syms.len() {
                ranks[i] = self.merge_of(syms[i], syms[i + 1]);
            }
            if i > 0 {
                ranks[i - 1] = self.merge_of(syms[i - 1], syms[i]);
            }
        }
    }

    /// The same merges with a min-heap of (rank, position) over a linked list of symbols.
    fn merge_heap(&self, syms: &mut Vec<u32>) {
        let n = syms.len();
        let mut next: Vec<u32> = (1..=n as u32).collect();
        next[n - 1] = NONE;
        let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NONE;
        // (rank, left position, left symbol, right symbol): stale once either has changed.
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32, u32)>> = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            if let Some(m) = self.merge_of(syms[i], syms[i + 1]) {
                heap.push(Reverse((m.rank, i as u32, syms[i], syms[i + 1])));
            }
        }
        let mut alive = vec![true; n];
        while let Some(Reverse((_, l, ls, rs))) = heap.pop() {
            let l = l as usize;
            let r = next[l];
            if !alive[l] || r == NONE || syms[l] != ls || syms[r as usize] != rs {
                continue;
            }
            let r = r as usize;
            let Some(m) = self.merge_of(ls, rs) else {
                continue;
            };
            syms[l] = m.id;
            alive[r] = false;
            next[l] = next[r];
            if next[r] != NONE {
                prev[next[r] as usize] = l as u32;
            }
            if prev[l] != NONE {
                let p = prev[l] as usize;
                if let Some(m) = self.merge_of(syms[p], syms[l]) {
                    heap.push(Reverse((m.rank, p as u32, syms[p], syms[l])));
                }
            }
            if next[l] != NONE {
                let nx = next[l] as usize;
                if let Some(m) = self.merge_of(syms[l], syms[nx]) {
                    heap.push(Reverse((m.rank, l as u32, syms[l], syms[nx])));
                }
            }
        }
        let mut k = 0;
        for i in 0..n {
            if alive[i] {
                syms[k] = syms[i];
                k += 1;
            }
        }
        syms.truncate(k);
    }
}
