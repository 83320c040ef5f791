//! The contract between strait's components.
//!
//! The injector writes annotations and environment variables that `strait-init`
//! and `strait-proxy` read back; the lab and the chart rely on the same ports
//! and labels. Keeping those names and the syntax of their values in one crate
//! means a rename cannot leave one side behind.

pub mod chain;
pub mod cidrs;
pub mod duration;
pub mod exposition;
pub mod identity;
pub mod identity_api;
pub mod limits;
pub mod log_filter;
pub mod logging;
pub mod mesh;
pub mod names;
pub mod ports;
pub mod process;
pub mod quantity;
pub mod setting;

pub use chain::Chain;
pub use cidrs::{Cidr, CidrError, parse_cidrs};
pub use duration::{DurationError, format_duration, parse_duration};
pub use identity::{SpiffeId, SpiffeIdError};
pub use log_filter::check_log_filter;
pub use ports::{PortError, PortRange, PortSet};
pub use quantity::{QuantityError, parse_quantity};
pub use setting::{Setting, SettingError};
