//! The consumer loops: take messages from a queue, many at once, and hand each to its own
//! task; reconnect with backoff when the connection is lost. First attempts and retries
//! are consumed apart, each with its own prefetch, so neither can starve the other.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use bytes::Bytes;
use futures::stream::FusedStream;
use futures::{FutureExt, StreamExt};
use tokio::task::JoinSet;

use kivihook_core::broker::{Acker, BrokerError, Delivery, DeliveryStream, Queue};
use kivihook_core::delivery::Job;
use kivihook_core::Shutdown;

use crate::fanout::{self, JobTarget};
use crate::gate::{self, Pass};
use crate::record::{self, Processed};
use crate::send;
use crate::target::Target;
use crate::Dispatcher;

/// Consume `queue` until shutdown, reconnecting whenever the broker connection is lost.
pub async fn run(d: Arc<Dispatcher>, queue: Queue, mut shutdown: Shutdown) {
    let prefetch = match queue {
        Queue::Deliveries => d.prefetch,
        Queue::Retries => d.retry_prefetch,
    };
    let name = match queue {
        Queue::Deliveries => "deliveries",
        Queue::Retries => "retries",
    };
    let tag = format!("{}-{name}", d.consumer_tag);
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    while !shutdown.is_triggered() {
        match d.broker.consume(queue, &tag, prefetch).await {
            Ok(stream) => {
                if connected_before {
                    d.metrics
                        .amqp_reconnects
                        .with_label_values(&["dispatcher"])
                        .inc();
                }
                connected_before = true;
                backoff = Duration::from_millis(100);
                tracing::info!(queue = name, prefetch, "consuming");
                consume(&d, queue, stream, shutdown.clone()).await;
                if !shutdown.is_triggered() {
                    tracing::warn!(queue = name, "lost the RabbitMQ consumer; reconnecting");
                }
            }
            Err(e) => {
                d.metrics
                    .amqp_errors
                    .with_label_values(&["dispatcher"])
                    .inc();
                tracing::warn!(queue = name, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot consume from RabbitMQ");
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn consume(
    d: &Arc<Dispatcher>,
    queue: Queue,
    mut stream: DeliveryStream,
    shutdown: Shutdown,
) {
    let mut tasks = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            item = stream.next() => match item {
                Some(Ok(delivery)) => {
                    tasks.spawn(guarded(d.clone(), queue, delivery, shutdown.clone()));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            },
        }
    }
    // Let in-flight deliveries finish and ack on the still-open connection; whatever was
    // prefetched but not started goes back to the queue when the stream is dropped.
    let grace = d.delivery_timeout + Duration::from_secs(5);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "in-flight deliveries did not finish in time; they will be redelivered"
        );
        tasks.abort_all();
    }
    drop(stream);
}

/// An acker that remembers whether its message was settled, so a task that panicked
/// before settling can be settled for it.
#[derive(Clone)]
struct Tracked {
    inner: Arc<dyn Acker>,
    settled: Arc<AtomicBool>,
}

#[async_trait]
impl Acker for Tracked {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.settled.store(true, Ordering::Release);
        self.inner.ack().await
    }

    async fn requeue(&self) -> Result<(), BrokerError> {
        self.settled.store(true, Ordering::Release);
        self.inner.requeue().await
    }

    async fn dead_letter(&self) -> Result<(), BrokerError> {
        self.settled.store(true, Ordering::Release);
        self.inner.dead_letter().await
    }
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Handle one message so that no panic can leave it unsettled: a panic inside one target's
/// attempt is that attempt's failure (see `attempt`); one anywhere else dead-letters the
/// message (retrying it would panic again), counted and logged.
async fn guarded(d: Arc<Dispatcher>, queue: Queue, mut delivery: Delivery, shutdown: Shutdown) {
    let tracked = Tracked {
        inner: Arc::from(std::mem::replace(&mut delivery.acker, Box::new(Settled))),
        settled: Arc::new(AtomicBool::new(false)),
    };
    delivery.acker = Box::new(tracked.clone());
    let handled = match queue {
        Queue::Deliveries => {
            AssertUnwindSafe(handle_event(d.clone(), delivery, shutdown))
                .catch_unwind()
                .await
        }
        Queue::Retries => {
            AssertUnwindSafe(handle_job(d.clone(), delivery, shutdown))
                .catch_unwind()
                .await
        }
    };
    if let Err(panic) = handled {
        d.metrics.delivery_panics.inc();
        let settled = tracked.settled.load(Ordering::Acquire);
        tracing::error!(
            panic = panic_message(panic.as_ref()),
            settled,
            "handling a message panicked; sending it to the dead-letter queue"
        );
        if !settled {
            if let Err(e) = tracked.inner.dead_letter().await {
                tracing::warn!(error = %e, "could not dead-letter the message; it will be redelivered");
            }
        }
    }
}

/// A placeholder acker, never used: it stands in while the real one is moved.
struct Settled;

#[async_trait]
impl Acker for Settled {
    async fn ack(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn requeue(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn dead_letter(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// A message that cannot be parsed goes to the dead-letter queue, counted, never retried.
async fn poison(d: &Dispatcher, acker: Box<dyn Acker>, bytes: usize, error: &serde_json::Error) {
    d.metrics.poison_messages.inc();
    tracing::error!(error = %error, bytes, "unparseable message: sending it to the dead-letter queue");
    if let Err(e) = acker.dead_letter().await {
        tracing::warn!(error = %e, "could not dead-letter the message; it will be redelivered");
    }
}

/// A message of new events (one, or several of one type): fan each out, send to every
/// target at once, record, ack once every target of every event is settled.
async fn handle_event(d: Arc<Dispatcher>, delivery: Delivery, mut shutdown: Shutdown) {
    let body = Bytes::from(delivery.body);
    let events = match parse_events(&body) {
        Ok(e) => e,
        Err(e) => return poison(&d, delivery.acker, body.len(), &e).await,
    };
    let Delivery {
        registry_version,
        acker,
        redelivered,
        first_publish,
        ..
    } = delivery;
    // Handed out for the first time, a message whose events were all claimed clean has no
    // target settled: nothing to read. Any other (a redelivery, a republished id, a message
    // from an ingest that does not say) is checked.
    let check_settled = redelivered || !first_publish;
    let Some(turns) = turns(&d.events_in_flight, d.prefetch, events.len(), &mut shutdown).await
    else {
        let _ = acker.requeue().await;
        return;
    };
    let ready = record::persist(&d, &mut shutdown, "load the webhook registry", || {
        d.registry.ensure(registry_version)
    })
    .await;
    let targets = match ready {
        Some(()) => {
            record::persist(&d, &mut shutdown, "read target states", || {
                futures::future::try_join_all(
                    events
                        .iter()
                        .map(|(event, body)| fanout::event_targets(&d, event, body, check_settled)),
                )
            })
            .await
        }
        None => None,
    };
    let Some(targets) = targets else {
        let _ = acker.requeue().await;
        return;
    };
    // Each event's count of targets, then each target with the index of its event.
    let left = targets.iter().map(Vec::len).collect();
    let found = targets
        .into_iter()
        .enumerate()
        .flat_map(|(i, ts)| ts.into_iter().map(move |t| Found::Attempt(i, t)));
    let recorded = attempt_and_record(
        &d,
        futures::stream::iter(found),
        left,
        turns,
        gate::Origin::Event,
        &shutdown,
    )
    .await;
    record::ack_if(recorded, acker).await;
}

/// One turn in `budget` (of `size` in all) for each of a message's `n` events (or jobs);
/// `None` if shutdown came first. What is in flight is bounded, not messages: a message of
/// fifty takes fifty turns and gives each back as soon as that one's attempts are over, so a
/// hung request holds one turn, never its whole message's. A message larger than the whole
/// budget takes all of it.
async fn turns(
    budget: &Arc<tokio::sync::Semaphore>,
    size: u16,
    n: usize,
    shutdown: &mut Shutdown,
) -> Option<Vec<gate::Turn>> {
    let wanted = n.min(usize::from(size)) as u32;
    let mut all = tokio::select! {
        permit = budget.clone().acquire_many_owned(wanted) => permit.ok()?,
        _ = shutdown.wait() => return None,
    };
    Some((0..n).map(|_| gate::Turn::new(all.split(1))).collect())
}

/// Results recorded together at most: a message's targets are recorded in groups while the
/// rest are still in flight, so a crash repeats only what was not recorded yet.
const RECORD_GROUP: usize = 64;
/// How long a finished target's result waits for others to be recorded with it.
const RECORD_WAIT: Duration = Duration::from_millis(50);

/// What `attempt_and_record` is handed for event (or job) `i`, as it becomes known.
enum Found {
    /// A target to attempt.
    Attempt(usize, Target),
    /// One of `i`'s targets needs no attempt: a result to record (a disabled webhook's dead
    /// letter), or nothing (a stale job).
    Settled(usize, Option<Box<Processed>>),
    /// Shutdown came before `i`'s target was known: the message is handed back once what is
    /// in flight is recorded.
    Interrupted(usize),
}

/// Send to every target as soon as it is found and record the results as they come: all
/// together when they finish close together (one event's fan-out), else in groups, each as
/// soon as the one before it is recorded and `RECORD_GROUP` results are in or the oldest has
/// waited `RECORD_WAIT`. A message of many events (or jobs) thus never holds finished
/// deliveries unrecorded behind its slowest one, nor unsent behind one whose target is slow
/// to read. False when shutdown interrupted a recording or a read: the message is then handed
/// back, and what was recorded is skipped when it comes again.
/// `left[i]` is how many targets event (or job) `i` has, and `turns[i]` its turn in the
/// dispatcher's budget, given back once its last target is settled (at once for one without
/// targets).
async fn attempt_and_record(
    d: &Dispatcher,
    found: impl futures::Stream<Item = Found>,
    left: Vec<usize>,
    turns: Vec<gate::Turn>,
    from: gate::Origin,
    shutdown: &Shutdown,
) -> bool {
    for (turn, _) in turns.iter().zip(&left).filter(|(_, n)| **n == 0) {
        turn.give_back();
    }
    let mut found = std::pin::pin!(found.fuse());
    let send = |i: usize, t: Target| {
        let turn = &turns[i];
        async move { (i, attempt(d, &t, from, turn).await) }
    };
    let mut attempts = futures::stream::FuturesUnordered::new();
    let mut settling = Settling {
        left,
        turns: &turns,
        ready: Vec::new(),
        oldest: tokio::time::Instant::now(),
        interrupted: false,
    };
    let mut recording: Option<futures::future::BoxFuture<'_, bool>> = None;
    loop {
        // Whatever is found already goes at once (every target of a message of events).
        while !found.is_terminated() {
            match found.next().now_or_never() {
                Some(Some(f)) => {
                    if let Some((i, t)) = settling.take(f) {
                        attempts.push(send(i, t));
                    }
                }
                _ => break,
            }
        }
        let all_in = found.is_terminated() && attempts.is_empty();
        let ready = &mut settling.ready;
        if recording.is_none()
            && !ready.is_empty()
            && (all_in || ready.len() >= RECORD_GROUP || settling.oldest.elapsed() >= RECORD_WAIT)
        {
            let group = std::mem::take(ready);
            let mut shutdown = shutdown.clone();
            recording = Some(Box::pin(async move {
                record::record(d, &mut shutdown, group).await
            }));
        }
        if all_in && recording.is_none() && settling.ready.is_empty() {
            return !settling.interrupted;
        }
        let waiting = recording.is_none() && !settling.ready.is_empty();
        tokio::select! {
            Some(f) = found.next(), if !found.is_terminated() => {
                if let Some((i, t)) = settling.take(f) {
                    attempts.push(send(i, t));
                }
            }
            Some((i, p)) = attempts.next(), if !attempts.is_empty() => settling.settled(i, Some(p)),
            recorded = async { recording.as_mut().expect("guarded").await }, if recording.is_some() => {
                recording = None;
                if !recorded {
                    return false;
                }
            }
            _ = tokio::time::sleep_until(settling.oldest + RECORD_WAIT), if waiting => {}
            // The stream of what is found ended with nothing else to wait for.
            else => {}
        }
    }
}

/// What `attempt_and_record` keeps of a message's targets as they settle.
struct Settling<'t> {
    /// Targets not settled yet, per event (or job).
    left: Vec<usize>,
    turns: &'t [gate::Turn],
    /// Results waiting to be recorded, the oldest since `oldest`.
    ready: Vec<Processed>,
    oldest: tokio::time::Instant,
    interrupted: bool,
}

impl Settling<'_> {
    /// One target of `i` settled, with its result if it has one.
    fn settled(&mut self, i: usize, p: Option<Processed>) {
        self.left[i] -= 1;
        if self.left[i] == 0 {
            self.turns[i].give_back();
        }
        if let Some(p) = p {
            if self.ready.is_empty() {
                self.oldest = tokio::time::Instant::now();
            }
            self.ready.push(p);
        }
    }

    /// What was found: a target to attempt is handed back to be sent, the rest is settled.
    fn take(&mut self, found: Found) -> Option<(usize, Target)> {
        match found {
            Found::Attempt(i, t) => return Some((i, t)),
            Found::Settled(i, p) => self.settled(i, p.map(|p| *p)),
            Found::Interrupted(i) => {
                self.interrupted = true;
                self.settled(i, None);
            }
        }
        None
    }
}

/// The events of a message, each with its envelope as it came (a slice of the body).
fn parse_events(body: &Bytes) -> Result<Vec<(fanout::EventHead, Bytes)>, serde_json::Error> {
    kivihook_core::broker::events::decode(body)?
        .into_iter()
        .map(|envelope| Ok((serde_json::from_slice(&envelope)?, envelope)))
        .collect()
}

/// How long a retry job whose target's state does not point at it yet is read again before
/// it counts as stale: longer than the one `record` round trip (a cluster client rebuilt,
/// then a response timeout) that may separate a job's write from its state's. A record that
/// fails instead is retried, and its retry writes the job again, so that copy comes back.
const JOB_STATE_WAIT: Duration = Duration::from_secs(30);

/// A message of retry or manual jobs (one, or several of one webhook): check that each is
/// still current, send each that is, record the results as they come, and ack once every
/// job in it is settled.
async fn handle_job(d: Arc<Dispatcher>, delivery: Delivery, mut shutdown: Shutdown) {
    let jobs = match kivihook_core::broker::jobs::decode(&delivery.body) {
        Ok(j) => j,
        Err(e) => return poison(&d, delivery.acker, delivery.body.len(), &e).await,
    };
    let acker = delivery.acker;
    let Some(turns) = turns(
        &d.jobs_in_flight,
        d.retry_prefetch,
        jobs.len(),
        &mut shutdown,
    )
    .await
    else {
        let _ = acker.requeue().await;
        return;
    };
    // Each job goes as soon as its target is read: one whose state is slow to come (see
    // `JOB_STATE_WAIT`) holds back only itself, not the rest of its message.
    let left = vec![1; jobs.len()];
    let found: futures::stream::FuturesUnordered<_> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| {
            let d = &d;
            let shutdown = shutdown.clone();
            async move {
                match job_target(d, job, shutdown).await {
                    // Shutdown came first (`job_target` reads `NotYet` again until it is
                    // something else).
                    None | Some(JobTarget::NotYet) => Found::Interrupted(i),
                    Some(JobTarget::Skip(_)) => {
                        d.metrics.stale_jobs.inc();
                        Found::Settled(i, None)
                    }
                    Some(JobTarget::Disabled(t)) => {
                        let dead = record::refused(&t, "the webhook is disabled");
                        Found::Settled(i, Some(Box::new(dead)))
                    }
                    Some(JobTarget::Run(t)) => Found::Attempt(i, t),
                }
            }
        })
        .collect();
    let recorded = attempt_and_record(&d, found, left, turns, gate::Origin::Job, &shutdown).await;
    record::ack_if(recorded, acker).await;
}

/// What a job is to do: read its target until its state is there (see `JOB_STATE_WAIT`);
/// `None` if shutdown came first.
async fn job_target(d: &Dispatcher, job: Job, mut shutdown: Shutdown) -> Option<JobTarget> {
    let arrived = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let target = record::persist(d, &mut shutdown, "read the job's target", || {
            fanout::job_target(d, job.clone())
        })
        .await;
        match target {
            Some(JobTarget::NotYet) if arrived.elapsed() < JOB_STATE_WAIT => {}
            Some(JobTarget::NotYet) => return skip(&job, "target moved on"),
            Some(JobTarget::Skip(why)) => return skip(&job, why),
            // Shutdown (`None`), or what the job is to do.
            other => return other,
        }
        tokio::select! {
            _ = shutdown.wait() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

fn skip(job: &Job, why: &'static str) -> Option<JobTarget> {
    tracing::debug!(job_id = %job.id, why, "skipping a job");
    Some(JobTarget::Skip(why))
}

/// One target through the gate and, if it may go, out over HTTP.
async fn attempt(
    d: &Dispatcher,
    target: &Target,
    from: gate::Origin,
    turn: &gate::Turn,
) -> Processed {
    let permit = match gate::check(d, &target.webhook, target.rate_reserved, from, turn).await {
        Pass::Go(permit) => permit,
        Pass::Later {
            until,
            reason,
            reserved,
        } => {
            d.metrics.deferrals.with_label_values(&[reason]).inc();
            tracing::debug!(event_id = %target.event_id, webhook_id = %target.webhook.id, reason, "delivery put off");
            return record::deferred(target, until, reserved);
        }
    };
    let started = Instant::now();
    let in_flight = InFlight::new(d);
    let result = match AssertUnwindSafe(send::send(&d.clients, target))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => {
            // A bug, not the receiver's fault: this target's attempt failed and is retried on
            // its schedule; the event's other targets go on as usual.
            d.metrics.delivery_panics.inc();
            tracing::error!(
                event_id = %target.event_id,
                webhook_id = %target.webhook.id,
                panic = panic_message(panic.as_ref()),
                "an attempt panicked; recording it as failed"
            );
            send::Attempt::failed(send::ErrorKind::Internal, "internal error".into(), started)
        }
    };
    drop(in_flight);
    if result.error_kind == Some(send::ErrorKind::Timeout) {
        permit.timed_out();
    } else {
        drop(permit);
    }
    observe(d, target, &result);
    record::after_attempt(d, target, result)
}

/// Counts a delivery in flight for as long as it lives, panic or not.
struct InFlight<'a>(&'a Dispatcher);

impl<'a> InFlight<'a> {
    fn new(d: &'a Dispatcher) -> Self {
        d.metrics.deliveries_in_flight.inc();
        Self(d)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.deliveries_in_flight.dec();
    }
}

fn observe(d: &Dispatcher, target: &Target, attempt: &send::Attempt) {
    let outcome = if attempt.succeeded() {
        "success"
    } else {
        "failed"
    };
    d.metrics.deliveries.with_label_values(&[outcome]).inc();
    d.metrics
        .delivery_duration
        .with_label_values(&[outcome])
        .observe(attempt.duration.as_secs_f64());
    if attempt.succeeded() {
        if let Some(received) = target.received_at {
            let latency = (chrono::Utc::now() - received).to_std().unwrap_or_default();
            d.metrics.event_to_delivery.observe(latency.as_secs_f64());
        }
        tracing::debug!(event_id = %target.event_id, webhook_id = %target.webhook.id, attempt = target.attempt, status = attempt.status, "delivered");
    } else {
        if d.metrics_webhook_labels {
            d.metrics
                .webhook_failures
                .with_label_values(&[target.webhook.id.as_str()])
                .inc();
        }
        tracing::warn!(
            event_id = %target.event_id,
            webhook_id = %target.webhook.id,
            attempt = target.attempt,
            status = attempt.status,
            error = %attempt.describe(),
            "delivery failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_with_its_message() {
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "boom 7");
        let caught = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "plain");
    }
}
