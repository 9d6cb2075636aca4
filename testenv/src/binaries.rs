//! Where the pinned test binaries live: the cache that `tests/env/install` fills.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// The directory (in the bin dir) of the Gateway API CRDs.
const GATEWAY_API_CRDS: &str = "gateway-api-crds";

/// The directory of the cached test binaries (etcd, kube-apiserver, pebble, step-ca, ...).
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The cache bin dir: `$KACME_BIN_DIR` when set, else `$HOME/.cache/kacme/bin` (what
    /// `tests/env/install --print-bin-dir` prints by default).
    pub fn locate() -> Result<Self> {
        if let Some(dir) = std::env::var_os("KACME_BIN_DIR").filter(|d| !d.is_empty()) {
            return Ok(Binaries { dir: PathBuf::from(dir) });
        }
        if let Some(cache) = std::env::var_os("KACME_CACHE_DIR").filter(|d| !d.is_empty()) {
            return Ok(Binaries { dir: PathBuf::from(cache).join("bin") });
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => Ok(Binaries { dir: PathBuf::from(home).join(".cache/kacme/bin") }),
            None => bail!(
                "neither KACME_BIN_DIR nor HOME is set: cannot find the test binaries that tests/env/install builds"
            ),
        }
    }

    /// The bin dir itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one binary, or an error that says how to get it.
    pub fn path(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        if !path.is_file() {
            bail!(
                "test binary `{name}` is missing from {} — run `tests/env/install` (from the repository root) to build \
                 the pinned test infrastructure into that cache, or set KACME_BIN_DIR to a directory that holds it",
                self.dir.display()
            );
        }
        Ok(path)
    }

    /// The Gateway API standard-channel CRDs (GatewayClass, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant,
    /// BackendTLSPolicy) that
    /// `tests/env/install` copies from the pinned `sigs.k8s.io/gateway-api` module, or an error that says how
    /// to get them.
    pub fn gateway_api_crds(&self) -> Result<PathBuf> {
        let dir = self.dir.join(GATEWAY_API_CRDS);
        if !dir.is_dir() {
            bail!(
                "the Gateway API CRDs are missing from {} — run `tests/env/install gateway-api-crds` (from the \
                 repository root)",
                dir.display()
            );
        }
        Ok(dir)
    }

    /// The paths of several binaries, failing on the first missing one.
    pub fn paths<const N: usize>(&self, names: [&str; N]) -> Result<[PathBuf; N]> {
        let mut out: [PathBuf; N] = std::array::from_fn(|_| PathBuf::new());
        for (slot, name) in out.iter_mut().zip(names) {
            *slot = self.path(name)?;
        }
        Ok(out)
    }
}
