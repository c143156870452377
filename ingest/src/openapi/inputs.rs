//! Request bodies as the handlers accept them.
//!
//! Handlers read raw JSON and check it themselves (so every refusal is a `422` naming the
//! field), which leaves no type for utoipa to derive a schema from. These schemas restate
//! those checks for client generators: the catalogue, families, limits and reserved headers
//! come from `kivihook_core` itself, and the schemathesis test sends what they allow and
//! what they forbid to find any place where the two disagree.

use serde_json::json;
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder,
    Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use kivihook_core::event::{CATALOGUE, FAMILIES};
use kivihook_core::webhook::{limits, RESERVED_HEADERS};

use crate::events::MAX_BATCH;

/// Characters `char::is_control` refuses, as a regex class body.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";
/// An HTTP header name (RFC 9110 token characters).
const TOKEN: &str = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]";
/// `custom.<name>`: lowercase letters, digits, `_`, `-`, and dots between parts.
const CUSTOM_TYPE: &str = r"^custom\.[a-z0-9_-]+(\.[a-z0-9_-]+)*$";

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable(t: Type) -> SchemaType {
    SchemaType::from_iter([t, Type::Null])
}

/// `abc` → `[aA][bB][cC]`: ECMA-262 patterns have no inline case-insensitive flag.
fn any_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
            } else if c.is_ascii_alphanumeric() {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

/// Canonical types and KiviCare action names, in catalogue order.
fn type_names() -> Vec<String> {
    CATALOGUE
        .iter()
        .flat_map(|i| std::iter::once(i.name).chain(i.kivicare_actions.iter().copied()))
        .map(str::to_owned)
        .collect()
}

/// An event type: one of the catalogue, a KiviCare action name, or `custom.<name>`.
pub fn event_type_schema() -> AnyOfBuilder {
    AnyOfBuilder::new()
        .item(
            string()
                .enum_values(Some(type_names()))
                .description(Some("A catalogue type or a KiviCare action name")),
        )
        .item(
            string()
                .pattern(Some(CUSTOM_TYPE))
                .max_length(Some(100))
                .description(Some("A clinic-defined type")),
        )
        .description(Some(
            "An event type from `GET /v1/event-types`, a KiviCare action name (stored as its \
             type), or `custom.<name>`",
        ))
        .examples([json!("appointment.booked")])
}

/// An event pattern: `*`, `<family>.*`, or one event type.
fn event_pattern_schema() -> AnyOfBuilder {
    let mut names = vec!["*".to_owned()];
    names.extend(FAMILIES.iter().map(|f| format!("{f}.*")));
    names.extend(type_names());
    AnyOfBuilder::new()
        .item(string().enum_values(Some(names)))
        .item(string().pattern(Some(CUSTOM_TYPE)).max_length(Some(100)))
        .description(Some(
            "`*` (every event), `<family>.*` (`appointment.*`), or one event type; KiviCare \
             action names are stored as their type",
        ))
        .examples([json!("appointment.*")])
}

/// A clinic id: a string, or KiviCare's numeric id (stored as text).
fn clinic_id_schema() -> AnyOfBuilder {
    AnyOfBuilder::new()
        .item(
            string()
                .min_length(Some(1))
                .max_length(Some(limits::CLINIC_ID))
                .pattern(Some(format!("^[^{CONTROL}]+$"))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                // Exactly: the `as f64` of these rounds outward.
                .minimum(Some(i64::MIN as isize))
                .maximum(Some(u64::MAX as usize)),
        )
        .examples([json!("12")])
}

/// One event of `POST /v1/events` or of a batch.
pub struct EventIn;

impl PartialSchema for EventIn {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "An event. Fields other than these are refused. The whole body is at most \
                 `KIVIHOOK_MAX_BODY_BYTES` (256 KiB by default).",
            ))
            .property(
                "id",
                ObjectBuilder::new()
                    .schema_type(nullable(Type::String))
                    .min_length(Some(1))
                    .max_length(Some(200))
                    .pattern(Some("^[!-~]+$"))
                    .description(Some(
                        "The dedup key: 1 to 200 printable ASCII characters without spaces. \
                         Without it, the `Idempotency-Key` header, else a generated `evt_…`.",
                    )),
            )
            .property("type", event_type_schema())
            .required("type")
            .property(
                "clinic_id",
                OneOfBuilder::new()
                    .item(clinic_id_schema())
                    .item(ObjectBuilder::new().schema_type(Type::Null))
                    .description(Some("The clinic it happened at; webhooks may filter on it")),
            )
            .property(
                "occurred_at",
                ObjectBuilder::new()
                    .schema_type(nullable(Type::String))
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                    .description(Some("RFC 3339; the time of receipt when absent")),
            )
            .property(
                "data",
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .description(Some(
                        "The event's data; KiviCare's field names (patient_name, doctor_name, \
                         appointment_date, …) become template placeholders",
                    )),
            )
            .required("data")
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
            .examples([json!({
                "id": "evt_123",
                "type": "appointment.booked",
                "clinic_id": "12",
                "occurred_at": "2026-11-27T09:00:00Z",
                "data": {"patient_name": "Ada", "appointment_date": "2026-11-28"}
            })])
            .into()
    }
}

