//! The user-facing commands in the spirit of cmctl: `kacme status` and `kacme inspect secret` (also
//! `kubectl kacme ...`, the same binary installed as `kubectl-kacme`).
//!
//! Pure code computes what to show from plain values ([`status`], [`inspect`], [`x509`]); [`read`] is the thin
//! layer that reads the cluster with the user's kubeconfig.

pub mod import;
pub mod inspect;
pub mod read;
pub mod status;
pub mod style;
pub mod x509;

pub use style::Style;

/// The name under which the binary acts as a kubectl plugin (`kubectl kacme ...`).
pub const KUBECTL_PLUGIN_NAME: &str = "kubectl-kacme";

/// Whether the program was started as the kubectl plugin: `argv[0]`'s file name is `kubectl-kacme`
/// (a symlink or copy of `kacme` on PATH; `.exe` allowed).
pub fn invoked_as_kubectl_plugin(argv0: &std::ffi::OsStr) -> bool {
    let file_name = std::path::Path::new(argv0).file_name().and_then(|n| n.to_str()).unwrap_or_default();
    file_name == KUBECTL_PLUGIN_NAME || file_name == format!("{KUBECTL_PLUGIN_NAME}.exe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_is_recognised_by_its_file_name_only() {
        for (argv0, plugin) in [
            ("kubectl-kacme", true),
            ("/usr/local/bin/kubectl-kacme", true),
            ("kubectl-kacme.exe", true),
            ("kacme", false),
            ("/tmp/kubectl-kacme/kacme", false),
            ("kubectl-kacme-other", false),
        ] {
            assert_eq!(invoked_as_kubectl_plugin(argv0.as_ref()), plugin, "{argv0}");
        }
    }
}
