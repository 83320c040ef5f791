//! The pod, service and image tables that `up` and `status` print.

use serde_json::Value;
use strait_contract::names::{MESHED_LABEL, annotations};

use crate::controllers::pod_ready;

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn escaped(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Lays out rows under a header with columns padded to fit.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn pods(pods: &[Value]) -> String {
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|pod| {
            let statuses = pod
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let sidecars = pod
                .pointer("/status/initContainerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let counted: Vec<&Value> = statuses
                .iter()
                .chain(sidecars.iter().filter(|s| s["started"] == true || s["ready"] == true))
                .collect();
            let ready = counted.iter().filter(|s| s["ready"] == true).count();
            let phase = text(pod, "/status/phase");
            let state = if pod.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else if pod_ready(pod) {
                "Ready".to_string()
            } else {
                phase.to_string()
            };
            vec![
                text(pod, "/metadata/namespace").to_string(),
                text(pod, "/metadata/name").to_string(),
                text(pod, "/status/podIP").to_string(),
                format!("{ready}/{} {state}", counted.len().max(statuses.len())),
                if text(pod, &format!("/metadata/labels/{}", escaped(MESHED_LABEL))) == "true" {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
                text(
                    pod,
                    &format!("/metadata/annotations/{}", escaped(annotations::IDENTITY)),
                )
                .to_string(),
            ]
        })
        .collect();
    render(&["NAMESPACE", "POD", "IP", "READY", "MESHED", "IDENTITY"], &rows)
}

pub fn services(services: &[Value]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|service| {
            let ports: Vec<String> = service
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(
                    |p| match p.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                        Some(name) => format!("{}/{} ({name})", p["port"], p["protocol"].as_str().unwrap_or("TCP")),
                        None => {
                            format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))
                        }
                    },
                )
                .collect();
            vec![
                text(service, "/metadata/namespace").to_string(),
                text(service, "/metadata/name").to_string(),
                text(service, "/spec/clusterIP").to_string(),
                ports.join(", "),
            ]
        })
        .collect();
    render(&["NAMESPACE", "SERVICE", "CLUSTER-IP", "PORTS"], &rows)
}

/// The containers that run from images, with the image digest each runs
/// (their status' `imageID`), as `crictl ps` shows them.
pub fn images(pods: &[Value]) -> String {
    let rows: Vec<Vec<String>> = pods
        .iter()
        .flat_map(|pod| {
            ["/status/initContainerStatuses", "/status/containerStatuses"]
                .into_iter()
                .flat_map(|list| pod.pointer(list).and_then(Value::as_array).cloned().unwrap_or_default())
                .filter(|status| !text(status, "/imageID").is_empty())
                .map(|status| {
                    let id = text(&status, "/imageID");
                    vec![
                        text(pod, "/metadata/namespace").to_string(),
                        text(pod, "/metadata/name").to_string(),
                        text(&status, "/name").to_string(),
                        text(&status, "/image").to_string(),
                        id.rsplit_once('@').map_or(id, |(_, digest)| digest).to_string(),
                    ]
                })
                .collect::<Vec<_>>()
        })
        .collect();
    render(&["NAMESPACE", "POD", "CONTAINER", "IMAGE", "DIGEST"], &rows)
}
