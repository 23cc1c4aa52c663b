//! OpenID Connect login: the authorization code flow with PKCE, as a
//! confidential client.
//!
//! [`Oidc::start`] makes a fresh `state`, `nonce` and PKCE verifier, keeps
//! them (in memory, single use, [`LOGIN_TTL`]) and answers the provider's
//! authorization URL; the browser's cookie carries `state` too, so only the
//! browser that started a login can finish it. [`Oidc::finish`] takes the
//! pending login out (a replayed or forged `state` finds nothing), checks
//! the provider's `iss` answer (RFC 9207, against mix-up), exchanges the
//! code at the token endpoint with the verifier and the client's secret,
//! and verifies the ID token: signature by a key of the provider's JWKS
//! (see [`super::jwt`]), `iss`, `aud` = the client id (`azp` too when
//! several audiences), `exp`, `iat` (present, not ahead) and `nonce`.
//!
//! Discovery (`<issuer>/.well-known/openid-configuration`) runs at the
//! first login and again after [`DISCOVERY_MAX_AGE`], so a provider that
//! is down when warren starts delays nothing but logins.

use super::external::IdentityPolicy;
use super::jwt::{self, Claims, KeySet, Verifier};
use super::AuthError;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a started login may take to come back.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

/// How long a discovery document is used before it is read again.
pub const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(3600);

/// Logins started and not finished kept at most (a flood of starts evicts
/// the oldest, it does not grow memory).
const MAX_PENDING: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer URL, exactly as the provider's tokens name it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Space-separated; `openid` is added if missing.
    pub scopes: String,
    pub policy: IdentityPolicy,
}

/// What discovery told about the provider.
/// How long a failed discovery is answered from memory (a provider that is
/// down is not asked again by every login meanwhile).
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

struct Provider {
    authorization_endpoint: String,
    token_endpoint: String,
    verifier: Verifier,
    fetched: Instant,
}

/// A login started and not yet finished.
struct Pending {
    nonce: String,
    code_verifier: String,
    redirect_uri: String,
    return_to: String,
}

/// A login's first step: where to send the browser, and the `state` its
/// cookie must carry back.
pub struct Started {
    pub location: String,
    pub state: String,
}

/// A finished login: the ID token's verified claims and where the user
/// wanted to go.
pub struct Finished {
    pub claims: Claims,
    pub return_to: String,
}

pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Option<Arc<Provider>>>,
    /// The last discovery that failed: when, and why.
    failed: std::sync::Mutex<Option<(Instant, String)>>,
    pending: moka::sync::Cache<String, Arc<Pending>>,
}

impl Oidc {
    pub fn new(config: OidcConfig, http: reqwest::Client) -> Oidc {
        Oidc {
            config,
            http,
            provider: tokio::sync::Mutex::new(None),
            failed: std::sync::Mutex::new(None),
            pending: moka::sync::Cache::builder()
                .max_capacity(MAX_PENDING)
                .time_to_live(LOGIN_TTL)
                .build(),
        }
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The provider's endpoints and keys, from discovery.
    async fn provider(&self) -> Result<Arc<Provider>, AuthError> {
        let recent_failure = || {
            let failed = self
                .failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            failed
                .as_ref()
                .filter(|(at, _)| at.elapsed() < DISCOVERY_RETRY)
                .map(|(_, why)| AuthError::Provider(why.clone()))
        };
        let mut cached = self.provider.lock().await;
        if let Some(provider) = cached.as_ref() {
            // Fresh, or older while a new discovery keeps failing: a
            // provider that answered before goes on serving logins with
            // what it said then.
            if provider.fetched.elapsed() < DISCOVERY_MAX_AGE || recent_failure().is_some() {
                return Ok(provider.clone());
            }
        }
        // A failure moments ago (perhaps while this login waited).
        if let Some(err) = recent_failure() {
            return Err(err);
        }
        match self.discover().await {
            Ok(provider) => {
                *cached = Some(provider.clone());
                Ok(provider)
            }
            Err(err) => {
                let why = match &err {
                    AuthError::Provider(why) => why.clone(),
                    other => other.to_string(),
                };
                *self
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((Instant::now(), why));
                // A provider that answered before goes on serving logins
                // with what it said then.
                match cached.as_ref() {
                    Some(provider) => Ok(provider.clone()),
                    None => Err(err),
                }
            }
        }
    }

    /// Reads the discovery document.
    async fn discover(&self) -> Result<Arc<Provider>, AuthError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let document = jwt::fetch_json(&self.http, &url)
            .await
            .map_err(AuthError::Provider)?;
        let field = |name: &str| {
            let value = document
                .get(name)
                .and_then(|value| value.as_str())
                .map(str::to_string)
                .ok_or_else(|| AuthError::Provider(format!("{url}: no `{name}`")))?;
            // The secret goes to the token endpoint, the browser to the
            // authorization endpoint: never over plain http elsewhere.
            super::jwt::check_secure_url(&value)
                .map_err(|why| AuthError::Provider(format!("{url}: `{name}` {why}")))?;
            Ok::<_, AuthError>(value)
        };
        let issuer = field("issuer")?;
        if issuer != self.config.issuer {
            return Err(AuthError::Provider(format!(
                "{url} names the issuer {issuer:?}, not the configured {:?}",
                self.config.issuer
            )));
        }
        let provider = Arc::new(Provider {
            authorization_endpoint: field("authorization_endpoint")?,
            token_endpoint: field("token_endpoint")?,
            verifier: Verifier::new(
                KeySet::jwks_url(&field("jwks_uri")?, self.http.clone()),
                &self.config.issuer,
                &self.config.client_id,
            ),
            fetched: Instant::now(),
        });
        Ok(provider)
    }

