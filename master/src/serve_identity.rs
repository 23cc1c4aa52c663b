//! `warren serve`'s identity flags (`--password-login`, `--oidc-*`,
//! `--jwt-*`, `--identity-header*`) checked and turned into the HTTP
//! layer's [`Identities`]. Every mistake is refused at start, naming the
//! flag, rather than found at the first login.

use crate::auth::external::IdentityPolicy;
use crate::auth::jwt::{read_secret_file, AlbVerifier, KeySet, Verifier};
use crate::auth::oidc::{Oidc, OidcConfig};
use crate::auth::Mode;
use crate::cli::{IdentityHeaderFormat, ServeArgs};
use crate::http::identity::{HeaderFormat, Identities, IdentityHeader, JwtBearer};
use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The environment variable that may hold the OpenID client secret.
pub const OIDC_SECRET_VAR: &str = "WARREN_OIDC_CLIENT_SECRET";

pub fn identities(args: &ServeArgs) -> anyhow::Result<Identities> {
    let outside =
        args.oidc_issuer.is_some() || jwt_keys_given(args) || args.identity_header.is_some();
    if outside && args.mode == Mode::Single {
        bail!("--oidc-*, --jwt-* and --identity-header are for --mode multi (single-user mode has one implicit user)");
    }
    let http = reqwest::Client::builder()
        .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot set up the HTTPS client for the identity provider")?;
    let oidc = match &args.oidc_issuer {
        None => None,
        Some(issuer) => Some(Arc::new(oidc(args, issuer, http.clone())?)),
    };
    let jwt_verifier = || jwt_verifier(args, http.clone());
    let bearer = args.jwt_bearer.unwrap_or(
        !(args.identity_header.is_some()
            && args.identity_header_format == IdentityHeaderFormat::Jwt),
    );
    if bearer && args.jwt_bearer == Some(true) && !jwt_keys_given(args) {
        bail!("--jwt-bearer true needs a key source: --jwt-secret-file, --jwt-jwks-url or --jwt-jwks-file");
    }
    let jwt = jwt_verifier()?
        .filter(|_| bearer)
        .map(|verifier| JwtBearer {
            verifier,
            policy: IdentityPolicy {
                username_claim: args.jwt_username_claim.clone(),
                admin_claim: args.jwt_admin_claim.clone(),
                create_users: args.jwt_create_users,
            },
        });
    let header = match &args.identity_header {
        None => None,
        Some(name) => {
            if args.trusted_proxies.is_empty() {
                bail!("--identity-header needs --trusted-proxy: the header is believed only from those peers");
            }
            let format = match args.identity_header_format {
                IdentityHeaderFormat::Plain => HeaderFormat::Plain,
                IdentityHeaderFormat::Alb => {
                    let (Some(arn), Some(region)) = (&args.alb_arn, &args.alb_region) else {
                        bail!("--identity-header-format alb needs --alb-arn and --alb-region");
                    };
                    if region.is_empty()
                        || !region
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        bail!("--alb-region {region:?} is not an AWS region name");
                    }
                    if !args.alb_key_url.contains("{kid}") {
                        bail!("--alb-key-url must contain {{kid}}");
                    }
                    HeaderFormat::Alb(AlbVerifier::new(
                        arn,
                        &args.alb_key_url.replace("{region}", region),
                        http.clone(),
                    ))
                }
                IdentityHeaderFormat::Jwt => HeaderFormat::Jwt(jwt_verifier()?.context(
                    "--identity-header-format jwt needs a key source: --jwt-secret-file, \
                     --jwt-jwks-url or --jwt-jwks-file (with --jwt-issuer and --jwt-audience)",
                )?),
            };
            Some(IdentityHeader {
                name: axum::http::HeaderName::from_bytes(name.as_bytes())
                    .context("--identity-header")?,
                format,
                policy: IdentityPolicy {
                    username_claim: args.jwt_username_claim.clone(),
                    admin_claim: args.jwt_admin_claim.clone(),
                    create_users: args.identity_header_create_users,
                },
            })
        }
    };
    let header_uses_keys = matches!(
        header.as_ref().map(|header| &header.format),
        Some(HeaderFormat::Jwt(_))
    );
    if jwt_keys_given(args) && jwt.is_none() && !header_uses_keys {
        bail!("--jwt-* keys are given but nothing uses them: --jwt-bearer is false and there is no --identity-header-format jwt");
    }
    if !args.password_login && oidc.is_none() && jwt.is_none() && header.is_none() {
        warn!(
            "--password-login off and no other way in: only API tokens (`warren user token`) work"
        );
    }
    info!(
        password_login = args.password_login,
        oidc = oidc.is_some(),
        jwt_bearer = jwt.is_some(),
        identity_header = args.identity_header.as_deref().unwrap_or("-"),
        "ways in"
    );
    Ok(Identities {
        password_login: args.password_login,
        oidc,
        jwt,
        header,
    })
}

