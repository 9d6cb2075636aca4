//! The one Event publisher of the reconcilers. Publishing is best effort: a failure is logged, never fatal.

use crate::desired::EventNote;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

/// Publishes Events under the operator's name (and the Pod's, as the reporting instance).
pub struct EventPublisher {
    recorder: Recorder,
}

impl EventPublisher {
    /// A publisher reporting as `controller` (instance: the `POD_NAME` environment variable).
    pub fn new(client: Client, controller: &str) -> EventPublisher {
        let reporter = Reporter { controller: controller.into(), instance: std::env::var("POD_NAME").ok() };
        EventPublisher { recorder: Recorder::new(client, reporter) }
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
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(%error, reason, "publishing an Event failed");
        }
    }
}
