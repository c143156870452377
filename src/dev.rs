//! `kivihook dev`: every role in one process, an in-memory broker and store, and a built-in
//! echo receiver with a demo webhook pointing at it, so that the first event posted shows a
//! delivery at once. Nothing survives a restart.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use kivihook_core::config::Config;
use kivihook_core::outbound::Cidr;
use kivihook_core::signing::generate_secret;
use kivihook_core::webhook::{Webhook, WebhookSpec};
use kivihook_core::Store;

/// Dev mode reaches its own echo receiver on loopback.
pub fn prepare(config: &mut Config) {
    if let Ok(loopback) = Cidr::parse("127.0.0.0/8") {
        config.outbound.allow.push(loopback);
    }
}

/// The echo receiver: logs what it gets and answers 200.
async fn echo(headers: HeaderMap, body: String) -> (StatusCode, Json<Value>) {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    tracing::info!(
        webhook_id = %header("webhook-id"),
        signature = %header("webhook-signature"),
        body = %body,
        "echo receiver got a delivery"
    );
    (
        StatusCode::OK,
        Json(json!({"received": true, "bytes": body.len()})),
    )
}

/// Add the echo route, load the demo webhook, and say how to use it.
pub async fn start(
    router: Router,
    store: &dyn Store,
    addr: SocketAddr,
    config: &Config,
) -> anyhow::Result<Router> {
    let port = addr.port();
    let spec = WebhookSpec::from_json(&json!({
        "name": "Demo: echo receiver",
        "url": format!("http://127.0.0.1:{port}/dev/echo"),
        "events": ["*"],
    }))
    .map_err(|e| anyhow::anyhow!("demo webhook: {e}"))?;
    let demo = Webhook::create(spec, generate_secret());
    store.put_webhook(&demo).await?;
    let base = format!("http://127.0.0.1:{port}");
    eprintln!(
        "\nkivihook dev: everything is in memory; nothing survives a restart.\n\
         Dashboard:    {base}/  (sign in with the admin token)\n\
         API:          {base}  (described at {base}/openapi.json)\n\
         admin token:  {}\n\
         ingest token: {}\n\
         A demo webhook sends every event to the built-in echo receiver ({base}/dev/echo). Try:\n\n  \
         curl -s {base}/v1/events -H 'authorization: Bearer {}' -H 'content-type: application/json' \\\n    \
         -d '{{\"type\": \"kc_appointment_book\", \"clinic_id\": 12, \"data\": {{\"patient\": {{\"patient_name\": \"Ada Lovelace\"}}}}}}'\n",
        config.admin_token.expose(),
        config.ingest_token.expose(),
        config.ingest_token.expose(),
    );
    Ok(router.route("/dev/echo", post(echo)))
}
