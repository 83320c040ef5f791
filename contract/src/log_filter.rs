//! Log filters as `STRAIT_LOG_LEVEL`, `proxy.logLevel` and the
//! `strait.io/proxy-log-level` annotation take them: comma-separated
//! directives, each a level (`trace`, `debug`, `info`, `warn`, `error`,
//! `off`) or `target=level` (tracing-subscriber's `EnvFilter` syntax, without
//! span filters). Anything else is refused: `EnvFilter` reads an unknown
//! word such as `verbose` as a target, which silences every log.

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// `Ok` when every directive of `filter` is a level or `target=level`;
/// the error names the first directive that is not.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let level = |text: &str| LEVELS.contains(&text.to_ascii_lowercase().as_str());
    let target = |text: &str| {
        text.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for directive in filter.split(',').map(str::trim) {
        let valid = match directive.split_once('=') {
            Some((name, value)) => target(name) && level(value),
            None => level(directive),
        };
        if !valid {
            return Err(format!(
                "{directive:?} is not a log level ({}) or target=level",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_targets_pass_and_other_words_are_named() {
        for good in [
            "info",
            "DEBUG",
            "info,strait_proxy=trace",
            "strait_proxy::balance=debug",
        ] {
            assert_eq!(check_log_filter(good), Ok(()), "{good}");
        }
        for bad in ["verbose", "", "info,", "strait_proxy=loud", "=info", "info;debug"] {
            assert!(check_log_filter(bad).is_err(), "{bad}");
        }
        assert!(
            check_log_filter("info,verbose")
                .unwrap_err()
                .starts_with("\"verbose\" is not a log level")
        );
    }
}
