//! Owns how bytes from outside the process are shown in logs and errors: a receiver's PONG
//! reason and hostname, a proxy's answer, what arrives in a tunnel, an ack id, a tailer
//! client's hostname, names in a peer's certificate, the start of a malformed audit line. One
//! rule for all of them, so that no peer can forge log lines, move the terminal's cursor or
//! reorder text with control characters, and none can flood the log with one long string.

/// Longest output of one escaped character (`\u{10ffff}` is never produced: only the few
/// escaped code points below U+2070 are written this way).
const MAX_PIECE: usize = 8;

/// `bytes` made safe for one log line. Valid UTF-8 is kept; control characters (C0, DEL, C1),
/// the Unicode line and paragraph separators and the bidirectional formatting characters are
/// escaped (`\n`, `\x1b`, `\u{202e}`), and so is `\` so that an escape cannot be faked; a byte
/// that is not UTF-8 shows as `\xff`. At most `max_chars` characters of that are kept, then
/// `...` says that more was cut off. The result goes between double quotes or after a colon;
/// `"` is kept as it is, since proxies answer with HTML that would be unreadable otherwise.
pub fn for_log(bytes: &[u8], max_chars: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max_chars.saturating_add(MAX_PIECE)));
    let mut chars = 0usize;
    let mut piece = String::with_capacity(MAX_PIECE);
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().chars().map(Piece::Char);
        let invalid = chunk.invalid().iter().map(|&b| Piece::Byte(b));
        for p in valid.chain(invalid) {
            piece.clear();
            match p {
                Piece::Char(c) => push_char(&mut piece, c),
                Piece::Byte(b) => piece.push_str(&format!("\\x{b:02x}")),
            }
            // A piece is kept whole or not at all, so an escape is never cut in half.
            if chars >= max_chars {
                out.push_str("...");
                return out;
            }
            chars += piece.chars().count();
            out.push_str(&piece);
        }
    }
    out
}

enum Piece {
    Char(char),
    Byte(u8),
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\r' => out.push_str("\\r"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\\' => out.push_str("\\\\"),
        c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
        // C1 controls; U+2028/U+2029 end a line in some viewers; the bidi marks, embeddings,
        // overrides and isolates make a line read differently from what it holds.
        c if c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
            )
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c) =>
        {
            out.push_str(&format!("\\u{{{:x}}}", c as u32))
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_for_log() {
        // (name, input, cap, shown)
        let cases: &[(&str, &[u8], usize, &str)] = &[
            ("empty", b"", 10, ""),
            (
                "plain ASCII",
                b"shared_key mismatch",
                200,
                "shared_key mismatch",
            ),
            (
                "UTF-8 kept",
                "caf\u{e9} \u{65e5}\u{672c} \u{1f600}".as_bytes(),
                200,
                "caf\u{e9} \u{65e5}\u{672c} \u{1f600}",
            ),
            (
                "quotes kept, backslashes escaped",
                br#"say "hi" \o/ \n"#,
                200,
                r#"say "hi" \\o/ \\n"#,
            ),
            (
                "newline cannot forge a line",
                b"ok\n2025-01-01 ERROR fake",
                200,
                "ok\\n2025-01-01 ERROR fake",
            ),
            ("CR, tab", b"a\rb\tc", 200, "a\\rb\\tc"),
            (
                "terminal escape",
                b"\x1b[31mred\x1b[0m",
                200,
                "\\x1b[31mred\\x1b[0m",
            ),
            ("NUL, BEL, DEL", b"\x00\x07\x7f", 200, "\\x00\\x07\\x7f"),
            (
                "C1 control",
                "a\u{85}b\u{9b}c".as_bytes(),
                200,
                "a\\u{85}b\\u{9b}c",
            ),
            (
                "line separators",
                "a\u{2028}b\u{2029}c".as_bytes(),
                200,
                "a\\u{2028}b\\u{2029}c",
            ),
            (
                "bidi override",
                "evil\u{202e}txt.exe\u{2066}\u{200f}".as_bytes(),
                200,
                "evil\\u{202e}txt.exe\\u{2066}\\u{200f}",
            ),
            ("not UTF-8", b"hunter\xfe\xff", 200, "hunter\\xfe\\xff"),
            ("truncated UTF-8 sequence", b"caf\xc3", 200, "caf\\xc3"),
            (
                "surrogate encoded in UTF-8",
                b"\xed\xa0\x80",
                200,
                "\\xed\\xa0\\x80",
            ),
            ("cut at the cap", b"abcdef", 3, "abc..."),
            ("exactly the cap", b"abc", 3, "abc"),
            ("an escape is not split", b"ab\ncd", 3, "ab\\n..."),
            (
                "escapes count toward the cap",
                b"\x01\x02\x03",
                8,
                "\\x01\\x02...",
            ),
            ("cap 0", b"x", 0, "..."),
        ];
        for (name, input, cap, want) in cases {
            assert_eq!(for_log(input, *cap), *want, "{name}");
        }
    }

    #[test]
    fn escape_output_is_one_bounded_line_of_printable_text() {
        // Every byte value, in every position, twice over: nothing unprintable survives.
        let mut all: Vec<u8> = (0..=255u8).collect();
        all.extend("\u{85}\u{2028}\u{202e}\u{2069}".as_bytes());
        let all = [all.clone(), all].concat();
        for cap in [0, 1, 7, 100, usize::MAX] {
            let out = for_log(&all, cap);
            assert!(
                out.chars().all(|c| !c.is_control()
                    && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{202e}' | '\u{2069}')),
                "{out:?}"
            );
            assert!(
                out.chars().count() <= cap.saturating_add(MAX_PIECE + 3),
                "{cap}"
            );
        }
    }
}
