//! Authorization with Kubernetes RBAC semantics
//! (<https://kubernetes.io/docs/reference/access-authn-authz/rbac/>): a
//! request is allowed when a rule of a Role bound in the request's namespace,
//! or of a ClusterRole bound there or cluster-wide, matches its verb, API
//! group, resource (`resource/subresource`, `*`, `*/subresource`) and, when
//! the rule names any, resource name. Subjects are Users, Groups and
//! ServiceAccounts; a ServiceAccount's user is
//! `system:serviceaccount:NS:NAME` in the groups `system:serviceaccounts`,
//! `system:serviceaccounts:NS` and `system:authenticated`. Denials are 403s
//! worded as the real API server words them.
//!
//! Like Kubernetes' bootstrap policy (`system:discovery`,
//! `system:public-info-viewer`), every authenticated user may read the
//! discovery documents. Aggregated ClusterRoles and non-resource URL rules are
//! not served.

use serde_json::Value;

use super::error::ApiError;
use super::resource::Resource;
use super::store::Store;

/// What a resource request asks to do, as Kubernetes' request info sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    pub verb: &'static str,
    pub resource: &'static Resource,
    pub subresource: Option<&'a str>,
    /// Empty for cluster-scoped requests and lists across namespaces.
    pub namespace: &'a str,
    /// The object's name; for lists and watches, the name a
    /// `metadata.name=` field selector requires, if any.
    pub name: String,
}

/// An authenticated user, as RBAC subjects match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn service_account(namespace: &str, name: &str) -> Self {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }
}

fn strings(value: &Value, key: &str) -> Vec<String> {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn text<'v>(value: &'v Value, key: &str) -> &'v str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Whether a binding's subject is `user`. A ServiceAccount subject without a
/// namespace is in the binding's (`binding_namespace`, empty for a
/// ClusterRoleBinding, where it then matches no one).
fn subject_matches(subject: &Value, binding_namespace: &str, user: &User) -> bool {
    match text(subject, "kind") {
        "User" => text(subject, "name") == user.name,
        "Group" => user.groups.iter().any(|g| g == text(subject, "name")),
        "ServiceAccount" => {
            let namespace = match text(subject, "namespace") {
                "" => binding_namespace,
                namespace => namespace,
            };
            !namespace.is_empty() && user.name == format!("system:serviceaccount:{namespace}:{}", text(subject, "name"))
        }
        _ => false,
    }
}

fn resource_matches(rule: &[String], attributes: &Attributes) -> bool {
    let plural = attributes.resource.plural;
    let combined = match attributes.subresource {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural.to_string(),
    };
    rule.iter().any(|r| {
        r == "*"
            || *r == combined
            || attributes
                .subresource
                .is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    })
}

/// Whether one PolicyRule allows the request.
fn rule_allows(rule: &Value, attributes: &Attributes) -> bool {
    let verbs = strings(rule, "verbs");
    let groups = strings(rule, "apiGroups");
    let names = strings(rule, "resourceNames");
    (verbs.iter().any(|v| v == "*" || v == attributes.verb))
        && groups.iter().any(|g| g == "*" || g == attributes.resource.group)
        && resource_matches(&strings(rule, "resources"), attributes)
        && (names.is_empty() || names.contains(&attributes.name))
}

fn role_allows(store: &Store, binding: &Value, binding_namespace: &str, attributes: &Attributes) -> bool {
    let role_ref = &binding["roleRef"];
    let role = match text(role_ref, "kind") {
        "ClusterRole" => store.get(Resource::named("clusterroles"), "", text(role_ref, "name")),
        "Role" if !binding_namespace.is_empty() => {
            store.get(Resource::named("roles"), binding_namespace, text(role_ref, "name"))
        }
        _ => return false,
    };
    role.ok()
        .and_then(|role| role.get("rules").and_then(Value::as_array).cloned())
        .is_some_and(|rules| rules.iter().any(|rule| rule_allows(rule, attributes)))
}

fn bound(binding: &Value, binding_namespace: &str, user: &User) -> bool {
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .is_some_and(|subjects| subjects.iter().any(|s| subject_matches(s, binding_namespace, user)))
}

/// Allows the request, or says why not in Kubernetes' words.
pub fn authorize(store: &Store, user: &User, attributes: &Attributes) -> Result<(), ApiError> {
    let (cluster_bindings, _) = store.list(Resource::named("clusterrolebindings"), None);
    let cluster_wide = cluster_bindings
        .iter()
        .any(|b| bound(b, "", user) && role_allows(store, b, "", attributes));
    let in_namespace = || {
        !attributes.namespace.is_empty() && {
            let (bindings, _) = store.list(Resource::named("rolebindings"), Some(attributes.namespace));
            bindings.iter().any(|b| {
                bound(b, attributes.namespace, user) && role_allows(store, b, attributes.namespace, attributes)
            })
        }
    };
    if cluster_wide || in_namespace() {
        return Ok(());
    }
    Err(ApiError::forbidden(forbidden_message(user, attributes)))
}

