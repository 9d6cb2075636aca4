//! Real test infrastructure for kacme, on loopback only: no mocks where a real component runs here.
//!
//! - [`ControlPlane`]: etcd + kube-apiserver + kube-controller-manager, a kubeconfig in a temp dir, CRD
//!   installation, `kubectl`.
//! - [`Pebble`] and [`StepCa`]: real ACME CAs, each with a [`ChallTestSrv`] as DNS that resolves every name
//!   to the environment's [`LoopbackAddress`].
//! - [`HostileAcme`]: a misbehaving ACME server in front of a real Pebble, for hostile-CA tests.
//! - [`SolverStandIn`]: the kubelet and ingress controller for solver Pods, serving HTTP where the CA dials.
//! - [`write_image_archive`] and [`kacme_image`], [`pause_image`], [`tls_probe_image`]: docker-archive
//!   images for the real node, written from local binaries (no Docker engine, no registry).
//! - [`Node`]: a real node (containerd, kubelet, kube-proxy, Pod networking on a bridge) with its own
//!   control plane; one per machine, as root (see `tests/env/README.md`).
//!
//! Every component is stopped when its value is dropped (also when a test panics): child processes are
//! killed and reaped, temp dirs removed. If the test process itself is killed, `setpriv --pdeathsig` makes
//! the kernel kill its children, and the next run removes the temp dirs left behind. The binaries come from the cache that `tests/env/install` fills
//! (see [`Binaries`]). Each environment gets its own loopback address so that tests can run in parallel.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use kacme_testenv::{ControlPlane, Pebble, PebbleOptions, SolverStandIn};
//! // In a root integration test: concat!(env!("CARGO_MANIFEST_DIR"), "/crds").
//! let control_plane = ControlPlane::start_with_crds("crds").await?;
//! let pebble = Pebble::start(PebbleOptions::default()).await?;
//! let kacme = "target/debug/kacme"; // in a root integration test: env!("CARGO_BIN_EXE_kacme")
//! let stand_in = SolverStandIn::start(control_plane.client().await?, kacme, pebble.http01_addr()).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod audit;
mod binaries;
mod containerd;
mod control_plane;
mod counts;
mod dns;
pub mod host;
mod hostile;
mod https;
mod image;
mod loopback;
mod node;
mod pebble;
mod pki;
mod proc_stats;
mod process;
mod stand_in;
mod step_ca;

pub use audit::{ApiRequest, AuditReader, count_by, is_write_verb};
pub use binaries::Binaries;
pub use containerd::{Containerd, SHIM_SOCKET_DIR};
pub use control_plane::{ControlPlane, ControlPlaneOptions, FIELD_MANAGER, KUBERNETES_SERVICE_IP, NodeAccess};
pub use counts::{acme_request_counts, cert_manager_acme_request_counts, count_growth};
pub use dns::{ChallTestSrv, resolve_a};
pub use hostile::{HostileAcme, HostileBehaviour, HostileHandle};
pub use https::{HttpsClient, HttpsResponse, error_chain};
pub use image::{
    DOCKERFILE_BASE_IMAGE, DockerfileStage, ImageArchive, ImageConfig, ImageSpec, KACME_IMAGE_REPOSITORY, LayerEntry,
    PAUSE_IMAGE, ReadImage, TLS_PROBE_IMAGE, kacme_image, parse_dockerfile_final_stage, parse_ldd_output, pause_image,
    read_image_archive, shared_libraries, tls_probe_image, write_image_archive,
};
pub use loopback::LoopbackAddress;
pub use node::{
    BRIDGE, BRIDGE_ADDRESS, CrashedNodeCleanup, GUARD_CHAIN, NODE_NAME, NODE_ROOT, Node, NodeOptions, POD_SUBNET,
    TRAEFIK_HTTP_PORT, TRAEFIK_HTTPS_PORT, TRAEFIK_INGRESS_CLASS, clean_up_crashed_node, last_node_logs_dir,
    node_is_running, node_leftovers, node_tests_skip_reason, node_unavailable_reason,
};
pub use pebble::{EabCredentials, Pebble, PebbleOptions};
pub use proc_stats::{
    ProcessSample, machine_busy_seconds, sample_process, tree_cpu_seconds, tree_cpu_seconds_by_command,
};
pub use process::{ChildProcess, TempDir, log_tail, poll_until};
pub use stand_in::{
    CERT_MANAGER_SOLVER_LABEL, REFUSE_ROUTES_ANNOTATION, RunningSolver, SOLVER_LABEL, STAND_IN_GATEWAY_CONTROLLER,
    SolverKind, SolverStandIn,
};
pub use step_ca::{StepCa, StepCaOptions, serial_hex};
