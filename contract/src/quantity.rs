//! Kubernetes resource quantities (`100m`, `1.5`, `64Mi`, `1Pi`, `1e3`), read
//! as the API server reads them
//! (<https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/>):
//! a signed decimal number, then a binary suffix (`Ki` … `Ei`), a decimal one
//! (`n`, `u`, `m`, `k`, `M` … `E`) or a decimal exponent (`e3`, `E-2`).
//!
//! Values are compared as `f64` (53 bits of precision: two quantities that
//! differ only beyond the 16th significant digit compare equal). The
//! `kube_quantity` crate was tried first and dropped: it misreads `1E` and
//! `1Ei`, reads a bare `Mi` as zero, and panics on overflow when comparing
//! large quantities with small units (`5e27G` against `0`, `1E` against `1n`;
//! found by the `annotations` fuzz target).

/// The API server's own description of the grammar, used in its messages.
pub const QUANTITY_PATTERN: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a quantity: quantities must match the regular expression '{QUANTITY_PATTERN}' (such as 100m, 1.5, 64Mi, 1e3)"
)]
pub struct QuantityError {
    pub text: String,
}

/// A quantity's value in base units (cores, bytes).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Quantity {
    pub value: f64,
}

fn digits(text: &str) -> usize {
    text.bytes().take_while(u8::is_ascii_digit).count()
}

/// The factor a suffix stands for, or `None` for anything else.
fn suffix_factor(suffix: &str) -> Option<f64> {
    let binary = |power: i32| Some(2f64.powi(power));
    let decimal = |power: i32| Some(10f64.powi(power));
    match suffix {
        "" => Some(1.0),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        _ => None,
    }
}

/// Reads `[+-]?(\d+(\.\d*)?|\.\d+)` and then a suffix or an exponent,
/// and nothing else.
fn value_of(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let whole = digits(unsigned);
    let rest = &unsigned[whole..];
    let (fraction, rest) = match rest.strip_prefix('.') {
        Some(after) => (digits(after), &after[digits(after)..]),
        None => (0, rest),
    };
    if whole == 0 && fraction == 0 {
        return None;
    }
    let number_len = text.len() - rest.len();
    let number: f64 = text[..number_len].parse().ok()?;
    let factor = match suffix_factor(rest) {
        Some(factor) => factor,
        None => {
            let exponent = rest.strip_prefix(['e', 'E'])?;
            let magnitude = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if magnitude.is_empty() || digits(magnitude) != magnitude.len() {
                return None;
            }
            10f64.powi(exponent.parse::<i32>().ok()?)
        }
    };
    Some(number * factor).filter(|value| value.is_finite())
}

/// Reads a quantity.
///
/// # Errors
/// [`QuantityError`] when the text is not a quantity the API server accepts
/// (or one too large for an `f64`).
pub fn parse_quantity(text: &str) -> Result<Quantity, QuantityError> {
    value_of(text)
        .map(|value| Quantity { value })
        .ok_or_else(|| QuantityError { text: text.to_string() })
}

/// Reads a container's resource amount: a quantity that is not negative.
///
/// # Errors
/// The problem, worded as the API server words it (`must be greater than
/// or equal to 0`), or the [`QuantityError`] text.
pub fn parse_resource(text: &str) -> Result<Quantity, String> {
    let quantity = parse_quantity(text).map_err(|e| e.to_string())?;
    if quantity.value < 0.0 {
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
    if request_value.value > limit_value.value {
        return Err(format!("must be less than or equal to {resource} limit of {limit}"));
    }
    Ok(())
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
        // Far-apart units and huge values compare without overflow.
        assert!(check_request_within_limit("cpu", "1n", "1E").is_ok());
        assert!(check_request_within_limit("cpu", "05111111333333333111111111110G", "1").is_err());
        assert!(parse_quantity("1e400").is_err(), "beyond f64");
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
