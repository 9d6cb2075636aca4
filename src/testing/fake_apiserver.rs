//! An in-memory kube-apiserver behind [`kube::Client`], for unit tests that run whole reconcile passes.
//!
//! [`FakeApiserver`] is a `tower` service that answers the REST calls of `kube::Api` from a store of JSON
//! objects keyed by (group, version, resource, namespace, name). It knows no schemas: every resource path
//! (`/api/v1/...`, `/apis/<group>/<version>/...`, namespaced or cluster-scoped) is served the same way, so
//! Secrets, Pods, Services, Ingresses, Events, Leases and kacme's own resources need nothing special.
//!
//! Like the real apiserver, it:
//! - answers GET (404 with a `Status` body, which `get_opt` turns into `None`), LIST with `labelSelector`
//!   (`a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x,y)`) and `fieldSelector` on
//!   `metadata.name`/`metadata.namespace`, and the metadata-only forms (`get_metadata`, `list_metadata`);
//! - creates with POST (409 `AlreadyExists`; fills `uid`, `resourceVersion`, `creationTimestamp`,
//!   `generation` 1 and `generateName`), replaces with PUT, patches with server-side apply (creating when
//!   absent), JSON merge patch (RFC 7386) and JSON patch (RFC 6902, a failing `test` op answers 422 and
//!   changes nothing; a `test` for `null` passes on a missing field, as in the apiserver);
//! - keeps one resourceVersion counter for all objects (like etcd's revision), bumped by every write that
//!   changes something (a write that changes nothing keeps the object's resourceVersion); refuses with 409
//!   a write that names an outdated `metadata.resourceVersion` and a delete whose preconditions fail;
//! - splits the status subresource from the main resource: `/status` writes change only `.status`, other
//!   writes never change it, and a create drops it (seed a status with [`FakeApiserver::put`]);
//!   `metadata.generation` goes up when a main-resource write changes anything outside `metadata` and
//!   `status`, and when deletion starts;
//! - deletes an object at once without finalizers; with finalizers it sets `deletionTimestamp` and removes
//!   the object when the last finalizer goes (adding a finalizer then is refused with 422);
//! - tracks server-side apply ownership per field manager: a manager's apply removes the fields it set
//!   before and no longer sets, and conflicts (409) with another manager's fields unless forced.
//!
//! Where it is simpler than the real one:
//! - server-side apply merges objects key by key and replaces lists and scalars whole (the apiserver
//!   merges some lists by key, such as `conditions` by `type`); strategic merge patch is a JSON merge patch;
//! - no watch: a watch request gets 405 (tests feed `reflector::store()` writers directly);
//! - no admission, schema validation, defaulting, `stringData` conversion, dry run, paging (`limit` is
//!   ignored: one page), or namespace existence checks;
//! - garbage collection through ownerReferences happens at once, within the delete of the owner (the real
//!   collector works in kube-controller-manager, moments later).
//!
//! For tests it also keeps a log of requests ([`FakeApiserver::requests`]), reads Events back
//! ([`FakeApiserver::events`]), reads and seeds objects without a client ([`FakeApiserver::get`],
//! [`FakeApiserver::put`]) and injects failures ([`FakeApiserver::fail_next`]).

mod apply;
mod selector;
#[cfg(test)]
mod tests;

use apply::{Ownership, Part};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use kube::Resource;
use selector::{FieldSelector, LabelSelector};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

/// An in-memory kube-apiserver. Clones share one store: keep one to inspect what a [`kube::Client`]
/// built by [`FakeApiserver::client`] did.
#[derive(Clone, Default)]
pub struct FakeApiserver {
    state: Arc<Mutex<State>>,
}

/// One request as the fake saw it, with the HTTP status it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// The URL path, such as `/api/v1/namespaces/apps/secrets/web-tls`.
    pub path: String,
    /// The decoded query, such as `fieldManager=kacme&force=true` (empty when there is none).
    pub query: String,
    /// The HTTP status of the answer.
    pub status: u16,
}

impl fmt::Display for RequestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if !self.query.is_empty() {
            write!(f, "?{}", self.query)?;
        }
        write!(f, " -> {}", self.status)
    }
}

