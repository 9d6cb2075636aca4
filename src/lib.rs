//! kacme: a Kubernetes operator that issues workload certificates over ACME from a private CA.
//!
//! Layers: [`api`] (the CRD types), [`pki`] and [`decision`] (pure logic, no I/O), [`solver`] (the
//! HTTP-01 server of solver Pods).
#![forbid(unsafe_code)]

pub mod acme;
pub mod api;
pub mod automatic;
pub mod controller;
pub mod decision;
pub mod desired;
pub mod endpoints;
pub mod http_server;
pub mod kube_errors;
pub mod leader;
pub mod metrics;
pub mod pki;
pub mod solver;
#[cfg(test)]
pub(crate) mod testing;
pub mod webhook;
