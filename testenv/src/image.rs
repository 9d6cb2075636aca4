//! Container images for the real node, written without a Docker engine and without a registry.
//!
//! [`write_image_archive`] writes a docker-archive tar (`manifest.json`, the image config, one layer) that
//! `ctr -n k8s.io images import` reads. The images the node needs are built from local files only:
//!
//! - [`kacme_image`]: the release binary at `/kacme`, what it needs at run time (the shared libraries `ldd`
//!   names, the host's CA bundle) and the parts of the Dockerfile's base (`distroless/static-debian12:nonroot`)
//!   that kacme can see: `/etc/passwd` with the user 65532, `/tmp`, `/home/nonroot`. Tagged with the chart's
//!   default image, so `helm install charts/kacme` finds it without pulling.
//! - [`pause_image`]: the Pod sandbox, from the static `pause` program that `tests/env/install node` builds.
//! - [`tls_probe_image`]: `kacme-tls-probe` (this crate's binary), the workload of the mutual-TLS tests.
//!
//! [`read_image_archive`] reads an archive back (the Dockerfile agreement test and the smoke test use it).

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The kacme image's repository: the chart's default `image.repository`.
pub const KACME_IMAGE_REPOSITORY: &str = "ghcr.io/kacme/kacme";
/// The Pod sandbox image: containerd's `sandbox_image` must name exactly this.
pub const PAUSE_IMAGE: &str = "kacme.test/pause:1";
/// The mutual-TLS probe image.
pub const TLS_PROBE_IMAGE: &str = "kacme.test/tls-probe:1";

/// The base image of the Dockerfile's final stage, whose run-time facts [`kacme_image`] reproduces. The
/// Dockerfile agreement test fails when the Dockerfile moves to another base, so that these are revisited.
pub const DOCKERFILE_BASE_IMAGE: &str = "gcr.io/distroless/static-debian12:nonroot";
/// distroless `nonroot`: its user, home and working directory.
const NONROOT_UID: u32 = 65532;
const NONROOT_HOME: &str = "/home/nonroot";
/// distroless: `PATH` and `SSL_CERT_FILE` in the image config.
const BASE_ENV: [&str; 2] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
];
const CA_BUNDLE_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
/// distroless base-files: root, nobody and nonroot.
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
                      nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n";
/// Every entry of a layer gets this modification time, so that the same inputs give the same digests.
const LAYER_MTIME: u64 = 0;

/// The run-time part of an image config (`config` in the docker/OCI image config JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `uid[:gid]` or a user name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `NAME=value` lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The program and its first arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Default arguments after the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// The working directory of the process.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// `port/proto` keys, each mapped to `{}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug)]
enum Contents {
    Directory,
    HostFile(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    contents: Contents,
}

/// What goes into a one-layer image: its reference (`RepoTags`), its config and its files.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    reference: String,
    config: ImageConfig,
    /// Absolute paths in the image; parent directories are added when the layer is written.
    entries: BTreeMap<String, Entry>,
}

impl ImageSpec {
    /// An empty image named `reference` (for example `kacme.test/pause:1`).
    pub fn new(reference: impl Into<String>, config: ImageConfig) -> Self {
        ImageSpec { reference: reference.into(), config, entries: BTreeMap::new() }
    }

    /// The image reference that `ctr images import` will tag.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The image config.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// A directory owned by `uid:gid`.
    pub fn directory(mut self, path: &str, mode: u32, uid: u32, gid: u32) -> Self {
        self.entries.insert(path.to_string(), Entry { mode, uid, gid, contents: Contents::Directory });
        self
    }

