//! Clinic events: the catalogue, KiviCare's action names as aliases, and the envelope.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One entry of the event catalogue (`GET /v1/event-types`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct EventTypeInfo {
    #[serde(rename = "type")]
    pub name: &'static str,
    pub description: &'static str,
    /// KiviCare's own action names that map to this type.
    #[schema(value_type = Vec<String>)]
    pub kivicare_actions: &'static [&'static str],
}

macro_rules! catalogue {
    ($( $name:literal, $desc:literal, [$($alias:literal),*] );* $(;)?) => {
        /// Every event type KiviHook knows, in display order.
        pub const CATALOGUE: &[EventTypeInfo] = &[
            $( EventTypeInfo { name: $name, description: $desc, kivicare_actions: &[$($alias),*] } ),*
        ];
    };
}

catalogue! {
    "appointment.booked", "An appointment was booked.", ["kc_appointment_book", "kc_after_create_appointment"];
    "appointment.updated", "An appointment was changed.", ["kc_appointment_update", "kc_appointment_updated"];
    "appointment.deleted", "An appointment was deleted.", ["kc_appointment_delete", "kc_appointment_deleted"];
    "appointment.status_changed", "An appointment's status changed.", ["kc_appointment_status_update"];
    "appointment.payment_completed", "An appointment was paid.", ["kc_appointment_payment_complete", "kc_appointment_payment_completed"];
    "appointment.cancelled", "An appointment was cancelled (status 0).", ["kc_appointment_cancelled", "kivicare_appointment_cancelled"];
    "appointment.checked_in", "A patient checked in (status 4).", [];
    "appointment.checked_out", "A patient checked out (status 3).", [];
    "encounter.created", "An encounter was created.", ["kc_encounter_save"];
    "encounter.updated", "An encounter was changed.", ["kc_encounter_update"];
    "encounter.deleted", "An encounter was deleted.", ["kc_encounter_delete", "kc_before_delete_encounter"];
    "patient.created", "A patient was registered.", ["kc_patient_save", "kivicare_patient_registered"];
    "patient.updated", "A patient's record was changed.", ["kc_patient_update"];
    "patient.deleted", "A patient was deleted.", ["kc_patient_delete"];
    "doctor.created", "A doctor was added.", ["kc_doctor_save", "kc_doctor_register"];
    "doctor.updated", "A doctor's record was changed.", ["kc_doctor_update"];
    "doctor.deleted", "A doctor was deleted.", ["kc_doctor_delete"];
    "receptionist.created", "A receptionist was added.", ["kc_receptionist_save", "kc_receptionist_created", "kc_receptionist_register"];
    "receptionist.updated", "A receptionist's record was changed.", ["kc_receptionist_update"];
    "receptionist.deleted", "A receptionist was deleted.", ["kc_receptionist_delete"];
    "clinic.created", "A clinic was created.", ["kcpro_clinic_save"];
    "clinic.updated", "A clinic was changed.", ["kcpro_clinic_update"];
    "clinic.deleted", "A clinic was deleted.", ["kcpro_clinic_delete"];
    "bill.created", "A bill was generated for an encounter.", ["kc_encounter_bill_generate"];
    "bill.paid", "A bill was paid (payment status paid).", [];
    // Appended, never inserted: a Redis marker names a catalogue type by its index
    // (store/marker.rs), so the entries above keep their places.
    "appointment.payment_cancelled", "An appointment's payment was cancelled.", ["kc_appointment_payment_cancelled"];
    "encounter.closed", "An encounter was closed (status 0).", [];
    "bill.updated", "A bill was changed.", ["kc_encounter_bill_update", "kivicare_after_update_bill"];
    "prescription.created", "A prescription was written.", ["kc_prescription_created"];
    "prescription.updated", "A prescription was changed.", ["kc_prescription_updated"];
    "service.added", "A service was added.", ["kc_service_add"];
    "service.updated", "A service was changed.", ["kc_service_update"];
    "service.deleted", "A service was deleted.", ["kc_service_delete"];
}

/// The families an event pattern like `appointment.*` may name.
pub const FAMILIES: &[&str] = &[
    "appointment",
    "encounter",
    "patient",
    "doctor",
    "receptionist",
    "clinic",
    "bill",
    "prescription",
    "service",
    "custom",
];

const CUSTOM_PREFIX: &str = "custom.";
const MAX_CUSTOM_LEN: usize = 100;

/// Why a string is not an event type.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not an event type: use one of GET /v1/event-types, a KiviCare action name, or custom.<name>")]
pub struct UnknownEventType(pub String);