/// An Event in the store (`events.k8s.io/v1` as kube-runtime's `Recorder` writes them, or core `v1`),
/// reduced to what tests assert on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The CamelCase reason, such as `Issued`.
    pub reason: String,
    /// The human-readable text (`note`, or `message` of a core Event).
    pub note: String,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// The name of the object the Event is about (`regarding`, or `involvedObject` of a core Event).
    pub regarding: String,
    /// How many times it was published (`series.count`, or `count` of a core Event; 1 when absent).
    pub count: u64,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<ObjectKey, Stored>,
    /// The last resourceVersion handed out: one counter for every object, like etcd's revision.
    revision: u64,
    requests: Vec<RequestRecord>,
    faults: Vec<Fault>,
}

/// A resource type, as its URL names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ResourceKey {
    group: String,
    version: String,
    plural: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    resource: ResourceKey,
    /// `None` for cluster-scoped objects.
    namespace: Option<String>,
    name: String,
}

struct Stored {
    object: Value,
    /// The revision that created the object (orders Events by creation).
    created: u64,
    ownership: Ownership,
}

/// A failure to answer instead of serving the next matching requests.
struct Fault {
    method: String,
    path_contains: String,
    status: u16,
    remaining: usize,
}

/// What a request addresses, parsed from its path.
struct Target {
    resource: ResourceKey,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn key(&self, name: &str) -> ObjectKey {
        ObjectKey { resource: self.resource.clone(), namespace: self.namespace.clone(), name: name.to_owned() }
    }

    /// `secrets` or `certificates.kacme.dev`, as the apiserver names a resource in messages.
    fn resource_name(&self) -> String {
        if self.resource.group.is_empty() {
            self.resource.plural.clone()
        } else {
            format!("{}.{}", self.resource.plural, self.resource.group)
        }
    }

    fn part(&self) -> Result<Part, ApiError> {
        match self.subresource.as_deref() {
            None => Ok(Part::Main),
            Some("status") => Ok(Part::Status),
            Some(other) => Err(ApiError::not_found_message(format!(
                "the fake apiserver serves no subresource {other:?} of {}",
                self.resource_name()
            ))),
        }
    }
}

/// Parses `/api/v1/[namespaces/<ns>/]<resource>[/<name>[/<subresource>]]` and the `/apis/<group>/<version>`
/// form. `/api/v1/namespaces/<name>[/status]` is the Namespace object itself.
fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !matches!(rest, [] | ["status" | "finalize"]) => {
            (Some((*namespace).to_owned()), rest)
        }
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, subresource] => (*plural, Some(*name), Some(*subresource)),
        _ => return None,
    };
    Some(Target {
        resource: ResourceKey { group: group.to_owned(), version: version.to_owned(), plural: plural.to_owned() },
        namespace,
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

/// A failed request, answered with a `Status` body.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into() }
    }

    /// An error with the reason the apiserver gives to `code`.
    fn from_code(code: u16, message: impl Into<String>) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            415 => "UnsupportedMediaType",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        ApiError::new(code, reason, message)
    }

    fn not_found(target: &Target, name: &str) -> Self {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", target.resource_name()))
    }

    fn not_found_message(message: String) -> Self {
        ApiError::new(404, "NotFound", message)
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(409, "Conflict", message)
    }

    fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(422, "Invalid", message)
    }

    fn status_body(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// A successful answer.
struct Reply {
    status: StatusCode,
    body: Value,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Reply { status: StatusCode::OK, body }
    }

    fn created(body: Value) -> Self {
        Reply { status: StatusCode::CREATED, body }
    }
}

/// A request, parsed.
struct Call<'a> {
    method: &'a Method,
    target: Target,
    query: &'a [(String, String)],
    content_type: &'a str,
    /// The client asked for `PartialObjectMetadata` (`get_metadata`, `list_metadata`).
    metadata_only: bool,
    body: &'a [u8],
}

