//! kacme-node-cleanup: removes what a real node ([`kacme_testenv::Node`]) left after its test process was
//! killed (processes, mounts, cgroups, iptables chains, the bridge, sysctls), as its state file under
//! `/var/lib/kacme-testenv` records, then lists anything of a node still on the host and exits 1 if there
//! is. Does nothing while a node is running (its lock is held).
//!
//!   kacme-node-cleanup           clean up, then check
//!   kacme-node-cleanup --check   only check (for a leftover check after the tests)
#![forbid(unsafe_code)]

use kacme_testenv::{CrashedNodeCleanup, clean_up_crashed_node, node_is_running, node_leftovers};

fn main() -> anyhow::Result<()> {
    let check_only = std::env::args().nth(1).as_deref() == Some("--check");
    if node_is_running() {
        println!("kacme-node-cleanup: a node is running (its lock is held): nothing checked or touched");
        return Ok(());
    }
    if !check_only {
        match clean_up_crashed_node()? {
            CrashedNodeCleanup::NothingToDo => println!("kacme-node-cleanup: no crashed node recorded"),
            CrashedNodeCleanup::NodeRunning => {
                println!("kacme-node-cleanup: a node is running (its lock is held): nothing touched");
                return Ok(());
            }
            CrashedNodeCleanup::CleanedUp(problems) if problems.is_empty() => {
                println!("kacme-node-cleanup: cleaned up after a crashed node")
            }
            CrashedNodeCleanup::CleanedUp(problems) => println!("kacme-node-cleanup: could not remove {problems:?}"),
        }
    }
    let left = node_leftovers();
    if left.is_empty() {
        println!("kacme-node-cleanup: no real node left on this host");
        return Ok(());
    }
    println!("kacme-node-cleanup: left on this host by a real node (remove with `kacme-node-cleanup`):");
    for item in &left {
        println!("  {item}");
    }
    std::process::exit(1);
}
