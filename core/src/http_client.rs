//! The outbound HTTP client: one signed request to one receiver, built from a webhook and an
//! event envelope, through the outbound guard. The dispatcher sends every delivery with it;
//! ingest sends test deliveries and previews requests with it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::Utc;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER,
};

use crate::delivery::AttemptRecord;
use crate::outbound::{Guard, GuardedResolver, Refused};
use crate::redact;
use crate::retry::parse_retry_after;
use crate::signing::SigningKey;
use crate::template::{self, Escape};
use crate::webhook::{Auth, Body, KeyLocation, Method, Webhook};
use bytes::Bytes;

/// How much of a response body is read and kept.
pub const RESPONSE_EXCERPT: usize = 4096;
/// How much of each response header value is kept.
pub const HEADER_EXCERPT: usize = 512;
const MAX_RESPONSE_HEADERS: usize = 50;

/// The longest prefix of `s` that is at most `max` bytes and ends on a character boundary:
/// a receiver's bytes are cut here, never in the middle of a character (which panics).
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// At most `max` bytes of what a receiver sent, as text (invalid UTF-8 replaced), cut at a
/// character boundary.
pub fn excerpt(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    cut(&text, max).to_owned()
}

/// Why an attempt failed before a status arrived, or that the status was not 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Timeout,
    Connect,
    Dns,
    Tls,
    Request,
    HttpStatus,
    Config,
    /// Refused by the outbound guard (a private address, or plain http where https is required).
    Blocked,
    /// KiviHook itself failed while making the attempt (a bug, caught): retried on schedule.
    Internal,
    /// The webhook's templates could not make a request for this event (see `RenderError`):
    /// nothing was sent, and trying again cannot help.
    Render,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Dns => "dns",
            Self::Tls => "tls",
            Self::Request => "request",
            Self::HttpStatus => "http_status",
            Self::Config => "config",
            Self::Blocked => "blocked",
            Self::Internal => "internal",
            Self::Render => "render",
        }
    }
}

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status: Option<u16>,
    pub response_headers: BTreeMap<String, String>,
    pub response_body: String,
    pub error_kind: Option<ErrorKind>,
    pub error: Option<String>,
    /// What a 429 or 503 asked for.
    pub retry_after: Option<Duration>,
    pub duration: Duration,
    /// The URL as sent (without a query credential), for the attempt log.
    pub url: String,
    /// The body as sent where the webhook's templates rendered it; empty where the envelope
    /// went as it is (the attempt log keeps the envelope itself).
    pub request_body: Bytes,
    /// Placeholders that rendered empty.
    pub warnings: Vec<String>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// What went wrong, in one line, for dead letters and logs.
    pub fn describe(&self) -> String {
        match (&self.error, self.status) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) if (200..300).contains(&s) => format!("HTTP {s}"),
            (None, Some(s)) => format!("the receiver answered HTTP {s}"),
            (None, None) => "no response".into(),
        }
    }

    /// An attempt that failed before any status arrived.
    pub fn failed(kind: ErrorKind, error: String, started: Instant) -> Self {
        Self {
            status: None,
            response_headers: BTreeMap::new(),
            response_body: String::new(),
            error_kind: Some(kind),
            error: Some(error),
            retry_after: None,
            duration: started.elapsed(),
            url: String::new(),
            request_body: Bytes::new(),
            warnings: Vec::new(),
        }
    }

    fn with_request(mut self, p: &Prepared) -> Self {
        self.url = p.url.to_string();
        if p.body_rendered {
            self.request_body = p.body.clone();
        }
        self.warnings = p.warnings.clone();
        self
    }
}

/// The outbound HTTP client: no redirects, a per-request timeout, KiviHook's User-Agent.
/// Request bodies longer than this are not kept whole in the attempt log.
const KEPT_REQUEST_BODY: usize = 64 * 1024;

/// Which delivery an attempt belongs to.
pub struct AttemptOf<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub message_id: &'a str,
    pub attempt: u32,
    pub envelope: &'a Bytes,
}

impl Attempt {
    /// The attempt-log entry of this attempt (`outcome`: what followed it).
    pub fn record(
        &self,
        id: String,
        webhook: &Webhook,
        of: AttemptOf<'_>,
        outcome: &str,
        test: bool,
    ) -> AttemptRecord {
        self.clone().into_record(id, webhook, of, outcome, test)
    }

