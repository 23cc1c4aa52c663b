//! `/files/{path}`: the caller's workspace files, served by their worker.
//! Bodies travel as protocol streams with credit-based flow control, so a
//! transfer holds at most a stream window in memory, whatever its size.
//!
//! Routed by hand (the wildcard path is not something utoipa-axum routes);
//! the handlers' `#[utoipa::path]` annotations are listed in the document
//! by `api::ApiDoc`, and `api::tests` checks that both agree.

use crate::activity::ActivityKind;
use crate::http::error::{ErrorBody, ErrorCode};
use crate::http::extract::{ApiQuery, Authed};
use crate::http::sendfile::{FileBody, Lane};
use crate::http::{ApiError, AppState};
use crate::pool::PoolError;
use axum::body::{Body, HttpBody};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, UNIX_EPOCH};
use utoipa::{IntoParams, ToSchema};
use warren_protocol::{
    Entry, EntryKind, FileOp, Op, OpError, Precondition, Reply, StreamKind, UserCtx, UserId,
};

pub fn routes() -> Router<AppState> {
    let uploads = Router::new()
        .route("/api/v1/upload", axum::routing::post(upload))
        .route("/api/v1/upload/{*dir}", axum::routing::post(upload))
        // File bodies are streamed, never buffered: no size limit here
        // (the quota is the limit).
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .route("/api/v1/files", get(list_root))
        .route(
            "/api/v1/files/{*path}",
            get(get_file)
                .put(put_file)
                .delete(delete_file)
                .post(post_file),
        )
        .merge(uploads)
}

/// Which file operation `request` (routed to `route`) is, for the metrics;
/// `None` outside the files API.
pub fn operation_of(route: &str, request: &axum::extract::Request) -> Option<&'static str> {
    if !route.starts_with("/api/v1/files") && !route.starts_with("/api/v1/upload") {
        return None;
    }
    let query = request.uri().query().unwrap_or("");
    Some(match *request.method() {
        Method::GET | Method::HEAD => "read",
        Method::PUT => "write",
        Method::DELETE => "delete",
        _ if route.starts_with("/api/v1/upload") => "upload",
        _ if query.contains("op=mkdir") => "mkdir",
        _ if query.contains("op=move") => "move",
        _ if query.contains("op=copy") => "copy",
        _ => "other",
    })
}

/// Counts the request body's bytes as the handler reads them.
pub fn count_inbound(state: &AppState, request: axum::extract::Request) -> axum::extract::Request {
    if request.body().size_hint().exact() == Some(0) {
        return request;
    }
    let inbound = state.metrics.files().bytes_in().clone();
    request.map(|body| count_chunks(body, inbound))
}

/// Counts the operation `op` by its result, and the response body's bytes
/// (a body held whole is counted whole, a streamed one as it goes).
pub fn count_outbound(state: &AppState, op: &'static str, response: Response) -> Response {
    let files = state.metrics.files();
    let status = response.status();
    let result = if status.is_success() || status == StatusCode::NOT_MODIFIED {
        "ok"
    } else {
        response
            .extensions()
            .get::<ErrorCode>()
            .map_or("error", |code| code.0)
    };
    files.operation(op, result);
    let outbound = files.bytes_out().clone();
    match response.body().size_hint().exact() {
        Some(len) => {
            outbound.inc_by(len);
            response
        }
        None => response.map(|body| count_chunks(body, outbound)),
    }
}

/// `body`, adding the length of each chunk to `counter` as it passes.
fn count_chunks(body: Body, counter: prometheus_client::metrics::counter::Counter) -> Body {
    Body::from_stream(body.into_data_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            counter.inc_by(bytes.len() as u64);
        }
        chunk
    }))
}

/// Streamed transfers (uploads, downloads of files too large for one reply)
/// in progress per user, capped: each holds stream windows and write
/// batches, so their number, not only their size, must be bounded.
#[derive(Debug)]
pub struct Transfers {
    limit: u32,
    active: std::sync::Mutex<std::collections::HashMap<UserId, u32>>,
}

impl Transfers {
    pub fn new(limit: u32) -> Transfers {
        Transfers {
            limit,
            active: Default::default(),
        }
    }

    /// How many transfers of `user` are in progress (a move waits for none).
    pub fn of(&self, user: UserId) -> u32 {
        self.lock().get(&user).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<UserId, u32>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One transfer of `user`'s, counted until dropped.
pub(super) struct Transfer {
    state: AppState,
    user: UserId,
}

impl Transfer {
    pub(super) fn begin(state: &AppState, user: UserId) -> Result<Transfer, ApiError> {
        let mut active = state.transfers.lock();
        let count = active.entry(user).or_insert(0);
        if *count >= state.transfers.limit {
            return Err(ApiError::TooManyRequests(Duration::from_secs(1)));
        }
        *count += 1;
        drop(active);
        Ok(Transfer {
            state: state.clone(),
            user,
        })
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let mut active = self.state.transfers.lock();
        if let Some(count) = active.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                active.remove(&self.user);
            }
        }
    }
}

/// A file or directory as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryView {
    /// The name. One that is not UTF-8 (made on disk by a user's own
    /// programs) is shown lossily, with U+FFFD for each bad sequence, and
    /// comes with `"name_valid": false`.
    pub name: String,
    /// Only there, and false, for a name that is not UTF-8: `name` then is
    /// no path the API can reach; the entry still counts against the quota
    /// and goes when its directory is deleted recursively.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_valid: Option<bool>,
    /// `file`, `dir`, `symlink`, `fifo`, `socket` or `device` (the last
    /// four made by users' own programs; never read).
    pub kind: &'static str,
    pub size: u64,
    /// RFC 3339.
    pub modified: String,
    pub etag: String,
}