impl Call<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(self.body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
    }

    /// The body as an object (JSON, or YAML for apply).
    fn object_body(&self) -> Result<Value, ApiError> {
        let body = match self.json_body() {
            Ok(body) => body,
            Err(_) if self.content_type == APPLY_PATCH => serde_yaml::from_slice(self.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
            Err(error) => return Err(error),
        };
        if body.is_object() { Ok(body) } else { Err(ApiError::bad_request("the body is not an object")) }
    }
}

const APPLY_PATCH: &str = "application/apply-patch+yaml";
const MERGE_PATCH: &str = "application/merge-patch+json";
const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"].as_object_mut().expect("metadata was just made an object")
}

fn finalizers(object: &Value) -> Vec<&str> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Drops what Go's `omitempty` would not store: `null` fields, and empty lists and maps in metadata.
fn normalize(object: &mut Value) {
    fn drop_nulls(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(drop_nulls);
            }
            Value::Array(items) => items.iter_mut().for_each(drop_nulls),
            _ => {}
        }
    }
    drop_nulls(object);
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.retain(|_, v| {
            !matches!(v, Value::Array(a) if a.is_empty()) && !matches!(v, Value::Object(m) if m.is_empty())
        });
    }
}

/// `object` with the `.status` of `source` (none when `source` has none).
fn with_status_of(mut object: Value, source: &Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        match source.get("status") {
            Some(status) => map.insert("status".into(), status.clone()),
            None => map.remove("status"),
        };
    }
    object
}

/// The object without `metadata` and `status`: what `metadata.generation` counts changes of.
fn generation_relevant(object: &Value) -> Value {
    let mut rest = object.clone();
    if let Some(map) = rest.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    rest
}

/// The `PartialObjectMetadata` form of an object, for metadata-only requests.
fn partial_metadata(object: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]})
}

/// Applies a JSON patch atomically. Like the apiserver's JSON patch library, a `test` for `null` passes on
/// a missing field (kube-runtime's `finalizer()` tests `/metadata/finalizers` for `null` that way).
fn apply_json_patch(document: &mut Value, operations: &[json_patch::PatchOperation]) -> Result<(), String> {
    let mut patched = document.clone();
    for operation in operations {
        if let json_patch::PatchOperation::Test(test) = operation
            && test.value.is_null()
            && test.path.resolve(&patched).is_err()
        {
            continue;
        }
        json_patch::patch(&mut patched, std::slice::from_ref(operation)).map_err(|e| e.to_string())?;
    }
    *document = patched;
    Ok(())
}

/// The key of an object of type `K`.
fn typed_key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        resource: typed_resource::<K>(),
        namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
        name: name.to_owned(),
    }
}

fn typed_resource<K: Resource<DynamicType = ()>>() -> ResourceKey {
    ResourceKey {
        group: K::group(&()).into_owned(),
        version: K::version(&()).into_owned(),
        plural: K::plural(&()).into_owned(),
    }
}

fn from_stored<K: DeserializeOwned>(object: &Value) -> K {
    serde_json::from_value(object.clone()).unwrap_or_else(|e| {
        panic!("the stored object does not deserialize as {}: {e}\n{object:#}", std::any::type_name::<K>())
    })
}

impl FakeApiserver {
    /// An empty apiserver.
    pub fn new() -> Self {
        FakeApiserver::default()
    }

