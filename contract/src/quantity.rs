//! Kubernetes resource quantities (`100m`, `1.5`, `64Mi`, `1Pi`, `1e3`), read
//! as the API server reads them
//! (<https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/>):
//! a signed decimal number, then a binary suffix (`Ki` … `Ei`), a decimal one
//! (`n`, `u`, `m`, `k`, `M` … `E`) or a decimal exponent (`e3`, `E-2`).
//! Values and comparisons come from the `kube_quantity` crate; the grammar is
//! checked first, since that crate also takes forms the API server refuses
//! (a bare suffix, `Mi`, reads as zero there).

use std::cmp::Ordering;

use kube_quantity::ParsedQuantity;

/// The API server's own description of the grammar, used in its messages.
pub const QUANTITY_PATTERN: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a quantity: quantities must match the regular expression '{QUANTITY_PATTERN}' (such as 100m, 1.5, 64Mi, 1e3)"
)]
pub struct QuantityError {
    pub text: String,
}

fn digits(text: &str) -> usize {
    text.bytes().take_while(u8::is_ascii_digit).count()
}

/// Whether `text` is `[+-]?(\d+(\.\d*)?|\.\d+)` followed by a suffix or an
/// exponent, and nothing else.
fn well_formed(text: &str) -> bool {
    let rest = text.strip_prefix(['+', '-']).unwrap_or(text);
    let whole = digits(rest);
    let rest = &rest[whole..];
    let (fraction, rest) = match rest.strip_prefix('.') {
        Some(after) => (digits(after), &after[digits(after)..]),
        None => (0, rest),
    };
    if whole == 0 && fraction == 0 {
        return false;
    }
    const SUFFIXES: [&str; 14] = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T",
    ];
    if SUFFIXES.contains(&rest) || rest == "P" || rest == "E" {
        return true;
    }
    let Some(exponent) = rest.strip_prefix(['e', 'E']) else {
        return false;
    };
    let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    !exponent.is_empty() && digits(exponent) == exponent.len()
}

/// Reads a quantity.
///
/// # Errors
/// [`QuantityError`] when the text is not a quantity the API server accepts.
pub fn parse_quantity(text: &str) -> Result<ParsedQuantity, QuantityError> {
    let error = || QuantityError { text: text.to_string() };
    if !well_formed(text) {
        return Err(error());
    }
    // `kube_quantity` reads the `E` of `1Ei` and `1E` as an exponent: the
    // same value is given to it one unit down.
    let exa = [("Ei", 1024, "Pi"), ("E", 1000, "P")]
        .into_iter()
        .find_map(|(suffix, factor, lower)| {
            let number: f64 = text.strip_suffix(suffix)?.parse().ok()?;
            Some(format!("{}{lower}", number * f64::from(factor)))
        });
    ParsedQuantity::try_from(exa.as_deref().unwrap_or(text)).map_err(|_| error())
}

/// Reads a container's resource amount: a quantity that is not negative.
///
/// # Errors
/// The problem, worded as the API server words it (`must be greater than
/// or equal to 0`), or the [`QuantityError`] text.
pub fn parse_resource(text: &str) -> Result<ParsedQuantity, String> {
    let quantity = parse_quantity(text).map_err(|e| e.to_string())?;
    let zero = parse_quantity("0").map_err(|e| e.to_string())?;
    if quantity < zero {
        return Err("must be greater than or equal to 0".into());
    }
    Ok(quantity)
}

/// Checks that a request does not exceed its limit (both quantities of the
/// same resource), as the API server does for a container's resources.
///
/// # Errors
/// The API server's wording: `must be less than or equal to cpu limit of 1`.
pub fn check_request_within_limit(resource: &str, request: &str, limit: &str) -> Result<(), String> {
    let (request_value, limit_value) = (
        parse_quantity(request).map_err(|e| e.to_string())?,
        parse_quantity(limit).map_err(|e| e.to_string())?,
    );
    match request_value.cmp(&limit_value) {
        Ordering::Greater => Err(format!("must be less than or equal to {resource} limit of {limit}")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_servers_forms_are_read_and_others_refused() {
        for good in [
            "100m", "1", "1.5", ".5", "1.", "64Mi", "1Pi", "1e3", "2E-2", "+1k", "0", "1Ei", "5P",
        ] {
            assert!(parse_quantity(good).is_ok(), "{good}");
        }
        for bad in [
            "", "1.2.3", "Mi", "lots", "1 Mi", "1mi", "1KiB", "1e", "inf", "NaN", ".", "-", "1Zi",
        ] {
            let error = parse_quantity(bad).unwrap_err();
            assert!(error.to_string().contains("is not a quantity"), "{bad}");
        }
    }

    #[test]
    fn requests_are_compared_with_limits_across_units() {
        assert!(check_request_within_limit("memory", "512Mi", "1Gi").is_ok());
        assert!(check_request_within_limit("cpu", "1", "1000m").is_ok());
        assert!(check_request_within_limit("cpu", "1e3", "1k").is_ok());
        assert_eq!(
            check_request_within_limit("cpu", "1100m", "1").unwrap_err(),
            "must be less than or equal to cpu limit of 1"
        );
        assert!(check_request_within_limit("memory", "2G", "1Gi").is_err());
        assert!(check_request_within_limit("memory", "1000Pi", "1Ei").is_ok());
        assert!(check_request_within_limit("memory", "1E", "1000P").is_ok());
        assert!(check_request_within_limit("memory", "2E", "1Ei").is_err());
    }

    #[test]
    fn resources_may_not_be_negative() {
        assert_eq!(parse_resource("-1").unwrap_err(), "must be greater than or equal to 0");
        assert_eq!(
            parse_resource("-5Mi").unwrap_err(),
            "must be greater than or equal to 0"
        );
        assert!(parse_resource("0").is_ok());
        assert!(parse_resource("-0").is_ok());
        assert!(parse_resource("lots").unwrap_err().contains("is not a quantity"));
    }
}
