//! The one string an event leaves in Redis for the dedup window, and how it is spelled.
//!
//! Every accepted event keeps a marker for the dedup window (24 h by default). At tens of
//! thousands of events a second those markers are most of Redis, so the marker is the whole
//! of an event's state once it is delivered: what ingest accepted, and the webhooks the
//! event reached. A target that needed a retry, or went dead, keeps its state in the event's
//! targets hash instead, which is rare and which the retry schedule needs anyway.
//!
//! Spelling (all of it fits Redis's 44-byte embedded strings for a typical event):
//! - `p` while ingest publishes the event (`r` once released, when its publish failed),
//!   then `a<received ms, base 36>|<clinic>|<type>`,
//!   with `|`, `%` and control characters in the clinic and the type percent-encoded and a
//!   catalogue type written as `#<index>`;
//! - then, appended by dispatchers, one `|~<webhook>[@<seconds after received, base 36>]`
//!   per webhook delivered, the webhook id `wh_<32 hex>` written as 22 characters of
//!   base64url. Only ids of that form are folded; others keep a targets-hash entry.
//!
//! Markers written before this spelling (JSON of `EventInfo`) are still read.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};

use super::EventInfo;
use crate::event::CATALOGUE;

/// The marker's first character while the event is being published.
pub const IN_PROGRESS: &str = "p";

/// A released claim (its publish failed): free to claim again, with any deliveries kept.
pub const RELEASED: &str = "r";

/// What the claim script answers when its claim took over a released or expired one.
pub const RECLAIMED: &str = "!";

/// The marker a request claims an id with: `p!<token>!<expiry>`, the token naming the
/// request, so that its release removes its own claim and nobody else's (and a claim that
/// lands after the request gave up is removed by the release that follows it). A bucket's
/// fields have no time to live of their own, so the claim carries its expiry (ms since the
/// epoch, base 36): past it, a claim is free to take again (the request that made it
/// crashed before it confirmed or released).
pub fn claim(token: &str, expires: DateTime<Utc>) -> String {
    format!(
        "{}{}",
        claim_prefix(token),
        base36(expires.timestamp_millis().max(0) as u64)
    )
}

/// What every claim of `token` starts with, whatever its expiry.
pub fn claim_prefix(token: &str) -> String {
    format!("{IN_PROGRESS}!{token}!")
}

/// A marker, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// What ingest accepted; `None` while it is still publishing (or for a marker that a
    /// dispatcher wrote to before ingest finished).
    pub info: Option<EventInfo>,
    /// Webhooks the event was delivered to, with when (when known).
    pub delivered: Vec<(String, Option<DateTime<Utc>>)>,
}

/// The accepted marker of an event: what `GET /v1/events/{id}` shows about it.
pub fn accepted(info: &EventInfo) -> String {
    let mut out = String::with_capacity(40);
    out.push('a');
    out.push_str(&base36(info.received_at.timestamp_millis().max(0) as u64));
    out.push('|');
    if let Some(c) = &info.clinic_id {
        escape_into(&mut out, c);
    }
    out.push('|');
    match CATALOGUE.iter().position(|t| t.name == info.event_type) {
        Some(i) => {
            out.push('#');
            out.push_str(&i.to_string());
        }
        None => escape_into(&mut out, &info.event_type),
    }
    out
}

