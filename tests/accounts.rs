//! ACME accounts end to end: an Issuer (and a ClusterIssuer's per-namespace account) keeps its account
//! across operator restarts and edits of its key Secret that keep the key, without a single account request
//! to the CA, and still issues. Real control plane, real Pebble (behind a counting proxy) and step-ca, and
//! `kacme controller` as a separate process that the tests kill and start again.

mod common;

use common::operator_env::{Ca, OperatorEnv};
use common::within;
use kacme::api::{ClusterIssuer, Issuer};
use kacme_testenv::{HostileAcme, HostileBehaviour, PebbleOptions, StepCaOptions, acme_request_counts, poll_until};
use kube::Api;
use std::collections::BTreeMap;
use std::time::Duration;

const NAMESPACE: &str = "apps";
const WAIT: Duration = Duration::from_secs(60);
/// Pebble's newAccount path, as the counting proxy names requests.
const PEBBLE_NEW_ACCOUNT: &str = "POST /sign-me-up";

fn indented(pem: &str) -> String {
    pem.lines().map(|l| format!("      {l}\n")).collect()
}

fn issuer_yaml(name: &str, server: &str, bundle: &str) -> String {
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\nspec:\n  acme:\n    server: {server}\n    email: ops@example.test\n    caBundle: |\n{}    privateKeySecretRef:\n      name: {name}-account\n    solvers:\n    - http01:\n        ingress:\n          ingressClassName: kacme-test\n",
        indented(bundle)
    )
}

fn cluster_issuer_yaml(name: &str, server: &str, bundle: &str) -> String {
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: ClusterIssuer\nmetadata:\n  name: {name}\nspec:\n  acme:\n    server: {server}\n    email: ops@example.test\n    accountPerNamespace: true\n    caBundle: |\n{}    privateKeySecretRef:\n      name: {name}-account\n    solvers:\n    - http01:\n        ingress:\n          ingressClassName: kacme-test\n",
        indented(bundle)
    )
}

fn certificate_yaml(name: &str, issuer: &str, kind: &str) -> String {
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\nspec:\n  secretName: {name}-tls\n  issuerRef:\n    name: {issuer}\n    kind: {kind}\n  dnsNames:\n  - {name}.example.test\n"
    )
}

/// The account request counts of the running operator (`kacme_acme_requests_total{action="account"}`),
/// read once its metrics endpoint answers.
async fn operator_account_requests(env: &OperatorEnv) -> u64 {
    let operator = env.operator().expect("the operator runs");
    let counts: BTreeMap<String, u64> =
        poll_until("the operator's metrics", WAIT, Duration::from_millis(100), || async {
            Ok(match operator.get("/metrics").await {
                Ok((200, text)) => Ok(acme_request_counts(&text)),
                Ok((status, text)) => Err(format!("{status}: {text:.200}")),
                Err(error) => Err(error.to_string()),
            })
        })
        .await
        .expect("the operator serves its metrics");
    counts.iter().filter(|(key, _)| key.starts_with("account ")).map(|(_, count)| count).sum()
}

/// Waits until the Issuer's status records its account (URL, key thumbprint, server); returns the URL.
async fn recorded_account(env: &OperatorEnv, name: &str) -> String {
    let issuers: Api<Issuer> = Api::namespaced(env.client.clone(), NAMESPACE);
    poll_until("the account recorded in the Issuer's status", WAIT, Duration::from_millis(100), || async {
        let acme = issuers.get(name).await?.status.and_then(|s| s.acme);
        Ok(match acme {
            Some(acme) if acme.key_thumbprint.is_some() && acme.server.is_some() => Ok(acme.uri.unwrap_or_default()),
            other => Err(format!("status.acme: {other:?}")),
        })
    })
    .await
    .expect("the Issuer records its account")
}

async fn label_secret(env: &OperatorEnv, namespace: &str, name: &str, label: &str) {
    let args = ["label", "secret", "-n", namespace, name, label, "--overwrite"];
    env.control_plane.kubectl(&args).await.expect("labelling the key Secret");
}

/// Issues Certificate `name` from `issuer` and waits until it is Ready.
async fn issue(env: &OperatorEnv, name: &str, issuer: &str, kind: &str) {
    env.apply(&certificate_yaml(name, issuer, kind)).await.expect("applying the Certificate");
    env.wait_ready(NAMESPACE, name, WAIT).await.unwrap_or_else(|e| panic!("{name}: {e:#}"));
}

