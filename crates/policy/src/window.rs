//! Durations in policy documents (limit windows, approval timeouts) and how they are printed.
//!
//! Accepted forms: a whole number of seconds (`60`), a word (`"minute"`, `"hour"`, `"day"`), or
//! digits followed by one unit (`"90s"`, `"10m"`, `"2h"`, `"1d"`). Nothing else: no fractions,
//! no compound durations (`"1h30m"`), no spaces, lowercase only.

use std::time::Duration;

use serde_json::Value;

/// The shortest window a limit may have.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// The longest window a limit may have: 31 days.
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * DAY);
/// How long a held call waits for a person when the rule does not say.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(5 * MINUTE);
/// The longest a held call may wait for a person.
pub const MAX_APPROVAL_TIMEOUT: Duration = Duration::from_secs(DAY);

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Parses a duration field, checking `min..=max`. The error is the problem's message.
pub(crate) fn parse(value: &Value, min: Duration, max: Duration) -> Result<Duration, String> {
    const FORMS: &str = "a whole number of seconds, \"minute\", \"hour\", \"day\", or a duration like \"90s\", \"10m\", \"2h\", \"1d\"";
    let secs = match value {
        Value::Number(n) => match n.as_u64() {
            Some(secs) => secs,
            None => return Err(format!("must be {FORMS}, got {n}")),
        },
        Value::String(s) => match parse_str(s) {
            Some(secs) => secs,
            None => return Err(format!("must be {FORMS}, got {}", crate::describe(value))),
        },
        other => return Err(format!("must be {FORMS}, got {}", crate::describe(other))),
    };
    let duration = Duration::from_secs(secs);
    if duration < min || duration > max {
        return Err(format!(
            "must be between {} and {}, got {}",
            format_duration(min),
            format_duration(max),
            crate::describe(value)
        ));
    }
    Ok(duration)
}

/// Seconds for a string form; `None` if it is not one. Saturates on overflow (then out of range).
fn parse_str(s: &str) -> Option<u64> {
    match s {
        "minute" => return Some(MINUTE),
        "hour" => return Some(HOUR),
        "day" => return Some(DAY),
        _ => {}
    }
    let unit = match s.as_bytes().last()? {
        b's' => 1,
        b'm' => MINUTE,
        b'h' => HOUR,
        b'd' => DAY,
        _ => return None,
    };
    let digits = &s[..s.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = digits.parse::<u64>().unwrap_or(u64::MAX);
    Some(n.saturating_mul(unit))
}

/// A window as people say it, for `[RATE LIMITED] calls: 600 per hour`: exactly one minute,
/// hour or day prints as `minute`, `hour`, `day`; anything else as [`format_duration`] does
/// (`90s`, `10m`, `2h`, `7d`).
pub fn format_window(window: Duration) -> String {
    match window.as_secs() {
        MINUTE => "minute".into(),
        HOUR => "hour".into(),
        DAY => "day".into(),
        _ => format_duration(window),
    }
}

/// A duration in its largest whole unit: `45s`, `90s`, `10m`, `2h`, `1d`. Sub-second parts are
/// ignored (policy durations are whole seconds).
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs != 0 && secs.is_multiple_of(DAY) {
        format!("{}d", secs / DAY)
    } else if secs != 0 && secs.is_multiple_of(HOUR) {
        format!("{}h", secs / HOUR)
    } else if secs != 0 && secs.is_multiple_of(MINUTE) {
        format!("{}m", secs / MINUTE)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn window(v: Value) -> Result<u64, String> {
        parse(&v, MIN_WINDOW, MAX_WINDOW).map(|d| d.as_secs())
    }

    #[test]
    fn every_accepted_form() {
        assert_eq!(window(json!(60)), Ok(60));
        assert_eq!(window(json!(1)), Ok(1));
        assert_eq!(window(json!("minute")), Ok(60));
        assert_eq!(window(json!("hour")), Ok(3600));
        assert_eq!(window(json!("day")), Ok(86400));
        assert_eq!(window(json!("90s")), Ok(90));
        assert_eq!(window(json!("10m")), Ok(600));
        assert_eq!(window(json!("2h")), Ok(7200));
        assert_eq!(window(json!("1d")), Ok(86400));
        assert_eq!(window(json!("31d")), Ok(31 * 86400));
        assert_eq!(window(json!("007s")), Ok(7));
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!(60.0),
            json!("0s"),
            json!("32d"),
            json!(31 * 86400 + 1),
            json!("week"),
            json!("Hour"),
            json!("1h30m"),
            json!("10 m"),
            json!("m"),
            json!("-5m"),
            json!("+5m"),
            json!("60"),
            json!(""),
            json!("99999999999999999999999d"),
            json!(null),
            json!(true),
            json!([60]),
            json!({"secs": 60}),
        ] {
            assert!(window(bad.clone()).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn range_message_names_the_bounds() {
        let message = window(json!("32d")).unwrap_err();
        assert_eq!(message, "must be between 1s and 31d, got \"32d\"");
    }

    #[test]
    fn approval_timeouts_are_capped_at_a_day() {
        let timeout = |v: Value| parse(&v, MIN_WINDOW, MAX_APPROVAL_TIMEOUT).map(|d| d.as_secs());
        assert_eq!(timeout(json!("24h")), Ok(86400));
        assert!(timeout(json!("25h")).is_err());
        assert!(timeout(json!("2d")).is_err());
    }

    #[test]
    fn windows_print_as_people_say_them() {
        let f = |s| format_window(Duration::from_secs(s));
        assert_eq!(f(60), "minute");
        assert_eq!(f(3600), "hour");
        assert_eq!(f(86400), "day");
        assert_eq!(f(1), "1s");
        assert_eq!(f(90), "90s");
        assert_eq!(f(600), "10m");
        assert_eq!(f(7200), "2h");
        assert_eq!(f(7 * 86400), "7d");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