/// `pods "x" is forbidden: User "…" cannot get resource "pods" in API group
/// "" in the namespace "ns"`, as `apiserver/pkg/endpoints/handlers/responsewriters` words it.
fn forbidden_message(user: &User, attributes: &Attributes) -> String {
    let resource = attributes.resource;
    let qualified = if resource.group.is_empty() {
        resource.plural.to_string()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    };
    let object = if attributes.name.is_empty() {
        qualified
    } else {
        format!("{qualified} {:?}", attributes.name)
    };
    let combined = match attributes.subresource {
        Some(sub) => format!("{}/{sub}", resource.plural),
        None => resource.plural.to_string(),
    };
    let scope = if attributes.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", attributes.namespace)
    };
    format!(
        "{object} is forbidden: User {:?} cannot {} resource {combined:?} in API group {:?} {scope}",
        user.name, attributes.verb, resource.group
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn store_with(objects: &[Value]) -> Store {
        let store = Store::default();
        for object in objects {
            let resource = Resource::by_kind(
                object["apiVersion"].as_str().unwrap_or_default(),
                object["kind"].as_str().unwrap_or_default(),
            )
            .unwrap_or_else(|| panic!("no resource for {object}"));
            store.create(resource, object.clone()).unwrap();
        }
        store
    }

    fn rbac(kind: &str, namespace: Option<&str>, name: &str, body: Value) -> Value {
        let mut object = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
        });
        if let Some(namespace) = namespace {
            object["metadata"]["namespace"] = json!(namespace);
        }
        for (key, value) in body.as_object().unwrap() {
            object[key] = value.clone();
        }
        object
    }

    fn request<'a>(verb: &'static str, plural: &str, namespace: &'a str, name: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            resource: Resource::named(plural),
            subresource: None,
            namespace,
            name: name.to_string(),
        }
    }

    fn policy() -> Store {
        store_with(&[
            rbac(
                "ClusterRole",
                None,
                "read-slices",
                json!({"rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}]}),
            ),
            rbac(
                "ClusterRoleBinding",
                None,
                "read-slices",
                json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "read-slices"},
                       "subjects": [{"kind": "Group", "name": "system:serviceaccounts"}]}),
            ),
            rbac(
                "Role",
                Some("ops"),
                "one-secret",
                json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ca"], "verbs": ["get"]},
                                 {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["update"]}]}),
            ),
            rbac(
                "RoleBinding",
                Some("ops"),
                "one-secret",
                json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "one-secret"},
                       "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "ops"}]}),
            ),
        ])
    }

    #[test]
    fn bindings_grant_what_their_roles_say_to_their_subjects() {
        let store = policy();
        let robot = User::service_account("ops", "robot");
        let other = User::service_account("web", "default");
        for user in [&robot, &other] {
            authorize(&store, user, &request("watch", "endpointslices", "", "")).unwrap();
            authorize(&store, user, &request("list", "endpointslices", "web", "")).unwrap();
        }
        authorize(&store, &robot, &request("get", "secrets", "ops", "ca")).unwrap();
        let scale = Attributes {
            subresource: Some("scale"),
            ..request("update", "deployments", "ops", "web")
        };
        authorize(&store, &robot, &scale).unwrap();

        // Another name, another verb, another namespace, another account.
        for (user, attributes) in [
            (&robot, request("get", "secrets", "ops", "other")),
            (&robot, request("list", "secrets", "ops", "")),
            (&robot, request("get", "secrets", "web", "ca")),
            (&other, request("get", "secrets", "ops", "ca")),
            (&robot, request("create", "endpointslices", "ops", "")),
            (&robot, request("update", "deployments", "ops", "web")),
        ] {
            let error = authorize(&store, user, &attributes).unwrap_err();
            assert_eq!((error.code, error.reason), (403, "Forbidden"), "{attributes:?}");
        }
    }

    #[test]
    fn denials_are_worded_as_kubernetes_words_them() {
        let store = policy();
        let robot = User::service_account("ops", "robot");
        let message = |attributes| authorize(&store, &robot, &attributes).unwrap_err().message;
        assert_eq!(
            message(request("get", "secrets", "ops", "other")),
            r#"secrets "other" is forbidden: User "system:serviceaccount:ops:robot" cannot get resource "secrets" in API group "" in the namespace "ops""#
        );
        assert_eq!(
            message(request("list", "mutatingwebhookconfigurations", "", "")),
            r#"mutatingwebhookconfigurations.admissionregistration.k8s.io is forbidden: User "system:serviceaccount:ops:robot" cannot list resource "mutatingwebhookconfigurations" in API group "admissionregistration.k8s.io" at the cluster scope"#
        );
        let status = Attributes {
            subresource: Some("status"),
            ..request("patch", "pods", "ops", "web-1")
        };
        assert!(message(status).contains(r#"cannot patch resource "pods/status""#));
    }

    #[test]
    fn a_service_account_subject_without_namespace_is_in_its_bindings() {
        let user = User::service_account("ops", "robot");
        let robot = json!({"kind": "ServiceAccount", "name": "robot"});
        assert!(subject_matches(&robot, "ops", &user), "a RoleBinding's namespace");
        assert!(!subject_matches(&robot, "web", &user));
        assert!(!subject_matches(&robot, "", &user), "a ClusterRoleBinding has none");
        let user_subject = json!({"kind": "User", "name": "system:serviceaccount:ops:robot"});
        assert!(subject_matches(&user_subject, "", &user));
        let group = |name: &str| json!({"kind": "Group", "name": name});
        assert!(subject_matches(&group("system:serviceaccounts:ops"), "", &user));
        assert!(!subject_matches(&group("system:serviceaccounts:web"), "", &user));
    }
}
