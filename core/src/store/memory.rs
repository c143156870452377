//! The embedded store of `kivihook dev`: every piece of state in one process, behind the same
//! trait as Redis. Nothing survives a restart.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    changes_from_log, Claim, EventInfo, Page, ScheduleStatus, Store, StoreError, WebhookChanges,
    CHANGE_LOG_CAP,
};
use crate::delivery::{
    AttemptRecord, DeadLetter, Health, Job, MinuteCounts, Outcome, ReplayRun, TargetResult,
    TargetState, WebhookStats,
};
use crate::webhook::Webhook;

const ATTEMPT_LOG_CAP: usize = 100;

#[derive(Default)]
struct Stats {
    successes: u64,
    failures: u64,
    retries: u64,
    last_status: Option<u16>,
    last_attempt_at: Option<DateTime<Utc>>,
    consecutive_failures: u64,
    failing_since: Option<DateTime<Utc>>,
    /// Hour (Unix time / 3600) → (successes, failures).
    hours: HashMap<i64, (u64, u64)>,
}

#[derive(Default)]
struct State {
    dedup: HashMap<String, (Option<EventInfo>, Instant)>,
    webhooks: HashMap<String, Webhook>,
    version: u64,
    /// (version, webhook id) of every change, oldest first, capped as in Redis.
    changes: VecDeque<(u64, String)>,
    /// The log holds every change after this version.
    changes_floor: Option<u64>,
    targets: HashMap<String, HashMap<String, TargetState>>,
    /// (due in ms, job id), ordered by due time.
    schedule: BTreeSet<(i64, String)>,
    jobs: HashMap<String, Job>,
    leases: HashMap<String, i64>,
    attempts: HashMap<String, VecDeque<AttemptRecord>>,
    dead: HashMap<String, DeadLetter>,
    dead_order: Vec<String>,
    stats: HashMap<String, Stats>,
    buckets: HashMap<String, (f64, Instant)>,
    /// Minute (Unix time / 60) → installation-wide outcomes; the last day is kept.
    minutes: HashMap<i64, MinuteCounts>,
    replays: HashMap<String, ReplayRun>,
}

/// The registry of a `MemoryStore` at one moment (tests only).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct RegistryImage {
    webhooks: HashMap<String, Webhook>,
    version: u64,
    changes: VecDeque<(u64, String)>,
    changes_floor: Option<u64>,
}

