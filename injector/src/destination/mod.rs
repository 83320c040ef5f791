//! The destination service (DESIGN.md: gRPC over mutual TLS, :8086): the
//! control plane watches Services, EndpointSlices and Pods once per replica
//! and streams to each proxy the state of every original destination it
//! asks about, so that proxies make no Kubernetes API requests.
//!
//! - `index`: the cluster's state and one shared view per followed
//!   destination;
//! - `view`: a view, and the diffs between two;
//! - `reflect`: the watches that keep the index current;
//! - `routes`: Gateway API routes bound to Services (GAMMA): reading,
//!   precedence, the table a proxy gets, status;
//! - `status`: writes the routes' status;
//! - `service`: the gRPC service;
//! - `serve`: mutual TLS in front of it.

pub mod index;
pub mod reflect;
pub mod routes;
pub mod serve;
pub mod service;
pub mod status;
pub mod view;

pub use index::Index;
pub use service::{Caller, DestinationService};
