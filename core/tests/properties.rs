//! Property tests: whatever a receiver answers and whatever an event carries, an attempt
//! ends with a recorded result, never a panic. `.ci/run` runs them with the case counts
//! below (about a second in all).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use kivihook_core::http_client::{self, Clients, HEADER_EXCERPT, RESPONSE_EXCERPT};
use kivihook_core::outbound::Guard;
use kivihook_core::webhook::Webhook;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn webhook(url: &str, extra: Value) -> Webhook {
    let mut w = json!({
        "id": "wh_prop", "name": "prop", "url": url, "method": "POST",
        "events": ["*"], "clinic_ids": [], "headers": {}, "enabled": true,
        "secret": SECRET,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
    });
    if let (Some(w), Some(extra)) = (w.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            w.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(w).expect("a webhook")
}

fn clients() -> Clients {
    let guard = Guard {
        allow: Guard::parse_allow("127.0.0.0/8").unwrap(),
        ..Guard::default()
    };
    Clients::new(Duration::from_secs(2), guard, 256 * 1024).expect("a client")
}

/// A receiver on a raw socket answering whatever the current case put in `reply`.
async fn raw_receiver(reply: Arc<Mutex<Vec<u8>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let reply = reply.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 8192];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket.write_all(&reply).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

/// Text with what receivers get wrong: multi-byte characters, control bytes, long runs.
fn header_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..700),
        (0usize..600, "[éü€😀ab]{0,40}")
            .prop_map(|(n, tail)| [vec![b'a'; n], tail.into_bytes()].concat()),
    ]
}

fn response() -> impl Strategy<Value = Vec<u8>> {
    let status_line = prop_oneof![
        (100u16..1000).prop_map(|s| format!("HTTP/1.1 {s} X\r\n").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    let headers = prop::collection::vec(("[A-Za-z-]{1,20}", header_text()), 0..4);
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (0usize..6000, "[é😀]{0,4}").prop_map(|(n, t)| [vec![b'x'; n], t.into_bytes()].concat()),
    ];
    (status_line, headers, body, any::<bool>()).prop_map(|(line, headers, body, length)| {
        let mut out = line;
        for (name, value) in headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&value);
            out.extend_from_slice(b"\r\n");
        }
        if length {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(&body);
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any bytes as a status line, headers and body: the attempt ends with a result whose
    /// kept excerpts are within their bounds.
    #[test]
    fn any_answer_ends_in_a_bounded_result(reply in response()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let slot = Arc::new(Mutex::new(reply));
            let url = raw_receiver(slot).await;
            let w = webhook(&url, json!({}));
            let envelope = Bytes::from_static(br#"{"id":"evt_1","type":"appointment.booked","data":{}}"#);
            let attempt = http_client::send(&clients(), &w, "msg_1", &envelope).await;
            prop_assert!(attempt.status.is_some() || attempt.error.is_some());
            prop_assert!(attempt.response_body.len() <= RESPONSE_EXCERPT);
            for value in attempt.response_headers.values() {
                prop_assert!(value.len() <= HEADER_EXCERPT);
            }
            Ok(())
        })?;
    }
}

/// Arbitrary JSON, as event data.
fn data() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,30}".prop_map(Value::from),
        prop_oneof![
            Just(".."),
            Just("."),
            Just("%2e%2E"),
            Just(""),
            Just("a/b"),
            Just("1}, \"x\": [")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any event data through every kind of template (URL path and query, headers, JSON
    /// body, form body): a request is prepared or refused with a named part; never a panic.
    #[test]
    fn any_event_data_renders_a_sendable_request_or_a_clear_error(data in data(), key in "[a-z_]{1,12}") {
        let mut data = data;
        if let Some(map) = data.as_object_mut() {
            map.insert("patient_id".into(), map.get(&key).cloned().unwrap_or(Value::Null));
        }
        let envelope = serde_json::to_vec(&json!({
            "id": "evt_1", "type": "appointment.booked", "data": data,
        })).unwrap();
        let envelope = Bytes::from(envelope);
        let kinds = [
            json!({"url": "https://example.com/clinics/{{clinic_id}}/patients/{{patient_id}}/x",
                   "query": {"q": "{{ patient_id }}"},
                   "headers": {"X-Patient": "{{ patient_id }}"}}),
            json!({"body": {"type": "json", "template": format!("{{\"v\": \"{{{{ {key} }}}}\", \"d\": \"{{{{ data }}}}\"}}")}}),
            json!({"body": {"type": "form", "fields": {"v": format!("{{{{ {key} }}}}"), "all": "{{ data }}"}}}),
        ];
        for extra in kinds {
            let w = webhook("https://example.com/hook", extra);
            match http_client::prepare(&w, &envelope, 256 * 1024) {
                Ok(p) => {
                    // What is sent is what the templates promised.
                    let url = url::Url::parse(&p.url).expect("a URL");
                    prop_assert_eq!(url.host_str(), Some("example.com"));
                    if p.url.contains("/clinics/") {
                        prop_assert!(url.path().starts_with("/clinics/"), "{}", url);
                        prop_assert!(url.path().ends_with("/x"), "{}", url);
                        prop_assert_eq!(url.path_segments().unwrap().count(), 5, "{}", url);
                    }
                    for value in p.headers.values() {
                        prop_assert!(reqwest::header::HeaderValue::from_str(value).is_ok());
                    }
                    if p.content_type == "application/json" {
                        prop_assert!(serde_json::from_slice::<Value>(&p.body).is_ok());
                    }
                }
                Err(e) => {
                    prop_assert!(
                        e.part == "url" || e.part.starts_with("headers.") || e.part.starts_with("body"),
                        "{}", e
                    );
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }
}