    /// A client whose every request this fake answers (default namespace `default`).
    ///
    /// Must be called inside a Tokio runtime (the client spawns a task that feeds requests to the fake).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; the state is still readable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stored object of type `K` named `name` in `namespace` (`""` for cluster-scoped objects).
    pub fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.lock().objects.get(&typed_key::<K>(namespace, name)).map(|stored| from_stored(&stored.object))
    }

    /// Every stored object of type `K`, in every namespace, ordered by namespace and name.
    pub fn list<K>(&self) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let resource = typed_resource::<K>();
        let state = self.lock();
        state.objects.iter().filter(|(key, _)| key.resource == resource).map(|(_, s)| from_stored(&s.object)).collect()
    }

    /// Stores `object` as it is, status included, replacing any object of that name (as another actor's
    /// write would: no finalizer or generation logic). Fills `apiVersion`, `kind`, `uid`,
    /// `creationTimestamp` and `generation` when absent and gives it a new resourceVersion; returns what
    /// was stored.
    pub fn put<K>(&self, object: &K) -> K
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let mut value = serde_json::to_value(object).expect("a typed object serializes to JSON");
        value["apiVersion"] = K::api_version(&()).into();
        value["kind"] = K::kind(&()).into();
        let metadata = metadata_mut(&mut value);
        let name = metadata.get("name").and_then(Value::as_str).expect("an object to put has a name").to_owned();
        let namespace = metadata.get("namespace").and_then(Value::as_str).unwrap_or_default().to_owned();
        let key = typed_key::<K>(&namespace, &name);
        let mut state = self.lock();
        let revision = state.next_revision();
        let metadata = metadata_mut(&mut value);
        metadata.entry("uid").or_insert_with(|| uid(revision).into());
        metadata.entry("creationTimestamp").or_insert_with(|| now().into());
        metadata.entry("generation").or_insert(1.into());
        metadata.insert("resourceVersion".into(), revision.to_string().into());
        normalize(&mut value);
        let created = state.objects.get(&key).map_or(revision, |s| s.created);
        state.objects.insert(key, Stored { object: value.clone(), created, ownership: Ownership::default() });
        from_stored(&value)
    }

    /// Removes the object of type `K` at once, finalizers or not (as if it had never been); whether it was there.
    pub fn remove<K>(&self, namespace: &str, name: &str) -> bool
    where
        K: Resource<DynamicType = ()>,
    {
        self.lock().objects.remove(&typed_key::<K>(namespace, name)).is_some()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// The requests so far that could write: POST, PUT, PATCH and DELETE, in order.
    pub fn writes(&self) -> Vec<RequestRecord> {
        self.lock().requests.iter().filter(|r| r.method != "GET").cloned().collect()
    }

    /// How many requests with this method (`"PATCH"`) had a path containing `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.lock().requests.iter().filter(|r| r.method == method && r.path.contains(path_contains)).count()
    }

    /// Forgets the requests so far (to look at one reconcile pass at a time).
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Answers the next `times` requests with this method whose path contains `path_contains` with a
    /// `Status` of code `status` (such as 500, 409 or 503), without serving them: nothing is written.
    pub fn fail_next(&self, method: &str, path_contains: &str, status: u16, times: usize) {
        self.lock().faults.push(Fault {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            status,
            remaining: times,
        });
    }

    /// The Events stored so far, oldest first.
    pub fn events(&self) -> Vec<RecordedEvent> {
        let state = self.lock();
        let mut events: Vec<&Stored> = state
            .objects
            .iter()
            .filter(|(key, _)| {
                key.resource.plural == "events" && matches!(key.resource.group.as_str(), "" | "events.k8s.io")
            })
            .map(|(_, stored)| stored)
            .collect();
        events.sort_by_key(|stored| stored.created);
        events.into_iter().map(|stored| recorded_event(&stored.object)).collect()
    }

    /// Answers one request.
    fn respond(&self, parts: &http::request::Parts, body: &[u8]) -> Response<Full<Bytes>> {
        let query: Vec<(String, String)> =
            form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
        let header = |name| parts.headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).unwrap_or("");
        let content_type = header(header::CONTENT_TYPE).split(';').next().unwrap_or_default().trim();
        let metadata_only = header(header::ACCEPT).contains("as=PartialObjectMetadata");
        let path = parts.uri.path();

        let mut state = self.lock();
        let result = match state.take_fault(parts.method.as_str(), path) {
            Some(status) => {
                Err(ApiError::from_code(status, format!("injected failure {status} of the fake apiserver")))
            }
            None => match parse_path(path) {
                None => Err(ApiError::not_found_message(format!("the fake apiserver serves no path {path}"))),
                Some(target) => {
                    let call = Call { method: &parts.method, target, query: &query, content_type, metadata_only, body };
                    state.serve(&call)
                }
            },
        };
        let (status, body) = match result {
            Ok(reply) => (reply.status, reply.body),
            Err(error) => {
                let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, error.status_body())
            }
        };
        state.requests.push(RequestRecord {
            method: parts.method.to_string(),
            path: path.to_owned(),
            query: query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"),
            status: status.as_u16(),
        });
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a response of a valid status and a JSON body builds")
    }
}