/// A canonical event type: from the catalogue, or `custom.<name>`.
///
/// KiviCare action names are translated on parse, so everything downstream (routing keys,
/// matching, metrics) sees only canonical names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    pub fn parse(s: &str) -> Result<Self, UnknownEventType> {
        if let Some(info) = CATALOGUE
            .iter()
            .find(|i| i.name == s || i.kivicare_actions.contains(&s))
        {
            return Ok(Self(info.name.to_owned()));
        }
        if let Some(name) = s.strip_prefix(CUSTOM_PREFIX) {
            let valid = !name.is_empty()
                && s.len() <= MAX_CUSTOM_LEN
                && !name.starts_with('.')
                && !name.ends_with('.')
                && !name.contains("..")
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
                });
            if valid {
                return Ok(Self(s.to_owned()));
            }
        }
        Err(UnknownEventType(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A bounded label for metrics: the type itself, or `custom` for every custom type.
    pub fn metric_label(&self) -> &str {
        metric_label(&self.0)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bounded metrics label for a canonical event type: `custom` stands for every custom type.
pub fn metric_label(event_type: &str) -> &str {
    if event_type.starts_with(CUSTOM_PREFIX) {
        "custom"
    } else {
        event_type
    }
}

/// The envelope as published to RabbitMQ and as delivered (the `default` body).
///
/// The AMQP payload *is* this JSON, so a dispatcher signs and sends the bytes it received
/// without serializing them again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinic_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// When ingest accepted it; the start of the event-to-delivery latency.
    pub received_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

/// A fresh event id for events that arrive without one.
pub fn generate_event_id() -> String {
    format!("evt_{}", uuid::Uuid::new_v4().simple())
}

/// Whether a client-chosen event id (or `Idempotency-Key`) is acceptable: 1–200 printable
/// characters without spaces, so it is safe in Redis keys, logs and headers.
pub fn valid_event_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kivicare_action_names_are_aliases_of_canonical_types() {
        assert_eq!(
            EventType::parse("kc_appointment_book").unwrap().as_str(),
            "appointment.booked"
        );
        assert_eq!(
            EventType::parse("kc_appointment_payment_completed")
                .unwrap()
                .as_str(),
            "appointment.payment_completed"
        );
        assert_eq!(
            EventType::parse("kcpro_clinic_delete").unwrap().as_str(),
            "clinic.deleted"
        );
        assert_eq!(
            EventType::parse("kc_receptionist_update").unwrap().as_str(),
            "receptionist.updated"
        );
    }

    #[test]
    fn the_bridge_action_names_are_aliases() {
        for (action, canonical) in [
            ("kc_after_create_appointment", "appointment.booked"),
            ("kc_appointment_updated", "appointment.updated"),
            ("kc_appointment_deleted", "appointment.deleted"),
            ("kc_appointment_cancelled", "appointment.cancelled"),
            (
                "kc_appointment_payment_cancelled",
                "appointment.payment_cancelled",
            ),
            ("kc_before_delete_encounter", "encounter.deleted"),
            ("kivicare_patient_registered", "patient.created"),
            ("kc_doctor_register", "doctor.created"),
            ("kc_receptionist_created", "receptionist.created"),
            ("kc_receptionist_register", "receptionist.created"),
            ("kc_encounter_bill_generate", "bill.created"),
            ("kivicare_after_update_bill", "bill.updated"),
            ("kc_encounter_bill_update", "bill.updated"),
            ("kc_prescription_created", "prescription.created"),
            ("kc_prescription_updated", "prescription.updated"),
            ("kc_service_add", "service.added"),
            ("kc_service_update", "service.updated"),
            ("kc_service_delete", "service.deleted"),
        ] {
            assert_eq!(
                EventType::parse(action).unwrap().as_str(),
                canonical,
                "{action}"
            );
        }
        for t in [
            "encounter.closed",
            "bill.paid",
            "prescription.created",
            "service.added",
        ] {
            assert_eq!(EventType::parse(t).unwrap().as_str(), t);
        }
    }

    #[test]
    fn catalogue_indices_stay_where_stored_markers_expect_them() {
        // Markers in Redis write a catalogue type as its index: new types are appended.
        let first = [
            "appointment.booked",
            "appointment.updated",
            "appointment.deleted",
            "appointment.status_changed",
            "appointment.payment_completed",
            "appointment.cancelled",
            "appointment.checked_in",
            "appointment.checked_out",
            "encounter.created",
            "encounter.updated",
            "encounter.deleted",
            "patient.created",
            "patient.updated",
            "patient.deleted",
            "doctor.created",
            "doctor.updated",
            "doctor.deleted",
            "receptionist.created",
            "receptionist.updated",
            "receptionist.deleted",
            "clinic.created",
            "clinic.updated",
            "clinic.deleted",
            "bill.created",
            "bill.paid",
        ];
        for (i, name) in first.iter().enumerate() {
            assert_eq!(CATALOGUE[i].name, *name, "index {i}");
        }
    }

    #[test]
    fn no_action_name_is_an_alias_of_two_types() {
        let mut seen = std::collections::HashSet::new();
        for info in CATALOGUE {
            for a in info.kivicare_actions {
                assert!(seen.insert(*a), "{a} is listed twice");
            }
        }
    }

    #[test]
    fn every_catalogue_entry_parses_to_itself() {
        for info in CATALOGUE {
            assert_eq!(EventType::parse(info.name).unwrap().as_str(), info.name);
            assert!(FAMILIES.contains(&info.name.split('.').next().unwrap()));
        }
    }

    #[test]
    fn custom_types_are_accepted_and_share_one_metric_label() {
        let t = EventType::parse("custom.lab_result.ready").unwrap();
        assert_eq!(t.metric_label(), "custom");
        for bad in [
            "custom.",
            "custom..x",
            "custom.X",
            "custom.a b",
            "custom.x.",
        ] {
            assert!(EventType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_types_are_refused() {
        for bad in [
            "appointment.exploded",
            "",
            "kc_nothing",
            "APPOINTMENT.BOOKED",
            "*",
        ] {
            assert!(EventType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_ids_are_bounded_printable_strings() {
        assert!(valid_event_id("evt_123"));
        assert!(valid_event_id(&generate_event_id()));
        assert!(!valid_event_id(""));
        assert!(!valid_event_id("a b"));
        assert!(!valid_event_id("a\r\nb"));
        assert!(!valid_event_id(&"x".repeat(201)));
    }
}
