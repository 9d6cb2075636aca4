//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod challenge_server;
pub mod helm;
pub mod operator_env;
