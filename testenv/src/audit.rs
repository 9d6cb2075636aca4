//! Reading the apiserver's audit log ([`crate::ControlPlaneOptions::audit_log`]): who made which requests.
//!
//! The policy logs every request at Metadata level, without the `RequestReceived` stage: a long-running
//! request (a watch) appears once when it starts (`ResponseStarted`) and again when it ends
//! (`ResponseComplete`), any other request once (`ResponseComplete`). [`AuditReader`] turns that into one
//! [`ApiRequest`] per request, counted when it is first seen, and reads only what was appended since its
//! last call, so that a caller can count the requests of a time window.

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

/// One request to the apiserver, as the audit log tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    /// The authenticated user name.
    pub user: String,
    /// The client's User-Agent.
    pub user_agent: String,
    /// get, list, watch, create, update, patch, delete, deletecollection (or a non-resource verb).
    pub verb: String,
    /// The resource (`secrets`, `certificates`, ...), empty for non-resource URLs.
    pub resource: String,
    /// The subresource (`status`, ...), empty when none.
    pub subresource: String,
    /// The namespace, empty for cluster-scoped requests.
    pub namespace: String,
    /// The object's name, when the request names one.
    pub name: String,
    /// The HTTP status code of the answer (0 while a watch is still running).
    pub code: u16,
}

impl ApiRequest {
    /// Whether the verb changes state (create, update, patch, delete, deletecollection).
    pub fn is_write(&self) -> bool {
        is_write_verb(&self.verb)
    }

    /// `verb resource[/subresource]`, for tables: `patch certificates/status`.
    pub fn verb_and_resource(&self) -> String {
        if self.subresource.is_empty() {
            format!("{} {}", self.verb, self.resource)
        } else {
            format!("{} {}/{}", self.verb, self.resource, self.subresource)
        }
    }
}

/// Whether an apiserver verb changes state.
pub fn is_write_verb(verb: &str) -> bool {
    matches!(verb, "create" | "update" | "patch" | "delete" | "deletecollection")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: String,
    verb: String,
    #[serde(default)]
    user: User,
    #[serde(default)]
    user_agent: String,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    response_status: Option<ResponseStatus>,
}

#[derive(Default, Deserialize)]
struct User {
    #[serde(default)]
    username: String,
}

#[derive(Default, Deserialize)]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Default, Deserialize)]
struct ResponseStatus {
    #[serde(default)]
    code: u16,
}

/// Reads an audit log incrementally: each [`AuditReader::read_new`] returns the requests that appeared
/// since the previous call.
#[derive(Debug)]
pub struct AuditReader {
    path: PathBuf,
    offset: u64,
    /// Long-running requests whose start was counted; their completion is not counted again.
    started: HashSet<String>,
}

impl AuditReader {
    /// A reader of `path` from its beginning.
    pub fn new(path: impl Into<PathBuf>) -> AuditReader {
        AuditReader { path: path.into(), offset: 0, started: HashSet::new() }
    }

    /// A reader of `path` that skips everything logged so far.
    pub fn from_end(path: impl Into<PathBuf>) -> Result<AuditReader> {
        let mut reader = AuditReader::new(path);
        reader.read_new()?;
        Ok(reader)
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The requests logged since the last call (whole lines only: a line being written is read next time).
    pub fn read_new(&mut self) -> Result<Vec<ApiRequest>> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error).with_context(|| format!("opening {}", self.path.display())),
        };
        let length = file.metadata().with_context(|| format!("reading {}", self.path.display()))?.len();
        if length < self.offset {
            // Rotated or truncated: what was logged meanwhile is elsewhere, and counts would come out short.
            bail!(
                "{} is shorter ({length} bytes) than what was already read ({} bytes): it was rotated or \
                 truncated, and the requests logged since cannot be counted",
                self.path.display(),
                self.offset
            );
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).with_context(|| format!("reading {}", self.path.display()))?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        let mut requests = Vec::new();
        for line in bytes[..complete].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(line) = serde_json::from_slice::<Line>(line) else { continue };
            match line.stage.as_str() {
                "ResponseStarted" => {
                    self.started.insert(line.audit_id.clone());
                }
                "ResponseComplete" | "Panic" => {
                    if self.started.remove(&line.audit_id) {
                        continue;
                    }
                }
                _ => continue,
            }
            let object = line.object_ref.unwrap_or_default();
            requests.push(ApiRequest {
                user: line.user.username,
                user_agent: line.user_agent,
                verb: line.verb,
                resource: object.resource,
                subresource: object.subresource,
                namespace: object.namespace,
                name: object.name,
                code: line.response_status.map_or(0, |s| s.code),
            });
        }
        Ok(requests)
    }
}

