//! A private containerd: its own root, state, sockets and runc root under one directory, so that it never
//! meets another containerd on the machine, with the CRI settings the real node needs (DESIGN.md).

use crate::binaries::Binaries;
use crate::host;
use crate::process::ChildProcess;
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// containerd 1.6 puts shim sockets in `/run/containerd/s` whatever its config says.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
const RUN_DIR: &str = "/run/containerd";

/// A containerd whose every file lives under `dir` (but the shim sockets, see [`SHIM_SOCKET_DIR`]), stopped
/// with its shims on drop.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    ctr: PathBuf,
    process: Option<ChildProcess>,
    /// Whether it created `/run/containerd` (removed on stop when empty again).
    created_run_dir: bool,
}

impl Containerd {
    /// Starts containerd with its root, state, sockets and runc root in `dir` (which must exist), the CRI
    /// plugin's sandbox image [`crate::PAUSE_IMAGE`], `restrict_oom_score_adj` (root here cannot lower
    /// `oom_score_adj`), network namespaces mounted under its state dir, CNI configuration from
    /// `cni_conf_dir` and the plugins of `tests/env/install node`; waits until it answers.
    pub fn start(binaries: &Binaries, dir: &Path, cni_conf_dir: &Path) -> Result<Self> {
        let socket = dir.join("containerd.sock");
        let p = |name: &str| dir.join(name).display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{ttrpc}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    Root = "{runc}"
"#,
            root = p("root"),
            state = p("state"),
            socket = socket.display(),
            ttrpc = p("containerd-ttrpc.sock"),
            opt = p("opt"),
            pause = crate::PAUSE_IMAGE,
            cni_bin = binaries.dir().join("cni-plugins").display(),
            cni_conf = cni_conf_dir.display(),
            runc = p("runc"),
        );
        std::fs::write(dir.join("containerd.toml"), config)?;
        let containerd = binaries.path("containerd")?;
        // containerd finds the shim and runc on PATH: the bin dir's links come first.
        let path = format!("{}:{}", binaries.dir().display(), std::env::var("PATH").unwrap_or_default());
        let created_run_dir = !Path::new(RUN_DIR).exists();
        let process = ChildProcess::spawn(
            "containerd",
            &containerd,
            ["--config".as_ref(), dir.join("containerd.toml").as_os_str()],
            &[("PATH", path.as_ref())],
            dir.join("containerd.log"),
        )?;
        let containerd = Containerd {
            ctr: binaries.path("ctr")?,
            dir: dir.to_path_buf(),
            socket,
            process: Some(process),
            created_run_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while containerd.ctr(&["version"]).is_err() {
            if let Some(process) = &containerd.process {
                process.ensure_running()?;
            }
            if Instant::now() > deadline {
                bail!("containerd did not answer on {} within 20 s", containerd.socket.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(containerd)
    }

    /// The CRI and gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's PID.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Whether it created `/run/containerd`.
    pub fn created_run_dir(&self) -> bool {
        self.created_run_dir
    }

    /// `ctr --address <socket> -n k8s.io ARGS`, its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .with_context(|| format!("running ctr {args:?}"))?;
        if !output.status.success() {
            bail!(
                "ctr {args:?} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Imports a docker-archive tar ([`crate::write_image_archive`]) into namespace `k8s.io`, where the
    /// kubelet finds it.
    pub fn import(&self, archive: &Path) -> Result<()> {
        self.ctr(&["images", "import", &archive.display().to_string()]).map(drop)
    }

    /// Runs `argv` in a new container of `image` (the image's user, no cgroup of its own, an empty network
    /// namespace) and returns its output.
    pub fn run(&self, image: &str, id: &str, argv: &[&str]) -> Result<String> {
        let runc_root = self.dir.join("runc").display().to_string();
        let fifo_dir = self.dir.join("fifo").display().to_string();
        let mut args =
            vec!["run", "--rm", "--cgroup", "", "--runc-root", &runc_root, "--fifo-dir", &fifo_dir, image, id];
        args.extend(argv);
        self.ctr(&args)
    }

    /// Stops containerd and its shims (found by this containerd's socket in their command line) and
    /// unmounts everything under the directory; returns what was still there to clean after containerd
    /// itself stopped (should be nothing when no container was left running).
    pub fn stop(&mut self) -> Vec<String> {
        let mut leftovers = Vec::new();
        if let Some(process) = self.process.take() {
            process.kill();
        }
        // Shims name the socket (`-address`); a shell reading a log in the directory does not.
        let needle = self.socket.display().to_string();
        for pid in host::kill_until_gone(Duration::from_secs(5), || host::processes_mentioning(&needle)) {
            leftovers.push(format!("process {pid} ({})", host::command_line(pid)));
        }
        for mount in host::mounts_under(&self.dir) {
            leftovers.push(format!("mount {}", mount.display()));
        }
        leftovers.extend(host::unmount_under(&self.dir));
        if std::mem::take(&mut self.created_run_dir) {
            remove_run_dir();
        }
        leftovers
    }
}

/// The name of the shim socket in [`SHIM_SOCKET_DIR`] for container `id` of namespace `k8s.io` of the
/// containerd whose directory is `dir`: containerd 1.6 names it after the SHA-256 of
/// `<grpc socket>/<namespace>/<id>`. A killed shim leaves it behind.
pub(crate) fn shim_socket_name(dir: &Path, id: &str) -> String {
    let key = dir.join("containerd.sock").join("k8s.io").join(id);
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_os_str().as_encoded_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Removes `/run/containerd/s` and `/run/containerd` if they are empty (they stay while another containerd
/// uses them).
pub(crate) fn remove_run_dir() {
    let _ = std::fs::remove_dir(SHIM_SOCKET_DIR);
    let _ = std::fs::remove_dir(RUN_DIR);
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_sockets_are_named_after_the_sha256_of_socket_namespace_and_id() {
        // Measured: what containerd 1.6.20 created for this container of the node.
        let id = "b592d9922b7f8806f2fdf67dfa1e48ede4383a67f418594a4aed1cf0c5396283";
        assert_eq!(
            shim_socket_name(Path::new("/var/lib/kacme-testenv/node/containerd"), id),
            "93e394d35c2e7d8acba8cf2ae223943dc6a774070e046a1715c96492d395540f"
        );
    }
}
