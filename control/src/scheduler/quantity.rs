//! Kubernetes resource quantities (`100m`, `1`, `128Mi`, `1G`, `1e3`, `0.5`) as integers.
//!
//! The scheduler only ever compares and adds quantities, so each one becomes an `i64`
//! in a fixed unit (milli-units for CPU, units for everything else), rounded up as
//! `resource.Quantity.MilliValue()`/`Value()` do, and saturating instead of overflowing.

/// Why a quantity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a number followed by an optional suffix or exponent.
    #[error("quantity {0:?} must be a number with an optional suffix (m, k, Mi, Gi, e3, …)")]
    Malformed(String),
}

/// The value in milli-units (`100m` → 100, `1` → 1000), rounded up.
pub fn milli_value(text: &str) -> Result<i64, QuantityError> {
    scaled(text, 3)
}

/// The value in units (`128Mi` → 134217728, `1500m` → 2), rounded up.
pub fn value(text: &str) -> Result<i64, QuantityError> {
    scaled(text, 0)
}

/// The parsed parts of a quantity: `sign · mantissa · 10^(exp10 − fraction_digits) · 2^exp2`.
struct Parts {
    negative: bool,
    mantissa: i128,
    /// Digits after the decimal point folded into `mantissa`.
    fraction_digits: i32,
    /// Set when significant digits were dropped (only matters for rounding up).
    truncated: bool,
    exp10: i32,
    exp2: i32,
}

fn parse(text: &str) -> Result<Parts, QuantityError> {
    let malformed = || QuantityError::Malformed(text.to_string());
    let s = text.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    if number.is_empty() || number.matches('.').count() > 1 || number == "." {
        return Err(malformed());
    }
    let mut parts = Parts {
        negative,
        mantissa: 0,
        fraction_digits: 0,
        truncated: false,
        exp10: 0,
        exp2: 0,
    };
    let mut in_fraction = false;
    for c in number.chars() {
        if c == '.' {
            in_fraction = true;
            continue;
        }
        let digit = i128::from(c as u8 - b'0');
        match parts
            .mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(digit))
        {
            // 10^36 is far beyond any real quantity; beyond it only rounding changes.
            Some(m) if m < 10i128.pow(36) => {
                parts.mantissa = m;
                if in_fraction {
                    parts.fraction_digits += 1;
                }
            }
            _ if in_fraction => parts.truncated |= digit != 0,
            // An integer part this long saturates.
            _ => parts.exp10 += 1,
        }
    }
    match suffix {
        "" => {}
        "Ki" => parts.exp2 = 10,
        "Mi" => parts.exp2 = 20,
        "Gi" => parts.exp2 = 30,
        "Ti" => parts.exp2 = 40,
        "Pi" => parts.exp2 = 50,
        "Ei" => parts.exp2 = 60,
        "n" => parts.exp10 -= 9,
        "u" => parts.exp10 -= 6,
        "m" => parts.exp10 -= 3,
        "k" => parts.exp10 += 3,
        "M" => parts.exp10 += 6,
        "G" => parts.exp10 += 9,
        "T" => parts.exp10 += 12,
        "P" => parts.exp10 += 15,
        "E" => parts.exp10 += 18,
        _ => {
            // A decimal exponent: `e3`, `E-2`, `e+6`.
            let rest = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or_else(malformed)?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            let exponent: i32 = rest.parse().unwrap_or(if rest.starts_with('-') {
                -10_000
            } else {
                10_000
            });
            parts.exp10 = parts.exp10.saturating_add(exponent.clamp(-10_000, 10_000));
        }
    }
    Ok(parts)
}

/// The quantity times 10^`scale`, rounded up (away from zero), saturating at `i64`.
fn scaled(text: &str, scale: i32) -> Result<i64, QuantityError> {
    let parts = parse(text)?;
    let magnitude = if parts.mantissa == 0 {
        0
    } else {
        magnitude(&parts, scale)
    };
    let magnitude = i64::try_from(magnitude).unwrap_or(i64::MAX);
    Ok(if parts.negative {
        -magnitude
    } else {
        magnitude
    })
}

/// |value| · 10^scale rounded up, saturating at `i128::MAX`.
fn magnitude(parts: &Parts, scale: i32) -> i128 {
    let mut numerator = parts.mantissa;
    for _ in 0..parts.exp2 {
        numerator = match numerator.checked_mul(2) {
            Some(n) => n,
            None => return i128::MAX,
        };
    }
    let power = parts.exp10 + scale - parts.fraction_digits;
    if power >= 0 {
        let Some(factor) = u32::try_from(power)
            .ok()
            .and_then(|p| 10i128.checked_pow(p))
        else {
            return i128::MAX;
        };
        // Digits dropped past 36 significant ones are below one unit here: ignored.
        return numerator.checked_mul(factor).unwrap_or(i128::MAX);
    }
    let Some(divisor) = u32::try_from(-power)
        .ok()
        .and_then(|p| 10i128.checked_pow(p))
    else {
        // Smaller than any representable unit but not zero: rounds up to one.
        return 1;
    };
    let quotient = numerator / divisor;
    if numerator % divisor != 0 || parts.truncated {
        quotient + 1
    } else {
        quotient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_in_millis() {
        for (text, millis) in [
            ("100m", 100),
            ("1", 1000),
            ("0.5", 500),
            (".5", 500),
            ("2.25", 2250),
            ("1500m", 1500),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("0.0001", 1),
            ("250000n", 1),
            ("1k", 1_000_000),
            ("0", 0),
            ("+3", 3000),
        ] {
            assert_eq!(milli_value(text), Ok(millis), "{text}");
        }
    }

    #[test]
    fn memory_quantities_in_bytes() {
        for (text, bytes) in [
            ("128Mi", 128 * 1024 * 1024),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("1e3", 1000),
            ("1.5Ki", 1536),
            ("64", 64),
            ("1500m", 2),
            ("8Ei", i64::MAX),
            ("1Ei", 1 << 60),
            ("1e100", i64::MAX),
            ("-1Ki", -1024),
        ] {
            assert_eq!(value(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn malformed_quantities_are_errors() {
        for text in ["", "Mi", "1.2.3", "1Xi", "1e", "1e+", "abc", "1 Mi", "."] {
            assert!(value(text).is_err(), "{text:?} should not parse");
        }
    }
}
