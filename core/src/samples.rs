//! A sample event of every type, with the data fields KiviCare's own webhooks carry, so that
//! templates can be checked when a webhook is saved and previewed before it is used.

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

use crate::event::{Event, CATALOGUE};

fn appointment(status: u8) -> Value {
    json!({
        "appointment_id": "1042",
        "appointment_date": "2026-12-01",
        "appointment_start_time": "09:30",
        "appointment_end_time": "09:45",
        "appointment_status": status,
        "appointment_description": "Follow-up consultation",
        "service_names": "General consultation",
        "appointment_total_amount": "45.00",
    })
}

fn patient() -> Value {
    json!({
        "patient_id": "311",
        "patient_name": "Ada Lovelace",
        "patient_email": "ada@example.com",
        "patient_contact_number": "+44 20 7946 0000",
        "patient_gender": "female",
        "patient_dob": "1990-12-10",
    })
}

fn doctor() -> Value {
    json!({
        "doctor_id": "7",
        "doctor_name": "Dr. Grace Hopper",
        "doctor_email": "grace@clinic.example",
        "doctor_contact_number": "+44 20 7946 0001",
        "doctor_specialty": "General practice",
    })
}

fn clinic() -> Value {
    json!({
        "clinic_id": "12",
        "clinic_name": "Central Clinic",
        "clinic_email": "front-desk@clinic.example",
        "clinic_contact_number": "+44 20 7946 0002",
        "clinic_address": "1 High Street, London",
    })
}

/// The `data` of a sample event of this type.
pub fn sample_data(event_type: &str) -> Value {
    let family = event_type.split('.').next().unwrap_or("");
    match family {
        "appointment" => {
            let status = match event_type {
                "appointment.cancelled" => 0,
                "appointment.checked_out" => 3,
                "appointment.checked_in" => 4,
                _ => 1,
            };
            let mut a = appointment(status);
            if event_type == "appointment.payment_completed" {
                a["payment_mode"] = json!("card");
                a["payment_status"] = json!("paid");
            }
            if event_type == "appointment.payment_cancelled" {
                a["payment_mode"] = json!("card");
                a["payment_status"] = json!("cancelled");
            }
            json!({"appointment": a, "patient": patient(), "doctor": doctor(), "clinic": clinic()})
        }
        "encounter" => json!({
            "encounter": {"encounter_id": "88", "encounter_date": "2026-12-01",
                          "encounter_status": if event_type == "encounter.closed" { 0 } else { 1 },
                          "encounter_description": "Annual check-up"},
            "patient": patient(), "doctor": doctor(), "clinic": clinic(),
        }),
        "patient" => json!({"patient": patient(), "clinic": clinic()}),
        "doctor" => json!({"doctor": doctor(), "clinic": clinic()}),
        "receptionist" => json!({
            "receptionist": {"receptionist_id": "5", "receptionist_name": "Alan Turing",
                             "receptionist_email": "alan@clinic.example",
                             "receptionist_contact_number": "+44 20 7946 0003"},
            "clinic": clinic(),
        }),
        "clinic" => json!({"clinic": clinic()}),
        "prescription" => json!({
            "prescription": {"prescription_id": "501", "encounter_id": "88",
                             "prescription_name": "Amoxicillin 500 mg",
                             "prescription_frequency": "3 times a day",
                             "prescription_duration": "7 days",
                             "prescription_instruction": "After meals"},
            "patient": patient(), "doctor": doctor(), "clinic": clinic(),
        }),
        "service" => json!({
            "service": {"service_id": "14", "service_name": "General consultation",
                        "service_price": "45.00", "service_category": "consultation",
                        "service_status": 1},
            "doctor": doctor(), "clinic": clinic(),
        }),
        "bill" => json!({
            "bill": {"bill_id": "2201", "bill_title": "Consultation", "total_amount": "45.00",
                     "discount": "0.00", "actual_amount": "45.00", "payment_status": "paid"},
            "patient": patient(), "clinic": clinic(), "appointment": appointment(1),
        }),
        _ => json!({"custom": {"reference": "LAB-2026-001", "note": "Results are ready"},
                    "patient": patient(), "clinic": clinic()}),
    }
}

/// A sample event of this (canonical) type.
pub fn sample_event(event_type: &str) -> Event {
    let at = Utc
        .with_ymd_and_hms(2026, 11, 27, 9, 0, 0)
        .single()
        .unwrap_or_else(Utc::now);
    Event {
        id: "evt_sample_0001".into(),
        event_type: event_type.to_owned(),
        clinic_id: Some("12".into()),
        occurred_at: at,
        received_at: at,
        data: sample_data(event_type),
    }
}

/// Every catalogue type an event pattern covers, and `custom.sample` for custom ones.
pub fn types_matching(pattern: &crate::webhook::Pattern) -> Vec<String> {
    let mut out: Vec<String> = CATALOGUE
        .iter()
        .map(|i| i.name)
        .filter(|t| pattern.matches(t))
        .map(str::to_owned)
        .collect();
    if pattern.matches("custom.sample") {
        out.push("custom.sample".into());
    }
    out
}
