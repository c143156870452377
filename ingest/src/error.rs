//! Every API error, and the one place that maps each to its status code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use kivihook_core::webhook::InvalidField;
use kivihook_core::StoreError;

/// The body of every error answer: `{"error": {"code", "message", "field"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and for people (`message`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `unauthorized`, `forbidden`, `invalid_json`,
    /// `unsupported_media_type`, `payload_too_large`, `invalid_field`, `missing_field`,
    /// `unknown_field`, `unknown_event_type`, `batch_too_large`, `invalid_header`,
    /// `invalid_parameter`, `forbidden_destination`, `not_resendable`, `import_failed`,
    /// `not_found`, `method_not_allowed`, `in_progress`, `name_taken`, `edit_conflict`,
    /// `unavailable`.
    #[schema(example = "invalid_field")]
    pub code: String,
    /// For people; wording may change.
    pub message: String,
    /// The offending field, header or parameter (`events[3].type`, `Idempotency-Key`);
    /// empty when the whole body is at fault; null when no input is.
    #[schema(required = true)]
    pub field: Option<String>,
}

/// An error answered as `{"error": {"code", "message", "field"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this token may not use this endpoint")]
    Forbidden,
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// Not valid JSON inside one field (an event's `data`): the body reads, the field does not.
    #[error("the body is not valid JSON: {field}: {message}")]
    InvalidJsonIn { field: String, message: String },
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{message}")]
    Invalid {
        code: &'static str,
        field: String,
        message: String,
    },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("event {0} is being accepted by another request; retry shortly")]
    InProgress(String),
    /// The attempt exists but its request was not kept, so there is nothing to send again:
    /// a conflict with the attempt's state, not a fault in the request.
    #[error("this attempt's request body was not kept (a test send, or a body over 64 KiB); replay its dead letter instead")]
    NotResendable,
    /// Another webhook has this name (names are unique: `apply`, the import and declared
    /// files match webhooks by name). The message names it and the webhook holding it.
    #[error("{0}")]
    NameTaken(String),
    /// The webhook changed between the read and the write each time the edit was tried.
    #[error("webhook {0} changed while this edit was being saved; nothing was changed: read it again and retry")]
    EditConflict(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn invalid(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The machine-readable code, also the metrics label for rejected requests.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::InvalidJson(_) | Self::InvalidJsonIn { .. } => "invalid_json",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Invalid { code, .. } => code,
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InProgress(_) => "in_progress",
            Self::NotResendable => "not_resendable",
            Self::NameTaken(_) => "name_taken",
            Self::EditConflict(_) => "edit_conflict",
            Self::Unavailable(_) => "unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::InvalidJson(_) | Self::InvalidJsonIn { .. } => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid { .. } | Self::NotResendable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InProgress(_) | Self::NameTaken(_) | Self::EditConflict(_) => {
                StatusCode::CONFLICT
            }
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::InvalidJsonIn { field, .. } => Some(field),
            Self::InvalidJson(_) | Self::PayloadTooLarge(_) => Some(""),
            Self::NotResendable => Some("id"),
            Self::NameTaken(_) => Some("name"),
            _ => None,
        }
    }
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> Self {
        Self::invalid("invalid_field", e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if !matches!(
            e,
            StoreError::NameTaken { .. } | StoreError::EditConflict { .. }
        ) {
            tracing::warn!(error = %e, "store error while serving a request");
        }
        match e {
            StoreError::Unavailable(_) => {
                Self::Unavailable("the state store is unavailable; retry shortly".into())
            }
            StoreError::Corrupt(why) => {
                Self::Unavailable(format!("stored data cannot be read: {why}"))
            }
            StoreError::NameTaken { name, id } => Self::NameTaken(format!(
                "a webhook named `{name}` already exists ({id}); names are unique, so choose another name or change that webhook"
            )),
            StoreError::EditConflict { id } => Self::EditConflict(id),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                field: self.field().map(str::to_owned),
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable(_) | Self::InProgress(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
