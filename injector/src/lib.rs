//! strait-injector: the control plane.
//!
//! It decides which pods join the mesh and how (the mutating admission
//! webhook and the offline `inject` command share one mutation), and it is
//! the identity service that signs the proxies' certificates.

pub mod admin;
pub mod bootstrap;
pub mod destination;
pub mod identity;
pub mod inject;
pub mod namespaces;
pub mod offline;
pub mod pki;
pub mod serve;
pub mod settings;
pub mod tls;
pub mod webhook;

pub use settings::{InjectSettings, Resources};
