//! Fault tests: the operator under kill -9, a CA outage, a CA that rejects half of its nonces, and another
//! client editing the same Certificates while they are issued. Each test runs a real control plane, a real
//! Pebble, the solver stand-in and `kacme controller` as a separate process, and has an overall deadline.

mod common;

use common::operator_env::{Ca, OPERATOR_USER, OperatorEnv, condition};
use common::within;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Event;
use kacme::api::Certificate;
use kacme::api::names::{TLS_CRT, TLS_KEY};
use kacme::pki::{key_matches_certificate, parse_chain, parse_private_key};
use kacme_testenv::{Pebble, PebbleOptions, poll_until};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "apps";
const ISSUER: &str = "ca";

/// A small deterministic generator (xorshift), seeded from the clock and printed, so that a failing run's
/// kill moments can be replayed with KACME_FAULT_SEED.
struct Random(u64);

impl Random {
    fn seeded() -> Random {
        let seed = std::env::var("KACME_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        eprintln!("fault seed: {seed} (rerun with KACME_FAULT_SEED={seed})");
        Random(seed.max(1))
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

fn certificate(name: &str, dns_names: Vec<String>) -> Certificate {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kacme.dev/v1alpha1",
        "kind": "Certificate",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"secretName": format!("{name}-tls"), "issuerRef": {"name": ISSUER}, "dnsNames": dns_names},
    }))
    .expect("a valid Certificate")
}

fn names(count: usize, prefix: &str) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