    /// A file owned by root with `contents`.
    pub fn file(mut self, path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> Self {
        self.entries
            .insert(path.to_string(), Entry { mode, uid: 0, gid: 0, contents: Contents::Bytes(contents.into()) });
        self
    }

    /// A file owned by root, copied from the host (symlinks followed) when the archive is written.
    pub fn host_file(mut self, path: &str, mode: u32, host_path: impl Into<PathBuf>) -> Self {
        self.entries
            .insert(path.to_string(), Entry { mode, uid: 0, gid: 0, contents: Contents::HostFile(host_path.into()) });
        self
    }

    /// The shared libraries (and the dynamic loader) that `binary` needs, at the paths `ldd` names; nothing
    /// for a static binary.
    pub fn with_shared_libraries_of(mut self, binary: &Path) -> Result<Self> {
        for library in shared_libraries(binary)? {
            let in_image =
                library.to_str().with_context(|| format!("library path {} is not UTF-8", library.display()))?;
            self = self.host_file(in_image, 0o755, library.clone());
        }
        Ok(self)
    }
}

/// The kacme image as the Dockerfile builds it (entrypoint `/kacme`, user 65532:65532, distroless's
/// environment and working directory, ports 9402 and 8089), from a locally built `kacme` binary.
/// Tagged `ghcr.io/kacme/kacme:<version>`: pass the crate version, which is the chart's appVersion.
pub fn kacme_image(kacme_binary: &Path, version: &str) -> Result<ImageSpec> {
    let config = ImageConfig {
        user: format!("{NONROOT_UID}:{NONROOT_UID}"),
        env: BASE_ENV.iter().map(|e| e.to_string()).collect(),
        entrypoint: vec!["/kacme".into()],
        working_dir: NONROOT_HOME.into(),
        exposed_ports: ["8089/tcp", "9402/tcp"].into_iter().map(|p| (p.to_string(), serde_json::Map::new())).collect(),
        ..ImageConfig::default()
    };
    let mut spec = ImageSpec::new(format!("{KACME_IMAGE_REPOSITORY}:{version}"), config)
        .host_file("/kacme", 0o755, kacme_binary)
        .file("/etc/passwd", 0o644, PASSWD)
        .file("/etc/group", 0o644, GROUP)
        .directory("/tmp", 0o1777, 0, 0)
        .directory(NONROOT_HOME, 0o700, NONROOT_UID, NONROOT_UID)
        .with_shared_libraries_of(kacme_binary)?;
    // Where the host has a CA bundle, so does the image (distroless ships one): an Issuer without caBundle
    // trusts the system roots.
    if Path::new(CA_BUNDLE_PATH).is_file() {
        spec = spec.host_file(CA_BUNDLE_PATH, 0o644, CA_BUNDLE_PATH);
    }
    Ok(spec)
}

/// The Pod sandbox image ([`PAUSE_IMAGE`]) from the static `pause` program (`tests/env/install node`).
pub fn pause_image(pause_binary: &Path) -> Result<ImageSpec> {
    let config =
        ImageConfig { user: "65535:65535".into(), entrypoint: vec!["/pause".into()], ..ImageConfig::default() };
    ImageSpec::new(PAUSE_IMAGE, config).host_file("/pause", 0o755, pause_binary).with_shared_libraries_of(pause_binary)
}

/// The mutual-TLS probe image ([`TLS_PROBE_IMAGE`]): `kacme-tls-probe` at `/kacme-tls-probe` and the
/// libraries it needs; it runs as 65532 and reads its certificate where kacme mounts it, `/var/run/kacme`.
pub fn tls_probe_image(probe_binary: &Path) -> Result<ImageSpec> {
    let config = ImageConfig {
        user: format!("{NONROOT_UID}:{NONROOT_UID}"),
        entrypoint: vec!["/kacme-tls-probe".into()],
        ..ImageConfig::default()
    };
    ImageSpec::new(TLS_PROBE_IMAGE, config)
        .host_file("/kacme-tls-probe", 0o755, probe_binary)
        .directory("/tmp", 0o1777, 0, 0)
        .with_shared_libraries_of(probe_binary)
}

/// What [`write_image_archive`] wrote.
#[derive(Clone, Debug)]
pub struct ImageArchive {
    /// The archive file.
    pub path: PathBuf,
    /// The tag it carries.
    pub reference: String,
    /// `sha256:...` of the image config: the image ID that `ctr images ls` shows as the config digest.
    pub config_digest: String,
    /// The archive's size in bytes.
    pub size: u64,
}

/// Writes `spec` as a docker-archive tar at `path` (through a temporary file, renamed when complete).
/// Same spec, same files: same bytes, so importing it again changes nothing.
pub fn write_image_archive(spec: &ImageSpec, path: &Path) -> Result<ImageArchive> {
    let layer = layer_tar(spec).with_context(|| format!("writing the layer of {}", spec.reference))?;
    let layer_digest = sha256_hex(&layer);
    let config_json = serde_json::to_vec(&serde_json::json!({
        "architecture": oci_architecture(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": spec.config,
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "kacme-testenv write_image_archive" }],
    }))?;
    let config_digest = sha256_hex(&config_json);
    let config_name = format!("{config_digest}.json");
    let layer_name = format!("{layer_digest}/layer.tar");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [spec.reference],
        "Layers": [layer_name],
    }]))?;

    let tmp = path.with_extension("tar.partial");
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
    append_bytes(&mut archive, &format!("{layer_digest}/"), 0o755, &[], tar::EntryType::Directory)?;
    append_bytes(&mut archive, &layer_name, 0o644, &layer, tar::EntryType::Regular)?;
    append_bytes(&mut archive, &config_name, 0o644, &config_json, tar::EntryType::Regular)?;
    append_bytes(&mut archive, "manifest.json", 0o644, &manifest, tar::EntryType::Regular)?;
    archive.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    let size = std::fs::metadata(path)?.len();
    Ok(ImageArchive {
        path: path.to_path_buf(),
        reference: spec.reference.clone(),
        config_digest: format!("sha256:{config_digest}"),
        size,
    })
}

