//! What every handler does with a request before its own work: check the bearer token and
//! read a bounded JSON body.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use serde_json::Value;

use crate::error::ApiError;
use crate::AppState;

/// The id in a route's path; a path that cannot be read names no existing `what`.
pub fn path_id(
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    what: &'static str,
) -> Result<String, ApiError> {
    path.map(|axum::extract::Path(id)| id)
        .map_err(|_| ApiError::NotFound(what))
}

/// Which token an endpoint needs. The admin token may also send events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ingest,
    Admin,
}

/// Compare without leaking, through timing, how much of a token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn authorize(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    let admin = same(token.as_bytes(), state.admin_token.expose().as_bytes());
    let ingest = same(token.as_bytes(), state.ingest_token.expose().as_bytes());
    match (scope, admin, ingest) {
        (_, true, _) | (Scope::Ingest, _, true) => Ok(()),
        (Scope::Admin, false, true) => Err(ApiError::Forbidden),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Read a JSON body of at most `limit` bytes.
pub async fn json_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Value, ApiError> {
    let bytes = json_bytes(headers, body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// The bytes of a JSON body of at most `limit` bytes, not parsed yet.
pub async fn json_bytes(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))
}