/// Creates one Certificate per name (one DNS name each), 16 requests at a time.
async fn create_certificates(env: &OperatorEnv, names: &[String]) {
    let api = env.certificates(NAMESPACE);
    futures::stream::iter(names.iter().map(|name| {
        let api = api.clone();
        let certificate = certificate(name, vec![format!("{name}.faults.test")]);
        async move { api.create(&PostParams::default(), &certificate).await }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<_>>()
    .await
    .expect("creating the Certificates");
}

fn is_ready(certificate: &Certificate) -> bool {
    condition(certificate, "Ready").is_some_and(|(status, _, _)| status == "True")
        && certificate.status.as_ref().is_some_and(|s| s.order.is_none() && s.revision.unwrap_or(0) >= 1)
}

/// The Certificates of the namespace that are not Ready yet, by name.
async fn not_ready(env: &OperatorEnv) -> kube::Result<Vec<Certificate>> {
    Ok(env
        .certificates(NAMESPACE)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| !is_ready(c))
        .collect())
}

/// Waits until every Certificate of the namespace is Ready; fails naming those that are not, with their
/// conditions, and the operator's log.
async fn wait_all_ready(env: &OperatorEnv, timeout: Duration) {
    let started = Instant::now();
    let result = poll_until("every Certificate Ready", timeout, Duration::from_millis(250), || async {
        let waiting = not_ready(env).await?;
        Ok(if waiting.is_empty() {
            Ok(())
        } else {
            let first: Vec<String> = waiting
                .iter()
                .take(5)
                .map(|c| format!("{}: {:?} / {:?}", c.name_any(), condition(c, "Ready"), condition(c, "Issuing")))
                .collect();
            Err(format!("{} not Ready, for example {}", waiting.len(), first.join("; ")))
        })
    })
    .await;
    if let Err(error) = result {
        panic!("{error:#}\nlast lines of the operator's log:\n{}", operator_log_tail(env));
    }
    eprintln!("all Ready {:.1}s after waiting began", started.elapsed().as_secs_f64());
}

fn operator_log_tail(env: &OperatorEnv) -> String {
    env.operator().map(|o| o.log_tail(20)).unwrap_or_default()
}

/// Pebble's serials as kacme writes them (lowercase hex, no leading zeros).
fn normalized_serial(serial: &str) -> String {
    serial.to_ascii_lowercase().trim_start_matches('0').to_string()
}

/// Checks every Certificate's Secret: its key matches its certificate, which certifies the requested
/// names; returns the serials by Certificate name.
async fn check_secrets(env: &OperatorEnv) -> BTreeMap<String, String> {
    let mut serials = BTreeMap::new();
    for certificate in env.certificates(NAMESPACE).list(&ListParams::default()).await.unwrap() {
        let name = certificate.name_any();
        let secret = env.secrets(NAMESPACE).get(&certificate.spec.secret_name).await.unwrap();
        let data = secret.data.unwrap_or_default();
        let chain = parse_chain(&data[TLS_CRT].0).unwrap_or_else(|e| panic!("{name}: unreadable tls.crt: {e}"));
        let key = parse_private_key(&data[TLS_KEY].0).unwrap_or_else(|e| panic!("{name}: unreadable tls.key: {e}"));
        assert!(key_matches_certificate(&key, &chain.leaf), "{name}: the Secret's key does not match its certificate");
        let mut wanted = certificate.spec.dns_names.clone();
        wanted.sort();
        let mut got = chain.leaf.dns_names.clone();
        got.sort();
        assert_eq!(got, wanted, "{name}: the certificate certifies the requested names");
        serials.insert(name, normalized_serial(&chain.leaf.serial));
    }
    serials
}

/// No solver Pod, Service or Ingress remains (after a grace period for the last cleanups); fails with the
/// Events of the Certificates whose solver objects remain.
async fn assert_no_solver_objects(env: &OperatorEnv) {
    if let Err(error) = env.wait_no_solver_objects(NAMESPACE).await {
        let left = env.solver_objects(NAMESPACE).await.unwrap_or_default();
        let events = events_by_object(&env.client).await;
        let owners: BTreeSet<String> = left
            .iter()
            .filter_map(|object| {
                object.split_once("/kacme-").map(|(_, rest)| rest.rsplit_once('-').map_or(rest, |(n, _)| n).to_string())
            })
            .collect();
        let histories: Vec<String> = owners.iter().map(|name| format!("{name}: {:?}", events.get(name))).collect();
        let mentions: Vec<String> = owners.iter().map(|name| format!("{NAMESPACE}/{name}}}")).chain(left).collect();
        panic!(
            "solver objects remain: {error:#}\nEvents of their Certificates:\n{}\nWhat the operator logged of them:\n{}",
            histories.join("\n"),
            env.operator_log_lines(&mentions)
        );
    }
}

/// No `-next-key` Secret remains.
async fn assert_no_next_keys(env: &OperatorEnv) {
    let left = env.next_key_secrets(NAMESPACE).await.unwrap();
    assert!(left.is_empty(), "next-key Secrets left behind: {left:?}");
}

/// Event reasons per involved object of the namespace.
async fn events_by_object(client: &Client) -> BTreeMap<String, Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let mut by_object: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in events.list(&ListParams::default()).await.unwrap() {
        let name = event.involved_object.name.clone().unwrap_or_default();
        // Repeated Events are aggregated into one with a count.
        for _ in 0..event.count.unwrap_or(1).max(1) {
            by_object.entry(name.clone()).or_default().push(event.reason.clone().unwrap_or_default());
        }
    }
    by_object
}

fn pebble(env: &OperatorEnv) -> &Pebble {
    match &env.ca {
        Ca::Pebble(pebble) => pebble,
        Ca::StepCa(_) => panic!("these tests run Pebble"),
    }
}

async fn environment(options: PebbleOptions, audit_log: bool) -> OperatorEnv {
    let ca = Ca::Pebble(Pebble::start(options).await.expect("starting Pebble"));
    let env = OperatorEnv::start_with(ca, audit_log).await.expect("starting the environment");
    env.apply(&env.issuer_yaml(NAMESPACE, ISSUER)).await.expect("applying the Issuer");
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_again_and_again_while_issuing_every_certificate_ends_ready_and_issued_once() {
    within(240, async {
        let mut env = environment(PebbleOptions::default(), false).await;
        let mut random = Random::seeded();
        let names = names(120, "crash");
        let started = Instant::now();
        create_certificates(&env, &names).await;

        // Kill -9 at random moments while the Certificates are being issued, restarting at once or after a
        // short pause, until the kills have hit at least five times and the issuance is over.
        let mut kills = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(200 + random.below(1300))).await;
            let waiting = not_ready(&env).await.unwrap().len();
            if waiting == 0 && kills >= 5 {
                break;
            }
            if kills >= 12 {
                break;
            }
            env.kill_operator();
            kills += 1;
            eprintln!("kill {kills} at {:.1}s with {waiting} not Ready", started.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_millis(random.below(400))).await;
            env.start_operator().unwrap();
        }
        wait_all_ready(&env, Duration::from_secs(120)).await;
        eprintln!("{} Certificates Ready after {kills} kills in {:.1}s", names.len(), started.elapsed().as_secs_f64());

        assert_no_solver_objects(&env).await;
        assert_no_next_keys(&env).await;
        let serials = check_secrets(&env).await;

        // Each Certificate got exactly one certificate from the CA: a restarted operator resumed the order
        // it had persisted instead of ordering (and issuing) again.
        let issued: Vec<String> = pebble(&env).issued_serials().unwrap().iter().map(|s| normalized_serial(s)).collect();
        let in_secrets: BTreeSet<&String> = serials.values().collect();
        let extra: Vec<&String> = issued.iter().filter(|s| !in_secrets.contains(s)).collect();
        let events = events_by_object(&env.client).await;
        let reordered: Vec<String> = events
            .iter()
            .filter(|(_, reasons)| reasons.iter().filter(|r| *r == "OrderCreated").count() > 1)
            .map(|(name, reasons)| format!("{name}: {reasons:?}"))
            .collect();
        assert!(
            extra.is_empty() && issued.len() == names.len(),
            "the CA issued {} certificates for {} Certificates; serials in no Secret: {extra:?}; Certificates with \
             several orders: {reordered:?}",
            issued.len(),
            names.len()
        );
        for certificate in env.certificates(NAMESPACE).list(&ListParams::default()).await.unwrap() {
            let revision = certificate.status.as_ref().and_then(|s| s.revision);
            assert_eq!(revision, Some(1), "{}: one issuance, revision 1", certificate.name_any());
        }
        eprintln!("Certificates that needed a second order (killed before the first was persisted): {reordered:?}");
    })
    .await
}

