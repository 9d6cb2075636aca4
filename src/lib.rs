//! kacme: a Kubernetes operator that issues workload certificates over ACME from a private CA.
//!
//! Layers: [`api`] (the CRD types and the condition vocabulary); pure logic with no I/O in [`pki`],
//! [`decision`] (whether and when to issue), [`desired`] (the objects and status the reconcilers write) and
//! [`automatic`] (Certificates for Ingresses and workloads), [`cli`] (what the user commands show); adapters in [`acme`] (the ACME engine),
//! [`controller`] (the reconcilers), [`webhook`], [`solver`] and [`endpoints`], which serve HTTP through
//! [`http_server`]; [`gateway_api`] holds the few Gateway API types kacme uses; [`liveness`] tells whether the reconcile loops make progress; [`kube_errors`] classifies Kubernetes API errors in one place.
#![forbid(unsafe_code)]

pub mod acme;
pub mod api;
pub mod automatic;
pub mod cli;
pub mod controller;
pub mod decision;
pub mod desired;
pub mod endpoints;
pub mod gateway_api;
pub mod http_server;
pub mod issuer_policy;
pub mod kube_errors;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod pki;
pub mod pod_certificate;
pub mod shutdown;
pub mod solver;
#[cfg(test)]
pub(crate) mod testing;
pub mod webhook;
