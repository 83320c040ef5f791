//! The metrics formats strait's `/metrics` endpoints speak. The registry
//! encodes OpenMetrics, which Prometheus asks for in its `Accept` header;
//! anything that does not ask for it (promtool, older scrapers, curl) gets
//! the classic Prometheus text format 0.0.4, which differs only in metadata:
//! counters' and infos' metric families carry their sample suffix, info
//! becomes gauge, and there are no `# UNIT` and `# EOF` lines.

use prometheus_client::registry::Registry;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `registries` one after the other as one OpenMetrics exposition
/// (a single `# EOF`): a component's own `strait_*` registry, then
/// [`crate::process::registry`], whose series carry no prefix.
pub fn encode(registries: &[&Registry]) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    for registry in registries {
        prometheus_client::encoding::text::encode_registry(&mut text, registry)?;
    }
    prometheus_client::encoding::text::encode_eof(&mut text)?;
    Ok(text)
}
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The body and content type to answer a scrape with, given its `Accept`
/// header and the registry's OpenMetrics encoding.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (String, &'static str) {
    let wants_openmetrics = accept.is_some_and(|accept| {
        accept
            .split(',')
            .any(|range| range.trim().starts_with("application/openmetrics-text") && !range.contains("q=0,"))
    });
    if wants_openmetrics {
        (openmetrics, OPENMETRICS)
    } else {
        (to_prometheus_text(&openmetrics), PROMETHEUS_TEXT)
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE, and its name depends on the type.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "stateset" | "gaugehistogram" | "unknown" => (family.to_string(), "untyped"),
                other => (family.to_string(), other),
            };
            if let Some((help_family, text)) = help.take().filter(|(f, _)| *f == family) {
                debug_assert_eq!(help_family, family);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS_TEXT: &str = "# HELP strait_build Build information.\n\
        # TYPE strait_build info\n\
        strait_build_info{version=\"0.1.0\"} 1\n\
        # HELP strait_requests Requests.\n\
        # TYPE strait_requests counter\n\
        strait_requests_total{direction=\"outbound\"} 3\n\
        # HELP strait_latency_seconds Latency.\n\
        # TYPE strait_latency_seconds histogram\n\
        # UNIT strait_latency_seconds seconds\n\
        strait_latency_seconds_sum 0.5\n\
        strait_latency_seconds_count 3\n\
        strait_latency_seconds_bucket{le=\"+Inf\"} 3\n\
        # EOF\n";

    #[test]
    fn metadata_takes_the_classic_form_and_samples_stay() {
        let text = to_prometheus_text(OPENMETRICS_TEXT);
        assert_eq!(
            text,
            "# HELP strait_build_info Build information.\n\
             # TYPE strait_build_info gauge\n\
             strait_build_info{version=\"0.1.0\"} 1\n\
             # HELP strait_requests_total Requests.\n\
             # TYPE strait_requests_total counter\n\
             strait_requests_total{direction=\"outbound\"} 3\n\
             # HELP strait_latency_seconds Latency.\n\
             # TYPE strait_latency_seconds histogram\n\
             strait_latency_seconds_sum 0.5\n\
             strait_latency_seconds_count 3\n\
             strait_latency_seconds_bucket{le=\"+Inf\"} 3\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_the_rest_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus), OPENMETRICS_TEXT.into()).1, OPENMETRICS);
        assert_eq!(negotiate(Some("*/*"), OPENMETRICS_TEXT.into()).1, PROMETHEUS_TEXT);
        assert_eq!(negotiate(None, OPENMETRICS_TEXT.into()).1, PROMETHEUS_TEXT);
    }
}
