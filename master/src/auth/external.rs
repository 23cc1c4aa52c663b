//! Identity from outside: the warren user an OpenID provider, a JWT bearer
//! token or a trusted proxy vouches for.
//!
//! Every way in ends here, so the rest of warren sees the same users,
//! sessions, cache, revocation, audit and roles whichever way a user came:
//!
//! - a user is keyed by `(issuer, subject)` (table `external_identities`),
//!   never by a name: a name the provider gives to someone else later
//!   does not reach the first person's files;
//! - an unknown identity becomes a new user (with a password hash no
//!   password matches) unless the operator turned that off; its name comes
//!   from a configured claim, and a name already taken, by a local user or
//!   another identity, is a clear refusal (409), never a merge;
//! - an optional claim makes the user an administrator or not, at each
//!   login (a change goes through the same path as an admin's, so every
//!   master drops the user's cached credentials);
//! - logins, refusals and creations are audited.
//!
//! JWT bearer tokens and identity headers are cached by the hash of what
//! was sent (the same cache as sessions and API tokens; a JWT until its
//! `exp`), so steady traffic costs no signature check and no query.

use super::jwt::Claims;
use super::password::EXTERNAL_PASSWORD_HASH;
use super::{token, Auth, AuthError, Client, CredentialKind, Principal};
use crate::store::{self, AuditEntry, NewUser, Role, StoreError, User, UserPatch};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::warn;

/// How one way in maps claims to a warren user.
#[derive(Debug, Clone)]
pub struct IdentityPolicy {
    /// The claim the username is taken from (`preferred_username`, `email`:
    /// its part before the `@`, `sub`, or any other string claim).
    pub username_claim: String,
    /// `(claim, value)`: with it, the user is an administrator exactly when
    /// the claim is `value` or an array holding it, at every login.
    pub admin_claim: Option<(String, String)>,
    /// Whether an unknown identity becomes a new user (else refused).
    pub create_users: bool,
}

impl Default for IdentityPolicy {
    fn default() -> Self {
        IdentityPolicy {
            username_claim: "preferred_username".into(),
            admin_claim: None,
            create_users: true,
        }
    }
}

/// Which way a user came in (for the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Oidc,
    Jwt,
    Header,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Oidc => "OpenID Connect",
            Via::Jwt => "JWT bearer token",
            Via::Header => "identity header",
        }
    }
}

/// Who an issuer says the caller is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub username: String,
    /// Administrator or not, when the policy maps a claim to the role.
    pub admin: Option<bool>,
    pub via: Via,
}

/// The most bytes of a subject kept (OpenID allows 255 ASCII characters).
const MAX_SUBJECT: usize = 255;

impl IdentityPolicy {
    /// The identity verified `claims` of `issuer` stand for.
    pub fn identity(&self, issuer: &str, claims: &Claims, via: Via) -> Result<Identity, AuthError> {
        let subject = claims
            .string("sub")
            .filter(|sub| !sub.is_empty() && sub.len() <= MAX_SUBJECT)
            .ok_or_else(|| AuthError::IdentityRefused("the token has no usable `sub`".into()))?;
        let raw = claims.string(&self.username_claim).ok_or_else(|| {
            AuthError::IdentityRefused(format!(
                "the token has no `{}` claim to take a username from",
                self.username_claim
            ))
        })?;
        let username = if self.username_claim == "email" {
            // An address the provider has not verified names nobody.
            if claims.0.get("email_verified") == Some(&serde_json::Value::Bool(false)) {
                return Err(AuthError::IdentityRefused(
                    "the identity provider has not verified this email address".into(),
                ));
            }
            raw.split('@').next().unwrap_or(raw)
        } else {
            raw
        };
        Ok(Identity {
            issuer: issuer.to_string(),
            subject: subject.to_string(),
            username: username.to_string(),
            admin: self
                .admin_claim
                .as_ref()
                .map(|(claim, value)| claims.contains(claim, value)),
            via,
        })
    }
}

impl Auth {
    /// The user `identity` is linked to, checked (not disabled) and with
    /// the role the policy maps; `None` if no user is linked yet.
    pub async fn known_identity(
        &self,
        identity: &Identity,
        client: &Client,
    ) -> Result<Option<User>, AuthError> {
        let Some(user) = self
            .store
            .user_by_identity(&identity.issuer, &identity.subject)
            .await?
        else {
            return Ok(None);
        };
        if user.disabled {
            return Err(self
                .refuse_identity(identity, client, "this account is disabled")
                .await);
        }
        Ok(Some(self.apply_role(user, identity, client).await?))
    }

