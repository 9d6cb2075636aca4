//! `kacme import`: cert-manager's ACME Issuers and ClusterIssuers, its Certificates and the ingress-shim and
//! gateway-shim annotations of Ingresses and Gateways, converted to kacme's objects, with a list of what cannot be converted and why.
//!
//! Pure code: manifests in (as cert-manager's documentation writes them, or as read from a cluster), kacme
//! manifests and notes out. Whatever kacme cannot do the same way is never converted silently: an object
//! kacme cannot serve at all is skipped, a field it has no equivalent for is dropped, and a value it reads
//! differently is changed; each case is a [`Note`] naming the object, the field and the reason.

use crate::api::{Certificate, ClusterIssuer, Issuer};
use serde_json::{Map, Value, json};

/// cert-manager's API group.
const CERT_MANAGER_GROUP: &str = "cert-manager.io";
/// kacme's API version.
const KACME_API_VERSION: &str = "kacme.dev/v1alpha1";

/// What happened to a part of a cert-manager object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Outcome {
    /// The whole object was not converted.
    Skipped,
    /// The object was converted without this field.
    Dropped,
    /// The object was converted with this value read differently (the message says how).
    Changed,
}

/// One thing the user must know about the conversion.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    /// `Issuer apps/letsencrypt`, `Certificate apps/web`, `Ingress apps/web`.
    pub object: String,
    pub outcome: Outcome,
    /// What and why, in words.
    pub message: String,
}

/// The result of a conversion: kacme's manifests (in input order) and the notes.
#[derive(Clone, Debug, Default)]
pub struct Conversion {
    pub objects: Vec<Value>,
    pub notes: Vec<Note>,
}

impl Conversion {
    fn note(&mut self, object: &str, outcome: Outcome, message: impl Into<String>) {
        self.notes.push(Note { object: object.to_string(), outcome, message: message.into() });
    }
}

