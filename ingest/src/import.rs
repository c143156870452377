//! `POST /v1/webhooks/import/kivicare`: move webhooks from KiviCare's webhook add-on.
//!
//! Takes the add-on's rows (`name`, `module_name`, `event_name`, `methods`, `status`, and
//! `webhook_data` with `url`, `headers[]`, `query_parameters[]`, `content_type`,
//! `form_data[]`, `json_data`, as an object or as the JSON text the add-on stores) and
//! creates the equivalent webhooks. Every row is translated and checked first; if any
//! cannot be, nothing is created and each problem is reported with its row. Names are
//! unique: a row whose name a webhook (or an earlier row) has is a `409 name_taken`, and
//! nothing is created.

use std::collections::HashMap;

use axum::body::Body as HttpBody;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use kivihook_core::signing::generate_secret;
use kivihook_core::webhook::{check_templates, Webhook, WebhookSpec};

use crate::error::{ApiError, ErrorDetail};
use crate::openapi::{errors, inputs};
use crate::request::{authorize, json_body, Scope};
use crate::AppState;

/// One row that cannot be imported, and why.
struct RowError {
    field: String,
    message: String,
}

fn row_error(field: impl Into<String>, message: impl Into<String>) -> RowError {
    RowError {
        field: field.into(),
        message: message.into(),
    }
}

/// `[{"key": …, "value": …}]` (the add-on's lists) as pairs; also `{"name": "value"}`.
fn pairs(v: Option<&Value>, field: &str) -> Result<Vec<(String, String)>, RowError> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let key = item.get("key").or_else(|| item.get("name")).and_then(text);
                // A value that is not text (an object, a list) was once dropped silently.
                let value = match item.get("value") {
                    None | Some(Value::Null) => Some(String::new()),
                    Some(v) => text(v),
                };
                match (key, value) {
                    (Some(k), Some(_)) if k.trim().is_empty() => None,
                    (Some(k), Some(v)) => Some(Ok((k.trim().to_owned(), v))),
                    _ => Some(Err(row_error(
                        format!("{field}[{i}]"),
                        "needs a `key` and a text `value`",
                    ))),
                }
            })
            .collect(),
        Some(Value::Object(obj)) => obj
            .iter()
            .map(|(k, v)| {
                text(v).map(|t| (k.clone(), t)).ok_or_else(|| {
                    row_error(
                        format!("{field}.{k}"),
                        "must be text, a number or a boolean",
                    )
                })
            })
            .collect(),
        Some(_) => Err(row_error(field, "must be a list of {\"key\", \"value\"}")),
    }
}

