//! Webhooks (subscriptions): the stored model, event patterns, the clinic filter, and the
//! parsing of what the management API receives.
//!
//! Parse, don't validate: `WebhookSpec::from_json` is the only way from user JSON to a
//! webhook, and every rule about URLs, headers and patterns lives there.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::event::{EventType, FAMILIES};
use crate::retry::RetrySchedule;

/// HTTP methods a webhook may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Post,
    Put,
    Patch,
    Get,
    Delete,
}

impl Method {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "GET" => Self::Get,
            "DELETE" => Self::Delete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Get => "GET",
            Self::Delete => "DELETE",
        }
    }
}

/// Where an API key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyLocation {
    Header,
    Query,
}

/// Whether a header carries a credential by its name: `Authorization`, `Cookie`,
/// `Proxy-Authorization`, or any name with `token`, `secret`, `key`, `password`, `auth`,
/// `session` or `signature` in it. Such headers are never sent to another origin on a
/// redirect, and their values are cut out of stored and logged errors.
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "cookie" | "proxy-authorization"
    ) || [
        "token",
        "secret",
        "key",
        "password",
        "passwd",
        "auth",
        "session",
        "signature",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// How a webhook authenticates to its endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Auth {
    #[default]
    None,
    ApiKey {
        name: String,
        value: String,
        #[serde(rename = "in")]
        location: KeyLocation,
    },
    Bearer {
        token: String,
    },
    Basic {
        username: String,
        password: String,
    },
}

impl Auth {
    /// The credential it carries (sealed at rest, masked in answers).
    pub fn credential_mut(&mut self) -> Option<&mut String> {
        match self {
            Self::None => None,
            Self::ApiKey { value, .. } => Some(value),
            Self::Bearer { token } => Some(token),
            Self::Basic { password, .. } => Some(password),
        }
    }

    /// The same, with its credential masked.
    pub fn masked(&self) -> Self {
        let mut m = self.clone();
        if let Some(c) = m.credential_mut() {
            *c = mask_credential(c);
        }
        m
    }

    pub fn credential(&self) -> Option<&str> {
        match self {
            Self::None => None,
            Self::ApiKey { value, .. } => Some(value),
            Self::Bearer { token } => Some(token),
            Self::Basic { password, .. } => Some(password),
        }
    }

    /// A PATCH that sends back the masked credential it was shown keeps the real one.
    pub fn keep_masked(&mut self, current: &Self) {
        if std::mem::discriminant(self) != std::mem::discriminant(current) {
            return;
        }
        let (Some(real), Some(shown)) = (
            current.credential(),
            current.masked().credential().map(str::to_owned),
        ) else {
            return;
        };
        if let Some(new) = self.credential_mut() {
            if *new == shown {
                *new = real.to_owned();
            }
        }
    }
}

/// What a delivery's body is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// The signed JSON envelope.
    #[default]
    Default,
    /// A JSON document rendered from a template.
    Json { template: String },
    /// `application/x-www-form-urlencoded` fields, each rendered from a template.
    Form { fields: BTreeMap<String, String> },
}

/// A signing secret that was rotated out and still signs until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PreviousSecret {
    pub secret: String,
    pub expires_at: DateTime<Utc>,
}

/// An event pattern: `*`, `<family>.*`, or one event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    All,
    Family(String),
    Exact(String),
}

impl Pattern {
    /// Parse a pattern; KiviCare action names are accepted and stored canonically.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::All);
        }
        if let Some(family) = s.strip_suffix(".*") {
            return if FAMILIES.contains(&family) {
                Ok(Self::Family(format!("{family}.")))
            } else {
                Err(format!(
                    "`{s}` names no event family; families are {}",
                    FAMILIES.join(", ")
                ))
            };
        }
        EventType::parse(s)
            .map(|t| Self::Exact(t.as_str().to_owned()))
            .map_err(|e| e.to_string())
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Family(prefix) => event_type.starts_with(prefix.as_str()),
            Self::Exact(t) => t == event_type,
        }
    }

    /// The canonical text form, as stored and shown.
    pub fn as_string(&self) -> String {
        match self {
            Self::All => "*".to_owned(),
            Self::Family(prefix) => format!("{prefix}*"),
            Self::Exact(t) => t.clone(),
        }
    }
}

/// A stored webhook; the API shows it with `secret` masked (except once, on create) and
/// credentials in `auth` masked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Webhook {
    pub id: String,
    pub name: String,
    pub url: String,
    pub method: Method,
    /// Canonical patterns (`*`, `appointment.*`, `patient.created`).
    pub events: Vec<String>,
    /// Empty means every clinic.
    pub clinic_ids: Vec<String>,
    pub headers: BTreeMap<String, String>,
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Seconds between attempts; `None` uses the installation's schedule.
    #[serde(default)]
    pub retry_schedule: Option<Vec<f64>>,
    /// Requests per second across every dispatcher; `None` is unlimited.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Requests in flight from one dispatcher; `None` uses the installation's default.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    #[serde(default)]
    pub auth: Auth,
    /// Follow redirects (each hop checked by the outbound guard); off by default.
    #[serde(default)]
    pub follow_redirects: bool,
    /// Query parameters added to the URL, name → template.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Body,
    /// Headers marked `"secret": true` (beside those whose names mark a credential, see
    /// `is_secret_header`): sealed at rest, masked in every answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_headers: Vec<String>,
    /// The URL is itself a credential (Slack, Discord, Teams, Make, Zapier): sealed at rest,
    /// its path masked in answers, attempt logs and errors.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub url_secret: bool,
    /// Rotated-out secrets that keep signing beside `secret` until they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<PreviousSecret>,
    /// `whsec_…`; shown once on create, masked everywhere else.
    pub secret: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A webhook with its patterns parsed once, for matching on the per-event path.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub webhook: std::sync::Arc<Webhook>,
    patterns: Vec<Pattern>,
}