    /// `record`, moving the response into the record instead of copying it.
    pub fn into_record(
        self,
        id: String,
        webhook: &Webhook,
        of: AttemptOf<'_>,
        outcome: &str,
        test: bool,
    ) -> AttemptRecord {
        let request_body = if of.envelope.len() > KEPT_REQUEST_BODY {
            String::new()
        } else {
            // The envelope is JSON, so UTF-8: checked whole, then copied (a lossy read walks
            // it in chunks).
            match std::str::from_utf8(of.envelope) {
                Ok(s) => s.to_owned(),
                Err(_) => String::from_utf8_lossy(of.envelope).into_owned(),
            }
        };
        let rendered_body = (!self.request_body.is_empty() && self.request_body != *of.envelope)
            .then(|| excerpt(&self.request_body, RESPONSE_EXCERPT));
        AttemptRecord {
            id,
            webhook_id: webhook.id.clone(),
            event_id: of.event_id.to_owned(),
            event_type: of.event_type.to_owned(),
            message_id: of.message_id.to_owned(),
            attempt: of.attempt,
            at: Utc::now(),
            method: webhook.method.as_str().to_owned(),
            url: match (self.url.is_empty(), webhook.url_secret) {
                (true, _) => webhook.display_url(),
                (false, true) => crate::webhook::mask_url(&self.url),
                (false, false) => self.url,
            },
            request_body,
            rendered_body,
            status: self.status,
            response_headers: self.response_headers,
            response_body: self.response_body,
            duration_ms: self.duration.as_millis() as u64,
            error_kind: self.error_kind.map(|k| k.as_str().to_owned()),
            error: self.error,
            outcome: outcome.to_owned(),
            test,
            warnings: self.warnings,
        }
    }
}

/// The outbound HTTP client: every name it resolves goes through the outbound guard, and
/// every redirect `send` follows (up to five, for webhooks that opt in) is checked by it.
#[derive(Clone)]
pub struct Clients {
    /// Follows no redirects itself: `send` follows them hop by hop for webhooks that ask.
    pub client: reqwest::Client,
    pub guard: Arc<Guard>,
    /// The largest body templates may render (`KIVIHOOK_MAX_BODY`).
    pub max_body: usize,
    /// Webhook URLs already parsed: one is the same on every request (unless templates make
    /// it, and those are not kept), and parsing it (its host through IDNA mapping) costs more
    /// than looking it up.
    parsed: Arc<std::sync::Mutex<std::collections::HashMap<String, url::Url>>>,
}

/// URLs kept parsed, one per webhook a dispatcher sends to; past this the cache starts again.
const PARSED_URLS_MAX: usize = 4096;

/// The outbound client could not be built (TLS roots, the proxy setting): the role stops at
/// start rather than deliver through a client without the guard or the timeouts.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the outbound HTTP client: {0}")]
pub struct ClientError(String);

impl Clients {
    pub fn new(timeout: Duration, guard: Guard, max_body: usize) -> Result<Self, ClientError> {
        let guard = Arc::new(guard);
        // The environment's proxy settings are ignored (see `Guard::proxy`); only the
        // configured proxy, if any, is used.
        let proxy = match &guard.proxy {
            Some(p) => Some(reqwest::Proxy::all(p.as_str()).map_err(|e| {
                ClientError(format!(
                    "KIVIHOOK_OUTBOUND_PROXY: {}",
                    redact::root_cause(&e)
                ))
            })?),
            None => None,
        };
        let build = |redirect: reqwest::redirect::Policy| -> Result<reqwest::Client, ClientError> {
            let builder = reqwest::Client::builder()
                .user_agent(crate::user_agent())
                .redirect(redirect)
                .dns_resolver(Arc::new(GuardedResolver(guard.clone())))
                .no_proxy()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true);
            let builder = match &proxy {
                Some(p) => builder.proxy(p.clone()),
                None => builder,
            };
            builder
                .build()
                .map_err(|e| ClientError(redact::root_cause(&e)))
        };
        Ok(Self {
            client: build(reqwest::redirect::Policy::none())?,
            guard,
            max_body,
            parsed: Arc::default(),
        })
    }

    /// Refuse, before any connection, what the guard can tell from the URL alone.
    /// The URL, parsed once for the guard and the request, if the guard lets it through.
    /// `stable`: the webhook's own URL, the same on every request (not made by templates), and
    /// worth keeping parsed.
    fn precheck(&self, url: &str, stable: bool) -> Result<url::Url, String> {
        let parsed = if stable {
            self.parse(url)?
        } else {
            url::Url::parse(url).map_err(|e| e.to_string())?
        };
        self.check_url(&parsed)?;
        Ok(parsed)
    }

    /// `url` parsed, from the cache when it was parsed before.
    fn parse(&self, url: &str) -> Result<url::Url, String> {
        let mut cache = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(parsed) = cache.get(url) {
            return Ok(parsed.clone());
        }
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        if cache.len() >= PARSED_URLS_MAX {
            cache.clear();
        }
        cache.insert(url.to_owned(), parsed.clone());
        Ok(parsed)
    }

    fn check_url(&self, parsed: &url::Url) -> Result<(), String> {
        let refused = match parsed.host() {
            _ if self.guard.require_https && parsed.scheme() != "https" => Some(Refused::NotHttps),
            Some(url::Host::Ipv4(ip)) => self.guard.check_ip(ip.into()).err(),
            Some(url::Host::Ipv6(ip)) => self.guard.check_ip(ip.into()).err(),
            _ => None,
        };
        refused.map_or(Ok(()), |r| Err(format!("the URL {r}")))
    }
}

