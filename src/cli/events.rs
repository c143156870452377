//! `kivihook events send`: one event into `POST /v1/events`, as KiviCare would send it, to
//! try a webhook end to end or to feed one by hand.

use std::path::Path;

use serde_json::{json, Value};

use super::client::Api;
use super::error::CliError;
use super::output::{self, Output};
use super::{read_input, shown, EventsAction};

pub async fn run(api: &Api, action: EventsAction) -> Result<(), CliError> {
    let EventsAction::Send {
        event_type,
        clinic,
        id,
        data,
        file,
        output,
    } = action;
    let event = build(
        event_type.as_deref(),
        clinic,
        id,
        data.as_deref(),
        file.as_deref(),
    )?;
    let (status, answer) = api.post(&["v1", "events"], Some(&event)).await?;
    match output {
        Output::Json => output::json(&answer),
        Output::Text => output::print(&format!(
            "{} {}\n",
            output::text(&answer["id"]),
            answer["status"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| status.to_string())
        )),
    }
}

/// The event to send, from the flags and the file; checks only what the API cannot say
/// better (where the JSON came from).
fn build(
    event_type: Option<&str>,
    clinic: Option<String>,
    id: Option<String>,
    data: Option<&str>,
    file: Option<&Path>,
) -> Result<Value, CliError> {
    let from_file = |path: &Path| -> Result<Value, CliError> {
        let text = read_input(path)?;
        serde_json::from_str(&text)
            .map_err(|e| CliError::InvalidFile(format!("{}: is not valid JSON ({e})", shown(path))))
    };
    let mut event = match (event_type, file) {
        (Some(t), file) => {
            let data = match (data, file) {
                (Some(text), _) => serde_json::from_str(text)
                    .map_err(|e| CliError::Usage(format!("--data: is not valid JSON ({e})")))?,
                (None, Some(path)) => from_file(path)?,
                (None, None) => json!({}),
            };
            json!({"type": t, "data": data})
        }
        (None, Some(path)) => {
            let event = from_file(path)?;
            if !event.is_object() {
                return Err(CliError::InvalidFile(format!(
                    "{}: must be an event (a JSON object with `type` and `data`), or the data with --type",
                    shown(path)
                )));
            }
            event
        }
        (None, None) => {
            return Err(CliError::Usage(
                "--type is required (or -f FILE holding a whole event)".into(),
            ))
        }
    };
    if let Some(clinic) = clinic {
        event["clinic_id"] = Value::String(clinic);
    }
    if let Some(id) = id {
        event["id"] = Value::String(id);
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_an_event_and_override_a_whole_one() {
        let e = build(
            Some("appointment.booked"),
            Some("12".into()),
            Some("evt_1".into()),
            Some(r#"{"patient_name": "Ada"}"#),
            None,
        )
        .unwrap();
        assert_eq!(
            e,
            json!({"type": "appointment.booked", "clinic_id": "12", "id": "evt_1", "data": {"patient_name": "Ada"}})
        );
        assert_eq!(
            build(Some("bill.paid"), None, None, None, None).unwrap(),
            json!({"type": "bill.paid", "data": {}})
        );
        assert!(matches!(
            build(None, None, None, None, None),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            build(Some("bill.paid"), None, None, Some("{nope"), None),
            Err(CliError::Usage(_))
        ));
    }
}
