//! helm against one test control plane only: that control plane's kubeconfig, a HOME and helm
//! directories of its own, and nothing inherited from the developer's shell (no ambient kubeconfig,
//! context, namespace or proxy).

use anyhow::{Context as _, Result, bail};
use kacme_testenv::{Binaries, TempDir};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The chart of this repository.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/kacme")
}

pub struct Helm {
    binary: PathBuf,
    kubeconfig: Option<PathBuf>,
    home: TempDir,
}

impl Helm {
    /// helm for commands that need no cluster (lint, template).
    pub fn offline() -> Result<Helm> {
        Helm::new(None)
    }

    /// helm for the cluster of `kubeconfig` (a test control plane's).
    pub fn for_cluster(kubeconfig: &Path) -> Result<Helm> {
        Helm::new(Some(kubeconfig))
    }

    fn new(kubeconfig: Option<&Path>) -> Result<Helm> {
        Ok(Helm {
            binary: Binaries::locate()?.path("helm")?,
            kubeconfig: kubeconfig.map(Path::to_path_buf),
            home: TempDir::new("helm")?,
        })
    }

    /// Runs `helm <args>` (60 s at most); returns stdout, or fails with stderr.
    pub async fn run(&self, args: &[&str]) -> Result<String> {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // The mark of tests/run's leftover check.
            .env("KACME_TEST_RUN", std::env::var_os("KACME_TEST_RUN").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match &self.kubeconfig {
            Some(kubeconfig) => {
                command.env("KUBECONFIG", kubeconfig).arg(format!("--kubeconfig={}", kubeconfig.display()));
            }
            // Nothing to talk to: a kubeconfig that names no cluster.
            None => {
                command.env("KUBECONFIG", self.home.join("no-cluster.kubeconfig"));
            }
        }
        command.args(args);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .with_context(|| format!("helm {} did not finish within 60s", args.join(" ")))?
            .context("running helm")?;
        if !output.status.success() {
            bail!(
                "helm {} failed ({}):\n{}\n{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The chart rendered with `args` (e.g. `--set x=y`), one YAML document per object.
    pub async fn template(&self, release: &str, namespace: &str, args: &[&str]) -> Result<Vec<serde_yaml::Value>> {
        let chart = chart_dir().display().to_string();
        let mut all = vec!["template", release, chart.as_str(), "--namespace", namespace];
        all.extend_from_slice(args);
        let text = self.run(&all).await?;
        let mut documents = Vec::new();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_yaml::Value =
                serde::Deserialize::deserialize(document).context("parsing helm's output")?;
            if !value.is_null() {
                documents.push(value);
            }
        }
        Ok(documents)
    }
}
