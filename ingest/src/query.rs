//! Pagination parameters, parsed with errors that name the parameter.

use std::collections::HashMap;

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

/// The listing envelope's paging fields.
pub fn page_fields(p: Paging, returned: usize, total: u64) -> serde_json::Value {
    let next = p.offset + returned;
    serde_json::json!({
        "total": total,
        "limit": p.limit,
        "offset": p.offset,
        "next_offset": if (next as u64) < total && returned > 0 { Some(next) } else { None },
    })
}