impl Subscription {
    pub fn new(webhook: Webhook) -> Self {
        let patterns = webhook
            .events
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .collect();
        Self {
            webhook: std::sync::Arc::new(webhook),
            patterns,
        }
    }

    /// The patterns that parsed (a stored one that no longer does matches nothing), for
    /// indexes that must agree with `matches` exactly.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether this webhook wants an event of this type from this clinic.
    pub fn matches(&self, event_type: &str, clinic_id: Option<&str>) -> bool {
        let w = &self.webhook;
        if !w.enabled {
            return false;
        }
        let clinic_ok = w.clinic_ids.is_empty()
            || clinic_id.is_some_and(|c| w.clinic_ids.iter().any(|id| id == c));
        clinic_ok && self.patterns.iter().any(|p| p.matches(event_type))
    }
}

impl Webhook {
    /// A new webhook with a fresh id.
    pub fn create(spec: WebhookSpec, secret: String) -> Self {
        let now = Utc::now();
        let mut w = Self {
            id: format!("wh_{}", uuid::Uuid::new_v4().simple()),
            name: String::new(),
            url: String::new(),
            method: Method::default(),
            events: Vec::new(),
            clinic_ids: Vec::new(),
            headers: BTreeMap::new(),
            enabled: true,
            disabled_reason: None,
            retry_schedule: None,
            rate_limit: None,
            max_concurrency: None,
            auth: Auth::None,
            follow_redirects: false,
            query: BTreeMap::new(),
            body: Body::Default,
            secret_headers: Vec::new(),
            url_secret: false,
            previous_secrets: Vec::new(),
            secret,
            created_at: now,
            updated_at: now,
        };
        w.apply(spec);
        w.updated_at = now;
        w
    }

    /// Take every user-settable field from `spec`; enabling clears the disabled reason.
    pub fn apply(&mut self, spec: WebhookSpec) {
        if spec.enabled && !self.enabled {
            self.disabled_reason = None;
        }
        self.name = spec.name;
        self.url = spec.url;
        self.method = spec.method;
        self.events = spec.events;
        self.clinic_ids = spec.clinic_ids;
        self.headers = spec.headers;
        self.enabled = spec.enabled;
        self.retry_schedule = spec.retry_schedule;
        self.rate_limit = spec.rate_limit;
        self.max_concurrency = spec.max_concurrency;
        self.auth = spec.auth;
        self.follow_redirects = spec.follow_redirects;
        self.query = spec.query;
        self.body = spec.body;
        self.secret_headers = spec.secret_headers;
        self.url_secret = spec.url_secret;
        self.updated_at = Utc::now();
    }

    /// Whether a header of this webhook carries a credential: by its name, or marked.
    pub fn is_credential_header(&self, name: &str) -> bool {
        is_secret_header(name)
            || self
                .secret_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
    }

    /// The URL as answers and logs show it: with `url_secret`, the path and query masked.
    pub fn display_url(&self) -> String {
        if self.url_secret {
            mask_url(&self.url)
        } else {
            self.url.clone()
        }
    }

    /// The API view: everything but the secret, which is masked.
    pub fn to_public_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("secret".into(), Value::String(mask(&self.secret)));
            obj.insert(
                "auth".into(),
                serde_json::to_value(self.auth.masked()).unwrap_or_default(),
            );
            let previous: Vec<Value> = self
                .previous_secrets
                .iter()
                .map(|p| serde_json::json!({"secret": mask(&p.secret), "expires_at": p.expires_at}))
                .collect();
            obj.insert("previous_secrets".into(), Value::Array(previous));
            let headers: serde_json::Map<String, Value> = self
                .headers
                .iter()
                .map(|(k, val)| {
                    let shown = if self.is_credential_header(k) {
                        mask_credential(val)
                    } else {
                        val.clone()
                    };
                    (k.clone(), Value::String(shown))
                })
                .collect();
            obj.insert("headers".into(), Value::Object(headers));
            obj.insert("url".into(), Value::String(self.display_url()));
            obj.insert("url_secret".into(), Value::Bool(self.url_secret));
            obj.insert(
                "secret_headers".into(),
                serde_json::to_value(&self.secret_headers).unwrap_or_default(),
            );
        }
        v
    }

    pub fn has_templates(&self) -> bool {
        templated(&self.url, &self.headers, &self.query, &self.body)
    }

    /// Every secret that signs now: the current one first, then rotated-out ones that have
    /// not expired.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> impl Iterator<Item = &str> {
        std::iter::once(self.secret.as_str()).chain(
            self.previous_secrets
                .iter()
                .filter(move |p| p.expires_at > now)
                .map(|p| p.secret.as_str()),
        )
    }

    /// Replace the signing secret; the old one keeps signing beside it for `overlap`.
    pub fn rotate_secret(&mut self, new: String, overlap: chrono::Duration) {
        let now = Utc::now();
        self.previous_secrets.retain(|p| p.expires_at > now);
        let old = std::mem::replace(&mut self.secret, new);
        self.previous_secrets.insert(
            0,
            PreviousSecret {
                secret: old,
                expires_at: now + overlap,
            },
        );
        self.updated_at = now;
    }
}

/// `whsec_abc…xyz` → `whsec_…xyz`: enough to tell secrets apart, useless to an attacker.
pub fn mask(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("whsec_…{tail}")
}