/// KiviCare's placeholders are `{{name}}` already; spaces inside the braces are normalised
/// and the same names are offered (`patient_name`, `appointment_date`, …), so the template
/// itself carries over. Names KiviHook does not offer are reported when the row is checked.
fn translate(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        match rest[start..].find("}}") {
            Some(end) => {
                let name = rest[start + 2..start + end].trim();
                out.push_str("{{ ");
                out.push_str(name);
                out.push_str(" }}");
                rest = &rest[start + end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A field that is text when present; anything else is the row's problem, not a default.
fn optional_text<'a>(v: Option<&'a Value>, field: &str) -> Result<Option<&'a str>, RowError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(row_error(field, "must be text")),
    }
}

/// One add-on row as a KiviHook webhook definition.
fn translate_row(row: &Value) -> Result<Value, RowError> {
    let obj = row
        .as_object()
        .ok_or_else(|| row_error("", "a row must be a JSON object"))?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| row_error("name", "is required"))?;
    let event = obj
        .get("event_name")
        .and_then(Value::as_str)
        .ok_or_else(|| row_error("event_name", "is required"))?;
    let method = optional_text(obj.get("methods").or_else(|| obj.get("method")), "methods")?
        .unwrap_or("POST");
    let enabled = match obj.get("status") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(Value::String(s)) => matches!(
            s.to_ascii_lowercase().as_str(),
            "1" | "active" | "enabled" | "yes" | "true"
        ),
        Some(_) => {
            return Err(row_error(
                "status",
                "must be 1/0, true/false or active/inactive",
            ))
        }
    };
    let data = match obj.get("webhook_data") {
        Some(Value::String(text)) => serde_json::from_str::<Value>(text)
            .map_err(|e| row_error("webhook_data", format!("is not JSON ({e})")))?,
        Some(v @ Value::Object(_)) => v.clone(),
        _ => {
            return Err(row_error(
                "webhook_data",
                "is required (an object, or its JSON text)",
            ))
        }
    };
    let url = data
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| row_error("webhook_data.url", "is required"))?;

    let mut headers = Map::new();
    let mut auth = json!({"type": "none"});
    for (k, v) in pairs(data.get("headers"), "webhook_data.headers")? {
        // A literal Authorization header becomes the webhook's auth, so that it is sealed
        // at rest and masked; a templated one stays a header.
        if k.eq_ignore_ascii_case("authorization") && !v.contains("{{") {
            if let Some(token) = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
            {
                auth = json!({"type": "bearer", "token": token.trim()});
                continue;
            }
            if let Some(b64) = v
                .strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
            {
                let decoded = STANDARD
                    .decode(b64.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
                if let Some((username, password)) = decoded {
                    auth = json!({"type": "basic", "username": username, "password": password});
                    continue;
                }
            }
        }
        headers.insert(k, Value::String(translate(&v)));
    }
    let query: Map<String, Value> = pairs(
        data.get("query_parameters"),
        "webhook_data.query_parameters",
    )?
    .into_iter()
    .map(|(k, v)| (k, Value::String(translate(&v))))
    .collect();
    let content_type = optional_text(data.get("content_type"), "webhook_data.content_type")?
        .unwrap_or("")
        .to_ascii_lowercase();
    let form = pairs(data.get("form_data"), "webhook_data.form_data")?;
    let json_data = match data.get("json_data") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => Some(v.to_string()),
    };
    let body = if content_type.contains("form") || (json_data.is_none() && !form.is_empty()) {
        let fields: Map<String, Value> = form
            .into_iter()
            .map(|(k, v)| (k, Value::String(translate(&v))))
            .collect();
        json!({"type": "form", "fields": fields})
    } else if let Some(template) = json_data {
        json!({"type": "json", "template": translate(&template)})
    } else {
        json!({"type": "default"})
    };
    headers.remove("Content-Type");
    headers.remove("content-type");
    Ok(json!({
        "name": name.trim(),
        "url": translate(url),
        "method": method.to_ascii_uppercase(),
        "events": [event],
        "headers": headers,
        "query": query,
        "body": body,
        "auth": auth,
        "enabled": enabled,
    }))
}

/// One webhook created by an import; its signing secret is shown in full this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct Imported {
    /// The row's index in the request.
    pub row: usize,
    pub id: String,
    pub name: String,
    /// `whsec_…`
    pub secret: String,
}

/// `201`: every row became a webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    pub imported: Vec<Imported>,
}

/// `422 import_failed`: rows that cannot be imported; nothing was created.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportFailed {
    pub error: ErrorDetail,
    pub rows: Vec<RowProblem>,
}

/// Why one row cannot be imported.
#[derive(Debug, Serialize, ToSchema)]
pub struct RowProblem {
    /// The row's index in the request.
    pub row: usize,
    /// The row's `name`, as sent (any JSON value; null when absent).
    #[schema(value_type = Object, required = true)]
    pub name: Option<Value>,
    /// The field of the translated webhook that is at fault.
    pub field: String,
    pub message: String,
}

