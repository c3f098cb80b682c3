//! Standard base64 (RFC 4648 §4, with padding) decoding, for the `*-data` fields of kubeconfigs
//! and the `data` values of Secrets. Kubernetes always writes canonical padded base64; line
//! breaks and spaces are tolerated because hand-edited kubeconfigs fold long values.

/// Decodes `text`; an error names the offset of the first byte that is not base64.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut pad = 0usize;
    let mut digits = 0usize;
    for (at, &c) in text.iter().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                pad += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return Err(format!("not base64: byte {c:#04x} at offset {at}")),
        };
        if pad > 0 {
            return Err(format!("not base64: data after '=' padding at offset {at}"));
        }
        digits += 1;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if digits % 4 == 1 || pad > 2 || (pad > 0 && (digits + pad) % 4 != 0) {
        return Err(format!(
            "not base64: {digits} digits and {pad} '=' do not make whole groups of four"
        ));
    }
    // Leftover bits must be zero in canonical base64; a set bit means a truncated value.
    if acc != 0 {
        return Err("not base64: the last group has stray bits (truncated value?)".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_rfc4648_vectors_with_and_without_padding() {
        let table: &[(&str, &str)] = &[
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("Zm9vYg", "foob"),
            ("Zm9v\nYmFy\n", "foobar"),
            ("+/+/", "\u{fb}\u{ff}\u{bf}"),
        ];
        for (text, want) in table {
            let got = decode(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let want: Vec<u8> = if text.starts_with('+') {
                vec![0xfb, 0xff, 0xbf]
            } else {
                want.as_bytes().to_vec()
            };
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_base64() {
        let table: &[(&str, &str)] = &[
            ("Zm9v!", "byte 0x21 at offset 4"),
            ("Z", "whole groups"),
            ("Zg===", "whole groups"),
            ("Zg=a", "after '=' padding"),
            ("Zh==", "stray bits"),
            ("Zm9-", "byte 0x2d"),
        ];
        for (text, want) in table {
            let err = decode(text.as_bytes()).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
