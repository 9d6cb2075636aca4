//! The one Event publisher of the reconcilers. Publishing is best effort: a failure is logged, never fatal.
//!
//! kube-runtime's `Recorder` folds every Event with the same type, reason, action and regarding object into
//! one series that keeps the first note: `Presented the HTTP-01 challenge for a.example (x2)` hid the Event
//! for `b.example`, and the second `OrderCreated` of a renewal (another order URL) was lost. This publisher
//! folds only repeats of the *same note*: distinct notes are distinct Events, and an identical note
//! published again within [`SERIES_TTL`] counts up the existing Event's series (`kubectl describe` shows
//! `(x3 over 2m)`), as the Events API intends.
//!
//! Memory is bounded: series older than [`SERIES_TTL`] are forgotten, and at most [`SERIES_CAPACITY`]
//! series are remembered (the least recently observed is forgotten first). Forgetting a series only means
//! that the next identical note starts a new Event. A series is remembered by a 64-bit hash of what
//! identifies it (keyed per process), not by the texts themselves: about 70 bytes instead of 600 (a full
//! cache holds a few hundred KiB, not a few MiB). Two distinct notes sharing a hash (odds about 2^-40 among
//! a full cache) would count up one Event instead of creating a second.

use crate::desired::EventNote;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// How long a published Event stays a series that an identical note counts up (kube-runtime's value).
pub const SERIES_TTL: std::time::Duration = std::time::Duration::from_secs(6 * 60);
/// How many series the publisher remembers at most.
pub const SERIES_CAPACITY: usize = 4096;

/// Publishes Events under the operator's name (and the Pod's, as the reporting instance).
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<SeriesCache>,
}

impl EventPublisher {
    /// A publisher reporting as `controller` (instance: the `POD_NAME` environment variable).
    pub fn new(client: Client, controller: &str) -> EventPublisher {
        let instance = std::env::var("POD_NAME").ok().unwrap_or_else(|| controller.to_string());
        EventPublisher {
            client,
            controller: controller.into(),
            instance,
            series: Mutex::new(SeriesCache::new(SERIES_TTL, SERIES_CAPACITY)),
        }
    }

    /// Publishes `note` about `object` as part of `action` (a verb phrase such as "Issuance").
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, object: &K, action: &str, note: &EventNote) {
        self.publish_to(&object.object_ref(&()), action, note.warning, note.reason.as_str(), note.message.clone())
            .await;
    }

    /// Publishes an Event about the object `regarding`.
    pub async fn publish_to(
        &self,
        regarding: &ObjectReference,
        action: &str,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let now = Timestamp::now();
        let key = SeriesKey {
            warning,
            reason: reason.into(),
            action: action.into(),
            regarding: RegardingKey::of(regarding),
            note: note.clone(),
        };
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let step = self.lock().observe(key.clone(), now, || event_name(regarding, &self.controller, now));
        let result = match &step {
            SeriesStep::Create { name } => {
                let event = self.build_event(name, &namespace, regarding, action, warning, reason, note, now);
                events.create(&PostParams::default(), &event).await.map(drop)
            }
            SeriesStep::CountUp { name, count } => {
                let patch =
                    serde_json::json!({"series": EventSeries { count: *count, last_observed_time: MicroTime(now) }});
                events.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(drop)
            }
        };
        if let Err(error) = result {
            // The next identical note starts afresh (the Event may have been deleted or never created).
            self.lock().forget(&key);
            tracing::warn!(%error, reason, "publishing an Event failed");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeriesCache> {
        // The cache holds no invariant that a panic elsewhere could break: keep using it.
        self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[allow(clippy::too_many_arguments)]
    fn build_event(
        &self,
        name: &str,
        namespace: &str,
        regarding: &ObjectReference,
        action: &str,
        warning: bool,
        reason: &str,
        note: String,
        now: Timestamp,
    ) -> K8sEvent {
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..ObjectMeta::default()
            },
            action: Some(action.into()),
            reason: Some(reason.into()),
            note: Some(note),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            ..K8sEvent::default()
        }
    }
}

/// A unique Event name: the object's name and the time in nanoseconds (as kube-runtime names them).
fn event_name(regarding: &ObjectReference, controller: &str, now: Timestamp) -> String {
    format!("{}.{:x}", regarding.name.as_deref().unwrap_or(controller), now.as_nanosecond())
}

/// What makes two publications the same Event: everything shown to people, the note included.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    pub warning: bool,
    pub reason: String,
    pub action: String,
    pub regarding: RegardingKey,
    pub note: String,
}

/// The identity of the object an Event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RegardingKey {
    api_version: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

impl RegardingKey {
    pub(crate) fn of(reference: &ObjectReference) -> RegardingKey {
        RegardingKey {
            api_version: reference.api_version.clone(),
            kind: reference.kind.clone(),
            namespace: reference.namespace.clone(),
            name: reference.name.clone(),
            uid: reference.uid.clone(),
        }
    }
}

/// What to write for a publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SeriesStep {
    /// A new Event of this name.
    Create { name: String },
    /// The Event of this name happened again: its series now counts `count`.
    CountUp { name: String, count: i32 },
}

#[derive(Clone, Debug)]
struct Series {
    name: String,
    count: i32,
    last_observed: Timestamp,
}

/// The Event series published lately, bounded in age and number. Pure: time is a parameter.
#[derive(Debug)]
pub(crate) struct SeriesCache {
    ttl: jiff::SignedDuration,
    capacity: usize,
    /// Series by the hash of their key ([`SeriesCache::hash`]).
    series: HashMap<u64, Series>,
    hasher: RandomState,
}

