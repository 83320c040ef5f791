//! The mesh protocol between proxies. An outbound proxy reaches a meshed
//! endpoint at the peer proxy's inbound port over mutual TLS (server name:
//! the peer's identity, ALPN [`ALPN`]), then says which port of its pod the
//! connection is for in a six-byte header; everything after it is the
//! client's bytes. Because mesh traffic arrives on its own port, the inbound
//! proxy never has to guess whether a connection is TLS: plaintext on
//! application ports (including server-speaks-first protocols) is never
//! waited on, and an application's own TLS passes through untouched.

/// ALPN of the mesh protocol, so a stray TLS client is not taken for a proxy.
pub const ALPN: &[u8] = b"strait.io/mesh/1";

pub const HEADER_LEN: usize = 6;
const MAGIC: [u8; 2] = *b"SM";
const VERSION: u8 = 1;

/// The header for a connection to `port`: magic, version, a reserved byte
/// and the port, big-endian.
pub fn header(port: u16) -> [u8; HEADER_LEN] {
    let [high, low] = port.to_be_bytes();
    [MAGIC[0], MAGIC[1], VERSION, 0, high, low]
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("not a strait mesh header: {0:02x?}")]
    NotMesh([u8; HEADER_LEN]),
    #[error("mesh header names port 0")]
    PortZero,
}

/// The application port a header names.
pub fn parse_header(header: [u8; HEADER_LEN]) -> Result<u16, HeaderError> {
    if header[..2] != MAGIC || header[2] != VERSION {
        return Err(HeaderError::NotMesh(header));
    }
    match u16::from_be_bytes([header[4], header[5]]) {
        0 => Err(HeaderError::PortZero),
        port => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        assert_eq!(parse_header(header(50051)), Ok(50051));
        assert!(matches!(parse_header(*b"GET / "), Err(HeaderError::NotMesh(_))));
        assert_eq!(parse_header(header(0)), Err(HeaderError::PortZero));
    }
}
