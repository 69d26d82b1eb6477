//! Reading a reset time off a rate-limit message: "resets 3pm", "try again in 5 minutes",
//! "limit reached|1767225600", "2026-11-28T15:00:00Z" and the like, as Unix seconds.
//!
//! The parser sees only the few lines around a rate-limit match (the classifier picks them), so it
//! can afford to be liberal about where in the text a form appears; each form still insists on a
//! shape that ordinary prose rarely has (a keyword before a clock time, a unit after a number).
//! Time-zone names such as "(Europe/Berlin)" are ignored: the caller's UTC offset is used for every
//! wall-clock form that carries no explicit offset.

use std::sync::LazyLock;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime};
use regex::{Captures, Regex};

const DAY: i64 = 86_400;

/// The reset time named in `text`, as Unix seconds, or `None` when the text names none.
///
/// Forms, tried in this order:
/// 1. an epoch timestamp: `limit reached|1767225600`, `reset_at=1767225600`;
/// 2. ISO 8601: `2026-11-28T15:00:00Z` (no offset: local time at `utc_offset_secs`);
/// 3. a date after a keyword: `resets Feb 17 at 2pm`, `try again at Jul 22nd, 2026 10:42 AM`
///    (no year: the occurrence nearest to `now`, which may lie in the past);
/// 4. a duration after "in" or "after": `in 5 minutes`, `in 20s`, `in 1h 30m`,
///    `after 2h13m54s`, `retry after 120 seconds` (`now` + duration, fractions rounded up), or
///    an HTTP header `retry-after: 120` (seconds);
/// 5. a clock time after a keyword: `resets 3pm`, `reset at 15:00`, `try again at 3:05 PM`
///    (the next occurrence after `now`, so always in `(now, now + 24h]`).
///
/// Never panics, whatever the input; arithmetic that would overflow yields `None`.
pub fn parse_reset(text: &str, now: i64, utc_offset_secs: i32) -> Option<i64> {
    let offset = i64::from(utc_offset_secs);
    epoch(text)
        .or_else(|| iso(text, offset))
        .or_else(|| after_keyword(text, |rest| dated(rest, now, offset)))
        .or_else(|| relative(text, now))
        .or_else(|| retry_after(text, now))
        .or_else(|| after_keyword(text, |rest| clock(rest, now, offset)))
}

// === epoch ===

