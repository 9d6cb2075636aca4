//! Smoke test of the locally written images on a private containerd: import the kacme, pause and TLS probe
//! archives and run each with `ctr run`. Needs root, `tests/env/install node` and a kacme release binary
//! (`$KACME_IMAGE_BINARY`, else `target/release/kacme`, else `$CARGO_TARGET_DIR/release/kacme`); it says
//! why and passes as skipped where those are missing. Everything it starts lives under one temp dir and
//! is torn down: containerd and its shims by PID, mounts under the dir, the dir itself.

use anyhow::{Context as _, Result, bail};
use kacme_testenv::{
    Binaries, ChildProcess, TempDir, kacme_image, pause_image, read_image_archive, tls_probe_image, write_image_archive,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn kacme_release_binary() -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [
        std::env::var_os("KACME_IMAGE_BINARY").map(PathBuf::from),
        Some(workspace.join("target/release/kacme")),
        std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("release/kacme")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// Why this machine cannot run the smoke test, if it cannot.
fn skip_reason(binaries: &Binaries) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("not root".into());
    }
    for name in ["containerd", "ctr", "containerd-shim-runc-v2", "runc", "pause"] {
        if binaries.path(name).is_err() {
            return Some(format!("{name} is not installed: run `tests/env/install node`"));
        }
    }
    if kacme_release_binary().is_none() {
        return Some("no kacme release binary: `cargo build --release --bin kacme` or set KACME_IMAGE_BINARY".into());
    }
    None
}

struct PrivateContainerd {
    dir: TempDir,
    socket: PathBuf,
    ctr: PathBuf,
    process: Option<ChildProcess>,
    /// containerd 1.6 puts shim sockets in /run/containerd/s whatever its config says: removed on stop
    /// when this test created it and it is empty again.
    created_run_dir: bool,
}

const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

impl PrivateContainerd {
    fn start(binaries: &Binaries) -> Result<Self> {
        let dir = TempDir::new("containerd-smoke")?;
        let socket = dir.join("containerd.sock");
        let p = |name: &str| dir.join(name).display().to_string();
        // The settings the real node needs (DESIGN.md): own root, state, sockets and runc root; the CRI
        // plugin's oom_score_adj restricted (root here cannot lower it); the sandbox image built locally.
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
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    Root = "{runc}"
"#,
            root = p("root"),
            state = p("state"),
            socket = socket.display(),
            ttrpc = p("containerd-ttrpc.sock"),
            opt = p("opt"),
            pause = kacme_testenv::PAUSE_IMAGE,
            cni_bin = binaries.dir().join("cni-plugins").display(),
            cni_conf = p("cni-conf"),
            runc = p("runc"),
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let containerd = binaries.path("containerd")?;
        // containerd finds the shim and runc on PATH: the bin dir's links come first.
        let path = format!("{}:{}", binaries.dir().display(), std::env::var("PATH").unwrap_or_default());
        let created_run_dir = !Path::new("/run/containerd").exists();
        let process = ChildProcess::spawn(
            "containerd",
            &containerd,
            ["--config".as_ref(), dir.join("config.toml").as_os_str()],
            &[("PATH", path.as_ref())],
            dir.join("containerd.log"),
        )?;
        let containerd =
            PrivateContainerd { ctr: binaries.path("ctr")?, dir, socket, process: Some(process), created_run_dir };
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

    /// `ctr --address <socket> -n k8s.io ARGS`, its stdout.
    fn ctr(&self, args: &[&str]) -> Result<String> {
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

    /// Runs `argv` in a new container of `image` (the image's user, no cgroup of its own, an empty network
    /// namespace) and returns its output.
    fn run(&self, image: &str, id: &str, argv: &[&str]) -> Result<String> {
        let runc_root = self.dir.join("runc").display().to_string();
        let fifo_dir = self.dir.join("fifo").display().to_string();
        let mut args =
            vec!["run", "--rm", "--cgroup", "", "--runc-root", &runc_root, "--fifo-dir", &fifo_dir, image, id];
        args.extend(argv);
        self.ctr(&args)
    }

    /// Mounts under the temp dir, deepest first.
    fn mounts(&self) -> Vec<String> {
        let prefix = self.dir.path().display().to_string();
        let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut mounts: Vec<String> = table
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .map(String::from)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        mounts
    }

    /// PIDs of processes whose command line names this containerd's socket or dir (shims).
    fn processes(&self) -> Vec<u32> {
        let needle = self.dir.path().display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) && pid != std::process::id() {
                pids.push(pid);
            }
        }
        pids
    }

    /// Stops containerd and its shims, unmounts; returns what was still there to clean (should be nothing).
    fn stop(&mut self) -> Vec<String> {
        let mut leftovers = Vec::new();
        if let Some(process) = self.process.take() {
            process.kill();
        }
        for pid in self.processes() {
            leftovers.push(format!("process {pid}"));
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        for mount in self.mounts() {
            leftovers.push(format!("mount {mount}"));
            let _ = Command::new("umount").args(["-l", &mount]).status();
        }
        if std::mem::take(&mut self.created_run_dir) {
            // Fails (and leaves them) when another containerd uses them.
            let _ = std::fs::remove_dir(SHIM_SOCKET_DIR);
            let _ = std::fs::remove_dir("/run/containerd");
        }
        leftovers
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn the_local_images_import_into_containerd_and_run() -> Result<()> {
    let binaries = Binaries::locate()?;
    if let Some(reason) = skip_reason(&binaries) {
        eprintln!("SKIPPED the_local_images_import_into_containerd_and_run: {reason}");
        return Ok(());
    }
    let kacme = kacme_release_binary().context("checked above")?;
    let work = TempDir::new("images")?;
    let specs = [
        kacme_image(&kacme, "0.1.0-smoke")?,
        pause_image(&binaries.path("pause")?)?,
        tls_probe_image(Path::new(env!("CARGO_BIN_EXE_kacme-tls-probe")))?,
    ];
    let mut archives = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let archive = write_image_archive(spec, &work.join(format!("image-{index}.tar")))?;
        eprintln!("{}: {} bytes ({})", archive.reference, archive.size, archive.config_digest);
        assert_eq!(read_image_archive(&archive.path)?.reference, archive.reference);
        archives.push(archive);
    }

    let mut containerd = PrivateContainerd::start(&binaries)?;
    for archive in &archives {
        containerd.ctr(&["images", "import", &archive.path.display().to_string()])?;
    }
    let listed = containerd.ctr(&["images", "ls", "-q"])?;
    for archive in &archives {
        assert!(listed.lines().any(|l| l == archive.reference), "{} imported: {listed}", archive.reference);
    }

    let version = containerd.run(&archives[0].reference, "smoke-kacme", &["/kacme", "--version"])?;
    assert!(version.starts_with("kacme "), "kacme --version in its image: {version:?}");
    let pause = containerd.run(&archives[1].reference, "smoke-pause", &["/pause", "-v"])?;
    assert!(pause.contains("pause"), "pause -v: {pause:?}");
    let probe = containerd.run(&archives[2].reference, "smoke-probe", &["/kacme-tls-probe", "--help"])?;
    assert!(probe.contains("usage: kacme-tls-probe"), "probe --help: {probe:?}");
    assert_eq!(containerd.ctr(&["containers", "ls", "-q"])?.trim(), "", "ctr run --rm removed the containers");

    let leftovers = containerd.stop();
    assert!(leftovers.is_empty(), "left behind after stopping containerd: {leftovers:?}");
    Ok(())
}