/// One entry of an image layer, as [`read_image_archive`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// Permission bits (and sticky bit).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// A directory (else a regular file).
    pub is_dir: bool,
    /// The file's contents (empty for a directory).
    pub contents: Vec<u8>,
}

/// A docker-archive read back: its tag, config, and the entries of its layers by absolute path.
#[derive(Clone, Debug)]
pub struct ReadImage {
    /// The first `RepoTags` entry.
    pub reference: String,
    /// The image config's `config` object.
    pub config: ImageConfig,
    /// `/path` -> entry, over all layers.
    pub files: BTreeMap<String, LayerEntry>,
}

/// Reads a one-image docker-archive (what [`write_image_archive`] writes).
pub fn read_image_archive(path: &Path) -> Result<ReadImage> {
    let mut members: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for entry in tar::Archive::new(file).entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        members.insert(name, data);
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ManifestEntry {
        config: String,
        repo_tags: Vec<String>,
        layers: Vec<String>,
    }
    #[derive(Deserialize)]
    struct ConfigFile {
        config: ImageConfig,
    }
    let manifest: Vec<ManifestEntry> =
        serde_json::from_slice(members.get("manifest.json").context("the archive has no manifest.json")?)?;
    let [image] = <[ManifestEntry; 1]>::try_from(manifest)
        .map_err(|m| anyhow::anyhow!("{} images in manifest.json, expected 1", m.len()))?;
    let config: ConfigFile = serde_json::from_slice(
        members.get(&image.config).with_context(|| format!("config {} is missing", image.config))?,
    )?;
    let mut files = BTreeMap::new();
    for layer in &image.layers {
        let bytes = members.get(layer).with_context(|| format!("layer {layer} is missing"))?;
        for entry in tar::Archive::new(bytes.as_slice()).entries()? {
            let mut entry = entry?;
            let name = format!("/{}", entry.path()?.to_string_lossy().trim_start_matches("./").trim_end_matches('/'));
            let header = entry.header();
            let (mode, uid, gid, is_dir) =
                (header.mode()?, header.uid()?, header.gid()?, header.entry_type() == tar::EntryType::Directory);
            let mut contents = Vec::new();
            entry.read_to_end(&mut contents)?;
            files.insert(name, LayerEntry { mode, uid, gid, is_dir, contents });
        }
    }
    Ok(ReadImage { reference: image.repo_tags.into_iter().next().unwrap_or_default(), config: config.config, files })
}

/// The layer of `spec` as an uncompressed tar: parents before children, root-owned parents added.
fn layer_tar(spec: &ImageSpec) -> Result<Vec<u8>> {
    let mut entries = spec.entries.clone();
    for path in spec.entries.keys() {
        if !path.starts_with('/') || path.contains("/../") || path.ends_with("/..") {
            bail!("image path {path:?} must be absolute and must not contain '..'");
        }
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| *d != Path::new("/")) {
            let dir_name = dir.to_string_lossy().into_owned();
            entries.entry(dir_name).or_insert(Entry { mode: 0o755, uid: 0, gid: 0, contents: Contents::Directory });
            parent = dir.parent();
        }
    }
    let mut layer = tar::Builder::new(Vec::new());
    // BTreeMap order puts "/a" before "/a/b": parents come first.
    for (path, entry) in &entries {
        let name = path.trim_start_matches('/');
        let mut header = tar::Header::new_ustar();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid.into());
        header.set_gid(entry.gid.into());
        header.set_mtime(LAYER_MTIME);
        match &entry.contents {
            Contents::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                layer.append_data(&mut header, format!("{name}/"), std::io::empty())?;
            }
            Contents::Bytes(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                layer.append_data(&mut header, name, bytes.as_slice())?;
            }
            Contents::HostFile(host) => {
                let file =
                    std::fs::File::open(host).with_context(|| format!("reading {} for {path}", host.display()))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(file.metadata()?.len());
                layer.append_data(&mut header, name, file)?;
            }
        }
    }
    Ok(layer.into_inner()?)
}

