//! Pre-tokenizers of byte-level BPE: the regex split of the text into words, named by GGUF
//! `tokenizer.ggml.pre`. BPE merges never cross a word boundary.
//!
//! The patterns are tiktoken's / Hugging Face's, with one look-ahead: `\s+(?!\S)` (a run of
//! spaces leaves its last space to the word after it). tiktoken runs them with `fancy-regex`
//! (a backtracking VM around `regex`); we run them with `regex-automata` (the `regex` crate's
//! engine: finite automata, linear time, no backtracking limit to hit; searched anchored at
//! the end of the previous word, as the words tile the text) and do the look-ahead by hand:
//! the pattern with `\s+(?!\S)|\s+` replaced by `\s+` gives every word but those of that
//! branch, and a
//! whitespace-only match of several characters that `\s+` took up to a non-space is one
//! character shorter (the case `\s+(?!\S)` decides). The split is checked against the
//! patterns as written under `fancy-regex` (a dev-dependency) in the unit tests, and against
//! tiktoken in tests/test_tokenizer_bpe.py. Encoding runs at about 1.5x tiktoken's speed on
//! English text (one thread, same process).

use crate::error::{Error, Result};
use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};

/// Llama 3's pattern (Meta's `tokenizer.py`, the `tokenizer.json` of Meta-Llama-3): as GPT-4's
/// cl100k, digits in groups of at most three, no space before a number.
pub(super) const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's pattern (OpenAI's `encoder.py`, tiktoken's r50k/p50k).
pub(super) const GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The branches the look-ahead is done by hand for.
const LOOKAHEAD_TAIL: &str = r"|\s+(?!\S)|\s+";

/// A pre-tokenizer the engine knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pre {
    /// `llama-bpe` (also llama.cpp's aliases `llama3`, `llama-v3`, `falcon3`).
    Llama3,
    /// `gpt2` / `gpt-2` / `default` (and no `pre` at all).
    Gpt2,
}

/// Names accepted for `tokenizer.ggml.pre`, for the error message.
pub const KNOWN_PRE: &str = "llama-bpe (llama3, llama-v3, falcon3), gpt-2 (gpt2), default";

impl Pre {
    /// The pre-tokenizer of a GGUF `tokenizer.ggml.pre` value; None: not supported.
    pub fn from_name(name: &str) -> Option<Pre> {
        Some(match name {
            "llama-bpe" | "llama3" | "llama-v3" | "falcon3" => Pre::Llama3,
            "gpt2" | "gpt-2" | "default" | "" => Pre::Gpt2,
            _ => return None,
        })
    }

    /// llama.cpp's `ignore_merges`: a word that is a token as a whole is that token (as
    /// tiktoken does), without running the merges.
    pub(super) fn ignore_merges(self) -> bool {
        self == Pre::Llama3
    }

    pub(super) fn pattern(self) -> &'static str {
        match self {
            Pre::Llama3 => LLAMA3,
            Pre::Gpt2 => GPT2,
        }
    }
}

/// A compiled pre-tokenizer. `Regex` is `Send + Sync` and matching is `&self`.
#[derive(Clone, Debug)]
pub(super) struct Pretokenizer {
    /// The pattern with its `\s+(?!\S)|\s+` tail replaced by `\s+`.
    re: Regex,
    /// Llama 3: a whitespace run with a newline is another branch's (`\s*[\r\n]+`).
    newline_branch: bool,
}

impl Pretokenizer {
    pub(super) fn new(pre: Pre) -> Result<Pretokenizer> {
        let pattern = pre.pattern();
        let Some(head) = pattern.strip_suffix(LOOKAHEAD_TAIL) else {
            return Err(Error::Format(format!(
                "the pre-tokenizer {pre:?} does not end with the look-ahead branches"
            )));
        };
        let re = Regex::new(&format!(r"{head}|\s+")).map_err(|e| {
            Error::Format(format!("the pre-tokenizer {pre:?} does not compile: {e}"))
        })?;
        Ok(Pretokenizer {
            re,
            newline_branch: pre == Pre::Llama3,
        })
    }