static EPOCH: LazyLock<Option<Regex>> =
    LazyLock::new(|| compile(r#"(?i)(?:\||\breset(?:s)?(?:_?at)?"?\s*[=:]\s*"?)(\d{10,11})\b"#));

fn epoch(text: &str) -> Option<i64> {
    let caps = EPOCH.as_ref()?.captures(text)?;
    caps.get(1)?.as_str().parse().ok()
}

// === ISO 8601 ===

static ISO: LazyLock<Option<Regex>> = LazyLock::new(|| {
    compile(
        r"\b(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?(?:\.\d{1,9})?)\s*(Z|[+-]\d{2}:?\d{2})?",
    )
});

fn iso(text: &str, offset: i64) -> Option<i64> {
    let caps = ISO.as_ref()?.captures(text)?;
    let date = caps.get(1)?.as_str();
    let time = caps.get(2)?.as_str();
    match caps.get(3) {
        Some(zone) => {
            let zone = zone.as_str();
            let zone = if zone == "Z" {
                "+00:00".to_owned()
            } else if zone.contains(':') {
                zone.to_owned()
            } else {
                // "+0100" -> "+01:00"
                format!("{}:{}", zone.get(..3)?, zone.get(3..)?)
            };
            let time = if time.len() == 5 {
                format!("{time}:00")
            } else {
                time.to_owned()
            };
            DateTime::parse_from_rfc3339(&format!("{date}T{time}{zone}"))
                .ok()
                .map(|t| t.timestamp())
        }
        None => {
            let local =
                NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S%.f")
                    .or_else(|_| {
                        NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M")
                    })
                    .ok()?;
            local.and_utc().timestamp().checked_sub(offset)
        }
    }
}

// === keyword + date or clock time ===

/// Words after which a wall-clock reset time follows: "resets 3pm", "try again at 3:05 PM",
/// "available again at 15:00", "until 9am", "retry at 4pm". An "at" or "on" after the keyword is
/// part of the match.
static KEYWORD: LazyLock<Option<Regex>> = LazyLock::new(|| {
    compile(r"(?i)\b(?:resets?|again|available|until|retry)\b(?:\s+(?:at|on)\b)?\s*")
});

/// Runs `parse` on the text after each keyword, first success wins.
fn after_keyword(text: &str, parse: impl Fn(&str) -> Option<i64>) -> Option<i64> {
    KEYWORD
        .as_ref()?
        .find_iter(text)
        .find_map(|m| text.get(m.end()..).and_then(&parse))
}

static CLOCK: LazyLock<Option<Regex>> =
    LazyLock::new(|| compile(r"(?i)^(\d{1,2})(?::(\d{2}))?\s*([ap])?(?:\.?m\b\.?)?"));

static DATED: LazyLock<Option<Regex>> = LazyLock::new(|| {
    compile(
        r"(?ix)^
        (jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+
        (\d{1,2})(?:st|nd|rd|th)?\b
        (?:,?\s+(\d{4})\b)?
        (?:,?\s+(?:at\s+)?(\d{1,2}(?::\d{2})?\s*(?:[ap]\.?m\b\.?)?))?",
    )
});

/// Hour and minute of a clock time at the start of `text`: "3pm", "3:30 PM", "15:00", "12am".
/// A bare number ("resets 5 hours") is not a clock time: it needs minutes or am/pm.
fn clock_parts(text: &str) -> Option<(u32, u32)> {
    let caps = CLOCK.as_ref()?.captures(text)?;
    let hour: u32 = caps.get(1)?.as_str().parse().ok()?;
    let minute: u32 = match caps.get(2) {
        Some(m) => m.as_str().parse().ok()?,
        None => 0,
    };
    let meridiem = meridiem(&caps);
    if caps.get(2).is_none() && meridiem.is_none() {
        return None;
    }
    if minute > 59 {
        return None;
    }
    let hour = match meridiem {
        Some(pm) => {
            if !(1..=12).contains(&hour) {
                return None;
            }
            (hour % 12) + if pm { 12 } else { 0 }
        }
        None if hour <= 23 => hour,
        None => return None,
    };
    Some((hour, minute))
}

/// `Some(true)` for pm, `Some(false)` for am, `None` when the time has neither.
fn meridiem(caps: &Captures<'_>) -> Option<bool> {
    let letter = caps.get(3)?.as_str();
    // "3 a" without the "m" is no meridiem: the whole match must reach past the letter.
    let whole = caps.get(0)?;
    let after_letter = caps.get(3)?.end();
    if whole.end() <= after_letter {
        return None;
    }
    Some(letter.eq_ignore_ascii_case("p"))
}

/// The next occurrence after `now` of the clock time at the start of `text`.
fn clock(text: &str, now: i64, offset: i64) -> Option<i64> {
    let (hour, minute) = clock_parts(text)?;
    let local_now = now.checked_add(offset)?;
    let midnight = local_now.checked_sub(local_now.rem_euclid(DAY))?;
    let seconds = i64::from(hour * 3600 + minute * 60);
    let mut at = midnight.checked_add(seconds)?.checked_sub(offset)?;
    if at <= now {
        at = at.checked_add(DAY)?;
    }
    Some(at)
}

/// A month-day date (optionally with year and clock time) at the start of `text`.
fn dated(text: &str, now: i64, offset: i64) -> Option<i64> {
    let caps = DATED.as_ref()?.captures(text)?;
    let month = month_number(caps.get(1)?.as_str())?;
    let day: u32 = caps.get(2)?.as_str().parse().ok()?;
    let (hour, minute) = match caps.get(4) {
        Some(t) => clock_parts(t.as_str())?,
        None => (0, 0),
    };
    let at_year = |year: i32| -> Option<i64> {
        let local = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(hour, minute, 0)?;
        local.and_utc().timestamp().checked_sub(offset)
    };
    if let Some(year) = caps.get(3) {
        return at_year(year.as_str().parse().ok()?);
    }
    // No year: the first occurrence from a week ago on. A limit message still on screen after
    // its reset names a time just past, not one a year ahead; anything older is next year's.
    let this_year = DateTime::from_timestamp(now.checked_add(offset)?, 0)?.year();
    let earliest = now.checked_sub(7 * DAY)?;
    [this_year - 1, this_year, this_year + 1]
        .into_iter()
        .filter_map(at_year)
        .find(|t| *t >= earliest)
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let key = name.get(..3)?.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == key)
        .and_then(|i| u32::try_from(i + 1).ok())
}

// === relative durations ===

static RETRY_AFTER: LazyLock<Option<Regex>> =
    LazyLock::new(|| compile(r"(?i)\bretry-after:\s*(\d{1,9})\b"));

/// `now` + the seconds of a `retry-after:` header.
fn retry_after(text: &str, now: i64) -> Option<i64> {
    let caps = RETRY_AFTER.as_ref()?.captures(text)?;
    let secs: i64 = caps.get(1)?.as_str().parse().ok()?;
    now.checked_add(secs)
}

static RELATIVE: LazyLock<Option<Regex>> = LazyLock::new(|| compile(r"(?i)\b(?:in|after)\s+"));

/// `now` + the first duration that follows an "in" or "after".
fn relative(text: &str, now: i64) -> Option<i64> {
    RELATIVE
        .as_ref()?
        .find_iter(text)
        .find_map(|m| text.get(m.end()..).and_then(duration_secs))
        .and_then(|secs| now.checked_add(secs))
}

/// Seconds of a duration at the start of `text`: one or more `<number> <unit>` parts, separated
/// by nothing, spaces, commas or "and" ("1h 30m", "2h13m54s", "1 hour and 13 minutes").
/// Fractions are rounded up, so "in 0.2 seconds" is one second.
fn duration_secs(text: &str) -> Option<i64> {
    let mut rest = text;
    let mut total_millis: i64 = 0;
    let mut parts = 0;
    loop {
        let (number, after_number) = number_millis(rest)?;
        let after_space = after_number.trim_start();
        let unit_len = after_space
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after_space.len());
        let (unit, after_unit) = after_space.split_at(unit_len);
        let Some(unit_secs) = unit_seconds(unit) else {
            break;
        };
        total_millis = total_millis.checked_add(number.checked_mul(unit_secs)?)?;
        parts += 1;
        rest = skip_separator(after_unit);
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            break;
        }
    }
    if parts == 0 {
        return None;
    }
    Some(total_millis.checked_add(999)? / 1000)
}

