//! Verifying JSON Web Tokens from outside: OpenID Connect ID tokens, JWT
//! bearer tokens and signed identity headers.
//!
//! Signatures and the registered claims are checked by `jsonwebtoken`; this
//! module decides which key and which algorithm a token may use, and that
//! choice is where JWT verifiers usually go wrong, so it is strict:
//!
//! - the algorithm comes from the key, never from the token: a shared
//!   secret verifies HMAC only, an RSA key RS256/384/512 only, an EC key
//!   the one ECDSA algorithm of its curve. A token whose header names
//!   another algorithm is refused before any signature check, so an HS256
//!   token "signed" with an RSA public key (key confusion) cannot pass;
//!   `alg: none` does not even parse;
//! - a key is chosen by the token's `kid`; an unknown `kid` fetches the key
//!   set again (at most once per [`REFETCH_AFTER`], so made-up `kid`s do
//!   not become a flood of requests to the provider) and is refused if it
//!   is still unknown;
//! - `iss`, `aud` and `exp` are required and checked; `nbf` and `iat` are
//!   checked when present (with [`LEEWAY`] for clock skew).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Clock skew allowed on `exp`, `nbf` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// The least time between two fetches of a key set caused by unknown
/// `kid`s.
pub const REFETCH_AFTER: Duration = Duration::from_secs(5);

/// A fetched key set is fetched again when a token needs it after this
/// long (providers rotate keys).
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);

/// The largest key set or discovery document read from a provider.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Why a token was refused. The texts are safe to show the client: they
/// name what failed, never a key.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token's signing algorithm {0:?} is not allowed for its key")]
    Algorithm(Algorithm),
    #[error("the token is signed by an unknown key")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Claims(String),
    /// The keys could not be had (the provider is down, a file is bad):
    /// not the client's fault.
    #[error("the signing keys are unavailable: {0}")]
    Keys(String),
}

impl JwtError {
    /// A refusal of the token itself (401), not a failure to check it.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, JwtError::Keys(_))
    }
}

/// One verification key, with the only algorithms it may verify.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// Where keys come from.
enum Source {
    /// Fixed keys (a shared secret, a JWKS file).
    Fixed,
    /// A JWKS URL, fetched when first needed and again as above.
    Url { url: String, http: reqwest::Client },
}

struct Fetched {
    keys: Arc<Vec<Key>>,
    /// When the keys were fetched.
    at: Option<Instant>,
    /// When a fetch was last tried, and why it failed if it did.
    attempted: Option<Instant>,
    failed: Option<String>,
}

/// Verification keys: a shared secret, a JWKS file or a JWKS URL.
pub struct KeySet {
    source: Source,
    fetched: std::sync::Mutex<Fetched>,
    /// One fetch at a time; tokens whose key is known do not wait for it.
    fetching: Mutex<()>,
}

impl KeySet {
    /// HMAC (HS256/384/512) with a shared secret.
    pub fn secret(secret: &[u8]) -> Result<KeySet, JwtError> {
        if secret.len() < 32 {
            return Err(JwtError::Keys(format!(
                "a JWT secret must be at least 32 bytes (this one has {})",
                secret.len()
            )));
        }
        let key = DecodingKey::from_secret(secret);
        Ok(KeySet::fixed(vec![Key {
            kid: None,
            algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            key,
        }]))
    }

    /// The public keys of a JWKS document (`{"keys": [...]}`).
    pub fn jwks_file(path: &Path) -> Result<KeySet, JwtError> {
        let text = std::fs::read(path)
            .map_err(|err| JwtError::Keys(format!("cannot read {}: {err}", path.display())))?;
        let keys = parse_jwks(&text)
            .map_err(|why| JwtError::Keys(format!("{}: {why}", path.display())))?;
        Ok(KeySet::fixed(keys))
    }

    /// The keys at a JWKS URL (fetched when first needed).
    pub fn jwks_url(url: &str, http: reqwest::Client) -> KeySet {
        KeySet::with(
            Source::Url {
                url: url.to_string(),
                http,
            },
            Vec::new(),
            None,
        )
    }

    fn fixed(keys: Vec<Key>) -> KeySet {
        KeySet::with(Source::Fixed, keys, Some(Instant::now()))
    }

