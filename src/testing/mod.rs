//! Test support shared by the modules of the crate: an in-memory apiserver behind [`kube::Client`], and the
//! configuration and inputs of the property tests.

pub(crate) mod fake_apiserver;
pub(crate) mod properties;

pub(crate) use fake_apiserver::FakeApiserver;