impl SeriesCache {
    pub(crate) fn new(ttl: std::time::Duration, capacity: usize) -> SeriesCache {
        let ttl = jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::MAX);
        SeriesCache { ttl, capacity: capacity.max(1), series: HashMap::new(), hasher: RandomState::new() }
    }

    fn hash(&self, key: &SeriesKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Records a publication of `key` at `now` and says what to write: count up a recent identical Event,
    /// or create one named by `new_name`.
    pub(crate) fn observe(&mut self, key: SeriesKey, now: Timestamp, new_name: impl FnOnce() -> String) -> SeriesStep {
        let ttl = self.ttl;
        let key = self.hash(&key);
        self.series.retain(|_, s| s.last_observed.saturating_add(ttl).is_ok_and(|end| end > now));
        if let Some(series) = self.series.get_mut(&key) {
            series.count = series.count.saturating_add(1).max(2);
            series.last_observed = now;
            return SeriesStep::CountUp { name: series.name.clone(), count: series.count };
        }
        while self.series.len() >= self.capacity {
            let Some(oldest) = self.series.iter().min_by_key(|(_, s)| s.last_observed).map(|(k, _)| *k) else {
                break;
            };
            self.series.remove(&oldest);
        }
        let name = new_name();
        self.series.insert(key, Series { name: name.clone(), count: 1, last_observed: now });
        SeriesStep::Create { name }
    }

    /// Forgets `key`: its next publication creates a new Event.
    pub(crate) fn forget(&mut self, key: &SeriesKey) {
        let key = self.hash(key);
        self.series.remove(&key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{EventNote, EventReason};
    use crate::testing::FakeApiserver;

    fn key(reason: &str, note: &str) -> SeriesKey {
        SeriesKey {
            warning: false,
            reason: reason.into(),
            action: "Issuance".into(),
            regarding: RegardingKey::of(&ObjectReference {
                kind: Some("Certificate".into()),
                namespace: Some("apps".into()),
                name: Some("web".into()),
                uid: Some("uid-1".into()),
                ..ObjectReference::default()
            }),
            note: note.into(),
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    #[test]
    fn distinct_notes_of_one_reason_are_distinct_events() {
        let mut cache = SeriesCache::new(SERIES_TTL, 16);
        let a = cache.observe(key("Presented", "for a.example"), at(0), || "e1".into());
        let b = cache.observe(key("Presented", "for b.example"), at(1), || "e2".into());
        assert_eq!(a, SeriesStep::Create { name: "e1".into() });
        assert_eq!(b, SeriesStep::Create { name: "e2".into() });
    }

    #[test]
    fn an_identical_note_counts_up_the_series_of_its_event() {
        let mut cache = SeriesCache::new(SERIES_TTL, 16);
        cache.observe(key("Failed", "the CA said no"), at(0), || "e1".into());
        let second = cache.observe(key("Failed", "the CA said no"), at(10), || "e2".into());
        let third = cache.observe(key("Failed", "the CA said no"), at(20), || "e3".into());
        assert_eq!(second, SeriesStep::CountUp { name: "e1".into(), count: 2 });
        assert_eq!(third, SeriesStep::CountUp { name: "e1".into(), count: 3 });
    }

    #[test]
    fn a_series_older_than_the_ttl_is_forgotten_and_the_note_starts_a_new_event() {
        let mut cache = SeriesCache::new(SERIES_TTL, 16);
        cache.observe(key("Failed", "no"), at(0), || "e1".into());
        cache.observe(key("Other", "x"), at(0), || "e2".into());
        let later = cache.observe(key("Failed", "no"), at(6 * 60 + 1), || "e3".into());
        assert_eq!(later, SeriesStep::Create { name: "e3".into() });
        assert_eq!(cache.len(), 1, "the expired series of another note is dropped too");
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity_and_drops_the_least_recent_first() {
        let mut cache = SeriesCache::new(SERIES_TTL, 3);
        for i in 0..10 {
            cache.observe(key("Presented", &format!("name {i}")), at(i), || format!("e{i}"));
            assert!(cache.len() <= 3);
        }
        // name 9 is remembered (the latest); name 0 is not.
        assert!(matches!(cache.observe(key("Presented", "name 9"), at(11), String::new), SeriesStep::CountUp { .. }));
        assert!(matches!(cache.observe(key("Presented", "name 0"), at(12), String::new), SeriesStep::Create { .. }));
    }

    #[test]
    fn a_forgotten_series_starts_a_new_event() {
        let mut cache = SeriesCache::new(SERIES_TTL, 16);
        cache.observe(key("Failed", "no"), at(0), || "e1".into());
        cache.forget(&key("Failed", "no"));
        assert_eq!(cache.observe(key("Failed", "no"), at(1), || "e2".into()), SeriesStep::Create { name: "e2".into() });
    }

    #[tokio::test]
    async fn each_name_refused_is_its_own_event_and_a_repeat_counts_up() {
        let fake = FakeApiserver::new();
        let certificate = fake.put(&crate::desired::testing::certificate());
        let publisher = EventPublisher::new(fake.client(), "kacme");

        for name in ["a.example", "b.example", "a.example"] {
            let note = EventNote::warning(EventReason::ValidationFailed, format!("The CA could not validate {name}"));
            publisher.publish(&certificate, "Issuance", &note).await;
        }

        let mut events: Vec<(String, u64)> = fake.events().into_iter().map(|e| (e.note, e.count)).collect();
        events.sort();
        assert_eq!(
            events,
            [
                ("The CA could not validate a.example".to_string(), 2),
                ("The CA could not validate b.example".to_string(), 1),
            ]
        );
        assert_eq!(fake.count("POST", "/apis/events.k8s.io/v1/namespaces/apps/events"), 2);
    }
}
