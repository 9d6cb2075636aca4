//! Certificates kacme creates by itself — for annotated Ingresses and annotated workloads — and the CA
//! bundle ConfigMaps. Pure functions of plain values: the reconcilers in `controller` (ingress, workload,
//! ca_bundle) and the admission webhook ([`crate::webhook`]) apply what these return.
//!
//! - [`annotations`]: the annotations and their parsing (errors name the annotation and the problem);
//! - [`certificate`]: the Certificate built for an Ingress or a workload, shared by both;
//! - [`ingress`]: the Certificates of an Ingress, one per `spec.tls[]` entry;
//! - [`gateway`]: the Certificates of a Gateway or XListenerSet, one per Secret its HTTPS listeners name;
//! - [`workload`]: the webhook's Pod patch, the workload name, and one Certificate per workload;
//! - [`ca_bundle`]: the CA bundle ConfigMaps of the selected namespaces.

#[cfg(test)]
mod annotation_properties;
pub mod annotations;
pub mod ca_bundle;
pub mod certificate;
pub mod gateway;
pub mod ingress;
pub mod workload;
#[cfg(test)]
mod workload_properties;
