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
