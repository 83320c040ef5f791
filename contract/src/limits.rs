//! The proxy's limits and timeouts: what one client may make a proxy hold,
//! and for how long. The proxy reads them from its `STRAIT_*` variables; the
//! injector reads chart-wide values from `STRAIT_PROXY_*` variables and
//! writes them onto every proxy it injects, so both sides parse and check
//! them here.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::duration::format_duration;
use crate::setting::{Setting, SettingError};

/// The proxy's variables.
pub mod env {
    pub const CONNECT_TIMEOUT: &str = "STRAIT_CONNECT_TIMEOUT";
    pub const IDLE_TIMEOUT: &str = "STRAIT_IDLE_TIMEOUT";
    pub const DETECT_TIMEOUT: &str = "STRAIT_DETECT_TIMEOUT";
    pub const DETECT_BUFFER: &str = "STRAIT_DETECT_BUFFER";
    pub const HEADER_TIMEOUT: &str = "STRAIT_HEADER_TIMEOUT";
    pub const MAX_CONNECTIONS: &str = "STRAIT_MAX_CONNECTIONS";
    pub const MAX_CONCURRENT_STREAMS: &str = "STRAIT_MAX_CONCURRENT_STREAMS";
    pub const MAX_HEADER_BYTES: &str = "STRAIT_MAX_HEADER_BYTES";
}

/// Bounds on what clients can make the proxy hold. Each has a default that
/// no well-behaved application reaches; a client that reaches one gets a
/// clean refusal, never an unbounded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long to wait for an upstream TCP handshake.
    pub connect_timeout: Duration,
    /// A relayed connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long to wait for a client's first bytes before treating the
    /// connection as opaque TCP. Clients of HTTP and gRPC send at once; a
    /// server-speaks-first protocol on a port not declared opaque waits this
    /// long once per connection, so it is short, but long enough that a
    /// busy client is not misread.
    pub detect_timeout: Duration,
    /// How many bytes protocol detection reads before deciding the
    /// connection is opaque TCP.
    pub detect_buffer: usize,
    /// How long an HTTP/1 client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Connections served at once each way (inbound, outbound); beyond it,
    /// a new connection is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Streams one client may have open at once on an HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// The largest request header list (names, values and 32 bytes of
    /// overhead per field, as HTTP/2 counts it). Larger requests get 431,
    /// or RESOURCE_EXHAUSTED for gRPC.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            detect_timeout: Duration::from_secs(1),
            detect_buffer: 8 * 1024,
            header_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_concurrent_streams: 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

const DETECT_BUFFER_RANGE: RangeInclusive<usize> = 64..=1 << 20;
const MAX_CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=1_000_000;
const MAX_CONCURRENT_STREAMS_RANGE: RangeInclusive<usize> = 1..=65_536;
const MAX_HEADER_BYTES_RANGE: RangeInclusive<usize> = 1024..=1 << 20;

impl Limits {
    /// Reads every limit from the proxy's variable `name` as `lookup(name)`
    /// finds it; an unset one keeps its default. `lookup` returns the
    /// variable it actually read, for the error, and its value.
    pub fn from_env(lookup: impl Fn(&'static str) -> Option<(String, String)>) -> Result<Limits, SettingError> {
        let defaults = Limits::default();
        let setting = |name: &'static str| match lookup(name) {
            Some((shown, value)) => Setting::new(shown, Some(value)),
            None => Setting::new(name, None),
        };
        Ok(Limits {
            connect_timeout: setting(env::CONNECT_TIMEOUT).duration(defaults.connect_timeout)?,
            idle_timeout: setting(env::IDLE_TIMEOUT).duration(defaults.idle_timeout)?,
            detect_timeout: setting(env::DETECT_TIMEOUT).duration(defaults.detect_timeout)?,
            detect_buffer: setting(env::DETECT_BUFFER).count(defaults.detect_buffer, DETECT_BUFFER_RANGE)?,
            header_timeout: setting(env::HEADER_TIMEOUT).duration(defaults.header_timeout)?,
            max_connections: setting(env::MAX_CONNECTIONS).count(defaults.max_connections, MAX_CONNECTIONS_RANGE)?,
            max_concurrent_streams: setting(env::MAX_CONCURRENT_STREAMS)
                .count(defaults.max_concurrent_streams as usize, MAX_CONCURRENT_STREAMS_RANGE)?
                as u32,
            max_header_bytes: setting(env::MAX_HEADER_BYTES)
                .count(defaults.max_header_bytes, MAX_HEADER_BYTES_RANGE)?,
        })
    }

    /// The proxy's variables that carry these limits, each as it is written.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (env::CONNECT_TIMEOUT, format_duration(self.connect_timeout)),
            (env::IDLE_TIMEOUT, format_duration(self.idle_timeout)),
            (env::DETECT_TIMEOUT, format_duration(self.detect_timeout)),
            (env::DETECT_BUFFER, self.detect_buffer.to_string()),
            (env::HEADER_TIMEOUT, format_duration(self.header_timeout)),
            (env::MAX_CONNECTIONS, self.max_connections.to_string()),
            (env::MAX_CONCURRENT_STREAMS, self.max_concurrent_streams.to_string()),
            (env::MAX_HEADER_BYTES, self.max_header_bytes.to_string()),
        ]
    }

    /// The limits as `name=value` pairs, for a start-up log line.
    pub fn describe(&self) -> String {
        self.to_env()
            .into_iter()
            .map(|(name, value)| format!("{}={value}", name.trim_start_matches("STRAIT_").to_lowercase()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Limits, SettingError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Limits::from_env(|name| map.get(name).map(|value| (name.to_string(), value.clone())))
    }

    #[test]
    fn unset_variables_keep_the_defaults() {
        assert_eq!(from(&[]).unwrap(), Limits::default());
    }

    #[test]
    fn written_limits_read_back_the_same() {
        let limits = from(&[(env::MAX_CONNECTIONS, "500"), (env::IDLE_TIMEOUT, "90s")]).unwrap();
        assert_eq!(limits.max_connections, 500);
        assert_eq!(limits.idle_timeout, Duration::from_secs(90));
        let written = limits.to_env();
        let pairs: Vec<(&str, &str)> = written.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(from(&pairs).unwrap(), limits);
    }

    #[test]
    fn an_error_names_the_variable_the_value_came_from() {
        let error = Limits::from_env(|name| {
            (name == env::MAX_CONCURRENT_STREAMS).then(|| ("STRAIT_PROXY_MAX_CONCURRENT_STREAMS".into(), "0".into()))
        })
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "STRAIT_PROXY_MAX_CONCURRENT_STREAMS=\"0\": expected a whole number from 1 to 65536"
        );
        let error = from(&[(env::HEADER_TIMEOUT, "soon")]).unwrap_err();
        assert_eq!(error.name, env::HEADER_TIMEOUT);
        assert!(error.problem.starts_with("invalid duration"), "{}", error.problem);
    }

    #[test]
    fn describe_lists_every_limit() {
        let line = Limits::default().describe();
        assert!(line.starts_with("connect_timeout=1s idle_timeout=1h"), "{line}");
        assert!(line.ends_with("max_header_bytes=65536"), "{line}");
    }
}
