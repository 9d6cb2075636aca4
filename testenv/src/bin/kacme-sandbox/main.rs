//! The kacme sandbox. Run it through `./sandbox` at the repository root, which builds what it needs.
//!
//! - `--node` (what `./sandbox` runs where `tests/env/install --check-node` passes): a real node on this
//!   machine (containerd, kubelet, kube-proxy, Traefik), kacme installed with `helm install charts/kacme` from
//!   an image of the release binary, step-ca (or Pebble) on the node's address; applies config/samples and
//!   shows the sample Certificate Ready, the sample workload's Pods Running with their certificate mounted
//!   and a mutual-TLS handshake between them. See [`node`].
//! - otherwise (`./sandbox --stand-in`): a control plane, a CA, the solver-Pod stand-in and `kacme
//!   controller` as local processes on loopback. See [`stand_in`].
//!
//! Both stay up until Ctrl-C and then stop everything they started.
#![forbid(unsafe_code)]

mod node;
mod stand_in;

use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};

const USAGE: &str = "\
usage: kacme-sandbox [--node] [--ca pebble|step-ca] [options]

  --node                 a real node (root; tests/env/install node): kacme from `helm install`, solver Pods
                         and the sample workload in containers, Traefik as the ingress controller
  --ca pebble|step-ca    the ACME CA (default: step-ca on the node, Pebble otherwise)
  --exit-when-ready      stop (and tear down) once everything is shown, instead of waiting for Ctrl-C
  --kacme PATH           the kacme binary run as the operator (stand-in) or as the CLI (default target/debug/kacme)
  --image-binary PATH    --node: the kacme binary of the image (default target/release/kacme)
  --probe PATH           --node: kacme-tls-probe, the sample workload's image (default target/debug/kacme-tls-probe)
  --chart DIR            --node: the chart (default charts/kacme)
  --samples DIR          the samples applied with kubectl (default config/samples)
  --crds DIR             the stand-in's CRDs (default crds)
";

/// The command line of both sandboxes.
pub struct Args {
    pub node: bool,
    ca: Option<String>,
    pub exit_when_ready: bool,
    pub kacme: PathBuf,
    pub image_binary: PathBuf,
    pub probe: PathBuf,
    pub chart: PathBuf,
    pub samples: PathBuf,
    pub crds: PathBuf,
}

impl Args {
    /// The CA: as given, else step-ca on the node (it issues client-auth certificates, which the sample
    /// workload's mutual TLS needs; Pebble, like Let's Encrypt, issues server-auth only) and Pebble otherwise.
    pub fn ca(&self) -> &str {
        self.ca.as_deref().unwrap_or(if self.node { "step-ca" } else { "pebble" })
    }
}

fn parse_args(raw: impl Iterator<Item = String>) -> Result<Option<Args>> {
    let mut args = Args {
        node: false,
        ca: None,
        exit_when_ready: false,
        kacme: PathBuf::from("target/debug/kacme"),
        image_binary: PathBuf::from("target/release/kacme"),
        probe: PathBuf::from("target/debug/kacme-tls-probe"),
        chart: PathBuf::from("charts/kacme"),
        samples: PathBuf::from("config/samples"),
        crds: PathBuf::from("crds"),
    };
    let mut rest = raw;
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--node" => args.node = true,
            "--exit-when-ready" => args.exit_when_ready = true,
            "--ca" => args.ca = Some(value()?),
            "--kacme" => args.kacme = value()?.into(),
            "--image-binary" => args.image_binary = value()?.into(),
            "--probe" => args.probe = value()?.into(),
            "--chart" => args.chart = value()?.into(),
            "--samples" => args.samples = value()?.into(),
            "--crds" => args.crds = value()?.into(),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if !matches!(args.ca(), "pebble" | "step-ca") {
        bail!("--ca must be pebble or step-ca");
    }
    Ok(Some(args))
}

#[tokio::main]
async fn main() -> Result<()> {
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        print!("{USAGE}");
        return Ok(());
    };
    if args.node { node::run(args).await } else { stand_in::run(args).await }
}

/// The samples (`*.yaml` in `samples`, in name order), each written to `dir` with the CA's directory URL
/// (`${ACME_SERVER}`) and its bundle (`${CA_BUNDLE}`, indented for the `caBundle: |` block) filled in:
/// (sample, rendered file) pairs.
pub fn render_samples(
    samples: &Path,
    dir: &Path,
    directory_url: &str,
    ca_bundle: &str,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    let bundle: String = ca_bundle.lines().map(|l| format!("      {l}\n")).collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(samples)
        .with_context(|| format!("reading {}", samples.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut rendered = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .replace("${ACME_SERVER}", directory_url)
            .replace("${CA_BUNDLE}\n", &bundle);
        let path = dir.join(file.file_name().context("a file name")?);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        rendered.push((file, path));
    }
    Ok(rendered)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn wait_for_stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Args {
        parse_args(line.split_whitespace().map(String::from)).unwrap().unwrap()
    }

    #[test]
    fn the_node_sandbox_defaults_to_step_ca_and_the_stand_in_to_pebble() {
        assert_eq!(parsed("").ca(), "pebble");
        assert_eq!(parsed("--node").ca(), "step-ca");
        assert_eq!(parsed("--node --ca pebble").ca(), "pebble");
        assert!(parsed("--node --exit-when-ready").exit_when_ready);
        assert!(parse_args(["--ca".to_string(), "boulder".to_string()].into_iter()).is_err());
    }

    #[test]
    fn samples_get_the_ca_url_and_an_indented_bundle() {
        let samples = kacme_testenv::TempDir::new("samples-in").unwrap();
        let out = kacme_testenv::TempDir::new("samples-out").unwrap();
        std::fs::write(
            samples.join("10-issuer.yaml"),
            "server: ${ACME_SERVER}\n    caBundle: |\n${CA_BUNDLE}\n    x: 1\n",
        )
        .unwrap();
        std::fs::write(samples.join("README.md"), "not a sample").unwrap();
        let rendered = render_samples(samples.path(), out.path(), "https://ca/dir", "A\nB\n").unwrap();
        assert_eq!(rendered.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&rendered[0].1).unwrap(),
            "server: https://ca/dir\n    caBundle: |\n      A\n      B\n    x: 1\n"
        );
    }
}
