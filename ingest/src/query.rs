//! Pagination parameters, parsed with errors that name the parameter.

use std::collections::HashMap;

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
