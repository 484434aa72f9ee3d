//! Sizes ("60MiB" <-> bytes) and percentages ("10%").

use std::fmt;

/// Why a size or percentage did not parse. `Display` gives the user-facing text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub value: String,
    pub reason: &'static str,
}

pub const SIZE_FORMS: &str = "a number of bytes or a number with a unit: B, KB, MB, GB, TB \
(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. '60MiB', '1.5 GiB', '512KiB'";

/// The largest size accepted: sizes meet signed 64-bit byte counts (increments go below zero).
pub const MAX_SIZE: u64 = i64::MAX as u64;

pub const PERCENT_FORMS: &str = "a percentage such as '10%' or '0%'";

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.value, self.reason)
    }
}

impl std::error::Error for ParseError {}

const TOO_LARGE: &str = "too large (sizes are at most 2^63 - 1 bytes, 8 EiB)";

fn err(value: &str, reason: &'static str) -> ParseError {
    ParseError {
        value: value.to_string(),
        reason,
    }
}

/// Splits "  1.5 GiB " into ("1.5", "GiB").
fn split_number(s: &str) -> (&str, &str) {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == '_'))
        .unwrap_or(s.len());
    (s[..end].trim(), s[end..].trim())
}

fn unit_factor(unit: &str) -> Option<u64> {
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    Some(factor)
}

/// Parses a size such as `"60MiB"`, `"60 MiB"`, `"1.5GiB"`, `"512KiB"`, `"100B"` or `"1024"`.
/// Units are case-insensitive; KB/MB/GB/TB are powers of 1000 and KiB/MiB/GiB/TiB of 1024.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let (number, unit) = split_number(s);
    if number.is_empty() {
        return Err(err(s, "not a size"));
    }
    if number.starts_with('-') {
        return Err(err(s, "a size cannot be negative"));
    }
    if unit.starts_with(['e', 'E'])
        && unit[1..].starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+')
    {
        return Err(err(
            s,
            "exponents are not accepted: write the number out, e.g. '1000MiB'",
        ));
    }
    let factor = unit_factor(unit).ok_or_else(|| err(s, "unknown unit"))?;
    if number.contains('_') {
        return Err(err(s, "not a size"));
    }
    if let Ok(n) = number.trim_start_matches('+').parse::<u64>() {
        return n
            .checked_mul(factor)
            .filter(|&b| b <= MAX_SIZE)
            .ok_or_else(|| err(s, TOO_LARGE));
    }
    let x: f64 = number.parse().map_err(|_| err(s, "not a size"))?;
    if !x.is_finite() {
        return Err(err(s, "not a size"));
    }
    if unit.is_empty() || factor == 1 {
        return Err(err(s, "a number of bytes must be a whole number"));
    }
    let bytes = (x * factor as f64).round();
    if bytes >= MAX_SIZE as f64 {
        return Err(err(s, TOO_LARGE));
    }
    Ok(bytes as u64)
}

/// Parses a relative tolerance such as `"10%"` into a fraction (0.1).
pub fn parse_percent(s: &str) -> Result<f64, ParseError> {
    let t = s.trim();
    let Some(number) = t.strip_suffix('%') else {
        return Err(err(s, "expected a percentage ending in '%'"));
    };
    let x: f64 = number
        .trim()
        .parse()
        .map_err(|_| err(s, "not a percentage"))?;
    if !x.is_finite() {
        return Err(err(s, "not a percentage"));
    }
    if x < 0.0 {
        return Err(err(s, "a tolerance cannot be negative"));
    }
    Ok(x / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("60MiB"), Ok(60 << 20));
        assert_eq!(parse_size("60 MiB"), Ok(60 << 20));
        assert_eq!(parse_size(" 60 mib "), Ok(60 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert_eq!(parse_size("3 mb"), Ok(3_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
    }

    #[test]
    fn bad_sizes() {
        for bad in [
            "",
            "sixty",
            "MiB",
            "60 MiBs",
            "60 M",
            "1.5",
            "1.5B",
            "--5",
            "1e3MiB",
            "nan MiB",
            "inf",
            "5_000",
            "1..2MiB",
            "99999999999999999999 TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
        let e = parse_size("-5MiB").unwrap_err();
        assert_eq!(e.to_string(), "\"-5MiB\": a size cannot be negative");
        assert_eq!(parse_size("sixty").unwrap_err().reason, "not a size");
        assert_eq!(parse_size("6 parsecs").unwrap_err().reason, "unknown unit");
        assert!(parse_size("1e3MiB")
            .unwrap_err()
            .reason
            .starts_with("exponents are not accepted"));
        // sizes meet signed byte counts: 2^63 bytes and more are refused, up to it accepted
        assert_eq!(parse_size("8388607TiB"), Ok(8_388_607 << 40));
        for big in [
            "9000000TiB",
            "18446744073709551615",
            "9223372036854775808",
            "8EiB",
        ] {
            assert!(parse_size(big).is_err(), "{big}");
        }
        assert_eq!(parse_size("9223372036854775807"), Ok(i64::MAX as u64));
        assert!(parse_size("9000000TiB")
            .unwrap_err()
            .reason
            .starts_with("too large"));
        assert!(parse_size("8388608 TiB")
            .unwrap_err()
            .reason
            .starts_with("too large"));
        assert!(parse_size("8388608.5 TiB")
            .unwrap_err()
            .reason
            .starts_with("too large"));
    }

    #[test]
    fn percents() {
        assert_eq!(parse_percent("10%"), Ok(0.1));
        assert_eq!(parse_percent(" 2.5 % "), Ok(0.025));
        assert_eq!(parse_percent("0%"), Ok(0.0));
        assert!(parse_percent("10").is_err());
        assert!(parse_percent("-1%").is_err());
        assert!(parse_percent("ten%").is_err());
        assert!(parse_percent("inf%").is_err());
    }
}
