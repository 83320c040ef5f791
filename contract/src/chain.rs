//! Errors as every component writes them: the error and its causes, so that
//! "http2 error" says which, as "http2 error: connection error received:
//! not a result of an error".

use std::fmt;

/// Displays an error followed by each of its sources, separated by ": ".
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
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
}
