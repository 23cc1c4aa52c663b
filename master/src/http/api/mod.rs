//! `/api/v1`: the authenticated JSON API, and its OpenAPI document
//! generated from the handlers themselves (utoipa), so the document cannot
//! leave a route out.

mod activity;
mod admin;
mod apps;
mod auth;
mod conformance;
pub mod files;
mod hosts;
mod me;
mod oidc;
mod pool;
pub mod tasks;
pub mod terminals;
mod workspace;

use super::error::ErrorBody;
use super::AppState;
use crate::auth::Mode;
use crate::store::{self, Role, User};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "warren",
        description = "A multi-user workspace server. Authenticate with the `warren_session` \
                       cookie (set by `POST /auth/login`) or `Authorization: Bearer` with a \
                       session or API token. Every error is `{\"error\":{\"code\",\"message\"}}`."
    ),
    components(schemas(
        ErrorBody,
        crate::activity::Activity,
        crate::activity::ActivitySummary
    )),
    paths(
        files::list_root,
        files::get_file,
        files::put_file,
        files::delete_file,
        files::post_file,
        files::upload
    ),
    modifiers(&Security)
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                super::extract::SESSION_COOKIE,
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The `/api/v1` routes (admin routes only in multi-user mode) and the
/// OpenAPI document describing exactly those routes.
pub fn routes(mode: Mode) -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let mut api = OpenApiRouter::new()
        .merge(auth::routes())
        .merge(oidc::routes())
        .merge(me::routes())
        .merge(workspace::routes())
        .merge(tasks::routes())
        .merge(terminals::routes())
        .merge(apps::routes())
        .merge(activity::routes());
    if mode == Mode::Multi {
        api = api
            .merge(admin::routes())
            .merge(pool::routes())
            .merge(hosts::routes())
            .merge(apps::admin_routes())
            .merge(workspace::admin_routes())
            .merge(activity::admin_routes());
    }
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api)
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.info.license = None;
    doc.info.contact = None;
    conformance::complete(&mut doc, mode);
    doc.paths.paths.insert(
        "/api/v1/openapi.json".to_string(),
        utoipa::openapi::path::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .summary(Some("This document"))
                .response(
                    "200",
                    utoipa::openapi::Response::new("The OpenAPI 3 document"),
                ),
        ),
    );
    (router, doc)
}

/// A user as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    /// RFC 3339.
    pub created_at: String,
    pub last_login_at: Option<String>,
    /// The uid (and gid) of the user's processes and files when the
    /// server runs as root.
    pub uid: Option<i64>,
    pub limits: Limits,
    /// Several hosts: the host that holds the user's files (`null` for a
    /// lone host).
    pub home_host: Option<String>,
}

/// Per-user limits; `null` means the server default.
#[derive(Debug, Serialize, ToSchema)]
pub struct Limits {
    pub max_sessions: Option<i64>,
    pub storage_quota_bytes: Option<i64>,
    /// Entries (files, directories...) in the workspace.
    pub file_quota: Option<i64>,
    /// The administrator's overrides of the server's process limits
    /// (`null`: none; absent fields: the server's default).
    pub process: Option<store::LimitOverrides>,
}

/// The home host of a user created now (see
/// [`crate::store::Store::choose_home_host`]); `None` for a lone host,
/// where asking for one is an error.
pub async fn home_host_of_new_user(
    state: &AppState,
    wanted: Option<&str>,
) -> Result<Option<String>, super::ApiError> {
    let Some(cluster) = &state.cluster else {
        return match wanted {
            Some(_) => Err(super::ApiError::Unprocessable(
                "home_host: this server is not one of several hosts (--host-name)".into(),
            )),
            None => Ok(None),
        };
    };
    match state.auth.store().choose_home_host(wanted).await {
        Ok(Some(home)) => Ok(Some(home)),
        // No host up in the database's view (a stalled heartbeat): this
        // one is, answering this request. A user never goes without one.
        Ok(None) | Err(store::StoreError::BadHost(_)) if wanted.is_none() => {
            Ok(Some(cluster.name.to_string()))
        }
        Ok(None) => Ok(Some(cluster.name.to_string())),
        Err(err) => Err(err.into()),
    }
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        UserView {
            id: user.id,
            username: user.username.clone(),
            role: user.role,
            disabled: user.disabled,
            created_at: rfc3339(user.created_at),
            last_login_at: user.last_login_at.map(rfc3339),
            uid: user.uid,
            home_host: user.home_host.clone(),
            limits: Limits {
                max_sessions: user.max_sessions,
                storage_quota_bytes: user.storage_quota_bytes,
                file_quota: user.file_quota,
                process: user.limits,
            },
        }
    }
}

