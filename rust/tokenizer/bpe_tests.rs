//! Byte-level BPE on hand-made vocabularies; the real Llama 3 vocab is checked against
//! tiktoken and llama.cpp's vectors in tests/test_tokenizer_bpe.py.

use super::byte_level::{bytes_to_piece, char_to_byte, piece_to_bytes, BYTE_TO_CHAR};
use super::*;

#[test]
fn byte_mapping_is_gpt2s() {
    // Known points of OpenAI's bytes_to_unicode.
    assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
    assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
    assert_eq!(BYTE_TO_CHAR[0], '\u{100}');
    assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
    assert_eq!(BYTE_TO_CHAR[0x7F], '\u{121}');
    assert_eq!(BYTE_TO_CHAR[0xAD], '\u{143}');
    assert_eq!(BYTE_TO_CHAR[0xFF], 'ÿ');
    // A bijection between the 256 bytes and their characters.
    for b in 0..=255u8 {
        assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
    }
    let distinct: std::collections::HashSet<char> = BYTE_TO_CHAR.iter().copied().collect();
    assert_eq!(distinct.len(), 256);
    assert_eq!(char_to_byte(' '), None);
    assert_eq!(char_to_byte('\u{144}'), None);
    assert_eq!(char_to_byte('日'), None);
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(piece_to_bytes(&bytes_to_piece(&all)), all);
    // Characters outside the mapping (added tokens) stand for their UTF-8.
    assert_eq!(piece_to_bytes("Ġ日"), " 日".as_bytes());
}

/// The 256 byte tokens (ids 0..256, in byte order), then `extra` pieces given as raw text,
/// with `merges` given as raw (left, right).
fn build(extra: &[&str], merges: &[(&str, &str)], pre: Pre) -> Tokenizer {
    let mut pieces: Vec<String> = (0..=255u8).map(|b| bytes_to_piece(&[b])).collect();
    pieces.extend(extra.iter().map(|t| bytes_to_piece(t.as_bytes())));
    let merges = merges
        .iter()
        .map(|(l, r)| {
            format!(
                "{} {}",
                bytes_to_piece(l.as_bytes()),
                bytes_to_piece(r.as_bytes())
            )
        })
        .collect();
    Tokenizer::new(Vocab::byte_pair(pieces, merges, pre)).unwrap()
}

fn texts(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&i| String::from_utf8_lossy(t.token_bytes(i)).into_owned())
        .collect()
}

#[test]
fn merges_lowest_rank_first() {
    // "abc": (b, c) has the lower rank, so "bc" forms and "ab" never can.
    let t = build(&["ab", "bc", "abc"], &[("b", "c"), ("a", "b")], Pre::Gpt2);
    assert_eq!(texts(&t, &t.encode("abc", false)), ["a", "bc"]);
    let t = build(
        &["ab", "bc", "abc"],
        &[("a", "b"), ("b", "c"), ("ab", "c")],
        Pre::Gpt2,
    );
    assert_eq!(texts(&t, &t.encode("abc", false)), ["abc"]);
    // Equal pairs: the leftmost merges first ("aaa" -> "aa" + "a").
    let t = build(&["aa"], &[("a", "a")], Pre::Gpt2);
    assert_eq!(texts(&t, &t.encode("aaa", false)), ["aa", "a"]);
    assert_eq!(texts(&t, &t.encode("aaaa", false)), ["aa", "aa"]);
}

#[test]
fn long_words_merge_as_short_ones() {
    // The heap (long words) and the scan (short words) agree: compare a long word with the
    // concatenation of its short pieces where merges cannot cross.
    let t = build(
        &["ab", "abab", "ba", "aba"],
        &[("a", "b"), ("ab", "ab"), ("b", "a"), ("ab", "a")],
        Pre::Gpt2,
    );
    for n in [1, 2, 3, 7, 30, 31, 32, 33, 100, 1001] {
        let word = "ab".repeat(n);
        let ids = t.encode(&word, false);
        assert_eq!(texts(&t, &ids).concat(), word);
        let mut want = vec!["abab"; n / 2];
        if n % 2 == 1 {
            want.push("ab");
        }
        assert_eq!(texts(&t, &ids), want, "n = {n}");
        let odd = format!("{word}a");
        assert_eq!(texts(&t, &t.encode(&odd, false)).concat(), odd);
    }
}

#[test]
fn llama3_ignores_merges_for_whole_tokens() {
    // "abc" is a token but no merge reaches it: Llama 3 takes the word whole, GPT-2 does not.
    let t = build(&["ab", "abc"], &[("a", "b")], Pre::Llama3);
    assert_eq!(texts(&t, &t.encode("abc", false)), ["abc"]);
    let t = build(&["ab", "abc"], &[("a", "b")], Pre::Gpt2);
    assert_eq!(texts(&t, &t.encode("abc", false)), ["ab", "c"]);
}