    fn with(source: Source, keys: Vec<Key>, at: Option<Instant>) -> KeySet {
        KeySet {
            source,
            fetched: std::sync::Mutex::new(Fetched {
                keys: Arc::new(keys),
                at,
                attempted: None,
                failed: None,
            }),
            fetching: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fetched> {
        self.fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key for `kid` (or the only key, for a token without one). A
    /// URL's keys are fetched again when they are older than
    /// [`KEYS_MAX_AGE`] or do not know `kid`, at most once per
    /// [`REFETCH_AFTER`] whatever the outcome (a provider that is down is
    /// not asked on every request); while a fetch fails the keys held
    /// still verify.
    async fn key_for(&self, kid: Option<&str>) -> Result<Key, JwtError> {
        let Source::Url { url, http } = &self.source else {
            return find(&self.lock().keys, kid).ok_or(JwtError::UnknownKey);
        };
        let unknown = |fetched: &Fetched| match &fetched.failed {
            Some(why) if fetched.keys.is_empty() => JwtError::Keys(why.clone()),
            _ => JwtError::UnknownKey,
        };
        let recent = |fetched: &Fetched| {
            fetched
                .attempted
                .is_some_and(|at| at.elapsed() < REFETCH_AFTER)
        };
        {
            let fetched = self.lock();
            let fresh = fetched.at.is_some_and(|at| at.elapsed() < KEYS_MAX_AGE);
            if fresh || recent(&fetched) {
                if let Some(key) = find(&fetched.keys, kid) {
                    return Ok(key);
                }
            }
            if recent(&fetched) {
                return Err(unknown(&fetched));
            }
        }
        let _one_at_a_time = self.fetching.lock().await;
        {
            let mut fetched = self.lock();
            // Another request fetched while this one waited.
            if recent(&fetched) {
                return find(&fetched.keys, kid).ok_or_else(|| unknown(&fetched));
            }
            fetched.attempted = Some(Instant::now());
        }
        let result = fetch_jwks(http, url).await;
        let mut fetched = self.lock();
        match result {
            Ok(keys) => {
                fetched.keys = Arc::new(keys);
                fetched.at = Some(Instant::now());
                fetched.failed = None;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot fetch the JWT signing keys; the keys held (if any) still verify");
                fetched.failed = Some(match err {
                    JwtError::Keys(why) => why,
                    other => other.to_string(),
                });
            }
        }
        find(&fetched.keys, kid).ok_or_else(|| unknown(&fetched))
    }
}

fn find(keys: &[Key], kid: Option<&str>) -> Option<Key> {
    match kid {
        Some(kid) => keys.iter().find(|key| key.kid.as_deref() == Some(kid)),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
    .cloned()
}

/// GETs a JSON document of at most [`MAX_DOCUMENT_BYTES`] from a provider.
pub async fn fetch_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let mut response = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|err| format!("GET {url}: {err}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", response.status()));
    }
    let body = read_bounded(&mut response, MAX_DOCUMENT_BYTES)
        .await
        .map_err(|why| format!("GET {url}: {why}"))?;
    serde_json::from_slice(&body).map_err(|err| format!("GET {url}: not JSON: {err}"))
}

/// A provider's answer body, read chunk by chunk and refused as soon as it
/// passes `limit` bytes (a provider, or whoever answers in its place, does
/// not get to fill the master's memory).
pub async fn read_bounded(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| err.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<Vec<Key>, JwtError> {
    let document = fetch_json(http, url).await.map_err(JwtError::Keys)?;
    let text = serde_json::to_vec(&document).map_err(|err| JwtError::Keys(err.to_string()))?;
    parse_jwks(&text).map_err(|why| JwtError::Keys(format!("{url}: {why}")))
}

/// The usable signature keys of a JWKS document. Keys warren cannot use
/// (encryption keys, symmetric or unknown key types, unknown algorithms)
/// are skipped, not fatal: providers publish such keys beside theirs.
fn parse_jwks(text: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let document: Document =
        serde_json::from_slice(text).map_err(|err| format!("not a JWKS document: {err}"))?;
    let keys: Vec<Key> = document
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| key_of(&jwk))
        .collect();
    if keys.is_empty() {
        return Err("no RSA or EC signature key in it".into());
    }
    Ok(keys)
}

/// A JWK as a verification key: RSA and EC public keys for signatures only,
/// each with the algorithms its type allows (narrowed to its own `alg`).
fn key_of(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let algorithms = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        // Symmetric keys have no place in a public key set; Ed25519 is not
        // offered by the providers warren is used with.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => algorithms,
        Some(own) => {
            let own = match own {
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::RS384 => Algorithm::RS384,
                KeyAlgorithm::RS512 => Algorithm::RS512,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::ES384 => Algorithm::ES384,
                _ => return None,
            };
            if !algorithms.contains(&own) {
                return None;
            }
            vec![own]
        }
    };
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// A token's verified claims.
#[derive(Debug, Clone)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    /// A claim's value when it is a string.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    /// Whether a claim is `value`, or is an array holding it.
    pub fn contains(&self, name: &str, value: &str) -> bool {
        match self.0.get(name) {
            Some(Value::String(text)) => text == value,
            Some(Value::Array(items)) => items.iter().any(|item| item.as_str() == Some(value)),
            _ => false,
        }
    }