    /// Call `word` with each word of `text`, in order; together they are all of `text`.
    pub(super) fn split<'t>(&self, text: &'t str, mut word: impl FnMut(&'t str)) {
        let mut pos = 0;
        while pos < text.len() {
            let input = Input::new(text).range(pos..);
            let m = self
                .re
                .search(&input.clone().anchored(Anchored::Yes))
                .or_else(|| self.re.search(&input));
            let Some(m) = m else {
                break;
            };
            // The patterns match every character; keep any gap rather than lose it.
            if m.start() > pos {
                word(&text[pos..m.start()]);
            }
            let mut end = m.end();
            if end < text.len() {
                end -= self.lookahead_giveback(&text[m.start()..m.end()]);
            }
            if end == m.start() {
                // Cannot happen (a match is never empty), but never loop forever.
                end = m.end().max(m.start() + 1);
            }
            word(&text[m.start()..end]);
            pos = end;
        }
        if pos < text.len() {
            word(&text[pos..]);
        }
    }

    /// How many bytes `\s+(?!\S)` would leave of a match that `\s+` took up to a non-space:
    /// its last character when it has several; 0 for a match of another branch.
    #[inline]
    fn lookahead_giveback(&self, m: &str) -> usize {
        let mut chars = m.chars();
        let Some(last) = chars.next_back() else {
            return 0;
        };
        // Another branch's match has a non-space (or, Llama 3, a newline).
        let from_tail =
            |c: char| c.is_whitespace() && !(self.newline_branch && (c == '\r' || c == '\n'));
        if chars.as_str().is_empty() || !from_tail(last) || !chars.as_str().chars().all(from_tail) {
            return 0;
        }
        last.len_utf8()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words by the pattern as written, under fancy-regex (what tiktoken runs).
    fn reference(re: &fancy_regex::Regex, text: &str) -> Vec<String> {
        re.find_iter(text)
            .map(|m| m.unwrap().as_str().to_string())
            .collect()
    }

    fn ours(pre: Pre, text: &str) -> Vec<String> {
        split(&Pretokenizer::new(pre).unwrap(), text)
    }

    fn split(p: &Pretokenizer, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        p.split(text, |w| out.push(w.to_string()));
        out
    }

    #[test]
    fn split_equals_the_pattern_with_its_lookahead() {
        let alphabet = [
            " ", "  ", "\t", "\n", "\r", "\r\n", "\u{a0}", "\u{3000}", "\u{2028}", "\u{85}", "a",
            "Z", "é", "ſ", "日", "7", "٣", "½", "'", "'s", "'S", "'ll", "'LL", ".", "!", "-", "🦙",
            "\u{301}", "\u{200b}", "x",
        ];
        // A fixed pseudo-random sequence (xorshift), so the test is the same every run.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for pre in [Pre::Llama3, Pre::Gpt2] {
            let want = fancy_regex::Regex::new(pre.pattern()).unwrap();
            let got = Pretokenizer::new(pre).unwrap();
            for _ in 0..5000 {
                let len = next(24);
                let text: String = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
                assert_eq!(
                    split(&got, &text),
                    reference(&want, &text),
                    "{pre:?} {text:?}"
                );
            }
        }
    }

    #[test]
    fn lookahead_cases() {
        let p = Pre::Llama3;
        assert_eq!(ours(p, "a   b"), ["a", "  ", " b"]);
        assert_eq!(ours(p, "a   "), ["a", "   "]);
        assert_eq!(ours(p, "a \t 1"), ["a", " \t", " ", "1"]);
        assert_eq!(ours(p, "a  \n  b"), ["a", "  \n", " ", " b"]);
        assert_eq!(ours(Pre::Gpt2, "a  \n  b"), ["a", "  \n ", " b"]);
    }
}
