//! Per-Pod certificates whose private keys never leave the Pod (issue 18).
//!
//! A pod template annotated `kacme.dev/per-pod: "true"` (beside `kacme.dev/names` and an issuer) gets, from the
//! admission webhook, a native sidecar running `kacme agent` ([`sidecar`]). The agent asks the operator for the
//! names its Pod may have ([`names`]: `${POD_NAME}`, `${POD_NAMESPACE}`, `${POD_IP}`, `${SERVICE_NAMES}` filled in
//! from the Pod as the apiserver has it), generates the key in the Pod, and sends only a CSR for those names to
//! the operator, every request authenticated by a projected ServiceAccount token bound to the Pod. The
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
