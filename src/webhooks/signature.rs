//! The `X-Herald-Signature` of a webhook request: `t=<unix seconds>,v1=<hex>`, where the hex is
//! the HMAC-SHA256, keyed with `webhooks.secret`, of the timestamp, a `.`, and the request's
//! body exactly as sent. A retry is signed anew with its own timestamp.

use ring::hmac;

/// The header's value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut hex = String::with_capacity(64);
    for b in tag.as_ref() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    format!("t={timestamp},v1={hex}")
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `header` is a valid signature of `body` by `secret`, made within `tolerance`
/// seconds of `now` (Unix seconds): what the application checks, here for Rust applications
/// and for the tests.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64, tolerance: u64) -> bool {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", hex)) => tags.push(hex),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if now.abs_diff(t) > tolerance {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    tags.iter().filter_map(|hex| decode_hex(hex)).any(|tag| hmac::verify(&key, &signed, &tag).is_ok())
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_secret_body_and_time() {
        let header = sign(b"0123456789abcdef", 1_700_000_000, br#"{"events":[]}"#);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert!(verify(b"0123456789abcdef", &header, br#"{"events":[]}"#, 1_700_000_100, 300));
        assert!(!verify(b"another-secret-16", &header, br#"{"events":[]}"#, 1_700_000_100, 300));
        assert!(!verify(b"0123456789abcdef", &header, br#"{"events":[1]}"#, 1_700_000_100, 300));
        assert!(!verify(b"0123456789abcdef", &header, br#"{"events":[]}"#, 1_700_001_000, 300), "too old");
        assert!(!verify(b"0123456789abcdef", "v1=00", b"", 0, 300));
    }

    #[test]
    fn the_signature_is_the_documented_hmac() {
        // The HMAC of `<t>.<body>`, as docs/backend.md tells the application to compute it.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let direct = hmac::sign(&key, b"12.what do ya want for nothing?");
        let hex: String = direct.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sign(b"Jefe", 12, b"what do ya want for nothing?"), format!("t=12,v1={hex}"));
    }
}
