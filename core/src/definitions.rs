//! Webhook definitions as people keep them in files: the declarative format shared by
//! `KIVIHOOK_WEBHOOKS_FILE` (applied by ingest at start) and the CLI's `webhooks apply`,
//! `import` and `export`.
//!
//! A file is YAML, and so JSON too: a list of definitions, or a mapping whose only key,
//! `webhooks`, holds that list. A definition has the fields of `POST /v1/webhooks` and
//! optionally `secret` (`whsec_…`). Webhooks are matched by name, so a name may appear only
//! once in a file. The whole file is checked before anything uses it, so a file with one bad
//! entry changes nothing.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::signing::SigningKey;
use crate::webhook::{check_templates, Auth, Body, InvalidField, Method, WebhookSpec};

/// One webhook definition, parsed and valid.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub spec: WebhookSpec,
    /// The signing secret to use; `None` keeps (or, for a new webhook, generates) one.
    pub secret: Option<String>,
}

/// Fields a stored webhook has beyond its definition. Exports written before the CLI went
/// through the API were whole stored webhooks; restoring one drops these.
pub const STORED_ONLY_FIELDS: &[&str] = &[
    "id",
    "created_at",
    "updated_at",
    "previous_secrets",
    "disabled_reason",
];

/// How strictly a file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// A hand-written declaration: every field must be a definition field, so a typo is an
    /// error rather than a silently ignored setting.
    Declaration,
    /// A backup: the fields only a stored webhook has (`STORED_ONLY_FIELDS`) are dropped.
    Backup,
}

/// What is wrong with a file, naming the entry (by index and name) and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    /// Which entry; `None` when the file as a whole is wrong.
    pub index: Option<usize>,
    pub name: Option<String>,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            None => f.write_str(&self.message),
            Some(i) => {
                write!(f, "webhooks[{i}]")?;
                if !self.field.is_empty() {
                    write!(f, ".{}", self.field)?;
                }
                write!(f, ": {}", self.message)?;
                if let Some(name) = &self.name {
                    write!(f, " (webhook `{name}`)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for DefinitionError {}

fn whole(message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        index: None,
        name: None,
        field: String::new(),
        message: message.into(),
    }
}

/// Parse a file of webhook definitions.
pub fn parse(text: &str, reading: Reading) -> Result<Vec<Definition>, DefinitionError> {
    let document: Value = yaml_serde::from_str(text)
        .map_err(|e| whole(format!("is not valid YAML or JSON ({e})")))?;
    let items =
        match document {
            Value::Array(items) => items,
            Value::Object(mut top) if top.len() == 1 && top.contains_key("webhooks") => {
                match top.remove("webhooks") {
                    Some(Value::Array(items)) => items,
                    _ => return Err(whole("`webhooks` must be a list of webhook definitions")),
                }
            }
            _ => return Err(whole(
                "must be a list of webhook definitions, or a mapping `webhooks:` holding that list",
            )),
        };
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
        let at = |e: InvalidField| DefinitionError {
            index: Some(i),
            name: name.clone(),
            field: e.field,
            message: e.message,
        };
        let definition = definition(item, reading).map_err(at)?;
        if let Some(first) = first_of.insert(definition.spec.name.clone(), i) {
            return Err(at(InvalidField {
                field: "name".into(),
                message: format!(
                    "is already declared by webhooks[{first}]; webhooks are matched by name, so names must be unique"
                ),
            }));
        }
        out.push(definition);
    }
    Ok(out)
}

/// One entry: its fields, its templates (checked as the API would) and its secret.
fn definition(mut item: Value, reading: Reading) -> Result<Definition, InvalidField> {
    let obj = item.as_object_mut().ok_or_else(|| InvalidField {
        field: String::new(),
        message: "must be a mapping of webhook fields".into(),
    })?;
    if reading == Reading::Backup {
        for field in STORED_ONLY_FIELDS {
            obj.remove(*field);
        }
    }
    let secret = parse_secret(obj.remove("secret").as_ref().unwrap_or(&Value::Null))?;
    let spec = WebhookSpec::from_json(&item)?;
    check_templates(&spec)?;
    Ok(Definition { spec, secret })
}

/// A signing secret given by a user: absent (`null`) or a well-formed `whsec_…` secret.
pub fn parse_secret(v: &Value) -> Result<Option<String>, InvalidField> {
    let invalid = |message: String| InvalidField {
        field: "secret".into(),
        message,
    };
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.starts_with("whsec_…") => Err(invalid(
            "is masked, as the API shows it; give the whole secret, or leave `secret` out to keep the current one"
                .to_owned(),
        )),
        Value::String(s) => {
            SigningKey::parse(s).map_err(|e| invalid(e.to_string()))?;
            Ok(Some(s.clone()))
        }
        _ => Err(invalid(
            "must be a signing secret string (whsec_…)".to_owned(),
        )),
    }
}

/// A definition as written to a file: the fields that differ from their defaults, in the
/// order people read them, so that an export is as short as a hand-written declaration.
#[derive(Serialize)]
struct Written<'a> {
    name: &'a str,
    url: &'a str,
    #[serde(skip_serializing_if = "is_default")]
    method: &'a Method,
    events: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    clinic_ids: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "is_true")]
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_schedule: &'a Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: &'a Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: &'a Option<u32>,
    #[serde(skip_serializing_if = "is_default")]
    auth: &'a Auth,
    #[serde(skip_serializing_if = "is_false")]
    follow_redirects: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "is_default")]
    body: &'a Body,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
}

