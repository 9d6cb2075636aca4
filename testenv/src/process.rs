//! Child processes that never outlive their owner, and temporary directories that go with them.
//!
//! A [`ChildProcess`] is killed (SIGKILL) and reaped when it is dropped, which also happens when a test
//! panics. When the whole test process dies without unwinding (SIGKILL, abort), `setpriv --pdeathsig KILL`
//! makes the kernel kill the children too: every child is forked from one long-lived spawner thread,
//! because the parent-death signal fires when the forking *thread* exits.

use anyhow::{Context as _, Result, bail};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Environment variables that must not leak from the developer's shell into the processes we start.
const SCRUBBED_ENV: &[&str] = &[
    "KUBECONFIG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "STEPPATH",
];

/// A process started by the test environment, with its output in a log file.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    pid: u32,
    log_path: PathBuf,
    child: Mutex<Child>,
    exit: Mutex<Option<ExitStatus>>,
}

impl ChildProcess {
    /// Starts `program` with `args` and the extra environment `envs` (on top of the inherited environment
    /// without KUBECONFIG and proxy settings), stdout and stderr appended to `log_path`.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        envs: &[(&str, &OsStr)],
        log_path: impl Into<PathBuf>,
    ) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log_path = log_path.into();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("creating the log file {}", log_path.display()))?;
        let mut command = match pdeathsig_wrapper() {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command.args(["--pdeathsig", "KILL", "--"]).arg(program);
                // A process group of its own: Ctrl-C in a terminal signals the whole foreground group, and
                // the owner (the sandbox, a test) must tear down in order with its children still running
                // (a node's teardown deletes workloads through the apiserver first). The parent-death signal
                // still takes the child along when the owner dies.
                std::os::unix::process::CommandExt::process_group(&mut command, 0);
                command
            }
            None => Command::new(program),
        };
        command.args(args);
        for var in SCRUBBED_ENV {
            command.env_remove(var);
        }
        command.envs(envs.iter().map(|(k, v)| (k, v)));
        command.stdin(Stdio::null()).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log));
        let child =
            spawn_from_spawner_thread(command).with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(ChildProcess {
            name: name.to_string(),
            pid: child.id(),
            log_path,
            child: Mutex::new(child),
            exit: Mutex::new(None),
        })
    }

    /// The name given at spawn time, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status, if the process has exited (it is reaped then).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut exit = lock(&self.exit);
        if exit.is_none() {
            *exit = lock(&self.child).try_wait().ok().flatten();
        }
        *exit
    }

    /// Fails with the tail of the log when the process has exited.
    pub fn ensure_running(&self) -> Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log_path.display(),
                self.log_tail(40)
            ),
        }
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&self) {
        let mut exit = lock(&self.exit);
        if exit.is_some() {
            return;
        }
        let mut child = lock(&self.child);
        let _ = child.kill();
        *exit = child.wait().ok();
    }

    /// `error` with the tail of this process's log attached, for "did not become ready" failures.
    pub fn with_log_tail(&self, error: anyhow::Error) -> anyhow::Error {
        error.context(format!(
            "{} did not become ready; last lines of {}:\n{}",
            self.name,
            self.log_path.display(),
            self.log_tail(30)
        ))
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The last `lines` lines of a (log) file, reading at most its last 64 KiB.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() { "(empty log)".to_string() } else { tail }
}

/// `setpriv` (util-linux), when present, to give children a parent-death signal.
fn pdeathsig_wrapper() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path).map(|dir| dir.join("setpriv")).find(|candidate| candidate.is_file())
        })
        .as_deref()
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Forks `command` from a thread that lives as long as the process (see the module docs).
fn spawn_from_spawner_thread(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, incoming) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("kacme-testenv-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawning the kacme-testenv spawner thread");
        jobs
    });
    let (reply, result) = mpsc::channel();
    spawner.send((command, reply)).map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    result.recv().map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// A directory under the system temp dir, removed (with everything in it) on drop — unless
/// `KACME_TESTENV_KEEP=1` is set, which keeps it for debugging and prints its path.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/kacme-testenv-<label>-<pid>-<n>`. The first call of a process also removes the
    /// directories of earlier test processes that died without cleaning up (killed with SIGKILL).
    pub fn new(label: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static SWEPT: OnceLock<()> = OnceLock::new();
        SWEPT.get_or_init(remove_dirs_of_dead_processes);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("kacme-testenv-{label}-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error).with_context(|| format!("creating {}", path.display())),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

/// Removes `$TMPDIR/kacme-testenv-<label>-<pid>-<n>` directories whose process no longer exists.
fn remove_dirs_of_dead_processes() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("kacme-testenv-") else { continue };
        let mut parts = rest.rsplit('-');
        let (Some(n), Some(pid)) = (parts.next(), parts.next()) else { continue };
        if n.parse::<u64>().is_err() || pid.parse::<u32>().is_err() {
            continue;
        }
        if !Path::new("/proc").join(pid).exists() && entry.path().is_dir() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("KACME_TESTENV_KEEP").is_some_and(|v| !v.is_empty() && v != "0") {
            eprintln!("testenv: keeping {} (KACME_TESTENV_KEEP is set)", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Polls `check` every `interval` until it returns `Ok(Some(value))`, fails when it returns an error, and
/// fails with the last "not yet" reason after `timeout`.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, interval: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<std::result::Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await? {
            Ok(value) => return Ok(value),
            Err(not_yet) => not_yet,
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(interval).await;
    }
}