impl ToSchema for EventIn {}

/// `POST /v1/events/batch`: `{"events": [...]}` or a bare array.
pub struct BatchIn;

impl PartialSchema for BatchIn {
    fn schema() -> RefOr<Schema> {
        let events = || {
            ArrayBuilder::new()
                .items(Ref::from_schema_name("EventIn"))
                .min_items(Some(1))
                .max_items(Some(MAX_BATCH))
        };
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .property("events", events())
                    .required("events")
                    .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false))),
            )
            .item(events())
            .description(Some(
                "1 to 500 events, as `{\"events\": [...]}` or a JSON array; the whole body is at \
                 most `KIVIHOOK_MAX_BODY_BYTES` (256 KiB by default)",
            ))
            .into()
    }
}

impl ToSchema for BatchIn {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("EventIn".into(), EventIn::schema()));
    }
}

/// `name`: 1 to 200 characters once trimmed, no control characters.
fn name_schema() -> ObjectBuilder {
    string()
        .min_length(Some(1))
        .max_length(Some(limits::NAME))
        .pattern(Some(format!(r"^[^{CONTROL}]*[^\s{CONTROL}][^{CONTROL}]*$")))
        .description(Some("1 to 200 characters (surrounding spaces are trimmed)"))
        .examples([json!("CRM: appointments")])
}

/// `url`: http(s), at most 2048 characters, optionally with `{{placeholders}}`.
fn url_schema() -> ObjectBuilder {
    string()
        .max_length(Some(limits::URL))
        .pattern(Some("^[hH][tT][tT][pP][sS]?://"))
        .description(Some(
            "An http:// or https:// URL without credentials or #fragment, at most 2048 \
             characters; `{{placeholders}}` are allowed. It must not lead to a loopback, \
             private or link-local address unless `KIVIHOOK_OUTBOUND_ALLOW` permits it.",
        ))
        .examples([json!("https://crm.example/hooks/kivihook")])
}

fn method_schema() -> ObjectBuilder {
    string()
        .enum_values(Some(["POST", "PUT", "PATCH", "GET", "DELETE"]))
        .description(Some("The HTTP method of each delivery; POST by default"))
}

/// Header names a webhook may set: tokens that KiviHook does not set itself.
fn header_name_pattern() -> String {
    let reserved: Vec<String> = RESERVED_HEADERS.iter().map(|h| any_case(h)).collect();
    format!(
        "^(?!(?:{})$){TOKEN}{{1,{}}}$",
        reserved.join("|"),
        limits::PAIR_NAME
    )
}

/// A header value or query parameter value: a template of at most 8192 characters.
fn value_schema(crlf: bool) -> ObjectBuilder {
    let s = string().max_length(Some(limits::VALUE));
    if crlf {
        s.pattern(Some(r"^[^\u0000-\u0008\u000A-\u001F\u007F]*$"))
    } else {
        s
    }
}

