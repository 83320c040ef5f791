//! strait-lab: a Kubernetes-shaped cluster on one Linux machine.
//!
//! Each pod is a network namespace (with its own mount and UTS namespaces)
//! joined to a bridge in the lab's node namespace; a built-in API server
//! serves the Kubernetes REST API for the kinds the mesh uses; controllers
//! turn Deployments into pods and pods into EndpointSlices; a kubelet runs the
//! pod specs as local processes; ClusterIPs are balanced per connection with
//! iptables, as kube-proxy does; and a DNS server answers cluster names.

pub mod apiserver;
pub mod canary;
pub mod cli;
pub mod client;
pub mod controllers;
pub mod controlplane;
pub mod daemon;
pub mod demo;
pub mod dns;
pub mod forward;
pub mod kubelet;
pub mod kubeproxy;
pub mod manifest;
pub mod metrics_text;
pub mod network;
pub mod paths;
pub mod pki;
pub mod prometheus;
pub mod table;