/// Requests counted by a key, for reports.
pub fn count_by<'a>(
    requests: impl IntoIterator<Item = &'a ApiRequest>,
    key: impl Fn(&ApiRequest) -> String,
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for request in requests {
        *counts.entry(key(request)).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, stage: &str, verb: &str, user: &str, resource: &str, code: Option<u16>) -> String {
        let status = code.map(|c| format!(r#","responseStatus":{{"metadata":{{}},"code":{c}}}"#)).unwrap_or_default();
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"{stage}","requestURI":"/x","verb":"{verb}","user":{{"username":"{user}","groups":["system:masters"]}},"userAgent":"kube-rs/1","objectRef":{{"resource":"{resource}","namespace":"apps","name":"web","apiVersion":"v1"}}{status}}}"#
        )
    }

    #[test]
    fn every_request_is_counted_once_and_only_new_lines_are_read() {
        let dir = crate::TempDir::new("audit-test").unwrap();
        let path = dir.join("audit.log");
        let first = [
            line("1", "ResponseComplete", "get", "op", "secrets", Some(200)),
            line("2", "ResponseStarted", "watch", "op", "pods", Some(200)),
            line("3", "ResponseComplete", "patch", "admin", "certificates", Some(409)),
        ];
        std::fs::write(&path, first.join("\n") + "\n" + r#"{"partial":"#).unwrap();
        let mut reader = AuditReader::new(&path);
        let requests = reader.read_new().unwrap();
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[2].code, 409);
        assert!(requests[2].is_write() && !requests[0].is_write());
        assert_eq!(requests[1].verb_and_resource(), "watch pods");

        // The partial line is completed, the watch ends: only the completed line is new.
        let rest = [
            line("4", "ResponseComplete", "create", "op", "secrets", Some(201)),
            line("2", "ResponseComplete", "watch", "op", "pods", Some(200)),
        ];
        let text = std::fs::read_to_string(&path).unwrap().replace(r#"{"partial":"#, "");
        std::fs::write(&path, text + &rest.join("\n") + "\n").unwrap();
        let requests = reader.read_new().unwrap();
        let by_verb = count_by(&requests, |r| format!("{} {}", r.user, r.verb));
        assert_eq!(by_verb, BTreeMap::from([("op create".to_string(), 1)]));
        assert!(reader.read_new().unwrap().is_empty());
    }

    #[test]
    fn a_rotated_log_is_an_error_not_a_short_count() {
        let dir = crate::TempDir::new("audit-test").unwrap();
        let path = dir.join("audit.log");
        let lines = [
            line("1", "ResponseComplete", "get", "op", "secrets", Some(200)),
            line("2", "ResponseComplete", "get", "op", "secrets", Some(200)),
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let mut reader = AuditReader::new(&path);
        assert_eq!(reader.read_new().unwrap().len(), 2);
        std::fs::write(&path, line("3", "ResponseComplete", "get", "op", "secrets", Some(200)) + "\n").unwrap();
        let error = reader.read_new().unwrap_err().to_string();
        assert!(error.contains("rotated or truncated"), "{error}");
    }
}
