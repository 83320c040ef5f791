//! strait-cni: the chained CNI plugin of strait's CNI mode, and its
//! installer.
//!
//! A runtime calls the plugin last in a node's conflist (CNI spec 1.0/1.1:
//! ADD, DEL, CHECK, STATUS, GC, VERSION; the protocol is `rscni-plugin`'s).
//! On ADD for a pod that will be meshed it writes, in the pod's network
//! namespace, exactly the nat rules `strait-init` writes, from the same
//! settings and the same builder ([`strait_init::rules`]); the pod then
//! needs no init container with NET_ADMIN/NET_RAW and passes Pod Security
//! "restricted". The previous plugin's result is passed through unchanged.
//!
//! - [`conf`]: the plugin's own fields of its network configuration.
//! - [`pod`]: which pods are meshed, and their redirect settings.
//! - [`api`]: reading a pod from the API server with the node's credentials.
//! - [`netns`]: entering the pod's network namespace.
//! - [`plugin`]: the CNI operations.
//! - [`install`]: the DaemonSet's side: binary, kubeconfig and conflist entry.

pub mod api;
pub mod conf;
pub mod install;
pub mod netns;
pub mod plugin;
pub mod pod;
