//! `{{placeholders}}` in a webhook's URL, headers, query and body, rendered with minijinja.
//!
//! Values are escaped for where they land: inside JSON strings in a JSON body, percent-
//! encoded in the URL, and as they are in headers, query parameters and form fields (whose
//! encoding is done when the request is built). Templates are checked when a webhook is saved,
//! strictly, against a sample event of every type it subscribes to; at delivery they render
//! leniently, so a field missing from a real event renders empty instead of failing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::{Environment, UndefinedBehavior};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

use crate::event::Event;

/// Where a rendered value lands, and so how it is escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Inside a JSON string.
    Json,
    /// In a URL.
    Url,
    /// In a URL, each value wrapped in markers so the rendered URL can be checked for
    /// segments that event data made (`check_url_path`) before the markers are removed.
    UrlMarked,
    /// As it is (headers, query parameters and form fields are encoded later).
    Raw,
}

/// Unreserved characters stay as they are in a URL; everything else is percent-encoded.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn escape_json_content(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The work one rendering may do (minijinja's fuel: about one unit per instruction). Real
/// templates use a few hundred; a loop of millions of steps stops here with an error.
pub const TEMPLATE_FUEL: u64 = 200_000;

/// Around each value rendered into a URL by `Escape::UrlMarked`: private-use characters,
/// which a value cannot contain (it is percent-encoded) and a URL never keeps.
pub const MARK_OPEN: char = '\u{E000}';
pub const MARK_CLOSE: char = '\u{E001}';

