//! One bad object costs that object only: a panic anywhere in one reconcile (the reconciler's own code, a
//! parser, the ACME client) becomes an error of that object, retried with backoff, while every other
//! object goes on. Without this, a panic would unwind through the controller's stream and stop every
//! reconciler of the process, on every replica that reads the same object.

use super::ReconcileError;
use futures::FutureExt;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// Runs `work`, turning a panic into [`ReconcileError::Panicked`].
pub(crate) async fn isolated<T>(work: impl Future<Output = Result<T, ReconcileError>>) -> Result<T, ReconcileError> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(ReconcileError::Panicked(panic_message(payload.as_ref()))),
    }
}

/// The message a panic was raised with, when it has one.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn reconcile(name: &str) -> Result<String, ReconcileError> {
        if name == "poison" {
            let index: usize = name.len() + 10;
            let bytes = name.as_bytes();
            // An out-of-bounds index, as a parser bug would do on hostile input.
            return Ok(format!("{}", bytes[index]));
        }
        Ok(format!("{name} done"))
    }

    #[tokio::test]
    async fn a_panic_in_one_reconcile_is_an_error_of_that_object_and_the_others_go_on() {
        let mut results = Vec::new();
        for name in ["a", "poison", "b"] {
            results.push(isolated(reconcile(name)).await);
        }
        assert_eq!(results[0].as_deref().ok(), Some("a done"));
        let error = results[1].as_ref().expect_err("the panic is an error");
        assert!(
            matches!(error, ReconcileError::Panicked(message) if message.contains("index out of bounds")),
            "{error}"
        );
        assert_eq!(error.metric_label(), "panic");
        assert_eq!(results[2].as_deref().ok(), Some("b done"));
    }

    #[tokio::test]
    async fn a_panic_with_a_formatted_message_keeps_it() {
        let error = isolated(async {
            let object = "apps/web";
            if !object.is_empty() {
                panic!("cannot handle {object}");
            }
            Ok(())
        })
        .await
        .expect_err("the panic is an error");
        assert_eq!(error.to_string(), "the reconcile panicked: cannot handle apps/web (a bug: please report it)");
    }
}
