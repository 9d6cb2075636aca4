//! The `Issuer` and `ClusterIssuer` resources: where certificates come from.

use super::duration::GoDuration;
use super::{DNS_NAME_PATTERN, KeyUsage, ObjectMetaTemplate, SecretKeySelector, dns_subdomain_schema};
use k8s_openapi::api::core::v1::{Affinity, LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A namespaced issuer: an ACME account at a CA, usable by Certificates in the same namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kacme.dev",
    version = "v1alpha1",
    kind = "Issuer",
    namespaced,
    category = "kacme",
    status = "IssuerStatus",
    doc = "An ACME account at a CA, usable by Certificates in the same namespace.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Server", "type": "string", "jsonPath": ".spec.acme.server", "priority": 1}"#,
    printcolumn = r#"{"name": "Status", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message", "priority": 1}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("!has(self.policy) || !has(self.policy.namespaceSelector)")
        .message("an Issuer serves only its own namespace: namespaceSelector is for ClusterIssuers"),
    validation = Rule::new("!has(self.acme.accountPerNamespace) || !self.acme.accountPerNamespace")
        .message("an Issuer serves only its own namespace: accountPerNamespace is for ClusterIssuers"),
)]
pub struct IssuerSpec {
    /// The ACME CA and account to issue from.
    pub acme: AcmeIssuer,
    /// What Certificates may ask this issuer for. Without a policy, a Certificate in the Issuer's namespace may
    /// ask for any name, address, lifetime and usage (the CA decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<IssuerPolicy>,
}

/// A cluster-wide issuer: an ACME account at a CA, usable by Certificates in every namespace. Its Secrets
/// (account key, EAB key) live in the operator's cluster resource namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kacme.dev",
    version = "v1alpha1",
    kind = "ClusterIssuer",
    category = "kacme",
    status = "IssuerStatus",
    doc = "An ACME account at a CA, usable by Certificates in every namespace.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Server", "type": "string", "jsonPath": ".spec.acme.server", "priority": 1}"#,
    printcolumn = r#"{"name": "Status", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message", "priority": 1}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
pub struct ClusterIssuerSpec {
    /// The ACME CA and account to issue from.
    pub acme: AcmeIssuer,
    /// Which namespaces may use this issuer, and what their Certificates may ask for. Without a policy, every
    /// namespace may ask for any name: any tenant can then obtain a certificate for another tenant's names
    /// (and impersonate its services in mutual TLS) as far as the CA allows. Set a policy on every
    /// ClusterIssuer that more than one team uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<IssuerPolicy>,
}

/// What Certificates may ask an issuer for, checked by kacme before any ACME request and before any solver
/// object is created, for Certificates, annotated Ingresses and annotated Pods alike. A request outside the
/// policy is refused with reason `NotPermitted`, naming the value and the rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerPolicy {
    /// The namespaces that may use the issuer, by their labels (for example
    /// `kubernetes.io/metadata.name`). Absent: every namespace. ClusterIssuers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Templates that every DNS name must match. `{namespace}` stands for the requesting namespace, and a label
    /// `{label}` for exactly one DNS label (never a dot); everything else matches itself. For example
    /// `{label}.{namespace}.svc`, `{label}.{namespace}.svc.cluster.local` or `{namespace}.apps.internal`.
    /// Absent: any name. Empty: no DNS names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "name_templates_schema")]
    pub dns_names: Option<Vec<String>>,
    /// CIDRs (for example `10.0.0.0/8`, `fd00::/8`) that every IP address must fall in. Absent: any address.
    /// Empty: no IP addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "cidrs_schema")]
    pub ip_addresses: Option<Vec<String>>,
    /// The longest lifetime (`spec.duration`) a Certificate may ask for, a Go duration such as `720h`.
    /// Absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "max_duration_schema")]
    pub max_duration: Option<GoDuration>,
    /// The usages a certificate may carry (those a Certificate asks for, or the defaults `digital signature`
    /// and `server auth`, plus `key encipherment` for RSA). Absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub usages: Option<Vec<KeyUsage>>,
}