fn jwt_keys_given(args: &ServeArgs) -> bool {
    args.jwt_secret_file.is_some() || args.jwt_jwks_url.is_some() || args.jwt_jwks_file.is_some()
}

/// The JWT verifier of `--jwt-*`, if a key source is given.
fn jwt_verifier(args: &ServeArgs, http: reqwest::Client) -> anyhow::Result<Option<Verifier>> {
    let sources = [
        args.jwt_secret_file.is_some(),
        args.jwt_jwks_url.is_some(),
        args.jwt_jwks_file.is_some(),
    ]
    .iter()
    .filter(|given| **given)
    .count();
    if sources == 0 {
        if args.jwt_issuer.is_some() || args.jwt_audience.is_some() {
            bail!("--jwt-issuer/--jwt-audience need a key source: --jwt-secret-file, --jwt-jwks-url or --jwt-jwks-file");
        }
        return Ok(None);
    }
    if sources > 1 {
        bail!("give one of --jwt-secret-file, --jwt-jwks-url and --jwt-jwks-file");
    }
    let (Some(issuer), Some(audience)) = (&args.jwt_issuer, &args.jwt_audience) else {
        bail!("JWTs need --jwt-issuer and --jwt-audience: a token for another service must not pass here");
    };
    let keys = if let Some(file) = &args.jwt_secret_file {
        let secret = read_secret_file(file)
            .with_context(|| format!("cannot read --jwt-secret-file {}", file.display()))?;
        KeySet::secret(&secret).context("--jwt-secret-file")?
    } else if let Some(file) = &args.jwt_jwks_file {
        KeySet::jwks_file(file).context("--jwt-jwks-file")?
    } else if let Some(url) = &args.jwt_jwks_url {
        KeySet::jwks_url(url, http)
    } else {
        return Ok(None);
    };
    Ok(Some(Verifier::new(keys, issuer, audience)))
}

fn oidc(args: &ServeArgs, issuer: &str, http: reqwest::Client) -> anyhow::Result<Oidc> {
    let client_id = args
        .oidc_client_id
        .clone()
        .context("--oidc-issuer needs --oidc-client-id")?;
    let client_secret = match &args.oidc_client_secret_file {
        Some(file) => {
            let secret = read_secret_file(file).with_context(|| {
                format!("cannot read --oidc-client-secret-file {}", file.display())
            })?;
            let text = String::from_utf8(secret)
                .context("--oidc-client-secret-file: the secret is not UTF-8")?;
            text.lines().next().unwrap_or("").to_string()
        }
        None => std::env::var(OIDC_SECRET_VAR).unwrap_or_default(),
    };
    if client_secret.is_empty() {
        bail!("--oidc-issuer needs the client secret: --oidc-client-secret-file FILE or {OIDC_SECRET_VAR}");
    }
    if args.public_url.is_none() {
        warn!("--oidc-issuer without --public-url: the redirect URI is built from each request's Host header; set --public-url to the address registered at the provider");
    }
    Ok(Oidc::new(
        OidcConfig {
            issuer: issuer.to_string(),
            client_id,
            client_secret,
            scopes: args.oidc_scopes.clone(),
            policy: IdentityPolicy {
                username_claim: args.oidc_username_claim.clone(),
                admin_claim: args.oidc_admin_claim.clone(),
                create_users: args.oidc_create_users,
            },
        },
        http,
    ))
}
