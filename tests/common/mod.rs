//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod challenge_server;
pub mod helm;
pub mod operator_env;

/// `text` without ANSI colour sequences (`ESC [ ... m`), as kacme's log may carry them.
pub fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `body`, failing the test when it takes longer than `seconds`.
pub async fn within<T>(seconds: u64, body: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(std::time::Duration::from_secs(seconds), body).await {
        Ok(value) => value,
        Err(_) => panic!("the test did not finish within {seconds}s"),
    }
}

/// The `kacme` binary the real-node tests put in the kacme image: `KACME_IMAGE_BINARY` (tests/run builds a
/// release for it), else the release build of this target directory when it is at least as new as the debug
/// build these tests run with (an older one would lack what the tests exercise), else the debug build.
pub fn image_binary() -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    if let Some(path) = std::env::var_os("KACME_IMAGE_BINARY").map(PathBuf::from) {
        return path;
    }
    let debug = PathBuf::from(env!("CARGO_BIN_EXE_kacme"));
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    // target/debug/kacme -> target/release/kacme
    let release = debug.parent().and_then(Path::parent).map(|target| target.join("release/kacme"));
    match release {
        Some(release) if modified(&release).is_some() && modified(&release) >= modified(&debug) => release,
        Some(release) => {
            eprintln!(
                "{} is missing or older than the debug build: the kacme image has the debug build {}",
                release.display(),
                debug.display()
            );
            debug
        }
        None => debug,
    }
}