/// An ACME (RFC 8555) CA and the account kacme holds there.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeIssuer {
    /// The ACME directory URL, for example `https://ca.example.internal/acme/acme/directory` (step-ca).
    #[schemars(schema_with = "acme_server_schema")]
    pub server: String,

    /// Contact email registered with the account (and sent with account lookups). Optional for most private
    /// CAs. A change is not sent to the CA for an account that is already registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub email: Option<String>,

    /// PEM bundle of the CA certificates to trust for TLS to the ACME server. Every certificate of the bundle
    /// is trusted. Without `issuingCABundle`, the certificates of this bundle that an issued chain verifies to
    /// become the Secret's ca.crt. A base64-encoded PEM bundle
    /// (as cert-manager takes it) is accepted too. When absent, the system trust store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1048576))]
    pub ca_bundle: Option<String>,

    /// PEM of the root certificates that the CA's certificates chain to: what workloads should trust. Written
    /// as `ca.crt` into every issued Secret and into the CA bundle ConfigMaps, and an issued chain that does
    /// not verify to one of them is not stored. When absent, kacme takes from `caBundle` only the
    /// certificates the issued chain verifies to (so that a caBundle that also trusts, say, the public CA of
    /// the ACME endpoint does not make workloads trust it); without either, no `ca.crt` is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1048576))]
    pub issuing_ca_bundle: Option<String>,

    /// Skip verification of the ACME server's TLS certificate. For throwaway test CAs only.
    #[serde(default, rename = "skipTLSVerify", skip_serializing_if = "Option::is_none")]
    pub skip_tls_verify: Option<bool>,

    /// The Secret holding the ACME account's private key (key `tls.key` unless given). kacme generates
    /// and stores a key when the Secret does not exist, and never overwrites an existing one. The account of
    /// the key is recorded in `status.acme` and used from there after a restart; a different key is looked up
    /// at the CA (`onlyReturnExisting`) and registered when the CA does not know it.
    pub private_key_secret_ref: SecretKeySelector,

    /// External Account Binding, for CAs that require new accounts to be bound to an existing account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_account_binding: Option<ExternalAccountBinding>,

    /// ClusterIssuers only: one ACME account per namespace that requests certificates, instead of one
    /// account for the whole issuer, so that no namespace benefits from authorizations that another
    /// namespace validated (CAs may reuse an account's valid authorizations for new orders without a
    /// challenge). The key of the account of namespace `N` is kept in the cluster resource namespace, in
    /// the Secret `<privateKeySecretRef.name>-<N>` (shortened with a hash when longer than 253
    /// characters), created on the first Certificate of `N` and annotated `kacme.dev/account-namespace`.
    /// With externalAccountBinding, the account of `N` is bound with the key in the Secret
    /// `<keySecretRef.name>-<N>` (data `keyID` and the HMAC key) when that Secret exists, otherwise with
    /// the issuer's own key. The issuer's Ready condition reflects its own account; a namespace's account
    /// that cannot be registered shows on its Certificates (IssuerNotReady). Refused on Issuers, whose
    /// Certificates all come from one namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_per_namespace: Option<bool>,

    /// Send a Certificate's `duration` to the CA as the order's `notAfter` (RFC 8555 section 7.4), so
    /// that the certificate ends when asked (the CA may still shorten it or refuse it: a refusal shows as
    /// reason `DurationNotAllowed`). Default true; set false for CAs that refuse any `notAfter` (the CA's
    /// default lifetime then applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_lifetime: Option<bool>,

    /// The ACME profile to ask for in every order (draft-ietf-acme-profiles), for example `shortlived` or
    /// `tlsserver`: one of the names the CA's directory lists in `meta.profiles`. A name the CA does not offer
    /// makes the issuer not Ready (reason `ProfileNotOffered`, the message lists what the CA offers). A
    /// Certificate may ask for another one with its own `profile`. Absent: no profile is sent and the CA
    /// applies its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::validation::profile_schema")]
    pub profile: Option<String>,

    /// When kacme revokes certificates on its own (internal CAs often budget valid certificates per account).
    /// Absent: only when asked (`kacme revoke`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationPolicy>,

    /// How to prove control of each name. The first solver whose selector matches a Certificate's names
    /// most specifically is used (dnsNames beats dnsZones, a longer zone beats a shorter one, a
    /// solver without selector matches everything).
    #[schemars(length(min = 1, max = 32))]
    pub solvers: Vec<AcmeSolver>,
}

