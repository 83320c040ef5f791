//! The control plane's APIs for proxies, generated from the versioned
//! `.proto` files under `proto/` (see each file for the wire contract).
//!
//! - [`destination::v1`]: the destination service (DESIGN.md: gRPC over
//!   mutual TLS on port 8086): one stream of endpoint updates per original
//!   destination.
//! - [`client`]: reaching such an API over TLS of the caller's choosing.

pub mod client;

/// `strait.destination.v1`.
pub mod destination {
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::unwrap_used)]
        tonic::include_proto!("strait.destination.v1");
    }
}
