//! Small tar format helpers: PAX records (encode/parse) and ustar headers.
//! Header field encoding/decoding is delegated to the `tar` crate's `Header`;
//! the stream framing is ours so that every size is bounded.

use super::LayerError;

pub(crate) const BLOCK: usize = 512;

/// Encodes one PAX record: `"<len> <key>=<value>\n"` where `<len>` counts the
/// whole record including its own digits.
pub(crate) fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1; // ' ' key '=' value '\n'
    let mut len = rest + 1;
    loop {
        let digits = len.to_string().len();
        if digits + rest == len {
            break;
        }
        len = digits + rest;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Parses PAX records. Keys must be UTF-8; values stay bytes (xattrs).
pub(crate) fn parse_pax(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, LayerError> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| LayerError::Malformed("PAX record without length".into()))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| LayerError::Malformed("bad PAX record length".into()))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(LayerError::Malformed(
                "PAX record length out of range".into(),
            ));
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| LayerError::Malformed("PAX record without '='".into()))?;
        let key = std::str::from_utf8(&rec[..eq])
            .map_err(|_| LayerError::Malformed("PAX key is not UTF-8".into()))?;
        out.push((key.to_string(), rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// Checks the header checksum (unsigned sum, checksum field as spaces).
pub(crate) fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let stored = &block[148..156];
    let s: String = stored
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .skip_while(|&&b| b == b' ')
        .map(|&b| b as char)
        .collect();
    let s = s.trim();
    let Ok(want) = u64::from_str_radix(s, 8) else {
        return false;
    };
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    sum == want
}

/// Bytes of padding after `size` bytes of entry data.
pub(crate) fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_round_trip_and_length_edge() {
        let mut v = Vec::new();
        // A record whose length crosses a digit boundary (9 -> 10 ... 99 -> 100).
        for n in 0..120 {
            v.clear();
            let val = vec![b'a'; n];
            pax_record(&mut v, "path", &val);
            let parsed = parse_pax(&v).unwrap();
            assert_eq!(parsed, vec![("path".to_string(), val.clone())]);
        }
        let mut v = Vec::new();
        pax_record(&mut v, "SCHILY.xattr.user.x", b"a=b\nc\0d");
        pax_record(&mut v, "uid", b"3000000");
        let parsed = parse_pax(&v).unwrap();
        assert_eq!(parsed[0].1, b"a=b\nc\0d");
        assert_eq!(parsed[1], ("uid".into(), b"3000000".to_vec()));
    }

    #[test]
    fn pax_rejects_garbage() {
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"x path=x\n").is_err());
        assert!(parse_pax(b"7 pathx\n").is_err());
    }
}
