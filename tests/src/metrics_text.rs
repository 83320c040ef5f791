//! Reading Prometheus text: the samples of one metric, by label.

use std::collections::BTreeMap;

/// One sample: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// Every sample of `metric` (the full sample name, such as
/// `strait_requests_total`).
pub fn samples(text: &str, metric: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(inner) => {
                    let (labels, value) = inner.rsplit_once('}')?;
                    (parse_labels(labels), value)
                }
                None if rest.starts_with(' ') => (BTreeMap::new(), rest),
                None => return None,
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some(Sample { labels, value })
        })
        .collect()
}

/// Sums `metric` over samples matching `filter`, grouped by label `by`.
pub fn sum_by(text: &str, metric: &str, filter: &[(&str, &str)], by: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for sample in samples(text, metric) {
        if filter
            .iter()
            .all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v))
        {
            *sums
                .entry(sample.labels.get(by).cloned().unwrap_or_default())
                .or_default() += sample.value;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_labels() {
        let text = "# HELP x\nstrait_requests_total{direction=\"outbound\",dst_pod=\"a\"} 3\n\
                    strait_requests_total{direction=\"outbound\",dst_pod=\"b\"} 5\n\
                    strait_requests_total{direction=\"inbound\",dst_pod=\"a\"} 7\n\
                    strait_requests_total_other 1\nstrait_build_info{version=\"a\\\"b\"} 1\n";
        let sums = sum_by(text, "strait_requests_total", &[("direction", "outbound")], "dst_pod");
        assert_eq!(sums, BTreeMap::from([("a".into(), 3.0), ("b".into(), 5.0)]));
        assert_eq!(samples(text, "strait_build_info")[0].labels["version"], "a\"b");
    }
}
