//! The pod annotations that tune a pod's proxy. A bad value never stops the
//! pod: it is ignored with a warning that names the annotation and value.

use std::collections::BTreeMap;

use strait_contract::names::annotations as key;
use strait_contract::{PortSet, check_log_filter, parse_cidrs};

use crate::settings::Resources;

/// What a pod's annotations ask for, each only when valid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub skip_inbound_ports: Option<String>,
    pub skip_outbound_ports: Option<String>,
    pub skip_outbound_cidrs: Option<String>,
    pub opaque_ports: Option<String>,
    pub log_level: Option<String>,
    pub inbound_mode: Option<String>,
    /// `disabled` turns mutual TLS off for the pod.
    pub mtls: Option<String>,
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

fn ports(text: &str) -> Result<String, String> {
    PortSet::parse(text)
        .map(|set| set.to_string())
        .map_err(|e| e.to_string())
}

fn cidrs(text: &str) -> Result<String, String> {
    let cidrs = parse_cidrs(text).map_err(|e| e.to_string())?;
    Ok(cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
}

fn log_level(text: &str) -> Result<String, String> {
    check_log_filter(text).map(|()| text.to_string())
}

fn inbound_mode(text: &str) -> Result<String, String> {
    match text {
        "strict" | "permissive" => Ok(text.to_string()),
        _ => Err("expected strict or permissive".into()),
    }
}

fn mtls(text: &str) -> Result<String, String> {
    match text {
        "enabled" | "disabled" => Ok(text.to_string()),
        _ => Err("expected enabled or disabled".into()),
    }
}

impl Overrides {
    pub fn mtls_disabled(&self) -> bool {
        self.mtls.as_deref() == Some("disabled")
    }

    /// The proxy's resources: these overrides over the chart's `defaults`.
    /// A request the overrides would put above its limit (which the API
    /// server refuses, failing the pod's creation) is not applied: that
    /// resource keeps the chart's values, with a warning naming the
    /// annotations.
    pub fn proxy_resources(&self, defaults: &Resources) -> (Resources, Vec<String>) {
        let pick = |own: &Option<String>, default: &Option<String>| own.clone().or_else(|| default.clone());
        let mut warnings = Vec::new();
        let mut fit = |resource: &str,
                       (request, limit): (&Option<String>, &Option<String>),
                       (default_request, default_limit): (&Option<String>, &Option<String>),
                       names: [&str; 2]| {
            let (chosen_request, chosen_limit) = (pick(request, default_request), pick(limit, default_limit));
            if let (Some(r), Some(l)) = (&chosen_request, &chosen_limit)
                && let Err(problem) = strait_contract::quantity::check_request_within_limit(resource, r, l)
            {
                warnings.push(format!(
                    "annotations {} and {} ignored: the {resource} request {r} {problem}",
                    names[0], names[1]
                ));
                return (default_request.clone(), default_limit.clone());
            }
            (chosen_request, chosen_limit)
        };
        let (cpu_request, cpu_limit) = fit(
            "cpu",
            (&self.cpu_request, &self.cpu_limit),
            (&defaults.cpu_request, &defaults.cpu_limit),
            [key::PROXY_CPU_REQUEST, key::PROXY_CPU_LIMIT],
        );
        let (memory_request, memory_limit) = fit(
            "memory",
            (&self.memory_request, &self.memory_limit),
            (&defaults.memory_request, &defaults.memory_limit),
            [key::PROXY_MEMORY_REQUEST, key::PROXY_MEMORY_LIMIT],
        );
        let resources = Resources {
            cpu_request,
            cpu_limit,
            memory_request,
            memory_limit,
        };
        (resources, warnings)
    }
}

/// A container resource amount: a quantity, not negative.
fn quantity(text: &str) -> Result<String, String> {
    strait_contract::quantity::parse_resource(text).map(|_| text.to_string())
}

/// Reads the tuning annotations, collecting a warning for each bad one.
pub fn read(annotations: &BTreeMap<String, String>) -> (Overrides, Vec<String>) {
    let mut warnings = Vec::new();
    let mut take = |name: &str, check: fn(&str) -> Result<String, String>| -> Option<String> {
        let value = annotations.get(name)?;
        match check(value.trim()) {
            Ok(value) => Some(value),
            Err(problem) => {
                warnings.push(format!("annotation {name}={value:?} ignored: {problem}"));
                None
            }
        }
    };
    let overrides = Overrides {
        skip_inbound_ports: take(key::SKIP_INBOUND_PORTS, ports),
        skip_outbound_ports: take(key::SKIP_OUTBOUND_PORTS, ports),
        skip_outbound_cidrs: take(key::SKIP_OUTBOUND_CIDRS, cidrs),
        opaque_ports: take(key::OPAQUE_PORTS, ports),
        log_level: take(key::PROXY_LOG_LEVEL, log_level),
        inbound_mode: take(key::INBOUND_MODE, inbound_mode),
        mtls: take(key::MTLS, mtls),
        cpu_request: take(key::PROXY_CPU_REQUEST, quantity),
        cpu_limit: take(key::PROXY_CPU_LIMIT, quantity),
        memory_request: take(key::PROXY_MEMORY_REQUEST, quantity),
        memory_limit: take(key::PROXY_MEMORY_LIMIT, quantity),
    };
    (overrides, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_values_are_taken_and_bad_ones_warned_about() {
        let annotations: BTreeMap<String, String> = [
            ("strait.io/skip-inbound-ports", "22, 8000-8100"),
            ("strait.io/skip-outbound-ports", "abc"),
            ("strait.io/skip-outbound-cidrs", "10.0.0.1/8"),
            ("strait.io/inbound-mode", "paranoid"),
            ("strait.io/proxy-memory-limit", "128Mi"),
            ("strait.io/proxy-cpu-limit", "lots"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (overrides, warnings) = read(&annotations);
        assert_eq!(overrides.skip_inbound_ports.as_deref(), Some("22,8000-8100"));
        assert_eq!(overrides.skip_outbound_cidrs.as_deref(), Some("10.0.0.0/8"));
        assert_eq!(overrides.memory_limit.as_deref(), Some("128Mi"));
        assert_eq!(overrides.skip_outbound_ports, None);
        assert_eq!(
            warnings,
            [
                "annotation strait.io/skip-outbound-ports=\"abc\" ignored: invalid port \"abc\": expected a number from 1 to 65535",
                "annotation strait.io/inbound-mode=\"paranoid\" ignored: expected strict or permissive",
                "annotation strait.io/proxy-cpu-limit=\"lots\" ignored: \"lots\" is not a quantity: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (such as 100m, 1.5, 64Mi, 1e3)",
            ]
        );
    }

    #[test]
    fn a_request_above_its_limit_keeps_the_charts_values_for_that_resource() {
        let defaults = Resources {
            cpu_request: Some("100m".into()),
            cpu_limit: Some("1".into()),
            memory_request: Some("20Mi".into()),
            memory_limit: Some("100Mi".into()),
        };
        let annotations: BTreeMap<String, String> = [
            ("strait.io/proxy-cpu-request", "1.5"),
            ("strait.io/proxy-memory-request", "1.2e3"),
            ("strait.io/proxy-memory-limit", "1Pi"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (overrides, warnings) = read(&annotations);
        assert!(warnings.is_empty(), "{warnings:?}");
        let (resources, warnings) = overrides.proxy_resources(&defaults);
        assert_eq!(resources.cpu_request.as_deref(), Some("100m"));
        assert_eq!(resources.cpu_limit.as_deref(), Some("1"));
        assert_eq!(resources.memory_request.as_deref(), Some("1.2e3"));
        assert_eq!(resources.memory_limit.as_deref(), Some("1Pi"));
        assert_eq!(
            warnings,
            [
                "annotations strait.io/proxy-cpu-request and strait.io/proxy-cpu-limit ignored: the cpu request 1.5 must be less than or equal to cpu limit of 1"
            ]
        );
    }
}
