//! What a resource request asks, as Kubernetes' request info resolver reads
//! it for authorization: the verb from the method (and `watch=true`), the
//! resource and subresource, the namespace (a namespace is its own), and the
//! object's name, which a list or watch takes from a `metadata.name` field
//! selector.

use std::collections::HashMap;

use http::Method;

use super::rbac;
use super::route::Route;
use super::selector::FieldSelector;

/// What a request asks, for authorization: `None` for the discovery
/// documents, which every authenticated user may read.
pub fn attributes<'r>(
    route: &'r Route,
    method: &Method,
    query: &'r HashMap<String, String>,
) -> Option<rbac::Attributes<'r>> {
    match route {
        Route::Discovery(_) => None,
        Route::Collection { resource, namespace } => {
            let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
            let verb = match *method {
                Method::GET if watch => "watch",
                Method::GET => "list",
                Method::POST => "create",
                Method::DELETE => "deletecollection",
                Method::PUT => "update",
                Method::PATCH => "patch",
                _ => "unknown",
            };
            // A list or watch of one name, by field selector, is
            // authorized for that name (as Kubernetes' request info does);
            // other collection verbs have no name.
            let name = match verb {
                "list" | "watch" => query
                    .get("fieldSelector")
                    .and_then(|selector| FieldSelector::parse(selector).ok())
                    .and_then(|selector| selector.exact("metadata.name").map(str::to_string)),
                _ => None,
            };
            Some(rbac::Attributes {
                verb,
                resource,
                subresource: None,
                namespace: namespace.as_deref().unwrap_or_default(),
                name: name.unwrap_or_default(),
            })
        }
        Route::Object {
            resource,
            namespace,
            name,
            subresource,
        } => {
            let verb = match *method {
                Method::GET => "get",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                Method::POST => "create",
                _ => "unknown",
            };
            // A namespace is its own namespace, for Roles bound in it.
            let namespace = match namespace {
                Some(namespace) => namespace.as_str(),
                None if resource.plural == "namespaces" => name.as_str(),
                None => "",
            };
            Some(rbac::Attributes {
                verb,
                resource,
                subresource: subresource.as_deref(),
                namespace,
                name: name.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_for(method: Method, path: &str, query: &[(&str, &str)]) -> String {
        let route = super::super::route::parse(path).unwrap();
        let query: HashMap<String, String> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        attributes(&route, &method, &query).unwrap().name
    }

    #[test]
    fn only_lists_and_watches_take_their_name_from_a_field_selector() {
        let secrets = "/api/v1/namespaces/ops/secrets";
        let by_name = ("fieldSelector", "metadata.name=ca");
        assert_eq!(name_for(Method::GET, secrets, &[by_name]), "ca");
        assert_eq!(name_for(Method::GET, secrets, &[by_name, ("watch", "true")]), "ca");
        // A create names no object: a resourceNames rule never allows it.
        assert_eq!(name_for(Method::POST, secrets, &[by_name]), "");
        // A selector the list would refuse names nothing.
        assert_eq!(
            name_for(Method::GET, secrets, &[("fieldSelector", "x!=(,metadata.name=ca,)")]),
            ""
        );
        assert_eq!(name_for(Method::GET, "/api/v1/namespaces/ops", &[]), "ops");
    }
}