impl From<&Entry> for EntryView {
    fn from(entry: &Entry) -> Self {
        EntryView {
            name: entry.name.clone(),
            name_valid: (!entry.name_valid).then_some(false),
            kind: match entry.kind {
                EntryKind::File => "file",
                EntryKind::Dir => "dir",
                EntryKind::Symlink => "symlink",
                EntryKind::Fifo => "fifo",
                EntryKind::Socket => "socket",
                EntryKind::Device => "device",
            },
            size: entry.size,
            modified: super::rfc3339(entry.modified_ms),
            etag: entry.etag.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Listing {
    pub entries: Vec<EntryView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// From a previous page's `next_cursor`.
    cursor: Option<String>,
    /// Entries per page, 1-1000 (default 200).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

fn checked(path: &str) -> Result<String, ApiError> {
    warren_protocol::path::check(path).map_err(|err| ApiError::BadRequest(err.to_string()))?;
    Ok(path.trim_end_matches('/').to_string())
}

async fn call(state: &AppState, user: &UserCtx, op: FileOp) -> Result<Reply, ApiError> {
    Ok(state.pool.call(user, Op::Files(op)).await?)
}

fn unexpected(reply: Reply) -> ApiError {
    ApiError::Internal(format!("unexpected reply from the worker: {reply:?}"))
}

fn entry_response(status: StatusCode, entry: &Entry) -> Response {
    let mut response = (status, Json(EntryView::from(entry))).into_response();
    if let Ok(etag) = HeaderValue::from_str(&entry.etag) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// List the workspace's top directory.
#[utoipa::path(
    get, path = "/api/v1/files", tag = "files",
    params(ListQuery),
    responses((status = 200, body = Listing), (status = 401, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
pub(super) async fn list_root(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    list(&state, &principal.ctx, "", query).await
}

async fn list(
    state: &AppState,
    user: &UserCtx,
    path: &str,
    query: ListQuery,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1-1000".into()));
    }
    let op = FileOp::List {
        path: path.to_string(),
        after: query.cursor,
        limit,
    };
    match call(state, user, op).await? {
        Reply::Listing { entries, more } => {
            let next_cursor = more
                .then(|| entries.last().map(|e| e.name.clone()))
                .flatten();
            let entries = entries.iter().map(EntryView::from).collect();
            Ok(Json(Listing {
                entries,
                next_cursor,
            })
            .into_response())
        }
        other => Err(unexpected(other)),
    }
}

/// A file's bytes (with `Range`, `ETag`, `Last-Modified`, conditional
/// requests), or a directory's listing. `HEAD` gives the headers only.
#[utoipa::path(
    get, path = "/api/v1/files/{path}", tag = "files",
    params(("path" = String, Path, description = "Relative to the workspace"), ListQuery),
    responses(
        (status = 200, description = "The file's bytes, or a directory listing", body = Listing),
        (status = 206, description = "The requested range"),
        (status = 304, description = "Unchanged (If-None-Match)"),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not a regular file (a FIFO, socket or device: `not_a_regular_file`); never read", body = ErrorBody),
        (status = 412, description = "If-Match failed", body = ErrorBody),
        (status = 416, description = "Range not satisfiable", body = ErrorBody),
        (status = 429, description = "Too many transfers of this user at once (files over 64 KiB); see `Retry-After`", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
pub(super) async fn get_file(
    State(state): State<AppState>,
    Authed(principal): Authed,
    method: Method,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    ApiQuery(query): ApiQuery<ListQuery>,
    lane: Option<axum::Extension<Lane>>,
) -> Result<Response, ApiError> {
    let path = checked(&path?.0)?;
    let user = &principal.ctx;
    // A small file comes whole with its description, in one round trip; a
    // larger one comes opened (the worker hands over its descriptor), and
    // the master sends its bytes itself.
    let op = FileOp::Read {
        path: path.clone(),
        hand_over: true,
    };
    let (entry, content) = match state.pool.call_handing(user, Op::Files(op)).await? {
        (Reply::File { entry, content }, _) => (entry, content),
        (Reply::Opened { entry }, Some(handed)) => {
            let lane = lane.map(|axum::Extension(lane)| lane);
            return send_opened(&state, user, &path, &entry, handed, &method, &headers, lane);
        }
        (other, _) => return Err(unexpected(other)),
    };
    if entry.kind == EntryKind::Dir {
        return list(&state, user, &path, query).await;
    }
    let Some(content) = content else {
        return get_streamed(&state, user, &path, method, &headers, query).await;
    };
    let plan = match plan_read(&path, &entry, &method, &headers)? {
        Read::Answer(response) => return Ok(response),
        Read::Bytes(plan) => plan,
    };
    // The plan's range lies within the size described, which is the
    // content's length.
    let part = usize::try_from(plan.offset)
        .ok()
        .zip(usize::try_from(plan.offset + plan.len).ok())
        .and_then(|(start, end)| content.get(start..end))
        .ok_or_else(|| ApiError::Internal("range outside the file read".into()))?;
    let body = if part.len() == content.len() {
        Body::from(content)
    } else {
        Body::from(part.to_vec())
    };
    Ok(plan.respond(body))
}

/// A GET of a file the worker opened and handed over: its bytes go from
/// that file to the client with `sendfile` (see `crate::http::sendfile`).
#[allow(clippy::too_many_arguments)]
fn send_opened(
    state: &AppState,
    user: &UserCtx,
    path: &str,
    entry: &Entry,
    handed: crate::pool::HandedFile,
    method: &Method,
    headers: &HeaderMap,
    lane: Option<Lane>,
) -> Result<Response, ApiError> {
    let plan = match plan_read(path, entry, method, headers)? {
        Read::Answer(response) => return Ok(response),
        Read::Bytes(plan) => plan,
    };
    // Counted until the body is sent or dropped.
    let transfer = Transfer::begin(state, user.id)?;
    let body = FileBody::new(handed.file, plan.offset, plan.len, lane, Box::new(transfer));
    Ok(plan.respond(Body::new(body)))
}

/// A GET of a file too large to come in one reply: its bytes are streamed.
async fn get_streamed(
    state: &AppState,
    user: &UserCtx,
    path: &str,
    method: Method,
    headers: &HeaderMap,
    query: ListQuery,
) -> Result<Response, ApiError> {
    // The worker opens the entry and describes it; the bytes sent later come
    // from that same open file, so a replacement meanwhile cannot mix
    // versions or contradict the headers.
    let transfer = Transfer::begin(state, user.id)?;
    let kind = StreamKind::ReadFile {
        path: path.to_string(),
    };
    let stream = state.pool.open_stream(user, kind).await?;
    let (mut sender, mut receiver) = stream.split();
    let entry: Entry = match receiver.recv().await {
        Some(Ok(bytes)) => warren_protocol::codec::decode_message(&bytes)
            .map_err(|err| ApiError::Internal(format!("bad entry from the worker: {err}")))?,
        Some(Err(err)) => return Err(ApiError::Pool(PoolError::Op(err))),
        None => {
            return Err(ApiError::Internal(
                "the worker closed a read without an answer".into(),
            ))
        }
    };
    if entry.kind == EntryKind::Dir {
        // Replaced by a directory since the first look.
        let _ = sender.finish();
        drop((sender, receiver));
        return list(state, user, path, query).await;
    }
    let plan = match plan_read(path, &entry, &method, headers)? {
        Read::Answer(response) => return Ok(response),
        Read::Bytes(plan) => plan,
    };
    let range = warren_protocol::ReadRange {
        offset: plan.offset,
        len: plan.len,
    };
    let request = warren_protocol::codec::encode_message(&range)
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    sender
        .send(&request)
        .await
        .map_err(|err| ApiError::Pool(PoolError::Op(err)))?;
    let _ = sender.finish();
    // The transfer counts until the body is sent or dropped.
    let body = futures_util::stream::unfold(
        (sender, receiver, transfer),
        |(sender, mut receiver, transfer)| async move {
            let chunk = receiver.recv().await?;
            Some((
                chunk.map_err(std::io::Error::other),
                (sender, receiver, transfer),
            ))
        },
    );
    Ok(plan.respond(Body::from_stream(body)))
}

/// The policy of a file's bytes (the rest of the API gets `http::CSP`).
const FILE_CSP: &str = "sandbox; frame-ancestors 'none'";

/// What a GET of a file will send.
enum Read {
    /// An answer without the file's bytes (304, 412, 416, a listing...).
    Answer(Response),
    Bytes(ReadPlan),
}

struct ReadPlan {
    status: StatusCode,
    headers: HeaderMap,
    offset: u64,
    len: u64,
}

impl ReadPlan {
    /// The response, taking the planned headers as they are.
    fn respond(self, body: Body) -> Response {
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Headers, conditionals and range of a GET for `entry` (a HEAD is
/// answered here, with the headers only).
fn plan_read(
    path: &str,
    entry: &Entry,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Read, ApiError> {
    match entry.kind {
        EntryKind::Dir => {
            return Err(ApiError::Internal("plan_read on a directory".into()));
        }
        EntryKind::Symlink => {
            return Err(ApiError::Pool(PoolError::Op(OpError::NotFound(format!(
                "{path} is a symbolic link; links are not served"
            )))))
        }
        EntryKind::Fifo | EntryKind::Socket | EntryKind::Device => {
            return Err(ApiError::Pool(PoolError::Op(OpError::NotARegularFile(
                format!("{path} is not a regular file: it is not read"),
            ))))
        }
        EntryKind::File => {}
    }
    // Room for these and the ones `around` adds: no rehash on the way out.
    let mut response_headers = HeaderMap::with_capacity(16);
    if let Ok(etag) = HeaderValue::from_str(&entry.etag) {
        response_headers.insert(header::ETAG, etag);
    }
    let modified = UNIX_EPOCH + Duration::from_millis(super::clamp_ms(entry.modified_ms));
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        response_headers.insert(header::LAST_MODIFIED, date);
    }
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // A user's HTML file opened in the browser must not run as warren's
    // origin (with the user's session): sandboxed, it gets a unique origin
    // and no scripts.
    response_headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(FILE_CSP),
    );
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    if let Ok(mime) = HeaderValue::from_str(mime.as_ref()) {
        response_headers.insert(header::CONTENT_TYPE, mime);
    }
    if let Some(tags) = header_tags(headers, header::IF_MATCH) {
        if !tags.iter().any(|tag| tag == "*" || *tag == entry.etag) {
            return Err(precondition_failed(path));
        }
    }
    if let Some(tags) = header_tags(headers, header::IF_NONE_MATCH) {
        if tags
            .iter()
            .any(|tag| tag == "*" || weak_eq(tag, &entry.etag))
        {
            return Ok(Read::Answer(
                (StatusCode::NOT_MODIFIED, response_headers).into_response(),
            ));
        }
    }
    // If-Range with another validator: the whole file instead.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|value| value.to_str().is_ok_and(|v| v == entry.etag));
    let range = match headers.get(header::RANGE).filter(|_| if_range_ok) {
        None => None,
        Some(value) => match parse_range(value.to_str().unwrap_or(""), entry.size) {
            RangeAnswer::Whole => None,
            RangeAnswer::Part(start, end) => Some((start, end)),
            RangeAnswer::Unsatisfiable => {
                let mut response = ApiError::RangeNotSatisfiable.into_response();
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", entry.size)) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return Ok(Read::Answer(response));
            }
        },
    };
    let (status, offset, len) = match range {
        Some((start, end)) => {
            let value = format!("bytes {start}-{end}/{}", entry.size);
            if let Ok(value) = HeaderValue::from_str(&value) {
                response_headers.insert(header::CONTENT_RANGE, value);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        None => (StatusCode::OK, 0, entry.size),
    };
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let plan = ReadPlan {
        status,
        headers: response_headers,
        offset,
        len,
    };
    if *method == Method::HEAD {
        return Ok(Read::Answer(plan.respond(Body::empty())));
    }
    Ok(Read::Bytes(plan))
}

fn precondition_failed(path: &str) -> ApiError {
    ApiError::Pool(PoolError::Op(OpError::PreconditionFailed(format!(
        "{path} does not match If-Match"
    ))))
}

/// The entity tags of an `If-Match` / `If-None-Match` header.
fn header_tags(headers: &HeaderMap, name: header::HeaderName) -> Option<Vec<String>> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().to_string())
        .filter(|tag| !tag.is_empty())
        .collect();
    (!values.is_empty()).then_some(values)
}

/// Weak comparison (RFC 9110 §8.8.3.2), as `If-None-Match` uses.
fn weak_eq(a: &str, b: &str) -> bool {
    a.trim_start_matches("W/") == b.trim_start_matches("W/")
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum RangeAnswer {
    /// No usable range (absent, malformed or several): send everything.
    Whole,
    /// Inclusive first and last byte.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range of RFC 9110 §14.1.2 against a file of `size` bytes.
/// Several ranges are answered with the whole file, which the RFC allows.
pub(super) fn parse_range(value: &str, size: u64) -> RangeAnswer {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(n) if size > 0 => RangeAnswer::Part(size.saturating_sub(n), size - 1),
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Whole,
        },
        (false, _) => {
            let Some(start) = parse(first) else {
                return RangeAnswer::Whole;
            };
            let end = if last.is_empty() {
                Some(u64::MAX)
            } else {
                parse(last)
            };
            match end {
                None => RangeAnswer::Whole,
                Some(end) if end < start => RangeAnswer::Whole,
                Some(_) if start >= size => RangeAnswer::Unsatisfiable,
                Some(end) => RangeAnswer::Part(start, end.min(size - 1)),
            }
        }
        (true, true) => RangeAnswer::Whole,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PutQuery {
    /// Create missing parent directories.
    #[serde(default)]
    parents: bool,
}

/// Create or replace a file with the request body, atomically: readers see
/// the old file or the new one, never a part. `If-Match` / `If-None-Match: *`
/// make it conditional (412 otherwise).
#[utoipa::path(
    put, path = "/api/v1/files/{path}", tag = "files",
    params(("path" = String, Path), PutQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Created (also where a link, FIFO... was)", body = EntryView),
        (status = 200, description = "A file replaced", body = EntryView),
        (status = 404, description = "The parent directory does not exist", body = ErrorBody),
        (status = 409, description = "The path is a directory", body = ErrorBody),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 408, description = "The client sent nothing for `--upload-idle-timeout`", body = ErrorBody),
        (status = 412, description = "Precondition failed", body = ErrorBody),
        (status = 429, description = "Too many transfers of this user at once; see `Retry-After`", body = ErrorBody),
        (status = 503, description = "The worker is restarting or out of resources; see `Retry-After`", body = ErrorBody),
        (status = 507, description = "Over quota (`quota_exceeded`) or the disk is full (`disk_full`)", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
pub(super) async fn put_file(
    State(state): State<AppState>,
    Authed(principal): Authed,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    ApiQuery(query): ApiQuery<PutQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let path = checked(&path?.0)?;
    // RFC 9110 §14.5: a partial PUT must not be taken for a whole one.
    if headers.contains_key(header::CONTENT_RANGE) {
        return Err(ApiError::BadRequest(
            "PUT with Content-Range (a partial update) is not supported".into(),
        ));
    }
    let if_none_match = header_tags(&headers, header::IF_NONE_MATCH);
    if if_none_match
        .as_ref()
        .is_some_and(|tags| !tags.iter().any(|t| t == "*"))
    {
        return Err(ApiError::BadRequest(
            "PUT supports If-None-Match: * only".into(),
        ));
    }
    let precondition = match (header_tags(&headers, header::IF_MATCH), if_none_match) {
        // RFC 9110 §13.2.2: If-Match first; it holds only for a file that
        // exists, which If-None-Match: * then refuses. Never both.
        (Some(_), Some(_)) => {
            return Err(ApiError::Pool(PoolError::Op(OpError::PreconditionFailed(
                format!("{path}: If-Match and If-None-Match: * cannot both hold"),
            ))))
        }
        (Some(tags), None) => Precondition::Match(tags),
        (None, Some(_)) => Precondition::Absent,
        (None, None) => Precondition::None,
    };
    let target = Target {
        path: path.clone(),
        precondition,
        parents: query.parents,
        staged: false,
    };
    // hyper checked the header against the body; the body itself is
    // wrapped (metrics) and no longer says its length.
    let expected = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut chunks = body.into_data_stream();
    let outcome = match write(&state, &principal.ctx, target, expected, &mut chunks).await {
        Ok(outcome) => outcome,
        Err(err) => return Ok(refused(chunks, err).await),
    };
    announce(&state, &principal, ActivityKind::FileWritten { path });
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(entry_response(status, &outcome.entry))
}

/// The answer to an upload refused before its body was all read (a
/// `Content-Length` over the quota, a precondition, a worker that went
/// away): what is left of a small body is read and dropped, so the client's
/// connection serves its next request; a large or slow one closes the
/// connection after the answer (`Connection: close`), as the client may
/// still be sending it.
async fn refused<E>(
    mut chunks: impl futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    err: ApiError,
) -> Response {
    const DRAIN_BYTES: usize = 4 * 1024 * 1024;
    const DRAIN_TIME: Duration = Duration::from_secs(1);
    let drained = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(bytes) if seen + bytes.len() <= DRAIN_BYTES => seen += bytes.len(),
                _ => return false,
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    let mut response = err.into_response();
    if !drained {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Where an upload goes.
struct Target {
    path: String,
    precondition: Precondition,
    parents: bool,
    staged: bool,
}

/// Writes `chunks` into `target`: atomic, within the quota, nothing left
/// behind if the chunks fail or stop. The worker checks the target and
/// hands over a temp file, which the master writes itself
/// ([`write_handed`]); if it cannot be handed over (the master is out of
/// descriptors), the bytes go through the worker as a stream.
async fn write<E>(
    state: &AppState,
    user: &UserCtx,
    target: Target,
    expected: Option<u64>,
    chunks: impl futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> Result<warren_protocol::WriteOutcome, ApiError> {
    let transfer = Transfer::begin(state, user.id)?;
    let op = FileOp::BeginUpload {
        path: target.path.clone(),
        precondition: target.precondition.clone(),
        parents: target.parents,
        staged: target.staged,
        expected,
    };
    match state.pool.call_handing(user, Op::Files(op)).await {
        Ok((
            Reply::UploadOpened {
                upload, reserved, ..
            },
            Some(handed),
        )) => {
            let crate::pool::HandedFile { file, worker } = handed;
            let upload = Upload {
                user: user.clone(),
                id: upload,
                reserved,
                worker: std::sync::Arc::new(worker),
                open: true,
            };
            write_handed(upload, file, state.upload_idle_timeout, chunks).await
        }
        Ok((other, _)) => Err(unexpected(other)),
        Err(PoolError::Op(OpError::Busy(why))) => {
            tracing::debug!(%why, "an upload goes as a stream");
            drop(transfer);
            let kind = StreamKind::WriteFile {
                path: target.path,
                precondition: target.precondition,
                parents: target.parents,
                staged: target.staged,
            };
            write_stream(state, user, kind, chunks).await
        }
        Err(err) => Err(err.into()),
    }
}

/// Bytes gathered for one write into a handed-over temp file.
const UPLOAD_BATCH: usize = 1024 * 1024;
/// Bytes written between two background flushes of an upload (so the
/// fsync at the commit waits only for the tail).
const UPLOAD_FLUSH_STEP: u64 = 8 * 1024 * 1024;

/// An upload whose temp file the master writes; dropped at its worker
/// unless committed, whatever ends the request.
struct Upload {
    user: UserCtx,
    id: u64,
    /// Bytes the worker reserved against the quota: what may be written
    /// before asking for more.
    reserved: u64,
    /// The worker that handed the temp file over: every call about the
    /// upload goes to it.
    worker: std::sync::Arc<crate::pool::HandingWorker>,
    open: bool,
}

impl Upload {
    /// Makes room for `total` bytes in all (or fails: over quota). Exactly
    /// that, never ahead: what one upload reserved beyond its bytes would
    /// refuse another's near the quota. An upload of unknown length asks
    /// once per batch, while the batch before it is written.
    async fn reserve(&mut self, total: u64) -> Result<(), ApiError> {
        if total <= self.reserved {
            return Ok(());
        }
        let op = FileOp::ReserveUpload {
            upload: self.id,
            total,
        };
        match self.call(op).await? {
            Reply::Reserved { reserved } => {
                self.reserved = reserved;
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    async fn call(&self, op: FileOp) -> Result<Reply, ApiError> {
        Ok(self.worker.call(&self.user, Op::Files(op)).await?)
    }

    async fn commit(mut self, len: u64) -> Result<warren_protocol::WriteOutcome, ApiError> {
        let op = FileOp::CommitUpload {
            upload: self.id,
            len,
        };
        // Whatever the answer, the worker no longer keeps it.
        self.open = false;
        match self.call(op).await? {
            Reply::Written(mut written) if written.len() == 1 => Ok(written.remove(0)),
            other => Err(unexpected(other)),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // A worker that is gone took its uploads with it (and the next one
        // sweeps their temp files).
        if !self.open || self.worker.gone().is_cancelled() {
            return;
        }
        let (worker, user, upload) = (self.worker.clone(), self.user.clone(), self.id);
        tokio::spawn(async move {
            let op = FileOp::DropUpload { upload };
            if let Err(err) = worker.call(&user, Op::Files(op)).await {
                // The worker drops it itself after a while.
                tracing::debug!(%err, "could not drop an abandoned upload");
            }
        });
    }
}

/// Writes `chunks` into the upload's handed-over temp file, then asks the
/// worker to commit. Double-buffered: while one batch is written on the
/// blocking pool, the next is taken from the client; every
/// [`UPLOAD_FLUSH_STEP`] a flush starts in the background (its error,
/// seen once per open file, fails the upload). Stops at once when the
/// worker that handed the file over goes away.
async fn write_handed<E>(
    mut upload: Upload,
    file: std::fs::File,
    idle: Duration,
    mut chunks: impl futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> Result<warren_protocol::WriteOutcome, ApiError> {
    let file = std::sync::Arc::new(file);
    let gone = upload.worker.gone();
    let mut written = 0u64;
    let mut writing: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
    let mut flushing: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
    let mut flushed = 0u64;
    let worker_gone = || {
        ApiError::Pool(PoolError::Op(OpError::WorkerGone(
            "the worker went away during the upload; nothing was written, try again".into(),
        )))
    };
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle, chunks.next()) => next,
            () = gone.cancelled() => return Err(worker_gone()),
        };
        let first = match next {
            Err(_) => return Err(stalled(idle)),
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::BadRequest("the upload was interrupted".into()))
            }
            Ok(Some(Ok(bytes))) => bytes,
        };
        let (batch, more) = gather(first, &mut chunks, UPLOAD_BATCH);
        let len: u64 = batch.iter().map(|b| b.len() as u64).sum();
        upload.reserve(written + len).await?;
        if let Some(previous) = writing.take() {
            finished(previous.await)?;
        }
        let target = file.clone();
        writing = Some(tokio::task::spawn_blocking(move || {
            write_all(&target, batch)
        }));
        written += len;
        if flushing.as_ref().is_none_or(|task| task.is_finished()) {
            if let Some(done) = flushing.take() {
                finished(done.await)?;
            }
            if written >= flushed + UPLOAD_FLUSH_STEP {
                flushed = written;
                let target = file.clone();
                flushing = Some(tokio::task::spawn_blocking(move || target.sync_data()));
            }
        }
        match more {
            Gathered::More => {}
            Gathered::Ended => break,
            Gathered::Failed => {
                return Err(ApiError::BadRequest("the upload was interrupted".into()))
            }
        }
    }
    if let Some(last) = writing.take() {
        finished(last.await)?;
    }
    if let Some(last) = flushing.take() {
        finished(last.await)?;
    }
    // Closed before the commit: the master holds no descriptor of a file
    // in place.
    drop(file);
    if gone.is_cancelled() {
        return Err(worker_gone());
    }
    upload.commit(written).await
}

/// Appends `batch` to `file` (opened for appending at its end by the worker).
fn write_all(file: &std::fs::File, batch: Vec<bytes::Bytes>) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    let mut slices: Vec<IoSlice<'_>> = batch
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    let mut out = file;
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// The outcome of a write or flush of an upload's temp file.
fn finished(done: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), ApiError> {
    let err = match done {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(err)) => err,
        Err(joined) => std::io::Error::other(joined),
    };
    let full = matches!(
        err.raw_os_error(),
        Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
            || code == rustix::io::Errno::DQUOT.raw_os_error()
    );
    Err(if full {
        ApiError::Pool(PoolError::Op(OpError::DiskFull(
            "the server's disk is full; nothing was written".into(),
        )))
    } else {
        ApiError::Internal(format!("cannot write the upload: {err}"))
    })
}

/// Streams `chunks` into `path` through the user's worker: atomic, within
/// the quota, nothing left behind if the chunks fail or stop.
async fn write_stream<E>(
    state: &AppState,
    user: &UserCtx,
    kind: StreamKind,
    mut chunks: impl futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> Result<warren_protocol::WriteOutcome, ApiError> {
    let _transfer = Transfer::begin(state, user.id)?;
    let stream = state.pool.open_stream(user, kind).await?;
    let (mut sender, mut receiver) = stream.split();
    let idle = state.upload_idle_timeout;
    loop {
        tokio::select! {
            chunk = tokio::time::timeout(idle, chunks.next()) => match chunk {
                Err(_) => {
                    // A stalled client must not hold the temp file and its
                    // quota reservation for as long as TCP lets it.
                    sender.abort(OpError::Cancelled);
                    return Err(stalled(idle));
                }
                Ok(None) => break,
                Ok(Some(Ok(bytes))) => {
                    // What has already arrived goes in one frame: tiny
                    // chunks must not each cost a frame (and a buffer in
                    // the worker).
                    let (batch, more) =
                        gather(bytes, &mut chunks, warren_protocol::MAX_DATA_CHUNK);
                    // Fails once the worker refused (quota, precondition)
                    // or died: its reason comes on the receiving side.
                    if sender.send_vec(batch.concat()).await.is_err() {
                        break;
                    }
                    match more {
                        Gathered::More => {}
                        Gathered::Ended => break,
                        Gathered::Failed => return Err(interrupted(&mut sender)),
                    }
                }
                Ok(Some(Err(_))) => return Err(interrupted(&mut sender)),
            },
            // The worker answers before the body ends only to refuse, or
            // the stream fails because it died: stop waiting for the client.
            answer = receiver.recv() => return outcome_of(answer),
        }
    }
    let _ = sender.finish();
    outcome_of(receiver.recv().await)
}

/// The client went away or sent a broken body: the worker drops the temp
/// file.
fn interrupted(sender: &mut warren_protocol::stream::StreamSender) -> ApiError {
    sender.abort(OpError::Cancelled);
    ApiError::BadRequest("the upload was interrupted".into())
}

fn stalled(idle: Duration) -> ApiError {
    ApiError::RequestTimeout(format!(
        "the upload sent nothing for {} s",
        idle.as_secs_f64()
    ))
}

/// What [`gather`] saw after the chunks it joined.
enum Gathered {
    More,
    Ended,
    Failed,
}

/// `first` and the chunks that have already arrived after it, up to about
/// `limit` bytes, kept apart.
fn gather<E>(
    first: bytes::Bytes,
    chunks: &mut (impl futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin),
    limit: usize,
) -> (Vec<bytes::Bytes>, Gathered) {
    let mut size = first.len();
    let mut batch = vec![first];
    while size < limit {
        match futures_util::FutureExt::now_or_never(chunks.next()) {
            Some(Some(Ok(more))) => {
                size += more.len();
                batch.push(more);
            }
            Some(Some(Err(_))) => return (batch, Gathered::Failed),
            Some(None) => return (batch, Gathered::Ended),
            None => break,
        }
    }
    (batch, Gathered::More)
}

fn outcome_of(
    answer: Option<Result<Vec<u8>, OpError>>,
) -> Result<warren_protocol::WriteOutcome, ApiError> {
    match answer {
        Some(Ok(bytes)) => warren_protocol::codec::decode_message(&bytes)
            .map_err(|err| ApiError::Internal(format!("bad write outcome: {err}"))),
        Some(Err(err)) => Err(ApiError::Pool(PoolError::Op(err))),
        None => Err(ApiError::Internal(
            "the worker closed the upload without an answer".into(),
        )),
    }
}

/// Upload files from a browser form (`multipart/form-data`) into the
/// directory `dir`: each file part becomes `dir/<its file name>`, written
/// like a PUT (atomic, within the quota, replacing a file of that name).
/// Every part is received and checked before any file is put in place: a
/// bad part name (or any failure while receiving) writes nothing.
#[utoipa::path(
    post, path = "/api/v1/upload/{dir}", tag = "files",
    params(("dir" = String, Path, description = "An existing directory, relative to the workspace")),
    request_body(content_type = "multipart/form-data", description = "File parts, each with a file name"),
    responses(
        (status = 201, description = "The files written", body = Vec<EntryView>),
        (status = 400, description = "No file parts, or a bad file name (nothing is written)", body = ErrorBody),
        (status = 404, description = "No such directory", body = ErrorBody),
        (status = 409, description = "A part's name is a directory there", body = ErrorBody),
        (status = 408, description = "The client sent nothing for `--upload-idle-timeout`", body = ErrorBody),
        (status = 429, description = "Too many transfers of this user at once; see `Retry-After`", body = ErrorBody),
        (status = 503, description = "The worker is restarting or out of resources; see `Retry-After`", body = ErrorBody),
        (status = 507, description = "Over quota (`quota_exceeded`) or the disk is full (`disk_full`)", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
pub(super) async fn upload(
    State(state): State<AppState>,
    Authed(principal): Authed,
    dir: Option<Path<String>>,
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    // A missing or bad boundary: our JSON error, not axum's text/plain.
    let mut form = form.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    let dir = match dir {
        Some(Path(dir)) => checked(&dir)?,
        None => String::new(),
    };
    let mut staged = Staged {
        state: state.clone(),
        user: principal.ctx.clone(),
        stages: Vec::new(),
    };
    let idle = state.upload_idle_timeout;
    let mut paths = Vec::new();
    loop {
        let field = tokio::time::timeout(idle, form.next_field())
            .await
            .map_err(|_| stalled(idle))?
            .map_err(|err| ApiError::BadRequest(format!("bad multipart body: {err}")))?;
        let Some(mut field) = field else { break };
        let Some(name) = field.file_name().map(str::to_string) else {
            continue;
        };
        warren_protocol::path::check_name(&name)
            .map_err(|err| ApiError::BadRequest(format!("file name {name:?}: {err}")))?;
        let path = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        paths.push(path.clone());
        let target = Target {
            path,
            precondition: Precondition::None,
            parents: false,
            staged: true,
        };
        let outcome = write(&state, &principal.ctx, target, None, &mut field).await?;
        let stage = outcome
            .stage
            .ok_or_else(|| ApiError::Internal("the worker did not stage an upload part".into()))?;
        staged.stages.push(stage);
    }
    if staged.stages.is_empty() {
        return Err(ApiError::BadRequest(
            "no file parts (parts with a file name) in the form".into(),
        ));
    }
    // Every part arrived and was good: now they are put in place.
    let stages = std::mem::take(&mut staged.stages);
    let op = FileOp::CommitStaged { stages };
    let written = match call(&state, &principal.ctx, op).await? {
        Reply::Written(written) => written,
        other => return Err(unexpected(other)),
    };
    for path in &paths {
        announce(
            &state,
            &principal,
            ActivityKind::FileWritten { path: path.clone() },
        );
    }
    let written: Vec<EntryView> = written.iter().map(|w| EntryView::from(&w.entry)).collect();
    Ok((StatusCode::CREATED, Json(written)).into_response())
}

/// The staged parts of an upload: abandoned (temp files removed, quota
/// released) unless committed, whatever ends the request.
struct Staged {
    state: AppState,
    user: UserCtx,
    stages: Vec<u64>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.stages.is_empty() {
            return;
        }
        let stages = std::mem::take(&mut self.stages);
        let (state, user) = (self.state.clone(), self.user.clone());
        tokio::spawn(async move {
            let op = FileOp::DropStaged { stages };
            if let Err(err) = state.pool.call(&user, Op::Files(op)).await {
                // The worker drops them itself after a while.
                tracing::debug!(%err, "could not drop an upload's staged parts");
            }
        });
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Required to delete a non-empty directory.
    #[serde(default)]
    recursive: bool,
}

/// Delete a file, or a directory (non-empty ones need `recursive=true`).
#[utoipa::path(
    delete, path = "/api/v1/files/{path}", tag = "files",
    params(("path" = String, Path), DeleteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Directory not empty", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
pub(super) async fn delete_file(
    State(state): State<AppState>,
    Authed(principal): Authed,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let path = checked(&path?.0)?;
    let op = FileOp::Delete {
        path: path.clone(),
        recursive: query.recursive,
    };
    call(&state, &principal.ctx, op).await?;
    announce(&state, &principal, ActivityKind::FileDeleted { path });
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PostQuery {
    /// `mkdir`, `move` or `copy`.
    #[param(pattern = "^(mkdir|move|copy)$")]
    op: String,
    /// `mkdir`: create missing parents too.
    #[serde(default)]
    parents: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Where to move or copy to, relative to the workspace; never replaced.
    pub to: String,
}

/// `?op=mkdir` makes a directory; `?op=move` / `?op=copy` with `{"to"}`
/// renames or copies a file or directory (never replacing anything).
#[utoipa::path(
    post, path = "/api/v1/files/{path}", tag = "files",
    params(("path" = String, Path), PostQuery),
    request_body(content = Option<Destination>, description = "`{\"to\"}` for move and copy"),
    responses(
        (status = 201, body = EntryView),
        (status = 400, description = "Bad path (including more than 256 components)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The destination exists; the source is neither a file nor a directory (copy); the result would nest deeper than 256 levels", body = ErrorBody),
        (status = 503, description = "The worker is restarting or out of resources; see `Retry-After`", body = ErrorBody),
        (status = 507, description = "Over the byte or entry quota (`quota_exceeded`) or the disk is full (`disk_full`)", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
pub(super) async fn post_file(
    State(state): State<AppState>,
    Authed(principal): Authed,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    ApiQuery(query): ApiQuery<PostQuery>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let path = checked(&path?.0)?;
    let body = body?;
    let destination = || {
        if body.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "op={} needs a JSON body {{\"to\": PATH}}",
                query.op
            )));
        }
        let destination: Destination = serde_json::from_slice(&body)
            .map_err(|err| ApiError::Unprocessable(format!("the JSON body: {err}")))?;
        checked(&destination.to)
    };
    let (op, happened) = match query.op.as_str() {
        "mkdir" => (
            FileOp::Mkdir {
                path: path.clone(),
                parents: query.parents,
            },
            ActivityKind::DirCreated { path },
        ),
        "move" => {
            let to = destination()?;
            let kind = ActivityKind::FileMoved {
                from: path.clone(),
                to: to.clone(),
            };
            (FileOp::Move { from: path, to }, kind)
        }
        "copy" => {
            let to = destination()?;
            let kind = ActivityKind::FileCopied {
                from: path.clone(),
                to: to.clone(),
            };
            (FileOp::Copy { from: path, to }, kind)
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown op {other:?}: use mkdir, move or copy"
            )))
        }
    };
    match call(&state, &principal.ctx, op).await? {
        Reply::Entry(entry) => {
            announce(&state, &principal, happened);
            Ok(entry_response(StatusCode::CREATED, &entry))
        }
        other => Err(unexpected(other)),
    }
}

/// Tells the activity feed about a change the caller made.
fn announce(state: &AppState, principal: &crate::auth::Principal, kind: ActivityKind) {
    state
        .activity
        .publish(principal.user_id, Some(&principal.username), kind);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAnswer::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=90-200", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Whole, "invalid: ignored");
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=x-1", 100), Whole);
    }

    proptest::proptest! {
        /// `Range` is untrusted input: whatever it says, the part served
        /// lies inside the file, and nothing panics (issue 9, "any parser
        /// of untrusted input").
        #[test]
        fn any_range_header_serves_bytes_inside_the_file(
            value in "(bytes=)?[ 0-9,-]{0,24}|\\PC{0,24}",
            size in proptest::prop_oneof![0u64..300, proptest::num::u64::ANY],
        ) {
            if let RangeAnswer::Part(start, end) = parse_range(&value, size) {
                proptest::prop_assert!(start <= end && end < size, "{value:?} {size}: {start}-{end}");
            }
        }

        /// `If-Match` / `If-None-Match` lists: every tag found is trimmed
        /// and non-empty.
        #[test]
        fn entity_tag_lists_split_cleanly(value in "[ -~]{0,40}") {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(header::IF_MATCH, value);
            }
            for tag in header_tags(&headers, header::IF_MATCH).unwrap_or_default() {
                proptest::prop_assert!(!tag.is_empty() && tag.trim() == tag && !tag.contains(','));
            }
        }
    }
}
