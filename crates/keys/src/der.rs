//! The little DER that key import and export need: RSA PKCS#1 private keys and PKCS#8 unwrapping.

/// An RSA private key's components, big-endian unsigned: n, e, d, p, q, dp, dq, qi.
pub type RsaComponents = [Vec<u8>; 8];

fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn write_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    write_len(out, value.len());
    out.extend_from_slice(value);
}

fn write_uint(out: &mut Vec<u8>, value: &[u8]) {
    let skip = value
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(value.len().saturating_sub(1));
    let trimmed = if value.is_empty() {
        &[0u8][..]
    } else {
        &value[skip..]
    };
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(trimmed);
    write_tlv(out, 0x02, &body);
}

/// `RSAPrivateKey` (RFC 8017) for the given components.
pub fn rsa_pkcs1(c: &RsaComponents) -> Vec<u8> {
    let mut body = Vec::new();
    write_uint(&mut body, &[0]);
    for part in c {
        write_uint(&mut body, part);
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    write_tlv(&mut out, 0x30, &body);
    out
}

/// Reads one TLV: (tag, value, rest).
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The components of an RSA key in a PKCS#8 `PrivateKeyInfo`.
pub fn rsa_components_from_pkcs8(der: &[u8]) -> Option<RsaComponents> {
    let (0x30, info, _) = read_tlv(der)? else {
        return None;
    };
    let (0x02, _version, rest) = read_tlv(info)? else {
        return None;
    };
    let (0x30, _algorithm, rest) = read_tlv(rest)? else {
        return None;
    };
    let (0x04, pkcs1, _) = read_tlv(rest)? else {
        return None;
    };
    let (0x30, mut seq, _) = read_tlv(pkcs1)? else {
        return None;
    };
    let mut ints = Vec::with_capacity(9);
    while !seq.is_empty() && ints.len() < 9 {
        let (0x02, value, rest) = read_tlv(seq)? else {
            return None;
        };
        let skip = value
            .iter()
            .take_while(|b| **b == 0)
            .count()
            .min(value.len() - 1);
        ints.push(value[skip..].to_vec());
        seq = rest;
    }
    // The first integer is the version.
    let parts: Vec<Vec<u8>> = ints.into_iter().skip(1).collect();
    parts.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_and_sign_bytes() {
        let mut out = Vec::new();
        write_uint(&mut out, &[0x80]);
        assert_eq!(out, [0x02, 0x02, 0x00, 0x80]);
        let mut out = Vec::new();
        write_tlv(&mut out, 0x04, &[0u8; 300]);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, value, rest) = read_tlv(&out).unwrap();
        assert_eq!((tag, value.len(), rest.len()), (0x04, 300, 0));
    }
}
