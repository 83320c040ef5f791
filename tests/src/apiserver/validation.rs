//! Field validation the API server does before storing an object, beyond
//! its schema: a container's resource quantities must be quantities (else
//! the body cannot be decoded: 400) and each request at most its limit
//! (422), in pods and in the pod templates of Deployments, DaemonSets and Jobs, worded
//! as Kubernetes words it.

use serde_json::Value;
use strait_contract::quantity::{QUANTITY_PATTERN, check_request_within_limit, parse_resource};

use super::error::ApiError;
use super::store::name_of;

/// The pod spec inside an object of `kind`, and its field path.
fn pod_spec<'a>(kind: &str, object: &'a Value) -> Option<(&'a Value, &'static str)> {
    match kind {
        "Pod" => Some((&object["spec"], "spec")),
        "Deployment" | "Job" | "DaemonSet" => Some((&object["spec"]["template"]["spec"], "spec.template.spec")),
        _ => None,
    }
}

/// A quantity as JSON: a string or a number (which Kubernetes also reads).
fn quantity_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Validates the resources of every container of a pod, Deployment or Job.
pub fn validate_resources(kind: &str, object: &Value) -> Result<(), ApiError> {
    let Some((spec, path)) = pod_spec(kind, object) else {
        return Ok(());
    };
    let mut invalid = Vec::new();
    for list in ["initContainers", "containers"] {
        for (index, container) in spec[list].as_array().into_iter().flatten().enumerate() {
            let resources = &container["resources"];
            for part in ["requests", "limits"] {
                for (resource, value) in resources[part].as_object().into_iter().flatten() {
                    let Some(text) = quantity_text(value).filter(|t| strait_contract::parse_quantity(t).is_ok()) else {
                        return Err(ApiError::bad_request(format!(
                            "{kind} in version \"v1\" cannot be handled as a {kind}: quantities must match the regular expression '{QUANTITY_PATTERN}' ({path}.{list}[{index}].resources.{part}[{resource}]: {value})"
                        )));
                    };
                    if let Err(problem) = parse_resource(&text) {
                        invalid.push(format!(
                            "{path}.{list}[{index}].resources.{part}[{resource}]: Invalid value: {text:?}: {problem}"
                        ));
                    }
                }
            }
            for (resource, request) in resources["requests"].as_object().into_iter().flatten() {
                let (Some(request), Some(limit)) = (
                    quantity_text(request),
                    resources["limits"].get(resource).and_then(quantity_text),
                ) else {
                    continue;
                };
                if let Err(problem) = check_request_within_limit(resource, &request, &limit) {
                    invalid.push(format!(
                        "{path}.{list}[{index}].resources.requests: Invalid value: {request:?}: {problem}"
                    ));
                }
            }
        }
    }
    match invalid.len() {
        0 => Ok(()),
        1 => Err(ApiError::invalid(kind, name_of(object), invalid.remove(0))),
        _ => Err(ApiError::invalid(
            kind,
            name_of(object),
            format!("[{}]", invalid.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn quantities_and_request_limits_are_checked_in_pods_and_templates() {
        let pod = |resources: Value| json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "resources": resources}]}});
        validate_resources(
            "Pod",
            &pod(json!({"requests": {"cpu": "500m", "memory": 64}, "limits": {"cpu": 1, "memory": "1Pi"}})),
        )
        .unwrap();

        let error = validate_resources("Pod", &pod(json!({"limits": {"cpu": "1.2.3"}}))).unwrap_err();
        assert_eq!(error.code, 400);
        assert!(
            error
                .message
                .starts_with("Pod in version \"v1\" cannot be handled as a Pod: quantities must match"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("spec.containers[0].resources.limits[cpu]"),
            "{}",
            error.message
        );

        let error = validate_resources(
            "Pod",
            &pod(json!({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}})),
        )
        .unwrap_err();
        assert_eq!(error.code, 422);
        assert_eq!(
            error.message,
            "Pod \"web\" is invalid: spec.containers[0].resources.requests: Invalid value: \"2Gi\": must be less than or equal to memory limit of 1Gi"
        );

        let error = validate_resources("Pod", &pod(json!({"requests": {"cpu": "-1"}}))).unwrap_err();
        assert_eq!(
            error.message,
            "Pod \"web\" is invalid: spec.containers[0].resources.requests[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"
        );

        let deployment = json!({"metadata": {"name": "web"}, "spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]}}}});
        let error = validate_resources("Deployment", &deployment).unwrap_err();
        assert!(
            error
                .message
                .contains("spec.template.spec.containers[0].resources.requests"),
            "{}",
            error.message
        );
    }
}