/// Reads YAML manifests (several documents, `kind: List` included) as JSON values.
pub fn parse_manifests(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        match value {
            Value::Null => {}
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(map.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Converts every cert-manager object of `manifests`; other objects are left out without a note, except
/// Ingresses and Gateways, whose cert-manager annotations (ingress-shim, gateway-shim) are converted.
pub fn convert(manifests: &[Value]) -> Conversion {
    let mut conversion = Conversion::default();
    for manifest in manifests {
        let api_version = text(manifest, &["apiVersion"]).unwrap_or_default();
        let kind = text(manifest, &["kind"]).unwrap_or_default();
        let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or_default();
        match (group, kind) {
            (CERT_MANAGER_GROUP, "Issuer") => convert_issuer(manifest, false, &mut conversion),
            (CERT_MANAGER_GROUP, "ClusterIssuer") => convert_issuer(manifest, true, &mut conversion),
            (CERT_MANAGER_GROUP, "Certificate") => convert_certificate(manifest, &mut conversion),
            (CERT_MANAGER_GROUP, other) => conversion.note(
                &describe(other, manifest),
                Outcome::Skipped,
                "kacme keeps this state in the Certificate's status; nothing to convert",
            ),
            ("networking.k8s.io", "Ingress") => convert_annotated(manifest, "Ingress", &mut conversion),
            ("gateway.networking.k8s.io", "Gateway") => convert_annotated(manifest, "Gateway", &mut conversion),
            _ => {}
        }
    }
    conversion
}

/// The converted manifests as one YAML stream, the notes first as comments (so that the file explains
/// itself and still applies with kubectl).
pub fn render_yaml(conversion: &Conversion) -> Result<String, serde_yaml::Error> {
    let mut out = String::from("# Converted from cert-manager by `kacme import`.\n");
    if conversion.notes.is_empty() {
        out.push_str("# Everything was converted.\n");
    } else {
        out.push_str("# Not converted as it was (see the README, \"Coming from cert-manager\"):\n");
        for note in &conversion.notes {
            let message = note.message.replace('\n', " ");
            out.push_str(&format!("#   {} {:?}: {message}\n", note.object, note.outcome));
        }
    }
    for object in &conversion.objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(object)?);
    }
    Ok(out)
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path)?.as_str()
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn describe(kind: &str, manifest: &Value) -> String {
    let name = text(manifest, &["metadata", "name"]).unwrap_or("(no name)");
    match text(manifest, &["metadata", "namespace"]) {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The metadata kacme's object keeps: name, namespace, labels and the annotations that are not
/// cert-manager's or kubectl's.
fn metadata(manifest: &Value) -> Value {
    let mut out = Map::new();
    for key in ["name", "namespace", "labels"] {
        if let Some(value) = at(manifest, &["metadata", key]) {
            out.insert(key.to_string(), value.clone());
        }
    }
    if let Some(Value::Object(annotations)) = at(manifest, &["metadata", "annotations"]) {
        let kept: Map<String, Value> = annotations
            .iter()
            .filter(|(k, _)| {
                !k.contains("cert-manager.io/") && k.as_str() != "kubectl.kubernetes.io/last-applied-configuration"
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !kept.is_empty() {
            out.insert("annotations".to_string(), Value::Object(kept));
        }
    }
    Value::Object(out)
}

/// Copies `keys` of `from` (when present) into `to`.
fn copy(from: &Value, to: &mut Map<String, Value>, keys: &[&str]) {
    for key in keys {
        if let Some(value) = from.get(key).filter(|v| !v.is_null()) {
            to.insert(key.to_string(), value.clone());
        }
    }
}

/// Notes every key of `from` that is not in `known`, as dropped with `why`.
fn drop_unknown(from: &Value, known: &[&str], object: &str, path: &str, why: &str, conversion: &mut Conversion) {
    if let Value::Object(map) = from {
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            conversion.note(object, Outcome::Dropped, format!("{path}.{key}: {why}"));
        }
    }
}

fn convert_issuer(manifest: &Value, cluster: bool, conversion: &mut Conversion) {
    let kind = if cluster { "ClusterIssuer" } else { "Issuer" };
    let object = describe(kind, manifest);
    let spec = manifest.get("spec").cloned().unwrap_or(Value::Null);
    let Some(acme) = spec.get("acme") else {
        let which = match &spec {
            Value::Object(map) => map.keys().cloned().collect::<Vec<_>>().join(", "),
            _ => "no spec".to_string(),
        };
        conversion.note(
            &object,
            Outcome::Skipped,
            format!("only ACME issuers have a kacme equivalent; this one is {which}"),
        );
        return;
    };
    let mut out = Map::new();
    copy(acme, &mut out, &["server", "email", "caBundle", "skipTLSVerify", "profile"]);
    if let Some(reference) = acme.get("privateKeySecretRef") {
        let mut key_ref = Map::new();
        copy(reference, &mut key_ref, &["name", "key"]);
        out.insert("privateKeySecretRef".into(), Value::Object(key_ref));
    }
    if let Some(eab) = acme.get("externalAccountBinding") {
        let mut binding = Map::new();
        copy(eab, &mut binding, &["keyID"]);
        if let Some(secret) = eab.get("keySecretRef") {
            let mut key_ref = Map::new();
            copy(secret, &mut key_ref, &["name", "key"]);
            binding.insert("keySecretRef".into(), Value::Object(key_ref));
        }
        out.insert("externalAccountBinding".into(), Value::Object(binding));
        if eab.get("keyAlgorithm").is_some() {
            conversion.note(
                &object,
                Outcome::Dropped,
                "acme.externalAccountBinding.keyAlgorithm: deprecated in cert-manager; kacme always uses HS256",
            );
        }
    }
    if acme.get("enableDurationFeature").and_then(Value::as_bool) != Some(true) {
        out.insert("sendLifetime".into(), Value::Bool(false));
        conversion.note(
            &object,
            Outcome::Changed,
            "acme.enableDurationFeature is not set: kept as sendLifetime: false (the CA chooses the lifetime, as \
             with cert-manager); remove it to send each Certificate's duration to the CA",
        );
    }
    for (key, why) in [
        ("preferredChain", "kacme stores the chain the CA sends first"),
        ("disableAccountKeyGeneration", "kacme generates the account key when the Secret has none"),
    ] {
        if acme.get(key).is_some() {
            conversion.note(&object, Outcome::Dropped, format!("acme.{key}: {why}"));
        }
    }
    drop_unknown(
        acme,
        &[
            "server",
            "email",
            "caBundle",
            "skipTLSVerify",
            "profile",
            "privateKeySecretRef",
            "externalAccountBinding",
            "enableDurationFeature",
            "preferredChain",
            "disableAccountKeyGeneration",
            "solvers",
        ],
        &object,
        "acme",
        "no kacme equivalent",
        conversion,
    );
    let mut solvers = Vec::new();
    for (index, solver) in acme.get("solvers").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if let Some(converted) = convert_solver(solver, &object, index, conversion) {
            solvers.push(converted);
        }
    }
    if solvers.is_empty() {
        conversion.note(
            &object,
            Outcome::Skipped,
            "no solver kacme can use (kacme solves HTTP-01 through Ingresses or Gateway API HTTPRoutes)",
        );
        return;
    }
    out.insert("solvers".into(), Value::Array(solvers));
    let converted = json!({
        "apiVersion": KACME_API_VERSION,
        "kind": kind,
        "metadata": metadata(manifest),
        "spec": {"acme": Value::Object(out)},
    });
    let checked = if cluster {
        serde_json::from_value::<ClusterIssuer>(converted.clone()).map(|_| ())
    } else {
        serde_json::from_value::<Issuer>(converted.clone()).map(|_| ())
    };
    match checked {
        Ok(()) => conversion.objects.push(converted),
        Err(error) => conversion.note(&object, Outcome::Skipped, format!("the result is not a valid {kind}: {error}")),
    }
}

fn convert_solver(solver: &Value, object: &str, index: usize, conversion: &mut Conversion) -> Option<Value> {
    let path = format!("acme.solvers[{index}]");
    if solver.get("dns01").is_some() {
        conversion.note(
            object,
            Outcome::Dropped,
            format!("{path}: DNS-01 solvers have no kacme equivalent (HTTP-01 only)"),
        );
        return None;
    }
    let Some(http01) = solver.get("http01") else {
        conversion.note(object, Outcome::Dropped, format!("{path}: neither http01 nor dns01"));
        return None;
    };
    let selector = solver.get("selector").map(|selector| {
        let mut kept = Map::new();
        copy(selector, &mut kept, &["dnsNames", "dnsZones", "matchLabels"]);
        Value::Object(kept)
    });
    if let Some(route) = http01.get("gatewayHTTPRoute") {
        return convert_route_solver(route, selector, object, &path, conversion);
    }
    let Some(ingress) = http01.get("ingress") else {
        conversion.note(object, Outcome::Dropped, format!("{path}.http01: neither ingress nor gatewayHTTPRoute"));
        return None;
    };
    if ingress.get("name").is_some() {
        conversion.note(
            object,
            Outcome::Dropped,
            format!(
                "{path}.http01.ingress.name: kacme never edits an existing Ingress; it creates its own solver Ingress"
            ),
        );
        return None;
    }
    let mut out = Map::new();
    copy(ingress, &mut out, &["ingressClassName", "serviceType"]);
    if let Some(class) = ingress.get("class").and_then(Value::as_str) {
        if !out.contains_key("ingressClassName") {
            out.insert("ingressClassName".into(), Value::String(class.to_string()));
        }
        conversion.note(
            object,
            Outcome::Changed,
            format!("{path}.http01.ingress.class {class:?}: written as ingressClassName (kacme sets the field, not the old annotation)"),
        );
    }
    if let Some(template) = ingress.get("ingressTemplate") {
        let mut kept = Map::new();
        if let Some(meta) = template.get("metadata") {
            let mut metadata = Map::new();
            copy(meta, &mut metadata, &["labels", "annotations"]);
            kept.insert("metadata".into(), Value::Object(metadata));
        }
        out.insert("ingressTemplate".into(), Value::Object(kept));
    }
    if let Some(template) = ingress.get("podTemplate") {
        out.insert(
            "podTemplate".into(),
            convert_pod_template(template, object, &format!("{path}.http01.ingress"), conversion),
        );
    }
    drop_unknown(
        ingress,
        &["ingressClassName", "serviceType", "class", "ingressTemplate", "podTemplate", "name"],
        object,
        &format!("{path}.http01.ingress"),
        "no kacme equivalent",
        conversion,
    );
    Some(solver_value(selector, json!({"ingress": Value::Object(out)})))
}

fn solver_value(selector: Option<Value>, http01: Value) -> Value {
    let mut converted = Map::new();
    if let Some(selector) = selector {
        converted.insert("selector".into(), selector);
    }
    converted.insert("http01".into(), http01);
    Value::Object(converted)
}

/// cert-manager's `http01.gatewayHTTPRoute` solver: the same fields in kacme (parentRefs to Gateways,
/// labels, serviceType, podTemplate).
fn convert_route_solver(
    route: &Value,
    selector: Option<Value>,
    object: &str,
    path: &str,
    conversion: &mut Conversion,
) -> Option<Value> {
    let path = format!("{path}.http01.gatewayHTTPRoute");
    let mut parents = Vec::new();
    for (index, parent) in route.get("parentRefs").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let group = text(parent, &["group"]).unwrap_or("gateway.networking.k8s.io");
        let kind = text(parent, &["kind"]).unwrap_or("Gateway");
        if group != "gateway.networking.k8s.io" || kind != "Gateway" {
            let why =
                format!("{path}.parentRefs[{index}]: a {group}/{kind}; kacme attaches its routes to Gateways only");
            conversion.note(object, Outcome::Dropped, why);
            continue;
        }
        let mut kept = Map::new();
        copy(parent, &mut kept, &["name", "namespace", "sectionName", "port"]);
        parents.push(Value::Object(kept));
    }
    if parents.is_empty() {
        conversion.note(object, Outcome::Dropped, format!("{path}: no parentRefs to a Gateway"));
        return None;
    }
    let mut out = Map::new();
    out.insert("parentRefs".into(), Value::Array(parents));
    copy(route, &mut out, &["labels", "serviceType"]);
    if let Some(template) = route.get("podTemplate") {
        out.insert("podTemplate".into(), convert_pod_template(template, object, &path, conversion));
    }
    drop_unknown(
        route,
        &["parentRefs", "labels", "serviceType", "podTemplate"],
        object,
        &path,
        "no kacme equivalent",
        conversion,
    );
    Some(solver_value(selector, json!({"gatewayHTTPRoute": Value::Object(out)})))
}

/// A solver's podTemplate: labels, annotations and the scheduling fields (the rest is named as dropped).
fn convert_pod_template(template: &Value, object: &str, path: &str, conversion: &mut Conversion) -> Value {
    let mut kept = Map::new();
    if let Some(meta) = template.get("metadata") {
        let mut metadata = Map::new();
        copy(meta, &mut metadata, &["labels", "annotations"]);
        kept.insert("metadata".into(), Value::Object(metadata));
    }
    if let Some(spec) = template.get("spec") {
        let known = ["nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets", "resources"];
        let mut pod_spec = Map::new();
        copy(spec, &mut pod_spec, &known);
        kept.insert("spec".into(), Value::Object(pod_spec));
        drop_unknown(
            spec,
            &known,
            object,
            &format!("{path}.podTemplate.spec"),
            "kacme's solver Pod is hardened and takes only scheduling fields",
            conversion,
        );
    }
    Value::Object(kept)
}

fn convert_certificate(manifest: &Value, conversion: &mut Conversion) {
    let object = describe("Certificate", manifest);
    let spec = manifest.get("spec").cloned().unwrap_or(Value::Null);
    let skip = |conversion: &mut Conversion, why: String| conversion.note(&object, Outcome::Skipped, why);
    let group = text(&spec, &["issuerRef", "group"]).unwrap_or(CERT_MANAGER_GROUP);
    if group != CERT_MANAGER_GROUP {
        return skip(conversion, format!("its issuer is of group {group}, an external issuer kacme cannot use"));
    }
    if spec.get("isCA").and_then(Value::as_bool) == Some(true) {
        return skip(conversion, "isCA: ACME CAs do not issue CA certificates".into());
    }
    let dns_names: Vec<String> = spec
        .get("dnsNames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .map(String::from)
        .collect();
    if let Some(wildcard) = dns_names.iter().find(|n| n.starts_with("*.")) {
        return skip(conversion, format!("dnsNames {wildcard:?}: wildcard names need DNS-01, which kacme does not do"));
    }
    let mut out = Map::new();
    copy(
        &spec,
        &mut out,
        &[
            "secretName",
            "dnsNames",
            "ipAddresses",
            "duration",
            "renewBefore",
            "renewBeforePercentage",
            "usages",
            "additionalOutputFormats",
        ],
    );
    let mut issuer_ref = Map::new();
    copy(spec.get("issuerRef").unwrap_or(&Value::Null), &mut issuer_ref, &["name", "kind"]);
    out.insert("issuerRef".into(), Value::Object(issuer_ref));
    if let Some(common_name) = spec.get("commonName").and_then(Value::as_str) {
        let addresses: Vec<&str> =
            spec.get("ipAddresses").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        if dns_names.iter().any(|n| n == common_name) || addresses.contains(&common_name) {
            out.insert("commonName".into(), Value::String(common_name.to_string()));
        } else {
            conversion.note(
                &object,
                Outcome::Dropped,
                format!("commonName {common_name:?}: not among dnsNames or ipAddresses; an ACME CA only certifies the order's names"),
            );
        }
    }
    if let Some(key) = spec.get("privateKey") {
        let mut private_key = Map::new();
        copy(key, &mut private_key, &["algorithm", "size", "encoding", "rotationPolicy"]);
        out.insert("privateKey".into(), Value::Object(private_key));
    }
    if let Some(template) = spec.get("secretTemplate") {
        let mut kept = Map::new();
        copy(template, &mut kept, &["labels", "annotations"]);
        out.insert("secretTemplate".into(), Value::Object(kept));
    }
    if let Some(keystores) = spec.get("keystores") {
        if let Some(pkcs12) = keystores.get("pkcs12") {
            let mut kept = Map::new();
            copy(pkcs12, &mut kept, &["create", "passwordSecretRef"]);
            match text(pkcs12, &["profile"]) {
                Some(profile @ ("Modern2023" | "LegacyDES")) => {
                    kept.insert("profile".into(), Value::String(profile.to_string()));
                }
                Some(other) => conversion.note(
                    &object,
                    Outcome::Changed,
                    format!("keystores.pkcs12.profile {other:?}: kacme writes Modern2023 or LegacyDES; Modern2023 is used"),
                ),
                None => conversion.note(
                    &object,
                    Outcome::Changed,
                    "keystores.pkcs12: cert-manager's default encryption is the legacy RC2 profile; kacme writes Modern2023 \
                     (set profile: LegacyDES for readers such as Java before 8u301)",
                ),
            }
            if pkcs12.get("password").is_some() {
                conversion.note(
                    &object,
                    Outcome::Dropped,
                    "keystores.pkcs12.password: kacme reads the password only from a Secret (passwordSecretRef)",
                );
            }
            if kept.contains_key("passwordSecretRef") {
                out.insert("keystores".into(), json!({"pkcs12": Value::Object(kept)}));
            }
        }
        if keystores.get("jks").is_some() {
            conversion.note(
                &object,
                Outcome::Dropped,
                "keystores.jks: kacme writes PKCS#12, which Java reads since Java 9",
            );
        }
    }
    drop_unknown(
        &spec,
        &[
            "secretName",
            "issuerRef",
            "dnsNames",
            "ipAddresses",
            "commonName",
            "duration",
            "renewBefore",
            "renewBeforePercentage",
            "privateKey",
            "usages",
            "secretTemplate",
            "additionalOutputFormats",
            "keystores",
            "revisionHistoryLimit",
            "isCA",
        ],
        &object,
        "spec",
        "no kacme equivalent (an ACME CA certifies names and addresses only)",
        conversion,
    );
    let converted = json!({
        "apiVersion": KACME_API_VERSION,
        "kind": "Certificate",
        "metadata": metadata(manifest),
        "spec": Value::Object(out),
    });
    match serde_json::from_value::<Certificate>(converted.clone()) {
        Ok(_) => conversion.objects.push(converted),
        Err(error) => skip(conversion, format!("the result is not a valid Certificate: {error}")),
    }
}

/// cert-manager's ingress-shim annotations and kacme's equivalents.
const INGRESS_ANNOTATIONS: [(&str, &str); 6] = [
    ("cert-manager.io/issuer", "kacme.dev/issuer"),
    ("cert-manager.io/cluster-issuer", "kacme.dev/cluster-issuer"),
    ("cert-manager.io/duration", "kacme.dev/duration"),
    ("cert-manager.io/renew-before", "kacme.dev/renew-before"),
    ("cert-manager.io/private-key-algorithm", "kacme.dev/private-key-algorithm"),
    ("cert-manager.io/usages", "kacme.dev/usages"),
];

fn convert_annotated(manifest: &Value, kind_name: &str, conversion: &mut Conversion) {
    let object = describe(kind_name, manifest);
    let Some(Value::Object(annotations)) = at(manifest, &["metadata", "annotations"]) else { return };
    let shim = |key: &String| key.starts_with("cert-manager.io/") || key.starts_with("acme.cert-manager.io/");
    let acme_flag = annotations.get("kubernetes.io/tls-acme").and_then(Value::as_str) == Some("true");
    if !annotations.keys().any(shim) && !acme_flag {
        return;
    }
    let mut converted: Map<String, Value> = Map::new();
    for (key, value) in annotations {
        if let Some((_, kacme)) = INGRESS_ANNOTATIONS.iter().find(|(cm, _)| cm == key) {
            converted.insert(kacme.to_string(), value.clone());
        }
    }
    // cert-manager.io/issuer with issuer-kind ClusterIssuer names a ClusterIssuer.
    let kind = annotations.get("cert-manager.io/issuer-kind").and_then(Value::as_str);
    let group = annotations.get("cert-manager.io/issuer-group").and_then(Value::as_str);
    if let Some(group) = group.filter(|g| *g != CERT_MANAGER_GROUP) {
        conversion.note(
            &object,
            Outcome::Skipped,
            format!("cert-manager.io/issuer-group {group}: an external issuer kacme cannot use"),
        );
        return;
    }
    if kind == Some("ClusterIssuer")
        && let Some(name) = converted.remove("kacme.dev/issuer")
    {
        converted.insert("kacme.dev/cluster-issuer".into(), name);
    }
    if !converted.contains_key("kacme.dev/issuer") && !converted.contains_key("kacme.dev/cluster-issuer") {
        let why = if acme_flag {
            "kubernetes.io/tls-acme uses cert-manager's default issuer, which the manifests do not name; add kacme.dev/issuer or kacme.dev/cluster-issuer"
        } else {
            "no cert-manager.io/issuer or cert-manager.io/cluster-issuer annotation"
        };
        conversion.note(&object, Outcome::Skipped, why);
        return;
    }
    for key in annotations.keys().filter(|k| shim(k)) {
        let handled = INGRESS_ANNOTATIONS.iter().any(|(cm, _)| cm == key)
            || key == "cert-manager.io/issuer-kind"
            || key == "cert-manager.io/issuer-group";
        if !handled {
            conversion.note(&object, Outcome::Dropped, format!("annotation {key}: no kacme equivalent"));
        }
    }
    let mut metadata = metadata(manifest);
    if let Value::Object(meta) = &mut metadata {
        let mut kept = match meta.remove("annotations") {
            Some(Value::Object(kept)) => kept,
            _ => Map::new(),
        };
        kept.remove("kubernetes.io/tls-acme");
        kept.extend(converted);
        meta.insert("annotations".into(), Value::Object(kept));
    }
    conversion.objects.push(json!({
        "apiVersion": manifest.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": kind_name,
        "metadata": metadata,
        "spec": manifest.get("spec").cloned().unwrap_or(Value::Null),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = include_str!("../../tests/fixtures/cert-manager/docs.yaml");

    fn converted() -> Conversion {
        convert(&parse_manifests(DOCS).unwrap())
    }

    fn object<'a>(conversion: &'a Conversion, kind: &str, name: &str) -> Option<&'a Value> {
        conversion
            .objects
            .iter()
            .find(|o| text(o, &["kind"]) == Some(kind) && text(o, &["metadata", "name"]) == Some(name))
    }

    fn notes_of(conversion: &Conversion, object: &str) -> Vec<(Outcome, String)> {
        conversion.notes.iter().filter(|n| n.object == object).map(|n| (n.outcome, n.message.clone())).collect()
    }

    #[test]
    fn the_documentation_examples_convert_or_say_why_not() {
        let conversion = converted();
        let names: Vec<String> = conversion.objects.iter().map(|o| describe(text(o, &["kind"]).unwrap(), o)).collect();
        assert_eq!(
            names,
            [
                "ClusterIssuer letsencrypt-staging",
                "Issuer apps/zerossl",
                "Certificate apps/example-com",
                "Ingress apps/my-ingress",
                "Issuer apps/letsencrypt-gateway",
                "Gateway apps/example"
            ]
        );
        let skipped: Vec<&str> =
            conversion.notes.iter().filter(|n| n.outcome == Outcome::Skipped).map(|n| n.object.as_str()).collect();
        assert_eq!(
            skipped,
            [
                "Issuer apps/selfsigned-issuer",
                "Issuer apps/dns-only",
                "Certificate apps/wildcard",
                "Ingress apps/legacy"
            ]
        );
        for object in &conversion.objects {
            let api_version = text(object, &["apiVersion"]).unwrap();
            let kept = ["networking.k8s.io/v1", "gateway.networking.k8s.io/v1"];
            assert!(api_version == KACME_API_VERSION || kept.contains(&api_version), "{api_version}");
        }
    }

    #[test]
    fn an_acme_issuer_keeps_its_account_and_http01_solver_and_names_what_it_drops() {
        let conversion = converted();
        let issuer = object(&conversion, "ClusterIssuer", "letsencrypt-staging").unwrap();
        let acme = &issuer["spec"]["acme"];
        assert_eq!(acme["server"], "https://acme-staging-v02.api.letsencrypt.org/directory");
        assert_eq!(acme["privateKeySecretRef"]["name"], "example-issuer-account-key");
        assert_eq!(acme["sendLifetime"], false, "without enableDurationFeature the CA chooses the lifetime");
        let solvers = acme["solvers"].as_array().unwrap();
        assert_eq!(solvers.len(), 1, "the DNS-01 solver is dropped");
        assert_eq!(solvers[0]["http01"]["ingress"]["ingressClassName"], "nginx");
        assert_eq!(solvers[0]["http01"]["ingress"]["podTemplate"]["spec"]["nodeSelector"]["bar"], "baz");
        let notes = notes_of(&conversion, "ClusterIssuer letsencrypt-staging");
        let has = |outcome: Outcome, words: &str| notes.iter().any(|(o, m)| *o == outcome && m.contains(words));
        assert!(has(Outcome::Dropped, "acme.solvers[1]: DNS-01"), "{notes:?}");
        assert!(has(Outcome::Dropped, "podTemplate.spec.serviceAccountName"), "{notes:?}");
        assert!(has(Outcome::Changed, "sendLifetime: false"), "{notes:?}");

        let zerossl = object(&conversion, "Issuer", "zerossl").unwrap();
        let acme = &zerossl["spec"]["acme"];
        assert_eq!(acme["externalAccountBinding"]["keyID"], "my-key-id");
        assert_eq!(acme["externalAccountBinding"]["keySecretRef"]["key"], "secret");
        assert!(acme.get("sendLifetime").is_none(), "enableDurationFeature: kacme's default sends the lifetime");
        assert_eq!(acme["solvers"][0]["selector"]["matchLabels"]["use-http01"], "true");
        assert_eq!(
            acme["solvers"][0]["http01"]["ingress"]["ingressClassName"], "nginx",
            "class becomes ingressClassName"
        );
        let notes = notes_of(&conversion, "Issuer apps/zerossl");
        assert!(notes.iter().any(|(_, m)| m.contains("preferredChain")), "{notes:?}");
        assert!(notes.iter().any(|(_, m)| m.contains("keyAlgorithm")), "{notes:?}");
        let dns_only = notes_of(&conversion, "Issuer apps/dns-only");
        assert!(dns_only.iter().any(|(o, m)| *o == Outcome::Skipped && m.contains("no solver")), "{dns_only:?}");
    }

    #[test]
    fn a_certificate_keeps_what_an_acme_ca_certifies_and_names_the_rest() {
        let conversion = converted();
        let certificate = object(&conversion, "Certificate", "example-com").unwrap();
        let spec = &certificate["spec"];
        assert_eq!(spec["issuerRef"], json!({"name": "zerossl", "kind": "Issuer"}));
        assert_eq!(spec["dnsNames"], json!(["example.com", "www.example.com"]));
        assert_eq!(spec["ipAddresses"], json!(["192.168.0.5"]));
        assert_eq!(spec["commonName"], "example.com");
        assert_eq!(
            spec["privateKey"],
            json!({"algorithm": "RSA", "encoding": "PKCS1", "size": 2048, "rotationPolicy": "Always"})
        );
        assert_eq!(spec["duration"], "2160h");
        assert_eq!(spec["secretTemplate"]["labels"]["my-secret-label"], "foo");
        assert_eq!(spec["keystores"]["pkcs12"]["passwordSecretRef"]["name"], "example-com-keystore");
        let notes = notes_of(&conversion, "Certificate apps/example-com");
        for dropped in ["spec.subject", "spec.uris", "spec.emailAddresses", "keystores.jks"] {
            assert!(notes.iter().any(|(o, m)| *o == Outcome::Dropped && m.contains(dropped)), "{dropped}: {notes:?}");
        }
        assert!(notes.iter().any(|(o, m)| *o == Outcome::Changed && m.contains("Modern2023")), "{notes:?}");
        let wildcard = notes_of(&conversion, "Certificate apps/wildcard");
        assert!(wildcard[0].1.contains("wildcard"), "{wildcard:?}");
    }

    #[test]
    fn ingress_shim_annotations_become_kacmes() {
        let conversion = converted();
        let ingress = object(&conversion, "Ingress", "my-ingress").unwrap();
        let annotations = ingress["metadata"]["annotations"].as_object().unwrap();
        let keys: Vec<&str> = annotations.keys().map(String::as_str).collect();
        assert_eq!(keys, ["kacme.dev/cluster-issuer", "kacme.dev/duration"]);
        assert_eq!(ingress["spec"]["tls"][0]["secretName"], "myingress-cert");
        let notes = notes_of(&conversion, "Ingress apps/my-ingress");
        assert_eq!(notes, [(Outcome::Dropped, "annotation cert-manager.io/common-name: no kacme equivalent".into())]);

        let kind = parse_manifests(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: a\n  annotations:\n    cert-manager.io/issuer: corp\n    cert-manager.io/issuer-kind: ClusterIssuer\nspec: {}\n",
        )
        .unwrap();
        let converted = convert(&kind);
        assert_eq!(converted.objects[0]["metadata"]["annotations"], json!({"kacme.dev/cluster-issuer": "corp"}));
        let unrelated =
            parse_manifests("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: b\nspec: {}\n")
                .unwrap();
        assert!(convert(&unrelated).objects.is_empty(), "an Ingress without cert-manager annotations is left alone");
    }

    #[test]
    fn gateway_api_solvers_and_gateway_shim_annotations_become_kacmes() {
        let conversion = converted();
        let issuer = object(&conversion, "Issuer", "letsencrypt-gateway").unwrap();
        let solver = &issuer["spec"]["acme"]["solvers"][0]["http01"]["gatewayHTTPRoute"];
        assert_eq!(solver["parentRefs"], json!([{"name": "traefik", "namespace": "traefik"}]));
        let notes = notes_of(&conversion, "Issuer apps/letsencrypt-gateway");
        assert!(notes.iter().all(|(outcome, _)| *outcome == Outcome::Changed), "nothing dropped: {notes:?}");
        let gateway = object(&conversion, "Gateway", "example").unwrap();
        assert_eq!(gateway["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(gateway["metadata"]["annotations"], json!({"kacme.dev/issuer": "letsencrypt-gateway"}));
        assert_eq!(gateway["spec"]["listeners"][0]["tls"]["certificateRefs"][0]["name"], "example-com-tls");

        let other_parent = parse_manifests(
            "apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: x}\nspec:\n  acme:\n    server: https://ca.test/dir\n    privateKeySecretRef: {name: k}\n    solvers:\n    - http01:\n        gatewayHTTPRoute:\n          parentRefs:\n          - {name: gw, sectionName: http}\n          - {name: mesh, kind: Service, group: \"\"}\n          labels: {a: b}\n          podTemplate:\n            spec: {nodeSelector: {n: m}, serviceAccountName: s}\n",
        )
        .unwrap();
        let converted = convert(&other_parent);
        let route = &converted.objects[0]["spec"]["acme"]["solvers"][0]["http01"]["gatewayHTTPRoute"];
        assert_eq!(route["parentRefs"], json!([{"name": "gw", "sectionName": "http"}]));
        assert_eq!(route["labels"], json!({"a": "b"}));
        assert_eq!(route["podTemplate"]["spec"], json!({"nodeSelector": {"n": "m"}}));
        let notes: Vec<String> = converted.notes.iter().map(|n| n.message.clone()).collect();
        assert!(notes.iter().any(|n| n.contains("parentRefs[1]: a /Service")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("gatewayHTTPRoute.podTemplate.spec.serviceAccountName")), "{notes:?}");
    }

    #[test]
    fn the_rendered_file_explains_itself_and_parses_back() {
        let conversion = converted();
        let rendered = render_yaml(&conversion).unwrap();
        assert!(rendered.starts_with("# Converted from cert-manager by `kacme import`."));
        assert!(rendered.contains("#   Certificate apps/wildcard Skipped: dnsNames \"*.example.com\""), "{rendered}");
        assert_eq!(parse_manifests(&rendered).unwrap(), conversion.objects);
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}",
            "apiVersion: cert-manager.io/v1\n  kind: Issuer\n  metadata: {name: x}\n  spec: {ca: {secretName: ca}}\n"
        );
        assert_eq!(convert(&parse_manifests(&list).unwrap()).notes[0].object, "Issuer x");
    }
}
