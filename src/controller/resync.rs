//! The loop of reconcilers that compute everything and apply the difference (workloads, CA bundles),
//! woken by watch events.

use super::ReconcileError;
use std::future::Future;

/// Runs a "compute everything, apply the difference" loop: `pass` runs after each batch of `triggers`
/// (coalesced for `debounce`), again after `retry` when it failed, and at least every `resync`.
pub(crate) async fn resync_loop<F, Fut>(
    name: &'static str,
    mut triggers: tokio::sync::mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()>,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ReconcileError>>,
{
    use std::time::Duration;
    let debounce = Duration::from_millis(200);
    let retry = Duration::from_secs(5);
    let resync = Duration::from_secs(300);
    tokio::pin!(shutdown);
    let mut wait = resync;
    loop {
        tokio::select! {
            trigger = triggers.recv() => {
                if trigger.is_none() {
                    break;
                }
                tokio::time::sleep(debounce).await;
                while triggers.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => break,
        }
        wait = match super::isolation::isolated(pass()).await {
            Ok(()) => resync,
            Err(error) => {
                tracing::warn!(%error, reconciler = name, "pass failed; retrying");
                retry
            }
        };
    }
}

/// A cache of the namespaces that `selector` (kubectl syntax) picks, metadata only, and the watch that fills it
/// (run it, for example with [`trigger_on`]).
pub(crate) fn selected_namespaces(
    client: &kube::Client,
    selector: &str,
) -> (
    kube::runtime::reflector::Store<kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>,
    impl futures::Stream<
        Item = Result<
            kube::runtime::watcher::Event<kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>,
            kube::runtime::watcher::Error,
        >,
    > + Send
    + 'static,
) {
    use kube::ResourceExt as _;
    use kube::runtime::WatchStreamExt as _;
    type Meta = kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>;
    let (store, writer) = kube::runtime::reflector::store::<Meta>();
    let stream = kube::runtime::reflector::reflector(
        writer,
        kube::runtime::watcher(
            kube::api::Api::<Meta>::all(client.clone()),
            kube::runtime::watcher::Config::default().labels(selector),
        )
        .modify(|ns| ns.managed_fields_mut().clear()),
    )
    .default_backoff();
    (store, stream)
}

/// Forwards every event of a watch stream as a trigger, and waits until the first list is in.
pub(crate) fn trigger_on<S, T>(stream: S, triggers: tokio::sync::mpsc::Sender<()>) -> impl Future<Output = ()> + Send
where
    S: futures::Stream<Item = Result<T, kube::runtime::watcher::Error>> + Send + 'static,
    T: Send,
{
    use futures::StreamExt;
    async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = &event {
                tracing::debug!(%error, "watch error");
            }
            let _ = triggers.try_send(());
        }
    }
}
