use std::sync::Arc;

use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::event::{CATALOGUE, FAMILIES};
use crate::store::MemoryStore;
use crate::webhook::{Subscription, WebhookSpec};

fn hook(name: &str, events: &[&str], clinics: &[&str]) -> Webhook {
    let spec = WebhookSpec::from_json(&serde_json::json!({
        "name": name, "url": "https://example.com/h", "events": events, "clinic_ids": clinics
    }))
    .expect("a valid definition");
    Webhook::create(spec, crate::signing::generate_secret())
}

fn reloads(m: &Metrics, kind: &str) -> u64 {
    m.registry_reloads.with_label_values(&["test", kind]).get()
}

fn names(hooks: &[Arc<Webhook>]) -> Vec<&str> {
    hooks.iter().map(|w| w.name.as_str()).collect()
}

async fn registry_over(store: &Arc<MemoryStore>) -> (Registry, Metrics) {
    let metrics = Metrics::new();
    let store: Arc<dyn Store> = store.clone();
    let r = Registry::new(store, metrics.clone(), "test");
    r.load().await.expect("memory store answers");
    (r, metrics)
}

/// Every pattern the grammar allows, plus ones that no longer parse (a stored webhook may
/// hold them; they match nothing).
fn random_pattern(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0 => "*".to_owned(),
        1..=3 => format!("{}.*", FAMILIES[rng.gen_range(0..FAMILIES.len())]),
        4 => format!("custom.t{}", rng.gen_range(0..4)),
        5 => "nonsense.*".to_owned(),
        _ => CATALOGUE[rng.gen_range(0..CATALOGUE.len())].name.to_owned(),
    }
}

fn random_event_type(rng: &mut StdRng) -> String {
    match rng.gen_range(0..12) {
        0 => format!("custom.t{}", rng.gen_range(0..4)),
        1 => format!("custom.t{}.sub", rng.gen_range(0..4)),
        2 => ["appointment", "appointment.", "", ".", "patient..x"][rng.gen_range(0..5)].to_owned(),
        _ => CATALOGUE[rng.gen_range(0..CATALOGUE.len())].name.to_owned(),
    }
}

/// A random webhook: stored as the store would hold it (patterns as strings, possibly
/// invalid ones), with creation times that collide so that ids break ties.
fn random_webhook(rng: &mut StdRng, i: usize) -> Webhook {
    let mut w = hook(&format!("w{i}"), &["*"], &[]);
    w.events = (0..rng.gen_range(0..4))
        .map(|_| random_pattern(rng))
        .collect();
    w.clinic_ids = if rng.gen_bool(0.5) {
        Vec::new()
    } else {
        (0..rng.gen_range(1..4))
            .map(|_| rng.gen_range(0..6).to_string())
            .collect()
    };
    w.enabled = rng.gen_bool(0.85);
    w.created_at = Utc
        .timestamp_opt(1_700_000_000 + rng.gen_range(0..50), 0)
        .unwrap();
    w
}

/// Whatever a snapshot answers must be what a linear scan of the same webhooks answers.
fn assert_agrees_with_a_linear_scan(
    snapshot: &Snapshot,
    hooks: &HashMap<String, Webhook>,
    rng: &mut StdRng,
) {
    let mut linear: Vec<Subscription> = hooks.values().cloned().map(Subscription::new).collect();
    linear.sort_by(|a, b| {
        (a.webhook.created_at, &a.webhook.id).cmp(&(b.webhook.created_at, &b.webhook.id))
    });
    let listed: Vec<&str> = snapshot.webhooks().map(|w| w.id.as_str()).collect();
    let expected: Vec<&str> = linear.iter().map(|s| s.webhook.id.as_str()).collect();
    assert_eq!(listed, expected, "every webhook once, in creation order");
    assert_eq!(snapshot.len(), hooks.len());
    for (id, w) in hooks {
        assert_eq!(snapshot.get(id).map(|g| &g.name), Some(&w.name));
    }
    for _ in 0..200 {
        let event_type = random_event_type(rng);
        let clinic = match rng.gen_range(0..7) {
            6 => None,
            c => Some(c.to_string()),
        };
        let expected: Vec<&str> = linear
            .iter()
            .filter(|s| s.matches(&event_type, clinic.as_deref()))
            .map(|s| s.webhook.id.as_str())
            .collect();
        let got = snapshot.matching(&event_type, clinic.as_deref());
        let got: Vec<&str> = got.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(got, expected, "{event_type} from clinic {clinic:?}");
    }
}

#[test]
fn the_index_matches_exactly_what_a_linear_scan_matches() {
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..40 {
        let hooks: HashMap<String, Webhook> = (0..rng.gen_range(0..300))
            .map(|i| random_webhook(&mut rng, i))
            .map(|w| (w.id.clone(), w))
            .collect();
        let snapshot = Snapshot::of(1, hooks.values().cloned().collect());
        assert_agrees_with_a_linear_scan(&snapshot, &hooks, &mut rng);
    }
}

