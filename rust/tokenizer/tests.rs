use super::*;
use crate::error::Error;

const NORMAL: TokenType = TokenType::Normal;
const UNUSED: TokenType = TokenType::Unused;
const USER: TokenType = TokenType::UserDefined;

/// <unk>, <s>, </s>, optionally the 256 byte pieces, then `extra` (piece, score, type).
fn build(extra: &[(&str, f32, TokenType)], bytes: bool, rew: bool) -> Tokenizer {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut scores = vec![0.0, 0.0, 0.0];
    let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    if bytes {
        for b in 0..256 {
            tokens.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
            types.push(TokenType::Byte);
        }
    }
    for &(p, s, t) in extra {
        tokens.push(p.to_string());
        scores.push(s);
        types.push(t);
    }
    let (bos, eos, unk) = (Some(1), Some(2), Some(0));
    Tokenizer::new(Vocab {
        scores,
        types,
        bos,
        eos,
        unk,
        remove_extra_whitespaces: rew,
        ..Vocab::new(tokens)
    })
    .unwrap()
}

fn pieces(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&i| t.piece(i).unwrap().to_string())
        .collect()
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
    let t = build(
        &[
            ("▁", -1.0, NORMAL),
            ("a", -1.0, NORMAL),
            ("aa", -2.0, NORMAL),
        ],
        true,
        false,
    );
    assert_eq!(pieces(&t, &t.encode("aaa", false)), ["▁", "aa", "a"]);
    assert_eq!(
        pieces(&t, &t.encode("aaaaa", false)),
        ["▁", "aa", "aa", "a"]
    );
}

#[test]
fn byte_fallback_and_multibyte() {
    let t = basic();
    assert_eq!(pieces(&t, &t.encode("é", false)), ["▁", "é"]);
    // 'ü' (C3 BC) is not a piece.
    assert_eq!(pieces(&t, &t.encode("ü", false)), ["▁", "<0xC3>", "<0xBC>"]);
    // An emoji: four bytes.
    assert_eq!(
        pieces(&t, &t.encode("🦙", false)),
        ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    );
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
    let r = build(
        &[
            ("▁", -1.0, NORMAL),
            ("a", -1.0, NORMAL),
            ("b", -1.0, NORMAL),
        ],
        true,
        true,
    );
    assert_eq!(r.encode("   ", false), Vec::<u32>::new());
    assert_eq!(r.encode("", true), vec![1]);
}

#[test]
fn remove_extra_whitespaces() {
    let r = build(
        &[
            ("▁", -1.0, NORMAL),
            ("a", -1.0, NORMAL),
            ("b", -1.0, NORMAL),
        ],
        true,
        true,
    );
    assert_eq!(
        pieces(&r, &r.encode("  a    b  ", false)),
        ["▁", "a", "▁", "b"]
    );
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
    let tokens: Vec<String> = ["<unk>", "<s>", "</s>", "<0x41>", "▁", "b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let t = Tokenizer::new(Vocab {
        bos: Some(1),
        eos: Some(2),
        ..Vocab::new(tokens)
    })
    .unwrap();
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
    let gguf_types = |raw: &[i32]| {
        Vocab::new(v(3))
            .with_gguf_types(raw)
            .and_then(Tokenizer::new)
    };
    assert!(f(Tokenizer::new(Vocab::new(vec![]))));
    assert!(f(Tokenizer::new(Vocab {
        scores: vec![0.0; 2],
        ..Vocab::new(v(3))
    })));
    assert!(f(gguf_types(&[1; 4])));
    assert!(f(Tokenizer::new(Vocab {
        bos: Some(3),
        ..Vocab::new(v(3))
    })));
    assert!(f(Tokenizer::new(Vocab {
        eos: Some(9),
        ..Vocab::new(v(3))
    })));
    assert!(f(Tokenizer::new(Vocab {
        unk: Some(3),
        ..Vocab::new(v(3))
    })));
    assert!(f(gguf_types(&[1, 9, 1])));
    assert!(f(gguf_types(&[1, 6, 1])));
    assert!(Tokenizer::new(Vocab::new(v(3))).is_ok());
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
    assert_eq!(
        t.decode(&[by(0xED), by(0xA0), by(0x80)]).unwrap(),
        "\u{FFFD}\u{FFFD}\u{FFFD}"
    );
    assert_eq!(
        t.decode(&[by(0xE2), by(0x82), by(0x41)]).unwrap(),
        "\u{FFFD}\u{FFFD}A"
    );
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
    for t in [
        basic(),
        build(
            &[
                ("▁", -1.0, NORMAL),
                ("▁▁", -1.0, NORMAL),
                ("x", 0.0, NORMAL),
            ],
            true,
            true,
        ),
    ] {
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
                        1 => {
                            3 + [0xE2u32, 0x82, 0xAC, 0xF0, 0x9F, 0xA6, 0x41, 0xC3]
                                [(r / 4 % 8) as usize]
                        }
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
