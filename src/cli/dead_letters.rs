//! `kivihook dead-letters list | replay`: deliveries that exhausted their retries, and one
//! more attempt for them once the receiver is fixed.

use serde_json::{json, Value};

use super::client::Api;
use super::error::CliError;
use super::output::{self, Output};
use super::DeadLettersAction;

/// The API's largest page.
const PAGE: usize = 500;

pub async fn run(api: &Api, action: DeadLettersAction) -> Result<(), CliError> {
    match action {
        DeadLettersAction::List {
            webhook,
            limit,
            output,
        } => list(api, webhook.as_deref(), limit, output).await,
        DeadLettersAction::Replay {
            id: Some(id),
            all: false,
            ..
        } => {
            let job = replay(api, &id).await?;
            output::print(&format!("replayed {id}: job {job} scheduled\n"))
        }
        DeadLettersAction::Replay {
            webhook: Some(webhook),
            all: true,
            ..
        } => replay_all(api, &webhook).await,
        DeadLettersAction::Replay { .. } => Err(CliError::Usage(
            "replay takes a dead letter id, or --webhook ID --all".into(),
        )),
    }
}

/// Up to `limit` dead letters, newest first, paging through the API; and how many exist.
async fn fetch(
    api: &Api,
    webhook: Option<&str>,
    limit: usize,
) -> Result<(Vec<Value>, u64), CliError> {
    let mut items = Vec::new();
    let mut offset = 0usize;
    let mut total = 0u64;
    while items.len() < limit {
        let page = (limit - items.len()).min(PAGE).to_string();
        let offset_text = offset.to_string();
        let mut query = vec![("limit", page.as_str()), ("offset", offset_text.as_str())];
        if let Some(w) = webhook {
            query.push(("webhook_id", w));
        }
        let answer = api.get(&["v1", "dead-letters"], &query).await?;
        total = answer["total"].as_u64().unwrap_or(0);
        let got = answer["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if got.is_empty() {
            break;
        }
        items.extend(got);
        match answer["next_offset"].as_u64() {
            Some(next) => offset = next as usize,
            None => break,
        }
    }
    Ok((items, total))
}

async fn list(
    api: &Api,
    webhook: Option<&str>,
    limit: usize,
    output: Output,
) -> Result<(), CliError> {
    let (items, total) = fetch(api, webhook, limit).await?;
    if output == Output::Json {
        return output::json(&json!({"total": total, "dead_letters": items}));
    }
    if items.is_empty() {
        return output::print("no dead letters\n");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let last = match d["last_status"].as_u64() {
                Some(status) => status.to_string(),
                None => output::text(&d["last_error"]),
            };
            vec![
                output::text(&d["id"]),
                output::text(&d["webhook_id"]),
                output::text(&d["event_id"]),
                output::text(&d["event_type"]),
                output::text(&d["attempts"]),
                last,
                output::text(&d["failed_at"]),
            ]
        })
        .collect();
    output::print(&output::table(
        &[
            "ID",
            "WEBHOOK",
            "EVENT",
            "TYPE",
            "ATTEMPTS",
            "LAST",
            "FAILED AT",
        ],
        &rows,
    ))?;
    if (items.len() as u64) < total {
        eprintln!(
            "showing {} of {total} dead letters; --limit shows more",
            items.len()
        );
    }
    Ok(())
}

/// Replay one dead letter; returns the id of the job that will attempt it.
async fn replay(api: &Api, id: &str) -> Result<String, CliError> {
    let (_, answer) = api
        .post(&["v1", "dead-letters", id, "replay"], None)
        .await
        .map_err(|e| e.during(format!("replaying {id}")))?;
    Ok(output::text(&answer["job_id"]))
}

/// Every dead letter a webhook has now: the server collects the ids first, so one that fails
/// again is not replayed again by the same call, and runs the replay apart from the request;
/// a long one is followed at `GET /v1/replays/{id}` until it ends.
async fn replay_all(api: &Api, webhook: &str) -> Result<(), CliError> {
    let during = || format!("replaying the dead letters of webhook {webhook}");
    let (_, answer) = api
        .post(&["v1", "webhooks", webhook, "dead-letters", "replay"], None)
        .await
        .map_err(|e| e.during(during()))?;
    let mut replayed = answer["replayed"].as_u64().unwrap_or(0);
    let mut remaining = answer["remaining"].as_u64().unwrap_or(0);
    if answer["status"] == "running" {
        let id = output::text(&answer["replay_id"]);
        let mut last_move = std::time::Instant::now();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let run = api
                .get(&["v1", "replays", &id], &[])
                .await
                .map_err(|e| e.during(during()))?;
            let now = run["replayed"].as_u64().unwrap_or(0);
            let total = run["total"].as_u64().unwrap_or(0);
            if now != replayed {
                eprintln!("replayed {now} of {total}");
                replayed = now;
                last_move = std::time::Instant::now();
            }
            match run["status"].as_str() {
                Some("done") => break,
                Some("failed") => {
                    return Err(CliError::Io(format!(
                        "{}: the replay stopped after {now} of {total}: {}; the rest are still dead letters, so run it again",
                        during(),
                        output::text(&run["error"])
                    )))
                }
                _ if last_move.elapsed() > std::time::Duration::from_secs(30) => {
                    return Err(CliError::Io(format!(
                        "{}: the replay made no progress for 30 s after {now} of {total} (its ingest stopped?); the rest are still dead letters, so run it again",
                        during()
                    )))
                }
                _ => {}
            }
        }
        remaining = api
            .get(
                &["v1", "dead-letters"],
                &[("webhook_id", webhook), ("limit", "1")],
            )
            .await
            .map_err(|e| e.during(during()))?["total"]
            .as_u64()
            .unwrap_or(0);
    }
    let left = if remaining > 0 {
        format!("; {remaining} remain (run it again once these are settled)")
    } else {
        String::new()
    };
    output::print(&format!(
        "replayed {replayed} dead letters of webhook {webhook}{left}\n"
    ))
}
