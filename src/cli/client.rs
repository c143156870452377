//! The HTTP client the CLI commands share: where the API is, which token to send, and how
//! its answers and failures become values or one-line errors.
//!
//! The client reads only the settings it needs (the API address and the tokens), never the
//! servers' configuration as a whole: it must run where there is no `KIVIHOOK_SECRET_KEY`,
//! RabbitMQ or Redis, such as an operator's laptop or a CI job.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use kivihook_core::config::Layers;

use super::error::CliError;

/// The listen address ingest uses when `KIVIHOOK_BIND` is not set.
const DEFAULT_BIND: &str = "0.0.0.0:8080";

/// Which token a command authenticates with; it decides the hint a 401 gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Management: the admin token.
    Admin,
    /// Event intake: the ingest token if one is set, else the admin token (which may also
    /// send events).
    Ingest,
}

/// The API's address, from `--api-url` / `KIVIHOOK_API_URL`, else from the listen address
/// of an ingest on this host (`KIVIHOOK_BIND`), so that the CLI works unconfigured next to
/// ingest (`kubectl exec`, `docker compose exec`).
pub fn api_url(layers: &Layers) -> Result<Url, CliError> {
    if let Some((source, raw)) = layers.get("api_url") {
        let url = Url::parse(&raw)
            .map_err(|e| CliError::Usage(format!("{source}: is not a URL ({e}): {raw:?}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(CliError::Usage(format!(
                "{source}: must be an http:// or https:// URL like http://127.0.0.1:8080 (got {raw:?})"
            )));
        }
        return Ok(url);
    }
    let (source, bind) = layers
        .get("bind")
        .unwrap_or_else(|| ("the default listen address".into(), DEFAULT_BIND.into()));
    let addr: std::net::SocketAddr = bind.parse().map_err(|_| {
        CliError::Usage(format!(
            "{source}: must be an address like 0.0.0.0:8080 (got {bind:?}); or set KIVIHOOK_API_URL"
        ))
    })?;
    // A server listening on every address is reached on loopback.
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Url::parse(&format!("http://{host}:{}/", addr.port()))
        .map_err(|e| CliError::Usage(format!("{source}: {bind:?} gives no API URL ({e})")))
}

/// The token for a role, and the settings that give it (named in errors).
pub fn token(layers: &Layers, role: Role) -> Result<(String, &'static str), CliError> {
    let admin = layers.get("admin_token");
    let chosen = match role {
        Role::Ingest => layers
            .get("ingest_token")
            .map(|t| (t, "KIVIHOOK_INGEST_TOKEN or --ingest-token"))
            .or_else(|| admin.map(|t| (t, "KIVIHOOK_ADMIN_TOKEN or --admin-token"))),
        Role::Admin => admin.map(|t| (t, "KIVIHOOK_ADMIN_TOKEN or --admin-token")),
    };
    let Some(((source, token), names)) = chosen else {
        return Err(CliError::Usage(match role {
            Role::Admin => "no admin token: set KIVIHOOK_ADMIN_TOKEN or pass --admin-token".into(),
            Role::Ingest => "no token: set KIVIHOOK_INGEST_TOKEN (or KIVIHOOK_ADMIN_TOKEN), or pass --ingest-token".into(),
        }));
    };
    // A header cannot carry anything else; better said here than as an HTTP library error.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CliError::Usage(format!(
            "{source}: a token is printable characters without spaces"
        )));
    }
    Ok((token, names))
}

/// An authenticated client of one KiviHook API.
pub struct Api {
    http: reqwest::Client,
    base: Url,
    token: String,
    /// The settings that hold the token, named when the API refuses it.
    token_names: &'static str,
}