fn is_default<T: Default + PartialEq>(v: &&T) -> bool {
    **v == T::default()
}

fn is_true(v: &bool) -> bool {
    *v
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl<'a> Written<'a> {
    fn of(d: &'a Definition) -> Self {
        let s = &d.spec;
        Self {
            name: &s.name,
            url: &s.url,
            method: &s.method,
            events: &s.events,
            clinic_ids: &s.clinic_ids,
            headers: &s.headers,
            enabled: s.enabled,
            retry_schedule: &s.retry_schedule,
            rate_limit: &s.rate_limit,
            max_concurrency: &s.max_concurrency,
            auth: &s.auth,
            follow_redirects: s.follow_redirects,
            query: &s.query,
            body: &s.body,
            secret: d.secret.as_deref(),
        }
    }
}

/// The file format of a set of definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// Write definitions in the format `parse` reads.
pub fn render(definitions: &[Definition], format: Format) -> Result<String, String> {
    let written: Vec<Written> = definitions.iter().map(Written::of).collect();
    match format {
        Format::Yaml => yaml_serde::to_string(&written).map_err(|e| e.to_string()),
        Format::Json => serde_json::to_string_pretty(&written)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn yaml_json_and_the_webhooks_mapping_are_one_format() {
        let yaml = format!(
            "- name: crm\n  url: https://crm.example/h\n  events: [kc_patient_save]\n  clinic_ids: [3]\n  secret: {SECRET}\n"
        );
        let json = format!(
            r#"[{{"name": "crm", "url": "https://crm.example/h", "events": ["kc_patient_save"], "clinic_ids": [3], "secret": "{SECRET}"}}]"#
        );
        let mapping = format!("webhooks:\n{yaml}");
        let a = parse(&yaml, Reading::Declaration).unwrap();
        assert_eq!(a, parse(&json, Reading::Declaration).unwrap());
        assert_eq!(a, parse(&mapping, Reading::Declaration).unwrap());
        assert_eq!(a[0].spec.events, vec!["patient.created"]);
        assert_eq!(a[0].secret.as_deref(), Some(SECRET));
    }

    #[test]
    fn errors_name_the_entry_its_name_and_the_field() {
        let e = parse(
            "- {name: a, url: 'https://a.example/', events: ['*']}\n- {name: b, url: 'ftp://b', events: ['*']}\n",
            Reading::Declaration,
        )
        .unwrap_err();
        assert_eq!((e.index, e.field.as_str()), (Some(1), "url"));
        assert!(e.to_string().starts_with("webhooks[1].url: "), "{e}");
        assert!(e.to_string().ends_with("(webhook `b`)"), "{e}");

        let e = parse(
            "- {name: a, url: 'https://a.example/', events: ['*']}\n- {name: a, url: 'https://b.example/', events: ['*']}\n",
            Reading::Declaration,
        )
        .unwrap_err();
        assert_eq!((e.index, e.field.as_str()), (Some(1), "name"));

        let e = parse(
            "- {name: a, url: 'https://a.example/', events: ['*'], secret: whsec_x}",
            Reading::Declaration,
        )
        .unwrap_err();
        assert_eq!(e.field, "secret");
        assert!(parse("name: a", Reading::Declaration)
            .unwrap_err()
            .index
            .is_none());
        assert!(parse("[: nope", Reading::Declaration).is_err());
    }

    #[test]
    fn a_backup_drops_what_only_a_stored_webhook_has() {
        let stored = format!(
            r#"[{{"id": "wh_1", "name": "a", "url": "https://a.example/", "events": ["*"], "enabled": false,
                 "disabled_reason": "410 Gone", "previous_secrets": [], "secret": "{SECRET}",
                 "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}}]"#
        );
        let strict = parse(&stored, Reading::Declaration).unwrap_err();
        assert!(
            STORED_ONLY_FIELDS.contains(&strict.field.as_str()),
            "{strict}"
        );
        let d = parse(&stored, Reading::Backup).unwrap();
        assert!(!d[0].spec.enabled);
        assert_eq!(d[0].secret.as_deref(), Some(SECRET));
    }

    #[test]
    fn rendered_definitions_parse_back_the_same_in_both_formats() {
        let text = format!(
            r#"[{{"name": "a", "url": "https://a.example/", "events": ["*"], "secret": "{SECRET}"}},
                {{"name": "b", "url": "https://b.example/{{{{clinic_id}}}}", "method": "PUT", "events": ["bill.*"],
                  "clinic_ids": ["4"], "headers": {{"X-A": "1"}}, "enabled": false, "retry_schedule": [0.5, 2],
                  "rate_limit": 2.5, "max_concurrency": 3, "auth": {{"type": "bearer", "token": "t"}},
                  "follow_redirects": true, "query": {{"q": "{{{{patient_name}}}}"}},
                  "body": {{"type": "json", "template": "{{\"n\": \"{{{{patient_name}}}}\"}}"}}}}]"#
        );
        let defs = parse(&text, Reading::Declaration).unwrap();
        for format in [Format::Yaml, Format::Json] {
            let out = render(&defs, format).unwrap();
            assert_eq!(parse(&out, Reading::Declaration).unwrap(), defs, "{out}");
        }
        let yaml = render(&defs[..1], Format::Yaml).unwrap();
        assert!(yaml.starts_with("- name: a\n"), "{yaml}");
        assert!(!yaml.contains("enabled"), "defaults are left out: {yaml}");
    }
}