#[test]
fn changes_applied_to_a_snapshot_answer_as_a_snapshot_built_whole_would() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut hooks: HashMap<String, Webhook> = (0..400)
        .map(|i| random_webhook(&mut rng, i))
        .map(|w| (w.id.clone(), w))
        .collect();
    let mut snapshot = Snapshot::of(1, hooks.values().cloned().collect());
    let mut next_name = 1_000;
    // Batches small and large: some stay in the delta, some make it merge into a new base.
    for (round, size) in [1, 5, 40, 3, 300, 2, 0, 120, 150, 7]
        .into_iter()
        .enumerate()
    {
        let mut changed: Vec<(String, Option<Webhook>)> = Vec::new();
        for _ in 0..size {
            let existing: Vec<String> = hooks.keys().cloned().collect();
            match rng.gen_range(0..3) {
                0 if !existing.is_empty() => {
                    let id = existing[rng.gen_range(0..existing.len())].clone();
                    hooks.remove(&id);
                    changed.push((id, None));
                }
                1 if !existing.is_empty() => {
                    let id = &existing[rng.gen_range(0..existing.len())];
                    let mut w = random_webhook(&mut rng, next_name);
                    w.id = id.clone();
                    w.created_at = hooks[id].created_at;
                    hooks.insert(id.clone(), w.clone());
                    changed.push((id.clone(), Some(w)));
                }
                _ => {
                    let w = random_webhook(&mut rng, next_name);
                    hooks.insert(w.id.clone(), w.clone());
                    changed.push((w.id.clone(), Some(w)));
                }
            }
            next_name += 1;
        }
        let batch = changed
            .iter()
            .map(|(id, w)| (id.as_str(), w.clone()))
            .collect();
        snapshot = snapshot.with_changes(round as u64 + 2, batch);
        assert_agrees_with_a_linear_scan(&snapshot, &hooks, &mut rng);
        if round == 6 {
            snapshot = snapshot.compacted();
            assert!(!snapshot.has_delta());
            assert_agrees_with_a_linear_scan(&snapshot, &hooks, &mut rng);
        }
    }
}

#[test]
fn a_webhook_matched_by_several_patterns_is_listed_once_in_creation_order() {
    let t0 = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let mut older = hook(
        "older",
        &["appointment.booked", "appointment.*", "*"],
        &["3", "3"],
    );
    older.created_at = t0;
    let mut newer = hook("newer", &["appointment.*"], &[]);
    newer.created_at = t0 + Duration::seconds(1);
    let mut other_clinic = hook("other clinic", &["appointment.booked"], &["4"]);
    other_clinic.created_at = t0 - Duration::seconds(1);
    let mut off = hook("off", &["*"], &[]);
    off.enabled = false;
    let s = Snapshot::of(1, vec![newer, off, other_clinic, older]);
    assert_eq!(
        names(&s.matching("appointment.booked", Some("3"))),
        ["older", "newer"]
    );
    assert_eq!(names(&s.matching("appointment.booked", None)), ["newer"]);
    assert_eq!(
        names(&s.matching("appointment.booked", Some("4"))),
        ["other clinic", "newer"]
    );
    assert!(s.get("nope").is_none());
    let off_id = s.webhooks().find(|w| w.name == "off").unwrap().id.clone();
    assert_eq!(
        s.get(&off_id).unwrap().name,
        "off",
        "disabled ones are found by id"
    );
}

#[test]
fn paging_after_a_key_resumes_where_the_last_page_ended() {
    let t0 = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let hooks: Vec<Webhook> = (0..7)
        .map(|i| {
            let mut w = hook(&format!("w{i}"), &["*"], &[]);
            // Pairs share a creation time: the id orders them.
            w.created_at = t0 + Duration::seconds(i / 2);
            w
        })
        .collect();
    let s = Snapshot::of(1, hooks);
    let all: Vec<String> = s.webhooks().map(|w| w.id.clone()).collect();
    let mut seen = Vec::new();
    let mut key: Option<(DateTime<Utc>, String)> = None;
    loop {
        let page: Vec<Arc<Webhook>> = s
            .after(key.as_ref().map(|(t, id)| (t, id.as_str())))
            .take(3)
            .cloned()
            .collect();
        let Some(last) = page.last() else { break };
        key = Some((last.created_at, last.id.clone()));
        seen.extend(page.iter().map(|w| w.id.clone()));
    }
    assert_eq!(seen, all);
}

