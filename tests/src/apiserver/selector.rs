//! Label and field selectors, in the syntax of the `labelSelector` and
//! `fieldSelector` query parameters.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} selector {text:?}: {problem}")]
pub struct SelectorError {
    what: &'static str,
    text: String,
    problem: String,
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

fn set_values(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let error = |problem: &str| SelectorError {
            what: "label",
            text: text.to_string(),
            problem: problem.to_string(),
        };
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_string())
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, values)) = part.split_once(" notin ") {
                Requirement::NotIn(
                    key.trim().to_string(),
                    set_values(values).ok_or_else(|| error("bad value set"))?,
                )
            } else if let Some((key, values)) = part.split_once(" in ") {
                Requirement::In(
                    key.trim().to_string(),
                    set_values(values).ok_or_else(|| error("bad value set"))?,
                )
            } else if part.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                Requirement::Exists(part.to_string())
            } else {
                return Err(error(&format!("cannot parse {part:?}")));
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    /// A `metav1.LabelSelector` object: `matchLabels` and `matchExpressions`.
    pub fn from_object(selector: &Value) -> Result<Self, SelectorError> {
        let error = |problem: String| SelectorError {
            what: "label",
            text: selector.to_string(),
            problem,
        };
        let mut requirements = Self::from_map(
            selector
                .get("matchLabels")
                .and_then(Value::as_object)
                .unwrap_or(&serde_json::Map::new()),
        )
        .0;
        for expression in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expression
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| error("an expression has no key".into()))?
                .to_string();
            let values: Vec<String> = expression
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            requirements.push(match expression.get("operator").and_then(Value::as_str) {
                Some("In") => Requirement::In(key, values),
                Some("NotIn") => Requirement::NotIn(key, values),
                Some("Exists") => Requirement::Exists(key),
                Some("DoesNotExist") => Requirement::DoesNotExist(key),
                other => return Err(error(format!("unknown operator {other:?}"))),
            });
        }
        Ok(LabelSelector(requirements))
    }

    /// The selector of a Service or a Deployment's `matchLabels`.
    pub fn from_map(labels: &serde_json::Map<String, Value>) -> Self {
        LabelSelector(
            labels
                .iter()
                .map(|(k, v)| Requirement::Equals(k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

/// A field selector: `metadata.name=x,status.podIP!=y`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Terms are separated by plain commas (field selectors have no sets,
    /// so no parentheses group them, unlike label selectors).
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (p, true, v)
            } else {
                return Err(SelectorError {
                    what: "field",
                    text: text.to_string(),
                    problem: format!("{part:?} is not field=value or field!=value"),
                });
            };
            terms.push((path.trim().to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    /// The value an equality term requires of `path`, as Kubernetes'
    /// `RequiresExactMatch`.
    pub fn exact(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, equal, _)| p == path && *equal)
            .map(|(_, _, value)| value.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, value)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors_follow_kubernetes_syntax() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (web, api)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("missing notin (x)", true),
        ];
        for (selector, expected) in cases {
            assert_eq!(
                LabelSelector::parse(selector).unwrap().matches(&pod),
                expected,
                "{selector}"
            );
        }
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn label_selector_objects_are_read() {
        let selector = json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["back"]},
                {"key": "strait.io/inject", "operator": "DoesNotExist"},
            ],
        });
        let selector = LabelSelector::from_object(&selector).unwrap();
        assert!(selector.matches(&json!({"metadata": {"labels": {"app": "web", "tier": "front"}}})));
        assert!(!selector.matches(&json!({"metadata": {"labels": {"app": "web", "strait.io/inject": "x"}}})));
        assert!(LabelSelector::from_object(&json!({"matchExpressions": [{"key": "a", "operator": "Near"}]})).is_err());
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let pod = json!({"metadata": {"name": "a"}, "status": {"podIP": "198.18.1.2"}});
        assert!(FieldSelector::parse("metadata.name=a").unwrap().matches(&pod));
        assert!(!FieldSelector::parse("status.podIP!=198.18.1.2").unwrap().matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&pod));
        assert!(FieldSelector::parse("metadata.name").is_err());
        // No sets in field selectors: a comma always ends a term, so the
        // name authorization reads is the name the filter keeps.
        assert!(FieldSelector::parse("x!=(,metadata.name=ca,)").is_err());
        let crafted = FieldSelector::parse("x!=(,metadata.name=ca").unwrap();
        assert_eq!(crafted.exact("metadata.name"), Some("ca"));
        let other = json!({"metadata": {"name": "other"}});
        assert!(!crafted.matches(&other));
    }
}
