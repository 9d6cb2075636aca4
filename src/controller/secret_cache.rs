//! The cache of kacme's own Secrets (labelled `app.kubernetes.io/managed-by: kacme`), kept compact.
//!
//! With one Secret per Certificate this is the largest thing the operator keeps: at 10,000 Certificates a
//! `Secret` in kube-runtime's store cost about 3 KiB (already cut to its leaf and key, see
//! `strip_secret_for_cache`), half of it the three `BTreeMap`s of labels, annotations and data, each of which
//! allocates room for eleven entries to hold two to seven. This cache keeps each Secret as boxed slices and
//! boxed strings (kacme's own label, annotation and data keys as `&'static str`), keyed by one
//! `namespace/name` string, and builds a `Secret` when one is read: a pass reads its Secret once.
//!
//! What is kept of the metadata: name, namespace, uid, resourceVersion, creationTimestamp,
//! deletionTimestamp, labels, annotations, ownerReferences and finalizers; the rest (managedFields,
//! generateName, generation, selfLink, deletionGracePeriodSeconds) is nothing kacme reads of a Secret.

use crate::api::names::{
    ANNOTATION_ACCOUNT_KEY_THUMBPRINT, ANNOTATION_ACCOUNT_NAMESPACE, ANNOTATION_ACCOUNT_SERVER, ANNOTATION_ACCOUNT_URL,
    ANNOTATION_CERTIFICATE_NAME, ANNOTATION_CERTIFICATE_UID, ANNOTATION_DNS_NAMES, ANNOTATION_IP_ADDRESSES,
    ANNOTATION_ISSUER_KIND, ANNOTATION_ISSUER_NAME, ANNOTATION_OUTPUTS, ANNOTATION_USAGES, CA_CRT, LABEL_CERTIFICATE,
    LABEL_MANAGED_BY, TLS_CRT, TLS_KEY,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// Keys (and Secret types) that nearly every cached Secret has: kept as one static string instead of a copy
/// each.
const KNOWN_KEYS: &[&str] = &[
    LABEL_MANAGED_BY,
    LABEL_CERTIFICATE,
    ANNOTATION_CERTIFICATE_NAME,
    ANNOTATION_CERTIFICATE_UID,
    ANNOTATION_ISSUER_NAME,
    ANNOTATION_ISSUER_KIND,
    ANNOTATION_USAGES,
    ANNOTATION_DNS_NAMES,
    ANNOTATION_IP_ADDRESSES,
    ANNOTATION_OUTPUTS,
    ANNOTATION_ACCOUNT_NAMESPACE,
    ANNOTATION_ACCOUNT_URL,
    ANNOTATION_ACCOUNT_KEY_THUMBPRINT,
    ANNOTATION_ACCOUNT_SERVER,
    TLS_CRT,
    TLS_KEY,
    CA_CRT,
    crate::desired::TLS_SECRET_TYPE,
    "Opaque",
];

/// A string that is usually one of [`KNOWN_KEYS`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Text {
    Known(&'static str),
    Other(Box<str>),
}

impl Text {
    fn new(text: String) -> Text {
        match KNOWN_KEYS.iter().find(|known| **known == text) {
            Some(known) => Text::Known(known),
            None => Text::Other(text.into_boxed_str()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Text::Known(text) => text,
            Text::Other(text) => text,
        }
    }
}

type Pairs<V> = Box<[(Text, V)]>;

/// A Secret as the cache keeps it.
#[derive(Debug, PartialEq)]
struct CompactSecret {
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    labels: Option<Pairs<Box<str>>>,
    annotations: Option<Pairs<Box<str>>>,
    owner_references: Option<Box<[OwnerReference]>>,
    finalizers: Option<Box<[Box<str>]>>,
    type_: Option<Text>,
    immutable: Option<bool>,
    data: Option<Pairs<Box<[u8]>>>,
}

fn boxed(text: Option<String>) -> Option<Box<str>> {
    text.map(String::into_boxed_str)
}

fn pairs<V, W>(map: Option<BTreeMap<String, V>>, value: impl Fn(V) -> W) -> Option<Pairs<W>> {
    map.map(|map| map.into_iter().map(|(k, v)| (Text::new(k), value(v))).collect())
}

fn map<V: ?Sized, W>(pairs: &Option<Pairs<Box<V>>>, value: impl Fn(&V) -> W) -> Option<BTreeMap<String, W>> {
    pairs.as_ref().map(|pairs| pairs.iter().map(|(k, v)| (k.as_str().to_string(), value(v))).collect())
}

impl CompactSecret {
    /// The compact form of `secret`, and its `namespace/name` key (`None` without a name).
    fn from_secret(secret: Secret) -> Option<(Box<str>, CompactSecret)> {
        let meta = secret.metadata;
        let key = format!("{}/{}", meta.namespace.unwrap_or_default(), meta.name?).into_boxed_str();
        let compact = CompactSecret {
            uid: boxed(meta.uid),
            resource_version: boxed(meta.resource_version),
            creation_timestamp: meta.creation_timestamp,
            deletion_timestamp: meta.deletion_timestamp,
            labels: pairs(meta.labels, String::into_boxed_str),
            annotations: pairs(meta.annotations, String::into_boxed_str),
            owner_references: meta.owner_references.map(Vec::into_boxed_slice),
            finalizers: meta.finalizers.map(|f| f.into_iter().map(String::into_boxed_str).collect()),
            type_: secret.type_.map(Text::new),
            immutable: secret.immutable,
            data: pairs(secret.data, |v| v.0.into_boxed_slice()),
        };
        Some((key, compact))
    }

    fn to_secret(&self, key: &str) -> Secret {
        let (namespace, name) = key.split_once('/').unwrap_or(("", key));
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
                uid: self.uid.as_deref().map(str::to_string),
                resource_version: self.resource_version.as_deref().map(str::to_string),
                creation_timestamp: self.creation_timestamp.clone(),
                deletion_timestamp: self.deletion_timestamp.clone(),
                labels: map(&self.labels, str::to_string),
                annotations: map(&self.annotations, str::to_string),
                owner_references: self.owner_references.as_ref().map(|o| o.to_vec()),
                finalizers: self.finalizers.as_ref().map(|f| f.iter().map(|f| f.to_string()).collect()),
                ..Default::default()
            },
            type_: self.type_.as_ref().map(|t| t.as_str().to_string()),
            immutable: self.immutable,
            data: map(&self.data, |v| ByteString(v.to_vec())),
            string_data: None,
        }
    }
}

