//! Helpers for the files tests.

use crate::accounts::Caller;
use crate::Server;
use reqwest::Method;
use std::path::PathBuf;

/// Where `caller`'s files are on disk.
pub fn workspace_of(server: &Server, caller: &Caller) -> PathBuf {
    server
        .data_dir
        .join("users")
        .join(caller.user_id())
        .join("workspace")
}

/// PUT `body` at `path`: the status and the JSON body.
pub async fn put(
    caller: &Caller,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let response = caller
        .request(Method::PUT, &format!("/api/v1/files/{path}"))
        .body(body)
        .send()
        .await
        .expect("PUT");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// GET the file at `path`: the status and the bytes.
pub async fn get_bytes(caller: &Caller, path: &str) -> (u16, Vec<u8>) {
    let response = caller
        .request(Method::GET, &format!("/api/v1/files/{path}"))
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    (status, body)
}

/// A request body fed chunk by chunk (or failed) through a channel, for
/// uploads a test controls (reqwest wants a `Stream`).
pub fn channel_body(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures_util::stream::poll_fn(move |cx| {
        receiver.poll_recv(cx)
    }))
}