    /// Creates the user for an identity no user is linked to yet, if the
    /// policy allows; `home_host` as for any new user.
    pub async fn create_for_identity(
        &self,
        identity: &Identity,
        policy: &IdentityPolicy,
        client: &Client,
        home_host: Option<&str>,
    ) -> Result<User, AuthError> {
        if !policy.create_users {
            return Err(self
                .refuse_identity(
                    identity,
                    client,
                    "no warren user is linked to this identity, and this server does not \
                     create users on first login; ask an administrator",
                )
                .await);
        }
        if !valid_username(&identity.username) {
            let why = format!(
                "the name {:?} from the identity provider is not a valid warren username \
                 (1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit)",
                identity.username.chars().take(80).collect::<String>()
            );
            return Err(self.refuse_identity(identity, client, &why).await);
        }
        let role = if identity.admin == Some(true) {
            Role::Admin
        } else {
            Role::User
        };
        let new = NewUser {
            username: &identity.username,
            password_hash: EXTERNAL_PASSWORD_HASH,
            role,
            home_host,
        };
        let user = match self
            .store
            .create_external_user(new, &identity.issuer, &identity.subject)
            .await
        {
            Ok(user) => user,
            // Another request created it meanwhile.
            Err(StoreError::Conflict("this outside identity")) => {
                return self
                    .known_identity(identity, client)
                    .await?
                    .ok_or(AuthError::Store(StoreError::Stale));
            }
            Err(StoreError::Conflict(_)) => {
                let why = format!(
                    "the username {:?} belongs to another warren account; an administrator \
                     must rename one of them (accounts are never merged)",
                    identity.username
                );
                self.refuse_identity(identity, client, &why).await;
                return Err(AuthError::UsernameTaken(why));
            }
            Err(err) => return Err(err.into()),
        };
        self.audit(AuditEntry {
            event: "user_created",
            actor_id: Some(user.id.to_string()),
            actor_name: Some(user.username.clone()),
            subject: Some(user.username.clone()),
            address: Some(client.address.to_string()),
            detail: Some(format!(
                "first {} login ({} {:?}, sub {:?}){}",
                identity.via.as_str(),
                issuer_label(identity.via),
                identity.issuer,
                identity.subject,
                if role == Role::Admin {
                    ", administrator by claim"
                } else {
                    ""
                }
            )),
        })
        .await;
        Ok(user)
    }

