//! Settings as every component reads them from its environment: one
//! variable's raw value, parsed with the shared rules (whole numbers in a
//! range, durations, two-word switches), and on a bad value an error that
//! names the variable, the value it held, and what is wrong with it.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::duration::parse_duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}={value:?}: {problem}")]
pub struct SettingError {
    pub name: String,
    pub value: String,
    pub problem: String,
}

impl SettingError {
    pub fn new(name: impl Into<String>, value: impl Into<String>, problem: impl Into<String>) -> Self {
        SettingError {
            name: name.into(),
            value: value.into(),
            problem: problem.into(),
        }
    }
}

/// One variable: its name, for errors, and its value if it is set.
#[derive(Clone, Debug)]
pub struct Setting {
    name: String,
    value: Option<String>,
}

impl Setting {
    pub fn new(name: impl Into<String>, value: Option<String>) -> Self {
        Setting {
            name: name.into(),
            value,
        }
    }

    /// The value through `parse`, or `default` when unset.
    pub fn parse<T>(self, default: T, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, SettingError> {
        match self.value {
            None => Ok(default),
            Some(value) => parse(&value).map_err(|problem| SettingError::new(self.name, value, problem)),
        }
    }

    /// A whole number within `range`.
    pub fn count(self, default: usize, range: RangeInclusive<usize>) -> Result<usize, SettingError> {
        self.parse(default, |text| match text.trim().parse::<usize>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(format!(
                "expected a whole number from {} to {}",
                range.start(),
                range.end()
            )),
        })
    }

    /// A duration such as `500ms` or `30s`.
    pub fn duration(self, default: Duration) -> Result<Duration, SettingError> {
        self.parse(default, |text| parse_duration(text).map_err(|e| e.to_string()))
    }

    /// One of two words: `on` for true, `off` for false (such as `true` and
    /// `false`, or `strict` and `permissive`).
    pub fn switch(self, default: bool, on: &str, off: &str) -> Result<bool, SettingError> {
        self.parse(default, |text| match text.trim() {
            word if word == on => Ok(true),
            word if word == off => Ok(false),
            _ => Err(format!("expected {on} or {off}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(value: &str) -> Setting {
        Setting::new("STRAIT_X", Some(value.to_string()))
    }

    #[test]
    fn unset_is_the_default_and_set_values_parse() {
        assert_eq!(Setting::new("STRAIT_X", None).count(7, 1..=10), Ok(7));
        assert_eq!(set(" 3 ").count(7, 1..=10), Ok(3));
        assert_eq!(set("90s").duration(Duration::ZERO), Ok(Duration::from_secs(90)));
        assert_eq!(set("strict").switch(false, "strict", "permissive"), Ok(true));
        assert_eq!(set("permissive").switch(true, "strict", "permissive"), Ok(false));
    }

    #[test]
    fn a_bad_value_is_named_with_what_was_expected() {
        assert_eq!(
            set("11").count(7, 1..=10).unwrap_err().to_string(),
            "STRAIT_X=\"11\": expected a whole number from 1 to 10"
        );
        assert_eq!(
            set("yes").switch(false, "true", "false").unwrap_err().to_string(),
            "STRAIT_X=\"yes\": expected true or false"
        );
        assert!(
            set("soon")
                .duration(Duration::ZERO)
                .unwrap_err()
                .problem
                .starts_with("invalid duration")
        );
    }
}