/// The `webhook-id` of an event for one webhook: the same on every attempt and every
/// redelivery, so receivers can de-duplicate on it.
pub fn message_id(event_id: &str, webhook_id: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b1f_1c0e_9d3a_4f6e_8a1b_2c3d_4e5f_6a7b);
    let mut name = Vec::with_capacity(event_id.len() + 1 + webhook_id.len());
    name.extend_from_slice(event_id.as_bytes());
    name.push(0);
    name.extend_from_slice(webhook_id.as_bytes());
    crate::delivery::prefixed_uuid(&["msg_"], uuid::Uuid::new_v5(&NAMESPACE, &name))
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

fn classify(e: &reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        return ErrorKind::Timeout;
    }
    // reqwest folds DNS, TLS and guard failures into "connect"; the source chain tells them
    // apart.
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<Refused>().is_some() {
            return ErrorKind::Blocked;
        }
        chain.push_str(&s.to_string().to_ascii_lowercase());
        chain.push(' ');
        source = s.source();
    }
    if chain.contains("kivihook_outbound_allow") || chain.contains("require_https") {
        ErrorKind::Blocked
    } else if chain.contains("dns") || chain.contains("lookup") || chain.contains("resolve") {
        ErrorKind::Dns
    } else if chain.contains("certificate") || chain.contains("tls") || chain.contains("handshake")
    {
        ErrorKind::Tls
    } else if e.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Request
    }
}

const MAX_REDIRECTS: usize = 5;

/// Remove what only the webhook's own origin may receive: its auth header, every header
/// whose name marks a credential, and the signature.
fn strip_credentials(webhook: &Webhook, headers: &mut HeaderMap) {
    if let Auth::ApiKey {
        name,
        location: KeyLocation::Header,
        ..
    } = &webhook.auth
    {
        headers.remove(name.as_str());
    }
    headers.remove(AUTHORIZATION);
    let secret: Vec<HeaderName> = headers
        .keys()
        .filter(|n| crate::webhook::is_secret_header(n.as_str()))
        .cloned()
        .collect();
    for name in secret {
        headers.remove(name);
    }
    headers.remove("webhook-signature");
}

/// Add the webhook's credential to the request: a header, or a query parameter on the URL
/// (returned, since only that case changes it).
fn authenticate(webhook: &Webhook, mut url: url::Url, headers: &mut HeaderMap) -> url::Url {
    let header = |headers: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    match &webhook.auth {
        Auth::None => {}
        Auth::ApiKey {
            name,
            value,
            location: KeyLocation::Header,
        } => {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                header(headers, n, value);
            }
        }
        Auth::ApiKey {
            name,
            value,
            location: KeyLocation::Query,
        } => {
            url.query_pairs_mut().append_pair(name, value);
        }
        Auth::Bearer { token } => header(headers, AUTHORIZATION, &format!("Bearer {token}")),
        Auth::Basic { username, password } => {
            let basic = STANDARD.encode(format!("{username}:{password}"));
            header(headers, AUTHORIZATION, &format!("Basic {basic}"));
        }
    }
    url
}