fn headers_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(limits::PAIRS))
        .property_names(Some(string().pattern(Some(header_name_pattern()))))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::OneOf(
            OneOfBuilder::new()
                .item(value_schema(true))
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Object)
                        .property("value", value_schema(true))
                        .property("secret", ObjectBuilder::new().schema_type(Type::Boolean))
                        .required("value")
                        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(
                            false,
                        )))
                        .description(Some(
                            "A value with `\"secret\": true`: sealed at rest and masked in \
                             answers like a credential",
                        )),
                )
                .build(),
        )))))
        .description(Some(
            "Headers to send, name → value (`{{placeholders}}` allowed), or name → \
             {\"value\": …, \"secret\": true} for a credential whose name does not say so \
             (names with authorization, cookie, token, secret, key, password, auth, session or \
             signature are credentials already); at most 50, never one KiviHook sets itself \
             (webhook-id, webhook-timestamp, webhook-signature, content-length, \
             transfer-encoding, host, connection)",
        ))
}

fn query_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(limits::PAIRS))
        .property_names(Some(
            string()
                .min_length(Some(1))
                .max_length(Some(limits::PAIR_NAME)),
        ))
        .additional_properties(Some(value_schema(false)))
        .description(Some(
            "Query parameters added to the URL, name → value (`{{placeholders}}` allowed); at \
             most 50",
        ))
}

/// A credential, user name or API key name.
fn credential() -> ObjectBuilder {
    string()
        .min_length(Some(1))
        .max_length(Some(limits::CREDENTIAL))
        .pattern(Some(r"^[^\r\n\u0000]+$"))
}

fn tagged(kind: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("type", string().enum_values(Some([kind])))
        .required("type")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

fn auth_schema() -> Schema {
    OneOfBuilder::new()
        .item(tagged("none").title(Some("No auth")))
        .item(
            tagged("api_key")
                .title(Some("API key in a header"))
                .property("name", credential().pattern(Some(header_name_pattern())))
                .required("name")
                .property("value", credential())
                .required("value")
                .property("in", string().enum_values(Some(["header"]))),
        )
        .item(
            tagged("api_key")
                .title(Some("API key in the query"))
                .property("name", credential())
                .required("name")
                .property("value", credential())
                .required("value")
                .property("in", string().enum_values(Some(["query"])))
                .required("in"),
        )
        .item(
            tagged("bearer")
                .title(Some("Bearer token"))
                .property("token", credential())
                .required("token"),
        )
        .item(
            tagged("basic")
                .title(Some("HTTP basic"))
                .property("username", credential().pattern(Some(r"^[^\r\n\u0000:]+$")))
                .required("username")
                .property("password", credential())
                .required("password"),
        )
        .description(Some(
            "How deliveries authenticate to the endpoint; credentials are sealed at rest and \
             masked in answers (send a masked value back unchanged to keep the real one)",
        ))
        .into()
}

fn body_schema() -> Schema {
    OneOfBuilder::new()
        .item(tagged("default").title(Some("The signed JSON envelope")))
        .item(
            tagged("json")
                .title(Some("A JSON template"))
                .property(
                    "template",
                    string()
                        .min_length(Some(1))
                        .max_length(Some(limits::TEMPLATE)),
                )
                .required("template"),
        )
        .item(
            tagged("form")
                .title(Some("Form fields"))
                .property(
                    "fields",
                    ObjectBuilder::new()
                        .schema_type(Type::Object)
                        .additional_properties(Some(value_schema(false))),
                )
                .required("fields"),
        )
        .description(Some(
            "What each delivery carries: the signed envelope, or a `json` / `form` template \
             with `{{placeholders}}`, checked against sample events when saved",
        ))
        .into()
}

/// Which body a definition schema describes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Definition {
    /// `POST /v1/webhooks`: name, url and events required; a signing secret may be given.
    Create,
    /// `PATCH /v1/webhooks/{id}`: any field; a signing secret may be given.
    Patch,
    /// `POST /v1/webhooks/preview`: as for create, but never saved, so no secret.
    Draft,
}

