//! What the fuzz targets share: the fuzzer-chosen split points that the streaming decoders are
//! fed at, to compare with feeding the same bytes whole.

/// Splits fuzz input into the offsets at which to cut the payload and the payload itself. The
/// first byte is the header: its low 3 bits say how many cut bytes follow (each a fraction of
/// the payload length, /256); with its top bit set the payload is fed one byte at a time
/// instead (payloads up to 4 KiB). A seed file therefore starts with `\0` (no cuts).
pub fn split(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&header, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let n = usize::from(header & 7).min(rest.len());
    let (cut_bytes, payload) = rest.split_at(n);
    let len = payload.len();
    let mut cuts: Vec<usize> = if header & 0x80 != 0 && len <= 4096 {
        (1..len).collect()
    } else {
        cut_bytes
            .iter()
            .map(|&b| usize::from(b) * len / 256)
            .collect()
    };
    cuts.sort_unstable();
    cuts.dedup();
    cuts.retain(|&c| c > 0 && c < len);
    (cuts, payload)
}

/// The ends of the successive prefixes a receive buffer holds: each cut, then the whole length.
pub fn prefix_ends(cuts: &[usize], len: usize) -> impl Iterator<Item = usize> + '_ {
    cuts.iter().copied().chain(std::iter::once(len))
}

/// The pieces between the cuts, as successive reads deliver them.
pub fn pieces<'a>(payload: &'a [u8], cuts: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut from = 0;
    prefix_ends(cuts, payload.len()).map(move |to| {
        let piece = &payload[from..to];
        from = to;
        piece
    })
}
