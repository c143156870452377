//! Endpoint health and isolation: may a request go to this webhook now?
//!
//! Three reasons to hold back, each turning the target into a job for later instead of
//! tying up the message: the webhook's circuit is open (it failed N times in a row), its
//! concurrency cap in this dispatcher is used up (a hung endpoint holds only its own
//! permits), or its shared rate limit has no token left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use kivihook_core::webhook::Webhook;

use crate::Dispatcher;

/// The answer of the gate.
pub enum Pass {
    /// Send now, holding this permit until the attempt is over.
    Go(OwnedSemaphorePermit),
    /// Not now: try again at this time.
    Later {
        until: DateTime<Utc>,
        reason: &'static str,
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

/// Circuits and concurrency caps of one dispatcher.
#[derive(Default)]
pub struct Gates {
    circuits: Mutex<HashMap<String, Circuit>>,
    permits: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
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

    fn semaphore(&self, webhook: &Webhook, default_cap: u32) -> Arc<Semaphore> {
        let cap = webhook.max_concurrency.unwrap_or(default_cap).max(1);
        let mut permits = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        match permits.get(&webhook.id) {
            Some((c, s)) if *c == cap => s.clone(),
            _ => {
                let s = Arc::new(Semaphore::new(cap as usize));
                permits.insert(webhook.id.clone(), (cap, s.clone()));
                s
            }
        }
    }
}

/// How long a target waits for a permit of its webhook before it is put off: long enough
/// for a healthy endpoint's requests to come back, short enough that a hung endpoint cannot
/// hold the message (and its prefetch slot) for long.
const PERMIT_WAIT: Duration = Duration::from_millis(25);
/// How long a target is put off when its webhook's cap stays used up.
const BUSY_DEFERRAL: Duration = Duration::from_secs(1);

/// Decide whether `webhook` may get a request now.
pub async fn check(d: &Dispatcher, webhook: &Webhook) -> Pass {
    if let Some(until) = d.gates.circuit_hold(webhook) {
        return Pass::Later {
            until,
            reason: "circuit_open",
        };
    }
    let semaphore = d.gates.semaphore(webhook, d.webhook_concurrency);
    let permit = match semaphore.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => match tokio::time::timeout(PERMIT_WAIT, semaphore.acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Pass::Later {
                    until: Utc::now() + BUSY_DEFERRAL,
                    reason: "concurrency",
                }
            }
        },
    };
    if let Some(rate) = webhook.rate_limit {
        let burst = rate.ceil().max(1.0) as u32;
        match d.store.take_token(&webhook.id, rate, burst).await {
            Ok(None) => {}
            Ok(Some(wait)) => {
                return Pass::Later {
                    until: Utc::now() + wait,
                    reason: "rate_limit",
                }
            }
            Err(e) => {
                // Without the shared bucket the limit cannot be honoured: hold back briefly.
                tracing::warn!(webhook_id = %webhook.id, error = %e, "rate-limit bucket unavailable");
                return Pass::Later {
                    until: Utc::now() + Duration::from_secs(1),
                    reason: "rate_limit",
                };
            }
        }
    }
    Pass::Go(permit)
}