impl Api {
    pub fn new(base: Url, token: String, token_names: &'static str) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .user_agent(format!("kivihook-cli/{}", kivihook_core::VERSION))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| CliError::Io(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            token,
            token_names,
        })
    }

    /// The URL of a path given as segments, each percent-encoded (ids come from users).
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value, CliError> {
        self.send(Method::GET, self.url(segments, query), None)
            .await
            .map(|(_, v)| v)
    }

    /// POST; the status tells apart answers such as `accepted` (202) and `duplicate` (200).
    pub async fn post(
        &self,
        segments: &[&str],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), CliError> {
        self.post_with(segments, &[], body).await
    }

    /// POST with query parameters.
    pub async fn post_with(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), CliError> {
        self.send(Method::POST, self.url(segments, query), body)
            .await
    }

    pub async fn patch(&self, segments: &[&str], body: &Value) -> Result<Value, CliError> {
        self.patch_with(segments, &[], body).await
    }

    /// PATCH with query parameters.
    pub async fn patch_with(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        body: &Value,
    ) -> Result<Value, CliError> {
        self.send(Method::PATCH, self.url(segments, query), Some(body))
            .await
            .map(|(_, v)| v)
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<(), CliError> {
        self.send(Method::DELETE, self.url(segments, &[]), None)
            .await
            .map(|_| ())
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), CliError> {
        let mut request = self
            .http
            .request(method, url.clone())
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.failed(&url, &e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CliError::Io(format!("reading the answer of {url}: {}", cause(&e))))?;
        if status.is_success() {
            let value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| {
                    CliError::Io(format!(
                        "{url} answered {status} with a body that is not JSON ({e}); is KIVIHOOK_API_URL the KiviHook API?"
                    ))
                })?
            };
            return Ok((status, value));
        }
        Err(self.refused(status, &bytes))
    }

    /// An error answer: the API's `{"error": {code, message, field}}`, or whatever a proxy
    /// in front of it said.
    fn refused(&self, status: StatusCode, body: &[u8]) -> CliError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let error = parsed
            .as_ref()
            .map(|v| &v["error"])
            .filter(|e| e.is_object());
        let (code, message, field) = match error {
            Some(e) => (
                e["code"].as_str().unwrap_or("error").to_owned(),
                e["message"].as_str().unwrap_or("").to_owned(),
                e["field"].as_str().map(str::to_owned),
            ),
            None => {
                let text = String::from_utf8_lossy(body);
                let excerpt: String = text.trim().chars().take(200).collect();
                (
                    status
                        .canonical_reason()
                        .unwrap_or("error")
                        .to_ascii_lowercase()
                        .replace(' ', "_"),
                    if excerpt.is_empty() {
                        "(no body)".to_owned()
                    } else {
                        excerpt
                    },
                    None,
                )
            }
        };
        let hint = match status {
            StatusCode::UNAUTHORIZED => format!(" (check {})", self.token_names),
            StatusCode::FORBIDDEN => {
                " (this token may not do this; management needs the admin token)".to_owned()
            }
            _ => String::new(),
        };
        CliError::Api {
            status: status.as_u16(),
            code,
            field,
            message,
            hint,
        }
    }

    /// A request that got no answer.
    fn failed(&self, url: &Url, e: &reqwest::Error) -> CliError {
        if e.is_connect() || e.is_timeout() {
            let reason = if e.is_timeout() {
                "timed out".to_owned()
            } else {
                cause(e)
            };
            return CliError::Unreachable {
                url: self.base.to_string(),
                reason,
            };
        }
        CliError::Io(format!("request to {url} failed: {}", cause(e)))
    }
}

/// The innermost cause of an error: "Connection refused (os error 111)" rather than
/// "error sending request".
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(pairs: &[(&str, &str)]) -> Layers {
        let flags = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Layers::from_sources(Default::default(), Default::default(), flags)
    }

    #[test]
    fn the_api_url_defaults_to_the_local_listen_address() {
        let url = |pairs| api_url(&layers(pairs)).unwrap().to_string();
        assert_eq!(url(&[("bind", "0.0.0.0:9000")]), "http://127.0.0.1:9000/");
        assert_eq!(url(&[("bind", "[::]:9000")]), "http://[::1]:9000/");
        assert_eq!(url(&[("bind", "10.0.0.5:80")]), "http://10.0.0.5/");
        assert_eq!(
            url(&[
                ("bind", "0.0.0.0:9000"),
                ("api_url", "https://hooks.example/")
            ]),
            "https://hooks.example/"
        );
        assert!(api_url(&layers(&[("api_url", "ftp://x")])).is_err());
        assert!(api_url(&layers(&[("bind", "nowhere")])).is_err());
    }

    #[test]
    fn paths_are_built_from_encoded_segments_under_the_base() {
        let api = Api::new(
            Url::parse("http://h:1/prefix/").unwrap(),
            "t".into(),
            "KIVIHOOK_ADMIN_TOKEN",
        )
        .unwrap();
        assert_eq!(
            api.url(&["v1", "webhooks", "a/b?c"], &[("x", "1 2")])
                .to_string(),
            "http://h:1/prefix/v1/webhooks/a%2Fb%3Fc?x=1+2"
        );
    }
}