    /// Sets the role the identity's claims map to, if the policy maps one
    /// and it differs (the last active administrator is never demoted).
    async fn apply_role(
        &self,
        user: User,
        identity: &Identity,
        client: &Client,
    ) -> Result<User, AuthError> {
        let Some(admin) = identity.admin else {
            return Ok(user);
        };
        let role = if admin { Role::Admin } else { Role::User };
        if user.role == role {
            return Ok(user);
        }
        let patch = UserPatch {
            role: Some(role),
            ..Default::default()
        };
        match self.store.update_user(user.id, &patch).await {
            Ok(Some((_, after))) => {
                self.forget_user(user.id);
                self.audit(AuditEntry {
                    event: "user_updated",
                    actor_id: Some(user.id.to_string()),
                    actor_name: Some(user.username.clone()),
                    subject: Some(user.username.clone()),
                    address: Some(client.address.to_string()),
                    detail: Some(format!(
                        "role {} from the {}'s claims",
                        role.as_str(),
                        identity.via.as_str()
                    )),
                })
                .await;
                Ok(after)
            }
            Ok(None) => Err(AuthError::Store(StoreError::Stale)),
            Err(StoreError::LastAdmin) => {
                warn!(user = %user.username, "the identity provider no longer makes this user an administrator, but they are the last one: kept");
                Ok(user)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Audits a refused outside login and returns the refusal.
    pub async fn refuse_identity(
        &self,
        identity: &Identity,
        client: &Client,
        why: &str,
    ) -> AuthError {
        self.metrics.login("failure");
        self.audit(AuditEntry {
            event: "login_failed",
            actor_name: Some(identity.username.chars().take(64).collect()),
            address: Some(client.address.to_string()),
            detail: Some(format!(
                "{} ({} {:?}, sub {:?}): {why}",
                identity.via.as_str(),
                issuer_label(identity.via),
                identity.issuer,
                identity.subject
            )),
            ..Default::default()
        })
        .await;
        AuthError::IdentityRefused(why.to_string())
    }

    /// Audits a refused token or header that named nobody yet (a bad
    /// signature, an expired token, a header from an untrusted peer).
    pub async fn audit_refused_credential(&self, via: Via, client: &Client, why: &str) {
        self.metrics.login("failure");
        self.audit(AuditEntry {
            event: "login_failed",
            address: Some(client.address.to_string()),
            detail: Some(format!("{}: {why}", via.as_str())),
            ..Default::default()
        })
        .await;
    }

    /// Audits an outside login (a session opened by OpenID Connect, or a
    /// bearer token or identity header seen for the first time).
    pub async fn audit_external_login(&self, user: &User, identity: &Identity, client: &Client) {
        self.metrics.login("success");
        if identity.via != Via::Oidc {
            // An OpenID login records it with its session.
            if let Err(err) = self.store.record_login(user.id, store::now_ms()).await {
                warn!(error = %err, "cannot record the login time");
            }
        }
        self.audit(AuditEntry {
            event: "login",
            actor_id: Some(user.id.to_string()),
            actor_name: Some(user.username.clone()),
            subject: None,
            address: Some(client.address.to_string()),
            detail: Some(format!(
                "{} ({} {:?})",
                identity.via.as_str(),
                issuer_label(identity.via),
                identity.issuer
            )),
        })
        .await;
    }

    /// A cached caller for `key` (the hash of a bearer JWT or of an identity
    /// header), if still live.
    pub fn cached_external(&self, key: &str) -> Option<Result<Arc<Principal>, AuthError>> {
        let principal = self.cache.get(key)?;
        self.metrics.cache("hit");
        Some(self.check_live(principal, store::now_ms()))
    }

    /// The caller for a verified bearer JWT or identity header, cached
    /// under `key` until `expires_at` (ms since the epoch).
    pub fn admit_external(
        &self,
        user: &User,
        key: String,
        expires_at: i64,
        generation: u64,
    ) -> Result<Arc<Principal>, AuthError> {
        let now = store::now_ms();
        let principal = Arc::new(Principal::new(
            user,
            CredentialKind::External,
            key.clone(),
            expires_at,
            now,
            &self.config,
            **self.default_limits.load(),
        ));
        if self.generation.load(Ordering::Acquire) == generation {
            self.cache.insert(key.clone(), principal.clone());
            if self.generation.load(Ordering::Acquire) != generation {
                self.cache.invalidate(&key);
            }
        }
        self.check_live(principal, now)
    }

    /// The cache generation before a fill starts (see
    /// [`Auth::admit_external`]).
    pub fn generation(&self) -> u64 {
        self.metrics.cache("miss");
        self.generation.load(Ordering::Acquire)
    }
}

/// The cache key of a credential from outside: the SHA-256 of what was sent,
/// with a prefix per kind so that no two kinds share keys.
pub fn cache_key(kind: &str, value: &str) -> String {
    token::hash_token(&format!("{kind}\0{value}"))
}

fn issuer_label(via: Via) -> &'static str {
    match via {
        Via::Header => "header",
        Via::Oidc | Via::Jwt => "issuer",
    }
}

/// The rule of `check_username` (http::api), here so that names from
/// outside are checked before a user is created.
pub fn valid_username(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: serde_json::Value) -> Claims {
        match value {
            serde_json::Value::Object(map) => Claims(map),
            _ => unreachable!("an object"),
        }
    }

    #[test]
    fn identities_take_the_configured_claims() {
        let c = claims(json!({
            "sub": "abc", "preferred_username": "alice", "email": "al@example.test",
            "groups": ["staff", "warren-admins"],
        }));
        let mut policy = IdentityPolicy::default();
        let id = policy.identity("https://i", &c, Via::Oidc).expect("ok");
        assert_eq!(
            (id.subject.as_str(), id.username.as_str()),
            ("abc", "alice")
        );
        assert_eq!(id.admin, None);
        policy.username_claim = "email".into();
        policy.admin_claim = Some(("groups".into(), "warren-admins".into()));
        let id = policy.identity("https://i", &c, Via::Oidc).expect("ok");
        assert_eq!(id.username, "al");
        assert_eq!(id.admin, Some(true));
        policy.admin_claim = Some(("groups".into(), "nope".into()));
        assert_eq!(
            policy
                .identity("https://i", &c, Via::Oidc)
                .expect("ok")
                .admin,
            Some(false)
        );
        policy.username_claim = "nickname".into();
        assert!(policy.identity("https://i", &c, Via::Oidc).is_err());
        let no_sub = claims(json!({"preferred_username": "alice"}));
        assert!(IdentityPolicy::default()
            .identity("https://i", &no_sub, Via::Oidc)
            .is_err());
    }

    #[test]
    fn usernames_from_outside_follow_warren_rules() {
        for good in ["alice", "a.b-c_d", "x1"] {
            assert!(valid_username(good), "{good}");
        }
        for bad in ["", ".alice", "al ice", "al@ice", "ålice", &"a".repeat(65)] {
            assert!(!valid_username(bad), "{bad}");
        }
    }
}
