//! Smoke test of the locally written images on a private containerd: import the kacme, pause and TLS probe
//! archives and run each with `ctr run`. Needs root, `tests/env/install node` and a kacme release binary
//! (`$KACME_IMAGE_BINARY`, else `target/release/kacme`, else `$CARGO_TARGET_DIR/release/kacme`); it says
//! why and passes as skipped where those are missing. Everything it starts lives under one temp dir and
//! is torn down: containerd and its shims by PID, mounts under the dir, the dir itself.

use anyhow::{Context as _, Result};
use kacme_testenv::{
    Binaries, Containerd, TempDir, kacme_image, pause_image, read_image_archive, tls_probe_image, write_image_archive,
};
use std::path::{Path, PathBuf};
use std::process::Command;

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

    let containerd_dir = TempDir::new("containerd-smoke")?;
    std::fs::create_dir(containerd_dir.join("cni-conf"))?;
    let mut containerd = Containerd::start(&binaries, containerd_dir.path(), &containerd_dir.join("cni-conf"))?;
    for archive in &archives {
        containerd.import(&archive.path)?;
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
