//! Decoding shared by the tokenizer families: ids to text, also one id at a time for
//! generation, never splitting a UTF-8 character.

use super::{DecodeKind, Tokenizer};

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
        StreamDecoder {
            pending: Vec::new(),
            is_bos_ws: true,
            bos_ws_seen: false,
            any_text: false,
        }
    }

    /// A decoder for text that continues earlier text (generation after a prompt): the first
    /// piece keeps its leading space, as it would in the middle of `decode`.
    pub fn continuing() -> Self {
        StreamDecoder {
            pending: Vec::new(),
            is_bos_ws: false,
            bos_ws_seen: false,
            any_text: true,
        }
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
        let Some(&kind) = tok.decode_kind.get(id as usize) else {
            return;
        };
        match kind {
            DecodeKind::Byte(b) => {
                self.pending.push(b);
                self.drain(out, false);
            }
            DecodeKind::Raw => {
                self.pending.extend_from_slice(&tok.surfaces[id as usize]);
                self.drain(out, false);
            }
            _ => {
                self.drain(out, true);
                if self.bos_ws_seen || self.any_text {
                    self.is_bos_ws = false;
                }
                // `Text` and `Unknown` surfaces are UTF-8 (made from `String`s); lossy is
                // a borrow then.
                let surface = String::from_utf8_lossy(&tok.surfaces[id as usize]);
                let surface = surface.as_ref();
                let (text, seen) = match kind {
                    DecodeKind::Text {
                        leading_space: true,
                    } if self.is_bos_ws
                        && (tok.add_space_prefix() || tok.remove_extra_whitespaces()) =>
                    {
                        // `▁` became one ' ' at the start of the surface.
                        (&surface[1..], !tok.remove_extra_whitespaces())
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