/// Create webhooks from the rows of KiviCare's webhook add-on. Every row is translated and
/// checked first; if any cannot be, nothing is created and each problem is reported with
/// its row.
#[utoipa::path(
    post,
    path = "/v1/webhooks/import/kivicare",
    tag = "webhooks",
    operation_id = "import_kivicare",
    request_body(content = inputs::KiviCareImport, content_type = "application/json"),
    responses(
        (status = 201, description = "Every row became a webhook", body = ImportResult),
        errors::AdminAuth, errors::JsonBodyShape, errors::ImportRejected, errors::NameTaken,
        errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn kivicare(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: HttpBody,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let value = json_body(&headers, body, state.max_body_bytes).await?;
    let rows = match &value {
        Value::Array(rows) => rows.clone(),
        Value::Object(o) => o
            .get("webhooks")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| {
                ApiError::invalid(
                    "invalid_field",
                    "webhooks",
                    "must be an array of add-on rows",
                )
            })?,
        _ => {
            return Err(ApiError::invalid(
                "invalid_field",
                "webhooks",
                "must be an array of add-on rows",
            ))
        }
    };
    if rows.is_empty() || rows.len() > 500 {
        return Err(ApiError::invalid(
            "invalid_field",
            "webhooks",
            "must hold 1 to 500 rows",
        ));
    }
    let mut specs = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let spec = translate_row(row).and_then(|def| {
            WebhookSpec::from_json(&def)
                .and_then(|spec| check_templates(&spec).map(|()| spec))
                .map_err(|e| row_error(e.field, e.message))
        });
        match spec {
            Ok(spec) => specs.push(spec),
            Err(e) => errors.push(RowProblem {
                row: i,
                name: row.get("name").cloned(),
                field: e.field,
                message: e.message,
            }),
        }
    }
    if !errors.is_empty() {
        // Nothing half-imported: one bad row and no webhook is created.
        return Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ImportFailed {
                error: ErrorDetail {
                    code: "import_failed".into(),
                    message: format!(
                        "{} of {} rows cannot be imported; nothing was created",
                        errors.len(),
                        rows.len()
                    ),
                    field: Some("webhooks".into()),
                },
                rows: errors,
            }),
        )
            .into_response());
    }
    // Names are unique: no row may take a name a webhook has, or one an earlier row takes.
    let snapshot = state.registry.refresh().await?;
    let mut holders: HashMap<String, String> = snapshot
        .webhooks()
        .map(|w| (w.name.clone(), w.id.clone()))
        .collect();
    for (i, spec) in specs.iter().enumerate() {
        if let Some(holder) = holders.get(&spec.name) {
            return Err(ApiError::NameTaken(format!(
                "row {i}: a webhook named `{}` already exists ({holder}); names are unique, so rename the row or that webhook; nothing was created",
                spec.name
            )));
        }
        holders.insert(spec.name.clone(), format!("row {i} of this import"));
    }
    let mut imported: Vec<Imported> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let webhook = Webhook::create(spec, generate_secret());
        if let Err(e) = state.store.put_webhook(&webhook).await {
            // A name taken since the check (another request), or the store failing: take
            // back what this import created, so that it stays all or nothing.
            for done in &imported {
                let _ = state.store.delete_webhook(&done.id).await;
            }
            return Err(match e {
                kivihook_core::StoreError::NameTaken { name, id } => ApiError::NameTaken(format!(
                    "row {i}: a webhook named `{name}` already exists ({id}); names are unique, so rename the row or that webhook; nothing was created"
                )),
                other => other.into(),
            });
        }
        imported.push(Imported {
            row: i,
            id: webhook.id,
            name: webhook.name,
            secret: webhook.secret,
        });
    }
    tracing::info!(count = imported.len(), "KiviCare webhooks imported");
    Ok((StatusCode::CREATED, Json(ImportResult { imported })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_normalised_and_kept() {
        assert_eq!(
            translate("Hi {{patient_name}}, {{ doctor_name }}!"),
            "Hi {{ patient_name }}, {{ doctor_name }}!"
        );
        assert_eq!(translate("no braces"), "no braces");
        assert_eq!(translate("open {{ end"), "open {{ end");
    }
}
