//! The benchmark's cluster: the lab with `manifests/bench.yaml`, then the
//! peers (HAProxy and nginx, Debian's packages, as L7 gRPC balancers over
//! the same backend pods) and a client whose proxy records no metrics. The
//! peers' configurations are written here and quoted in the report.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::lab::Lab;

/// Ports the peers listen on.
pub const ONE_BACKEND: u16 = 8001;
pub const EVEN_POOL: u16 = 8002;
pub const MIXED_POOL: u16 = 8003;
pub const TCP_RELAY: u16 = 8004;
pub const ECHO_RELAY: u16 = 8005;

/// Pod IPs the peers are configured with.
pub struct Backends {
    pub one: String,
    pub even: Vec<String>,
    pub mixed: Vec<String>,
    pub iperf: String,
}

impl Backends {
    pub fn find(lab: &Lab) -> anyhow::Result<Backends> {
        let ips = |deployment: &str| -> anyhow::Result<Vec<String>> {
            deployment_pods(lab, deployment)?
                .iter()
                .map(|pod| lab.pod_ip(pod))
                .collect()
        };
        let first = |deployment: &str| -> anyhow::Result<String> {
            ips(deployment)?
                .into_iter()
                .next()
                .with_context(|| format!("no pod of {deployment}"))
        };
        let mut even = ips("pool-a")?;
        even.extend(ips("pool-b")?);
        let mut mixed = ips("pool-a")?;
        mixed.extend(ips("pool-slow")?);
        Ok(Backends {
            one: first("backend")?,
            even,
            mixed,
            iperf: first("iperf")?,
        })
    }
}

/// The pods of one Deployment of the bench namespace (named
/// `<deployment>-<hash>-<suffix>`, so `backend` does not take `backend-mtls`'s).
pub fn deployment_pods(lab: &Lab, deployment: &str) -> anyhow::Result<Vec<String>> {
    let prefix = format!("{deployment}-");
    Ok(lab
        .pods("bench", &prefix)?
        .into_iter()
        .map(|(pod, _)| pod)
        .filter(|pod| {
            pod.rsplit('/')
                .next()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|rest| rest.matches('-').count() == 1)
        })
        .collect())
}

pub fn haproxy_config(backends: &Backends) -> String {
    let servers = |ips: &[String]| {
        ips.iter()
            .enumerate()
            .map(|(i, ip)| format!("  server s{i} {ip}:50051 proto h2\n"))
            .collect::<String>()
    };
    format!(
        "# HAProxy as an HTTP/2 (gRPC) per-request balancer, and TCP relays.\n\
         global\n  maxconn 8000\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend one\n  bind :{ONE_BACKEND} proto h2\n  default_backend one\n\
         backend one\n  balance roundrobin\n{}\
         frontend even\n  bind :{EVEN_POOL} proto h2\n  default_backend even\n\
         backend even\n  balance roundrobin\n{}\
         frontend mixed\n  bind :{MIXED_POOL} proto h2\n  default_backend mixed\n\
         backend mixed\n  balance roundrobin\n{}\
         listen tcp\n  mode tcp\n  bind :{TCP_RELAY}\n  server iperf {}:5201\n\
         listen echo\n  mode tcp\n  bind :{ECHO_RELAY}\n  server echo {}:7000\n",
        servers(std::slice::from_ref(&backends.one)),
        servers(&backends.even),
        servers(&backends.mixed),
        backends.iperf,
        backends.one,
    )
}

pub fn nginx_config(backends: &Backends) -> String {
    let upstream = |name: &str, ips: &[String]| {
        let servers: String = ips.iter().map(|ip| format!("    server {ip}:50051;\n")).collect();
        format!("  upstream {name} {{\n{servers}    keepalive 64;\n  }}\n")
    };
    let server = |port: u16, name: &str| {
        format!("  server {{\n    listen {port} http2;\n    location / {{ grpc_pass grpc://{name}; }}\n  }}\n")
    };
    format!(
        "# nginx as an HTTP/2 (gRPC) per-request balancer (round robin).\n\
         worker_processes auto;\ndaemon off;\npid /run/strait-bench/scratch/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  http2_max_concurrent_streams 1024;\n  client_body_temp_path /run/strait-bench/scratch/body;\n  proxy_temp_path /run/strait-bench/scratch/proxy;\n\
         \x20 fastcgi_temp_path /run/strait-bench/scratch/fastcgi;\n  uwsgi_temp_path /run/strait-bench/scratch/uwsgi;\n  scgi_temp_path /run/strait-bench/scratch/scgi;\n\
         {}{}{}{}{}{}}}\n",
        upstream("one", std::slice::from_ref(&backends.one)),
        upstream("even", &backends.even),
        upstream("mixed", &backends.mixed),
        server(ONE_BACKEND, "one"),
        server(EVEN_POOL, "even"),
        server(MIXED_POOL, "mixed"),
    )
}