    /// Starts a login that comes back to `redirect_uri` (warren's callback)
    /// and then goes on to `return_to` (a path on this server).
    pub async fn start(
        &self,
        redirect_uri: String,
        return_to: String,
    ) -> Result<Started, AuthError> {
        let provider = self.provider().await?;
        let state = random_text()?;
        let nonce = random_text()?;
        let code_verifier = random_text()?;
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(code_verifier.as_bytes()));
        let mut scopes = self.config.scopes.clone();
        if !scopes.split_whitespace().any(|scope| scope == "openid") {
            scopes = format!("openid {scopes}");
        }
        let location = reqwest::Url::parse_with_params(
            &provider.authorization_endpoint,
            &[
                ("response_type", "code"),
                ("client_id", self.config.client_id.as_str()),
                ("redirect_uri", redirect_uri.as_str()),
                ("scope", scopes.trim()),
                ("state", state.as_str()),
                ("nonce", nonce.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .map_err(|err| AuthError::Provider(format!("bad authorization_endpoint: {err}")))?;
        self.pending.insert(
            state.clone(),
            Arc::new(Pending {
                nonce,
                code_verifier,
                redirect_uri,
                return_to,
            }),
        );
        Ok(Started {
            location: location.to_string(),
            state,
        })
    }

    /// Forgets the login `state` names (the provider refused it).
    pub fn abandon(&self, state: &str) {
        self.pending.invalidate(state);
    }

    /// Finishes the login `state` names with the provider's `code` (and
    /// `iss`, if it sent one). The pending login is used up whatever
    /// happens, so a code or state is never tried twice.
    pub async fn finish(
        &self,
        state: &str,
        code: &str,
        iss: Option<&str>,
    ) -> Result<Finished, AuthError> {
        let pending = self.pending.remove(state).ok_or_else(|| {
            AuthError::LoginState(
                "unknown, used or expired login state; start the login again".into(),
            )
        })?;
        if iss.is_some_and(|iss| iss != self.config.issuer) {
            return Err(AuthError::LoginState(
                "the answer names another issuer (`iss`)".into(),
            ));
        }
        let provider = self.provider().await?;
        let id_token = self.exchange(&provider, code, &pending).await?;
        let claims = provider.verifier.verify(&id_token).await?;
        if claims.string("nonce") != Some(pending.nonce.as_str()) {
            return Err(jwt::JwtError::Claims("wrong `nonce`".into()).into());
        }
        if !claims.0.contains_key("iat") {
            return Err(jwt::JwtError::Claims("the `iat` claim is missing".into()).into());
        }
        let several = claims
            .0
            .get("aud")
            .and_then(|aud| aud.as_array())
            .is_some_and(|aud| aud.len() > 1);
        if several && claims.string("azp") != Some(self.config.client_id.as_str()) {
            return Err(jwt::JwtError::Claims("`azp` is not this client".into()).into());
        }
        Ok(Finished {
            claims,
            return_to: pending.return_to.clone(),
        })
    }

    /// The code for an ID token, at the token endpoint.
    async fn exchange(
        &self,
        provider: &Provider,
        code: &str,
        pending: &Pending,
    ) -> Result<String, AuthError> {
        // client_secret_basic: both parts form-encoded first (RFC 6749 2.3.1).
        let credentials = format!(
            "{}:{}",
            form_encode(&self.config.client_id),
            form_encode(&self.config.client_secret)
        );
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        let mut response = self
            .http
            .post(&provider.token_endpoint)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", pending.redirect_uri.as_str()),
                ("code_verifier", pending.code_verifier.as_str()),
            ])
            .send()
            .await
            .map_err(|err| AuthError::Provider(format!("token endpoint: {err}")))?;
        let status = response.status();
        let body = jwt::read_bounded(&mut response, jwt::MAX_DOCUMENT_BYTES)
            .await
            .map_err(|why| AuthError::Provider(format!("token endpoint: {why}")))?;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if !status.is_success() {
            // `invalid_grant` (a used, expired or foreign code) is the
            // client's; anything else is the provider's.
            let error = json.get("error").and_then(|e| e.as_str()).unwrap_or("");
            return Err(match error {
                "invalid_grant" => jwt::JwtError::Claims(
                    "the provider refused the code (invalid_grant: used, expired or not ours)"
                        .into(),
                )
                .into(),
                _ => AuthError::Provider(format!(
                    "token endpoint answered HTTP {status} {}",
                    printable(error)
                )),
            });
        }
        json.get("id_token")
            .and_then(|token| token.as_str())
            .map(str::to_string)
            .ok_or_else(|| AuthError::Provider("token endpoint: no id_token in the answer".into()))
    }
}

/// 256 random bits, base64url (for `state`, `nonce` and the PKCE verifier:
/// 43 characters, within PKCE's 43-128).
fn random_text() -> Result<String, AuthError> {
    Ok(super::token::new_session_token()?)
}

/// `application/x-www-form-urlencoded` of one value.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// At most 100 printable ASCII characters of a provider's text.
pub fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_keeps_only_unreserved_characters() {
        assert_eq!(form_encode("a b:c%d+é"), "a+b%3Ac%25d%2B%C3%A9");
    }

    #[test]
    fn random_texts_fit_pkce() {
        let text = random_text().expect("random");
        assert_eq!(text.len(), 43);
        assert_ne!(text, random_text().expect("random"));
    }
}
