//! Resident memory and CPU time of a process, from `/proc` (Linux).

use anyhow::{Context as _, Result, bail};
use std::sync::OnceLock;

/// One look at a process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessSample {
    /// Resident memory now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// The highest resident memory so far (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// User plus system CPU time so far, seconds.
    pub cpu_seconds: f64,
}

/// Samples `/proc/<pid>/status` and `/proc/<pid>/stat`; fails when the process is gone.
pub fn sample_process(pid: u32) -> Result<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the process exited?)"))?;
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let kib = |field: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    };
    Ok(ProcessSample {
        rss_kib: kib("VmRSS:")?,
        peak_rss_kib: kib("VmHWM:")?,
        cpu_seconds: cpu_ticks(&stat)? as f64 / clock_ticks_per_second() as f64,
    })
}

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`), in clock ticks. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Result<u64> {
    let Some((_, rest)) = stat.rsplit_once(')') else { bail!("unexpected /proc/<pid>/stat: {stat:?}") };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    match (field(14), field(15)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => bail!("unexpected /proc/<pid>/stat: {stat:?}"),
    }
}

/// CPU seconds that the whole machine has been busy so far, all CPUs together (every state of the first
/// line of `/proc/stat` but idle and iowait).
pub fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is part of user time already).
    let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    Ok(busy as f64 / clock_ticks_per_second() as f64)
}

/// CPU seconds used so far by `pid` and every process below it, including children that have exited and
/// been reaped (their time is in their parent's cutime and cstime).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    tree_cpu_seconds_by_command(pid).values().sum()
}

/// Like [`tree_cpu_seconds`], by command name (`kube-apiserver`, `etcd`, ...; the name of `/proc/<pid>/comm`).
/// Exited children count under their parent's name.
pub fn tree_cpu_seconds_by_command(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut processes = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if let Some((parent, ticks)) = parent_and_tree_ticks(&stat) {
                let command = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map_or("?", |(c, _)| c);
                processes.push((id, parent, ticks, command.to_string()));
            }
        }
    }
    let mut by_command = std::collections::BTreeMap::new();
    let mut tree = vec![pid];
    while let Some(current) = tree.pop() {
        for (id, parent, ticks, command) in &processes {
            if *id == current {
                *by_command.entry(command.clone()).or_insert(0.0) += *ticks as f64 / clock_ticks_per_second() as f64;
            }
            if *parent == current && *id != current {
                tree.push(*id);
            }
        }
    }
    by_command
}

/// The parent pid (field 4) and utime + stime + cutime + cstime (fields 14 to 17) of a `/proc/<pid>/stat`.
fn parent_and_tree_ticks(stat: &str) -> Option<(u32, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
    let parent = u32::try_from(field(4)?).ok()?;
    let ticks = (14..=17).map(field).sum::<Option<i64>>()?;
    Some((parent, u64::try_from(ticks).unwrap_or(0)))
}

/// `getconf CLK_TCK` (100 on every common Linux).
fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (kacme (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_ticks(stat).unwrap(), 325);
        assert!(cpu_ticks("garbage").is_err());
        assert_eq!(parent_and_tree_ticks(stat), Some((1, 325)));
    }

    #[test]
    fn the_test_process_itself_can_be_sampled() {
        let sample = sample_process(std::process::id()).unwrap();
        assert!(sample.rss_kib > 0 && sample.peak_rss_kib >= sample.rss_kib, "{sample:?}");
        assert!(sample.cpu_seconds >= 0.0);
        assert!(tree_cpu_seconds(std::process::id()) >= sample.cpu_seconds - 0.011);
        assert!(machine_busy_seconds().unwrap() > 0.0);
    }
}