/// External Account Binding credentials (RFC 8555 section 7.3.4).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAccountBinding {
    /// The key identifier the CA gave out.
    #[serde(rename = "keyID")]
    #[schemars(length(min = 1, max = 1024))]
    pub key_id: String,
    /// The Secret key holding the HMAC key, base64url-encoded as CAs hand it out.
    pub key_secret_ref: SecretKeySelector,
}

/// A way of solving ACME challenges, and the names it applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeSolver {
    /// Which names this solver applies to. A solver without selector applies to every name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SolverSelector>,
    /// Solve HTTP-01 challenges with a transient solver Pod, Service and Ingress (or HTTPRoute).
    pub http01: Http01Solver,
}

/// Selects the names (and Certificates) a solver applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SolverSelector {
    /// Exact DNS names this solver applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "selector_names_schema")]
    pub dns_names: Vec<String>,
    /// DNS zones this solver applies to: a name matches a zone when it equals it or ends with `.` + zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "selector_names_schema")]
    pub dns_zones: Vec<String>,
    /// Labels a Certificate must carry for this solver to apply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// HTTP-01 solving: through an Ingress (the default when neither is given) or through a Gateway API
/// HTTPRoute.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.ingress) && has(self.gatewayHTTPRoute))")
    .message("a solver serves challenges through an ingress or a gatewayHTTPRoute, not both"))]
pub struct Http01Solver {
    /// Serve challenges through an Ingress routed to a transient solver Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Http01Ingress>,
    /// Serve challenges through a Gateway API HTTPRoute attached to the given Gateways, routed to a transient
    /// solver Pod. The CA is asked to validate only once every parent Gateway has accepted the route
    /// (`Accepted` and `ResolvedRefs` True in the route's `status.parents`).
    #[serde(default, rename = "gatewayHTTPRoute", skip_serializing_if = "Option::is_none")]
    pub gateway_http_route: Option<Http01GatewayHttpRoute>,
}

/// How the transient HTTP-01 solver Pod, Service and HTTPRoute are made.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Http01GatewayHttpRoute {
    /// The Gateways (or listeners of Gateways) the solver HTTPRoute attaches to, in the Certificate's
    /// namespace unless one names another (its listeners must then allow routes from there). References
    /// that repeat one another are sent once, and a reference to a whole Gateway (without sectionName and
    /// port) stands for every other reference to that Gateway.
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<SolverParentReference>,
    /// Labels added to the solver HTTPRoute (for example those a Gateway's `allowedRoutes` selects
    /// namespaces or routes by).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "super::labels_schema")]
    pub labels: BTreeMap<String, String>,
    /// Type of the solver Service: `ClusterIP` (the default) or `NodePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<SolverServiceType>,
    /// Overrides for the solver Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<SolverPodTemplate>,
}

/// A Gateway, or one listener of it, that a solver HTTPRoute attaches to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SolverParentReference {
    /// The Gateway's name.
    #[schemars(schema_with = "super::dns_subdomain_schema")]
    pub name: String,
    /// The Gateway's namespace; the Certificate's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_dns_label_schema")]
    pub namespace: Option<String>,
    /// The listener of the Gateway (its `name`); every listener that allows the route when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_section_name_schema")]
    pub section_name: Option<String>,
    /// The listener port; every port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// How the transient HTTP-01 solver Pod, Service and Ingress are made.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Http01Ingress {
    /// The ingressClassName of the solver Ingress. When absent, the cluster's default IngressClass applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_dns_subdomain_schema")]
    pub ingress_class_name: Option<String>,
    /// Type of the solver Service: `ClusterIP` (the default) or `NodePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<SolverServiceType>,
    /// pathType of the solver Ingress rule: `Exact` (the default), `Prefix` or `ImplementationSpecific`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_type: Option<SolverPathType>,
    /// Overrides for the solver Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<SolverPodTemplate>,
    /// Labels and annotations for the solver Ingress (for example an ingress controller's annotations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_template: Option<SolverIngressTemplate>,
}

/// Type of the solver Service: `ClusterIP` (the default) or `NodePort`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SolverServiceType {
    /// A ClusterIP Service.
    #[default]
    ClusterIP,
    /// A NodePort Service.
    NodePort,
}

/// pathType of the solver Ingress rule: `Exact` (the default), `Prefix` or `ImplementationSpecific`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SolverPathType {
    /// Match the challenge path exactly.
    #[default]
    Exact,
    /// Match the challenge path as a prefix.
    Prefix,
    /// Let the ingress controller decide.
    ImplementationSpecific,
}

