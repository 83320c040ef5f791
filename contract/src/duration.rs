//! Durations as settings are written: `500ms`, `10s`, `5m`, `24h`,
//! `1h30m`: the `humantime` crate's syntax (units from `ns` to `y`, parts
//! summed, optionally space-separated).

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected numbers with units, such as 500ms, 10s or 1h30m")]
pub struct DurationError(pub String);

/// Reads a duration with `humantime`; errors name the text.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    humantime::parse_duration(text).map_err(|_| DurationError(text.to_string()))
}

/// The inverse of [`parse_duration`], in the largest unit that is exact.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    match millis {
        0 => "0s".to_string(),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{m}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_round_trips() {
        for (text, millis) in [
            ("500ms", 500),
            ("10s", 10_000),
            ("5m", 300_000),
            ("24h", 86_400_000),
            ("0s", 0),
        ] {
            let duration = parse_duration(text).unwrap();
            assert_eq!(duration, Duration::from_millis(millis));
            assert_eq!(format_duration(duration), text);
        }
    }

    #[test]
    fn compound_durations_are_summed() {
        for (text, secs) in [("1h30m", 5_400), ("1h 30m", 5_400), ("2d", 172_800), ("1m30s", 90)] {
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)), "{text:?}");
        }
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for text in ["10", "s", "-1s", "10 parsecs", "", "99999999999999999999h"] {
            assert_eq!(parse_duration(text), Err(DurationError(text.to_string())), "{text:?}");
        }
    }
}