    /// When the token stops being accepted, in milliseconds since the
    /// epoch: its `exp` plus the [`LEEWAY`] the check allowed it (so a
    /// token that passed is not refused as expired by the cache a moment
    /// later).
    pub fn expires_at_ms(&self) -> i64 {
        self.0
            .get("exp")
            .and_then(Value::as_f64)
            .map_or(0, |exp| ((exp + LEEWAY.as_secs_f64()) * 1000.0) as i64)
    }
}

/// Checks tokens for one issuer and audience against one key set.
pub struct Verifier {
    keys: KeySet,
    issuer: String,
    audience: String,
}

impl Verifier {
    pub fn new(keys: KeySet, issuer: &str, audience: &str) -> Verifier {
        Verifier {
            keys,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The claims of `token` once its key, algorithm, signature, `iss`,
    /// `aud`, `exp` (and `nbf`, `iat` when present) are right.
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|err| JwtError::Malformed(err.to_string()))?;
        refuse_critical_extensions(token)?;
        let key = self.keys.key_for(header.kid.as_deref()).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm(header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(refusal)?;
        let claims = Claims(data.claims);
        // One issuer, as a string (the library also takes a list).
        if !claims.0.get("iss").is_some_and(Value::is_string) {
            return Err(JwtError::Claims("`iss` is not a string".into()));
        }
        check_issued_at(&claims)?;
        Ok(claims)
    }
}

/// A header listing extensions the verifier must understand (`crit`, RFC
/// 7515 4.1.11) is refused: warren understands none.
fn refuse_critical_extensions(token: &str) -> Result<(), JwtError> {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap_or("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtError::Malformed("the header is not base64url".into()))?;
    let fields: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("the header is not a JSON object".into()))?;
    if fields.contains_key("crit") {
        return Err(JwtError::Malformed(
            "the header names critical extensions (`crit`), which warren does not support".into(),
        ));
    }
    Ok(())
}

/// `iat`, when present, is a number and not in the future.
pub fn check_issued_at(claims: &Claims) -> Result<(), JwtError> {
    let Some(iat) = claims.0.get("iat") else {
        return Ok(());
    };
    let iat = iat
        .as_f64()
        .ok_or_else(|| JwtError::Claims("`iat` is not a number".into()))?;
    let now = jsonwebtoken::get_current_timestamp() as f64;
    if iat > now + LEEWAY.as_secs_f64() {
        return Err(JwtError::Claims("`iat` is in the future".into()));
    }
    Ok(())
}

fn refusal(err: jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidSignature => JwtError::Signature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::Claims("not valid yet (`nbf`)".into()),
        ErrorKind::InvalidIssuer => JwtError::Claims("wrong issuer (`iss`)".into()),
        ErrorKind::InvalidAudience => JwtError::Claims("wrong audience (`aud`)".into()),
        ErrorKind::MissingRequiredClaim(claim) => {
            JwtError::Claims(format!("the `{claim}` claim is missing"))
        }
        ErrorKind::InvalidAlgorithm => JwtError::Claims("wrong algorithm".into()),
        _ => JwtError::Malformed(err.to_string()),
    }
}

/// AWS Application Load Balancer's `x-amzn-oidc-data` header: a JWT the
/// load balancer signs (ES256) after its own OpenID login. It is not quite
/// a JWS: its parts are base64url *with* padding, so the signature is
/// checked here over the parts exactly as sent ([`jsonwebtoken::crypto`]
/// does the ECDSA), and the key is a PEM at a per-`kid` URL
/// (`https://public-keys.auth.elb.{region}.amazonaws.com/{kid}`). The
/// header must name the configured load balancer (`signer`, its ARN) and
/// not be expired (`exp`, in the header).
pub struct AlbVerifier {
    signer: String,
    key_url: String,
    http: reqwest::Client,
    keys: Mutex<AlbKeys>,
}

#[derive(Default)]
struct AlbKeys {
    by_kid: std::collections::HashMap<String, DecodingKey>,
    /// When a fetch last found no key.
    last_miss: Option<Instant>,
}

