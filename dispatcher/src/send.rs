//! One signed HTTP request to one receiver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use kivihook_core::signing::SigningKey;
use kivihook_core::webhook::{Method, Webhook};

/// How much of a response body is read (and kept for the record).
const RESPONSE_EXCERPT: usize = 4096;

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// What went wrong, in one line, for dead letters and logs.
    pub fn describe(&self) -> String {
        match (&self.error, self.status) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) => format!("the receiver answered HTTP {s}"),
            (None, None) => "no response".into(),
        }
    }
}

/// The outbound HTTP client: no redirects, a per-request timeout, KiviHook's User-Agent.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(kivihook_core::user_agent())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The `webhook-id` of an event for one webhook: the same on every attempt and every
/// redelivery, so receivers can de-duplicate on it.
pub fn message_id(event_id: &str, webhook_id: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b1f_1c0e_9d3a_4f6e_8a1b_2c3d_4e5f_6a7b);
    let name = format!("{event_id}\u{0}{webhook_id}");
    format!(
        "msg_{}",
        uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).simple()
    )
}

fn method(m: Method) -> reqwest::Method {
    match m {
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Get => reqwest::Method::GET,
        Method::Delete => reqwest::Method::DELETE,
    }
}

/// Send `body` (the envelope) to `webhook`, signed.
pub async fn send(
    client: &reqwest::Client,
    webhook: &Arc<Webhook>,
    msg_id: &str,
    body: &bytes::Bytes,
) -> Attempt {
    let started = Instant::now();
    let key = match SigningKey::parse(&webhook.secret) {
        Ok(k) => k,
        Err(e) => {
            return Attempt {
                status: None,
                error: Some(format!("the webhook's signing secret is unusable: {e}")),
                duration: started.elapsed(),
            }
        }
    };
    let timestamp = Utc::now().timestamp();
    let mut headers = HeaderMap::with_capacity(webhook.headers.len() + 4);
    for (name, value) in &webhook.headers {
        // Both were checked when the webhook was saved; skip rather than fail if not.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let signed = [
        ("webhook-id", msg_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", key.sign(msg_id, timestamp, body)),
    ];
    for (name, value) in signed {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let result = client
        .request(method(webhook.method), &webhook.url)
        .headers(headers)
        .body(body.clone())
        .send()
        .await;
    match result {
        Ok(mut response) => {
            let status = response.status().as_u16();
            // Drain a little of the body so the connection can be reused; never all of it.
            let mut read = 0usize;
            let mut error = None;
            while read < RESPONSE_EXCERPT {
                match response.chunk().await {
                    Ok(Some(chunk)) => read += chunk.len(),
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(format!("reading the response failed: {e}"));
                        break;
                    }
                }
            }
            Attempt {
                status: Some(status),
                error: error.filter(|_| !(200..300).contains(&status)),
                duration: started.elapsed(),
            }
        }
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            Attempt {
                status: None,
                error: Some(format!("{kind}: {e}")),
                duration: started.elapsed(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_per_event_and_webhook() {
        let a = message_id("evt_1", "wh_1");
        assert_eq!(a, message_id("evt_1", "wh_1"));
        assert_ne!(a, message_id("evt_1", "wh_2"));
        assert_ne!(a, message_id("evt_2", "wh_1"));
        assert!(a.starts_with("msg_"));
    }
}
