//! kacme-node-cleanup: removes what a real node ([`kacme_testenv::Node`]) left after its test process was
//! killed (processes, mounts, cgroups, iptables chains, the bridge, sysctls), as its state file under
//! `/var/lib/kacme-testenv` records; does nothing while a node is running. Exits 1 if something is left.
#![forbid(unsafe_code)]

use kacme_testenv::{CrashedNodeCleanup, clean_up_crashed_node, node_leftovers};

fn main() -> anyhow::Result<()> {
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
    let left = node_leftovers();
    if !left.is_empty() {
        println!("kacme-node-cleanup: still on this host:");
        for item in &left {
            println!("  {item}");
        }
        std::process::exit(1);
    }
    Ok(())
}