fn append_bytes<W: std::io::Write>(
    archive: &mut tar::Builder<W>,
    name: &str,
    mode: u32,
    bytes: &[u8],
    kind: tar::EntryType,
) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_mode(mode);
    header.set_mtime(LAYER_MTIME);
    header.set_entry_type(kind);
    header.set_size(bytes.len() as u64);
    archive.append_data(&mut header, name, bytes)?;
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The OCI name of this machine's architecture.
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The shared libraries `ldd` lists for `binary` (the loader included, the vDSO left out); none for a
/// static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {} (Debian: package libc-bin)", binary.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        bail!("ldd {} failed: {}", binary.display(), text.trim());
    }
    parse_ldd_output(&text).with_context(|| format!("ldd {}", binary.display()))
}

/// The library paths in `ldd` output: `name => /path (0x..)` and `/path (0x..)` lines.
pub fn parse_ldd_output(text: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("the shared library {} is not found", name.trim());
                }
                rest
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// The final stage of a Dockerfile, as far as the image's run-time shape goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerfileStage {
    /// The `FROM` image.
    pub from: String,
    /// `USER`, if set.
    pub user: Option<String>,
    /// `WORKDIR`, if set.
    pub workdir: Option<String>,
    /// `ENTRYPOINT` in exec (JSON) form.
    pub entrypoint: Vec<String>,
    /// `EXPOSE` ports as `port/proto`.
    pub exposed_ports: Vec<String>,
    /// The destinations of `COPY` and `ADD`.
    pub copied_to: Vec<String>,
}

