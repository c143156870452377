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
/// enabling it again, closes it) and when it closes by itself.
#[derive(Clone, Copy)]
struct Circuit {
    version: DateTime<Utc>,
    until: DateTime<Utc>,
}

/// Circuits and concurrency caps of one dispatcher.
#[derive(Default)]
pub struct Gates {
    circuits: Mutex<HashMap<String, Circuit>>,
    permits: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
}

impl Gates {
    fn circuit_open_until(&self, webhook: &Webhook) -> Option<DateTime<Utc>> {
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let c = circuits.get(&webhook.id)?;
        (c.version == webhook.updated_at && c.until > Utc::now()).then_some(c.until)
    }

    /// Open a webhook's circuit until `until`.
    pub fn open_circuit(&self, webhook: &Webhook, until: DateTime<Utc>) -> usize {
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        circuits.retain(|_, c| c.until > now);
        circuits.insert(
            webhook.id.clone(),
            Circuit {
                version: webhook.updated_at,
                until,
            },
        );
        circuits.len()
    }

    pub fn open_circuits(&self) -> usize {
        let now = Utc::now();
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.values().filter(|c| c.until > now).count()
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
    if let Some(until) = d.gates.circuit_open_until(webhook) {
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