/// Everything in one mutex: dev mode is about trying KiviHook, not about throughput.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry as it stands (webhooks, version, change log), to put back later.
    #[cfg(test)]
    pub(crate) fn registry_image(&self) -> RegistryImage {
        self.with(|s| RegistryImage {
            webhooks: s.webhooks.clone(),
            version: s.version,
            changes: s.changes.clone(),
            changes_floor: s.changes_floor,
        })
    }

    /// Put the registry back as an image had it, as a Redis restarted from an older file
    /// (or failed over to a replica that lagged) does: tests prove caches notice.
    #[cfg(test)]
    pub(crate) fn restore_registry(&self, image: RegistryImage) {
        self.with(|s| {
            s.webhooks = image.webhooks;
            s.version = image.version;
            s.changes = image.changes;
            s.changes_floor = image.changes_floor;
        });
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Create or replace a webhook, names unique as in Redis: only taking a name (a new webhook,
/// or a rename) is checked.
fn put_locked(s: &mut State, webhook: &Webhook) -> Result<u64, StoreError> {
    let keeps_its_name = s
        .webhooks
        .get(&webhook.id)
        .is_some_and(|w| w.name == webhook.name);
    if !keeps_its_name {
        if let Some(holder) = holder_of(s, &webhook.name, Some(&webhook.id)) {
            return Err(StoreError::NameTaken {
                name: webhook.name.clone(),
                id: holder,
            });
        }
    }
    s.webhooks.insert(webhook.id.clone(), webhook.clone());
    Ok(log_change(s, &webhook.id))
}

/// The webhook other than `except` that has this name, if any.
fn holder_of(s: &State, name: &str, except: Option<&str>) -> Option<String> {
    s.webhooks
        .values()
        .find(|w| Some(w.id.as_str()) != except && w.name == name)
        .map(|w| w.id.clone())
}

/// Record a change to one webhook as Redis does: a version from the clock (never one handed
/// out before), and an entry in the capped change log.
fn log_change(s: &mut State, id: &str) -> u64 {
    let clock = Utc::now().timestamp_micros().max(0) as u64;
    s.changes_floor.get_or_insert(s.version);
    s.version = clock.max(s.version + 1);
    s.changes.push_back((s.version, id.to_owned()));
    while s.changes.len() > CHANGE_LOG_CAP {
        if let Some((v, _)) = s.changes.pop_front() {
            s.changes_floor = Some(v);
        }
    }
    s.version
}

fn schedule(s: &mut State, job: &Job, due: DateTime<Utc>) {
    s.schedule.retain(|(_, id)| *id != job.id);
    s.schedule.insert((due.timestamp_millis(), job.id.clone()));
    s.jobs.insert(job.id.clone(), job.clone());
}

fn page<T: Clone>(
    items: impl Iterator<Item = T>,
    total: usize,
    offset: usize,
    limit: usize,
) -> Page<T> {
    Page {
        items: items.skip(offset).take(limit).collect(),
        total: total as u64,
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn claim_events(
        &self,
        ids: &[String],
        _token: &str,
        _at: DateTime<Utc>,
    ) -> Result<(Vec<Claim>, u64), StoreError> {
        Ok(self.with(|s| {
            let now = Instant::now();
            let claims = ids
                .iter()
                .map(|id| match s.dedup.get(id) {
                    Some((info, until)) if *until > now => {
                        if info.is_some() {
                            Claim::Duplicate
                        } else {
                            Claim::InProgress
                        }
                    }
                    // An expired claim, or a released one, is taken over: another message of
                    // the event may exist.
                    Some(_) => {
                        s.dedup
                            .insert(id.clone(), (None, now + Duration::from_secs(60)));
                        Claim::Reclaimed
                    }
                    None => {
                        s.dedup
                            .insert(id.clone(), (None, now + Duration::from_secs(60)));
                        Claim::New
                    }
                })
                .collect();
            (claims, s.version)
        }))
    }

    async fn confirm_events(
        &self,
        events: &[EventInfo],
        window: Duration,
    ) -> Result<(), StoreError> {
        self.with(|s| {
            for e in events {
                s.dedup
                    .insert(e.id.clone(), (Some(e.clone()), Instant::now() + window));
            }
        });
        Ok(())
    }

    async fn release_events(
        &self,
        ids: &[String],
        _token: &str,
        _at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // One process, no late writes: a claim still in progress is this request's.
        self.with(|s| {
            for id in ids {
                // Left expired, not removed: the next claim of it is a reclaim.
                if let Some((None, until)) = s.dedup.get_mut(id) {
                    *until = Instant::now();
                }
            }
        });
        Ok(())
    }

    async fn event_info(&self, id: &str) -> Result<Option<EventInfo>, StoreError> {
        Ok(self.with(|s| {
            s.dedup
                .get(id)
                .filter(|(_, until)| *until > Instant::now())
                .and_then(|(info, _)| info.clone())
        }))
    }

    async fn registry_version(&self) -> Result<u64, StoreError> {
        Ok(self.with(|s| s.version))
    }

    async fn list_webhooks(&self) -> Result<(u64, Vec<Webhook>), StoreError> {
        Ok(self.with(|s| {
            let mut hooks: Vec<Webhook> = s.webhooks.values().cloned().collect();
            hooks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            (s.version, hooks)
        }))
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        Ok(self.with(|s| s.webhooks.get(id).cloned()))
    }

    async fn put_webhook(&self, webhook: &Webhook) -> Result<u64, StoreError> {
        self.with(|s| put_locked(s, webhook))
    }

    async fn name_holder(
        &self,
        name: &str,
        except: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        Ok(self.with(|s| holder_of(s, name, except)))
    }

    async fn update_webhook(&self, updated: &Webhook, read: &Webhook) -> Result<u64, StoreError> {
        let updated = &super::stamped_after(updated, read);
        self.with(|s| {
            let unchanged = s
                .webhooks
                .get(&read.id)
                .is_some_and(|w| w.updated_at == read.updated_at);
            if !unchanged {
                return Err(StoreError::EditConflict {
                    id: read.id.clone(),
                });
            }
            put_locked(s, updated)
        })
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.with(|s| {
            let existed = s.webhooks.remove(id).is_some();
            if existed {
                log_change(s, id);
                // What the webhook leaves behind goes with it, as in Redis.
                s.stats.remove(id);
                s.attempts.remove(id);
                s.buckets.remove(id);
                let gone: Vec<String> = s
                    .dead
                    .values()
                    .filter(|d| d.webhook_id == id)
                    .map(|d| d.id.clone())
                    .collect();
                for d in &gone {
                    s.dead.remove(d);
                }
                s.dead_order.retain(|d| !gone.contains(d));
                let jobs: Vec<String> = s
                    .jobs
                    .values()
                    .filter(|j| j.webhook_id == id)
                    .map(|j| j.id.clone())
                    .collect();
                for j in &jobs {
                    s.jobs.remove(j);
                    s.leases.remove(j);
                }
                s.schedule.retain(|(_, j)| !jobs.contains(j));
            }
            existed
        }))
    }

    async fn webhook_changes_since(
        &self,
        version: u64,
    ) -> Result<Option<WebhookChanges>, StoreError> {
        Ok(self.with(|s| {
            let from = s.changes.partition_point(|(v, _)| *v < version);
            let entries: Vec<(u64, &str)> = s
                .changes
                .range(from..)
                .map(|(v, id)| (*v, id.as_str()))
                .collect();
            changes_from_log(version, s.version, s.changes_floor, &entries)
        }))
    }

    async fn get_webhooks(&self, ids: &[&str]) -> Result<Vec<Option<Webhook>>, StoreError> {
        Ok(self.with(|s| ids.iter().map(|id| s.webhooks.get(*id).cloned()).collect()))
    }

    async fn target_states(
        &self,
        event_id: &str,
        webhook_ids: &[&str],
        _received_at: Option<DateTime<Utc>>,
    ) -> Result<Vec<Option<TargetState>>, StoreError> {
        Ok(self.with(|s| {
            let t = s.targets.get(event_id);
            webhook_ids
                .iter()
                .map(|w| t.and_then(|t| t.get(*w)).cloned())
                .collect()
        }))
    }

    async fn all_target_states(
        &self,
        event_id: &str,
    ) -> Result<HashMap<String, TargetState>, StoreError> {
        Ok(self.with(|s| s.targets.get(event_id).cloned().unwrap_or_default()))
    }

    async fn record(&self, results: &[TargetResult]) -> Result<Vec<Option<Health>>, StoreError> {
        Ok(self.with(|s| {
            let now = Utc::now();
            results
                .iter()
                .map(|r| {
                    let state = match &r.outcome {
                        Outcome::Delivered => Some(TargetState::Delivered { at: now }),
                        Outcome::Retry { job, due } => {
                            schedule(s, job, *due);
                            Some(TargetState::Retrying {
                                attempt: job.attempt,
                                due: *due,
                                job_id: job.id.clone(),
                            })
                        }
                        Outcome::Dead(dl) => {
                            s.dead.insert(dl.id.clone(), (**dl).clone());
                            s.dead_order.push(dl.id.clone());
                            Some(TargetState::Dead {
                                dead_letter_id: dl.id.clone(),
                            })
                        }
                        Outcome::DeadAside(dl) => {
                            s.dead.insert(dl.id.clone(), (**dl).clone());
                            s.dead_order.push(dl.id.clone());
                            let pending = matches!(
                                s.targets
                                    .get(&r.event_id)
                                    .and_then(|t| t.get(&r.webhook_id)),
                                Some(TargetState::Retrying { .. })
                            );
                            (!pending).then(|| TargetState::Dead {
                                dead_letter_id: dl.id.clone(),
                            })
                        }
                        Outcome::Untouched => None,
                    };
                    if let Some(state) = state {
                        s.targets
                            .entry(r.event_id.clone())
                            .or_default()
                            .insert(r.webhook_id.clone(), state);
                    }
                    let a = r.attempt.as_ref()?;
                    if let Some(field) = MinuteCounts::field_of(&r.outcome) {
                        let minute = a.at.timestamp().div_euclid(60);
                        if s.minutes.len() > 26 * 60 {
                            s.minutes.retain(|m, _| *m > minute - 25 * 60);
                        }
                        s.minutes
                            .entry(minute)
                            .or_insert(MinuteCounts {
                                minute,
                                ..MinuteCounts::default()
                            })
                            .add(field, 1);
                    }
                    let ok = matches!(r.outcome, Outcome::Delivered);
                    let log = s.attempts.entry(a.webhook_id.clone()).or_default();
                    log.push_front(a.clone());
                    log.truncate(ATTEMPT_LOG_CAP);
                    let st = s.stats.entry(a.webhook_id.clone()).or_default();
                    let hour = st.hours.entry(a.at.timestamp() / 3600).or_default();
                    if ok {
                        st.successes += 1;
                        st.consecutive_failures = 0;
                        st.failing_since = None;
                        hour.0 += 1;
                    } else {
                        st.failures += 1;
                        st.consecutive_failures += 1;
                        st.failing_since.get_or_insert(a.at);
                        hour.1 += 1;
                    }
                    if a.attempt > 1 {
                        st.retries += 1;
                    }
                    st.last_status = a.status;
                    st.last_attempt_at = Some(a.at);
                    Some(Health {
                        consecutive_failures: st.consecutive_failures,
                        failing_since: st.failing_since,
                    })
                })
                .collect()
        }))
    }

    async fn schedule_job(&self, job: &Job, due: DateTime<Utc>) -> Result<(), StoreError> {
        self.with(|s| schedule(s, job, due));
        Ok(())
    }

    async fn claim_due_jobs(&self, limit: usize, lease: Duration) -> Result<Vec<Job>, StoreError> {
        Ok(self.with(|s| {
            let now = now_ms();
            let due: Vec<(i64, String)> = s
                .schedule
                .iter()
                .take_while(|(at, _)| *at <= now)
                .take(limit)
                .cloned()
                .collect();
            let mut jobs = Vec::with_capacity(due.len());
            for entry in due {
                s.schedule.remove(&entry);
                s.leases
                    .insert(entry.1.clone(), now + lease.as_millis() as i64);
                if let Some(j) = s.jobs.get(&entry.1) {
                    jobs.push(j.clone());
                }
            }
            jobs
        }))
    }

    async fn complete_jobs(&self, ids: &[String]) -> Result<(), StoreError> {
        self.with(|s| {
            for id in ids {
                s.leases.remove(id);
                s.jobs.remove(id);
            }
        });
        Ok(())
    }

    async fn release_jobs(&self, ids: &[String]) -> Result<(), StoreError> {
        self.with(|s| {
            let now = now_ms();
            for id in ids {
                s.leases.remove(id);
                s.schedule.insert((now, id.clone()));
            }
        });
        Ok(())
    }

    async fn sweep_leases(&self) -> Result<u64, StoreError> {
        Ok(self.with(|s| {
            let now = now_ms();
            let expired: Vec<String> = s
                .leases
                .iter()
                .filter(|(_, until)| **until <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                s.leases.remove(id);
                s.schedule.insert((now, id.clone()));
            }
            expired.len() as u64
        }))
    }

    async fn schedule_status(&self) -> Result<ScheduleStatus, StoreError> {
        Ok(self.with(|s| {
            let now = now_ms();
            let lag = s
                .schedule
                .iter()
                .next()
                .map(|(due, _)| ((now - due).max(0)) as u64)
                .unwrap_or(0);
            let expired = s
                .leases
                .values()
                .min()
                .map(|until| ((now - until).max(0)) as u64)
                .unwrap_or(0);
            ScheduleStatus {
                depth: s.schedule.len() as u64,
                leased: s.leases.len() as u64,
                lag: Duration::from_millis(lag),
                oldest_due_age: Duration::from_millis(lag.max(expired)),
                dead_letters: s.dead.len() as u64,
            }
        }))
    }

    async fn rescue_stranded_jobs(
        &self,
        suspects: &std::collections::HashSet<String>,
    ) -> Result<(std::collections::HashSet<String>, u64), StoreError> {
        Ok(self.with(|s| {
            let scheduled: std::collections::HashSet<&String> =
                s.schedule.iter().map(|(_, id)| id).collect();
            let stranded: Vec<String> = s
                .jobs
                .keys()
                .filter(|id| !scheduled.contains(id) && !s.leases.contains_key(*id))
                .cloned()
                .collect();
            let mut rescued = 0;
            let mut next = std::collections::HashSet::new();
            let now = now_ms();
            for id in stranded {
                if suspects.contains(&id) {
                    s.schedule.insert((now, id));
                    rescued += 1;
                } else {
                    next.insert(id);
                }
            }
            (next, rescued)
        }))
    }

    async fn list_attempts(
        &self,
        webhook_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Page<AttemptRecord>, StoreError> {
        Ok(self.with(|s| {
            let log = s.attempts.get(webhook_id);
            let total = log.map_or(0, VecDeque::len);
            page(log.into_iter().flatten().cloned(), total, offset, limit)
        }))
    }

    async fn find_attempt(&self, attempt_id: &str) -> Result<Option<AttemptRecord>, StoreError> {
        Ok(self.with(|s| {
            s.attempts
                .values()
                .flatten()
                .find(|a| a.id == attempt_id)
                .cloned()
        }))
    }

    async fn log_attempt(&self, attempt: &AttemptRecord) -> Result<(), StoreError> {
        self.with(|s| {
            let log = s.attempts.entry(attempt.webhook_id.clone()).or_default();
            log.push_front(attempt.clone());
            log.truncate(ATTEMPT_LOG_CAP);
        });
        Ok(())
    }

    async fn list_dead_letters(
        &self,
        webhook_id: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<DeadLetter>, StoreError> {
        Ok(self.with(|s| {
            let matching: Vec<DeadLetter> = s
                .dead_order
                .iter()
                .rev()
                .filter_map(|id| s.dead.get(id))
                .filter(|d| webhook_id.is_none_or(|w| d.webhook_id == w))
                .cloned()
                .collect();
            let total = matching.len();
            page(matching.into_iter(), total, offset, limit)
        }))
    }

    async fn put_dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError> {
        self.with(|s| {
            if s.dead.insert(dl.id.clone(), dl.clone()).is_none() {
                s.dead_order.push(dl.id.clone());
            }
        });
        Ok(())
    }

    async fn replay_dead_letter(&self, id: &str) -> Result<Option<Job>, StoreError> {
        Ok(self.with(|s| {
            let dl = s.dead.remove(id)?;
            s.dead_order.retain(|d| d != id);
            let job = Job::replay(&dl);
            schedule(s, &job, Utc::now());
            Some(job)
        }))
    }

    async fn put_replay_run(&self, run: &ReplayRun) -> Result<(), StoreError> {
        self.with(|s| s.replays.insert(run.id.clone(), run.clone()));
        Ok(())
    }

    async fn get_replay_run(&self, id: &str) -> Result<Option<ReplayRun>, StoreError> {
        Ok(self.with(|s| s.replays.get(id).cloned()))
    }

    async fn take_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.with(|s| {
            s.dead_order.retain(|d| d != id);
            s.dead.remove(id)
        }))
    }

    async fn webhook_stats(&self, webhook_ids: &[&str]) -> Result<Vec<WebhookStats>, StoreError> {
        Ok(self.with(|s| {
            let hour = Utc::now().timestamp() / 3600;
            webhook_ids
                .iter()
                .map(|id| match s.stats.get(*id) {
                    None => WebhookStats::default(),
                    Some(st) => {
                        let (ok, failed) = ((hour - 23)..=hour)
                            .filter_map(|h| st.hours.get(&h))
                            .fold((0, 0), |(a, b), (s2, f)| (a + s2, b + f));
                        WebhookStats {
                            successes: st.successes,
                            failures: st.failures,
                            retries: st.retries,
                            last_status: st.last_status,
                            last_attempt_at: st.last_attempt_at,
                            consecutive_failures: st.consecutive_failures,
                            failing_since: st.failing_since,
                            success_rate_24h: (ok + failed > 0)
                                .then(|| ok as f64 / (ok + failed) as f64),
                            attempts_24h: ok + failed,
                        }
                    }
                })
                .collect()
        }))
    }

    async fn minute_counts(&self, first: i64, last: i64) -> Result<Vec<MinuteCounts>, StoreError> {
        Ok(self.with(|s| {
            (first..=last)
                .map(|minute| {
                    s.minutes.get(&minute).copied().unwrap_or(MinuteCounts {
                        minute,
                        ..MinuteCounts::default()
                    })
                })
                .collect()
        }))
    }

    async fn reset_health(&self, webhook_id: &str) -> Result<(), StoreError> {
        self.with(|s| {
            if let Some(st) = s.stats.get_mut(webhook_id) {
                st.consecutive_failures = 0;
                st.failing_since = None;
            }
        });
        Ok(())
    }

    async fn take_token(
        &self,
        webhook_id: &str,
        rate: f64,
        burst: u32,
    ) -> Result<Option<Duration>, StoreError> {
        Ok(self.with(|s| {
            let now = Instant::now();
            let (tokens, at) = s
                .buckets
                .entry(webhook_id.to_owned())
                .or_insert((burst as f64, now));
            *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst as f64);
            *at = now;
            // Reserving, as in Redis: the token is taken now, the wait is until it refills.
            *tokens -= 1.0;
            if *tokens >= 0.0 {
                None
            } else {
                Some(Duration::from_secs_f64(-*tokens / rate))
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::WebhookSpec;

    fn hook(name: &str) -> Webhook {
        let spec = WebhookSpec::from_json(&serde_json::json!({
            "name": name, "url": "https://example.com/h", "events": ["*"]
        }))
        .expect("a valid definition");
        Webhook::create(spec, crate::signing::generate_secret())
    }

    fn taken_by(r: Result<u64, StoreError>) -> Option<String> {
        match r {
            Err(StoreError::NameTaken { id, .. }) => Some(id),
            _ => None,
        }
    }

    #[tokio::test]
    async fn names_are_unique_as_in_redis() {
        let store = MemoryStore::new();
        let crm = hook("CRM");
        store.put_webhook(&crm).await.unwrap();
        // A second webhook of that name is refused, and nothing is written.
        let second = hook("CRM");
        assert_eq!(
            taken_by(store.put_webhook(&second).await),
            Some(crm.id.clone())
        );
        assert!(store.get_webhook(&second.id).await.unwrap().is_none());
        // Asking who holds it finds the same holder, except for the holder itself.
        assert_eq!(
            store.name_holder("CRM", None).await.unwrap(),
            Some(crm.id.clone())
        );
        assert_eq!(store.name_holder("CRM", Some(&crm.id)).await.unwrap(), None);
        assert_eq!(store.name_holder("Billing", None).await.unwrap(), None);
        // Writing the holder again, name kept, is an edit, not a second webhook.
        let mut edited = crm.clone();
        edited.enabled = false;
        store.put_webhook(&edited).await.unwrap();
        // A rename onto a taken name is refused; a rename frees the old name.
        let other = hook("Billing");
        store.put_webhook(&other).await.unwrap();
        let mut renamed = other.clone();
        renamed.name = "CRM".into();
        assert_eq!(
            taken_by(store.put_webhook(&renamed).await),
            Some(crm.id.clone())
        );
        let mut moved = edited.clone();
        moved.name = "CRM (old)".into();
        store.put_webhook(&moved).await.unwrap();
        store.put_webhook(&renamed).await.unwrap();
        // Deleting frees a name.
        store.delete_webhook(&moved.id).await.unwrap();
        store.put_webhook(&hook("CRM (old)")).await.unwrap();
    }
}