/// What a dispatcher appends once it delivered the event to `webhook_id`; `None` when the
/// id is not of the form that folds (the caller keeps a targets-hash entry instead).
pub fn delivered_entry(
    webhook_id: &str,
    received_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> Option<String> {
    let hex = webhook_id.strip_prefix("wh_")?;
    if hex.len() != 32 {
        return None;
    }
    let mut raw = [0u8; 16];
    for (i, byte) in raw.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    // Only lowercase hex round-trips.
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = String::with_capacity(28);
    out.push_str("|~");
    out.push_str(&URL_SAFE_NO_PAD.encode(raw));
    if let Some(received) = received_at {
        let secs = (at - received).num_seconds().max(0) as u64;
        out.push('@');
        out.push_str(&base36(secs));
    }
    Some(out)
}

/// Read a marker; `None` for something that is not one.
pub fn parse(raw: &str) -> Option<Marker> {
    if raw.starts_with('{') {
        return parse_json(raw);
    }
    let (head, entries) = match raw.find("|~") {
        Some(i) => raw.split_at(i),
        None => (raw, ""),
    };
    let info = if head == IN_PROGRESS || head == RELEASED || head.starts_with("p!") {
        None
    } else {
        let rest = head.strip_prefix('a')?;
        let mut parts = rest.splitn(3, '|');
        let ms = u64::from_str_radix(parts.next()?, 36).ok()?;
        let clinic = unescape(parts.next()?)?;
        let type_field = parts.next()?;
        let event_type = match type_field.strip_prefix('#') {
            Some(i) => CATALOGUE.get(i.parse::<usize>().ok()?)?.name.to_owned(),
            None => unescape(type_field)?,
        };
        Some(EventInfo {
            id: String::new(),
            event_type,
            clinic_id: (!clinic.is_empty()).then_some(clinic),
            received_at: Utc.timestamp_millis_opt(ms as i64).single()?,
        })
    };
    let received = info.as_ref().map(|i| i.received_at);
    Some(Marker {
        delivered: parse_entries(entries, received),
        info,
    })
}

/// An old JSON marker, perhaps with entries appended after it.
fn parse_json(raw: &str) -> Option<Marker> {
    let mut stream = serde_json::Deserializer::from_str(raw).into_iter::<EventInfo>();
    let info = stream.next()?.ok()?;
    let rest = &raw[stream.byte_offset()..];
    let received = info.received_at;
    Some(Marker {
        delivered: parse_entries(rest, Some(received)),
        info: Some(info),
    })
}

fn parse_entries(
    entries: &str,
    received: Option<DateTime<Utc>>,
) -> Vec<(String, Option<DateTime<Utc>>)> {
    entries
        .split("|~")
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let (id, after) = match e.split_once('@') {
                Some((id, s)) => (id, u64::from_str_radix(s, 36).ok()),
                None => (e, None),
            };
            let raw = URL_SAFE_NO_PAD.decode(id).ok()?;
            let mut hex = String::with_capacity(35);
            hex.push_str("wh_");
            for b in raw {
                hex.push_str(&format!("{b:02x}"));
            }
            let at = match (received, after) {
                (Some(r), Some(s)) => Some(r + chrono::Duration::seconds(s as i64)),
                _ => None,
            };
            Some((hex, at))
        })
        .collect()
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::with_capacity(13);
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        if c == '|' || c == '%' || c == '#' || c == '~' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(event_type: &str, clinic: Option<&str>) -> EventInfo {
        EventInfo {
            id: String::new(),
            event_type: event_type.into(),
            clinic_id: clinic.map(Into::into),
            received_at: Utc.timestamp_millis_opt(1_764_234_000_123).unwrap(),
        }
    }

    #[test]
    fn a_delivered_event_fits_an_embedded_string() {
        let i = info("appointment.booked", Some("12"));
        let at = i.received_at + chrono::Duration::milliseconds(1500);
        let m = accepted(&i)
            + &delivered_entry(
                "wh_0b7c8a3e6a1f4f589a5e2f7d3c1b9e10",
                Some(i.received_at),
                at,
            )
            .unwrap();
        assert!(m.len() <= 44, "{m} is {} bytes", m.len());
        let back = parse(&m).unwrap();
        assert_eq!(back.info, Some(i.clone()));
        assert_eq!(
            back.delivered,
            vec![(
                "wh_0b7c8a3e6a1f4f589a5e2f7d3c1b9e10".to_owned(),
                Some(i.received_at + chrono::Duration::seconds(1))
            )]
        );
    }

    #[test]
    fn odd_types_and_clinics_round_trip() {
        for (t, c) in [
            ("custom.a|b%c#d~e", Some("x|y")),
            ("custom.ünïcode", None),
            ("bill.paid", Some("")),
        ] {
            let i = info(t, c);
            let back = parse(&accepted(&i)).unwrap().info.unwrap();
            assert_eq!(back.event_type, t);
            assert_eq!(back.clinic_id.as_deref(), c.filter(|c| !c.is_empty()));
        }
    }

    #[test]
    fn entries_appended_while_in_progress_are_kept() {
        let e1 = delivered_entry("wh_00000000000000000000000000000001", None, Utc::now()).unwrap();
        let m = parse(&format!("p{e1}")).unwrap();
        assert_eq!(m.info, None);
        assert_eq!(m.delivered[0].0, "wh_00000000000000000000000000000001");
        assert_eq!(m.delivered[0].1, None);
    }

    #[test]
    fn only_canonical_webhook_ids_fold() {
        assert!(delivered_entry("wh_abc", None, Utc::now()).is_none());
        assert!(delivered_entry("wh_0B7C8A3E6A1F4F589A5E2F7D3C1B9E10", None, Utc::now()).is_none());
        assert!(delivered_entry("hook-1", None, Utc::now()).is_none());
        assert!(delivered_entry("wh_0b7c8a3e6a1f4f589a5e2f7d3c1b9e1g", None, Utc::now()).is_none());
    }

    #[test]
    fn old_json_markers_are_read() {
        let i = EventInfo {
            id: "evt_1".into(),
            ..info("appointment.booked", Some("12"))
        };
        let json = serde_json::to_string(&i).unwrap();
        assert_eq!(parse(&json).unwrap().info, Some(i));
        assert!(parse("garbage").is_none());
    }
}