/// A Deployment running `command` with `config` mounted at
/// /run/strait-bench/config (the lab makes mount points only under /run).
fn peer(name: &str, file: &str, config: &str, command: Value) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "bench"},
               "data": {file: config}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": "bench"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                   "spec": {"containers": [{"name": name, "image": name, "command": command,
                     "readinessProbe": {"tcpSocket": {"port": ONE_BACKEND}, "periodSeconds": 1},
                     "volumeMounts": [{"name": "config", "mountPath": "/run/strait-bench/config"},
                                      {"name": "scratch", "mountPath": "/run/strait-bench/scratch"}]}],
                     "volumes": [{"name": "config", "configMap": {"name": name}},
                                 {"name": "scratch", "emptyDir": {}}]}}}}),
    ]
}

/// `deployment` injected offline by `strait-injector inject` (as a user
/// without the webhook would), then its proxy container (and the pod spec
/// around it) changed by `edit`.
fn injected(
    bin_dir: &Path,
    trust_anchors: &str,
    deployment: Value,
    edit: impl FnOnce(&mut Value) -> anyhow::Result<()>,
) -> anyhow::Result<Value> {
    let mut child = Command::new(bin_dir.join("strait-injector"))
        .args(["inject", "-f", "-", "--trust-anchors", trust_anchors])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run strait-injector inject")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(serde_yaml::to_string(&deployment)?.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("strait-injector inject failed");
    }
    let mut injected: Value = serde_yaml::from_slice(&out.stdout)?;
    let spec = injected
        .pointer_mut("/spec/template/spec")
        .context("the injected Deployment has no pod spec")?;
    edit(spec)?;
    Ok(injected)
}

/// The proxy container of an injected pod spec.
fn proxy_container(spec: &mut Value) -> anyhow::Result<&mut Value> {
    spec.pointer_mut("/initContainers")
        .and_then(Value::as_array_mut)
        .and_then(|containers| containers.iter_mut().find(|c| c["name"] == "strait-proxy"))
        .context("the injected Deployment has no strait-proxy")
}

/// A bench Deployment of one pod running `containers`.
fn deployment(name: &str, annotations: Value, containers: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
          "template": {"metadata": {"labels": {"app": name}, "annotations": annotations},
            "spec": {"containers": containers}}}})
}

/// The client whose proxy records no metrics: the same Deployment as
/// `client-plaintext`, injected offline with `STRAIT_METRICS=off` added.
fn client_without_metrics(bin_dir: &Path, trust_anchors: &str) -> anyhow::Result<Vec<Value>> {
    let client = deployment(
        "client-nometrics",
        json!({"strait.io/mtls": "disabled"}),
        json!([{"name": "client", "image": "lab-app", "command": ["sleep", "infinity"]}]),
    );
    let injected = injected(bin_dir, trust_anchors, client, |spec| {
        proxy_container(spec)?["env"]
            .as_array_mut()
            .context("the proxy has no env")?
            .push(json!({"name": "STRAIT_METRICS", "value": "off"}));
        Ok(())
    })?;
    Ok(vec![injected])
}

/// Where a baseline proxy binary is mounted in its pods (the lab makes
/// mount points only under /run).
const BASELINE_MOUNT: &str = "/run/strait-baseline";

/// Appends `item` to the list `field` of `object`, making the list if
/// there is none.
fn push(object: &mut Value, field: &str, item: Value) -> anyhow::Result<()> {
    object
        .as_object_mut()
        .with_context(|| format!("the object holding {field} is no object"))?
        .entry(field)
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .with_context(|| format!("{field} is no list"))?
        .push(item);
    Ok(())
}

/// Where an instrumented baseline proxy writes its LLVM profiles in its pods.
const PROFILES_MOUNT: &str = "/run/strait-profiles";