/// A signing secret as `SigningKey::parse` takes it: `whsec_` and the canonical, padded
/// base64 of at least 24 bytes.
const SECRET: &str = "^whsec_(?:[A-Za-z0-9+/]{4}){6,}(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";

/// Every field of a definition.
fn webhook_schema(kind: Definition) -> RefOr<Schema> {
    let number_or_null = |t: Type| ObjectBuilder::new().schema_type(nullable(t));
    let mut o = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("name", name_schema())
        .property("url", url_schema())
        .property("method", method_schema())
        .property(
            "events",
            ArrayBuilder::new()
                .items(event_pattern_schema())
                .min_items(Some(1))
                .max_items(Some(limits::PATTERNS))
                .description(Some("The event patterns it subscribes to")),
        )
        .property(
            "clinic_ids",
            ArrayBuilder::new()
                .items(clinic_id_schema())
                .max_items(Some(limits::CLINIC_IDS))
                .description(Some(
                    "Only events of these clinics; empty means every clinic",
                )),
        )
        .property("headers", headers_schema())
        .property(
            "enabled",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .description(Some("true by default")),
        )
        .property(
            "retry_schedule",
            ArrayBuilder::new()
                .schema_type(nullable(Type::Array))
                .items(
                    ObjectBuilder::new()
                        .schema_type(Type::Number)
                        .minimum(Some(0.0))
                        .maximum(Some(7.0 * 86_400.0)),
                )
                .max_items(Some(kivihook_core::retry::MAX_STEPS))
                .description(Some(
                    "Seconds to wait after each failed attempt; null for the installation's \
                     schedule, [] for a single attempt",
                )),
        )
        .property(
            "rate_limit",
            number_or_null(Type::Number)
                .exclusive_minimum(Some(0.0))
                .maximum(Some(limits::RATE_LIMIT))
                .description(Some(
                    "Requests per second across all dispatchers; null for none",
                )),
        )
        .property(
            "max_concurrency",
            number_or_null(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(limits::CONCURRENCY as f64))
                .description(Some(
                    "Requests in flight per dispatcher; null for the installation's default",
                )),
        )
        .property("auth", auth_schema())
        .property(
            "follow_redirects",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .description(Some("Follow redirects, each hop checked; false by default")),
        )
        .property("query", query_schema())
        .property("body", body_schema())
        .property(
            "url_secret",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .description(Some(
                    "The URL is the credential (Slack, Discord, Teams, Make, Zapier): sealed at \
                 rest, its path masked in answers and logs; false by default",
                )),
        )
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
    if kind != Definition::Draft {
        o = o.property(
            "secret",
            ObjectBuilder::new()
                .schema_type(nullable(Type::String))
                .pattern(Some(SECRET))
                .description(Some(
                    "The signing secret to use (restoring a backup, say); generated when absent. \
                     Given on PATCH it replaces the current one at once, without an overlap.",
                )),
        );
    }
    if kind != Definition::Patch {
        o = o
            .required("name")
            .required("url")
            .required("events")
            .examples([json!({
                "name": "CRM: appointments",
                "url": "https://crm.example/hooks/kivihook",
                "events": ["appointment.*"],
                "clinic_ids": ["12"],
                "auth": {"type": "bearer", "token": "crm-token-0123456789"}
            })]);
    } else {
        o = o.examples([json!({"enabled": false})]);
    }
    o.into()
}

/// `POST /v1/webhooks`.
pub struct WebhookCreate;

impl PartialSchema for WebhookCreate {
    fn schema() -> RefOr<Schema> {
        webhook_schema(Definition::Create)
    }
}

impl ToSchema for WebhookCreate {}

/// `PATCH /v1/webhooks/{id}`: only the fields to change.
pub struct WebhookPatch;

impl PartialSchema for WebhookPatch {
    fn schema() -> RefOr<Schema> {
        webhook_schema(Definition::Patch)
    }
}