/// A credential shown as `…` and its last four characters (only those of a long one).
/// A capability URL as it is shown: scheme and host, then `…` and the last 4 characters of
/// the rest (`https://hooks.slack.com/…AbCd`).
pub fn mask_url(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let host_end = after_scheme + rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let tail = &url[host_end..];
    if tail.len() <= 1 {
        return url.to_owned();
    }
    let chars: Vec<char> = tail.chars().collect();
    let last: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("{}/…{last}", &url[..host_end])
}

pub fn mask_credential(value: &str) -> String {
    let n = value.chars().count();
    if n < 12 {
        return "…".to_owned();
    }
    let tail: String = value.chars().skip(n - 4).collect();
    format!("…{tail}")
}

/// A field of a webhook definition that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        message: message.into(),
    }
}

/// The user-settable part of a webhook, parsed and valid.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    pub method: Method,
    pub events: Vec<String>,
    pub clinic_ids: Vec<String>,
    pub headers: BTreeMap<String, String>,
    pub enabled: bool,
    pub retry_schedule: Option<Vec<f64>>,
    pub rate_limit: Option<f64>,
    pub max_concurrency: Option<u32>,
    pub auth: Auth,
    pub follow_redirects: bool,
    pub query: BTreeMap<String, String>,
    pub body: Body,
    /// Header names marked `"secret": true`.
    pub secret_headers: Vec<String>,
    pub url_secret: bool,
}

/// Whether any part of a request is a template (else the envelope goes as it is).
fn templated(
    url: &str,
    headers: &BTreeMap<String, String>,
    query: &BTreeMap<String, String>,
    body: &Body,
) -> bool {
    crate::template::is_template(url)
        || headers.values().any(|v| crate::template::is_template(v))
        || !query.is_empty()
        || *body != Body::Default
}

impl WebhookSpec {
    pub fn has_templates(&self) -> bool {
        templated(&self.url, &self.headers, &self.query, &self.body)
    }
}

/// The fields of a webhook definition, in the order people write them.
pub const FIELDS: &[&str] = &[
    "name",
    "url",
    "method",
    "events",
    "clinic_ids",
    "headers",
    "enabled",
    "retry_schedule",
    "rate_limit",
    "max_concurrency",
    "auth",
    "follow_redirects",
    "query",
    "body",
    "url_secret",
];

/// Limits of a webhook definition, in characters unless named otherwise. Public so that the
/// API description states the very numbers the parser enforces.
pub mod limits {
    pub const NAME: usize = 200;
    pub const URL: usize = 2048;
    /// Event patterns per webhook.
    pub const PATTERNS: usize = 100;
    pub const CLINIC_ID: usize = 100;
    /// Clinic ids per webhook.
    pub const CLINIC_IDS: usize = 10_000;
    /// Headers, and query parameters, per webhook.
    pub const PAIRS: usize = 50;
    /// A header or query parameter name.
    pub const PAIR_NAME: usize = 256;
    /// A header value, query parameter value or form field template.
    pub const VALUE: usize = 8192;
    /// A JSON body template.
    pub const TEMPLATE: usize = 65_536;
    /// An auth credential, user name or API key name.
    pub const CREDENTIAL: usize = 4096;
    /// Requests per second.
    pub const RATE_LIMIT: f64 = 100_000.0;
    /// Requests in flight per dispatcher.
    pub const CONCURRENCY: u64 = 10_000;
}

/// Characters in a string: limits count what a person sees, not UTF-8 bytes.
fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Headers KiviHook sets itself; a webhook may not override them.
pub const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
];