/// What happens to the operator and the key Secrets between two rounds of issuance.
#[derive(Clone, Copy, Debug)]
enum Disturbance {
    Restart,
    LabelKeySecrets,
    LabelKeySecretsWhileDownThenStart,
}

const DISTURBANCES: [Disturbance; 3] =
    [Disturbance::Restart, Disturbance::LabelKeySecrets, Disturbance::LabelKeySecretsWhileDownThenStart];

async fn relabel(env: &OperatorEnv, key_secrets: &[(&str, &str)], round: usize) {
    for (namespace, name) in key_secrets {
        label_secret(env, namespace, name, &format!("touched={round}")).await;
    }
}

async fn disturb(env: &mut OperatorEnv, disturbance: Disturbance, key_secrets: &[(&str, &str)], round: usize) {
    match disturbance {
        Disturbance::Restart => {
            env.kill_operator();
            env.start_operator().expect("the operator starts again");
        }
        Disturbance::LabelKeySecrets => {
            relabel(env, key_secrets, round).await;
            // Let the operator see the edit before the next Certificate needs the account.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Disturbance::LabelKeySecretsWhileDownThenStart => {
            env.kill_operator();
            relabel(env, key_secrets, round).await;
            env.start_operator().expect("the operator starts again");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_issuers_keep_their_accounts_across_restarts_and_key_secret_edits_without_new_account_requests() {
    within(300, async {
        // newAccount requests are counted exactly: Pebble must not reject nonces at random (a retried request
        // would count twice).
        let options = PebbleOptions { nonce_reject_percent: 0, ..PebbleOptions::default() };
        let mut env = OperatorEnv::with_pebble(options).await.expect("environment");
        let Ca::Pebble(pebble) = &env.ca else { panic!("Pebble") };
        // One counting proxy per issuer, so that each issuer's account requests are seen apart.
        let own = HostileAcme::start(pebble, HostileBehaviour::PassThrough).await.expect("a counting proxy");
        let shared = HostileAcme::start(pebble, HostileBehaviour::PassThrough).await.expect("a counting proxy");
        let new_accounts = |proxy: &HostileAcme| proxy.handle().request_counts().get(PEBBLE_NEW_ACCOUNT).copied();
        env.apply(&issuer_yaml("own", own.directory_url(), &own.ca_bundle_pem())).await.expect("the Issuer");
        let yaml = cluster_issuer_yaml("shared", shared.directory_url(), &shared.ca_bundle_pem());
        env.apply(&yaml).await.expect("the ClusterIssuer");

        issue(&env, "first-own", "own", "Issuer").await;
        issue(&env, "first-shared", "shared", "ClusterIssuer").await;
        let account = recorded_account(&env, "own").await;
        let cluster_issuers: Api<ClusterIssuer> = Api::all(env.client.clone());
        let shared_status = cluster_issuers.get("shared").await.expect("the ClusterIssuer").status;
        eprintln!("Issuer account {account}; ClusterIssuer status {shared_status:?}");
        let namespace_secret = kacme::desired::namespace_account_secret_name("shared-account", NAMESPACE);
        let secret = env.secrets("kacme").get(&namespace_secret).await.expect("the namespace's key Secret");
        let annotations = secret.metadata.annotations.unwrap_or_default();
        assert!(
            annotations.contains_key("kacme.dev/account-url"),
            "the namespace's account is recorded: {annotations:?}"
        );
        // Registered once each: no lookup after the new key Secret was stored.
        let registered = (new_accounts(&own), new_accounts(&shared));
        eprintln!("newAccount requests after the first issuance (Issuer, ClusterIssuer): {registered:?}");
        assert_eq!(registered, (Some(1), Some(2)), "one registration for the Issuer, two for the ClusterIssuer");

        let key_secrets = [(NAMESPACE, "own-account"), ("kacme", namespace_secret.as_str())];
        for (round, disturbance) in DISTURBANCES.into_iter().enumerate() {
            disturb(&mut env, disturbance, &key_secrets, round).await;
            issue(&env, &format!("own-{round}"), "own", "Issuer").await;
            issue(&env, &format!("shared-{round}"), "shared", "ClusterIssuer").await;
            let now = (new_accounts(&own), new_accounts(&shared));
            eprintln!("after {disturbance:?}: newAccount requests (Issuer, ClusterIssuer) {now:?}");
            assert_eq!(now, registered, "{disturbance:?}: no newAccount request");
            assert_eq!(recorded_account(&env, "own").await, account, "{disturbance:?}: the same account");
            if !matches!(disturbance, Disturbance::LabelKeySecrets) {
                assert_eq!(operator_account_requests(&env).await, 0, "{disturbance:?}: the new process sent none");
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn step_ca_an_issuer_keeps_its_account_across_restarts_and_key_secret_edits_without_account_requests() {
    within(300, async {
        let mut env = OperatorEnv::with_step_ca(StepCaOptions::default()).await.expect("environment");
        let yaml = issuer_yaml("own", env.ca.directory_url(), &env.ca.ca_bundle_pem());
        env.apply(&yaml).await.expect("the Issuer");
        issue(&env, "first-own", "own", "Issuer").await;
        let account = recorded_account(&env, "own").await;
        let registered = operator_account_requests(&env).await;
        eprintln!("step-ca: account requests of the first operator process: {registered}");
        assert_eq!(registered, 1, "one registration, no lookup after the key Secret was stored");

        for (round, disturbance) in DISTURBANCES.into_iter().enumerate() {
            let before = operator_account_requests(&env).await;
            disturb(&mut env, disturbance, &[(NAMESPACE, "own-account")], round).await;
            let from = if matches!(disturbance, Disturbance::LabelKeySecrets) { before } else { 0 };
            issue(&env, &format!("own-{round}"), "own", "Issuer").await;
            assert_eq!(operator_account_requests(&env).await, from, "{disturbance:?}: no account request");
            assert_eq!(recorded_account(&env, "own").await, account, "{disturbance:?}: the same account");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_a_restored_account_the_ca_forgot_is_registered_again_once_and_the_certificate_is_issued() {
    within(300, async {
        // newAccount requests are counted exactly: Pebble must not reject nonces at random (a retried request
        // would count twice).
        let options = PebbleOptions { nonce_reject_percent: 0, ..PebbleOptions::default() };
        let mut env = OperatorEnv::with_pebble(options).await.expect("environment");
        let pebble_new_accounts = |env: &OperatorEnv| {
            let Ca::Pebble(pebble) = &env.ca else { panic!("Pebble") };
            pebble.request_counts().expect("Pebble's request counts").get(PEBBLE_NEW_ACCOUNT).copied().unwrap_or(0)
        };
        env.apply(&issuer_yaml("own", env.ca.directory_url(), &env.ca.ca_bundle_pem())).await.expect("the Issuer");
        issue(&env, "before", "own", "Issuer").await;
        let first = recorded_account(&env, "own").await;
        assert_eq!(pebble_new_accounts(&env), 1, "registered once");

        // The CA loses its state while the operator is down; the restarted operator restores the recorded
        // account without asking, and learns at its first order that the CA no longer knows it.
        env.kill_operator();
        let Ca::Pebble(pebble) = &mut env.ca else { panic!("Pebble") };
        pebble.restart().await.expect("restarting Pebble");
        // Pebble makes a new issuing root at each start: the Issuer is told, as after a CA re-key.
        env.apply(&issuer_yaml("own", env.ca.directory_url(), &env.ca.ca_bundle_pem())).await.expect("the Issuer");
        env.start_operator().expect("the operator starts again");
        issue(&env, "after", "own", "Issuer").await;

        let certificate = env.certificates(NAMESPACE).get("after").await.expect("the Certificate");
        let status = certificate.status.expect("a status");
        assert_eq!(status.failed_issuance_attempts, None, "the forgotten account is not the Certificate's failure");
        let new_accounts = pebble_new_accounts(&env);
        eprintln!(
            "newAccount requests in all: {new_accounts} (the first registration, then a lookup and a registration)"
        );
        assert_eq!(new_accounts, 3, "one lookup and one registration after the CA forgot the account");
        // The Issuer records the new account at its next reconcile (here: a change of its metadata).
        let args = ["annotate", "issuer", "-n", NAMESPACE, "own", "example.test/poke=1"];
        env.control_plane.kubectl(&args).await.expect("annotating the Issuer");
        let issuers: Api<Issuer> = Api::namespaced(env.client.clone(), NAMESPACE);
        poll_until("the new account in the Issuer's status", WAIT, Duration::from_millis(100), || async {
            let uri = issuers.get("own").await?.status.and_then(|s| s.acme).and_then(|a| a.uri);
            Ok(if uri.as_ref().is_some_and(|u| *u != first) { Ok(()) } else { Err(format!("uri {uri:?}")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.operator_log()));
    })
    .await
}
