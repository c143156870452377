//! The OpenAPI 3.1 document served at `/openapi.json`.
//!
//! Routes and their documentation are registered together (`utoipa_axum::routes!` in
//! `crate::router`), so a route cannot be served undocumented. Each handler's
//! `#[utoipa::path]` says what it answers; response bodies are the very types the handlers
//! serialize. This module adds what is shared: the security schemes, the error answers
//! (`errors`), the request bodies that handlers parse by hand (`inputs`), and the final
//! touches that utoipa has no attribute for.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::import::{ImportFailed, RowProblem};

pub mod errors;
pub mod inputs;

/// The document's fixed parts; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "KiviHook",
        description = "Reliable, signed webhook delivery for clinic events.\n\n\
            Every answer is JSON. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}` \
            with a 4xx status, or 503 with `Retry-After` when RabbitMQ or Redis cannot be \
            reached. A method a path does not serve is answered `405 method_not_allowed` with \
            an `Allow` header; a path that does not exist, `404 not_found`.\n\n\
            Tokens go in `Authorization: Bearer <token>`: the admin token for management, the \
            ingest token (or the admin token) for event intake.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "events", description = "Event intake and where each event stands"),
        (name = "catalogue", description = "The event types and their sample events (public)"),
        (name = "webhooks", description = "Webhook management, previews and test sends"),
        (name = "deliveries", description = "Attempt logs, dead letters, replays and statistics"),
        (name = "operations", description = "Metrics, liveness, readiness and this document (no token)"),
    ),
    components(schemas(ErrorBody, ErrorDetail, ImportFailed, RowProblem)),
    modifiers(&Shared),
)]
pub struct ApiDoc;

/// Security schemes and the shared error answers.
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (`KIVIHOOK_ADMIN_TOKEN`): every management route, and \
                         event intake too.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "ingest_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The ingest token (`KIVIHOOK_INGEST_TOKEN`): event intake only \
                         (`POST /v1/events`, `POST /v1/events/batch`); management routes answer \
                         it `403`.",
                    ))
                    .build(),
            ),
        );
        errors::add_components(components);
    }
}

/// The `{id}` of a webhook route.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct WebhookId {
    /// The webhook id (`wh_…`).
    id: String,
}

/// The whole document: `ApiDoc`, the routes' paths, and the operational endpoints, with
/// what utoipa cannot say itself.
pub fn document(routes: utoipa::openapi::OpenApi) -> Value {
    let mut doc = ApiDoc::openapi();
    doc.merge(routes);
    doc.merge(kivihook_core::ops::OpsApi::openapi());
    doc.merge(DocumentApi::openapi());
    let mut value = serde_json::to_value(&doc).unwrap_or(Value::Null);
    // The marker a dry run adds to the webhook it answers with (`?dry_run=true`).
    if let Some(properties) = value
        .pointer_mut("/components/schemas/Webhook/properties")
        .and_then(Value::as_object_mut)
    {
        properties.insert(
            "dry_run".into(),
            serde_json::json!({
                "type": "boolean",
                "description": "`true` on the answer to a dry run (`?dry_run=true`), which stored nothing; absent otherwise"
            }),
        );
    }
    // A dry-run create answers the webhook as it would be, without an id (nothing was
    // created): its own schema, so that nothing links from it to a webhook route.
    if let Some(mut plan) = value.pointer("/components/schemas/Webhook").cloned() {
        if let Some(p) = plan.get_mut("properties").and_then(Value::as_object_mut) {
            p.remove("id");
        }
        if let Some(r) = plan.get_mut("required").and_then(Value::as_array_mut) {
            r.retain(|f| f != "id");
        }
        plan["description"] = Value::String(
            "A webhook as a dry-run create (`?dry_run=true`) would make it: no `id`, since nothing was created.".into(),
        );
        if let Some(schemas) = value
            .pointer_mut("/components/schemas")
            .and_then(Value::as_object_mut)
        {
            schemas.insert("WebhookPlan".into(), plan);
        }
        if let Some(schema) = value.pointer_mut(
            "/paths/~1v1~1webhooks/post/responses/200/content/application~1json/schema",
        ) {
            *schema = serde_json::json!({"$ref": "#/components/schemas/WebhookPlan"});
        }
    }
    // utoipa 5 writes a link's fields in snake case; OpenAPI spells them in camel case.
    rename_link_fields(&mut value);
    // utoipa's header objects have no `required`; every header documented here is sent on
    // every answer of its status, so clients (and schemathesis) may rely on it.
    if let Some(responses) = value
        .pointer_mut("/components/responses")
        .and_then(Value::as_object_mut)
    {
        for response in responses.values_mut() {
            if let Some(headers) = response.get_mut("headers").and_then(Value::as_object_mut) {
                for h in headers.values_mut() {
                    if let Some(h) = h.as_object_mut() {
                        h.insert("required".into(), Value::Bool(true));
                    }
                }
            }
        }
    }
    value
}

/// `operation_id` → `operationId` (and the like) inside every response's `links`.
fn rename_link_fields(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for response in responses.values_mut() {
            let Some(links) = response.get_mut("links").and_then(Value::as_object_mut) else {
                continue;
            };
            for link in links.values_mut().filter_map(Value::as_object_mut) {
                for (from, to) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(v) = link.remove(from) {
                        link.insert(to.to_owned(), v);
                    }
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(paths(serve))]
struct DocumentApi;

/// The document, rendered once at start.
#[derive(Clone)]
pub struct Rendered(pub std::sync::Arc<str>);

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object,
        content_type = "application/json")),
)]
pub async fn serve(axum::extract::State(doc): axum::extract::State<Rendered>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.to_string(),
    )
        .into_response()
}