impl WebhookSpec {
    /// Parse a create request (`POST /v1/webhooks`).
    pub fn from_json(body: &Value) -> Result<Self, InvalidField> {
        let obj = as_object(body)?;
        check_fields(obj)?;
        let name = obj
            .get("name")
            .ok_or_else(|| invalid("name", "is required"))?;
        let url = obj
            .get("url")
            .ok_or_else(|| invalid("url", "is required"))?;
        let events = obj
            .get("events")
            .ok_or_else(|| invalid("events", "is required"))?;
        let headers = obj
            .get("headers")
            .map(parse_headers)
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            name: parse_name(name)?,
            url: parse_url(url)?,
            method: obj
                .get("method")
                .map(parse_method)
                .transpose()?
                .unwrap_or_default(),
            events: parse_events(events)?,
            clinic_ids: obj
                .get("clinic_ids")
                .map(parse_clinic_ids)
                .transpose()?
                .unwrap_or_default(),
            headers: headers.0,
            secret_headers: headers.1,
            url_secret: obj
                .get("url_secret")
                .map(|v| parse_bool("url_secret", v))
                .transpose()?
                .unwrap_or(false),
            enabled: obj
                .get("enabled")
                .map(|v| parse_bool("enabled", v))
                .transpose()?
                .unwrap_or(true),
            retry_schedule: obj
                .get("retry_schedule")
                .map(parse_schedule)
                .transpose()?
                .flatten(),
            rate_limit: obj.get("rate_limit").map(parse_rate).transpose()?.flatten(),
            max_concurrency: obj
                .get("max_concurrency")
                .map(parse_concurrency)
                .transpose()?
                .flatten(),
            auth: obj
                .get("auth")
                .map(parse_auth)
                .transpose()?
                .unwrap_or_default(),
            follow_redirects: obj
                .get("follow_redirects")
                .map(|v| parse_bool("follow_redirects", v))
                .transpose()?
                .unwrap_or(false),
            query: obj
                .get("query")
                .map(parse_query)
                .transpose()?
                .unwrap_or_default(),
            body: obj
                .get("body")
                .map(parse_body)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// Apply a partial update (`PATCH /v1/webhooks/{id}`) to an existing definition.
    pub fn patched(mut self, body: &Value) -> Result<Self, InvalidField> {
        let obj = as_object(body)?;
        check_fields(obj)?;
        for (key, value) in obj {
            match key.as_str() {
                "name" => self.name = parse_name(value)?,
                "url" => {
                    // A capability URL sent back as it was shown keeps the real one.
                    let masked = self.url_secret && value.as_str() == Some(&mask_url(&self.url));
                    if !masked {
                        self.url = parse_url(value)?;
                    }
                }
                "method" => self.method = parse_method(value)?,
                "events" => self.events = parse_events(value)?,
                "clinic_ids" => self.clinic_ids = parse_clinic_ids(value)?,
                "headers" => {
                    let (mut headers, marked) = parse_headers(value)?;
                    // A masked value sent back as it was shown keeps the real one.
                    for (name, v) in headers.iter_mut() {
                        let credential = is_secret_header(name)
                            || marked.iter().any(|m| m.eq_ignore_ascii_case(name))
                            || self
                                .secret_headers
                                .iter()
                                .any(|m| m.eq_ignore_ascii_case(name));
                        if let Some(real) = self.headers.get(name) {
                            if credential && *v == mask_credential(real) {
                                v.clone_from(real);
                            }
                        }
                    }
                    self.headers = headers;
                    self.secret_headers = marked;
                }
                "url_secret" => self.url_secret = parse_bool("url_secret", value)?,
                "enabled" => self.enabled = parse_bool("enabled", value)?,
                "retry_schedule" => self.retry_schedule = parse_schedule(value)?,
                "rate_limit" => self.rate_limit = parse_rate(value)?,
                "max_concurrency" => self.max_concurrency = parse_concurrency(value)?,
                "follow_redirects" => {
                    self.follow_redirects = parse_bool("follow_redirects", value)?
                }
                "auth" => {
                    let mut auth = parse_auth(value)?;
                    auth.keep_masked(&self.auth);
                    self.auth = auth;
                }
                "query" => self.query = parse_query(value)?,
                "body" => self.body = parse_body(value)?,
                // check_fields admits only the fields above; a field added to FIELDS but not
                // here is refused rather than silently ignored.
                other => return Err(invalid(other, "cannot be changed with PATCH")),
            }
        }
        Ok(self)
    }

    /// Every field as `POST /v1/webhooks` takes it, credentials in full: what a PATCH sends
    /// and what two definitions are compared by, field by field.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "name": self.name,
            "url": self.url,
            "method": self.method,
            "events": self.events,
            "clinic_ids": self.clinic_ids,
            "headers": self.headers,
            "enabled": self.enabled,
            "retry_schedule": self.retry_schedule,
            "rate_limit": self.rate_limit,
            "max_concurrency": self.max_concurrency,
            "auth": self.auth,
            "follow_redirects": self.follow_redirects,
            "query": self.query,
            "body": self.body,
            "url_secret": self.url_secret,
        });
        // Marked headers go back in the form they were given.
        for name in &self.secret_headers {
            if let Some(value) = self.headers.get(name) {
                v["headers"][name] = serde_json::json!({"value": value, "secret": true});
            }
        }
        v
    }

    pub fn of(webhook: &Webhook) -> Self {
        Self {
            name: webhook.name.clone(),
            url: webhook.url.clone(),
            method: webhook.method,
            events: webhook.events.clone(),
            clinic_ids: webhook.clinic_ids.clone(),
            headers: webhook.headers.clone(),
            enabled: webhook.enabled,
            retry_schedule: webhook.retry_schedule.clone(),
            rate_limit: webhook.rate_limit,
            max_concurrency: webhook.max_concurrency,
            auth: webhook.auth.clone(),
            follow_redirects: webhook.follow_redirects,
            secret_headers: webhook.secret_headers.clone(),
            url_secret: webhook.url_secret,
            query: webhook.query.clone(),
            body: webhook.body.clone(),
        }
    }
}

fn as_object(body: &Value) -> Result<&Map<String, Value>, InvalidField> {
    body.as_object()
        .ok_or_else(|| invalid("", "the body must be a JSON object"))
}

fn check_fields(obj: &Map<String, Value>) -> Result<(), InvalidField> {
    if let Some(key) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let hint = if matches!(key.as_str(), "id" | "secret" | "created_at" | "updated_at") {
            "is set by KiviHook and cannot be written".to_owned()
        } else {
            format!("is not a webhook field; fields are {}", FIELDS.join(", "))
        };
        return Err(invalid(key.as_str(), hint));
    }
    Ok(())
}

fn parse_name(v: &Value) -> Result<String, InvalidField> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid("name", "must be a string"))?
        .trim();
    if s.is_empty() || chars(s) > limits::NAME {
        return Err(invalid(
            "name",
            format!("must be 1 to {} characters", limits::NAME),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(s.to_owned())
}

fn parse_url(v: &Value) -> Result<String, InvalidField> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid("url", "must be a string"))?;
    if chars(s) > limits::URL {
        return Err(invalid(
            "url",
            format!("must be at most {} characters", limits::URL),
        ));
    }
    if crate::template::is_template(s) {
        // Kept as written; checked when rendered against sample events (`check_templates`).
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return Err(invalid("url", "must be an http:// or https:// URL"));
        }
        return Ok(s.to_owned());
    }
    let url = url::Url::parse(s).map_err(|e| invalid("url", format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("url", "must be an http:// or https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "url",
            "must not carry credentials; use the webhook's headers instead",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("url", "must name a host"));
    }
    if url.fragment().is_some() {
        return Err(invalid("url", "must not have a #fragment"));
    }
    Ok(url.to_string())
}

