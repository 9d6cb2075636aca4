//! Label and field selectors of LIST and DELETE-collection requests, parsed like the apiserver does.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, PartialEq, Eq)]
enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`: the label is absent or has another value.
    NotEquals(String, String),
    /// `key`.
    Exists(String),
    /// `!key`.
    NotExists(String),
    /// `key in (a, b)`.
    In(String, Vec<String>),
    /// `key notin (a, b)`: the label is absent or has none of the values.
    NotIn(String, Vec<String>),
}

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses the text form (`a=b,c,!d,e in (x,y)`); an empty text selects everything.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        split_outside_parentheses(text)
            .into_iter()
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(parse_requirement)
            .collect::<Result<_, _>>()
            .map(LabelSelector)
    }

    /// Whether an object with these `metadata.labels` is selected.
    pub(super) fn matches(&self, labels: Option<&Value>) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => label(key) == Some(value.as_str()),
            Requirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::NotExists(key) => label(key).is_none(),
            Requirement::In(key, values) => label(key).is_some_and(|l| values.iter().any(|v| v == l)),
            Requirement::NotIn(key, values) => label(key).is_none_or(|l| values.iter().all(|v| v != l)),
        })
    }
}

/// Splits at the commas that separate requirements (not those inside `in (a,b)`).
fn split_outside_parentheses(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (index, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(text: &str) -> Result<Requirement, String> {
    let key = |key: &str| {
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            Err(format!("invalid label selector requirement {text:?}"))
        } else {
            Ok(key.to_owned())
        }
    };
    if let Some(rest) = text.strip_prefix('!') {
        return Ok(Requirement::NotExists(key(rest)?));
    }
    if let Some((head, set)) = text.split_once('(') {
        let set = set.strip_suffix(')').ok_or_else(|| format!("unclosed value set in {text:?}"))?;
        let values: Vec<String> = set.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
        let head = head.trim_end();
        return if let Some(k) = head.strip_suffix(" notin") {
            Ok(Requirement::NotIn(key(k)?, values))
        } else if let Some(k) = head.strip_suffix(" in") {
            Ok(Requirement::In(key(k)?, values))
        } else {
            Err(format!("unknown set operator in {text:?}"))
        };
    }
    if let Some((k, value)) = text.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value.trim().to_owned()));
    }
    if let Some((k, value)) = text.split_once("==").or_else(|| text.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, value.trim().to_owned()));
    }
    Ok(Requirement::Exists(key(text)?))
}

/// A parsed `fieldSelector` on `metadata.name` and `metadata.namespace` (the fields every resource has).
#[derive(Debug, Default)]
pub(super) struct FieldSelector(Vec<(&'static str, bool, String)>);

impl FieldSelector {
    /// Parses `metadata.name=x,metadata.namespace!=y`; other fields are refused.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector requirement {part:?}"));
            };
            let field = match field.trim() {
                "metadata.name" => "name",
                "metadata.namespace" => "namespace",
                other => return Err(format!("field label not supported by the fake apiserver: {other}")),
            };
            requirements.push((field, equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(requirements))
    }

    /// Whether `object` is selected.
    pub(super) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = object["metadata"][*field].as_str().unwrap_or_default();
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_select_like_the_apiserver() {
        let labels = json!({"app": "web", "tier": "front"});
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=api", false),
            ("app!=api", true),
            ("missing!=x", true),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app in (api, web)", true),
            ("app notin (api,web)", false),
            ("missing notin (x)", true),
            ("app=web,tier in (front),!missing", true),
            ("app=web,tier=back", false),
        ];
        for (selector, selected) in cases {
            let parsed = LabelSelector::parse(selector).expect("the selector parses");
            assert_eq!(parsed.matches(Some(&labels)), selected, "{selector}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for selector in ["app in (web", "a b", "app within (x)", "!"] {
            assert!(LabelSelector::parse(selector).is_err(), "{selector}");
        }
        assert!(FieldSelector::parse("spec.nodeName=x").is_err());
    }

    #[test]
    fn field_selectors_match_name_and_namespace() {
        let object = json!({"metadata": {"name": "web", "namespace": "apps"}});
        let selected = |text: &str| FieldSelector::parse(text).expect("the selector parses").matches(&object);
        assert!(selected("metadata.name=web,metadata.namespace=apps"));
        assert!(!selected("metadata.name!=web"));
        assert!(selected("metadata.namespace!=other"));
    }
}
