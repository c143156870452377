//! Graceful shutdown, passed to every long-running task.
//!
//! One `watch` channel carries a single transition, `false` → `true`. A watch receiver only
//! ever sees the latest value, so a task that starts listening late still sees the signal,
//! and there is no lag error to handle as there would be with a broadcast channel.

use tokio::sync::watch;

/// Handed to every task; resolves `wait()` once shutdown has been requested.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Owned by whoever decides that the process stops (signal handler, tests).
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A connected trigger and listener.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Ask every task to stop. Idempotent.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// A listener for tasks started after the trigger was created.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Whether shutdown has been requested.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has been requested (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped: nobody can ask any more, so stop too.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends before it kills a pod).
pub async fn os_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_listener_still_sees_the_signal() {
        let (trigger, shutdown) = channel();
        trigger.trigger();
        let mut late = shutdown.clone();
        tokio::time::timeout(std::time::Duration::from_secs(1), late.wait())
            .await
            .expect("shutdown seen");
        assert!(late.is_triggered());
    }
}
