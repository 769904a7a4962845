//! GPT-2's byte-to-unicode mapping (`bytes_to_unicode` in OpenAI's `encoder.py`, llama.cpp's
//! `unicode_byte_to_utf8`): byte-level BPE vocabularies store each token's bytes as printable
//! characters, one per byte. The printable bytes `!`..=`~`, `¡`..=`¬` and `®`..=`ÿ` stand for
//! themselves; the other 68 bytes (controls, space, DEL, U+0080..U+00A0, the soft hyphen) take
//! U+0100, U+0101, ... in byte order. So a space is `Ġ` (U+0120) and a newline `Ċ` (U+010A).

/// The character that stands for each byte.
pub(super) const BYTE_TO_CHAR: [char; 256] = byte_to_char();

const fn printable(b: u32) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

const fn byte_to_char() -> [char; 256] {
    let mut t = ['\0'; 256];
    let mut next = 0x100u32;
    let mut b = 0u32;
    while b < 256 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        // All values are below U+0144: valid scalar values.
        t[b as usize] = match char::from_u32(c) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    t
}

/// The byte a mapped character stands for, or None for a character outside the mapping.
#[inline]
pub(super) fn char_to_byte(c: char) -> Option<u8> {
    match CHAR_TO_BYTE.get(c as usize) {
        Some(&b) if b >= 0 => Some(b as u8),
        _ => None,
    }
}

/// The mapped characters are all below U+0144 (256 + 68).
const N_CHARS: usize = 0x100 + 68;

/// The inverse of `BYTE_TO_CHAR`: -1 where no byte maps to the character.
const CHAR_TO_BYTE: [i16; N_CHARS] = {
    let mut t = [-1i16; N_CHARS];
    let mut b = 0;
    while b < 256 {
        t[BYTE_TO_CHAR[b] as usize] = b as i16;
        b += 1;
    }
    t
};

/// A vocab piece's bytes: each mapped character as its byte; a character outside the mapping
/// (possible in added tokens) as its own UTF-8.
pub(super) fn piece_to_bytes(piece: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(piece.len());
    for c in piece.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// Bytes as a vocab piece (the inverse of `piece_to_bytes` on mapped pieces).
#[cfg(test)]
pub(super) fn bytes_to_piece(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

/// Whether every character of `piece` is in the mapping (a piece a byte-level BPE can form).
pub(super) fn is_mapped(piece: &str) -> bool {
    piece.chars().all(|c| char_to_byte(c).is_some())
}
