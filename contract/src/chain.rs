//! Errors as every component writes them: the error and its causes, so that
//! "http2 error" says which, as "http2 error: connection error received:
//! not a result of an error".

use std::fmt;

/// Displays an error followed by each of its sources, separated by ": ".
/// A cause the text says already (an error whose message includes its
/// source's) is not said twice.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !said.contains(&text) {
                said.push_str(": ");
                said.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&said)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("upstream failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_error() {
        let error = Outer(std::io::Error::other("connection reset"));
        assert_eq!(Chain(&error).to_string(), "upstream failed: connection reset");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen: {0}")]
    struct Saying(#[source] std::io::Error);

    #[test]
    fn a_cause_the_error_says_already_is_not_repeated() {
        let error = Saying(std::io::Error::other("address in use"));
        assert_eq!(Chain(&error).to_string(), "cannot listen: address in use");
    }
}
