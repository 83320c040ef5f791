//! Parses a REST path into what it names.

use super::resource::Resource;

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/api`, `/apis`, `/api/v1`, `/apis/GROUP/VERSION`, `/version`, health.
    Discovery(Discovery),
    Collection {
        resource: &'static Resource,
        namespace: Option<String>,
    },
    Object {
        resource: &'static Resource,
        namespace: Option<String>,
        name: String,
        subresource: Option<String>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Discovery {
    Version,
    Health,
    CoreVersions,
    Groups,
    Resources { group: String, version: String },
}

/// The subresources the lab serves.
const SUBRESOURCES: &[&str] = &["status", "scale"];

fn subresource(tail: &[&str]) -> Option<Option<String>> {
    match tail {
        [] => Some(None),
        [sub] if SUBRESOURCES.contains(sub) => Some(Some(sub.to_string())),
        _ => None,
    }
}

pub fn parse(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Some(Route::Discovery(Discovery::Version)),
        ["healthz" | "readyz" | "livez", ..] => return Some(Route::Discovery(Discovery::Health)),
        ["api"] => return Some(Route::Discovery(Discovery::CoreVersions)),
        ["apis"] => return Some(Route::Discovery(Discovery::Groups)),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let resource = |plural: &str| Resource::by_path(group, version, plural);
    match rest {
        [] => Some(Route::Discovery(Discovery::Resources {
            group: group.to_string(),
            version: version.to_string(),
        })),
        ["namespaces", namespace, plural, tail @ ..] if resource(plural).is_some_and(|r| r.namespaced) => {
            let resource = resource(plural)?;
            let namespace = Some(namespace.to_string());
            match tail {
                [] => Some(Route::Collection { resource, namespace }),
                [name, tail @ ..] => Some(Route::Object {
                    resource,
                    namespace,
                    name: name.to_string(),
                    subresource: subresource(tail)?,
                }),
            }
        }
        [plural] => Some(Route::Collection {
            resource: resource(plural)?,
            namespace: None,
        }),
        [plural, name, tail @ ..] => {
            let resource = resource(plural).filter(|r| !r.namespaced)?;
            Some(Route::Object {
                resource,
                namespace: None,
                name: name.to_string(),
                subresource: subresource(tail)?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_and_objects() {
        let pods = Resource::named("pods");
        let namespaces = Resource::named("namespaces");
        let slices = Resource::named("endpointslices");
        let cases = [
            (
                "/api/v1/pods",
                Some(Route::Collection {
                    resource: pods,
                    namespace: None,
                }),
            ),
            (
                "/api/v1/namespaces/demo/pods",
                Some(Route::Collection {
                    resource: pods,
                    namespace: Some("demo".into()),
                }),
            ),
            (
                "/api/v1/namespaces/demo/pods/web-1/status",
                Some(Route::Object {
                    resource: pods,
                    namespace: Some("demo".into()),
                    name: "web-1".into(),
                    subresource: Some("status".into()),
                }),
            ),
            (
                "/api/v1/namespaces/demo",
                Some(Route::Object {
                    resource: namespaces,
                    namespace: None,
                    name: "demo".into(),
                    subresource: None,
                }),
            ),
            (
                "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices",
                Some(Route::Collection {
                    resource: slices,
                    namespace: Some("demo".into()),
                }),
            ),
            ("/api/v1/namespaces/demo/widgets", None),
            ("/api/v1/pods/x", None),
            ("/version", Some(Route::Discovery(Discovery::Version))),
        ];
        for (path, expected) in cases {
            assert_eq!(parse(path), expected, "{path}");
        }
    }
}