/// Send an event to a webhook, signed: the envelope, or what its templates render.
/// Redirects, for a webhook that follows them, are followed here hop by hop (each checked by
/// the guard): a hop to another origin (scheme, host or port) carries no credential header,
/// no auth and no signature.
pub async fn send(
    clients: &Clients,
    webhook: &Webhook,
    message_id: &str,
    envelope: &Bytes,
) -> Attempt {
    let started = Instant::now();
    let prepared = match prepare_off_thread(webhook, envelope, clients.max_body).await {
        Ok(p) => p,
        Err(e) => return Attempt::failed(ErrorKind::Render, e.to_string(), started),
    };
    let stable = *prepared.url == webhook.url;
    let parsed = match clients.precheck(&prepared.url, stable) {
        Ok(url) => url,
        Err(e) => return Attempt::failed(ErrorKind::Blocked, e, started).with_request(&prepared),
    };
    let now = Utc::now();
    let timestamp = now.timestamp();
    // The current secret signs first; a rotated-out one signs beside it until it expires.
    let mut signatures = Vec::with_capacity(1 + webhook.previous_secrets.len());
    for secret in webhook.signing_secrets(now) {
        match SigningKey::parse(secret) {
            Ok(key) => signatures.push(key.sign(message_id, timestamp, &prepared.body)),
            Err(e) => {
                return Attempt::failed(
                    ErrorKind::Config,
                    format!("the webhook's signing secret is unusable: {e}"),
                    started,
                )
                .with_request(&prepared)
            }
        }
    }
    let mut headers = HeaderMap::with_capacity(prepared.headers.len() + 4);
    for (name, value) in prepared.headers.iter() {
        // Names were checked when the webhook was saved, values when they were rendered.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prepared.content_type),
    );
    let url = authenticate(webhook, parsed, &mut headers);
    let signed = [
        ("webhook-id", message_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ];
    for (name, value) in signed {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let fail = |e: &reqwest::Error, prefix: &str| {
        let kind = classify(e);
        let text = redact::redact(webhook, &redact::describe(kind.as_str(), e));
        Attempt::failed(kind, format!("{prefix}{text}"), started).with_request(&prepared)
    };
    let mut method = method(webhook.method);
    let mut body = prepared.has_body.then(|| prepared.body.clone());
    let origin = webhook.follow_redirects.then(|| url.origin());
    let mut current = url;
    let mut hops = 0;
    let mut response = loop {
        let sent = if webhook.follow_redirects {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        let mut request = clients
            .client
            .request(method.clone(), current.clone())
            .headers(sent);
        // Only a webhook that follows redirects may need the body again.
        let sent_body = if webhook.follow_redirects {
            body.clone()
        } else {
            body.take()
        };
        if let Some(b) = sent_body {
            request = request.body(b);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return fail(&e, ""),
        };
        let status = response.status();
        if !webhook.follow_redirects || !status.is_redirection() {
            break response;
        }
        let Some(location) = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
        else {
            break response;
        };
        let refused =
            |why: String| Attempt::failed(ErrorKind::Request, why, started).with_request(&prepared);
        if hops == MAX_REDIRECTS {
            return refused(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let Ok(next) = current.join(location) else {
            return refused("a redirect to an invalid Location".into());
        };
        if let Err(e) = clients.check_url(&next) {
            return Attempt::failed(ErrorKind::Blocked, format!("redirected: {e}"), started)
                .with_request(&prepared);
        }
        if Some(next.origin()) != origin {
            strip_credentials(webhook, &mut headers);
        }
        // As browsers and reqwest do: 303 becomes a GET, as does a POST answered 301 or 302;
        // 307 and 308 repeat the request as it was.
        let becomes_get = status == reqwest::StatusCode::SEE_OTHER
            || (matches!(status.as_u16(), 301 | 302) && method == reqwest::Method::POST);
        if becomes_get {
            method = reqwest::Method::GET;
            body = None;
            headers.remove(CONTENT_TYPE);
        }
        hops += 1;
        current = next;
    };
    let status = response.status().as_u16();
    let retry_after = if status == 429 || status == 503 {
        response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()))
    } else {
        None
    };
    let response_headers = response
        .headers()
        .iter()
        .take(MAX_RESPONSE_HEADERS)
        .map(|(k, v)| (k.as_str().to_owned(), excerpt(v.as_bytes(), HEADER_EXCERPT)))
        .collect();
    // Read a little of the body (kept for the log, and so the connection can be reused);
    // never all of it.
    let mut body = Vec::new();
    let mut read_error = None;
    while body.len() < RESPONSE_EXCERPT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    let ok = (200..300).contains(&status);
    let (error_kind, error) = match read_error {
        // A 2xx whose body broke off still counts: the receiver said yes.
        Some(e) if !ok => (
            Some(classify(&e)),
            Some(format!(
                "reading the response failed: {}",
                redact::redact(webhook, &redact::describe(classify(&e).as_str(), &e))
            )),
        ),
        _ if !ok => (Some(ErrorKind::HttpStatus), None),
        _ => (None, None),
    };
    Attempt {
        status: Some(status),
        response_headers,
        response_body: excerpt(&body, RESPONSE_EXCERPT),
        error_kind,
        error,
        retry_after,
        duration: started.elapsed(),
        url: String::new(),
        request_body: Bytes::new(),
        warnings: Vec::new(),
    }
    .with_request(&prepared)
}

/// The request a webhook makes for an event: its URL, headers and body rendered from its
/// templates (checked when it was saved), or the envelope as it is.
pub struct Prepared<'a> {
    /// Borrowed from the webhook unless templates rendered it: the per-delivery path of an
    /// untemplated webhook copies nothing.
    pub url: Cow<'a, str>,
    pub headers: Cow<'a, BTreeMap<String, String>>,
    pub body: Bytes,
    pub has_body: bool,
    /// The body is the webhook's own (its JSON template or form fields), not the envelope.
    pub body_rendered: bool,
    pub content_type: &'static str,
    /// Placeholders that rendered empty (the event did not have them), for the attempt log.
    pub warnings: Vec<String>,
}

/// Why a webhook's templates could not make a request for an event: nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    /// `url`, `headers.X-Name`, `query.name`, `body.template`, `body.fields.name`, `body`.
    pub part: String,
    pub message: String,
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.part, self.message)
    }
}