fn parse_method(v: &Value) -> Result<Method, InvalidField> {
    v.as_str()
        .and_then(Method::parse)
        .ok_or_else(|| invalid("method", "must be one of POST, PUT, PATCH, GET, DELETE"))
}

fn parse_events(v: &Value) -> Result<Vec<String>, InvalidField> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid("events", "must be an array of event patterns"))?;
    if items.is_empty() || items.len() > limits::PATTERNS {
        return Err(invalid(
            "events",
            format!("must hold 1 to {} patterns", limits::PATTERNS),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("events[{i}]");
        let s = item
            .as_str()
            .ok_or_else(|| invalid(field.as_str(), "must be a string"))?;
        let p = Pattern::parse(s).map_err(|m| invalid(field.as_str(), m))?;
        let canonical = p.as_string();
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

/// A JSON integer within the range of i64 and u64: `12`, or `12.0`, which JSON (and JSON
/// Schema) count as the same number.
pub fn integer_of(v: &Value) -> Option<i128> {
    /// 2^53: past it a number with a fraction part cannot be told from an integer literal
    /// outside i64 and u64 that the JSON parser rounded to the nearest f64.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i.into());
    }
    if let Some(u) = n.as_u64() {
        return Some(u.into());
    }
    n.as_f64()
        .filter(|f| f.fract() == 0.0 && f.abs() <= EXACT)
        .map(|f| f as i128)
}

/// Clinic ids are strings; KiviCare's numeric ids are accepted and stored as text.
pub fn clinic_id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s)
            if !s.is_empty()
                && chars(s) <= limits::CLINIC_ID
                && !s.chars().any(char::is_control) =>
        {
            Some(s.clone())
        }
        Value::Number(_) => integer_of(v).map(|n| n.to_string()),
        _ => None,
    }
}

fn parse_clinic_ids(v: &Value) -> Result<Vec<String>, InvalidField> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid("clinic_ids", "must be an array of clinic ids"))?;
    if items.len() > limits::CLINIC_IDS {
        return Err(invalid(
            "clinic_ids",
            format!("must hold at most {} ids", limits::CLINIC_IDS),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = clinic_id_of(item).ok_or_else(|| {
            invalid(
                format!("clinic_ids[{i}]"),
                "must be a non-empty string or an integer",
            )
        })?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Headers: name → value, or name → `{"value": …, "secret": true}` for a credential whose
/// name does not say so. Returns the headers and the names marked secret.
fn parse_headers(v: &Value) -> Result<(BTreeMap<String, String>, Vec<String>), InvalidField> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("headers", "must be an object of header names to values"))?;
    if obj.len() > limits::PAIRS {
        return Err(invalid(
            "headers",
            format!("must hold at most {} headers", limits::PAIRS),
        ));
    }
    let mut out = BTreeMap::new();
    let mut marked = Vec::new();
    for (name, value) in obj {
        let field = format!("headers.{name}");
        let token = !name.is_empty()
            && name.len() <= limits::PAIR_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(invalid(field, "is not a valid HTTP header name"));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(invalid(
                field,
                "is set by KiviHook and cannot be overridden",
            ));
        }
        let value = match value {
            Value::Object(o) => {
                let known = o.keys().all(|k| k == "value" || k == "secret");
                let secret = match o.get("secret") {
                    None => false,
                    Some(s) => s.as_bool().ok_or_else(|| {
                        invalid(format!("{field}.secret"), "must be true or false")
                    })?,
                };
                if !known {
                    return Err(invalid(
                        field.as_str(),
                        "must be a string, or an object with `value` and `secret`",
                    ));
                }
                if secret {
                    marked.push(name.clone());
                }
                o.get("value")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{field}.value"), "must be a string"))?
            }
            other => other.as_str().ok_or_else(|| {
                invalid(
                    field.as_str(),
                    "must be a string, or an object with `value` and `secret`",
                )
            })?,
        };
        // What a header can carry: no control character but tab (a value that renders one
        // from event data fails that attempt instead).
        let control = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
        if chars(value) > limits::VALUE || value.bytes().any(control) {
            return Err(invalid(
                field,
                format!(
                    "must be at most {} characters without control characters (tab allowed)",
                    limits::VALUE
                ),
            ));
        }
        out.insert(name.clone(), value.to_owned());
    }
    Ok((out, marked))
}

fn parse_query(v: &Value) -> Result<BTreeMap<String, String>, InvalidField> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("query", "must be an object of parameter names to templates"))?;
    if obj.len() > limits::PAIRS {
        return Err(invalid(
            "query",
            format!("must hold at most {} parameters", limits::PAIRS),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in obj {
        let field = format!("query.{name}");
        if name.is_empty() || chars(name) > limits::PAIR_NAME {
            return Err(invalid(
                field,
                format!("must be a name of 1 to {} characters", limits::PAIR_NAME),
            ));
        }
        let value = value
            .as_str()
            .filter(|s| chars(s) <= limits::VALUE)
            .ok_or_else(|| {
                invalid(
                    field.as_str(),
                    format!("must be a string of at most {} characters", limits::VALUE),
                )
            })?;
        out.insert(name.clone(), value.to_owned());
    }
    Ok(out)
}

fn parse_body(v: &Value) -> Result<Body, InvalidField> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("body", "must be an object with a `type`"))?;
    let allowed: &[&str] = match obj.get("type").and_then(Value::as_str) {
        Some("default") => &["type"],
        Some("json") => &["type", "template"],
        Some("form") => &["type", "fields"],
        _ => return Err(invalid("body.type", "must be one of default, json, form")),
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(
            format!("body.{k}"),
            format!(
                "is not a field of this body type; fields are {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(match obj.get("type").and_then(Value::as_str) {
        Some("json") => Body::Json {
            template: obj
                .get("template")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && chars(s) <= limits::TEMPLATE)
                .ok_or_else(|| {
                    invalid(
                        "body.template",
                        format!("must be a template of 1 to {} characters", limits::TEMPLATE),
                    )
                })?
                .to_owned(),
        },
        Some("form") => {
            let fields = obj
                .get("fields")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    invalid(
                        "body.fields",
                        "must be an object of field names to templates",
                    )
                })?;
            let mut out = BTreeMap::new();
            for (name, value) in fields {
                let value = value
                    .as_str()
                    .filter(|s| chars(s) <= limits::VALUE)
                    .ok_or_else(|| {
                        invalid(
                            format!("body.fields.{name}"),
                            format!("must be a string of at most {} characters", limits::VALUE),
                        )
                    })?;
                out.insert(name.clone(), value.to_owned());
            }
            Body::Form { fields: out }
        }
        _ => Body::Default,
    })
}