/// A login session as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: String,
    pub expires_at: String,
    pub last_seen_at: String,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    /// Whether this is the session making the request.
    pub current: bool,
}

impl SessionView {
    fn of(session: &store::SessionRow, current: Option<Uuid>) -> Self {
        SessionView {
            id: session.id,
            user_id: session.user_id,
            created_at: rfc3339(session.created_at),
            expires_at: rfc3339(session.expires_at),
            last_seen_at: rfc3339(session.last_seen_at),
            address: session.address.clone(),
            user_agent: session.user_agent.clone(),
            current: current == Some(session.id),
        }
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(clamp_ms(ms));
    humantime::format_rfc3339_millis(at).to_string()
}

/// Milliseconds since the epoch, clamped to what date formatters accept
/// (1970 to the end of 9999): a file's mtime is whatever a program set.
pub fn clamp_ms(ms: i64) -> u64 {
    const LAST: i64 = 253_402_300_799_000;
    ms.clamp(0, LAST).unsigned_abs()
}

/// Usernames: 1–64 ASCII letters, digits, `.`, `_`, `-`, starting with a
/// letter or digit (so they are safe in paths, logs and URLs, and compare
/// case-insensitively the same way in every database).
pub fn check_username(name: &str) -> Result<(), super::ApiError> {
    if crate::auth::external::valid_username(name) {
        Ok(())
    } else {
        Err(super::ApiError::Unprocessable(
            "usernames are 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
                .into(),
        ))
    }
}

/// Text shown to people (token names and the like) must look like what it
/// is: no control characters, no format characters (bidi overrides and
/// isolates, zero-width spaces and joiners, word joiners, byte-order marks,
/// tag characters), no line or paragraph separators, no private-use or
/// unassigned code points, and none of the blank "letters" (Hangul fillers)
/// that render as nothing. Refused with a clear 422.
pub fn check_display_text(what: &str, text: &str) -> Result<(), super::ApiError> {
    match text.chars().find(|&c| invisible(c)) {
        None => Ok(()),
        Some(c) => Err(super::ApiError::Unprocessable(format!(
            "{what} may not contain control, bidi, zero-width or other invisible characters \
             (found U+{:04X})",
            u32::from(c)
        ))),
    }
}

/// Whether `c` is invisible or changes how text around it is displayed.
fn invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    matches!(
        c.general_category(),
        G::Control
            | G::Format
            | G::LineSeparator
            | G::ParagraphSeparator
            | G::PrivateUse
            | G::Surrogate
            | G::Unassigned
    ) || matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}')
        // Variation selectors (combining marks that render as nothing).
        || matches!(c, '\u{180B}'..='\u{180F}' | '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}')
}

/// An integer field of a JSON body that also takes integral numbers
/// written with a fraction (`846.0`): JSON Schema's `integer`, which the
/// OpenAPI document promises, includes them; serde's integers do not.
/// Absent or `null`: `None`.
fn integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let out_of_range = || D::Error::custom(format!("{number} is out of range"));
    if let Some(n) = number.as_u64() {
        return T::try_from(n).map(Some).map_err(|_| out_of_range());
    }
    if let Some(n) = number.as_i64() {
        return T::try_from(n).map(Some).map_err(|_| out_of_range());
    }
    match number.as_f64() {
        // Within ±2^53 every integral f64 is exact.
        Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => {
            T::try_from(f as i64).map(Some).map_err(|_| out_of_range())
        }
        _ => Err(D::Error::custom(format!("{number} is not an integer"))),
    }
}

