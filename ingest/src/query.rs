//! Pagination and search parameters, parsed with errors that name the parameter.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// `?limit=&offset=`.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub limit: usize,
    pub offset: usize,
}

pub fn paging(q: &HashMap<String, String>) -> Result<Paging, ApiError> {
    let number = |name: &str, default: usize, min: usize, max: usize| -> Result<usize, ApiError> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_parameter",
                        name,
                        format!("must be an integer from {min} to {max}"),
                    )
                }),
        }
    };
    Ok(Paging {
        limit: number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?,
        offset: number("offset", 0, 0, 1_000_000)?,
    })
}

/// `?limit=&offset=` as documented; `paging` is what reads them.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Items per page.
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<u32>,
    /// Items to skip.
    #[param(minimum = 0, maximum = 1000000, default = 0)]
    offset: Option<u32>,
}

/// The paging fields of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageInfo {
    /// Items in the whole listing.
    pub total: u64,
    pub limit: usize,
    pub offset: usize,
    /// The `offset` of the next page; null on the last one.
    pub next_offset: Option<usize>,
}

impl PageInfo {
    pub fn of(p: Paging, returned: usize, total: u64) -> Self {
        let next = p.offset + returned;
        Self {
            total,
            limit: p.limit,
            offset: p.offset,
            next_offset: ((next as u64) < total && returned > 0).then_some(next),
        }
    }
}

/// Items per page of a listing that pages by cursor, unless `limit` says otherwise.
pub const CURSOR_DEFAULT_LIMIT: usize = 100;
pub const CURSOR_MAX_LIMIT: usize = 1000;
/// The longest `q` a search takes.
pub const MAX_SEARCH_LEN: usize = 200;

/// `?limit=&cursor=` of a listing of webhooks: a page of `limit` webhooks in creation order,
/// after the webhook the cursor names. A cursor (unlike an offset) stays right while
/// webhooks are created and deleted between pages: each webhook is listed exactly once.
#[derive(Debug, Clone)]
pub struct CursorPaging {
    pub limit: usize,
    /// The `(created_at, id)` of the last webhook of the previous page.
    pub after: Option<(DateTime<Utc>, String)>,
}

/// Read `limit` and `cursor`; each refusal names its parameter.
pub fn cursor_paging(q: &HashMap<String, String>) -> Result<CursorPaging, ApiError> {
    let limit = match q.get("limit") {
        None => CURSOR_DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=CURSOR_MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "invalid_parameter",
                    "limit",
                    format!("must be an integer from 1 to {CURSOR_MAX_LIMIT}"),
                )
            })?,
    };
    let after = match q.get("cursor") {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            ApiError::invalid(
                "invalid_parameter",
                "cursor",
                "is not a cursor this API gave out; pass `next_cursor` as it came",
            )
        })?),
    };
    Ok(CursorPaging { limit, after })
}

/// The cursor that continues after this webhook: its creation time and id, opaque to
/// clients (URL-safe base64, so it needs no escaping).
pub fn encode_cursor(created_at: &DateTime<Utc>, id: &str) -> String {
    let key = format!(
        "{} {id}",
        created_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    );
    URL_SAFE_NO_PAD.encode(key)
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, String)> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (at, id) = text.split_once(' ')?;
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    (!id.is_empty()).then(|| (at, id.to_owned()))
}

/// `?q=`: a case-insensitive piece of a webhook's name or URL, lowercased; `None` when
/// absent or empty.
pub fn search(q: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    match q.get("q") {
        Some(s) if s.chars().count() > MAX_SEARCH_LEN => Err(ApiError::invalid(
            "invalid_parameter",
            "q",
            format!("must be at most {MAX_SEARCH_LEN} characters"),
        )),
        Some(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_lowercase())),
        _ => Ok(None),
    }
}

/// Whether a webhook's name or URL holds `needle` (lowercased), ignoring case.
pub fn found(needle: &str, name: &str, url: &str) -> bool {
    name.to_lowercase().contains(needle) || url.to_lowercase().contains(needle)
}

/// Refuse a parameter a route does not take, naming it and the ones it does.
pub fn only(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ApiError::invalid(
            "invalid_parameter",
            k.as_str(),
            format!("is not a parameter; parameters are {}", allowed.join(", ")),
        )),
    }
}

/// `?dry_run=`: absent or `false` makes the change, `true` only checks it; any other value
/// is refused naming the parameter.
pub fn dry_run(q: &HashMap<String, String>) -> Result<bool, ApiError> {
    match q.get("dry_run").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::invalid(
            "invalid_parameter",
            "dry_run",
            "must be true or false",
        )),
    }
}

/// `?dry_run=` as documented; `dry_run` is what reads it.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DryRunParams {
    /// `true`: run every check the change would run (fields, templates, the outbound
    /// policy, the unique name) and store nothing. A refusal is the very error the change
    /// would get; otherwise `200` with the webhook as the change would leave it and
    /// `"dry_run": true`.
    #[param(default = false)]
    dry_run: Option<bool>,
}

/// `?limit=&cursor=` as documented; `cursor_paging` is what reads them.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CursorParams {
    /// Webhooks per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// Where the page starts: the `next_cursor` of the page before; the first page without.
    cursor: Option<String>,
}

/// `?q=` as documented; `search` is what reads it.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SearchParams {
    /// Only webhooks whose name or URL contains this, ignoring case.
    #[param(max_length = 200)]
    q: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_cursor_given_out_reads_back_as_the_webhook_it_names() {
        let at = DateTime::parse_from_rfc3339("2026-11-27T09:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = encode_cursor(&at, "wh_1");
        let p = cursor_paging(&query(&[("cursor", &c), ("limit", "7")])).unwrap();
        assert_eq!(p.limit, 7);
        assert_eq!(p.after, Some((at, "wh_1".to_owned())));
    }

    #[test]
    fn bad_paging_parameters_are_refused_naming_the_parameter() {
        for (k, v) in [
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "ten"),
            ("cursor", "not base64!"),
            ("cursor", "bm9wZQ"),
            ("cursor", ""),
        ] {
            match cursor_paging(&query(&[(k, v)])) {
                Err(ApiError::Invalid { field, .. }) => assert_eq!(field, k, "{k}={v}"),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
        assert_eq!(cursor_paging(&query(&[])).unwrap().limit, 100);
    }

    #[test]
    fn dry_run_is_true_or_false_and_nothing_else() {
        assert!(!dry_run(&query(&[])).unwrap());
        assert!(!dry_run(&query(&[("dry_run", "false")])).unwrap());
        assert!(dry_run(&query(&[("dry_run", "true")])).unwrap());
        for v in ["", "1", "yes", "TRUE"] {
            match dry_run(&query(&[("dry_run", v)])) {
                Err(ApiError::Invalid { field, .. }) => assert_eq!(field, "dry_run", "{v}"),
                other => panic!("dry_run={v}: {other:?}"),
            }
        }
    }
}