fn environment(escape: Escape, strict: bool) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_undefined_behavior(if strict {
        UndefinedBehavior::Strict
    } else {
        UndefinedBehavior::Lenient
    });
    env.set_formatter(move |out, _state, value| {
        if value.is_undefined() || value.is_none() {
            return Ok(());
        }
        let text = value.to_string();
        let escaped = match escape {
            Escape::Json => {
                let mut s = String::with_capacity(text.len());
                escape_json_content(&text, &mut s);
                s
            }
            Escape::Url => utf8_percent_encode(&text, URL_VALUE).to_string(),
            Escape::UrlMarked => format!(
                "{MARK_OPEN}{}{MARK_CLOSE}",
                utf8_percent_encode(&text, URL_VALUE)
            ),
            Escape::Raw => text,
        };
        out.write_str(&escaped).map_err(minijinja::Error::from)
    });
    env
}

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub line: Option<usize>,
    pub placeholder: Option<String>,
    pub message: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.placeholder, self.line) {
            (Some(p), Some(l)) => write!(f, "line {l}: `{p}` {}", self.message),
            (Some(p), None) => write!(f, "`{p}` {}", self.message),
            (None, Some(l)) => write!(f, "line {l}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

/// Whether a string holds template syntax at all (plain strings skip rendering).
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// A name the environment itself defines (`range`, `namespace`, …), not a placeholder.
fn is_global(env: &Environment<'_>, name: &str) -> bool {
    let root = name.split('.').next().unwrap_or(name);
    env.globals().any(|(g, _)| g == root)
}

fn lookup<'a>(ctx: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(ctx, |v, part| v.get(part))
}

/// Render `source` against `ctx`. Strict rendering (at save) fails on any placeholder the
/// context does not define, naming it and its line.
pub fn render(
    source: &str,
    escape: Escape,
    ctx: &Value,
    strict: bool,
) -> Result<String, TemplateError> {
    if !is_template(source) {
        return Ok(source.to_owned());
    }
    let env = environment(escape, strict);
    let template = env.template_from_str(source).map_err(syntax_error)?;
    if strict {
        if let Some(name) = undefined(&env, &template, ctx).into_iter().next() {
            let root = name.split('.').next().unwrap_or(&name).to_owned();
            let line = source
                .lines()
                .position(|l| l.contains(&root))
                .map(|i| i + 1);
            return Err(TemplateError {
                line,
                placeholder: Some(name),
                message: "is not defined for this event type".into(),
            });
        }
    }
    template.render(ctx).map_err(render_failure)
}

/// Render `source` leniently (as at delivery), and name the placeholders the context did
/// not define, which rendered empty.
pub fn render_lenient(
    source: &str,
    escape: Escape,
    ctx: &Value,
) -> Result<(String, Vec<String>), TemplateError> {
    if !is_template(source) {
        return Ok((source.to_owned(), Vec::new()));
    }
    let env = environment(escape, false);
    let template = env.template_from_str(source).map_err(syntax_error)?;
    let missing = undefined(&env, &template, ctx);
    let out = template.render(ctx).map_err(render_failure)?;
    Ok((out, missing))
}

/// The placeholders of `template` that `ctx` does not define, sorted.
fn undefined(
    env: &Environment<'_>,
    template: &minijinja::Template<'_, '_>,
    ctx: &Value,
) -> Vec<String> {
    let mut names: Vec<String> = template
        .undeclared_variables(true)
        .into_iter()
        .filter(|v| lookup(ctx, v).is_none() && !is_global(env, v))
        .collect();
    names.sort();
    names
}

fn syntax_error(e: minijinja::Error) -> TemplateError {
    TemplateError {
        line: e.line(),
        placeholder: None,
        message: format!(
            "is not a valid template: {}",
            e.detail().unwrap_or("syntax error")
        ),
    }
}

fn render_failure(e: minijinja::Error) -> TemplateError {
    TemplateError {
        line: e.line(),
        placeholder: None,
        message: if e.kind() == minijinja::ErrorKind::OutOfFuel {
            format!("does more work than a template may (out of fuel after {TEMPLATE_FUEL} steps)")
        } else {
            e.detail().unwrap_or("cannot be rendered").to_owned()
        },
    }
}

/// Check a URL rendered with `Escape::UrlMarked` and return it without the markers. Event
/// data may fill path segments and query values only: a value in the scheme, host or port,
/// a path segment it makes `.` or `..` (also percent-encoded), or one it leaves empty, is
/// refused, since any of them would send the request (and its credentials) somewhere the
/// webhook's owner did not write.
pub fn check_url_path(rendered: &str) -> Result<String, String> {
    let unmark = |s: &str| s.replace([MARK_OPEN, MARK_CLOSE], "");
    if !rendered.contains(MARK_OPEN) {
        return Ok(rendered.to_owned());
    }
    let after_scheme = rendered.find("://").map_or(0, |i| i + 3);
    let rest = &rendered[after_scheme..];
    let path_start = after_scheme + rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if rendered[..path_start].contains(MARK_OPEN) {
        return Err(
            "a placeholder in the scheme, host or port would let event data choose where the request goes"
                .into(),
        );
    }
    let tail = &rendered[path_start..];
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    for segment in tail[..path_end].split('/').skip(1) {
        if !segment.contains(MARK_OPEN) {
            continue;
        }
        let value = unmark(segment);
        let dots = value.replace("%2e", ".").replace("%2E", ".");
        if value.is_empty() {
            return Err("a placeholder renders an empty path segment".into());
        }
        if dots == "." || dots == ".." {
            return Err(format!(
                "a placeholder renders the path segment `{value}`, which would change the path"
            ));
        }
    }
    Ok(unmark(rendered))
}

/// Whether a URL template has a placeholder before its path (in the scheme, host or port).
pub fn placeholder_before_path(url_template: &str) -> bool {
    let after_scheme = url_template.find("://").map_or(0, |i| i + 3);
    let rest = &url_template[after_scheme..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    url_template[..after_scheme].contains('{') || is_template(authority)
}

/// The placeholders an event offers: KiviCare's flat names (`patient_name`, `doctor_name`,
/// `appointment_date`, …, from the objects in `data`), `current_date` and
/// `current_date_time`, and the whole event as `event` and `data`.
pub fn context(event: &Event) -> Value {
    let mut flat = Map::new();
    if let Some(data) = event.data.as_object() {
        for (key, value) in data {
            match value {
                Value::Object(inner) => {
                    for (k, v) in inner {
                        if !v.is_object() && !v.is_array() {
                            flat.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                }
                Value::Array(_) => {}
                scalar => {
                    flat.insert(key.clone(), scalar.clone());
                }
            }
        }
    }
    let now = chrono::Utc::now();
    flat.insert(
        "current_date".into(),
        now.format("%Y-%m-%d").to_string().into(),
    );
    flat.insert(
        "current_date_time".into(),
        now.format("%Y-%m-%d %H:%M:%S").to_string().into(),
    );
    flat.insert("event_id".into(), event.id.clone().into());
    flat.insert("event_type".into(), event.event_type.clone().into());
    flat.entry("clinic_id".to_owned())
        .or_insert_with(|| event.clinic_id.clone().map_or(Value::Null, Value::String));
    flat.insert(
        "event".into(),
        serde_json::json!({
            "id": event.id, "type": event.event_type, "clinic_id": event.clinic_id,
            "occurred_at": event.occurred_at, "received_at": event.received_at,
        }),
    );
    flat.insert("data".into(), event.data.clone());
    Value::Object(flat)
}

/// A form body's fields, rendered.
pub fn render_form(
    fields: &BTreeMap<String, String>,
    ctx: &Value,
    strict: bool,
) -> Result<String, (String, TemplateError)> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (name, source) in fields {
        let value = render(source, Escape::Raw, ctx, strict).map_err(|e| (name.clone(), e))?;
        form.append_pair(name, &value);
    }
    Ok(form.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::sample_event;

    #[test]
    fn event_data_cannot_walk_the_path_or_choose_the_host() {
        let mut e = sample_event("appointment.booked");
        let url = "https://api.example.com/clinics/{{ clinic_id }}/patients/{{ patient_id }}/appointments?p={{ patient_id }}";
        let rendered = |e: &Event| {
            render(url, Escape::UrlMarked, &context(e), false)
                .map(|u| check_url_path(&u))
                .unwrap()
        };
        e.data["patient"]["patient_id"] = Value::from(42);
        let ok = rendered(&e).unwrap();
        assert!(ok.contains("/patients/42/appointments?p=42"), "{ok}");
        for walk in ["..", ".", "", "%2e%2e", "%2E."] {
            e.data["patient"]["patient_id"] = Value::from(walk);
            // `%` is encoded, so `%2e` arrives as `%252e`: not a dot segment, and allowed.
            let r = rendered(&e);
            if walk.contains('%') {
                assert!(r.is_ok(), "{walk}: {r:?}");
            } else {
                assert!(r.is_err(), "{walk}: {r:?}");
            }
        }
        // A literal `%2e` in the template beside a value that makes the segment `..`.
        let r = render(
            "https://a.example/%2e{{ x }}/y",
            Escape::UrlMarked,
            &serde_json::json!({"x": "."}),
            false,
        )
        .unwrap();
        assert!(check_url_path(&r).is_err());
        // In the query, dots are only text.
        let r = render(
            "https://a.example/y?q={{ x }}",
            Escape::UrlMarked,
            &serde_json::json!({"x": ".."}),
            false,
        )
        .unwrap();
        assert_eq!(check_url_path(&r).unwrap(), "https://a.example/y?q=..");
        let r = render(
            "https://{{ x }}/y",
            Escape::UrlMarked,
            &serde_json::json!({"x": "evil.example"}),
            false,
        )
        .unwrap();
        assert!(check_url_path(&r).is_err());
        assert!(placeholder_before_path("https://{{ data.host }}/x"));
        assert!(placeholder_before_path("https://a.example:{{ port }}/x"));
        assert!(placeholder_before_path("{{ scheme }}://a.example/x"));
        assert!(!placeholder_before_path(
            "https://a.example/{{ x }}?y={{ y }}"
        ));
    }

    #[test]
    fn a_template_that_works_too_hard_is_stopped() {
        let heavy =
            "{% for i in range(12000) %}{% for j in range(12000) %}x{% endfor %}{% endfor %}";
        let e = render(heavy, Escape::Raw, &serde_json::json!({}), false).unwrap_err();
        assert!(e.message.contains("fuel"), "{e}");
    }

    #[test]
    fn values_are_escaped_for_where_they_land() {
        let mut e = sample_event("appointment.booked");
        e.data["patient"]["patient_name"] = Value::String("O\"Brien & Co <x>\n".into());
        let ctx = context(&e);
        let json = render(
            r#"{"text": "Hi {{ patient_name }}"}"#,
            Escape::Json,
            &ctx,
            true,
        )
        .unwrap();
        let parsed: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["text"], "Hi O\"Brien & Co <x>\n");
        let url = render(
            "https://x.example/p/{{patient_name}}",
            Escape::Url,
            &ctx,
            true,
        )
        .unwrap();
        assert_eq!(url, "https://x.example/p/O%22Brien%20%26%20Co%20%3Cx%3E%0A");
        let raw = render("{{ doctor_name }}", Escape::Raw, &ctx, true).unwrap();
        assert_eq!(raw, "Dr. Grace Hopper");
    }

    #[test]
    fn kivicare_flat_placeholders_and_the_whole_event_are_there() {
        let ctx = context(&sample_event("appointment.booked"));
        for key in [
            "patient_name",
            "patient_email",
            "patient_contact_number",
            "doctor_name",
            "clinic_name",
            "appointment_id",
            "appointment_date",
            "appointment_start_time",
            "appointment_status",
            "service_names",
            "current_date",
            "current_date_time",
        ] {
            assert!(ctx.get(key).is_some(), "{key}");
        }
        let s = render(
            "{{ event.type }} {{ data.patient.patient_email }}",
            Escape::Raw,
            &ctx,
            true,
        )
        .unwrap();
        assert_eq!(s, "appointment.booked ada@example.com");
    }

    #[test]
    fn strict_rendering_names_the_undefined_placeholder_and_its_line() {
        let ctx = context(&sample_event("patient.created"));
        let e = render(
            "{\n \"a\": \"{{ appointment_date }}\"\n}",
            Escape::Json,
            &ctx,
            true,
        )
        .unwrap_err();
        assert_eq!(e.placeholder.as_deref(), Some("appointment_date"));
        assert_eq!(e.line, Some(2));
        // Lenient at delivery: missing renders empty.
        let ok = render("[{{ appointment_date }}]", Escape::Raw, &ctx, false).unwrap();
        assert_eq!(ok, "[]");
        let syntax = render("{{ nope", Escape::Raw, &ctx, true).unwrap_err();
        assert!(syntax.message.contains("not a valid template"));
    }

    #[test]
    fn forms_are_url_encoded() {
        let ctx = context(&sample_event("appointment.booked"));
        let mut fields = BTreeMap::new();
        fields.insert("Body".to_owned(), "Hi {{ patient_name }} & co".to_owned());
        fields.insert("To".to_owned(), "{{ patient_contact_number }}".to_owned());
        let form = render_form(&fields, &ctx, true).unwrap();
        assert_eq!(form, "Body=Hi+Ada+Lovelace+%26+co&To=%2B44+20+7946+0000");
    }
}