/// Render every template of a definition against a sample event of every type it subscribes
/// to, strictly: an undefined placeholder, a JSON body that is not JSON, or a URL that is not
/// a URL is refused here, naming the template, the placeholder and the line, never at delivery.
pub fn check_templates(spec: &WebhookSpec) -> Result<(), InvalidField> {
    use crate::template::{render, render_form, Escape};
    if !spec.has_templates() {
        return Ok(());
    }
    let mut types: Vec<String> = spec
        .events
        .iter()
        .filter_map(|p| Pattern::parse(p).ok())
        .flat_map(|p| crate::samples::types_matching(&p))
        .collect();
    types.sort();
    types.dedup();
    if crate::template::placeholder_before_path(&spec.url) {
        return Err(invalid(
            "url",
            "placeholders may fill the path and query only: one in the scheme, host or port would let an event's data choose where the request (and its credentials) goes",
        ));
    }
    for t in &types {
        let ctx = crate::template::context(&crate::samples::sample_event(t));
        let at = |field: &str, e: crate::template::TemplateError| {
            invalid(field, format!("{e} (checked against a sample `{t}` event)"))
        };
        let url = render(&spec.url, Escape::Url, &ctx, true).map_err(|e| at("url", e))?;
        if crate::template::is_template(&spec.url) {
            parse_url(&Value::String(url.clone())).map_err(|e| {
                invalid(
                    "url",
                    format!(
                        "renders to `{url}`, which {} (sample `{t}` event)",
                        e.message
                    ),
                )
            })?;
        }
        for (name, source) in &spec.headers {
            let field = format!("headers.{name}");
            let v = render(source, Escape::Raw, &ctx, true).map_err(|e| at(&field, e))?;
            if v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(invalid(field, "renders to a value with CR or LF"));
            }
        }
        for (name, source) in &spec.query {
            render(source, Escape::Raw, &ctx, true).map_err(|e| at(&format!("query.{name}"), e))?;
        }
        match &spec.body {
            Body::Default => {}
            Body::Json { template } => {
                let out = render(template, Escape::Json, &ctx, true)
                    .map_err(|e| at("body.template", e))?;
                if let Err(e) = serde_json::from_str::<Value>(&out) {
                    return Err(invalid(
                        "body.template",
                        format!(
                            "line {}: does not render to valid JSON ({e}) for a sample `{t}` event",
                            e.line()
                        ),
                    ));
                }
            }
            Body::Form { fields } => {
                render_form(fields, &ctx, true)
                    .map_err(|(name, e)| at(&format!("body.fields.{name}"), e))?;
            }
        }
    }
    Ok(())
}

fn parse_schedule(v: &Value) -> Result<Option<Vec<f64>>, InvalidField> {
    if v.is_null() {
        return Ok(None);
    }
    let items = v.as_array().ok_or_else(|| {
        invalid(
            "retry_schedule",
            "must be an array of seconds between attempts, or null",
        )
    })?;
    let delays = items
        .iter()
        .map(Value::as_f64)
        .collect::<Option<Vec<f64>>>()
        .ok_or_else(|| invalid("retry_schedule", "must hold only numbers of seconds"))?;
    RetrySchedule::new(delays.clone()).map_err(|m| invalid("retry_schedule", m))?;
    Ok(Some(delays))
}

fn parse_rate(v: &Value) -> Result<Option<f64>, InvalidField> {
    if v.is_null() {
        return Ok(None);
    }
    v.as_f64()
        .filter(|r| *r > 0.0 && *r <= limits::RATE_LIMIT)
        .map(Some)
        .ok_or_else(|| {
            invalid(
                "rate_limit",
                format!(
                    "must be requests per second above 0 and at most {}, or null",
                    limits::RATE_LIMIT
                ),
            )
        })
}

fn parse_concurrency(v: &Value) -> Result<Option<u32>, InvalidField> {
    if v.is_null() {
        return Ok(None);
    }
    integer_of(v)
        .filter(|n| (1..=i128::from(limits::CONCURRENCY)).contains(n))
        .map(|n| Some(n as u32))
        .ok_or_else(|| {
            invalid(
                "max_concurrency",
                format!(
                    "must be an integer from 1 to {}, or null",
                    limits::CONCURRENCY
                ),
            )
        })
}

