//! The embedded broker of `kivihook dev`: queues in memory with the delivery semantics the
//! roles rely on (prefetch, ack, requeue, dead-lettering). Nothing survives a restart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{Acker, Broker, BrokerError, Delivery, DeliveryStream, OutboundMessage, Queue};

struct Message {
    body: Vec<u8>,
    registry_version: u64,
    first_publish: bool,
    redelivered: bool,
}

#[derive(Default)]
struct QueueInner {
    ready: Mutex<VecDeque<Message>>,
    notify: Notify,
    consumers: Mutex<u32>,
}

impl QueueInner {
    fn push(&self, m: Message, front: bool) {
        {
            let mut q = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            if front {
                q.push_front(m);
            } else {
                q.push_back(m);
            }
        }
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Message> {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

/// In-memory queues for first attempts, retries and dead letters.
#[derive(Default)]
pub struct MemoryBroker {
    deliveries: Arc<QueueInner>,
    retries: Arc<QueueInner>,
    dead: Arc<QueueInner>,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self, q: Queue) -> &Arc<QueueInner> {
        match q {
            Queue::Deliveries => &self.deliveries,
            Queue::Retries => &self.retries,
        }
    }

    /// Messages dead-lettered (unparseable), for tests and the dev console.
    pub fn dead_letters(&self) -> usize {
        self.dead
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

struct MemoryAcker {
    queue: Arc<QueueInner>,
    dead: Arc<QueueInner>,
    message: Mutex<Option<Message>>,
    _permit: OwnedSemaphorePermit,
}

impl MemoryAcker {
    fn take(&self) -> Option<Message> {
        self.message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.take();
        Ok(())
    }

    async fn requeue(&self) -> Result<(), BrokerError> {
        if let Some(mut m) = self.take() {
            m.redelivered = true;
            self.queue.push(m, true);
        }
        Ok(())
    }

    async fn dead_letter(&self) -> Result<(), BrokerError> {
        if let Some(m) = self.take() {
            self.dead.push(m, false);
        }
        Ok(())
    }
}

impl Drop for MemoryAcker {
    /// A delivery dropped unsettled (its task died) goes back, as with a lost connection.
    fn drop(&mut self) {
        if let Some(mut m) = self.take() {
            m.redelivered = true;
            self.queue.push(m, true);
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, msg: &OutboundMessage) -> Result<(), BrokerError> {
        self.queue(msg.queue).push(
            Message {
                body: msg.body.clone(),
                registry_version: msg.registry_version,
                first_publish: msg.first_publish,
                redelivered: false,
            },
            false,
        );
        Ok(())
    }

    async fn consume(
        &self,
        queue: Queue,
        _tag: &str,
        prefetch: u16,
    ) -> Result<DeliveryStream, BrokerError> {
        let q = self.queue(queue).clone();
        let dead = self.dead.clone();
        *q.consumers.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let permits = Arc::new(Semaphore::new(prefetch.max(1) as usize));
        let stream = futures::stream::unfold((q, dead, permits), |(q, dead, permits)| async move {
            let permit = permits.clone().acquire_owned().await.ok()?;
            // A push that lands between `pop` and the wait leaves a permit in `notify`.
            let m = loop {
                let notified = q.notify.notified();
                if let Some(m) = q.pop() {
                    break m;
                }
                notified.await;
            };
            let delivery = Delivery {
                body: m.body.clone(),
                redelivered: m.redelivered,
                registry_version: m.registry_version,
                first_publish: m.first_publish,
                acker: Box::new(MemoryAcker {
                    queue: q.clone(),
                    dead: dead.clone(),
                    message: Mutex::new(Some(m)),
                    _permit: permit,
                }),
            };
            Some((Ok(delivery), (q, dead, permits)))
        });
        Ok(stream.boxed())
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn queue_status(&self, queue: Queue) -> Result<(u32, u32), BrokerError> {
        let q = self.queue(queue);
        let depth = q.ready.lock().unwrap_or_else(|e| e.into_inner()).len() as u32;
        let consumers = *q.consumers.lock().unwrap_or_else(|e| e.into_inner());
        Ok((depth, consumers))
    }
}