/// The proxy binary of a same-run A/B (`--baseline`).
#[derive(Clone, Copy, Debug)]
pub struct Baseline<'a> {
    /// The host directory holding it, as `strait-proxy`, readable by the
    /// proxy's user; mounted read-only into the baseline pods.
    pub dir: &'a Path,
    /// For a binary built with `-Cprofile-generate`: the host directory,
    /// writable by the proxy's user, where each of its proxies writes its
    /// LLVM profile (`<pid>-<binary signature>.profraw`) as it exits
    /// (`scripts/pgo.sh`).
    pub profiles: Option<&'a Path>,
}

/// The same-run A/B pair for `--baseline`: `client-baseline` and
/// `backend-baseline` (Service `backend-baseline`), shaped as `client-mtls`
/// and `backend-mtls`, whose proxies run the baseline binary (mounted from
/// the host) instead of the image's.
fn baseline_pair(bin_dir: &Path, trust_anchors: &str, baseline: Baseline) -> anyhow::Result<Vec<Value>> {
    let use_baseline = |spec: &mut Value| -> anyhow::Result<()> {
        let proxy = proxy_container(spec)?;
        proxy["command"] = json!([format!("{BASELINE_MOUNT}/strait-proxy")]);
        push(
            proxy,
            "volumeMounts",
            json!({"name": "strait-baseline", "mountPath": BASELINE_MOUNT, "readOnly": true}),
        )?;
        if let Some(profiles) = baseline.profiles {
            push(
                proxy,
                "volumeMounts",
                json!({"name": "strait-profiles", "mountPath": PROFILES_MOUNT}),
            )?;
            push(
                proxy,
                "env",
                json!({"name": "LLVM_PROFILE_FILE", "value": format!("{PROFILES_MOUNT}/%p-%m.profraw")}),
            )?;
            push(
                spec,
                "volumes",
                json!({"name": "strait-profiles", "hostPath": {"path": profiles, "type": "Directory"}}),
            )?;
        }
        push(
            spec,
            "volumes",
            json!({"name": "strait-baseline", "hostPath": {"path": baseline.dir, "type": "Directory"}}),
        )
    };
    let client = deployment(
        "client-baseline",
        json!({}),
        json!([{"name": "client", "image": "lab-app", "command": ["sleep", "infinity"]}]),
    );
    let backend = deployment(
        "backend-baseline",
        json!({}),
        json!([{"name": "grpc", "image": "lab-app", "command": ["lab-app", "grpc-server", "--port", "50051"],
                "ports": [{"name": "grpc", "containerPort": 50051}],
                "readinessProbe": {"tcpSocket": {"port": "grpc"}, "periodSeconds": 1}}]),
    );
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "backend-baseline", "namespace": "bench"},
        "spec": {"selector": {"app": "backend-baseline"},
                 "ports": [{"name": "grpc", "port": 50051, "targetPort": "grpc"}]}});
    Ok(vec![
        injected(bin_dir, trust_anchors, client, use_baseline)?,
        injected(bin_dir, trust_anchors, backend, use_baseline)?,
        service,
    ])
}

/// Brings the lab up with everything the scenarios use; with `baseline`,
/// also the baseline pair.
pub fn cluster(lab: &Lab, bin_dir: &Path, work: &Path, baseline: Option<Baseline>) -> anyhow::Result<(String, String)> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/bench.yaml");
    lab.up(&manifest, &[])?;
    let backends = Backends::find(lab)?;
    let haproxy = haproxy_config(&backends);
    let nginx = nginx_config(&backends);
    let mut objects = peer(
        "haproxy",
        "haproxy.cfg",
        &haproxy,
        json!(["haproxy", "-db", "-f", "/run/strait-bench/config/haproxy.cfg"]),
    );
    objects.extend(peer(
        "nginx",
        "nginx.conf",
        &nginx,
        json!(["nginx", "-c", "/run/strait-bench/config/nginx.conf"]),
    ));
    let anchors = lab.secret_file(
        crate::destination::IDENTITY_SECRET,
        "ca.crt",
        &work.join("trust-anchors.pem"),
    )?;
    objects.extend(client_without_metrics(bin_dir, &anchors)?);
    if let Some(baseline) = baseline {
        objects.extend(baseline_pair(bin_dir, &anchors, baseline)?);
    }
    let text: String = objects
        .iter()
        .map(|o| serde_yaml::to_string(o).map(|y| format!("---\n{y}")))
        .collect::<Result<_, _>>()?;
    let generated = work.join("peers.yaml");
    std::fs::write(&generated, text)?;
    lab.up(&generated, &[])?;
    Ok((haproxy, nginx))
}