#[derive(Default)]
struct Inner {
    secrets: HashMap<Box<str>, CompactSecret>,
    /// A re-list in progress (between `Init` and `InitDone`): the Secrets listed so far. The cache keeps
    /// serving the previous list until it is complete, as kube-runtime's store does.
    relisting: Option<HashMap<Box<str>, CompactSecret>>,
    /// Whether a list has completed once.
    ready: bool,
}

/// The cache of kacme's Secrets: filled by [`SecretCache::apply`] from a watch, read with
/// [`SecretCache::get`]. Clones share the cache.
#[derive(Clone, Default)]
pub struct SecretCache {
    inner: Arc<RwLock<Inner>>,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the contents: they hold private keys.
        f.debug_struct("SecretCache").field("len", &self.len()).finish()
    }
}

impl SecretCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // Nothing panics while holding the lock midway through a change.
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The Secret `namespace/name`, if the cache holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let key = format!("{namespace}/{name}");
        let inner = self.read();
        inner.secrets.get(key.as_str()).map(|compact| Arc::new(compact.to_secret(&key)))
    }

    /// The resourceVersion of the Secret `namespace/name` in the cache, if it holds it.
    pub fn resource_version(&self, namespace: &str, name: &str) -> Option<String> {
        let inner = self.read();
        inner.secrets.get(format!("{namespace}/{name}").as_str())?.resource_version.as_deref().map(str::to_string)
    }

    /// Whether the cache holds the Secret `namespace/name`.
    pub fn contains(&self, namespace: &str, name: &str) -> bool {
        self.read().secrets.contains_key(format!("{namespace}/{name}").as_str())
    }

    /// How many Secrets the cache holds.
    pub fn len(&self) -> usize {
        self.read().secrets.len()
    }

    /// Whether a first list has completed.
    pub fn is_ready(&self) -> bool {
        self.read().ready
    }

    /// Applies a watch event (as kube-runtime's reflector does).
    pub fn apply(&self, event: &watcher::Event<Secret>) {
        let mut inner = self.write();
        match event {
            watcher::Event::Apply(secret) => {
                if let Some((key, compact)) = CompactSecret::from_secret(secret.clone()) {
                    inner.secrets.insert(key, compact);
                }
            }
            watcher::Event::Delete(secret) => {
                if let Some(name) = secret.metadata.name.as_deref() {
                    let key = format!("{}/{name}", secret.metadata.namespace.as_deref().unwrap_or_default());
                    inner.secrets.remove(key.as_str());
                    crate::controller::context::shrink_when_drained(&mut inner.secrets);
                }
            }
            watcher::Event::Init => inner.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(secret) => {
                if let (Some(relisting), Some((key, compact))) =
                    (inner.relisting.as_mut(), CompactSecret::from_secret(secret.clone()))
                {
                    relisting.insert(key, compact);
                }
            }
            watcher::Event::InitDone => {
                if let Some(mut listed) = inner.relisting.take() {
                    listed.shrink_to_fit();
                    inner.secrets = listed;
                }
                inner.ready = true;
            }
        }
    }

    /// Replaces the whole cache with `secrets` (unit tests that play the watch).
    #[cfg(test)]
    pub(crate) fn replace(&self, secrets: impl IntoIterator<Item = Secret>) {
        self.apply(&watcher::Event::Init);
        for secret in secrets {
            self.apply(&watcher::Event::InitApply(secret));
        }
        self.apply(&watcher::Event::InitDone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(namespace: &str, name: &str, version: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                uid: Some("6a1f0c1e-0000-4000-8000-000000000001".to_string()),
                resource_version: Some(version.to_string()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(1_700_000_000).unwrap())),
                labels: Some(BTreeMap::from([
                    (LABEL_MANAGED_BY.to_string(), "kacme".to_string()),
                    ("team".to_string(), "payments".to_string()),
                ])),
                annotations: Some(BTreeMap::from([
                    (ANNOTATION_CERTIFICATE_NAME.to_string(), name.to_string()),
                    ("example.com/note".to_string(), "kept".to_string()),
                ])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "kacme.dev/v1alpha1".to_string(),
                    kind: "Certificate".to_string(),
                    name: name.to_string(),
                    uid: "u".to_string(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                finalizers: Some(vec!["example.com/hold".to_string()]),
                ..Default::default()
            },
            type_: Some(crate::desired::TLS_SECRET_TYPE.to_string()),
            data: Some(BTreeMap::from([
                (TLS_CRT.to_string(), ByteString(b"CRT".to_vec())),
                (TLS_KEY.to_string(), ByteString(b"KEY".to_vec())),
                ("extra".to_string(), ByteString(vec![0, 255, 1])),
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn a_cached_secret_reads_back_as_it_was_written() {
        let cache = SecretCache::default();
        let written = secret("apps", "web", "7");
        cache.apply(&watcher::Event::Apply(written.clone()));
        assert_eq!(cache.get("apps", "web").as_deref(), Some(&written));
        assert!(cache.contains("apps", "web"));
        assert_eq!(cache.get("apps", "other"), None);
        assert_eq!(cache.get("other", "web"), None);
        // Known keys are shared, the others kept as they are.
        let (_, compact) = CompactSecret::from_secret(written).unwrap();
        let labels = compact.labels.as_deref().unwrap();
        assert_eq!(labels[0].0, Text::Known(LABEL_MANAGED_BY));
        assert_eq!(labels[1].0, Text::Other("team".into()));
    }

    #[test]
    fn what_the_cache_does_not_keep_is_nothing_kacme_reads() {
        let cache = SecretCache::default();
        let mut written = secret("apps", "web", "7");
        written.metadata.generate_name = Some("web-".to_string());
        written.metadata.generation = Some(3);
        written.metadata.managed_fields = Some(vec![Default::default()]);
        cache.apply(&watcher::Event::Apply(written.clone()));
        let read = cache.get("apps", "web").unwrap();
        written.metadata.generate_name = None;
        written.metadata.generation = None;
        written.metadata.managed_fields = None;
        assert_eq!(*read, written);
    }

    #[test]
    fn a_newer_version_replaces_the_cached_one_and_a_delete_removes_it() {
        let cache = SecretCache::default();
        cache.apply(&watcher::Event::Apply(secret("apps", "web", "7")));
        cache.apply(&watcher::Event::Apply(secret("apps", "web", "8")));
        assert_eq!(cache.get("apps", "web").unwrap().metadata.resource_version.as_deref(), Some("8"));
        assert_eq!(cache.len(), 1);
        cache.apply(&watcher::Event::Delete(secret("apps", "web", "9")));
        assert_eq!(cache.get("apps", "web"), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_relist_replaces_the_cache_only_when_it_is_complete() {
        let cache = SecretCache::default();
        assert!(!cache.is_ready());
        cache.apply(&watcher::Event::Apply(secret("apps", "gone", "1")));
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(secret("apps", "web", "2")));
        assert!(cache.contains("apps", "gone"), "the previous list is served until the new one is complete");
        assert!(!cache.contains("apps", "web"));
        cache.apply(&watcher::Event::InitDone);
        assert!(cache.is_ready());
        assert!(!cache.contains("apps", "gone"));
        assert!(cache.contains("apps", "web"));
    }

    #[test]
    fn its_debug_output_shows_no_contents() {
        let cache = SecretCache::default();
        cache.apply(&watcher::Event::Apply(secret("apps", "web", "7")));
        let shown = format!("{cache:?}");
        assert!(!shown.contains("KEY") && !shown.contains("web"), "{shown}");
    }
}