impl ToSchema for WebhookPatch {}

/// `POST /v1/webhooks/preview`: a definition to preview, not saved.
pub struct WebhookDraft;

impl PartialSchema for WebhookDraft {
    fn schema() -> RefOr<Schema> {
        webhook_schema(Definition::Draft)
    }
}

impl ToSchema for WebhookDraft {}

/// `POST /v1/webhooks/import/kivicare`: the add-on's rows.
pub struct KiviCareImport;

impl PartialSchema for KiviCareImport {
    fn schema() -> RefOr<Schema> {
        let scalar = |null: bool| {
            let mut types = vec![Type::String, Type::Number, Type::Boolean];
            if null {
                types.push(Type::Null);
            }
            ObjectBuilder::new().schema_type(SchemaType::from_iter(types))
        };
        let pairs = || {
            AnyOfBuilder::new()
                .item(
                    ArrayBuilder::new().items(
                        ObjectBuilder::new()
                            .schema_type(Type::Object)
                            .property("key", scalar(false))
                            .property("value", scalar(true))
                            .description(Some(
                                "`key` (the add-on also writes `name`) and `value`; an empty \
                                 key is skipped",
                            )),
                    ),
                )
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Object)
                        .additional_properties(Some(scalar(false))),
                )
                .item(ObjectBuilder::new().schema_type(Type::Null))
                .description(Some(
                    "`[{\"key\", \"value\"}]` as the add-on stores them, or name → value",
                ))
        };
        let data = || {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("url", url_schema())
                .required("url")
                .property("headers", pairs())
                .property("query_parameters", pairs())
                .property("form_data", pairs())
                .property(
                    "content_type",
                    ObjectBuilder::new()
                        .schema_type(nullable(Type::String))
                        .description(Some("`application/json` or a form type")),
                )
                .property(
                    "json_data",
                    ObjectBuilder::new()
                        .schema_type(SchemaType::AnyValue)
                        .description(Some("The JSON body template: its text, or the JSON itself")),
                )
        };
        let row = || {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("name", name_schema())
                .required("name")
                .property("event_name", event_pattern_schema())
                .required("event_name")
                .property(
                    "methods",
                    ObjectBuilder::new()
                        .schema_type(nullable(Type::String))
                        .pattern(Some(format!(
                            "^(?:{})$",
                            ["POST", "PUT", "PATCH", "GET", "DELETE"]
                                .iter()
                                .map(|m| any_case(m))
                                .collect::<Vec<_>>()
                                .join("|")
                        ))),
                )
                .property(
                    "status",
                    ObjectBuilder::new()
                        .schema_type(SchemaType::from_iter([
                            Type::Boolean,
                            Type::Integer,
                            Type::String,
                            Type::Null,
                        ]))
                        .description(Some(
                            "1/0, true/false or active/inactive; active by default",
                        )),
                )
                .property(
                    "webhook_data",
                    AnyOfBuilder::new()
                        .item(data())
                        .item(string().description(Some("The same object as JSON text"))),
                )
                .required("webhook_data")
                .description(Some("One row of KiviCare's webhook add-on"))
        };
        let rows = || {
            ArrayBuilder::new()
                .items(row())
                .min_items(Some(1))
                .max_items(Some(500))
        };
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .property("webhooks", rows())
                    .required("webhooks"),
            )
            .item(rows())
            .description(Some(
                "The add-on's rows, as `{\"webhooks\": [...]}` or a JSON array; every row is \
                 translated and checked before any webhook is created",
            ))
            .into()
    }
}

impl ToSchema for KiviCareImport {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_case_matches_every_casing_and_escapes_the_rest() {
        assert_eq!(any_case("Ab-1"), "[aA][bB]\\-1");
    }

    #[test]
    fn the_header_pattern_names_every_reserved_header() {
        let p = header_name_pattern();
        for h in RESERVED_HEADERS {
            assert!(p.contains(&any_case(h)), "{h}");
        }
    }
}