/// Reads the final stage of a Dockerfile: joins continuation lines, skips comments and parser directives.
pub fn parse_dockerfile_final_stage(text: &str) -> Result<DockerfileStage> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            instructions.push(std::mem::take(&mut current));
        }
    }
    let mut stage: Option<DockerfileStage> = None;
    for instruction in instructions {
        let (keyword, rest) = instruction.split_once(char::is_whitespace).unwrap_or((&instruction, ""));
        let rest = rest.trim();
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            let image = rest.split_whitespace().find(|w| !w.starts_with("--")).unwrap_or_default();
            stage = Some(DockerfileStage { from: image.to_string(), ..DockerfileStage::default() });
            continue;
        }
        let Some(stage) = stage.as_mut() else { continue };
        match keyword.as_str() {
            "USER" => stage.user = Some(rest.to_string()),
            "WORKDIR" => stage.workdir = Some(rest.to_string()),
            "ENTRYPOINT" => {
                stage.entrypoint = serde_json::from_str(rest)
                    .with_context(|| format!("ENTRYPOINT {rest} is not in exec (JSON array) form"))?;
            }
            "EXPOSE" => stage.exposed_ports.extend(
                rest.split_whitespace().map(|p| if p.contains('/') { p.to_string() } else { format!("{p}/tcp") }),
            ),
            "COPY" | "ADD" => {
                let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                if let Some(destination) = words.last() {
                    stage.copied_to.push(destination.to_string());
                }
            }
            _ => {}
        }
    }
    stage.context("the Dockerfile has no FROM")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE: &str = include_str!("../../Dockerfile");

    #[test]
    fn ldd_output_names_the_loader_and_the_libraries_but_not_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007fd7)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fd7)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007fd7)\n";
        let libraries = parse_ldd_output(text).unwrap();
        assert_eq!(
            libraries,
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
                .map(PathBuf::from)
        );
    }

    #[test]
    fn a_library_that_ldd_cannot_find_is_an_error() {
        let error = parse_ldd_output("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(error.to_string().contains("libfoo.so.1"), "{error}");
    }

    #[test]
    fn the_final_stage_of_a_multi_stage_dockerfile_is_read() {
        let stage = parse_dockerfile_final_stage(
            "# syntax=docker/dockerfile:1\nFROM rust AS builder\nUSER 1\nRUN a \\\n  b\n\
             FROM base:tag\nCOPY --from=builder /out/x /x\nUSER 2:2\nEXPOSE 80 53/udp\nENTRYPOINT [\"/x\", \"run\"]\n",
        )
        .unwrap();
        assert_eq!(
            stage,
            DockerfileStage {
                from: "base:tag".into(),
                user: Some("2:2".into()),
                workdir: None,
                entrypoint: vec!["/x".into(), "run".into()],
                exposed_ports: vec!["80/tcp".into(), "53/udp".into()],
                copied_to: vec!["/x".into()],
            }
        );
    }

    /// The locally built image (what the real node runs) and the Dockerfile (the published build) agree on
    /// everything a Pod sees: entrypoint, user, working directory, ports, the paths the Dockerfile copies.
    #[test]
    fn the_local_kacme_image_agrees_with_the_dockerfile() {
        let stage = parse_dockerfile_final_stage(DOCKERFILE).unwrap();
        assert_eq!(
            stage.from, DOCKERFILE_BASE_IMAGE,
            "the Dockerfile's base changed: update what kacme_image reproduces of it (user, env, workdir, files)"
        );
        let dir = crate::TempDir::new("image-test").unwrap();
        // A script stands in for kacme (ldd finds no libraries in it): the image's shape does not depend on the binary.
        let binary = dir.join("kacme");
        std::fs::write(&binary, b"#!/bin/false\n").unwrap();
        let spec = kacme_image(&binary, env!("CARGO_PKG_VERSION")).unwrap();
        let written = write_image_archive(&spec, &dir.join("kacme.tar")).unwrap();
        let image = read_image_archive(&written.path).unwrap();

        assert_eq!(image.reference, format!("{KACME_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(image.config.entrypoint, stage.entrypoint, "ENTRYPOINT");
        assert_eq!(Some(&image.config.user), stage.user.as_ref(), "USER");
        assert_eq!(image.config.working_dir, stage.workdir.as_deref().unwrap_or(NONROOT_HOME), "WORKDIR");
        let mut exposed = stage.exposed_ports.clone();
        exposed.sort();
        assert_eq!(image.config.exposed_ports.keys().cloned().collect::<Vec<_>>(), exposed, "EXPOSE");
        for path in stage.copied_to.iter().chain(image.config.entrypoint.first()) {
            let entry = image.files.get(path).unwrap_or_else(|| panic!("{path} is not in the image"));
            assert!(!entry.is_dir && entry.mode & 0o111 != 0, "{path} is an executable file: {entry:?}");
        }
        let uid = stage.user.as_deref().unwrap().split(':').next().unwrap();
        let passwd = String::from_utf8(image.files["/etc/passwd"].contents.clone()).unwrap();
        assert!(passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)), "user {uid} is in /etc/passwd");
        let home = &image.files[NONROOT_HOME];
        assert!(home.is_dir && home.uid == u64::from(NONROOT_UID), "{home:?}");
        assert_eq!(image.files["/tmp"].mode, 0o1777);
    }

    #[test]
    fn the_same_spec_writes_the_same_archive() {
        let dir = crate::TempDir::new("image-test").unwrap();
        let spec =
            ImageSpec::new("kacme.test/x:1", ImageConfig { entrypoint: vec!["/x".into()], ..ImageConfig::default() })
                .file("/a/b/x", 0o755, "x")
                .directory("/a/c", 0o700, 7, 7);
        let first = write_image_archive(&spec, &dir.join("1.tar")).unwrap();
        let second = write_image_archive(&spec, &dir.join("2.tar")).unwrap();
        assert_eq!(std::fs::read(&first.path).unwrap(), std::fs::read(&second.path).unwrap());
        let image = read_image_archive(&first.path).unwrap();
        assert_eq!(image.files.keys().collect::<Vec<_>>(), ["/a", "/a/b", "/a/b/x", "/a/c"]);
        assert_eq!(image.files["/a/c"].uid, 7);
        assert_eq!(image.files["/a/b/x"].contents, b"x");
    }
}
