//! `kacme import` against a real control plane: cert-manager's manifests as its documentation writes them are
//! converted, from files and from the cluster (cert-manager's CRDs stood in by permissive ones), and the
//! result is accepted by the apiserver's admission of kacme's CRDs, Ingresses and Gateways included.

mod common;

use common::operator_env::{kacme_binary, user_command};
use kacme_testenv::{ControlPlane, ControlPlaneOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cert-manager")
}

/// Minimal CRDs for cert-manager's kinds that keep whatever they are given, so that its objects can be
/// created and read back without cert-manager itself.
fn cert_manager_crds() -> String {
    [("Issuer", "issuers", "Namespaced"), ("ClusterIssuer", "clusterissuers", "Cluster"), ("Certificate", "certificates", "Namespaced")]
        .iter()
        .map(|(kind, plural, scope)| {
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {plural}.cert-manager.io\nspec:\n  group: cert-manager.io\n  names:\n    kind: {kind}\n    plural: {plural}\n    singular: {}\n  scope: {scope}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n---\n",
                kind.to_lowercase()
            )
        })
        .collect()
}

/// Runs `kacme import` with `args`; (stdout, stderr).
async fn import(control_plane: &ControlPlane, args: &[&str]) -> (String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        user_command(&kacme_binary(), control_plane.kubeconfig_path()).arg("import").args(args).output(),
    )
    .await
    .expect("kacme import finished within 60 s")
    .expect("kacme import ran");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
    assert!(output.status.success(), "kacme import {args:?} failed: {stderr}\n{stdout}");
    (stdout, stderr)
}

async fn apply(control_plane: &ControlPlane, dir: &Path, name: &str, yaml: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    control_plane
        .kubectl(&["apply", "-f", &path.display().to_string()])
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{yaml}"))
}

#[tokio::test]
async fn cert_manager_manifests_convert_and_the_result_is_admitted() {
    // With the Gateway API CRDs: cert-manager's gateway-shim annotations are on Gateways.
    let control_plane = ControlPlane::start_with_options(ControlPlaneOptions {
        crds_dir: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds")),
        gateway_api: true,
        ..ControlPlaneOptions::default()
    })
    .await
    .expect("control plane");
    let dir = std::env::temp_dir().join(format!("kacme-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    control_plane.kubectl(&["create", "namespace", "apps"]).await.unwrap();

    // From files: every convertible object is admitted by kacme's CRDs; the rest is named.
    let fixtures = fixtures();
    let (converted, stderr) = import(&control_plane, &["-f", &fixtures.display().to_string()]).await;
    for skipped in
        ["Issuer apps/selfsigned-issuer Skipped", "Certificate apps/wildcard Skipped", "Ingress apps/legacy Skipped"]
    {
        assert!(converted.contains(skipped) && stderr.contains(skipped), "{skipped}:\n{converted}\n{stderr}");
    }
    let applied = apply(&control_plane, &dir, "from-files.yaml", &converted).await;
    for created in [
        "clusterissuer.kacme.dev/letsencrypt-staging",
        "issuer.kacme.dev/zerossl",
        "certificate.kacme.dev/example-com",
        "ingress.networking.k8s.io/my-ingress",
        "issuer.kacme.dev/letsencrypt-gateway",
        "gateway.gateway.networking.k8s.io/example",
    ] {
        assert!(applied.contains(created), "{created} was not applied:\n{applied}");
    }
    let annotations = control_plane
        .kubectl(&["get", "ingress", "-n", "apps", "my-ingress", "-o", "jsonpath={.metadata.annotations}"])
        .await
        .unwrap();
    assert!(
        annotations.contains("kacme.dev/cluster-issuer") && !annotations.contains("cert-manager.io"),
        "{annotations}"
    );

    // From the cluster: cert-manager's objects as the apiserver holds them (with managedFields, uids and
    // status) convert to the same kacme objects.
    control_plane.kubectl(&["delete", "ingress", "-n", "apps", "my-ingress"]).await.unwrap();
    control_plane.kubectl(&["delete", "gateway", "-n", "apps", "example"]).await.unwrap();
    apply(&control_plane, &dir, "cert-manager-crds.yaml", &cert_manager_crds()).await;
    for crd in ["issuers", "clusterissuers", "certificates"] {
        control_plane
            .kubectl(&["wait", "--for=condition=Established", &format!("crd/{crd}.cert-manager.io"), "--timeout=30s"])
            .await
            .unwrap();
    }
    let original = std::fs::read_to_string(fixtures.join("docs.yaml")).unwrap();
    apply(&control_plane, &dir, "cert-manager.yaml", &original).await;
    let (from_cluster, _) = import(&control_plane, &["--from-cluster", "-A"]).await;
    let body = |yaml: &str| yaml.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
    let parse = |yaml: &str| kacme::cli::import::parse_manifests(&body(yaml).join("\n")).unwrap();
    let mut from_files = parse(&converted);
    let mut from_cluster_objects = parse(&from_cluster);
    // kubectl's own annotation is left out either way; order by kind and name.
    let key = |v: &serde_json::Value| format!("{}/{}/{}", v["kind"], v["metadata"]["namespace"], v["metadata"]["name"]);
    from_files.sort_by_key(key);
    from_cluster_objects.sort_by_key(key);
    // A Gateway's spec is kept as it is, and the apiserver fills in defaults (a certificateRef's group and
    // kind): compare the Secret it names, and the rest without the spec.
    for objects in [&mut from_files, &mut from_cluster_objects] {
        for object in objects.iter_mut().filter(|o| o["kind"] == "Gateway") {
            let secret = object["spec"]["listeners"][0]["tls"]["certificateRefs"][0]["name"].clone();
            assert_eq!(secret, "example-com-tls", "{object}");
            object["spec"] = serde_json::Value::Null;
        }
    }
    assert_eq!(from_cluster_objects, from_files, "the cluster's objects convert as the files do:\n{from_cluster}");
    let applied = apply(&control_plane, &dir, "from-cluster.yaml", &from_cluster).await;
    assert!(applied.contains("certificate.kacme.dev/example-com"), "{applied}");
    std::fs::remove_dir_all(dir).ok();
}
