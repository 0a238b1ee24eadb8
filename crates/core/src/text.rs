//! Text from outside (plugins, requests, operators) made safe to log.

/// Escape control characters (CR, LF, ESC, ...) and cap the length, so text
/// from plugins or requests cannot forge log lines or terminal output.
pub fn sanitize_for_log(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A duration as operators write it on every surface: a whole number and
/// one unit, `90s`, `15m`, `1h` or `2d`; in seconds. `None` for anything
/// else (no unit, another unit, an overflow).
pub fn parse_duration_seconds(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: i64 = s[..split].parse().ok()?;
    let unit = match &s[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration_seconds as p;

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(p("90s"), Some(90));
        assert_eq!(p("15m"), Some(900));
        assert_eq!(p("1h"), Some(3_600));
        assert_eq!(p("2d"), Some(172_800));
        for bad in ["", "1", "h", "1w", "1.5h", "-1h", "1 h", "99999999999999999d"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }
}