fn parse_auth(v: &Value) -> Result<Auth, InvalidField> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("auth", "must be an object with a `type`"))?;
    let text = |key: &str| -> Result<String, InvalidField> {
        let field = format!("auth.{key}");
        let s = obj
            .get(key)
            .ok_or_else(|| invalid(field.as_str(), "is required"))?
            .as_str()
            .ok_or_else(|| invalid(field.as_str(), "must be a string"))?;
        if s.is_empty()
            || chars(s) > limits::CREDENTIAL
            || s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
        {
            return Err(invalid(
                field,
                format!(
                    "must be 1 to {} characters without CR, LF or NUL",
                    limits::CREDENTIAL
                ),
            ));
        }
        Ok(s.to_owned())
    };
    let allowed: &[&str] = match obj.get("type").and_then(Value::as_str) {
        Some("none") => &["type"],
        Some("api_key") => &["type", "name", "value", "in"],
        Some("bearer") => &["type", "token"],
        Some("basic") => &["type", "username", "password"],
        _ => {
            return Err(invalid(
                "auth.type",
                "must be one of none, api_key, bearer, basic",
            ))
        }
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(
            format!("auth.{k}"),
            format!(
                "is not a field of this auth type; fields are {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(match obj.get("type").and_then(Value::as_str) {
        Some("api_key") => {
            let name = text("name")?;
            let location = match obj.get("in").map(Value::as_str) {
                Some(Some("header")) | None => KeyLocation::Header,
                Some(Some("query")) => KeyLocation::Query,
                // Not text (`"in": 5`) is refused too; it once fell back to the header.
                Some(_) => return Err(invalid("auth.in", "must be header or query")),
            };
            if location == KeyLocation::Header {
                let token = name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token || RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    return Err(invalid(
                        "auth.name",
                        "must be an HTTP header name that KiviHook does not set itself",
                    ));
                }
            }
            Auth::ApiKey {
                name,
                value: text("value")?,
                location,
            }
        }
        Some("bearer") => Auth::Bearer {
            token: text("token")?,
        },
        Some("basic") => {
            let username = text("username")?;
            if username.contains(':') {
                return Err(invalid("auth.username", "must not contain ':'"));
            }
            Auth::Basic {
                username,
                password: text("password")?,
            }
        }
        _ => Auth::None,
    })
}

