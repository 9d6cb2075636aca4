//! The ACME lifecycle a private-CA user expects, end to end: a real control plane, `kacme controller` as a
//! separate process, the solver stand-in, and Pebble (which offers profiles and ACME Renewal Information) or
//! step-ca (which offers neither).
//!
//! - profiles: an issuer's `profile` and a Certificate's own are sent and honoured (the certificate has the
//!   profile's lifetime); a profile the CA does not offer is refused before any order, on the issuer and on
//!   the Certificate, with the CA's list;
//! - renewal windows (RFC 9773): the issuer says its CA offers them, a Certificate shows its window, and a CA
//!   that moves the window to the past gets a renewal within the check interval, whose order names the
//!   certificate it replaces; a CA without renewal information is left alone (no status, no request).

mod common;

use common::operator_env::{Ca, OperatorEnv, condition};
use common::{within, without_colours};
use kacme::api::names::TLS_CRT;
use kacme::api::{Certificate, Issuer};
use kacme::pki::parse_chain;
use kacme_testenv::{Pebble, PebbleOptions, StepCaOptions, poll_until};
use kube::api::Api;
use std::time::{Duration, Instant, SystemTime};

const NAMESPACE: &str = "apps";
const WAIT: Duration = Duration::from_secs(90);

fn pebble(env: &OperatorEnv) -> &Pebble {
    match &env.ca {
        Ca::Pebble(pebble) => pebble,
        Ca::StepCa(_) => panic!("this test runs Pebble"),
    }
}

/// The environment's Issuer `name`, asking for `profile` when given.
fn issuer_yaml(env: &OperatorEnv, name: &str, profile: Option<&str>) -> String {
    let yaml = env.issuer_yaml(NAMESPACE, name);
    match profile {
        Some(profile) => yaml.replacen("    email:", &format!("    profile: {profile}\n    email:"), 1),
        None => yaml,
    }
}

fn certificate_yaml(name: &str, issuer: &str, profile: Option<&str>) -> String {
    let profile = profile.map(|p| format!("  profile: {p}\n")).unwrap_or_default();
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\nspec:\n  secretName: {name}-tls\n  issuerRef:\n    name: {issuer}\n  dnsNames:\n  - {name}.lifecycle.test\n{profile}"
    )
}

