//! `kivihook dev`, and the same behaviour on both backends: the embedded in-memory broker and
//! store, and RabbitMQ with Redis.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Accept, de-duplicate, deliver signed; fail twice then deliver on attempt 3; exhaust and
/// dead-letter, then replay. The same assertions, whatever the backend.
async fn behaviour(role: &str) {
    let prefix = unique_prefix();
    let k = Kivihook::start(
        role,
        &prefix,
        &[
            ("KIVIHOOK_RETRY_SCHEDULE", "0.2,0.2"),
            ("KIVIHOOK_SCHEDULER_INTERVAL", "0.05"),
        ],
    );
    let api = Api::new(&k);
    let ok = Receiver::start().await;
    let flaky = Receiver::start().await;
    flaky.script(vec![(500, vec![]), (503, vec![])]);
    let down = Receiver::start().await;
    down.respond_with(500);
    let w = api
        .create_webhook(json!({"name": "ok", "url": ok.url(), "events": ["appointment.*"]}))
        .await;
    api.create_webhook(
        json!({"name": "flaky", "url": flaky.url(), "events": ["appointment.booked"]}),
    )
    .await;
    let dw = api
        .create_webhook(
            json!({"name": "down", "url": down.url(), "events": ["appointment.booked"]}),
        )
        .await;

    assert_eq!(
        api.post_event(&event("evt_b1", "kc_appointment_book", Some("1")))
            .await
            .status(),
        202,
        "{role}"
    );
    assert_eq!(
        api.post_event(&event("evt_b1", "kc_appointment_book", Some("1")))
            .await
            .status(),
        200,
        "{role}"
    );
    wait_until(Duration::from_secs(15), "deliveries", || {
        ok.count() == 1 && flaky.count() == 3 && down.count() == 3
    })
    .await;
    assert!(
        verify_signature(w["secret"].as_str().unwrap(), &ok.received()[0]),
        "{role}"
    );
    let ids: Vec<String> = flaky
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{role}: one webhook-id");

    let path = format!("/v1/dead-letters?webhook_id={}", dw["id"].as_str().unwrap());
    eventually(Duration::from_secs(10), "the dead letter", || async {
        get_json(&api, &path).await["total"] == 1
    })
    .await;
    let dl = get_json(&api, &path).await["dead_letters"][0].clone();
    down.respond_with(200);
    let r = api
        .admin_post(&format!(
            "/v1/dead-letters/{}/replay",
            dl["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status(), 202, "{role}");
    wait_until(Duration::from_secs(10), "the replay", || down.count() == 4).await;
    // Dev mode adds its demo webhook, which subscribes to everything: count what is there.
    eventually(
        Duration::from_secs(10),
        "every target delivered",
        || async {
            let s = get_json(&api, "/v1/events/evt_b1").await;
            s["webhooks"]
                .as_array()
                .is_some_and(|w| w.len() >= 3 && w.iter().all(|t| t["status"] == "delivered"))
        },
    )
    .await;
    let targets = get_json(&api, "/v1/events/evt_b1").await["webhooks"]
        .as_array()
        .unwrap()
        .len();
    let stats = get_json(&api, "/v1/stats").await;
    assert_eq!(
        stats["totals"]["successes"], targets as u64,
        "{role}: {stats}"
    );
    // Attempts after the first: flaky 2 and 3, down 2 and 3, and the replay (4).
    assert_eq!(stats["totals"]["retries"], 5, "{role}: {stats}");
    // The overview's minute counters agree with the totals on both backends (on Redis they
    // are written once a second).
    let successes = stats["totals"]["successes"].clone();
    eventually(Duration::from_secs(5), "the minute counters", || async {
        get_json(&api, "/v1/stats").await["deliveries"]["last_24h"]["delivered"] == successes
    })
    .await;
    let stats = get_json(&api, "/v1/stats").await;
    let day = &stats["deliveries"]["last_24h"];
    assert_eq!(
        day["delivered"], stats["totals"]["successes"],
        "{role}: {day}"
    );
    assert_eq!(
        day["attempts"].as_u64(),
        Some(
            stats["totals"]["successes"].as_u64().unwrap()
                + stats["totals"]["failures"].as_u64().unwrap()
        ),
        "{role}: {day}"
    );
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_behaviour_on_rabbitmq_and_redis() {
    behaviour("all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_behaviour_in_dev_mode_with_no_services() {
    behaviour("dev").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_starts_without_configuration_and_delivers_to_its_echo_receiver() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kivihook"))
        .arg("dev")
        .env("KIVIHOOK_BIND", "127.0.0.1:0")
        .env("KIVIHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("KIVIHOOK_REDIS_URL", "redis://127.0.0.1:1")
        .env_remove("KIVIHOOK_SECRET_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
    // The banner says nothing survives, and gives the URL and the tokens.
    let mut banner = String::new();
    let mut lines = BufReader::new(stderr).lines();
    while !banner.contains("curl") {
        banner.push_str(&lines.next().expect("banner").unwrap());
        banner.push('\n');
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(banner.contains("nothing survives a restart"), "{banner}");
    let token = |label: &str| {
        banner
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().last())
            .unwrap()
            .to_owned()
    };
    let (admin, ingest) = (token("admin token:"), token("ingest token:"));
    let base = banner
        .lines()
        .find(|l| l.starts_with("API:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();

    let http = reqwest::Client::new();
    // The dashboard is where the banner says.
    let dashboard = banner
        .lines()
        .find(|l| l.starts_with("Dashboard:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("the banner names the dashboard")
        .to_owned();
    let page = http.get(&dashboard).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/assets/app.js"));

    // An event posted as the banner (and the README) show is delivered to the echo receiver.
    let r = http
        .post(format!("{base}/v1/events"))
        .bearer_auth(&ingest)
        .json(&json!({"type": "kc_appointment_book", "clinic_id": 12, "data": {"patient": {"patient_name": "Ada Lovelace"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let hooks: Value = http
        .get(format!("{base}/v1/webhooks"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let demo = hooks["webhooks"][0]["id"].as_str().unwrap().to_owned();
    let mut delivered = false;
    for _ in 0..100 {
        let log: Value = http
            .get(format!("{base}/v1/webhooks/{demo}/attempts"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if log["attempts"][0]["status"] == 200 {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered, "the echo receiver got the event");
    let _ = child.kill();
    let _ = child.wait();
}