/// The operator's ACME requests so far, by "action outcome" (`kacme_acme_requests_total`).
async fn acme_requests(env: &OperatorEnv) -> BTreeMap<String, u64> {
    let operator = env.operator().expect("the operator runs");
    let (status, text) = operator.get("/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200, "{text}");
    kacme_testenv::acme_request_counts(&text)
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

fn pebble_mut(env: &mut OperatorEnv) -> &mut Pebble {
    match &mut env.ca {
        Ca::Pebble(pebble) => pebble,
        Ca::StepCa(_) => panic!("these tests run Pebble"),
    }
}

/// The messages of a Certificate's Ready and Issuing conditions.
fn condition_messages(certificate: &Certificate) -> String {
    ["Ready", "Issuing"]
        .iter()
        .filter_map(|t| {
            condition(certificate, t).map(|(status, reason, message)| format!("{t}={status} {reason}: {message}"))
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_outage_is_reported_and_backed_off_and_every_certificate_is_issued_once_the_ca_is_back() {
    within(300, async {
        const OUTAGE: Duration = Duration::from_secs(30);
        let mut env = environment(PebbleOptions::default(), true).await;
        let names = names(40, "outage");
        create_certificates(&env, &names).await;
        poll_until("a quarter of the Certificates Ready", Duration::from_secs(60), Duration::from_millis(50), || async {
            let waiting = not_ready(&env).await?.len();
            Ok(if waiting <= names.len() * 3 / 4 { Ok(()) } else { Err(format!("{waiting} not Ready")) })
        })
        .await
        .unwrap();

        // The CA goes away mid-run.
        let mut audit = env.audit().unwrap();
        audit.read_new().unwrap();
        let acme_before = acme_requests(&env).await;
        pebble(&env).stop();
        let stopped = Instant::now();
        let waiting = not_ready(&env).await.unwrap().len();
        eprintln!("Pebble stopped with {waiting} of {} Certificates not Ready", names.len());
        let directory = env.ca.directory_url().to_string();
        let host_port = directory.trim_start_matches("https://").split('/').next().unwrap().to_string();
        poll_until("every waiting Certificate reporting the outage", Duration::from_secs(25), Duration::from_millis(250), || async {
            let silent: Vec<String> = not_ready(&env)
                .await?
                .iter()
                .filter(|c| !condition_messages(c).contains(&host_port) && !condition_messages(c).to_lowercase().contains("connect"))
                .map(|c| format!("{}: {}", c.name_any(), condition_messages(c)))
                .collect();
            Ok(if silent.is_empty() { Ok(()) } else { Err(format!("{} do not name the failure, e.g. {:?}", silent.len(), &silent[..silent.len().min(3)])) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nlast lines of the operator's log:\n{}", operator_log_tail(&env)));
        let example = not_ready(&env).await.unwrap().first().map(condition_messages).unwrap_or_default();
        eprintln!("the outage as a Certificate reports it: {example}");
        tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;

        // Backed off, not a hot loop: a few attempts per waiting Certificate over the outage (one every 10 s,
        // each a few requests; a hot loop makes hundreds).
        let outage = stopped.elapsed();
        let acme = kacme_testenv::count_growth(&acme_requests(&env).await, &acme_before);
        let api: Vec<_> = audit.read_new().unwrap().into_iter().filter(|r| r.user == OPERATOR_USER).collect();
        let api_writes = api.iter().filter(|r| r.is_write()).count();
        let per_certificate = |n: usize| n as f64 / waiting.max(1) as f64;
        eprintln!(
            "during {:.0}s of outage, per waiting Certificate: {:.1} ACME requests ({acme:?}), {:.1} apiserver requests ({:.1} writes)",
            outage.as_secs_f64(),
            per_certificate(total(&acme) as usize),
            per_certificate(api.len()),
            per_certificate(api_writes)
        );
        let bound = outage.as_secs_f64() / 2.0;
        assert!(
            per_certificate(total(&acme) as usize) <= bound,
            "{:.1} ACME requests per waiting Certificate in {outage:?} (at most {bound:.0}: one every 2s): {acme:?}",
            per_certificate(total(&acme) as usize)
        );
        assert!(
            per_certificate(api.len()) <= 3.0 * bound,
            "{:.1} apiserver requests per waiting Certificate in {outage:?} (at most {:.0}: three every 2s)",
            per_certificate(api.len()),
            3.0 * bound
        );

        // A new Pebble on the same address: it knows no account and no order.
        pebble_mut(&mut env).restart().await.expect("restarting Pebble");
        // Pebble makes a new issuing root at each start (a real CA keeps its root), and kacme stores no chain
        // that does not verify to the issuer's roots: the Issuer is told the new root, as after a CA re-key.
        env.apply(&env.issuer_yaml(NAMESPACE, ISSUER)).await.expect("trusting the restarted Pebble's root");
        wait_all_ready(&env, Duration::from_secs(120)).await;
        eprintln!("all {} Ready {:.1}s after the CA came back", names.len(), stopped.elapsed().as_secs_f64() - outage.as_secs_f64());
        assert_no_solver_objects(&env).await;
        assert_no_next_keys(&env).await;
        check_secrets(&env).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_half_of_all_nonces_rejected_every_certificate_is_still_issued() {
    within(240, async {
        let env = environment(PebbleOptions { nonce_reject_percent: 50, ..PebbleOptions::default() }, false).await;
        let names = names(30, "nonce");
        let started = Instant::now();
        create_certificates(&env, &names).await;
        wait_all_ready(&env, Duration::from_secs(150)).await;
        let acme = acme_requests(&env).await;
        eprintln!(
            "{} Certificates Ready in {:.1}s with 50% of nonces rejected; ACME requests {acme:?}",
            names.len(),
            started.elapsed().as_secs_f64()
        );
        assert_no_solver_objects(&env).await;
        assert_no_next_keys(&env).await;
        check_secrets(&env).await;
        let events = events_by_object(&env.client).await;
        let failed: Vec<String> = events
            .iter()
            .filter(|(_, reasons)| reasons.iter().any(|r| r == "Failed" || r == "ChainNotTrusted"))
            .map(|(name, reasons)| format!("{name}: {reasons:?}"))
            .collect();
        assert!(failed.is_empty(), "a rejected nonce is retried, never a failed issuance: {failed:?}");
    })
    .await
}

/// Another client's edits of one Certificate over `rounds` rounds, a few hundred milliseconds apart: a
/// read-modify-write with the resourceVersion (labels, annotations, the spec; on 409 Conflict, read again
/// and redo) and a merge patch without one; with `rename`, one more DNS name in round 2. Returns how
/// often the apiserver answered the read-modify-write with a conflict.
async fn edit_repeatedly(api: &Api<Certificate>, name: &str, rounds: usize, rename: bool) -> usize {
    let mut conflicts = 0;
    let mut random = Random(name.bytes().fold(7, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    for round in 0..rounds {
        loop {
            let mut certificate = api.get(name).await.unwrap();
            certificate.labels_mut().insert(format!("editor.example/round-{round}"), "done".into());
            certificate.annotations_mut().insert("editor.example/last-round".into(), round.to_string());
            let template = certificate.spec.secret_template.get_or_insert_with(Default::default);
            template.annotations.insert("editor.example/round".into(), round.to_string());
            if round == 2 && rename {
                certificate.spec.dns_names.push(format!("{name}-more.faults.test"));
            }
            // Widen the window between read and write, as a slow client would.
            tokio::time::sleep(Duration::from_millis(30)).await;
            match api.replace(name, &PostParams::default(), &certificate).await {
                Ok(_) => break,
                Err(kube::Error::Api(status)) if status.code == 409 => conflicts += 1,
                Err(error) => panic!("editing {name}: {error}"),
            }
        }
        let patch =
            serde_json::json!({"metadata": {"annotations": {format!("editor.example/patched-{round}"): "yes"}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50 + random.below(250))).await;
    }
    conflicts
}

#[tokio::test(flavor = "multi_thread")]
async fn another_client_editing_the_same_certificates_loses_no_update_and_causes_no_extra_order() {
    within(240, async {
        const ROUNDS: usize = 10;
        let env = environment(PebbleOptions::default(), true).await;
        let names = names(30, "edit");
        let renamed: BTreeSet<String> = names.iter().step_by(5).cloned().collect();
        create_certificates(&env, &names).await;

        // While they are issued, another client edits every Certificate, all at once: read-modify-write with
        // the resourceVersion (409 Conflict when anyone wrote in between: read again and redo) of labels,
        // annotations and the spec, and merge patches without one. Some get one more name once.
        let api = env.certificates(NAMESPACE);
        let editors = names.iter().map(|name| edit_repeatedly(&api, name, ROUNDS, renamed.contains(name)));
        let conflicts: usize = futures::future::join_all(editors).await.into_iter().sum();
        eprintln!("the editor made {} edits and met {conflicts} conflicts", ROUNDS * names.len() * 2);
        wait_all_ready(&env, Duration::from_secs(120)).await;
        assert_no_solver_objects(&env).await;
        assert_no_next_keys(&env).await;
        check_secrets(&env).await;

        // No lost update: every edit of the other client is there, and the operator's finalizer too.
        for certificate in api.list(&ListParams::default()).await.unwrap() {
            let name = certificate.name_any();
            for round in 0..ROUNDS {
                assert_eq!(certificate.labels().get(&format!("editor.example/round-{round}")).map(String::as_str), Some("done"), "{name}: label of round {round}");
                assert_eq!(certificate.annotations().get(&format!("editor.example/patched-{round}")).map(String::as_str), Some("yes"), "{name}: patch of round {round}");
            }
            let last = (ROUNDS - 1).to_string();
            assert_eq!(certificate.annotations().get("editor.example/last-round"), Some(&last), "{name}");
            let template = certificate.spec.secret_template.as_ref().map(|t| &t.annotations);
            assert_eq!(template.and_then(|a| a.get("editor.example/round")), Some(&last), "{name}: spec edit");
            assert_eq!(certificate.spec.dns_names.len(), if renamed.contains(&name) { 2 } else { 1 }, "{name}");
            assert!(certificate.finalizers().iter().any(|f| f == kacme::controller::FINALIZER), "{name}: the operator's finalizer");
        }

        // No duplicate orders: one per Certificate, plus one for a new name.
        let events = events_by_object(&env.client).await;
        for name in &names {
            let orders = events.get(name).map_or(0, |r| r.iter().filter(|r| *r == "OrderCreated").count());
            let justified = 1 + usize::from(renamed.contains(name));
            assert!((1..=justified).contains(&orders), "{name}: {orders} orders, {justified} justified: {:?}", events.get(name));
        }
        let issued = pebble(&env).issued_serials().unwrap().len();
        assert!(issued <= names.len() + renamed.len(), "the CA issued {issued} certificates for {} Certificates", names.len());
        let operator_conflicts = env.audit().unwrap().read_new().unwrap().iter().filter(|r| r.user == OPERATOR_USER && r.code == 409).count();
        eprintln!("the apiserver answered the operator 409 Conflict {operator_conflicts} times; the CA issued {issued} certificates");
    })
    .await
}
