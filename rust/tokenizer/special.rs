//! Special tokens: finding them in text (llama.cpp's `tokenizer_st_partition`) and the set of
//! end-of-generation tokens (llama.cpp's `special_eog_ids`).
//!
//! A special token is found in text only by its exact stored text, leftmost first and the
//! longest token where several start at the same place (Aho-Corasick, leftmost-longest). The
//! text between the tokens is encoded by the family's encoder as ordinary text. (llama.cpp
//! instead splits by each token in turn, longest first; the two differ only for special
//! tokens that overlap each other in the text.)

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// Texts llama.cpp takes as end-of-generation tokens whatever their type (they become
/// control tokens), beside the `eos`, `eot` and `eom` ids.
pub(super) const EOG_TEXTS: [&str; 7] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
];

/// Texts llama.cpp takes as the end-of-turn token when the file names none.
pub(super) const EOT_TEXTS: [&str; 7] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
];

/// Texts llama.cpp takes as the end-of-message token when the file names none.
pub(super) const EOM_TEXTS: [&str; 1] = ["<|eom_id|>"];

/// One piece of a text split at special tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// A set of special tokens to find in text.
#[derive(Clone, Debug)]
pub(super) struct Matcher {
    ac: AhoCorasick,
    ids: Vec<u32>,
}

impl Matcher {
    /// A matcher of these (id, text) pairs; None when there is nothing to match. Empty texts
    /// are skipped; of equal texts the first id wins.
    pub(super) fn new<'a>(tokens: impl IntoIterator<Item = (u32, &'a str)>) -> Option<Matcher> {
        let mut seen = rustc_hash::FxHashSet::default();
        let mut ids = Vec::new();
        let mut texts = Vec::new();
        for (id, text) in tokens {
            if !text.is_empty() && seen.insert(text) {
                ids.push(id);
                texts.push(text);
            }
        }
        if texts.is_empty() {
            return None;
        }
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&texts)
            .ok()?;
        Some(Matcher { ac, ids })
    }

    /// Call `f` with each fragment of `text` in order.
    pub(super) fn split<'t>(&self, text: &'t str, mut f: impl FnMut(Fragment<'t>)) {
        let mut pos = 0;
        for m in self.ac.find_iter(text) {
            if m.start() > pos {
                f(Fragment::Text(&text[pos..m.start()]));
            }
            f(Fragment::Token(self.ids[m.pattern().as_usize()]));
            pos = m.end();
        }
        if pos < text.len() {
            f(Fragment::Text(&text[pos..]));
        }
    }
}
