//! Port lists as users write them in annotations: `22,8080-8090`.

use std::fmt;
use std::str::FromStr;

/// An inclusive range of TCP ports; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// A set of ports, kept in the order the user wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<PortRange>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    #[error("invalid port {0:?}: expected a number from 1 to 65535")]
    NotAPort(String),
    #[error("invalid port range {0:?}: the first port is greater than the last")]
    Backwards(String),
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

fn parse_port(text: &str) -> Result<u16, PortError> {
    match text.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(PortError::NotAPort(text.trim().to_string())),
    }
}

impl FromStr for PortRange {
    type Err = PortError;

    fn from_str(text: &str) -> Result<Self, PortError> {
        let text = text.trim();
        let Some((first, last)) = text.split_once('-') else {
            return parse_port(text).map(PortRange::single);
        };
        let (first, last) = (parse_port(first)?, parse_port(last)?);
        if first > last {
            return Err(PortError::Backwards(text.to_string()));
        }
        Ok(PortRange { first, last })
    }
}

impl PortSet {
    pub fn new(ranges: Vec<PortRange>) -> Self {
        PortSet { ranges }
    }

    /// Parses a comma list; empty items (`"22,,80"`, a trailing comma) are
    /// ignored so an empty annotation means an empty set.
    pub fn parse(text: &str) -> Result<Self, PortError> {
        let ranges = text
            .split(',')
            .filter(|item| !item.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        Ok(PortSet { ranges })
    }

    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|range| range.contains(port))
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds a port unless the set already covers it.
    pub fn insert(&mut self, port: u16) {
        if !self.contains(port) {
            self.ranges.push(PortRange::single(port));
        }
    }

    /// This set and every range of `other` it does not already cover.
    pub fn union(mut self, other: &PortSet) -> PortSet {
        for range in &other.ranges {
            if !(range.first..=range.last).all(|port| self.contains(port)) {
                self.ranges.push(*range);
            }
        }
        self
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        let set = PortSet::parse("22, 8080-8090,443,").unwrap();
        assert_eq!(set.to_string(), "22,8080-8090,443");
        assert!(set.contains(8085));
        assert!(!set.contains(8091));
        assert!(PortSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_values_naming_them() {
        let cases = [
            ("70000", PortError::NotAPort("70000".into())),
            ("abc", PortError::NotAPort("abc".into())),
            ("0", PortError::NotAPort("0".into())),
            ("22,-5", PortError::NotAPort("".into())),
            ("90-80", PortError::Backwards("90-80".into())),
            ("80-abc", PortError::NotAPort("abc".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(PortSet::parse(input), Err(expected), "input {input:?}");
        }
    }
}