#[tokio::test]
async fn a_change_is_applied_from_the_change_log_without_a_full_reload() {
    let store = Arc::new(MemoryStore::new());
    let a = hook("a", &["patient.created"], &[]);
    store.put_webhook(&a).await.unwrap();
    let (r, m) = registry_over(&store).await;
    assert_eq!(reloads(&m, "full"), 1);

    let mut changed = a.clone();
    changed.events = vec!["bill.paid".into()];
    let v = store.put_webhook(&changed).await.unwrap();
    let b = hook("b", &["patient.created"], &[]);
    store.put_webhook(&b).await.unwrap();
    r.ensure(v).await.unwrap();

    assert_eq!(reloads(&m, "full"), 1, "no full reload");
    assert_eq!(reloads(&m, "incremental"), 1);
    assert_eq!(names(&r.matching("patient.created", None)), ["b"]);
    assert_eq!(names(&r.matching("bill.paid", None)), ["a"]);

    store.delete_webhook(&b.id).await.unwrap();
    r.refresh().await.unwrap();
    assert!(r.get(&b.id).is_none());
    assert_eq!(reloads(&m, "full"), 1);
}

#[tokio::test]
async fn a_burst_of_messages_with_new_versions_costs_one_catch_up() {
    let store = Arc::new(MemoryStore::new());
    let (r, m) = registry_over(&store).await;
    let r = Arc::new(r);
    let mut last = 0;
    for i in 0..50 {
        last = store
            .put_webhook(&hook(&format!("h{i}"), &["*"], &[]))
            .await
            .unwrap();
    }
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.ensure(last).await })
        })
        .collect();
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    assert_eq!(r.current().len(), 50);
    assert_eq!(reloads(&m, "incremental"), 1);
    assert_eq!(reloads(&m, "full"), 1, "only the first load");
}

#[tokio::test]
async fn a_read_overtaken_by_a_newer_install_is_dropped() {
    let store = Arc::new(MemoryStore::new());
    store.put_webhook(&hook("old", &["*"], &[])).await.unwrap();
    let (r, _) = registry_over(&store).await;
    // A slow reload reads the registry as it is now…
    let started_from = r.current();
    let (old_version, old_hooks) = store.list_webhooks().await.unwrap();
    // …meanwhile a change lands and another reader installs it…
    store.put_webhook(&hook("new", &["*"], &[])).await.unwrap();
    r.refresh().await.unwrap();
    let newer = r.current().version();
    // …and the slow one, finishing last, must not put the older registry back.
    let installed = r.install(
        Snapshot::of(old_version, old_hooks),
        &started_from,
        Some(Kind::Full),
    );
    assert!(!installed);
    assert_eq!(r.current().version(), newer);
    assert_eq!(r.current().len(), 2);
}

#[tokio::test]
async fn a_registry_that_lost_writes_is_reloaded_whole_even_once_its_version_moved_past() {
    let store = Arc::new(MemoryStore::new());
    let kept = hook("kept", &["*"], &[]);
    store.put_webhook(&kept).await.unwrap();
    let image = store.registry_image();
    let lost = hook("lost", &["*"], &[]);
    store.put_webhook(&lost).await.unwrap();
    let (r, m) = registry_over(&store).await;
    let cached = r.current().version();

    // Redis comes back from an older file: the webhook the cache saw created is gone, and
    // new changes move the version past the cache's before it looks again.
    store.restore_registry(image);
    let fresh = hook("fresh", &["*"], &[]);
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let v = store.put_webhook(&fresh).await.unwrap();
    assert!(v > cached, "versions after a loss are newer than any lost");
    r.ensure(v).await.unwrap();

    assert_eq!(
        reloads(&m, "full"),
        2,
        "the change log cannot prove continuity"
    );
    let snapshot = r.current();
    let mut held: Vec<&str> = snapshot.webhooks().map(|w| w.name.as_str()).collect();
    held.sort_unstable();
    assert_eq!(held, ["fresh", "kept"]);
}

#[tokio::test]
async fn a_registry_whose_version_went_back_installs_what_the_store_holds() {
    let store = Arc::new(MemoryStore::new());
    let image = store.registry_image();
    store.put_webhook(&hook("lost", &["*"], &[])).await.unwrap();
    let (r, m) = registry_over(&store).await;
    store.restore_registry(image);
    r.refresh().await.unwrap();
    assert_eq!(reloads(&m, "full"), 2);
    assert!(r.current().is_empty());
    assert_eq!(
        r.current().version(),
        0,
        "lower than before: what the store holds"
    );
}

#[tokio::test]
async fn a_cache_further_behind_than_the_change_log_reaches_reloads_whole() {
    let store = Arc::new(MemoryStore::new());
    let (r, m) = registry_over(&store).await;
    let w = hook("busy", &["*"], &[]);
    for _ in 0..=crate::store::CHANGE_LOG_CAP {
        store.put_webhook(&w).await.unwrap();
    }
    r.refresh().await.unwrap();
    assert_eq!(reloads(&m, "full"), 2);
    assert_eq!(reloads(&m, "incremental"), 0);
    assert_eq!(r.current().len(), 1);
}
