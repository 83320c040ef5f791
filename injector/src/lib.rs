//! strait-injector: the control plane.
//!
//! It decides which pods join the mesh and how (the mutating admission
//! webhook and the offline `inject` command share one mutation), and it is
//! the identity service that signs the proxies' certificates.

pub mod inject;
pub mod settings;

pub use settings::{InjectSettings, Resources};