/// A decimal number at the start of `text`, times 1000 (so "0.25" is 250), and the rest.
fn number_millis(text: &str) -> Option<(i64, &str)> {
    let int_len = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if int_len == 0 || int_len > 9 {
        return None;
    }
    let (int, rest) = text.split_at(int_len);
    let mut millis: i64 = int.parse::<i64>().ok()?.checked_mul(1000)?;
    let mut rest = rest;
    if let Some(frac) = rest.strip_prefix('.') {
        let frac_len = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if frac_len > 0 {
            let digits: String = frac.chars().take(frac_len.min(3)).collect();
            let scale = 10_i64.pow(3 - u32::try_from(digits.len()).ok()?);
            millis = millis.checked_add(digits.parse::<i64>().ok()?.checked_mul(scale)?)?;
            rest = frac.get(frac_len..)?;
        }
    }
    Some((millis, rest))
}

/// Seconds per unit ("m" is minutes: nobody waits milliseconds for a rate limit).
fn unit_seconds(unit: &str) -> Option<i64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => DAY,
        _ => return None,
    })
}

fn skip_separator(text: &str) -> &str {
    let text = text.trim_start_matches([' ', ',']);
    match text.strip_prefix("and ") {
        Some(rest) => rest.trim_start(),
        None => text,
    }
}

