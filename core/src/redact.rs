//! Errors and texts that are stored or logged never hold a credential: an error is told by
//! its root cause (never reqwest's "for url (…)", which carries a query-string key), and any
//! credential value a webhook holds is cut out of what remains.

use crate::webhook::Webhook;

/// The innermost cause of an error, which names what went wrong (`Connection refused`,
/// `failed to lookup address information`, `invalid peer certificate`), without the URL.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = e;
    while let Some(next) = deepest.source() {
        deepest = next;
    }
    deepest.to_string()
}

/// What a failed request ran into, as `kind: root cause`, with no URL in it.
pub fn describe(kind: &str, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timeout: no answer within the delivery timeout".into();
    }
    let cause = root_cause(e);
    // reqwest's own top-level message names the URL; a root cause that is reqwest's own
    // (no deeper source) is rebuilt without it.
    let cause = if cause.contains("for url (") {
        reqwest_without_url(e)
    } else {
        cause
    };
    format!("{kind}: {cause}")
}

fn reqwest_without_url(e: &reqwest::Error) -> String {
    let text = e.to_string();
    match text.find(" for url (") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The credential values `webhook` holds, longest first (so a value that contains another
/// is cut whole): its auth credential, its signing secrets, and its credential headers.
pub fn credentials(webhook: &Webhook) -> Vec<String> {
    let mut values: Vec<String> = Vec::new();
    if let Some(c) = webhook.auth.credential() {
        values.push(c.to_owned());
    }
    if let crate::webhook::Auth::Basic { username, password } = &webhook.auth {
        use base64::Engine;
        values.push(
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")),
        );
    }
    values.push(webhook.secret.clone());
    if let Some(raw) = webhook.secret.strip_prefix("whsec_") {
        values.push(raw.to_owned());
    }
    values.extend(webhook.previous_secrets.iter().map(|p| p.secret.clone()));
    for (name, value) in &webhook.headers {
        if crate::webhook::is_secret_header(name) {
            values.push(value.clone());
        }
    }
    // Short values would cut innocent text; a credential that short is not one worth hiding
    // behind a false sense of safety, and every real one is longer.
    values.retain(|v| v.len() >= 4);
    for v in values.clone() {
        let encoded: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
        if encoded != v {
            values.push(encoded);
        }
    }
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    values
}

/// `text` with every credential of `webhook` replaced by `…`.
pub fn redact(webhook: &Webhook, text: &str) -> String {
    let mut out = text.to_owned();
    for value in credentials(webhook) {
        if out.contains(&value) {
            out = out.replace(&value, "…");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_form_is_cut() {
        let mut w: Webhook = serde_json::from_value(serde_json::json!({
            "id": "wh_1", "name": "n", "url": "https://a.example/x", "method": "POST",
            "events": ["*"], "clinic_ids": [], "enabled": true,
            "headers": {"X-Api-Key": "hdr-key-123456", "X-Clinic": "12"},
            "auth": {"type": "api_key", "name": "key", "value": "k/y+secret value", "in": "query"},
            "secret": "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap();
        let text = "for url (https://a.example/x?key=k%2Fy%2Bsecret+value) k/y+secret value \
                    hdr-key-123456 c2VjcmV0LXNlY3JldC1zZWNyZXQ= X-Clinic 12";
        let out = redact(&w, text);
        assert!(
            !out.contains("secret value") && !out.contains("k%2Fy"),
            "{out}"
        );
        assert!(
            !out.contains("hdr-key") && !out.contains("c2VjcmV0"),
            "{out}"
        );
        assert!(out.contains("X-Clinic 12"), "innocent text stays: {out}");
        w.auth = crate::webhook::Auth::Basic {
            username: "u".into(),
            password: "pa55word!".into(),
        };
        assert_eq!(redact(&w, "Basic dTpwYTU1d29yZCE="), "Basic …");
    }
}
