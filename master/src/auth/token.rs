//! Secrets: 256-bit random tokens, stored only as their SHA-256.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Prefix of API tokens, so a leaked one is recognisable (secret scanners)
/// and never mistaken for a session.
pub const API_TOKEN_PREFIX: &str = "wrn_";

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(String);

fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|err| RandomError(err.to_string()))?;
    Ok(bytes)
}

/// A new session token: 32 random bytes, base64url (43 characters).
pub fn new_session_token() -> Result<String, RandomError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// A new API token: the prefix and 32 random bytes, base64url.
pub fn new_api_token() -> Result<String, RandomError> {
    Ok(format!("{API_TOKEN_PREFIX}{}", new_session_token()?))
}

/// What the database stores and the cache is keyed by: hex SHA-256.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    hex
}

/// Whether `token` has the shape of a token this server issues (cheap
/// rejection of junk before any lookup).
pub fn plausible(token: &str) -> bool {
    let secret = token.strip_prefix(API_TOKEN_PREFIX).unwrap_or(token);
    secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A random password of `len` characters from an unambiguous alphabet.
pub fn random_password(len: usize) -> Result<String, RandomError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for byte in random_bytes::<64>()? {
            // Rejection sampling keeps every character equally likely.
            let limit = 256 - 256 % ALPHABET.len();
            if usize::from(byte) < limit && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_plausible_and_hashed_to_hex() {
        let a = new_session_token().expect("token");
        let b = new_session_token().expect("token");
        assert_ne!(a, b);
        assert!(plausible(&a));
        let api = new_api_token().expect("token");
        assert!(api.starts_with(API_TOKEN_PREFIX) && plausible(&api));
        assert!(!plausible("short"));
        assert!(!plausible(&format!("{}!", &a[..42])));
        let hash = hash_token(&a);
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn random_passwords_have_the_length_asked_for() {
        let password = random_password(20).expect("password");
        assert_eq!(password.chars().count(), 20);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
