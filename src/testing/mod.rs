//! Test support shared by the modules of the crate: an in-memory apiserver behind [`kube::Client`].

pub(crate) mod fake_apiserver;

pub(crate) use fake_apiserver::FakeApiserver;
