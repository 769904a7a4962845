//! Pre-tokenizers of byte-level BPE: the regex split of the text into words, named by GGUF
//! `tokenizer.ggml.pre`. BPE merges never cross a word boundary.
//!
//! The split uses `fancy-regex`, because these patterns need a look-ahead (`\s+(?!\S)`: a run
//! of spaces leaves its last space to the word after it), which the `regex` crate does not
//! have; it is also what tiktoken's own Rust core uses for these very patterns, so the words
//! (Unicode classes, `(?i:...)` case folding included) are tiktoken's.

use crate::error::{Error, Result};
use fancy_regex::Regex;

/// Llama 3's pattern (Meta's `tokenizer.py`, the `tokenizer.json` of Meta-Llama-3): as GPT-4's
/// cl100k, digits in groups of at most three, no space before a number.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's pattern (OpenAI's `encoder.py`, tiktoken's r50k/p50k).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

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

    fn pattern(self) -> &'static str {
        match self {
            Pre::Llama3 => LLAMA3,
            Pre::Gpt2 => GPT2,
        }
    }
}

/// A compiled pre-tokenizer. `Regex` is `Send + Sync` and matching is `&self`.
#[derive(Clone, Debug)]
pub(super) struct Pretokenizer {
    re: Regex,
}

impl Pretokenizer {
    pub(super) fn new(pre: Pre) -> Result<Pretokenizer> {
        let re = Regex::new(pre.pattern()).map_err(|e| {
            Error::Format(format!("the pre-tokenizer {pre:?} does not compile: {e}"))
        })?;
        Ok(Pretokenizer { re })
    }

    /// Call `word` with each word of `text`, in order; together they are all of `text`.
    pub(super) fn split<'t>(&self, text: &'t str, mut word: impl FnMut(&'t str)) {
        let mut pos = 0;
        for m in self.re.find_iter(text) {
            match m {
                Ok(m) => {
                    // The patterns match every character, but keep any gap rather than lose it.
                    if m.start() > pos {
                        word(&text[pos..m.start()]);
                    }
                    if m.end() > m.start() {
                        word(m.as_str());
                    }
                    pos = m.end();
                }
                // fancy-regex's backtracking limit: the rest becomes one word (BPE still
                // encodes it, only the word boundaries are lost there).
                Err(_) => break,
            }
        }
        if pos < text.len() {
            word(&text[pos..]);
        }
    }
}