/// Keys kept at most (ALB rotates them; a full cache starts over).
const ALB_MAX_KEYS: usize = 64;

/// The AWS URL of an ALB's public keys.
pub const ALB_KEY_URL: &str = "https://public-keys.auth.elb.{region}.amazonaws.com/{kid}";

impl AlbVerifier {
    /// `key_url` with `{region}` already filled in; `{kid}` is filled per
    /// token.
    pub fn new(signer: &str, key_url: &str, http: reqwest::Client) -> AlbVerifier {
        AlbVerifier {
            signer: signer.to_string(),
            key_url: key_url.to_string(),
            http,
            keys: Mutex::new(AlbKeys::default()),
        }
    }

    /// The claims of a header value, with `iss` from its JWT header (the
    /// provider the load balancer logged the user in with).
    pub async fn verify(&self, value: &str) -> Result<Claims, JwtError> {
        use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
        const LENIENT: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            general_purpose::GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        use base64::Engine as _;
        let parts: Vec<&str> = value.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            return Err(JwtError::Malformed("not three parts".into()));
        };
        let json = |part: &str, what: &str| -> Result<Map<String, Value>, JwtError> {
            let bytes = LENIENT
                .decode(part)
                .map_err(|_| JwtError::Malformed(format!("the {what} is not base64url")))?;
            serde_json::from_slice(&bytes)
                .map_err(|_| JwtError::Malformed(format!("the {what} is not a JSON object")))
        };
        let head = json(header, "header")?;
        if head.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(JwtError::Claims("the header's `alg` is not ES256".into()));
        }
        if head.get("signer").and_then(Value::as_str) != Some(self.signer.as_str()) {
            return Err(JwtError::Claims(
                "signed by another load balancer (`signer`)".into(),
            ));
        }
        let kid = head
            .get("kid")
            .and_then(Value::as_str)
            .filter(|kid| {
                (1..=64).contains(&kid.len())
                    && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            .ok_or_else(|| JwtError::Malformed("no usable `kid`".into()))?;
        let key = self.key(kid).await?;
        let message = format!("{header}.{payload}");
        let signature = signature.trim_end_matches('=');
        let valid =
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, Algorithm::ES256)
                .map_err(|err| JwtError::Malformed(err.to_string()))?;
        if !valid {
            return Err(JwtError::Signature);
        }
        let mut claims = json(payload, "payload")?;
        let now = jsonwebtoken::get_current_timestamp() as f64;
        let exp = head
            .get("exp")
            .or_else(|| claims.get("exp"))
            .and_then(Value::as_f64)
            .ok_or_else(|| JwtError::Claims("the `exp` claim is missing".into()))?;
        if exp + LEEWAY.as_secs_f64() < now {
            return Err(JwtError::Expired);
        }
        claims.insert("exp".into(), Value::from(exp as i64));
        if let Some(iss) = head.get("iss") {
            claims.insert("iss".into(), iss.clone());
        }
        Ok(Claims(claims))
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, JwtError> {
        let mut keys = self.keys.lock().await;
        if let Some(key) = keys.by_kid.get(kid) {
            return Ok(key.clone());
        }
        // A new kid fetches its key; after a fetch that found none, made-up
        // kids are refused without fetching for REFETCH_AFTER.
        if keys
            .last_miss
            .is_some_and(|at| at.elapsed() < REFETCH_AFTER)
        {
            return Err(JwtError::UnknownKey);
        }
        let url = self.key_url.replace("{kid}", kid);
        let mut response = self.http.get(&url).send().await.map_err(|err| {
            keys.last_miss = Some(Instant::now());
            JwtError::Keys(format!("GET {url}: {err}"))
        })?;
        if matches!(
            response.status(),
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::FORBIDDEN
        ) {
            keys.last_miss = Some(Instant::now());
            return Err(JwtError::UnknownKey);
        }
        let fetched = async {
            if !response.status().is_success() {
                return Err(JwtError::Keys(format!(
                    "GET {url}: HTTP {}",
                    response.status()
                )));
            }
            let pem = read_bounded(&mut response, 16 * 1024)
                .await
                .map_err(|why| JwtError::Keys(format!("GET {url}: {why}")))?;
            DecodingKey::from_ec_pem(&pem)
                .map_err(|err| JwtError::Keys(format!("GET {url}: not an EC public key: {err}")))
        }
        .await;
        // Any failed fetch, like a missing key, holds off the next.
        let key = fetched.inspect_err(|_| keys.last_miss = Some(Instant::now()))?;
        if keys.by_kid.len() >= ALB_MAX_KEYS {
            keys.by_kid.clear();
        }
        keys.by_kid.insert(kid.to_string(), key.clone());
        Ok(key)
    }
}

