//! An event request's JSON, read once: the fields of each event as the client wrote them,
//! and `data` checked as a `serde_json::Value` would be (syntax, strings, numbers, nesting)
//! but carried into the envelope as it came, never built into a tree and written out again.
//! The `data` of an event is most of its bytes; building it was a quarter of ingest's CPU.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// An event's fields by name, each its JSON as sent. Keys in order and the last of a
/// repeated key kept, as `serde_json::Map` does.
pub type Fields<'a> = BTreeMap<String, &'a RawValue>;

/// An accepted event as published: the envelope `kivihook_core::event::Event` describes,
/// field for field, with `data` as the client sent it.
#[derive(Debug, Serialize)]
pub struct Intake<'a> {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clinic_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub data: &'a RawValue,
}

/// What a body's top level is.
pub enum Top<'a> {
    Object(Fields<'a>),
    Array(Vec<&'a RawValue>),
    /// Valid JSON, but neither an object nor an array.
    Other,
}

/// A body that does not read: `invalid_json`, as it always was.
fn invalid_json(e: serde_json::Error) -> ApiError {
    ApiError::InvalidJson(e.to_string())
}

/// Read a body's top level.
pub fn top(body: &[u8]) -> Result<Top<'_>, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body)
            .map(Top::Object)
            .map_err(invalid_json),
        Some(b'[') => serde_json::from_slice(body)
            .map(Top::Array)
            .map_err(invalid_json),
        _ => serde_json::from_slice::<&RawValue>(body)
            .map(|_| Top::Other)
            .map_err(invalid_json),
    }
}

/// A batch's `events`, or `None` when the value is not an array.
pub fn events(raw: &RawValue) -> Result<Option<Vec<&RawValue>>, ApiError> {
    if !raw.get().starts_with('[') {
        return Ok(None);
    }
    serde_json::from_str(raw.get())
        .map(Some)
        .map_err(invalid_json)
}

/// An event's fields, or `None` when the value is not an object.
pub fn fields(raw: &RawValue) -> Result<Option<Fields<'_>>, ApiError> {
    if !raw.get().starts_with('{') {
        return Ok(None);
    }
    serde_json::from_str(raw.get())
        .map(Some)
        .map_err(invalid_json)
}

/// A small field (an id, a type, a time) as a value; `None` when it cannot be read as one
/// (nested too deep, a number out of range): the caller names the field as invalid.
pub fn small(raw: &RawValue) -> Option<serde_json::Value> {
    serde_json::from_str(raw.get()).ok()
}

/// The most containers (objects and arrays) nested in one body, counting the outermost:
/// what `serde_json` reads into a `Value`, and so what the dispatcher can read back.
const MAX_NESTING: usize = 127;

/// Check `data` (inside `enclosing` containers of `body`) the way reading it into a `Value`
/// would: every string and number readable, and nested no deeper than the dispatcher can
/// read it back inside its envelope. Errors are `invalid_json` naming the field (`field`
/// names it, called only then: most events are fine), at their line and column in the body.
pub fn check_data(
    body: &[u8],
    raw: &RawValue,
    field: impl FnOnce() -> String,
    enclosing: usize,
) -> Result<(), ApiError> {
    let check = Check {
        depth_left: MAX_NESTING.saturating_sub(enclosing),
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    check
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| ApiError::InvalidJsonIn {
            field: field(),
            message: at_body(body, raw, &e),
        })
}

/// The error's message, at its place in the whole body rather than in the field.
fn at_body(body: &[u8], raw: &RawValue, e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m);
    // Where the field starts: its slice points into the body.
    let start = (raw.get().as_ptr() as usize)
        .checked_sub(body.as_ptr() as usize)
        .filter(|&s| s <= body.len())
        .unwrap_or(0);
    let before = &body[..start];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let column = start
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
    let (line, column) = if e.line() <= 1 {
        (line, column + e.column())
    } else {
        (line + e.line() - 1, e.column())
    };
    format!("{message} at line {line} column {column}")
}

/// Reads any value without keeping it, as deep as `depth_left` containers.
#[derive(Clone, Copy)]
struct Check {
    depth_left: usize,
}

