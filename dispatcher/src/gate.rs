//! Endpoint health and isolation: may a request go to this webhook now?
//!
//! A target whose webhook is at its concurrency cap waits here for a permit while the
//! webhook is completing requests: healthy endpoints never detour through the retry
//! schedule. Four reasons to hold back, each turning the target into a job for later
//! instead of tying up the message: the webhook's circuit is open (or half-open with this
//! second's probes used), its cap stays used up with no request completing (a hung endpoint
//! holds only its own permits and the few targets that were already waiting), it is stalled
//! (nothing came back for a while and its last request timed out: only retries probe it,
//! and a new event's message never waits on it), or its shared rate limit has no token left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use kivihook_core::webhook::Webhook;

use crate::Dispatcher;

/// A request's slot in its webhook's concurrency cap; returning it counts as progress,
/// unless the request timed out (`timed_out`).
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    cap: Arc<Cap>,
    came_back: bool,
}

impl Permit {
    /// The request got no answer in time: the slot is free again, but the webhook made no
    /// progress (a hung endpoint's requests end this way, and must not make the targets
    /// behind them wait as if it were merely busy).
    pub fn timed_out(mut self) {
        self.came_back = false;
        self.cap
            .hung
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.came_back {
            self.cap
                .hung
                .store(false, std::sync::atomic::Ordering::Relaxed);
            self.cap.progressed();
        }
    }
}

/// The answer of the gate.
pub enum Pass {
    /// Send now, holding this permit until the attempt is over.
    Go(Permit),
    /// Not now: try again at this time.
    Later {
        until: DateTime<Utc>,
        reason: &'static str,
        /// The rate limit reserved `until` for this attempt: it goes then without a token.
        reserved: bool,
    },
}

/// An open circuit: the webhook version it was opened for (changing the webhook, say
/// enabling it again, closes it) and until when it holds every request back. After that it
/// is half-open: `HALF_OPEN_PACE` requests a second go through as probes; the first success
/// closes it, and `circuit_threshold` probe failures (with no success) open it again.
#[derive(Clone, Copy)]
struct Circuit {
    version: DateTime<Utc>,
    until: DateTime<Utc>,
    /// The second (Unix time) the probes below were let through in.
    probe_second: i64,
    probes_in_second: u32,
    probes_failed: u64,
}

/// Requests a second a half-open circuit lets through.
pub const HALF_OPEN_PACE: u32 = 2;

/// What a half-open circuit learned from an attempt.
pub enum Probe {
    /// No circuit, or one still fully open (a request that was already in flight).
    NotAProbe,
    /// The circuit closed on this success.
    Closed,
    /// A failed probe; the circuit stays half-open.
    Failed,
    /// Too many probes failed: the circuit is open again.
    Reopened,
}

/// One webhook's concurrency cap in this dispatcher, and when a request of it last came back
/// or started without waiting (or the cap was made): a webhook whose requests come back is
/// healthy, and a target waits for its turn; one whose requests all hang is not, and targets
/// do not queue for it.
pub struct Cap {
    limit: u32,
    semaphore: Arc<Semaphore>,
    started: std::time::Instant,
    /// Milliseconds after `started` of the last request that came back.
    last_progress_ms: std::sync::atomic::AtomicU64,
    /// Its last request to end timed out: a request that starts without waiting is then no
    /// sign of health (the slots were freed by timeouts, not answers).
    hung: std::sync::atomic::AtomicBool,
}

impl Cap {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            semaphore: Arc::new(Semaphore::new(limit as usize)),
            started: std::time::Instant::now(),
            last_progress_ms: std::sync::atomic::AtomicU64::new(0),
            hung: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn progressed(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_progress_ms
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Its last request to end timed out and none came back for `STALLED_AFTER`.
    fn is_stalled(&self) -> bool {
        self.hung.load(std::sync::atomic::Ordering::Relaxed) && self.stalled_for() >= STALLED_AFTER
    }

    /// How long since a request of this webhook came back (or the cap was made).
    fn stalled_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self
            .last_progress_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_millis(now.saturating_sub(last))
    }
}

/// Circuits and concurrency caps of one dispatcher.
#[derive(Default)]
pub struct Gates {
    circuits: Mutex<HashMap<String, Circuit>>,
    permits: Mutex<HashMap<String, Arc<Cap>>>,
}