fn render_error(part: impl Into<String>, message: impl Into<String>) -> RenderError {
    RenderError {
        part: part.into(),
        message: message.into(),
    }
}

/// The request for an event, at most `max_body` bytes of body. Lenient: a placeholder the
/// event lacks renders empty (and is listed in `warnings`); everything else a template
/// renders is checked before anything is sent: the URL's path (event data cannot walk it or
/// choose the host), header values, a JSON body that must parse, the body's size.
pub fn prepare<'a>(
    webhook: &'a Webhook,
    envelope: &Bytes,
    max_body: usize,
) -> Result<Prepared<'a>, RenderError> {
    let sends_body = matches!(webhook.method, Method::Post | Method::Put | Method::Patch);
    if !webhook.has_templates() {
        return Ok(Prepared {
            url: Cow::Borrowed(&webhook.url),
            headers: Cow::Borrowed(&webhook.headers),
            body: envelope.clone(),
            has_body: sends_body,
            body_rendered: false,
            content_type: "application/json",
            warnings: Vec::new(),
        });
    }
    let event = serde_json::from_slice::<crate::Event>(envelope).ok();
    let ctx = event.as_ref().map(template::context).unwrap_or_default();
    let mut warnings = Vec::new();
    let mut render = |part: &str, s: &str, escape| -> Result<String, RenderError> {
        if !template::is_template(s) {
            return Ok(s.to_owned());
        }
        let (out, undefined) = template::render_lenient(s, escape, &ctx)
            .map_err(|e| render_error(part, e.to_string()))?;
        for name in undefined {
            warnings.push(format!(
                "{part}: `{name}` is not in this event and rendered empty"
            ));
        }
        Ok(out)
    };
    let marked = render("url", &webhook.url, Escape::UrlMarked)?;
    let mut url = template::check_url_path(&marked).map_err(|m| render_error("url", m))?;
    if !webhook.query.is_empty() {
        let mut u = url::Url::parse(&url)
            .map_err(|e| render_error("url", format!("renders to an invalid URL ({e})")))?;
        for (name, source) in &webhook.query {
            let value = render(&format!("query.{name}"), source, Escape::Raw)?;
            u.query_pairs_mut().append_pair(name, &value);
        }
        url = u.into();
    }
    let mut headers = BTreeMap::new();
    for (name, source) in &webhook.headers {
        let part = format!("headers.{name}");
        let value = render(&part, source, Escape::Raw)?;
        if HeaderValue::from_str(&value).is_err() {
            return Err(render_error(
                part,
                "renders to a value a header cannot carry (control characters)",
            ));
        }
        headers.insert(name.clone(), value);
    }
    let (body, content_type, explicit) = match &webhook.body {
        Body::Default => (envelope.clone(), "application/json", false),
        Body::Json { template } => {
            let out = render("body.template", template, Escape::Json)?;
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&out) {
                return Err(render_error(
                    "body.template",
                    format!("renders to invalid JSON for this event ({e})"),
                ));
            }
            (Bytes::from(out), "application/json", true)
        }
        Body::Form { fields } => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (name, source) in fields {
                let value = render(&format!("body.fields.{name}"), source, Escape::Raw)?;
                form.append_pair(name, &value);
            }
            (
                Bytes::from(form.finish()),
                "application/x-www-form-urlencoded",
                true,
            )
        }
    };
    if body.len() > max_body {
        return Err(render_error(
            "body",
            format!(
                "renders to {} bytes, more than KIVIHOOK_MAX_BODY ({max_body})",
                body.len()
            ),
        ));
    }
    Ok(Prepared {
        url: Cow::Owned(url),
        headers: Cow::Owned(headers),
        body,
        has_body: sends_body || explicit,
        body_rendered: explicit,
        content_type,
        warnings,
    })
}

