//! A clean SIGTERM stops every role with exit code 0 and no ERROR line: the AMQP
//! connections are closed before the runtime stops, not cut by it.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_role_without_an_error_line() {
    let prefix = unique_prefix();
    // Something to consume and publish first, so every connection is open.
    let all = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&all);
    let r = Receiver::start().await;
    api.create_webhook(serde_json::json!({"name": "s", "url": r.url(), "events": ["*"]}))
        .await;
    assert_eq!(
        api.post_event(&event("evt_t1", "appointment.booked", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(20), "the delivery", || r.count() == 1).await;
    let mut roles = vec![("all", all)];
    for role in ["ingest", "dispatcher", "scheduler"] {
        roles.push((role, Kivihook::start(role, &prefix, &[])));
    }
    // Let the dispatcher and scheduler connect.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (role, mut k) in roles {
        let pid = k.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(s) = k.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{role} did not stop"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status.code(), Some(0), "{role}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let logs = k.logs.lock().unwrap().clone();
        assert!(
            logs.iter().any(|l| l.contains("\"stopped\"")),
            "{role} logged its stop"
        );
        let errors: Vec<&String> = logs.iter().filter(|l| l.contains("\"ERROR\"")).collect();
        assert!(errors.is_empty(), "{role}: {errors:#?}");
    }
    cleanup(&prefix).await;
}
