//! CIDR lists as users write them in annotations: `10.0.0.0/8,fd00::/8`.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// An address block; a bare address is a block of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(IpNet);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CIDR {0:?}: expected an address or address/prefix such as 10.0.0.0/8")]
pub struct CidrError(pub String);

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        text.parse::<IpAddr>()
            .map(|addr| Cidr(IpNet::from(addr)))
            .map_err(|_| CidrError(text.to_string()))
    }

    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    pub fn contains(&self, addr: &IpAddr) -> bool {
        self.0.contains(addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses a comma list, ignoring empty items.
pub fn parse_cidrs(text: &str) -> Result<Vec<Cidr>, CidrError> {
    text.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(Cidr::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let cidrs = parse_cidrs("10.1.2.3/8, 192.168.0.1 ,fd00::/8").unwrap();
        let shown: Vec<_> = cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.0.1/32", "fd00::/8"]);
        assert!(cidrs[0].is_ipv4() && !cidrs[2].is_ipv4());
    }

    #[test]
    fn rejects_garbage_naming_it() {
        assert_eq!(
            parse_cidrs("10.0.0.0/8,10.0.0.0/33"),
            Err(CidrError("10.0.0.0/33".into()))
        );
        assert_eq!(parse_cidrs("nope"), Err(CidrError("nope".into())));
    }
}
