//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod challenge_server;
pub mod operator_env;
