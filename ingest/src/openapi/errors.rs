//! The error answers, described once as reusable responses and referred to by each
//! operation in groups (`errors::AdminAuth`, `errors::JsonBody`, …) that name which answers
//! a kind of handler can give. The status of each error is decided in `crate::error`; the
//! descriptions here follow it.

use std::collections::BTreeMap;

use serde_json::json;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::{Components, Ref, RefOr};
use utoipa::IntoResponses;

/// One shared error answer: its component name, status, description, an example, and the
/// header it always carries.
struct Shared {
    name: &'static str,
    status: &'static str,
    description: &'static str,
    code: &'static str,
    message: &'static str,
    field: Option<&'static str>,
    header: Option<(&'static str, &'static str, &'static str)>,
}

const UNAUTHORIZED: Shared = Shared {
    name: "Unauthorized",
    status: "401",
    description: "No bearer token, or not one this installation knows",
    code: "unauthorized",
    message: "missing or invalid bearer token",
    field: None,
    header: Some((
        "WWW-Authenticate",
        "^Bearer",
        "`Bearer`: send a bearer token",
    )),
};
const FORBIDDEN: Shared = Shared {
    name: "Forbidden",
    status: "403",
    description: "The ingest token, on a route that needs the admin token",
    code: "forbidden",
    message: "this token may not use this endpoint",
    field: None,
    header: None,
};
const INVALID_JSON: Shared = Shared {
    name: "InvalidJson",
    status: "400",
    description: "The body is not valid JSON (`invalid_json`)",
    code: "invalid_json",
    message: "the body is not valid JSON: expected value at line 1 column 1",
    field: Some(""),
    header: None,
};
const NOT_FOUND: Shared = Shared {
    name: "NotFound",
    status: "404",
    description: "No such resource (`not_found`)",
    code: "not_found",
    message: "webhook not found",
    field: None,
    header: None,
};
const IN_PROGRESS: Shared = Shared {
    name: "InProgress",
    status: "409",
    description: "Another request is accepting an event with the same id right now (`in_progress`); retry after `Retry-After` seconds",
    code: "in_progress",
    message: "event evt_123 is being accepted by another request; retry shortly",
    field: None,
    header: Some(("Retry-After", "^[0-9]+$", "Seconds to wait before retrying")),
};
const NAME_TAKEN: Shared = Shared {
    name: "NameTaken",
    status: "409",
    description: "Another webhook already has this name (`name_taken`): names are unique, since `apply`, the import and declared files match webhooks by name; nothing was changed",
    code: "name_taken",
    message: "a webhook named `CRM` already exists (wh_0f4c2a9e8b7d4e1f9a3c5b6d7e8f9a0b); names are unique, so choose another name or change that webhook",
    field: Some("name"),
    header: None,
};
const EDIT_CONFLICT: Shared = Shared {
    name: "EditConflict",
    status: "409",
    description: "The webhook kept changing under this edit (`edit_conflict`): another edit was saved between the read and the write each time it was tried; nothing was changed, so read it again and retry",
    code: "edit_conflict",
    message: "webhook wh_0f4c2a9e8b7d4e1f9a3c5b6d7e8f9a0b changed while this edit was being saved; nothing was changed: read it again and retry",
    field: None,
    header: None,
};
const NAME_TAKEN_OR_EDIT_CONFLICT: Shared = Shared {
    name: "NameTakenOrEditConflict",
    status: "409",
    description: "Another webhook already has this name (`name_taken`, field `name`), or the webhook kept changing under this edit (`edit_conflict`); nothing was changed",
    code: "name_taken",
    message: "a webhook named `CRM` already exists (wh_0f4c2a9e8b7d4e1f9a3c5b6d7e8f9a0b); names are unique, so choose another name or change that webhook",
    field: Some("name"),
    header: None,
};
const NOT_RESENDABLE: Shared = Shared {
    name: "NotResendable",
    status: "422",
    description: "The attempt's request was not kept (a test send, or a body over 64 KiB), so it cannot be sent again (`not_resendable`); replay its dead letter instead",
    code: "not_resendable",
    message: "this attempt's request body was not kept (a test send, or a body over 64 KiB); replay its dead letter instead",
    field: Some("id"),
    header: None,
};
const TOO_LARGE: Shared = Shared {
    name: "PayloadTooLarge",
    status: "413",
    description: "The body is larger than `KIVIHOOK_MAX_BODY_BYTES` (256 KiB by default)",
    code: "payload_too_large",
    message: "the body is larger than 262144 bytes",
    field: Some(""),
    header: None,
};
const MEDIA_TYPE: Shared = Shared {
    name: "UnsupportedMediaType",
    status: "415",
    description: "`Content-Type` is not `application/json` (or another `application/*+json`)",
    code: "unsupported_media_type",
    message: "content-type must be application/json",
    field: None,
    header: None,
};
const UNPROCESSABLE: Shared = Shared {
    name: "Unprocessable",
    status: "422",
    description: "Well-formed JSON, but a field, header or parameter is not acceptable; `field` names it (`invalid_field`, `missing_field`, `unknown_field`, `unknown_event_type`, `batch_too_large`, `invalid_header`, `invalid_parameter`, `forbidden_destination`)",
    code: "invalid_field",
    message: "must be one of POST, PUT, PATCH, GET, DELETE",
    field: Some("method"),
    header: None,
};
const UNAVAILABLE: Shared = Shared {
    name: "Unavailable",
    status: "503",
    description: "RabbitMQ or Redis cannot be reached (`unavailable`); nothing was half-done; retry after `Retry-After` seconds",
    code: "unavailable",
    message: "the state store is unavailable; retry shortly",
    field: None,
    header: Some(("Retry-After", "^[0-9]+$", "Seconds to wait before retrying")),
};

const ALL: &[Shared] = &[
    UNAUTHORIZED,
    FORBIDDEN,
    INVALID_JSON,
    NOT_FOUND,
    IN_PROGRESS,
    NAME_TAKEN,
    EDIT_CONFLICT,
    NAME_TAKEN_OR_EDIT_CONFLICT,
    NOT_RESENDABLE,
    TOO_LARGE,
    MEDIA_TYPE,
    UNPROCESSABLE,
    UNAVAILABLE,
];

fn error_response(e: &Shared) -> Response {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .example(Some(json!({
            "error": {"code": e.code, "message": e.message, "field": e.field}
        })))
        .build();
    let mut response = ResponseBuilder::new()
        .description(e.description)
        .content("application/json", content);
    if let Some((name, pattern, description)) = e.header {
        response = response.header(
            name,
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(pattern)),
                )
                .description(Some(description))
                .build(),
        );
    }
    response.build()
}