impl Gates {
    /// `Some(time)`: hold the request back until then (open, or half-open with this
    /// second's probes used); `None`: it may go (no circuit, or as a half-open probe).
    fn circuit_hold(&self, webhook: &Webhook) -> Option<DateTime<Utc>> {
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let c = circuits.get_mut(&webhook.id)?;
        if c.version != webhook.updated_at {
            circuits.remove(&webhook.id);
            return None;
        }
        let now = Utc::now();
        if now < c.until {
            return Some(c.until);
        }
        let second = now.timestamp();
        if c.probe_second != second {
            c.probe_second = second;
            c.probes_in_second = 0;
        }
        if c.probes_in_second < HALF_OPEN_PACE {
            c.probes_in_second += 1;
            return None;
        }
        chrono::DateTime::from_timestamp(second + 1, 0)
    }

    /// Open a webhook's circuit until `until`.
    pub fn open_circuit(&self, webhook: &Webhook, until: DateTime<Utc>) -> usize {
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.insert(
            webhook.id.clone(),
            Circuit {
                version: webhook.updated_at,
                until,
                probe_second: 0,
                probes_in_second: 0,
                probes_failed: 0,
            },
        );
        circuits.len()
    }

    /// Whether the webhook has a circuit (open or half-open).
    pub fn has_circuit(&self, webhook: &Webhook) -> bool {
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits
            .get(&webhook.id)
            .is_some_and(|c| c.version == webhook.updated_at)
    }

    /// Tell a half-open circuit how an attempt went: a success closes it; `threshold`
    /// failures reopen it until `reopen_until`.
    pub fn probe_result(
        &self,
        webhook: &Webhook,
        success: bool,
        threshold: u64,
        reopen_until: DateTime<Utc>,
    ) -> Probe {
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = circuits.get_mut(&webhook.id) else {
            return Probe::NotAProbe;
        };
        if Utc::now() < c.until {
            return Probe::NotAProbe;
        }
        if success {
            circuits.remove(&webhook.id);
            return Probe::Closed;
        }
        c.probes_failed += 1;
        if c.probes_failed >= threshold.max(1) {
            c.until = reopen_until;
            c.probes_failed = 0;
            return Probe::Reopened;
        }
        Probe::Failed
    }

    /// Circuits open or half-open.
    pub fn open_circuits(&self) -> usize {
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.len()
    }

    fn cap(&self, webhook: &Webhook, default_cap: u32) -> Arc<Cap> {
        let limit = webhook.max_concurrency.unwrap_or(default_cap).max(1);
        let mut permits = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        match permits.get(&webhook.id) {
            Some(c) if c.limit == limit => c.clone(),
            _ => {
                let c = Arc::new(Cap::new(limit));
                permits.insert(webhook.id.clone(), c.clone());
                c
            }
        }
    }
}

/// A webhook none of whose requests came back for this long is stalled (a hung endpoint):
/// targets stop waiting for it and are put off instead, so that it holds only its own
/// permits and never the dispatcher's prefetch.
const STALLED_AFTER: Duration = Duration::from_secs(1);
/// How often a waiting target looks again whether its webhook is stalled.
const WAIT_STEP: Duration = Duration::from_millis(200);
/// A target waiting for a slot of a webhook from which nothing came back for this long gives
/// its event's turn back (a webhook answering steadily keeps its waiters' turns).
const TURN_AFTER: Duration = Duration::from_millis(25);
/// How long a target is put off when its webhook's cap stays used up.
const BUSY_DEFERRAL: Duration = Duration::from_secs(1);
/// The longest a target of a stalled webhook is put off at once.
const STALLED_DEFERRAL_MAX: Duration = Duration::from_secs(60);

/// How long to put off a target whose webhook is at its cap: a second, or, for a stalled
/// webhook, as long as it has been stalled (up to a minute), so that a backlog behind a hung
/// endpoint comes back about twice per doubling of the stall, not every second.
fn busy_deferral(stalled_for: Duration) -> Duration {
    if stalled_for >= STALLED_AFTER {
        stalled_for.clamp(BUSY_DEFERRAL, STALLED_DEFERRAL_MAX)
    } else {
        BUSY_DEFERRAL
    }
}

/// An event's turn in the dispatcher's budget of events in flight (none for a job), held
/// until its attempts are over or one of them waits on a webhook that does not answer.
#[derive(Default)]
pub struct Turn(Mutex<Option<tokio::sync::OwnedSemaphorePermit>>);

impl Turn {
    pub fn new(permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        Self(Mutex::new(permit))
    }

