//! What the real node leaves on the host, found and removed: processes by their command line, mounts under a
//! directory, cgroups, iptables chains, sysctls. Used by [`crate::Node`]'s teardown, its cleanup after a
//! crashed run, and the tests that check that nothing is left.

use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Mount points under `dir` (the directory itself included), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|mount| mount.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    mounts
}

/// `/proc/self/mountinfo` writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(field: &str) -> PathBuf {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        match u8::from_str_radix(rest.get(at + 1..at + 4).unwrap_or(""), 8) {
            Ok(byte) => {
                out.push(byte as char);
                rest = &rest[at + 4..];
            }
            Err(_) => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

/// Unmounts every mount under `dir`, deepest first (lazily when a plain unmount fails). Returns what could
/// not be unmounted.
pub fn unmount_under(dir: &Path) -> Vec<String> {
    for _ in 0..3 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return Vec::new();
        }
        for mount in mounts {
            let plain = Command::new("umount").arg(&mount).output();
            if !plain.is_ok_and(|o| o.status.success()) {
                let _ = Command::new("umount").arg("-l").arg(&mount).output();
            }
        }
    }
    mounts_under(dir).into_iter().map(|m| format!("mount {}", m.display())).collect()
}

/// PIDs of the processes (other than this one) whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The command line of a process, arguments joined by spaces ("" when it is gone).
pub fn command_line(pid: u32) -> String {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\0', " ").trim().to_string()
}

/// Sends SIGKILL to `pid`.
pub fn kill(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
}

/// Kills what `find` returns until it returns nothing (at most `timeout`); returns what is still there.
pub fn kill_until_gone(timeout: Duration, mut find: impl FnMut() -> Vec<u32>) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = find();
        if pids.is_empty() || Instant::now() > deadline {
            return pids;
        }
        for pid in &pids {
            kill(*pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cgroup directories named `name` directly under each hierarchy of `/sys/fs/cgroup` (for example
/// `/sys/fs/cgroup/memory/kubepods` on cgroup v1, `/sys/fs/cgroup/kubepods` on v2).
pub fn cgroup_trees(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut trees = Vec::new();
    if root.join(name).is_dir() {
        trees.push(root.join(name));
    }
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let candidate = entry.path().join(name);
        if candidate.is_dir() {
            trees.push(candidate);
        }
    }
    trees
}

/// Every cgroup directory under `tree` (itself included), deepest first.
fn cgroups_deepest_first(tree: &Path) -> Vec<PathBuf> {
    let mut all = vec![tree.to_path_buf()];
    let mut index = 0;
    while index < all.len() {
        for entry in std::fs::read_dir(&all[index]).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                all.push(entry.path());
            }
        }
        index += 1;
    }
    all.reverse();
    all
}

/// The processes in any cgroup under `tree`.
pub fn cgroup_processes(tree: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for cgroup in cgroups_deepest_first(tree) {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Kills every process in `tree` and removes its cgroups deepest first; returns what is left.
pub fn remove_cgroup_tree(tree: &Path) -> Vec<String> {
    let mut left: Vec<String> = kill_until_gone(Duration::from_secs(5), || cgroup_processes(tree))
        .into_iter()
        .map(|pid| format!("process {pid} in {}", tree.display()))
        .collect();
    for cgroup in cgroups_deepest_first(tree) {
        // A cgroup is gone shortly after its last process exits; retry for a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Err(error) = std::fs::remove_dir(&cgroup) {
            if error.kind() == std::io::ErrorKind::NotFound {
                break;
            }
            if Instant::now() > deadline {
                left.push(format!("cgroup {} ({error})", cgroup.display()));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    left
}

/// Runs a command, failing with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The iptables commands of this host (IPv4 and IPv6).
pub const IPTABLES: [&str; 2] = ["iptables", "ip6tables"];
/// The iptables tables Kubernetes writes to.
const TABLES: [&str; 4] = ["filter", "nat", "mangle", "raw"];

/// `(iptables command, table, chain)` of every chain whose name starts with one of `prefixes`.
pub fn iptables_chains(prefixes: &[&str]) -> Vec<(&'static str, &'static str, String)> {
    let mut chains = Vec::new();
    for iptables in IPTABLES {
        for table in TABLES {
            let Ok(rules) = run(iptables, &["-w", "-t", table, "-S"]) else { continue };
            for line in rules.lines() {
                if let Some(chain) = line.strip_prefix("-N ")
                    && prefixes.iter().any(|p| chain.starts_with(p))
                {
                    chains.push((iptables, table, chain.to_string()));
                }
            }
        }
    }
    chains
}

/// Removes every rule that jumps to a chain starting with one of `prefixes`, then those chains. Returns
/// what could not be removed.
pub fn remove_iptables_chains(prefixes: &[&str]) -> Vec<String> {
    for iptables in IPTABLES {
        for table in TABLES {
            let Ok(rules) = run(iptables, &["-w", "-t", table, "-S"]) else { continue };
            // Rules in chains of other names that jump to ours (FORWARD, PREROUTING, ...).
            for line in rules.lines() {
                let Some(rule) = line.strip_prefix("-A ") else { continue };
                let words: Vec<&str> = rule.split_whitespace().collect();
                let own_chain = prefixes.iter().any(|p| words[0].starts_with(p));
                let jumps_to_ours = words
                    .windows(2)
                    .any(|w| (w[0] == "-j" || w[0] == "-g") && prefixes.iter().any(|p| w[1].starts_with(p)));
                if jumps_to_ours && !own_chain {
                    let mut args: Vec<String> = ["-w", "-t", table, "-D"].map(String::from).to_vec();
                    args.extend(shell_words(rule));
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let _ = run(iptables, &args);
                }
            }
        }
    }
    let chains = iptables_chains(prefixes);
    for (iptables, table, chain) in &chains {
        let _ = run(iptables, &["-w", "-t", table, "-F", chain]);
    }
    for (iptables, table, chain) in &chains {
        let _ = run(iptables, &["-w", "-t", table, "-X", chain]);
    }
    iptables_chains(prefixes).into_iter().map(|(i, t, c)| format!("{i} -t {t} chain {c}")).collect()
}

/// Splits an `iptables -S` rule into words, keeping double-quoted words (comments) together.
fn shell_words(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut chars = rule.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The value of a sysctl (`net.ipv4.ip_forward`), read from `/proc/sys`.
pub fn read_sysctl(name: &str) -> Result<String> {
    let path = sysctl_path(name);
    Ok(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?.trim().to_string())
}

/// Sets a sysctl through `/proc/sys`.
pub fn write_sysctl(name: &str, value: &str) -> Result<()> {
    let path = sysctl_path(name);
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

/// Whether a network interface of this name exists.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_split_into_words_with_quoted_comments_kept_whole() {
        assert_eq!(
            shell_words(r#"FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD"#),
            ["FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD"]
        );
    }

    #[test]
    fn mount_paths_with_escaped_spaces_read_back_as_spaces() {
        assert_eq!(unescape_mount_path(r"/var/lib/a\040b"), PathBuf::from("/var/lib/a b"));
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }
}
