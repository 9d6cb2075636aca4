//! Two `kacme controller` processes against one control plane: only the holder of the Lease reconciles,
//! the other waits as a ready standby; when the leader is killed (SIGKILL), the standby takes over within
//! the lease duration and issuance goes on.

mod common;

use common::operator_env::{Ca, OperatorEnv, OperatorLaunch, RunningOperator};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kacme_testenv::{Pebble, PebbleOptions, poll_until};
use kube::api::{Api, ListParams, Patch, PatchParams};
use std::time::{Duration, Instant};

/// The chart's (and the binary's) default lease duration.
const LEASE_DURATION: Duration = Duration::from_secs(15);

fn certificate_yaml(name: &str) -> String {
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n  secretName: {name}-tls\n  issuerRef:\n    name: ca\n  dnsNames:\n  - {name}.example.test\n"
    )
}

fn replica(env: &mut OperatorEnv, pod: &str) -> RunningOperator {
    env.launch_operator(&OperatorLaunch {
        leader_elect: true,
        envs: vec![("POD_NAME".into(), pod.into()), ("POD_NAMESPACE".into(), "kacme".into())],
        ..OperatorLaunch::default()
    })
    .unwrap()
}

fn logs(replicas: &[&RunningOperator]) -> String {
    replicas.iter().map(|r| format!("--- {} ---\n{}\n", r.name, r.log_tail(40))).collect()
}

async fn holder(env: &OperatorEnv) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "kacme");
    leases.get_opt("kacme-controller").await.ok()??.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn wait_holder(env: &OperatorEnv, wanted: &str, timeout: Duration, replicas: &[&RunningOperator]) {
    poll_until(&format!("Lease held by {wanted}"), timeout, Duration::from_millis(100), || async {
        Ok(match holder(env).await {
            Some(h) if h == wanted => Ok(()),
            other => Err(format!("holder {other:?}")),
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(replicas)));
}

/// The instances that reported Events about a Certificate.
async fn reporters(env: &OperatorEnv, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), "apps");
    let list = events.list(&ListParams::default().fields(&format!("regarding.name={name}"))).await.unwrap();
    let mut instances: Vec<String> = list.items.into_iter().filter_map(|e| e.reporting_instance).collect();
    instances.sort();
    instances.dedup();
    instances
}

/// (status, body) of a replica's endpoint.
async fn get(replica: &RunningOperator, path: &str) -> (u16, String) {
    replica.get(path).await.unwrap_or_else(|e| panic!("{} {path}: {e:#}\n{}", replica.name, replica.log_tail(20)))
}

/// Waits until a replica's `/readyz` answers 200 with `body`.
async fn wait_readyz(replica: &RunningOperator, body: &str) {
    poll_until(
        &format!("{} /readyz: {body}", replica.name),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let (status, text) = get(replica, "/readyz").await;
            Ok(if status == 200 && text.trim() == body { Ok(()) } else { Err(format!("{status} {}", text.trim())) })
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}
{}",
            replica.log_tail(20)
        )
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_reconciles_and_a_standby_takes_over_when_it_dies() {
    tokio::time::timeout(Duration::from_secs(120), run()).await.expect("the test did not finish within 120s");
}

async fn run() {
    let pebble = Pebble::start(PebbleOptions::default()).await.expect("starting Pebble");
    let mut env = OperatorEnv::prepare(Ca::Pebble(pebble), false).await.expect("starting the environment");
    let a = replica(&mut env, "kacme-a");
    wait_holder(&env, "kacme-a", Duration::from_secs(20), &[&a]).await;
    let b = replica(&mut env, "kacme-b");
    poll_until("kacme-b waiting as a standby", Duration::from_secs(20), Duration::from_millis(100), || async {
        Ok(if b.log().contains("standby: waiting for the leader Lease") { Ok(()) } else { Err(b.log_tail(5)) })
    })
    .await
    .unwrap();
    wait_readyz(&b, "ok: standby, waiting for the leader Lease").await;
    wait_readyz(&a, "ok: leading").await;
    assert!(get(&a, "/metrics").await.1.lines().any(|l| l == "kacme_leader_election_is_leader 1"));
    assert!(get(&b, "/metrics").await.1.lines().any(|l| l == "kacme_leader_election_is_leader 0"));

    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    env.apply(&certificate_yaml("before")).await.unwrap();
    env.wait_ready("apps", "before", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&[&a, &b])));
    assert_eq!(reporters(&env, "before").await, ["kacme-a"], "only the leader wrote Events");
    let standby_log = b.log();
    assert!(
        !standby_log.contains("kacme controller started") && !standby_log.contains("certificate=apps/before"),
        "the standby reconciled nothing:\n{standby_log}"
    );
    assert_eq!(holder(&env).await.as_deref(), Some("kacme-a"));

    // The leader crashes: the standby takes over once the Lease expires.
    a.kill();
    let killed = Instant::now();
    wait_holder(&env, "kacme-b", LEASE_DURATION + Duration::from_secs(10), &[&a, &b]).await;
    let failover = killed.elapsed();
    eprintln!("failover: kacme-b holds the Lease {:.1}s after kacme-a was killed", failover.as_secs_f64());
    assert!(
        failover <= LEASE_DURATION + Duration::from_secs(3),
        "failover took {failover:?}, more than the lease duration {LEASE_DURATION:?} (+3s)"
    );
    env.apply(&certificate_yaml("after")).await.unwrap();
    let applied = Instant::now();
    env.wait_ready("apps", "after", Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&[&a, &b])));
    eprintln!("after failover: apply -> Ready in {:.1}s", applied.elapsed().as_secs_f64());
    assert_eq!(reporters(&env, "after").await, ["kacme-b"], "the new leader reconciles");
    wait_readyz(&b, "ok: leading").await;
    assert!(get(&b, "/metrics").await.1.lines().any(|l| l == "kacme_leader_election_is_leader 1"));

    // Someone else takes the Lease (as a replica that wrongly thought it expired would): the leader stops
    // at its next renewal, by exiting.
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "kacme");
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    let intruder = serde_json::json!({"spec": {"holderIdentity": "intruder", "renewTime": now, "acquireTime": now}});
    leases.patch("kacme-controller", &PatchParams::default(), &Patch::Merge(&intruder)).await.unwrap();
    let taken = Instant::now();
    poll_until(
        "kacme-b to exit after losing the Lease",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async { Ok(if b.exited() { Ok(()) } else { Err("still running".to_string()) }) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", b.log_tail(20)));
    eprintln!("kacme-b exited {:.1}s after the Lease was taken from it", taken.elapsed().as_secs_f64());
    assert!(b.log().contains("lost the leader Lease"), "{}", b.log_tail(10));
    assert_eq!(holder(&env).await.as_deref(), Some("intruder"), "the stepping-down leader left the Lease alone");
}