impl Check {
    fn deeper<E: serde::de::Error>(self) -> Result<Self, E> {
        match self.depth_left.checked_sub(1) {
            Some(depth_left) => Ok(Self { depth_left }),
            None => Err(E::custom("recursion limit exceeded")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(E::custom("number out of range"))
        }
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kivihook_core::event::Event;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    /// The first event's fields in a body of any of the three shapes, and the containers
    /// around its `data`.
    fn first_event(body: &str) -> (Fields<'_>, usize) {
        match top(body.as_bytes()).unwrap() {
            Top::Object(f) if f.contains_key("events") => {
                let events = events(f["events"]).unwrap().unwrap();
                (fields(events[0]).unwrap().unwrap(), 3)
            }
            Top::Object(f) => (f, 1),
            Top::Array(events) => (fields(events[0]).unwrap().unwrap(), 2),
            Top::Other => panic!("not an event body"),
        }
    }

    /// What `data` may hold is exactly what a `Value` can: checked as accepted here, the
    /// dispatcher reads it back inside its envelope; refused here, a `Value` refused it too.
    #[test]
    fn data_is_accepted_exactly_when_the_dispatcher_can_read_it_back() {
        for levels in [1, 60, 123, 124, 125, 126, 127, 200] {
            let data = format!("{{\"a\":{}}}", nested(levels - 1));
            let event = format!("{{\"type\":\"patient.created\",\"data\":{data}}}");
            for body in [
                event.clone(),
                format!("[{event}]"),
                format!("{{\"events\":[{event}]}}"),
            ] {
                let (f, enclosing) = first_event(&body);
                let checked =
                    check_data(body.as_bytes(), f["data"], || "data".into(), enclosing).is_ok();
                let whole_body_reads = serde_json::from_str::<serde_json::Value>(&body).is_ok();
                assert_eq!(checked, whole_body_reads, "{levels} levels in {enclosing}");
                if checked {
                    let envelope = serde_json::to_string(&Intake {
                        id: "evt_1".into(),
                        event_type: "patient.created".into(),
                        clinic_id: None,
                        occurred_at: Utc::now(),
                        received_at: Utc::now(),
                        data: f["data"],
                    })
                    .unwrap();
                    serde_json::from_str::<Event>(&envelope)
                        .unwrap_or_else(|e| panic!("{levels} levels: {e}"));
                }
            }
        }
        for bad in [
            r#"{"n":1e999}"#,
            r#"{"n":-1e400}"#,
            r#"{"s":"\ud800"}"#,
            r#"{"s":"\x"}"#,
        ] {
            let body = format!("{{\"data\":{bad}}}");
            let whole = serde_json::from_str::<serde_json::Value>(&body);
            let Ok(Top::Object(f)) = top(body.as_bytes()) else {
                assert!(whole.is_err(), "{bad}");
                continue;
            };
            assert!(whole.is_err(), "{bad}");
            let err = check_data(body.as_bytes(), f["data"], || "data".into(), 1).unwrap_err();
            assert_eq!(err.code(), "invalid_json", "{bad}");
        }
    }

    #[test]
    fn an_error_in_data_names_the_field_at_its_place_in_the_body() {
        let body = "{\"events\": [\n  {\"type\": \"x\",\n   \"data\": {\"n\": 1e999}}]}";
        let (f, enclosing) = first_event(body);
        let err = check_data(
            body.as_bytes(),
            f["data"],
            || "events[0].data".into(),
            enclosing,
        )
        .unwrap_err();
        let whole = serde_json::from_str::<serde_json::Value>(body).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the body is not valid JSON: events[0].data: number out of range at line {} column {}",
                whole.line(),
                whole.column()
            )
        );
    }

    /// The envelope is `Event`'s, field for field: what the dispatcher reads is what was sent.
    #[test]
    fn an_intake_is_an_event_envelope_with_data_as_sent() {
        let body = r#"{"data": {"z": 1, "a": {"b": [true, null, "é\n"]}}}"#;
        let (f, _) = first_event(body);
        let at = Utc::now();
        let intake = Intake {
            id: "evt_1".into(),
            event_type: "bill.created".into(),
            clinic_id: Some("12".into()),
            occurred_at: at,
            received_at: at,
            data: f["data"],
        };
        let written = serde_json::to_string(&intake).unwrap();
        assert!(written.ends_with(r#""data":{"z": 1, "a": {"b": [true, null, "é\n"]}}}"#));
        let event: Event = serde_json::from_str(&written).unwrap();
        let expected = Event {
            id: "evt_1".into(),
            event_type: "bill.created".into(),
            clinic_id: Some("12".into()),
            occurred_at: at,
            received_at: at,
            data: serde_json::from_str(f["data"].get()).unwrap(),
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::to_value(&expected).unwrap()
        );
        let without_clinic = Intake {
            clinic_id: None,
            ..intake
        };
        assert!(!serde_json::to_string(&without_clinic)
            .unwrap()
            .contains("clinic_id"));
    }
}