/// [`integer`] for fields of other modules' JSON bodies.
pub fn json_integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    integer(deserializer)
}

/// [`integer`] for PATCH fields, where `null` (reset) differs from absent
/// (unchanged).
fn double_option_integer<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    integer(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Numbers {
        #[serde(default, deserialize_with = "integer")]
        n: Option<u64>,
        #[serde(default, deserialize_with = "double_option_integer")]
        m: Option<Option<i64>>,
    }

    #[test]
    fn integers_in_json_bodies_follow_json_schema() {
        let parse = |json: &str| serde_json::from_str::<Numbers>(json).map(|v| (v.n, v.m));
        assert_eq!(parse("{}").ok(), Some((None, None)));
        assert_eq!(
            parse(r#"{"n":null,"m":null}"#).ok(),
            Some((None, Some(None)))
        );
        assert_eq!(
            parse(r#"{"n":846,"m":-3}"#).ok(),
            Some((Some(846), Some(Some(-3))))
        );
        // What schemathesis sent: an integer in JSON Schema's sense.
        assert_eq!(
            parse(r#"{"n":846.0,"m":-3.0}"#).ok(),
            Some((Some(846), Some(Some(-3))))
        );
        assert_eq!(
            parse(r#"{"n":18446744073709551615}"#).ok(),
            Some((Some(u64::MAX), None))
        );
        for bad in [
            r#"{"n":1.5}"#,
            r#"{"n":-1}"#,
            r#"{"n":1e300}"#,
            r#"{"n":"1"}"#,
            r#"{"m":9.3e18}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames() {
        for good in ["a", "alice", "Bob.Smith", "x_1-2", &"a".repeat(64)] {
            assert!(check_username(good).is_ok(), "{good}");
        }
        for bad in ["", ".a", "-a", "a b", "é", "a/b", &"a".repeat(65), "a\0"] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }

    /// Bidi controls, zero-width and other invisible characters.
    const INVISIBLE: [char; 20] = [
        '\u{202A}',
        '\u{202B}',
        '\u{202C}',
        '\u{202D}',
        '\u{202E}',
        '\u{2066}',
        '\u{2067}',
        '\u{2068}',
        '\u{2069}',
        '\u{200E}',
        '\u{200F}',
        '\u{061C}',
        '\u{200B}',
        '\u{200C}',
        '\u{200D}',
        '\u{2060}',
        '\u{FEFF}',
        '\u{3164}',
        '\u{E0041}',
        '\u{2028}',
    ];

    #[test]
    fn names_with_invisible_characters_are_refused() {
        for c in INVISIBLE {
            let name = format!("adm{c}in");
            assert!(check_username(&name).is_err(), "{name:?}");
            assert!(
                check_display_text("token names", &name).is_err(),
                "{name:?}"
            );
        }
        let err = check_display_text("token names", "a\u{202E}b").expect_err("refused");
        assert!(err.to_string().contains("U+202E"), "{err}");
        for good in [
            "deploy key",
            "Ünïcödé ✓",
            "日本語のトークン",
            "emoji 🚀",
            "e\u{301}",
        ] {
            assert!(check_display_text("token names", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.000Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn the_document_lists_every_route_of_both_modes() {
        let (_, doc) = routes(Mode::Multi);
        let paths: Vec<_> = doc.paths.paths.keys().cloned().collect();
        for path in [
            "/api/v1/auth/login",
            "/api/v1/auth/logout",
            "/api/v1/me",
            "/api/v1/me/sessions/{id}",
            "/api/v1/me/tokens/{id}",
            "/api/v1/admin/users/{id}/sessions",
            "/api/v1/admin/users/{id}/unlock",
            "/api/v1/admin/audit",
            "/api/v1/ping",
            "/api/v1/openapi.json",
            "/api/v1/files",
            "/api/v1/files/{path}",
        ] {
            assert!(
                paths.iter().any(|p| p == path),
                "{path} missing from {paths:?}"
            );
        }
        let (_, single) = routes(Mode::Single);
        assert!(single
            .paths
            .paths
            .keys()
            .all(|p| !p.starts_with("/api/v1/admin")));
    }
}