/// `prepare`, off the async workers when templates run (their work is bounded by fuel, but
/// a heavy one should not hold a worker thread that other deliveries need).
pub async fn prepare_off_thread<'a>(
    webhook: &'a Webhook,
    envelope: &Bytes,
    max_body: usize,
) -> Result<Prepared<'a>, RenderError> {
    if !webhook.has_templates() {
        return prepare(webhook, envelope, max_body);
    }
    let (w, e) = (webhook.clone(), envelope.clone());
    tokio::task::spawn_blocking(move || prepare(&w, &e, max_body).map(Prepared::into_owned))
        .await
        .unwrap_or_else(|_| Err(render_error("template", "rendering failed")))
}

impl Prepared<'_> {
    pub fn into_owned(self) -> Prepared<'static> {
        Prepared {
            url: Cow::Owned(self.url.into_owned()),
            headers: Cow::Owned(self.headers.into_owned()),
            body: self.body,
            has_body: self.has_body,
            body_rendered: self.body_rendered,
            content_type: self.content_type,
            warnings: self.warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_bytes_are_cut_at_a_character_boundary() {
        // 511 ASCII bytes then a two-byte character: byte 512 falls inside it.
        let header = format!("{}é and more", "a".repeat(511));
        let kept = excerpt(header.as_bytes(), HEADER_EXCERPT);
        assert_eq!(kept, "a".repeat(511));
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("short", 512), "short");
        // Invalid UTF-8 cut mid-sequence becomes a replacement character, never a panic.
        let bytes = [b'a', 0xE2, 0x82];
        assert_eq!(excerpt(&bytes, 3), "a");
        for max in 0..8 {
            assert!(excerpt("ééééé".as_bytes(), max).len() <= max);
        }
    }

    #[test]
    fn a_url_kept_parsed_is_still_checked_every_time() {
        let guard = Guard {
            require_https: true,
            ..Guard::default()
        };
        let clients = Clients::new(Duration::from_secs(2), guard, 1024).unwrap();
        for _ in 0..2 {
            assert!(clients.precheck("http://crm.example/hook", true).is_err());
            let ok = clients
                .precheck("https://crm.example/hook?a=1", true)
                .unwrap();
            assert_eq!(ok.as_str(), "https://crm.example/hook?a=1");
        }
        assert_eq!(clients.parsed.lock().unwrap().len(), 2);
        // A URL made by templates is not kept; an unparseable one is refused.
        clients
            .precheck("https://crm.example/patients/7", false)
            .unwrap();
        assert_eq!(clients.parsed.lock().unwrap().len(), 2);
        assert!(clients.precheck("not a url", true).is_err());
    }

    #[test]
    fn message_ids_are_stable_per_event_and_webhook() {
        let a = message_id("evt_1", "wh_1");
        assert_eq!(a, message_id("evt_1", "wh_1"));
        assert_ne!(a, message_id("evt_1", "wh_2"));
        assert_ne!(a, message_id("evt_2", "wh_1"));
        assert!(a.starts_with("msg_"));
        // Receivers de-duplicate on it across versions: it is what it always was.
        for (event, webhook) in [("evt_1", "wh_1"), ("evt_x9", "wh_0123abcd"), ("", "")] {
            const NAMESPACE: uuid::Uuid =
                uuid::Uuid::from_u128(0x6b1f_1c0e_9d3a_4f6e_8a1b_2c3d_4e5f_6a7b);
            let name = format!("{event}\u{0}{webhook}");
            let was = format!(
                "msg_{}",
                uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).simple()
            );
            assert_eq!(message_id(event, webhook), was);
        }
        assert_eq!(message_id("evt_1", "wh_1").len(), 36);
    }
}
