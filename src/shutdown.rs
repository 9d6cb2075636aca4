//! One stop signal for many tasks: the operator's endpoints, reconcilers and servers each wait on their
//! own copy of one signal.

use std::future::Future;
use tokio::sync::watch;

/// A stop signal that any number of tasks can wait for.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Stops every [`Shutdown`] made from it; also when dropped.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    /// A signal and the trigger that fires it.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger(sender), Shutdown(receiver))
    }

    /// A signal that fires when `event` completes.
    pub fn on(event: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            event.await;
            trigger.fire();
        });
        shutdown
    }

    /// Completes once the signal fired (or its trigger is gone).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut receiver = self.0.clone();
        async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }
}

impl ShutdownTrigger {
    /// Fires the signal.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_copy_stops_once_the_signal_fires_and_not_before() {
        let (trigger, shutdown) = Shutdown::new();
        let waiting = [shutdown.stopped(), shutdown.clone().stopped()];
        let early = tokio::time::timeout(Duration::from_millis(20), shutdown.stopped()).await;
        assert!(early.is_err(), "nothing stops before the signal");
        trigger.fire();
        for stopped in waiting {
            tokio::time::timeout(Duration::from_secs(1), stopped).await.expect("stopped after the signal");
        }
        let (event_tx, event_rx) = tokio::sync::oneshot::channel::<()>();
        let on_event = Shutdown::on(async move {
            let _ = event_rx.await;
        });
        drop(event_tx);
        tokio::time::timeout(Duration::from_secs(1), on_event.stopped()).await.expect("stopped after the event");
    }
}