/// The rule for every URL warren fetches from or sends a secret to (an
/// issuer, its endpoints, a JWKS or key URL): https, or http on a
/// loopback address (a provider on the same host, the tests').
pub fn check_secure_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|err| format!("{text:?}: {err}"))?;
    let loopback = url.host_str().is_some_and(|host| {
        host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if url.scheme() == "https" || (url.scheme() == "http" && loopback) {
        Ok(())
    } else {
        Err(format!(
            "{text:?}: must be https:// (http:// only on a loopback address)"
        ))
    }
}

/// Reads a secret from a file (mode and owner are the operator's business;
/// trailing newlines are not part of it).
pub fn read_secret_file(path: &PathBuf) -> std::io::Result<Vec<u8>> {
    let mut secret = std::fs::read(path)?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(exp_offset: i64) -> Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        serde_json::json!({
            "iss": "https://issuer.test", "aud": "warren", "sub": "s-1",
            "exp": now + exp_offset, "iat": now, "preferred_username": "alice",
            "groups": ["a", "warren-admins"],
        })
    }

    fn hs256(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign")
    }

    fn verifier() -> Verifier {
        Verifier::new(
            KeySet::secret(SECRET).expect("keys"),
            "https://issuer.test",
            "warren",
        )
    }

    #[tokio::test]
    async fn a_good_token_passes_and_its_claims_are_read() {
        let claims = verifier().verify(&hs256(&claims(600))).await.expect("ok");
        assert_eq!(claims.string("preferred_username"), Some("alice"));
        assert!(claims.contains("groups", "warren-admins"));
        assert!(!claims.contains("groups", "warren"));
        assert!(claims.expires_at_ms() > 0);
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_with_the_reason() {
        let v = verifier();
        assert!(matches!(
            v.verify(&hs256(&claims(-600))).await,
            Err(JwtError::Expired)
        ));
        let mut other = claims(600);
        other["aud"] = "someone-else".into();
        assert!(matches!(
            v.verify(&hs256(&other)).await,
            Err(JwtError::Claims(_))
        ));
        let mut other = claims(600);
        other["iss"] = "https://evil.test".into();
        assert!(matches!(
            v.verify(&hs256(&other)).await,
            Err(JwtError::Claims(_))
        ));
        let mut other = claims(600);
        other["iat"] = (jsonwebtoken::get_current_timestamp() + 3600).into();
        assert!(matches!(
            v.verify(&hs256(&other)).await,
            Err(JwtError::Claims(_))
        ));
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(600),
            &EncodingKey::from_secret(b"another secret, also 32 bytes long"),
        )
        .expect("sign");
        assert!(matches!(v.verify(&forged).await, Err(JwtError::Signature)));
        let critical = {
            let mut header = Header::new(Algorithm::HS256);
            header.crit = Some(vec!["exp".into()]);
            jsonwebtoken::encode(&header, &claims(600), &EncodingKey::from_secret(SECRET))
                .expect("sign")
        };
        assert!(matches!(
            v.verify(&critical).await,
            Err(JwtError::Malformed(_))
        ));
        let mut listed = claims(600);
        listed["iss"] = serde_json::json!(["https://issuer.test"]);
        assert!(matches!(
            v.verify(&hs256(&listed)).await,
            Err(JwtError::Claims(_))
        ));
        for junk in ["", "a.b", "a.b.c", "not a token at all"] {
            assert!(matches!(v.verify(junk).await, Err(JwtError::Malformed(_))));
        }
        // alg: none, by hand (no library signs one).
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims(600).to_string())
        );
        assert!(matches!(v.verify(&none).await, Err(JwtError::Malformed(_))));
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(KeySet::secret(b"short").is_err());
    }

    #[test]
    fn jwks_keep_only_signature_keys_and_their_own_algorithm() {
        let text = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "sig", "alg": "RS256", "n": "sXchDaQebSXLrvZ1wl0mU4qIYwbUE2V7aYcI9_y71SQ", "e": "AQAB"},
            {"kty": "weird", "kid": "x"},
        ]})
        .to_string();
        let keys = parse_jwks(text.as_bytes()).expect("parsed");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig"));
        assert_eq!(keys[0].algorithms, vec![Algorithm::RS256]);
        assert!(parse_jwks(br#"{"keys": []}"#).is_err());
        assert!(parse_jwks(b"nonsense").is_err());
    }
}
