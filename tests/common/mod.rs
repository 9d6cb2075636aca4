//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod challenge_server;
pub mod helm;
pub mod operator_env;

/// Runs `body`, failing the test when it takes longer than `seconds`.
pub async fn within<T>(seconds: u64, body: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(seconds), body).await {
        Ok(value) => value,
        Err(_) => panic!("the test did not finish within {seconds}s"),
    }
}