/// (status, reason, message) of an Issuer's Ready condition.
fn issuer_ready(issuer: &Issuer) -> Option<(String, String, String)> {
    let conditions = &issuer.status.as_ref()?.conditions;
    conditions.iter().find(|c| c.type_ == "Ready").map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_issuer(env: &OperatorEnv, name: &str, check: impl Fn(&Issuer) -> bool) -> Issuer {
    let api: Api<Issuer> = Api::namespaced(env.client.clone(), NAMESPACE);
    let result = poll_until(&format!("Issuer {name}"), WAIT, Duration::from_millis(200), || async {
        Ok(match api.get_opt(name).await? {
            Some(issuer) if check(&issuer) => Ok(issuer),
            Some(issuer) => Err(format!("Ready: {:?}, status.acme: {:?}", issuer_ready(&issuer), issuer.status)),
            None => Err("no such Issuer".into()),
        })
    })
    .await;
    result.unwrap_or_else(|e| panic!("{e:#}\noperator log:\n{}", env.operator_log()))
}

/// The leaf of the Certificate's Secret: PEM, and its lifetime.
async fn stored_leaf(env: &OperatorEnv, name: &str) -> (String, Duration, Option<String>) {
    let secret = env.secrets(NAMESPACE).get(&format!("{name}-tls")).await.expect("the Secret");
    let pem = String::from_utf8(secret.data.expect("data")[TLS_CRT].0.clone()).expect("PEM text");
    let chain = parse_chain(pem.as_bytes()).expect("a chain");
    let lifetime = chain.leaf.not_after.duration_since(chain.leaf.not_before).unsigned_abs();
    let leaf_pem = pem.split_inclusive("-----END CERTIFICATE-----\n").next().expect("a leaf").to_string();
    (leaf_pem, lifetime, chain.leaf.renewal_id)
}

async fn order_events(env: &OperatorEnv, name: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(env.client.clone(), NAMESPACE);
    let list = events
        .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("Events");
    list.items.into_iter().filter(|e| e.reason.as_deref() == Some("OrderCreated")).filter_map(|e| e.message).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn profiles_are_sent_and_a_profile_the_ca_lacks_is_refused_before_any_order() {
    within(300, async {
        let hour = Duration::from_secs(3600);
        let options = PebbleOptions { profiles: vec![("shortlived".into(), 2 * hour)], ..PebbleOptions::default() };
        let env = OperatorEnv::with_pebble(options).await.expect("environment");
        env.apply(&issuer_yaml(&env, "plain", None)).await.expect("Issuer plain");
        env.apply(&issuer_yaml(&env, "short", Some("shortlived"))).await.expect("Issuer short");
        env.apply(&issuer_yaml(&env, "unknown", Some("tlsserver"))).await.expect("Issuer unknown");

        // The issuer says what the CA offers; one asking for a profile the CA lacks is not Ready.
        let plain = wait_issuer(&env, "plain", |i| issuer_ready(i).is_some_and(|(s, _, _)| s == "True")).await;
        let acme = plain.status.and_then(|s| s.acme).expect("status.acme");
        assert_eq!(acme.profiles, ["default", "shortlived"], "{acme:?}");
        assert_eq!(acme.renewal_info, Some(true), "Pebble offers renewalInfo: {acme:?}");
        let unknown = wait_issuer(&env, "unknown", |i| issuer_ready(i).is_some_and(|(s, _, _)| s == "False")).await;
        let (_, reason, message) = issuer_ready(&unknown).expect("Ready");
        eprintln!("Issuer unknown: {reason}: {message}");
        assert_eq!(reason, "ProfileNotOffered");
        assert!(message.contains("\"tlsserver\"") && message.contains("default, shortlived"), "{message}");

        // Pebble gives an order without a profile a random one: every order here names its profile, the
        // Certificate's own winning over the issuer's.
        for (name, issuer, profile) in [
            ("byissuer", "short", None),
            ("bycert", "plain", Some("shortlived")),
            ("override", "short", Some("default")),
        ] {
            env.apply(&certificate_yaml(name, issuer, profile)).await.expect("a Certificate");
        }
        env.apply(&certificate_yaml("missing", "plain", Some("tlsserver"))).await.expect("Certificate missing");
        for (name, expected) in [("byissuer", 2 * hour), ("bycert", 2 * hour), ("override", 90 * 24 * hour)] {
            env.wait_ready(NAMESPACE, name, WAIT).await.expect("Ready");
            let (_, lifetime, _) = stored_leaf(&env, name).await;
            eprintln!("{name}: lifetime {lifetime:?}");
            // Pebble ends the validity a second early and may backdate notBefore a little.
            let slack = Duration::from_secs(60);
            assert!(
                lifetime + slack >= expected && lifetime <= expected + slack,
                "{name}: {lifetime:?}, not {expected:?}"
            );
        }
        let missing = env
            .wait_certificate(NAMESPACE, "missing", WAIT, "ProfileNotOffered", |c| {
                condition(c, "Ready").is_some_and(|(s, r, _)| s == "False" && r == "ProfileNotOffered")
            })
            .await
            .expect("refused");
        let (_, _, message) = condition(&missing, "Ready").expect("Ready");
        eprintln!("Certificate missing: {message}");
        assert!(message.contains("\"tlsserver\"") && message.contains("default, shortlived"), "{message}");
        assert!(order_events(&env, "missing").await.is_empty(), "no order for a profile the CA lacks");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_window_the_ca_moves_to_the_past_renews_at_once_naming_the_replaced_certificate() {
    within(300, async {
        let mut env = OperatorEnv::with_pebble(PebbleOptions::default()).await.expect("environment");
        env.kill_operator();
        let interval = Duration::from_secs(3);
        env.extra_args = vec![format!("--renewal-info-max-interval={}s", interval.as_secs())];
        env.start_operator().expect("the operator");
        env.apply(&issuer_yaml(&env, "pebble", None)).await.expect("Issuer");
        env.apply(&certificate_yaml("web", "pebble", None)).await.expect("Certificate");
        env.wait_ready(NAMESPACE, "web", WAIT).await.expect("Ready");
        let (leaf_pem, _, id) = stored_leaf(&env, "web").await;
        let id = id.expect("Pebble's certificates carry an authority key identifier");

        // The Certificate shows the CA's window for its certificate, and renews inside it.
        let shown = env
            .wait_certificate(NAMESPACE, "web", WAIT, "the CA's renewal window in status", |c| {
                c.status.as_ref().and_then(|s| s.renewal_info.as_ref()).is_some_and(|r| r.certificate_id == id)
            })
            .await
            .expect("status.renewalInfo");
        let status = shown.status.expect("status");
        let info = status.renewal_info.clone().expect("renewalInfo");
        eprintln!("renewalInfo: {info:?}; renewalTime {:?}", status.renewal_time);
        let (start, end) = (info.window_start.clone().expect("start").0, info.window_end.clone().expect("end").0);
        let renewal = status.renewal_time.expect("renewalTime").0;
        assert!(start <= renewal && renewal <= end, "renewal {renewal} inside the window {start}..{end}");
        assert!(info.last_error.is_none(), "{info:?}");
        let checked = info.next_check.0;
        assert!(checked > jiff::Timestamp::now() - Duration::from_secs(60), "the next check is soon: {checked}");

        // The CA moves the window to the past (as after an incident): kacme sees it at its next check and
        // renews at once, naming the certificate it replaces.
        let now = SystemTime::now();
        pebble(&env)
            .set_renewal_window(&leaf_pem, now - Duration::from_secs(7200), now - Duration::from_secs(3600))
            .await
            .expect("moving the window");
        let moved = Instant::now();
        env.wait_certificate(NAMESPACE, "web", WAIT, "the renewal", |c| {
            c.status.as_ref().and_then(|s| s.revision) == Some(2)
                && condition(c, "Ready").is_some_and(|(s, _, _)| s == "True")
        })
        .await
        .expect("renewed");
        eprintln!(
            "renewed {:.1}s after the CA moved the window (check interval {interval:?})",
            moved.elapsed().as_secs_f64()
        );
        let (_, _, new_id) = stored_leaf(&env, "web").await;
        assert_ne!(new_id.as_deref(), Some(id.as_str()), "a new certificate");
        // Each order has its own OrderCreated Event (their notes differ, so neither hides the other); the
        // operator's log tells what the renewal order said.
        let orders = order_events(&env, "web").await;
        let operator = env.operator().expect("an operator");
        let log = without_colours(&operator.log());
        assert_eq!(orders.len(), 2, "an OrderCreated Event per order: {orders:?}\noperator log:\n{log}");
        let created: Vec<&str> = log.lines().filter(|l| l.contains("created an ACME order")).collect();
        eprintln!("orders:\n{}", created.join("\n"));
        assert_eq!(created.len(), 2, "{created:?}");
        assert!(created[0].contains("replaces=None"), "the first order replaces nothing: {}", created[0]);
        assert!(created[1].contains(&format!("replaces=Some(\"{id}\")")), "{}", created[1]);
        assert!(!log.contains("ordering without"), "Pebble accepted replaces:\n{}", operator.log_tail(40));
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_without_renewal_information_is_left_alone() {
    within(240, async {
        let env = OperatorEnv::with_step_ca(StepCaOptions::default()).await.expect("environment");
        env.apply(&issuer_yaml(&env, "step", None)).await.expect("Issuer");
        let issuer = wait_issuer(&env, "step", |i| issuer_ready(i).is_some_and(|(s, _, _)| s == "True")).await;
        let acme = issuer.status.and_then(|s| s.acme).expect("status.acme");
        assert_eq!(acme.renewal_info, Some(false), "step-ca offers no renewalInfo: {acme:?}");
        assert!(acme.profiles.is_empty(), "{acme:?}");
        env.apply(&certificate_yaml("web", "step", None)).await.expect("Certificate");
        let ready = env.wait_ready(NAMESPACE, "web", WAIT).await.expect("Ready");
        // A few passes later still nothing about renewal windows, and the renewal follows kacme's schedule.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let certificate: Certificate = env.certificates(NAMESPACE).get("web").await.expect("the Certificate");
        let status = certificate.status.expect("status");
        assert_eq!(status.renewal_info, None, "{status:?}");
        assert_eq!(status.renewal_time, ready.status.and_then(|s| s.renewal_time));
        let operator = env.operator().expect("an operator");
        assert!(!operator.log().contains("renewalInfo"), "{}", operator.log_tail(40));
    })
    .await
}

/// Whether the CA itself says it revoked the certificate with serial `serial` (lowercase hex).
async fn revoked_at_ca(env: &OperatorEnv, serial: &str) -> bool {
    let serial = serial.trim_start_matches('0');
    match &env.ca {
        Ca::Pebble(pebble) => {
            pebble.certificate_status(serial).await.expect("Pebble's status").as_deref() == Some("Revoked")
        }
        Ca::StepCa(step_ca) => step_ca.revoked_serials().await.expect("step-ca's CRL").iter().any(|s| s == serial),
    }
}

/// Runs `kacme ARGS` as a user would, with the control plane's kubeconfig.
async fn kacme_cli(env: &OperatorEnv, args: &[&str]) -> String {
    let output =
        common::operator_env::user_command(&common::operator_env::kacme_binary(), env.control_plane.kubeconfig_path())
            .args(args)
            .output()
            .await
            .expect("running kacme");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "kacme {args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The serial (hex) and public key of the certificate in the Secret of `name`.
async fn stored_serial_and_key(env: &OperatorEnv, name: &str) -> (String, Vec<u8>) {
    let secret = env.secrets(NAMESPACE).get(&format!("{name}-tls")).await.expect("the Secret");
    let chain = parse_chain(&secret.data.expect("data")[TLS_CRT].0).expect("a chain");
    (chain.leaf.serial, chain.leaf.public_key_raw)
}

async fn wait_revision(env: &OperatorEnv, name: &str, revision: i64) -> Certificate {
    env.wait_certificate(NAMESPACE, name, WAIT, &format!("revision {revision}"), |c| {
        c.status.as_ref().and_then(|s| s.revision) == Some(revision)
            && condition(c, "Ready").is_some_and(|(s, _, _)| s == "True")
    })
    .await
    .expect("issued")
}

/// Revocation on `env`'s CA: asked for with `kacme revoke` (a new certificate with a new key follows, even
/// with rotationPolicy Never), and by the issuer's policy when a renewal rotates the key and when the
/// Certificate is deleted. Each revocation is checked at the CA itself.
async fn revocation(env: OperatorEnv) {
    let issuer = issuer_yaml(&env, "ca", None).replacen(
        "    email:",
        "    revocation: {whenDeleted: true, whenKeyRotated: true}\n    email:",
        1,
    );
    env.apply(&issuer).await.expect("Issuer");
    let never = format!("{}  privateKey: {{rotationPolicy: Never}}\n", certificate_yaml("web", "ca", None));
    env.apply(&never).await.expect("Certificate");
    wait_revision(&env, "web", 1).await;
    let (first, first_key) = stored_serial_and_key(&env, "web").await;
    assert!(!revoked_at_ca(&env, &first).await, "valid before anything is revoked");

    // Asked for: revoked at the CA, shown in status and an Event, and replaced with a new key.
    let said = kacme_cli(&env, &["revoke", "web", "-n", NAMESPACE, "--reason", "keyCompromise"]).await;
    eprintln!("{said}");
    let revoked = wait_revision(&env, "web", 2).await;
    let revocation = revoked.status.and_then(|s| s.revocation).expect("status.revocation");
    eprintln!("status.revocation: {revocation:?}");
    assert_eq!((revocation.serial.as_str(), revocation.reason.as_str()), (first.as_str(), "keyCompromise"));
    assert!(revocation.revoked_at.is_some() && revocation.error.is_none(), "{revocation:?}");
    assert!(revoked_at_ca(&env, &first).await, "the CA revoked serial {first}");
    let (second, second_key) = stored_serial_and_key(&env, "web").await;
    assert_ne!(second, first);
    assert_ne!(second_key, first_key, "a revoked certificate's key is never reused, whatever rotationPolicy says");
    let reasons = env.event_reasons(NAMESPACE, "web").await.expect("Events");
    assert!(reasons.iter().any(|r| r == "Revoked"), "{reasons:?}");

    // A renewal that rotates the key: the replaced certificate is revoked (whenKeyRotated).
    env.apply(&certificate_yaml("web", "ca", None)).await.expect("rotationPolicy back to Always");
    kacme_cli(&env, &["renew", "web", "-n", NAMESPACE]).await;
    wait_revision(&env, "web", 3).await;
    let (third, _) = stored_serial_and_key(&env, "web").await;
    poll_until("the replaced certificate revoked at the CA", WAIT, Duration::from_millis(300), || async {
        Ok(if revoked_at_ca(&env, &second).await { Ok(()) } else { Err(format!("serial {second} still valid")) })
    })
    .await
    .expect("whenKeyRotated");
    assert!(!revoked_at_ca(&env, &third).await, "the current certificate stays valid");

    // Deleted: the certificate is revoked before the Certificate goes (whenDeleted).
    env.certificates(NAMESPACE).delete("web", &Default::default()).await.expect("deleting");
    env.wait_certificate_gone(NAMESPACE, "web", WAIT).await.expect("gone");
    assert!(revoked_at_ca(&env, &third).await, "the deleted Certificate's certificate is revoked");
    let operator = env.operator().expect("an operator");
    assert!(!operator.exited(), "{}", operator.log_tail(40));
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_on_pebble() {
    within(300, async {
        revocation(OperatorEnv::with_pebble(PebbleOptions::default()).await.expect("environment")).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_on_step_ca() {
    within(300, async {
        revocation(OperatorEnv::with_step_ca(StepCaOptions::default()).await.expect("environment")).await
    })
    .await
}