fn parse_bool(field: &str, v: &Value) -> Result<bool, InvalidField> {
    v.as_bool()
        .ok_or_else(|| invalid(field, "must be true or false"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sub(events: &[&str], clinics: &[&str]) -> Subscription {
        Subscription::new(hook(events, clinics))
    }

    fn hook(events: &[&str], clinics: &[&str]) -> Webhook {
        let spec = WebhookSpec::from_json(&json!({
            "name": "t", "url": "https://example.com/h", "events": events, "clinic_ids": clinics
        }))
        .unwrap();
        Webhook::create(spec, crate::signing::generate_secret())
    }

    #[test]
    fn every_writable_field_can_be_patched() {
        let full = json!({
            "name": "renamed", "url": "https://example.org/other", "method": "PUT",
            "events": ["patient.*"], "clinic_ids": ["7"], "headers": {"X-Chain": "north"},
            "enabled": false, "retry_schedule": [1, 2], "rate_limit": 5, "max_concurrency": 3,
            "auth": {"type": "bearer", "token": "t0ken"}, "follow_redirects": true,
            "query": {"source": "kivihook"}, "body": {"type": "json", "template": "{\"a\": 1}"},
            "url_secret": true,
        });
        assert_eq!(
            FIELDS.len(),
            full.as_object().unwrap().len(),
            "this test covers every field"
        );
        let base = WebhookSpec::of(&hook(&["*"], &[]));
        for field in FIELDS {
            let one = json!({ *field: full[*field].clone() });
            let patched = base.clone().patched(&one).unwrap_or_else(|e| {
                panic!("PATCH {field}: {}: {}", e.field, e.message);
            });
            assert_ne!(patched, base, "PATCH {field} changed nothing");
        }
        let all = base.clone().patched(&full).unwrap();
        assert_eq!(all, WebhookSpec::from_json(&full).unwrap());
    }

    #[test]
    fn patterns_match_exact_family_and_everything() {
        assert!(sub(&["appointment.booked"], &[]).matches("appointment.booked", None));
        assert!(!sub(&["appointment.booked"], &[]).matches("appointment.updated", None));
        assert!(sub(&["appointment.*"], &[]).matches("appointment.updated", Some("1")));
        assert!(!sub(&["appointment.*"], &[]).matches("patient.created", None));
        assert!(sub(&["*"], &[]).matches("custom.x", None));
        assert!(sub(&["custom.*"], &[]).matches("custom.lab.ready", None));
    }

    #[test]
    fn kivicare_aliases_in_patterns_are_stored_canonically() {
        let h = hook(&["kc_patient_save", "patient.created"], &[]);
        assert_eq!(h.events, vec!["patient.created"]);
    }

    #[test]
    fn clinic_filter_limits_to_listed_clinics() {
        let h = sub(&["*"], &["12", "13"]);
        assert!(h.matches("patient.created", Some("12")));
        assert!(!h.matches("patient.created", Some("14")));
        assert!(!h.matches("patient.created", None));
    }

    #[test]
    fn disabled_webhooks_match_nothing() {
        let mut h = hook(&["*"], &[]);
        h.enabled = false;
        assert!(!Subscription::new(h).matches("patient.created", None));
    }

    fn err_field(v: Value) -> String {
        WebhookSpec::from_json(&v).unwrap_err().field
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let base = json!({"name": "n", "url": "https://x.example/h", "events": ["*"]});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(err_field(with("url", json!("ftp://x.example/"))), "url");
        assert_eq!(
            err_field(with("url", json!("https://u:p@x.example/"))),
            "url"
        );
        assert_eq!(err_field(with("url", json!("not a url"))), "url");
        assert_eq!(err_field(with("method", json!("TRACE"))), "method");
        assert_eq!(err_field(with("events", json!([]))), "events");
        assert_eq!(err_field(with("events", json!(["nope.*"]))), "events[0]");
        assert_eq!(
            err_field(with("headers", json!({"X-A": "a\r\nInjected: 1"}))),
            "headers.X-A"
        );
        assert_eq!(
            err_field(with("headers", json!({"Bad Name": "v"}))),
            "headers.Bad Name"
        );
        assert_eq!(
            err_field(with("headers", json!({"webhook-signature": "v"}))),
            "headers.webhook-signature"
        );
        assert_eq!(err_field(with("colour", json!("blue"))), "colour");
        assert_eq!(
            err_field(with("retry_schedule", json!([1, "x"]))),
            "retry_schedule"
        );
        assert_eq!(
            err_field(with("retry_schedule", json!([-1]))),
            "retry_schedule"
        );
        assert_eq!(err_field(with("rate_limit", json!(0))), "rate_limit");
        assert_eq!(
            err_field(with("max_concurrency", json!(0))),
            "max_concurrency"
        );
        assert_eq!(err_field(with("secret", json!("whsec_x"))), "secret");
        assert_eq!(
            err_field(json!({"url": "https://x.example", "events": ["*"]})),
            "name"
        );
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        assert_eq!(clinic_id_of(&json!(12)), Some("12".into()));
        assert_eq!(clinic_id_of(&json!(12.0)), Some("12".into()));
        assert_eq!(clinic_id_of(&json!(-3.0)), Some("-3".into()));
        assert_eq!(clinic_id_of(&json!(u64::MAX)), Some(u64::MAX.to_string()));
        assert_eq!(clinic_id_of(&json!(12.5)), None);
        assert_eq!(clinic_id_of(&json!(1e20)), None);
        // Out of i64 and u64, and so parsed as the nearest f64: refused, never rounded.
        let below: Value = serde_json::from_str("-9223372036854775809").unwrap();
        assert_eq!(clinic_id_of(&below), None);
        let spec = |v: Value| {
            WebhookSpec::from_json(&json!({
                "name": "n", "url": "https://x.example/h", "events": ["*"], "max_concurrency": v
            }))
        };
        assert_eq!(spec(json!(4.0)).unwrap().max_concurrency, Some(4));
        assert!(spec(json!(4.5)).is_err());
    }

    #[test]
    fn an_api_key_location_that_is_not_text_is_refused() {
        let with = |auth: Value| {
            WebhookSpec::from_json(&json!({
                "name": "n", "url": "https://x.example/h", "events": ["*"], "auth": auth
            }))
        };
        let key = |location: Value| json!({"type": "api_key", "name": "X-Key", "value": "v", "in": location});
        assert!(with(key(json!("query"))).is_ok());
        assert_eq!(with(key(json!(5))).unwrap_err().field, "auth.in");
        assert_eq!(with(key(Value::Null)).unwrap_err().field, "auth.in");
    }

    #[test]
    fn patch_changes_only_the_given_fields() {
        let h = hook(&["*"], &[]);
        let spec = WebhookSpec::of(&h)
            .patched(&json!({"enabled": false, "clinic_ids": [7]}))
            .unwrap();
        assert!(!spec.enabled);
        assert_eq!(spec.clinic_ids, vec!["7"]);
        assert_eq!(spec.url, h.url);
    }

    #[test]
    fn a_patch_that_sends_back_a_masked_credential_keeps_the_real_one() {
        let mut h = hook(&["*"], &[]);
        h.auth = Auth::Bearer {
            token: "tok_0123456789abcdef".into(),
        };
        let shown = h.to_public_json();
        assert_eq!(shown["auth"]["token"], "…cdef");
        let spec = WebhookSpec::of(&h)
            .patched(&json!({"auth": shown["auth"].clone()}))
            .unwrap();
        assert_eq!(spec.auth, h.auth);
        let spec = WebhookSpec::of(&h)
            .patched(&json!({"auth": {"type": "bearer", "token": "tok_new"}}))
            .unwrap();
        assert_eq!(
            spec.auth,
            Auth::Bearer {
                token: "tok_new".into()
            }
        );
    }

    #[test]
    fn rotated_secrets_sign_until_they_expire() {
        let mut h = hook(&["*"], &[]);
        let old = h.secret.clone();
        h.rotate_secret(
            crate::signing::generate_secret(),
            chrono::Duration::hours(24),
        );
        let now = Utc::now();
        let signing: Vec<&str> = h.signing_secrets(now).collect();
        assert_eq!(signing, vec![h.secret.as_str(), old.as_str()]);
        let later = now + chrono::Duration::hours(25);
        assert_eq!(h.signing_secrets(later).count(), 1);
    }

    #[test]
    fn a_definition_survives_its_json_form() {
        let spec = WebhookSpec::from_json(&json!({
            "name": "crm", "url": "https://crm.example/h", "method": "put",
            "events": ["kc_patient_save", "bill.*"], "clinic_ids": [3, "4"],
            "headers": {"X-A": "b"}, "enabled": false, "retry_schedule": [1, 2.5],
            "rate_limit": 3, "max_concurrency": 2,
            "auth": {"type": "api_key", "name": "X-Key", "value": "k", "in": "query"},
            "follow_redirects": true, "query": {"q": "{{patient_name}}"},
            "body": {"type": "form", "fields": {"a": "{{event.id}}"}}
        }))
        .unwrap();
        assert_eq!(WebhookSpec::from_json(&spec.to_json()).unwrap(), spec);
    }

    #[test]
    fn public_json_masks_the_secret() {
        let h = hook(&["*"], &[]);
        let v = h.to_public_json();
        let shown = v["secret"].as_str().unwrap();
        assert!(shown.starts_with("whsec_…"));
        assert_ne!(shown, h.secret);
        assert!(shown.chars().count() < 12);
    }
}