#[test]
fn words_never_merge_across_the_pre_tokenizer() {
    let t = build(
        &["a ", " a", "aa"],
        &[("a", " "), (" ", "a"), ("a", "a")],
        Pre::Llama3,
    );
    assert_eq!(texts(&t, &t.encode("a a", false)), ["a", " a"]);
    assert_eq!(
        texts(&t, &t.encode("aa  aa", false)),
        ["aa", " ", " a", "a"]
    );
    // Digits in groups of three; contractions in any case.
    assert_eq!(texts(&t, &t.encode("12345", false)).concat(), "12345");
    assert_eq!(t.encode("12345", false).len(), 5);
}

#[test]
fn decode_joins_bytes_and_streams_whole_characters() {
    let t = build(&[], &[], Pre::Llama3);
    let text = "é🦙 x";
    let ids = t.encode(text, false);
    assert_eq!(ids.len(), text.len()); // no merges: one token per byte
    assert_eq!(t.decode(&ids).unwrap(), text);
    let mut st = StreamDecoder::new();
    let pieces: Vec<String> = ids.iter().map(|&i| st.push(&t, i)).collect();
    assert_eq!(pieces, ["", "é", "", "", "", "🦙", " ", "x"]);
    assert_eq!(st.finish(&t), "");
}

#[test]
fn special_tokens_are_parsed_only_when_asked() {
    let mut pieces: Vec<String> = (0..=255u8).map(|b| bytes_to_piece(&[b])).collect();
    pieces.extend(["<|a|>", "<|a|>x", "<|user|>"].map(String::from));
    let n = pieces.len() as u32;
    let mut v = Vocab::byte_pair(pieces, Vec::new(), Pre::Llama3);
    v.types = vec![TokenType::Normal; n as usize];
    v.types[(n - 3) as usize] = TokenType::Control;
    v.types[(n - 2) as usize] = TokenType::Control;
    v.types[(n - 1) as usize] = TokenType::UserDefined;
    v.bos = Some(n - 3);
    let t = Tokenizer::new(v).unwrap();
    let (a, ax, user) = (n - 3, n - 2, n - 1);
    // Control tokens: plain text unless parse_special; the longest match wins.
    assert_eq!(t.encode_with("<|a|>xy", false, false).len(), 7);
    assert_eq!(t.encode_with("<|a|>xy", false, true), [ax, b'y' as u32]);
    assert_eq!(t.encode_with("<|a|>y", true, true), [a, a, b'y' as u32]);
    // User-defined tokens are always matched.
    assert_eq!(
        t.encode_with("q<|user|>", false, false),
        [b'q' as u32, user]
    );
    // Control tokens decode to nothing, user-defined ones to their text.
    assert_eq!(t.decode(&[a, b'q' as u32, user]).unwrap(), "q<|user|>");
}

#[test]
fn end_of_generation_set() {
    let mut pieces: Vec<String> = (0..=255u8).map(|b| bytes_to_piece(&[b])).collect();
    let base = pieces.len() as u32;
    pieces.extend(["<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|im_end|>"].map(String::from));
    let mut v = Vocab::byte_pair(pieces, Vec::new(), Pre::Llama3);
    v.eos = Some(base);
    let t = Tokenizer::new(v).unwrap();
    assert_eq!(t.eog(), [base, base + 1, base + 2, base + 3]);
    assert_eq!((t.eot(), t.eom()), (Some(base + 1), Some(base + 2)));
    assert!(t.is_eog(base + 3) && !t.is_eog(b'a' as u32));
    // Found by text, they became control tokens: invisible, and not parsed from plain text.
    assert_eq!(t.token_type(base + 1), Some(TokenType::Control));
    assert_eq!(t.decode(&[b'a' as u32, base + 1]).unwrap(), "a");
}

#[test]
fn bad_merges_are_errors() {
    let pieces: Vec<String> = ["a", "b", "ab"].map(String::from).to_vec();
    let bad = Vocab::byte_pair(pieces.clone(), vec!["ab".into()], Pre::Gpt2);
    let err = Tokenizer::new(bad).unwrap_err().to_string();
    assert!(err.contains("merge 0 (\"ab\")"), "{err}");
    // A merge naming a piece the vocab lacks (either side, or the result) is an error that
    // names the piece.
    for (line, missing) in [("x b", "x"), ("a y", "y"), ("b a", "ba")] {
        let v = Vocab::byte_pair(pieces.clone(), vec!["a b".into(), line.into()], Pre::Gpt2);
        let err = Tokenizer::new(v).unwrap_err().to_string();
        let want =
            format!("merge 1 ({line:?}) names {missing:?}, which is not a token of the vocab");
        assert!(err.contains(&want), "{err}");
    }
    let t = Tokenizer::new(Vocab::byte_pair(pieces, vec!["a b".into()], Pre::Gpt2)).unwrap();
    assert_eq!(t.encode("ab", false), [2]);
}