/// Compiles one of this module's fixed patterns. A pattern that does not compile turns its form
/// off instead of panicking; `fixed_patterns_compile` catches that in every test run.
fn compile(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-03-10T13:20:00Z, a Tuesday.
    const NOW: i64 = 1_773_148_800;
    const BERLIN: i32 = 3600;

    /// Unix seconds of a UTC date and time.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
            .and_utc()
            .timestamp()
    }

    #[test]
    fn fixed_patterns_compile() {
        assert!(EPOCH.is_some());
        assert!(ISO.is_some());
        assert!(KEYWORD.is_some());
        assert!(CLOCK.is_some());
        assert!(DATED.is_some());
        assert!(RELATIVE.is_some());
        assert!(RETRY_AFTER.is_some());
    }

    #[test]
    fn now_constant_is_what_the_comment_says() {
        assert_eq!(NOW, utc(2026, 3, 10, 13, 20));
    }

    #[test]
    fn wall_clock_forms() {
        // Local time in Berlin is 14:20.
        let p = |s: &str| parse_reset(s, NOW, BERLIN);
        assert_eq!(
            p("5-hour limit reached ∙ resets 3pm"),
            Some(utc(2026, 3, 10, 14, 0))
        );
        assert_eq!(p("resets at 3:30 PM"), Some(utc(2026, 3, 10, 14, 30)));
        assert_eq!(
            p("Your limit will reset at 15:00"),
            Some(utc(2026, 3, 10, 14, 0))
        );
        assert_eq!(
            p("You've hit your session limit · resets 3pm (Europe/Berlin)"),
            Some(utc(2026, 3, 10, 14, 0))
        );
        // Already past today: tomorrow.
        assert_eq!(p("resets 9am"), Some(utc(2026, 3, 11, 8, 0)));
        assert_eq!(p("try again at 2:20 PM."), Some(utc(2026, 3, 11, 13, 20)));
        assert_eq!(p("resets 12am"), Some(utc(2026, 3, 10, 23, 0)));
        assert_eq!(p("resets 12pm"), Some(utc(2026, 3, 11, 11, 0)));
        assert_eq!(
            p("resets at 03:42 · /status"),
            Some(utc(2026, 3, 11, 2, 42))
        );
        assert_eq!(p("resets 8:50p.m."), Some(utc(2026, 3, 10, 19, 50)));
    }

    #[test]
    fn wall_clock_uses_the_given_offset() {
        // 3pm in UTC-5 is 20:00 UTC.
        assert_eq!(
            parse_reset("resets 3pm (America/New_York)", NOW, -5 * 3600),
            Some(utc(2026, 3, 10, 20, 0))
        );
        // Local time in Tokyo is 22:20; 9pm has passed, so tomorrow 21:00 JST = 12:00 UTC.
        assert_eq!(
            parse_reset("resets 9pm (Asia/Tokyo)", NOW, 9 * 3600),
            Some(utc(2026, 3, 11, 12, 0))
        );
    }

    #[test]
    fn dated_forms() {
        let p = |s: &str| parse_reset(s, NOW, BERLIN);
        assert_eq!(
            p("You've hit your limit · resets Mar 17 at 2pm (Europe/Berlin)"),
            Some(utc(2026, 3, 17, 13, 0))
        );
        assert_eq!(
            p("Upgrade to Plus to continue using Codex, or try again at Jul 22nd, 2026 10:42 AM."),
            Some(utc(2026, 7, 22, 9, 42))
        );
        assert_eq!(
            p("or try again at Sep 19th, 2026 7:10 AM."),
            Some(utc(2026, 9, 19, 6, 10))
        );
        // No year, date just past: the past occurrence, not one a year ahead.
        assert_eq!(p("resets Mar 9 at 2pm"), Some(utc(2026, 3, 9, 13, 0)));
        // No year, around new year: next January.
        assert_eq!(
            parse_reset("resets Jan 2 at 1am", utc(2026, 12, 30, 12, 0), 0),
            Some(utc(2027, 1, 2, 1, 0))
        );
        assert_eq!(p("resets on November 28"), Some(utc(2026, 11, 27, 23, 0)));
    }

    #[test]
    fn relative_forms() {
        let p = |s: &str| parse_reset(s, NOW, BERLIN);
        assert_eq!(p("try again in 5 minutes"), Some(NOW + 300));
        assert_eq!(p("Please try again in 20s."), Some(NOW + 20));
        assert_eq!(p("resets in 1h 30m"), Some(NOW + 5400));
        assert_eq!(p("retry after 120 seconds"), Some(NOW + 120));
        assert_eq!(p("Your quota will reset after 2h13m54s."), Some(NOW + 8034));
        assert_eq!(p("or try again in 1 hour 13 minutes."), Some(NOW + 4380));
        assert_eq!(
            p("try again in 2 days 3 hours 5 minutes"),
            Some(NOW + 2 * DAY + 3 * 3600 + 300)
        );
        assert_eq!(p("in 1 hour and 13 minutes"), Some(NOW + 4380));
        assert_eq!(p("Retrying in 0.2 seconds..."), Some(NOW + 1));
        assert_eq!(p("Please try again in 2.5s"), Some(NOW + 3));
        assert_eq!(p("HTTP/2 429 retry-after: 120 date: Tue"), Some(NOW + 120));
        assert_eq!(p("resets in 4hr 29min"), Some(NOW + 4 * 3600 + 29 * 60));
    }

    #[test]
    fn epoch_and_iso_forms() {
        let p = |s: &str| parse_reset(s, NOW, BERLIN);
        assert_eq!(
            p("Claude AI usage limit reached|1767225600"),
            Some(1_767_225_600)
        );
        assert_eq!(p("reset_at=1767225600"), Some(1_767_225_600));
        assert_eq!(p(r#"{"resets_at": 1767225600}"#), Some(1_767_225_600));
        assert_eq!(
            p("resets 2026-11-28T15:00:00Z"),
            Some(utc(2026, 11, 28, 15, 0))
        );
        assert_eq!(
            p("until 2026-11-28T15:00:00+01:00"),
            Some(utc(2026, 11, 28, 14, 0))
        );
        assert_eq!(p("until 2026-11-28 15:00"), Some(utc(2026, 11, 28, 14, 0)));
        assert_eq!(
            p("at 2026-11-28T15:00+0100"),
            Some(utc(2026, 11, 28, 14, 0))
        );
    }

    #[test]
    fn texts_without_a_reset_time() {
        let p = |s: &str| parse_reset(s, NOW, BERLIN);
        assert_eq!(p("Limits reset every 5h and every week."), None);
        assert_eq!(p("You've hit your usage limit. Try again later."), None);
        assert_eq!(p("resets 5 hours"), None);
        assert_eq!(p("in 3 files"), None);
        assert_eq!(p("resets 25:00"), None);
        assert_eq!(p("resets 13pm"), None);
        assert_eq!(p("resets at 3:75 PM"), None);
        assert_eq!(p("in 2026"), None);
        assert_eq!(p(""), None);
    }

    proptest! {
        #[test]
        fn relative_durations_add_to_now(
            now in 0_i64..4_000_000_000,
            h in 0_i64..100,
            m in 0_i64..60,
            s in 0_i64..60,
            spaced in any::<bool>(),
        ) {
            prop_assume!(h + m + s > 0);
            let mut parts = Vec::new();
            if h > 0 { parts.push(format!("{h}h")); }
            if m > 0 { parts.push(format!("{m}m")); }
            if s > 0 { parts.push(format!("{s}s")); }
            let text = format!("Please try again in {}.", parts.join(if spaced { " " } else { "" }));
            prop_assert_eq!(parse_reset(&text, now, 0), Some(now + h * 3600 + m * 60 + s));
        }

        #[test]
        fn relative_words_add_to_now(now in 0_i64..4_000_000_000, n in 1_i64..10_000, unit in 0_usize..4) {
            let (word, secs) = [("seconds", 1), ("minutes", 60), ("hours", 3600), ("days", DAY)][unit];
            let text = format!("retry after {n} {word}");
            prop_assert_eq!(parse_reset(&text, now, 3600), Some(now + n * secs));
        }

        #[test]
        fn wall_clock_is_within_a_day(
            now in 0_i64..4_000_000_000,
            offset in -14 * 3600_i32..=14 * 3600,
            hour in 0_u32..24,
            minute in 0_u32..60,
            twelve_hour in any::<bool>(),
        ) {
            let text = if twelve_hour {
                let h12 = if hour % 12 == 0 { 12 } else { hour % 12 };
                format!("resets {h12}:{minute:02}{}", if hour < 12 { "am" } else { "pm" })
            } else {
                format!("reset at {hour}:{minute:02}")
            };
            let at = parse_reset(&text, now, offset);
            prop_assert!(at.is_some(), "{} gave none", text);
            let at = at.unwrap_or_default();
            prop_assert!(at > now && at <= now + DAY, "{} -> {} not in (now, now+24h]", text, at);
            // And it is that clock time locally.
            let local = (at + i64::from(offset)).rem_euclid(DAY);
            prop_assert_eq!(local, i64::from(hour * 3600 + minute * 60));
        }

        #[test]
        fn never_panics(text in any::<String>(), now in any::<i64>(), offset in any::<i32>()) {
            let _ = parse_reset(&text, now, offset);
        }

        #[test]
        fn never_panics_on_near_misses(
            text in r"(resets?|again|in|after|until|\||reset_at=)? ?[0-9:.apm ,hdsJanFebSepth]{0,30}",
            now in any::<i64>(),
            offset in any::<i32>(),
        ) {
            let _ = parse_reset(&text, now, offset);
        }
    }
}
