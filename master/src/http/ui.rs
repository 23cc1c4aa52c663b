//! The web UI: the files of `web/`, compiled into the binary, served at `/`
//! (the page) and `/ui/{path}` (its scripts, styles and images). The page
//! is a client of the JSON API like any other; nothing here knows about
//! users.
//!
//! Every asset has a strong `ETag` (a digest of its bytes, computed once)
//! and `Cache-Control: no-cache`, so a browser revalidates with a `304`
//! instead of running yesterday's script against today's API. The page
//! carries a policy that allows only this origin's scripts and styles: no
//! inline script, no `eval`, no inline style element.

use crate::http::ApiError;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use include_dir::{include_dir, Dir};
use std::collections::HashMap;
use std::sync::LazyLock;

static WEB: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../web");

/// The page's policy: this origin only, for everything; images may also be
/// `blob:` URLs (previews of files the page fetched itself).
pub const UI_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                          img-src 'self' blob:; connect-src 'self'; base-uri 'none'; \
                          object-src 'none'; frame-ancestors 'none'; form-action 'self'";

/// One servable file of `web/`.
struct Asset {
    bytes: &'static [u8],
    content_type: HeaderValue,
    etag: HeaderValue,
}

/// The files a browser may fetch, by path under `web/`: only the kinds a
/// page uses (the notes and scripts beside them are not served).
static ASSETS: LazyLock<HashMap<&'static str, Asset>> = LazyLock::new(|| {
    let mut assets = HashMap::new();
    collect(&WEB, &mut assets);
    assets
});

fn collect(dir: &'static Dir<'static>, into: &mut HashMap<&'static str, Asset>) {
    use sha2::{Digest, Sha256};
    for file in dir.files() {
        let Some(path) = file.path().to_str() else {
            continue;
        };
        let Some(content_type) = content_type(path) else {
            continue;
        };
        let digest = Sha256::digest(file.contents());
        let etag = format!("\"{}\"", hex16(&digest));
        let Ok(etag) = HeaderValue::from_str(&etag) else {
            continue;
        };
        into.insert(
            path,
            Asset {
                bytes: file.contents(),
                content_type: HeaderValue::from_static(content_type),
                etag,
            },
        );
    }
    for sub in dir.dirs() {
        collect(sub, into);
    }
}

/// The first 16 bytes of a digest in hex: plenty to tell versions apart.
fn hex16(digest: &[u8]) -> String {
    crate::auth::token::hex(&digest[..digest.len().min(16)])
}

fn content_type(path: &str) -> Option<&'static str> {
    let extension = path.rsplit_once('.')?.1;
    Some(match extension {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => return None,
    })
}

/// The total size of what is served, for the report of what the UI adds to
/// the binary.
pub fn embedded_bytes() -> usize {
    ASSETS.values().map(|asset| asset.bytes.len()).sum()
}

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/ui/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move {
                serve(&path, &headers)
            }),
        )
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.get(path) else {
        return ApiError::NotFound.into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == "*" || tag.trim() == asset.etag)
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, asset.content_type.clone());
    out.insert(header::ETAG, asset.etag.clone());
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if path == "index.html" {
        out.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(UI_CSP),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_code_are_embedded_and_notes_are_not() {
        assert!(ASSETS.contains_key("index.html"));
        assert!(ASSETS.contains_key("app.js"));
        assert!(ASSETS.contains_key("app.css"));
        assert!(ASSETS.keys().all(|path| !path.ends_with(".md")));
    }

    #[test]
    fn the_ui_stays_small() {
        // The budget: under 1 MiB added to the binary.
        assert!(embedded_bytes() < 1024 * 1024, "{}", embedded_bytes());
    }

    #[test]
    fn a_known_etag_is_a_304_and_a_missing_asset_a_404() {
        let etag = ASSETS["app.js"].etag.clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("app.js", &headers).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve("app.js", &HeaderMap::new()).status(), StatusCode::OK);
        assert_eq!(
            serve("nope.js", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            serve("CONTRACT.md", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