    /// Give the turn back (once; later calls do nothing).
    pub fn give_back(&self) {
        drop(self.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// Who asks the gate: a new event's message or a retry (or manual) job.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Origin {
    /// A first attempt, from the deliveries queue: its message waits for every target, so it
    /// must not send to a stalled webhook (the request would hold the message, and every
    /// acknowledgement behind it, until it times out).
    Event,
    /// A job from the retries queue, free to probe a stalled webhook: a message of jobs holds
    /// one webhook's only, so a probe that hangs holds back no other webhook's acks.
    Job,
}

/// Decide whether `webhook` may get a request now.
///
/// `turn` is the event's turn in the dispatcher's budget: a target waiting for a slot of a
/// webhook from which nothing came back for `TURN_AFTER` gives it back, so that targets
/// waiting on one webhook (a hung one, before it counts as stalled) do not stop the
/// dispatcher from taking the events behind them; targets of a webhook that answers keep it.
pub async fn check(
    d: &Dispatcher,
    webhook: &Webhook,
    rate_reserved: bool,
    from: Origin,
    turn: &Turn,
) -> Pass {
    if let Some(until) = d.gates.circuit_hold(webhook) {
        return Pass::Later {
            until,
            reason: "circuit_open",
            reserved: false,
        };
    }
    let cap = d.gates.cap(webhook, d.webhook_concurrency);
    if from == Origin::Event && cap.is_stalled() {
        // Known hung: its slots were freed by timeouts, and a request now would most likely
        // time out too. The target is put off for as long as the stall has lasted; the retries
        // that come back probe the webhook, and its first answer lets new events through again.
        return Pass::Later {
            until: Utc::now() + busy_deferral(cap.stalled_for()),
            reason: "stalled",
            reserved: false,
        };
    }
    let permit = match cap.semaphore.clone().try_acquire_owned() {
        Ok(p) => {
            // A request starting without a wait is progress too: after a quiet spell (no
            // request came back for long, as none was sent), the burst that fills the cap
            // must not look stalled to the targets behind it. Not after timeouts: those
            // freed the slots, and the targets behind must not wait for the next ones.
            if !cap.hung.load(std::sync::atomic::Ordering::Relaxed) {
                cap.progressed();
            }
            p
        }
        Err(_) => {
            // At its cap: wait for a turn while its requests come back, at most as long as a
            // request may take; a stalled webhook's targets are put off instead.
            let deadline = tokio::time::Instant::now() + d.delivery_timeout;
            // One place in the queue for the whole wait (first come, first served); the
            // timer only wakes the target to look at the webhook.
            let acquire = cap.semaphore.clone().acquire_owned();
            tokio::pin!(acquire);
            let mut step = TURN_AFTER;
            let acquired = loop {
                let now = tokio::time::Instant::now();
                if cap.stalled_for() >= STALLED_AFTER || now >= deadline {
                    break None;
                }
                tokio::select! {
                    p = &mut acquire => break p.ok(),
                    _ = tokio::time::sleep(step.min(deadline - now)) => {}
                }
                if cap.stalled_for() >= TURN_AFTER {
                    // Nothing came back for a while: give the event's turn back, so the
                    // events behind it go on while this one waits.
                    turn.give_back();
                }
                step = WAIT_STEP;
            };
            match acquired {
                Some(p) => p,
                None => {
                    let wait = busy_deferral(cap.stalled_for());
                    return Pass::Later {
                        until: Utc::now() + wait,
                        reason: "concurrency",
                        reserved: false,
                    };
                }
            }
        }
    };
    if let Some(rate) = webhook.rate_limit.filter(|_| !rate_reserved) {
        let burst = rate.ceil().max(1.0) as u32;
        match d.store.take_token(&webhook.id, rate, burst).await {
            Ok(None) => {}
            Ok(Some(wait)) => {
                // The bucket reserved the slot at `wait`: come back then and go.
                return Pass::Later {
                    until: Utc::now() + wait,
                    reason: "rate_limit",
                    reserved: true,
                };
            }
            Err(e) => {
                // Without the shared bucket the limit cannot be honoured: hold back briefly.
                tracing::warn!(webhook_id = %webhook.id, error = %e, "rate-limit bucket unavailable");
                return Pass::Later {
                    until: Utc::now() + Duration::from_secs(1),
                    reason: "rate_limit",
                    reserved: false,
                };
            }
        }
    }
    // Wrapped only now: a permit given back unused (rate limited) is not progress.
    Pass::Go(Permit {
        _permit: permit,
        cap,
        came_back: true,
    })
}
