//! Secret formats for clients that cannot read the PEM pair, end to end on a real control plane with Pebble:
//! `additionalOutputFormats` (CombinedPEM, DER) and a PKCS#12 keystore and truststore whose password comes
//! from a Secret, each read back with the `openssl` command line; a missing password refuses the issuance
//! before any order; a changed format rewrites the Secret without a new certificate.

mod common;

use common::operator_env::{OperatorEnv, condition};
use kacme::api::names::{CA_CRT, TLS_CRT, TLS_KEY};
use kacme_testenv::PebbleOptions;
use std::path::Path;
use std::time::Duration;

const NAMESPACE: &str = "apps";
const WAIT: Duration = Duration::from_secs(90);
const PASSWORD: &str = "correct horse battery staple";

fn certificate_yaml(formats: &[&str], profile: &str, renew_requested: Option<&str>) -> String {
    let formats: String = formats.iter().map(|f| format!("  - type: {f}\n")).collect();
    let formats = if formats.is_empty() { String::new() } else { format!("  additionalOutputFormats:\n{formats}") };
    let annotations = renew_requested
        .map(|at| format!("  annotations:\n    kacme.dev/renew-requested-at: \"{at}\"\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: store\n  namespace: {NAMESPACE}\n{annotations}spec:\n  secretName: store-tls\n  issuerRef:\n    name: ca\n  dnsNames:\n  - store.formats.test\n  privateKey:\n    algorithm: RSA\n{formats}  keystores:\n    pkcs12:\n      create: true\n      profile: {profile}\n      passwordSecretRef:\n        name: store-pass\n"
    )
}

/// Runs openssl with `args` in `dir`; its stdout and stderr, or a panic with both.
fn openssl(dir: &Path, args: &[&str]) -> (String, String) {
    let output = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
    assert!(output.status.success(), "openssl {args:?} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The public key of a private key file, as openssl prints it.
fn public_key(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["pkey"];
    all.extend_from_slice(args);
    all.push("-pubout");
    openssl(dir, &all).0
}

async fn secret_files(env: &OperatorEnv, dir: &Path) -> Vec<String> {
    let secret = env.secrets(NAMESPACE).get("store-tls").await.expect("the Secret");
    let data = secret.data.expect("data");
    for (key, value) in &data {
        std::fs::write(dir.join(key), &value.0).expect("writing a Secret key to a file");
    }
    data.keys().cloned().collect()
}

fn serial(dir: &Path, file: &str) -> String {
    openssl(dir, &["x509", "-in", file, "-noout", "-serial"]).0
}

#[tokio::test]
async fn keystores_and_other_formats_read_back_with_openssl_and_follow_the_spec() {
    let env = OperatorEnv::with_pebble(PebbleOptions::default()).await.expect("environment");
    let dir = std::env::temp_dir().join(format!("kacme-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let dir = dir.as_path();
    env.apply(&env.issuer_yaml(NAMESPACE, "ca")).await.expect("issuer");

    // No password Secret yet: refused before any order, saying which Secret and key.
    env.apply(&certificate_yaml(&["CombinedPEM", "DER"], "Modern2023", None)).await.expect("certificate");
    let refused = env
        .wait_certificate(NAMESPACE, "store", WAIT, "KeystorePasswordUnavailable", |c| {
            condition(c, "Ready").is_some_and(|(_, reason, _)| reason == "KeystorePasswordUnavailable")
        })
        .await
        .expect("refused without a password");
    let (_, _, message) = condition(&refused, "Ready").unwrap();
    assert!(message.contains("store-pass") && message.contains("\"password\""), "{message}");
    assert!(refused.status.as_ref().unwrap().order.is_none(), "no order was placed");

    // With the password (and a renewal request, which skips the failure's backoff), it is issued.
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: store-pass\n  namespace: {NAMESPACE}\nstringData:\n  password: {PASSWORD}\n"
    ))
    .await
    .expect("password Secret");
    env.apply(&certificate_yaml(&["CombinedPEM", "DER"], "Modern2023", Some("1"))).await.expect("renewal request");
    // Ready with the renewal request handled: a retry of the failed attempt can start an order between the
    // two applies, before the operator has seen the request; the request then gets an order of its own.
    env.wait_certificate(NAMESPACE, "store", WAIT, "Ready with the renewal request handled", |c| {
        let status = c.status.as_ref();
        condition(c, "Ready").is_some_and(|(ready, _, _)| ready == "True")
            && status.is_some_and(|s| s.last_renewal_request.as_deref() == Some("1") && s.order.is_none())
    })
    .await
    .expect("Ready");
    let files = secret_files(&env, dir).await;
    assert_eq!(
        files,
        ["ca.crt", "key.der", "keystore.p12", "tls-combined.pem", "tls.crt", "tls.key", "truststore.p12"],
        "every output is written"
    );
    let pass = format!("pass:{PASSWORD}");
    let key = public_key(dir, &["-in", TLS_KEY]);
    assert_eq!(public_key(dir, &["-inform", "DER", "-in", "key.der"]), key, "key.der is tls.key");
    assert_eq!(public_key(dir, &["-in", "tls-combined.pem"]), key, "the combined file holds the key");
    assert_eq!(serial(dir, "tls-combined.pem"), serial(dir, TLS_CRT), "and the certificate");
    let (_, info) = openssl(dir, &["pkcs12", "-in", "keystore.p12", "-passin", &pass, "-info", "-noout"]);
    for algorithm in ["MAC: sha256", "PBES2", "AES-256-CBC", "hmacWithSHA256"] {
        assert!(info.contains(algorithm), "Modern2023 uses {algorithm}:\n{info}");
    }
    let (exported, _) = openssl(dir, &["pkcs12", "-in", "keystore.p12", "-passin", &pass, "-nodes"]);
    std::fs::write(dir.join("exported.pem"), &exported).unwrap();
    assert_eq!(public_key(dir, &["-in", "exported.pem"]), key, "the keystore holds the key");
    assert_eq!(serial(dir, "exported.pem"), serial(dir, TLS_CRT), "with the certificate first");
    let (trusted, _) = openssl(dir, &["pkcs12", "-in", "truststore.p12", "-passin", &pass, "-nokeys"]);
    std::fs::write(dir.join("trusted.pem"), &trusted).unwrap();
    assert_eq!(serial(dir, "trusted.pem"), serial(dir, CA_CRT), "the truststore holds ca.crt");
    let wrong = std::process::Command::new("openssl")
        .args(["pkcs12", "-in", "keystore.p12", "-passin", "pass:wrong", "-noout"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "another password does not open the keystore");
    let issued_serial = serial(dir, TLS_CRT);

    // Fewer formats and the legacy profile: the Secret is written again, with the same certificate.
    env.apply(&certificate_yaml(&["CombinedPEM"], "LegacyDES", Some("1"))).await.expect("new formats");
    let secrets = env.secrets(NAMESPACE);
    kacme_testenv::poll_until("the Secret without key.der", WAIT, Duration::from_millis(100), || async {
        let secret = secrets.get("store-tls").await?;
        Ok(match secret.data.as_ref().is_some_and(|d| !d.contains_key("key.der")) {
            true => Ok(()),
            false => Err("key.der is still there".to_string()),
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\noperator log:\n{}", env.operator_log()));
    for file in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(file.unwrap().path()).unwrap();
    }
    let files = secret_files(&env, dir).await;
    assert_eq!(files, ["ca.crt", "keystore.p12", "tls-combined.pem", "tls.crt", "tls.key", "truststore.p12"]);
    assert_eq!(serial(dir, TLS_CRT), issued_serial, "no new certificate for new formats:\n{}", env.operator_log());
    let (_, info) = openssl(dir, &["pkcs12", "-in", "keystore.p12", "-passin", &pass, "-info", "-noout"]);
    assert!(info.contains("MAC: sha1") && info.contains("pbeWithSHA1And3-KeyTripleDES-CBC"), "LegacyDES:\n{info}");
    let events = env.event_reasons(NAMESPACE, "store").await.expect("events");
    assert!(events.iter().any(|r| r == "SecretUpdated"), "an Event says the Secret was written again: {events:?}");
    std::fs::remove_dir_all(dir).ok();
}