/// Overrides for the solver Ingress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SolverIngressTemplate {
    /// Labels and annotations added to the solver Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
}

/// Overrides for the solver Pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SolverPodTemplate {
    /// Labels and annotations added to the solver Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    /// Scheduling and resource overrides for the solver Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SolverPodSpec>,
}

/// The parts of the solver Pod's spec that may be overridden. Security settings cannot be weakened.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SolverPodSpec {
    /// Node selector for the solver Pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the solver Pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the solver Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Priority class of the solver Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Pull secrets for the solver image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Resource requests and limits of the solver container (small defaults apply otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// What kacme last observed of an Issuer or ClusterIssuer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    /// `Ready`: the ACME account is registered and usable, with a reason and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The registered ACME account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeIssuerStatus>,
}

/// The ACME account of an issuer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeIssuerStatus {
    /// The account URI at the CA. With `keyThumbprint` and `server` it lets kacme (after a restart, or a
    /// change of the key Secret that keeps the key) use the account without asking the CA; the CA's first
    /// answer checks it, and an account the CA no longer knows is looked up or registered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The RFC 7638 thumbprint of the account key that `uri` belongs to: a different key in the key Secret
    /// is a different account, looked up (or registered) at the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_thumbprint: Option<String>,
    /// The ACME directory URL that `uri` belongs to: after a change of `spec.acme.server` the account is
    /// looked up (or registered) at the new server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The email the account was registered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_registered_email: Option<String>,
    /// Whether the CA's directory offers ACME Renewal Information (RFC 9773): then kacme renews inside the
    /// windows the CA suggests (see a Certificate's `status.renewalInfo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_info: Option<bool>,
    /// The profiles the CA's directory offers (`meta.profiles`), for `profile` on issuers and Certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
}

/// When kacme revokes certificates of an issuer without being asked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevocationPolicy {
    /// Revoke the certificate of a Certificate that is deleted (reason `cessationOfOperation`) before the
    /// Certificate goes. The deletion waits for the CA for up to 5 minutes; after that the Certificate goes
    /// anyway, with a Warning Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_deleted: Option<bool>,
    /// Revoke the previous certificate once a renewal with a new key has replaced it in the Secret (reason
    /// `superseded`). A failure shows as a Warning Event and is not retried: the old certificate then simply
    /// expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_key_rotated: Option<bool>,
}

/// A DNS name template: dot-separated labels, each `{label}` or letters, digits, hyphens and `{namespace}`.
pub const NAME_TEMPLATE_PATTERN: &str =
    r"^(\{label\}|([a-z0-9-]|\{namespace\})+)(\.(\{label\}|([a-z0-9-]|\{namespace\})+))*$";

fn name_templates_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 64,
        "items": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": NAME_TEMPLATE_PATTERN},
    })
}

fn cidrs_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 64,
        "items": {"type": "string", "minLength": 3, "maxLength": 49},
        "x-kubernetes-validations": [
            {"rule": "self.all(c, isCIDR(c))", "message": "every ipAddresses entry must be a CIDR such as 10.0.0.0/8"}
        ],
    })
}

fn max_duration_schema(_: &mut SchemaGenerator) -> Schema {
    super::validation::lifetime_schema("maxDuration")
}

fn acme_server_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 9,
        "maxLength": 2048,
        "x-kubernetes-validations": [
            {
                "rule": "self.startsWith('https://') && isURL(self) && url(self).getHostname() != ''",
                "message": "server must be the https:// URL of the CA's ACME directory"
            },
            {
                "rule": "!isURL(self) || url(self).getPort() == '' || (size(url(self).getPort()) <= 5 && int(url(self).getPort()) >= 1 && int(url(self).getPort()) <= 65535)",
                "message": "the server's port must be a number from 1 to 65535"
            }
        ]
    })
}

fn selector_names_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 100,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 253,
            "pattern": DNS_NAME_PATTERN,
        },
        "x-kubernetes-list-type": "set"
    })
}

fn optional_dns_subdomain_schema(generator: &mut SchemaGenerator) -> Schema {
    dns_subdomain_schema(generator)
}

fn optional_dns_label_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 63,
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    })
}

/// A Gateway API `SectionName`: a DNS subdomain of at most 253 characters.
fn optional_section_name_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 253,
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    })
}