fn uid(revision: u64) -> String {
    format!("fa4e0000-0000-4000-8000-{revision:012x}")
}

fn recorded_event(event: &Value) -> RecordedEvent {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let note = if event["note"].is_string() { &event["note"] } else { &event["message"] };
    let regarding = if event["regarding"].is_object() { &event["regarding"] } else { &event["involvedObject"] };
    let count = event["series"]["count"].as_u64().or_else(|| event["count"].as_u64()).unwrap_or(1);
    RecordedEvent {
        reason: text(&event["reason"]),
        note: text(note),
        type_: text(&event["type"]),
        regarding: text(&regarding["name"]),
        count,
    }
}

impl State {
    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// The status of an injected failure that matches, counting it down.
    fn take_fault(&mut self, method: &str, path: &str) -> Option<u16> {
        let fault = self
            .faults
            .iter_mut()
            .find(|f| f.remaining > 0 && f.method.eq_ignore_ascii_case(method) && path.contains(&f.path_contains))?;
        fault.remaining -= 1;
        let status = fault.status;
        self.faults.retain(|f| f.remaining > 0);
        Some(status)
    }

    fn serve(&mut self, call: &Call) -> Result<Reply, ApiError> {
        if call.param("watch").is_some_and(|w| w == "true" || w == "1") {
            return Err(ApiError::new(405, "MethodNotAllowed", "the fake apiserver does not serve watches"));
        }
        let name = call.target.name.clone();
        let object_reply = |reply: Result<Reply, ApiError>| {
            reply.map(
                |reply| if call.metadata_only { Reply { body: partial_metadata(&reply.body), ..reply } } else { reply },
            )
        };
        match (call.method, name) {
            (&Method::GET, Some(name)) => object_reply(self.get(call, &name)),
            (&Method::GET, None) => self.list(call),
            (&Method::POST, None) => object_reply(self.create(call)),
            (&Method::PUT, Some(name)) => object_reply(self.replace(call, &name)),
            (&Method::PATCH, Some(name)) => object_reply(self.patch(call, &name)),
            (&Method::DELETE, Some(name)) if call.target.subresource.is_none() => self.delete(call, &name),
            (&Method::DELETE, None) => self.delete_collection(call),
            (method, _) => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("the fake apiserver does not serve {method} {}", call.target.resource_name()),
            )),
        }
    }

    fn get(&self, call: &Call, name: &str) -> Result<Reply, ApiError> {
        call.target.part()?;
        let stored = self.objects.get(&call.target.key(name)).ok_or_else(|| ApiError::not_found(&call.target, name))?;
        Ok(Reply::ok(stored.object.clone()))
    }

    /// The keys of the objects a collection request selects.
    fn select(&self, call: &Call) -> Result<Vec<ObjectKey>, ApiError> {
        let labels =
            LabelSelector::parse(call.param("labelSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
        let fields =
            FieldSelector::parse(call.param("fieldSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
        let target = &call.target;
        Ok(self
            .objects
            .iter()
            .filter(|(key, stored)| {
                key.resource == target.resource
                    && (target.namespace.is_none() || key.namespace == target.namespace)
                    && labels.matches(stored.object["metadata"].get("labels"))
                    && fields.matches(&stored.object)
            })
            .map(|(key, _)| key.clone())
            .collect())
    }

    /// A list answer of these objects.
    fn list_body(&self, items: Vec<Value>, metadata_only: bool) -> Value {
        let metadata = json!({"resourceVersion": self.revision.to_string()});
        if metadata_only {
            let items: Vec<Value> = items.iter().map(partial_metadata).collect();
            return json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": metadata, "items": items});
        }
        let (api_version, kind) = items.first().map_or((Value::from("v1"), "List".to_owned()), |item| {
            (item["apiVersion"].clone(), format!("{}List", item["kind"].as_str().unwrap_or_default()))
        });
        json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items})
    }

    fn list(&self, call: &Call) -> Result<Reply, ApiError> {
        let items = self.select(call)?.iter().map(|key| self.objects[key].object.clone()).collect();
        Ok(Reply::ok(self.list_body(items, call.metadata_only)))
    }

    fn create(&mut self, call: &Call) -> Result<Reply, ApiError> {
        let target = &call.target;
        if target.subresource.is_some() {
            return Err(ApiError::new(405, "MethodNotAllowed", "the fake apiserver creates no subresources"));
        }
        let mut object = call.object_body()?;
        let revision_hint = self.revision + 1;
        let metadata = metadata_mut(&mut object);
        let name = match (
            metadata.get("name").and_then(Value::as_str),
            metadata.get("generateName").and_then(Value::as_str),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) => format!("{prefix}{revision_hint:05x}"),
            _ => return Err(ApiError::invalid("metadata.name: Required value: name or generateName is required")),
        };
        metadata.insert("name".into(), name.clone().into());
        check_namespace(target, metadata)?;
        let key = target.key(&name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", target.resource_name()),
            ));
        }
        if let Some(map) = object.as_object_mut() {
            map.remove("status");
        }
        Ok(Reply::created(self.insert_new(key, object, Ownership::default())))
    }

    /// Stores a new object with the metadata the server sets; returns it.
    fn insert_new(&mut self, key: ObjectKey, mut object: Value, ownership: Ownership) -> Value {
        let revision = self.next_revision();
        let metadata = metadata_mut(&mut object);
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"] {
            metadata.remove(field);
        }
        metadata.insert("name".into(), key.name.clone().into());
        if let Some(namespace) = &key.namespace {
            metadata.insert("namespace".into(), namespace.clone().into());
        }
        metadata.insert("uid".into(), uid(revision).into());
        metadata.insert("resourceVersion".into(), revision.to_string().into());
        metadata.insert("creationTimestamp".into(), now().into());
        metadata.insert("generation".into(), 1.into());
        normalize(&mut object);
        self.objects.insert(key, Stored { object: object.clone(), created: revision, ownership });
        object
    }

    fn replace(&mut self, call: &Call, name: &str) -> Result<Reply, ApiError> {
        let part = call.target.part()?;
        let key = call.target.key(name);
        if !self.objects.contains_key(&key) {
            return Err(ApiError::not_found(&call.target, name));
        }
        let candidate = call.object_body()?;
        self.commit(&call.target, &key, candidate, part, None).map(Reply::ok)
    }

    fn patch(&mut self, call: &Call, name: &str) -> Result<Reply, ApiError> {
        let part = call.target.part()?;
        let key = call.target.key(name);
        if call.content_type == APPLY_PATCH {
            return self.apply(call, key, part);
        }
        let current = &self.objects.get(&key).ok_or_else(|| ApiError::not_found(&call.target, name))?.object;
        let mut candidate = current.clone();
        match call.content_type {
            MERGE_PATCH | STRATEGIC_MERGE_PATCH => json_patch::merge(&mut candidate, &call.json_body()?),
            JSON_PATCH => {
                let patch: json_patch::Patch = serde_json::from_slice(call.body)
                    .map_err(|e| ApiError::bad_request(format!("the body is not a JSON patch: {e}")))?;
                apply_json_patch(&mut candidate, &patch.0).map_err(ApiError::invalid)?;
            }
            other => {
                return Err(ApiError::new(415, "UnsupportedMediaType", format!("unsupported patch type {other:?}")));
            }
        }
        self.commit(&call.target, &key, candidate, part, None).map(Reply::ok)
    }

    /// Server-side apply: creates the object when absent, else merges the configuration (see [`apply`]).
    fn apply(&mut self, call: &Call, key: ObjectKey, part: Part) -> Result<Reply, ApiError> {
        let manager = call.param("fieldManager").ok_or_else(|| {
            ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value")
        })?;
        let force = call.param("force") == Some("true");
        let mut request = call.object_body()?;
        if !request["apiVersion"].is_string() || !request["kind"].is_string() {
            return Err(ApiError::bad_request("an apply configuration needs apiVersion and kind"));
        }
        let metadata = metadata_mut(&mut request);
        if metadata.get("name").and_then(Value::as_str).is_some_and(|n| n != key.name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object does not match the name on the URL ({})",
                key.name
            )));
        }
        check_namespace(&call.target, metadata)?;
        let configuration = apply::configuration(&request, part);
        let Some(stored) = self.objects.get(&key) else {
            if part == Part::Status {
                return Err(ApiError::not_found(&call.target, &key.name));
            }
            let mut object = json!({"apiVersion": request["apiVersion"], "kind": request["kind"]});
            apply::merge_into(&mut object, &configuration);
            let ownership = Ownership::created_by(manager, part, &configuration);
            return Ok(Reply::created(self.insert_new(key, object, ownership)));
        };
        let mut ownership = stored.ownership.clone();
        let candidate = ownership
            .apply(&stored.object, &configuration, manager, part, force)
            .map_err(|conflicts| ApiError::conflict(conflicts.message()))?;
        self.commit(&call.target, &key, candidate, part, Some(ownership)).map(Reply::ok)
    }

    /// Writes `candidate` over the stored object at `key` as a write to `part`, with the apiserver's rules
    /// (see the module documentation); returns the object as written. `ownership` is the new apply
    /// ownership after an apply, `None` after any other write.
    fn commit(
        &mut self,
        target: &Target,
        key: &ObjectKey,
        candidate: Value,
        part: Part,
        ownership: Option<Ownership>,
    ) -> Result<Value, ApiError> {
        let stored = self.objects.get(key).ok_or_else(|| ApiError::not_found(target, &key.name))?;
        let current = &stored.object;
        let requested_version = candidate["metadata"]["resourceVersion"].as_str().map(str::to_owned);
        if requested_version
            .as_ref()
            .is_some_and(|v| Some(v.as_str()) != current["metadata"]["resourceVersion"].as_str())
        {
            return Err(ApiError::conflict(format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your \
                 changes to the latest version and try again",
                target.resource_name(),
                key.name
            )));
        }
        // A write to one part takes the other part from the stored object.
        let mut object = match part {
            Part::Main => with_status_of(candidate, current),
            Part::Status => with_status_of(current.clone(), &candidate),
        };
        let metadata = metadata_mut(&mut object);
        for (field, expected) in [("name", Some(key.name.as_str())), ("namespace", key.namespace.as_deref())] {
            if metadata.get(field).and_then(Value::as_str).is_some_and(|v| Some(v) != expected) {
                return Err(ApiError::bad_request(format!("metadata.{field} does not match the URL")));
            }
        }
        for field in
            ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation", "resourceVersion"]
        {
            match current["metadata"].get(field) {
                Some(value) => metadata.insert(field.into(), value.clone()),
                None => metadata.remove(field),
            };
        }
        normalize(&mut object);
        let deleting = object["metadata"]["deletionTimestamp"].is_string();
        if deleting && finalizers(&object).iter().any(|f| !finalizers(current).contains(f)) {
            return Err(ApiError::invalid(
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
            ));
        }
        let mut ownership = ownership.unwrap_or_else(|| {
            let mut kept = stored.ownership.clone();
            kept.forget_changed(current, &object);
            kept
        });
        if object == *current {
            // Nothing changed: the apiserver writes nothing and keeps the resourceVersion.
            let object = object.clone();
            if let Some(stored) = self.objects.get_mut(key) {
                stored.ownership = std::mem::take(&mut ownership);
            }
            return Ok(object);
        }
        if generation_relevant(&object) != generation_relevant(current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            object["metadata"]["generation"] = (generation + 1).into();
        }
        let revision = self.next_revision();
        object["metadata"]["resourceVersion"] = revision.to_string().into();
        if deleting && finalizers(&object).is_empty() {
            self.objects.remove(key);
        } else if let Some(stored) = self.objects.get_mut(key) {
            stored.object = object.clone();
            stored.ownership = ownership;
        }
        Ok(object)
    }

    fn delete(&mut self, call: &Call, name: &str) -> Result<Reply, ApiError> {
        let key = call.target.key(name);
        let stored = self.objects.get(&key).ok_or_else(|| ApiError::not_found(&call.target, name))?;
        let options = if call.body.is_empty() { Value::Null } else { call.json_body()? };
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            let expected = options["preconditions"][field].as_str();
            let actual = stored.object["metadata"][field].as_str();
            if let Some(expected) = expected
                && Some(expected) != actual
            {
                return Err(ApiError::conflict(format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {label} in precondition: \
                     {expected}, {label} in object meta: {}",
                    call.target.resource_name(),
                    actual.unwrap_or_default()
                )));
            }
        }
        let (object, gone) = self.delete_object(&key);
        if !gone {
            return Ok(Reply::ok(object));
        }
        Ok(Reply::ok(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": call.target.resource.group,
                "kind": call.target.resource.plural,
                "uid": object["metadata"]["uid"],
            },
        })))
    }

    /// Deletes the object at `key` (present): at once without finalizers, else by setting
    /// `deletionTimestamp`. Returns the object as it ended and whether it is gone.
    fn delete_object(&mut self, key: &ObjectKey) -> (Value, bool) {
        let Some(stored) = self.objects.get(key) else { return (Value::Null, true) };
        if finalizers(&stored.object).is_empty() {
            let stored = self.objects.remove(key).map(|s| s.object).unwrap_or_default();
            self.collect_dependents(stored["metadata"]["uid"].as_str().unwrap_or_default());
            return (stored, true);
        }
        if stored.object["metadata"]["deletionTimestamp"].is_string() {
            return (stored.object.clone(), false);
        }
        let revision = self.next_revision();
        let Some(stored) = self.objects.get_mut(key) else { return (Value::Null, true) };
        let metadata = &mut stored.object["metadata"];
        metadata["deletionTimestamp"] = now().into();
        metadata["deletionGracePeriodSeconds"] = 0.into();
        metadata["generation"] = (metadata["generation"].as_i64().unwrap_or(0) + 1).into();
        metadata["resourceVersion"] = revision.to_string().into();
        (stored.object.clone(), false)
    }

    /// The garbage collector's part: deletes the objects whose every owner is gone, once the object with
    /// `uid` is (an object with another owner still there stays).
    fn collect_dependents(&mut self, uid: &str) {
        if uid.is_empty() {
            return;
        }
        let owners_of = |object: &Value| -> Vec<String> {
            let references = object["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
            references.iter().filter_map(|r| r["uid"].as_str().map(String::from)).collect()
        };
        let live: std::collections::HashSet<String> =
            self.objects.values().filter_map(|s| s.object["metadata"]["uid"].as_str().map(String::from)).collect();
        let orphans: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, s)| {
                let owners = owners_of(&s.object);
                owners.iter().any(|o| o == uid) && owners.iter().all(|o| !live.contains(o))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in orphans {
            self.delete_object(&key);
        }
    }

    fn delete_collection(&mut self, call: &Call) -> Result<Reply, ApiError> {
        let keys = self.select(call)?;
        let items = keys.iter().map(|key| self.delete_object(key).0).collect();
        Ok(Reply::ok(self.list_body(items, call.metadata_only)))
    }
}

/// Checks that a body's `metadata.namespace` agrees with the URL, and fills it in.
fn check_namespace(target: &Target, metadata: &mut Map<String, Value>) -> Result<(), ApiError> {
    let Some(namespace) = &target.namespace else { return Ok(()) };
    match metadata.get("namespace").and_then(Value::as_str) {
        Some(given) if !given.is_empty() && given != namespace => Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({given}) does not match the namespace sent on the request \
             ({namespace})"
        ))),
        _ => {
            metadata.insert("namespace".into(), namespace.clone().into());
            Ok(())
        }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

impl tower_service::Service<Request<kube::client::Body>> for FakeApiserver {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<kube::client::Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let response = match body.collect_bytes().await {
                Ok(body) => server.respond(&parts, &body),
                Err(error) => {
                    let status = ApiError::bad_request(format!("reading the request body: {error}")).status_body();
                    Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(Full::new(Bytes::from(status.to_string())))
                        .expect("a response of a valid status and a JSON body builds")
                }
            };
            Ok(response)
        })
    }
}
