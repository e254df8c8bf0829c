//! How numbers read: durations, sizes, scores, times.

/// `83.4` → `1:23`; an hour or more → `1:02:03`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "–".into();
    }
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// An optional duration, `–` when unknown.
pub fn maybe_duration(seconds: Option<f64>) -> String {
    seconds.map(duration).unwrap_or_else(|| "–".into())
}

/// A long span for totals: `3 h 12 min`, `4 min 5 s`, `12 s`.
pub fn span(seconds: f64) -> String {
    if !seconds.is_finite() || seconds <= 0.0 {
        return "0 s".into();
    }
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

/// Bytes in decimal units, as file managers show them: `1.2 MB`.
pub fn bytes(n: f64) -> String {
    if !n.is_finite() || n < 0.0 {
        return "–".into();
    }
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{} B", n as u64)
    } else if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// A cosine similarity as the share of a full bar, clamped to 0..=1
/// (cosines can be negative; those draw as empty).
pub fn score_fraction(score: f64) -> f64 {
    if score.is_finite() {
        score.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Milliseconds, with a precision that suits their size.
pub fn millis(ms: f64) -> String {
    if !ms.is_finite() {
        "–".into()
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// An RFC 3339 time as `2026-11-30 16:05` (UTC, as the server stores it).
pub fn timestamp(rfc3339: &str) -> String {
    let date = rfc3339.get(..10);
    let time = rfc3339.get(11..16);
    match (date, time) {
        (Some(d), Some(t)) => format!("{d} {t}"),
        _ => rfc3339.to_string(),
    }
}

/// Parses a number a person typed ("", " 12.5 ", "1,5"): `None` when empty
/// or not a number.
pub fn parse_number(input: &str) -> Option<f64> {
    let t = input.trim().replace(',', ".");
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(0.0), "0:00");
        assert_eq!(duration(9.6), "0:10");
        assert_eq!(duration(83.4), "1:23");
        assert_eq!(duration(3723.0), "1:02:03");
        assert_eq!(duration(f64::NAN), "–");
        assert_eq!(maybe_duration(None), "–");
        assert_eq!(span(11_520.0), "3 h 12 min");
        assert_eq!(span(245.0), "4 min 5 s");
        assert_eq!(span(0.0), "0 s");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(999.0), "999 B");
        assert_eq!(bytes(1_234.0), "1.2 kB");
        assert_eq!(bytes(960_044.0), "960 kB");
        assert_eq!(bytes(12_600_000.0), "13 MB");
        assert_eq!(bytes(3.2e12), "3.2 TB");
        assert_eq!(bytes(-1.0), "–");
    }

    #[test]
    fn scores_clamp() {
        assert_eq!(score_fraction(0.42), 0.42);
        assert_eq!(score_fraction(-0.3), 0.0);
        assert_eq!(score_fraction(1.2), 1.0);
        assert_eq!(score_fraction(f64::NAN), 0.0);
    }

    #[test]
    fn numbers_people_type() {
        assert_eq!(parse_number(" 12.5 "), Some(12.5));
        assert_eq!(parse_number("1,5"), Some(1.5));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("abc"), None);
        assert_eq!(parse_number("inf"), None);
        assert_eq!(millis(3.25), "3.2 ms");
        assert_eq!(millis(250.4), "250 ms");
        assert_eq!(millis(12_345.0), "12.3 s");
        assert_eq!(timestamp("2026-11-30T16:05:09.123Z"), "2026-11-30 16:05");
    }
}
