//! Per-Pod certificates whose private keys never leave the Pod (issue 18).
//!
//! A pod template annotated `kacme.dev/per-pod: "true"` (beside `kacme.dev/names` and an issuer) gets, from the
//! admission webhook, a native sidecar running `kacme agent` ([`sidecar`]). The agent generates the key in the
//! Pod, builds a CSR for the Pod's own names ([`names`]: `${POD_NAME}`, `${POD_NAMESPACE}`, `${POD_IP}`) and
//! sends only the CSR to the operator, authenticated by a projected ServiceAccount token bound to the Pod. The
//! operator checks the token with a TokenReview and reads the Pod ([`identity`]), checks the CSR against the
//! names that Pod may have and the issuer's policy ([`csr`]), runs the ACME order with the issuer's account and
//! the usual HTTP-01 solvers, and answers with the chain. Nothing with the key reaches the apiserver.
//!
//! Pure parts: [`names`], [`csr`], [`identity`], [`sidecar`]. Adapters: [`endpoint`] (the operator side, on
//! the webhook's HTTPS server) and [`agent`] (the Pod side).

pub mod agent;
pub mod csr;
pub mod endpoint;
pub mod identity;
pub mod names;
pub mod sidecar;
pub mod solver;