/// Register every shared error answer under `components.responses`.
pub(super) fn add_components(components: &mut Components) {
    for e in ALL {
        components
            .responses
            .insert(e.name.to_owned(), RefOr::T(error_response(e)));
    }
}

fn refs(items: &[&Shared]) -> BTreeMap<String, RefOr<Response>> {
    items
        .iter()
        .map(|e| {
            (
                e.status.to_owned(),
                RefOr::Ref(Ref::from_response_name(e.name)),
            )
        })
        .collect()
}

/// Declares a group of error answers that operations list in `responses(...)`.
macro_rules! group {
    ($(#[$doc:meta])* $name:ident => [$($e:ident),+]) => {
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                refs(&[$(&$e),+])
            }
        }
    };
}

group!(
    /// Event intake: any known token will do, so only a missing or unknown one is refused.
    IngestAuth => [UNAUTHORIZED]
);
group!(
    /// Management: the admin token only.
    AdminAuth => [UNAUTHORIZED, FORBIDDEN]
);
group!(
    /// A JSON request body, read with a size limit and checked field by field.
    JsonBody => [INVALID_JSON, TOO_LARGE, MEDIA_TYPE, UNPROCESSABLE]
);
group!(
    /// A JSON request body whose `422` answer has a shape of its own (the import).
    JsonBodyShape => [INVALID_JSON, TOO_LARGE, MEDIA_TYPE]
);
group!(
    /// A path id that may name nothing.
    NotFound => [NOT_FOUND]
);
group!(
    /// A query parameter that may be refused.
    InvalidParameter => [UNPROCESSABLE]
);
group!(
    /// An attempt whose request was not kept.
    NotResendable => [NOT_RESENDABLE]
);
group!(
    /// The same event id being accepted by another request at this moment.
    InProgress => [IN_PROGRESS]
);
group!(
    /// A webhook name that another webhook holds (a create, a rename, an import).
    NameTaken => [NAME_TAKEN]
);
group!(
    /// An edit that lost every compare-and-set against other edits of the same webhook.
    EditConflict => [EDIT_CONFLICT]
);
group!(
    /// A change that may take a name (a rename) and may lose to other edits.
    NameTakenOrEditConflict => [NAME_TAKEN_OR_EDIT_CONFLICT]
);
group!(
    /// RabbitMQ or Redis out of reach.
    Unavailable => [UNAVAILABLE]
);

/// The import's `422`: an ordinary error, or `import_failed` with the rows at fault.
pub struct ImportRejected;

impl IntoResponses for ImportRejected {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let schema = AnyOfBuilder::new()
            .item(Ref::from_schema_name("ErrorBody"))
            .item(Ref::from_schema_name("ImportFailed"));
        let response = ResponseBuilder::new()
            .description(
                "A field is not acceptable (an ordinary error), or rows cannot be imported \
                 (`import_failed`, with `rows`); nothing was created",
            )
            .content(
                "application/json",
                ContentBuilder::new().schema(Some(schema)).build(),
            )
            .build();
        BTreeMap::from([("422".to_owned(), RefOr::T(response))])
    }
}
