//! `crds/` must be exactly what the code generates: nobody edits it by hand.
//! Regenerate with `cargo run -- crds --dir crds --dir charts/kacme/crds`.

use std::path::Path;

#[test]
fn checked_in_crds_equal_the_generated_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected_files = Vec::new();
    for crd in kacme::api::crds() {
        let name = kacme::api::crd_file_name(&crd);
        let generated = kacme::api::crd_yaml(&crd).unwrap();
        let checked_in = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| {
            panic!("crds/{name} is missing ({e}); run `cargo run -- crds --dir crds --dir charts/kacme/crds`")
        });
        assert!(
            checked_in == generated,
            "crds/{name} is stale or was edited by hand; run `cargo run -- crds --dir crds --dir charts/kacme/crds`"
        );
        expected_files.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(present, expected_files, "crds/ holds a file the code does not generate");
}

#[test]
fn kacme_crds_prints_every_crd() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kacme")).arg("crds").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let documents: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let names: Vec<&str> = documents.iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["certificates.kacme.dev", "issuers.kacme.dev", "clusterissuers.kacme.dev"]);
}

/// The validation rules that the apiserver must enforce are present in the generated schema.
#[test]
fn the_certificate_schema_carries_the_admission_rules() {
    let yaml = kacme::api::crds_yaml().unwrap();
    for rule in [
        "at least one of dnsNames or ipAddresses must be given",
        "renewBefore and renewBeforePercentage are mutually exclusive",
        "duration must be at least 5m",
        "size must be 2048, 3072 or 4096 for RSA, 256 or 384 for ECDSA, and absent for Ed25519",
        "every ipAddresses entry must be a valid IPv4 or IPv6 address",
        "server must be the https:// URL of the CA's ACME directory",
    ] {
        assert!(yaml.contains(rule), "missing rule: {rule}");
    }
    let certificate: serde_json::Value = serde_json::to_value(&kacme::api::crds()[0]).unwrap();
    let spec = &certificate["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["issuerRef"]["properties"]["kind"]["enum"],
        serde_json::json!(["Issuer", "ClusterIssuer"])
    );
    assert!(spec["properties"]["dnsNames"]["items"]["pattern"].is_string());
    let issuer: serde_json::Value = serde_json::to_value(&kacme::api::crds()[1]).unwrap();
    let acme = &issuer["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["acme"];
    assert_eq!(acme["properties"]["solvers"]["minItems"], 1);
    assert_eq!(acme["required"], serde_json::json!(["privateKeySecretRef", "server", "solvers"]));
}
