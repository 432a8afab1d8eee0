//! The text of a duration setting (`idempotency.ttl`, `lease`, `wait`, `purge_interval`), with
//! no PostgreSQL in it: what a user writes in `SET`, `ALTER ROLE ... SET`, `ALTER SYSTEM` or
//! postgresql.conf, turned into microseconds.
//!
//! Two spellings are accepted, and mixed:
//! - PostgreSQL's unit syntax, as for `statement_timeout`: `'500ms'`, `'2h'`, `'1.5 min'`;
//! - interval syntax, as in an `interval` literal: `'2 hours'`, `'1 day 12 hours'`, `'90 s'`,
//!   `'01:30:00'`, `'@ 1 hour'`.
//!
//! A bare number (`'3600'`) is in the setting's own unit, so the integer settings of earlier
//! releases keep their meaning. A month counts 30 days and a year 12 months, as the functions'
//! `interval` arguments do, so a setting and the same text passed as an argument give the same
//! length. The grammar is fixed (it does not depend on `IntervalStyle` or `DateStyle`), never
//! allocates more than the input, and never panics.

use crate::decision::Micros;

/// A unit of time, and the bare-number unit of a setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Microsecond,
    Millisecond,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    /// The unit's length in microseconds (a month is 30 days, a year 12 months).
    pub const fn micros(self) -> i128 {
        match self {
            Unit::Microsecond => 1,
            Unit::Millisecond => 1_000,
            Unit::Second => 1_000_000,
            Unit::Minute => 60_000_000,
            Unit::Hour => 3_600_000_000,
            Unit::Day => 86_400_000_000,
            Unit::Week => 7 * 86_400_000_000,
            Unit::Month => 30 * 86_400_000_000,
            Unit::Year => 12 * 30 * 86_400_000_000,
        }
    }

    /// PostgreSQL's short name of the unit, as the messages and docs show it.
    pub const fn short(self) -> &'static str {
        match self {
            Unit::Microsecond => "us",
            Unit::Millisecond => "ms",
            Unit::Second => "s",
            Unit::Minute => "min",
            Unit::Hour => "h",
            Unit::Day => "d",
            Unit::Week => "w",
            Unit::Month => "mon",
            Unit::Year => "y",
        }
    }

    /// The unit a word names, in any letter case: PostgreSQL's setting units (`us`, `ms`, `s`,
    /// `min`, `h`, `d`) and the words and abbreviations of its interval input.
    pub fn from_word(word: &str) -> Option<Unit> {
        const WORDS: &[(&str, Unit)] = &[
            ("us", Unit::Microsecond),
            ("usec", Unit::Microsecond),
            ("usecs", Unit::Microsecond),
            ("microsecond", Unit::Microsecond),
            ("microseconds", Unit::Microsecond),
            ("ms", Unit::Millisecond),
            ("msec", Unit::Millisecond),
            ("msecs", Unit::Millisecond),
            ("millisecond", Unit::Millisecond),
            ("milliseconds", Unit::Millisecond),
            ("s", Unit::Second),
            ("sec", Unit::Second),
            ("secs", Unit::Second),
            ("second", Unit::Second),
            ("seconds", Unit::Second),
            ("m", Unit::Minute),
            ("min", Unit::Minute),
            ("mins", Unit::Minute),
            ("minute", Unit::Minute),
            ("minutes", Unit::Minute),
            ("h", Unit::Hour),
            ("hr", Unit::Hour),
            ("hrs", Unit::Hour),
            ("hour", Unit::Hour),
            ("hours", Unit::Hour),
            ("d", Unit::Day),
            ("day", Unit::Day),
            ("days", Unit::Day),
            ("w", Unit::Week),
            ("week", Unit::Week),
            ("weeks", Unit::Week),
            ("mon", Unit::Month),
            ("mons", Unit::Month),
            ("month", Unit::Month),
            ("months", Unit::Month),
            ("y", Unit::Year),
            ("yr", Unit::Year),
            ("yrs", Unit::Year),
            ("year", Unit::Year),
            ("years", Unit::Year),
        ];
        WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map(|(_, u)| *u)
    }
}

/// Why a text is not a duration. `Display` gives the reason as a PostgreSQL DETAIL phrase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DurationError {
    /// Nothing but white space.
    Empty,
    /// Something that should be a number is not (the offending text).
    BadNumber(String),
    /// A word that is no unit of time.
    UnknownUnit(String),
    /// A character that has no place in a duration.
    Unexpected(String),
    /// A number without a unit next to other terms (`'1 day 2'`): only a number on its own
    /// is in the setting's unit.
    MissingUnit(String),
    /// Longer than about 292,000 years (the range of a microsecond count in 64 bits).
    OutOfRange,
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurationError::Empty => write!(f, "The value is empty."),
            DurationError::BadNumber(s) => write!(f, "\"{s}\" is not a number."),
            DurationError::UnknownUnit(s) => write!(f, "\"{s}\" is not a unit of time."),
            DurationError::Unexpected(s) => write!(f, "\"{s}\" has no place in a duration."),
            DurationError::MissingUnit(s) => write!(
                f,
                "The number \"{s}\" has no unit; only a number on its own is in the setting's unit."
            ),
            DurationError::OutOfRange => write!(f, "The duration is out of range."),
        }
    }
}

/// One lexical piece of the input.
#[derive(Debug)]
enum Token<'a> {
    Number(&'a str),
    Word(&'a str),
    Clock(&'a str),
}

fn tokens(text: &str) -> Result<Vec<Token<'_>>, DurationError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() || c == b',' {
            i += 1;
        } else if c.is_ascii_digit() || c == b'.' || c == b'-' || c == b'+' {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b':') {
                i += 1;
            }
            let s = &text[start..i];
            out.push(if s.contains(':') {
                Token::Clock(s)
            } else {
                Token::Number(s)
            });
        } else if c.is_ascii_alphabetic() {
            let start = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            out.push(Token::Word(&text[start..i]));
        } else if c == b'@' && out.is_empty() {
            // PostgreSQL's verbose interval output starts with "@ ".
            i += 1;
        } else {
            // A character that belongs to no token: report the rest of its word.
            let start = i;
            let mut end = i + text[i..].chars().next().map_or(1, char::len_utf8);
            while end < b.len() && !b[end].is_ascii_whitespace() {
                end += 1;
            }
            return Err(DurationError::Unexpected(text[start..end].to_owned()));
        }
    }
    Ok(out)
}

/// A decimal number (optional sign, digits, optional fraction) times `unit`, in microseconds,
/// rounded to the nearest microsecond (halves away from zero).
fn scaled(number: &str, unit: i128) -> Result<i128, DurationError> {
    let bad = || DurationError::BadNumber(number.to_owned());
    let (negative, digits) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    // More digits than any duration in range can need are refused, not silently cut.
    let int = int.trim_start_matches('0');
    if int.len() > 20 {
        return Err(DurationError::OutOfRange);
    }
    let whole: i128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let mut value = whole.checked_mul(unit).ok_or(DurationError::OutOfRange)?;
    // The fraction: digit by digit, keeping the remainder exact, then round once.
    let mut num: i128 = 0;
    let mut den: i128 = 1;
    for d in frac.bytes().take(24) {
        num = num * 10 + i128::from(d - b'0');
        den *= 10;
    }
    let part = num * unit;
    let (q, r) = (part / den, part % den);
    value += q + i128::from(2 * r >= den);
    Ok(if negative { -value } else { value })
}

/// `H:MM`, `H:MM:SS` or `H:MM:SS.frac`, optionally signed, in microseconds.
fn clock(s: &str) -> Result<i128, DurationError> {
    let bad = || DurationError::BadNumber(s.to_owned());
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let parts: Vec<&str> = body.split(':').collect();
    if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    let mut total = 0i128;
    for (part, unit) in parts.iter().zip([Unit::Hour, Unit::Minute, Unit::Second]) {
        if part.starts_with(['-', '+']) || (unit != Unit::Second && part.contains('.')) {
            return Err(bad());
        }
        // Minutes and seconds are two digits below 60, as in a time of day.
        if unit != Unit::Hour
            && part
                .split('.')
                .next()
                .is_none_or(|w| w.len() != 2 || w > "59")
        {
            return Err(bad());
        }
        total = total
            .checked_add(scaled(part, unit.micros())?)
            .ok_or(DurationError::OutOfRange)?;
    }
    Ok(if negative { -total } else { total })
}

/// Parses a duration setting's text; `bare` is the unit of a number written on its own.
pub fn parse(text: &str, bare: Unit) -> Result<Micros, DurationError> {
    let toks = tokens(text)?;
    let total: i128 = match toks.as_slice() {
        [] => return Err(DurationError::Empty),
        [Token::Number(n)] => scaled(n, bare.micros())?,
        _ => {
            let mut total = 0i128;
            let mut it = toks.iter().peekable();
            while let Some(t) = it.next() {
                let term = match t {
                    Token::Clock(c) => clock(c)?,
                    // A word where a number belongs.
                    Token::Word(w) => return Err(DurationError::BadNumber(w.to_string())),
                    Token::Number(n) => match it.next() {
                        Some(Token::Word(w)) => {
                            let unit = Unit::from_word(w)
                                .ok_or_else(|| DurationError::UnknownUnit(w.to_string()))?;
                            scaled(n, unit.micros())?
                        }
                        _ => return Err(DurationError::MissingUnit(n.to_string())),
                    },
                };
                total = total.checked_add(term).ok_or(DurationError::OutOfRange)?;
                if total.abs() > i128::from(i64::MAX) {
                    return Err(DurationError::OutOfRange);
                }
            }
            total
        }
    };
    Micros::try_from(total).map_err(|_| DurationError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1_000_000;

    fn ok(text: &str, bare: Unit) -> i64 {
        parse(text, bare).unwrap_or_else(|e| panic!("{text:?}: {e:?}"))
    }

    #[test]
    fn accepts_interval_syntax() {
        assert_eq!(ok("2 hours", Unit::Second), 2 * 3600 * S);
        assert_eq!(ok("1 day", Unit::Second), 86_400 * S);
        assert_eq!(ok("90 s", Unit::Second), 90 * S);
        assert_eq!(ok("1 day 12 hours", Unit::Second), 36 * 3600 * S);
        assert_eq!(ok("1 hour 30 minutes", Unit::Second), 5400 * S);
        assert_eq!(ok("@ 1 hour", Unit::Second), 3600 * S);
        assert_eq!(ok("01:30:00", Unit::Second), 5400 * S);
        assert_eq!(ok("1:30", Unit::Second), 5400 * S);
        assert_eq!(ok("00:00:01.5", Unit::Second), 1_500_000);
        assert_eq!(ok("-0:30", Unit::Second), -1800 * S);
        assert_eq!(ok("1 week", Unit::Second), 7 * 86_400 * S);
        assert_eq!(ok("1 mon", Unit::Second), 30 * 86_400 * S);
        assert_eq!(ok("1 year", Unit::Second), 360 * 86_400 * S);
        assert_eq!(ok("1 day -1 hour", Unit::Second), 23 * 3600 * S);
        assert_eq!(ok("  2 HOURS ", Unit::Second), 2 * 3600 * S);
        assert_eq!(ok("1 day, 2 hours", Unit::Second), 26 * 3600 * S);
    }

    #[test]
    fn accepts_unit_syntax() {
        assert_eq!(ok("500ms", Unit::Second), 500_000);
        assert_eq!(ok("2h", Unit::Second), 7200 * S);
        assert_eq!(ok("30min", Unit::Second), 1800 * S);
        assert_eq!(ok("1d", Unit::Second), 86_400 * S);
        assert_eq!(ok("1.5h", Unit::Second), 5400 * S);
        assert_eq!(ok("10us", Unit::Second), 10);
        assert_eq!(ok("1h30min", Unit::Second), 5400 * S);
        assert_eq!(ok(".5 s", Unit::Second), 500_000);
    }

    #[test]
    fn bare_number_is_in_the_settings_unit() {
        assert_eq!(ok("3600", Unit::Second), 3600 * S);
        assert_eq!(ok("3600", Unit::Millisecond), 3_600_000);
        assert_eq!(ok("0", Unit::Millisecond), 0);
        assert_eq!(ok("-5", Unit::Second), -5 * S);
        assert_eq!(ok("1.5", Unit::Second), 1_500_000);
        assert_eq!(ok("0.0004", Unit::Millisecond), 0);
        assert_eq!(ok("0.0005", Unit::Millisecond), 1);
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        use DurationError::*;
        assert_eq!(parse("", Unit::Second), Err(Empty));
        assert_eq!(parse("   ", Unit::Second), Err(Empty));
        assert_eq!(
            parse("2 hourz", Unit::Second),
            Err(UnknownUnit("hourz".into()))
        );
        assert_eq!(
            parse("2 hours ago", Unit::Second),
            Err(BadNumber("ago".into()))
        );
        assert_eq!(
            parse("two hours", Unit::Second),
            Err(BadNumber("two".into()))
        );
        assert_eq!(parse("hours", Unit::Second), Err(BadNumber("hours".into())));
        assert_eq!(parse("1 day 2", Unit::Second), Err(MissingUnit("2".into())));
        assert_eq!(parse("1..5 s", Unit::Second), Err(BadNumber("1..5".into())));
        assert_eq!(parse("- s", Unit::Second), Err(BadNumber("-".into())));
        assert_eq!(parse("P1D", Unit::Second), Err(BadNumber("P".into())));
        assert_eq!(
            parse("1 h; DROP", Unit::Second),
            Err(Unexpected(";".into()))
        );
        assert_eq!(parse("1 €", Unit::Second), Err(Unexpected("€".into())));
        assert_eq!(
            parse("1:60:99:00", Unit::Second),
            Err(BadNumber("1:60:99:00".into()))
        );
        assert_eq!(parse("1:123", Unit::Second), Err(BadNumber("1:123".into())));
        assert_eq!(parse("1:60", Unit::Second), Err(BadNumber("1:60".into())));
        assert_eq!(parse("1:5", Unit::Second), Err(BadNumber("1:5".into())));
        assert_eq!(parse("300000 years", Unit::Second), Err(OutOfRange));
        assert_eq!(
            parse("99999999999999999999999999 s", Unit::Second),
            Err(OutOfRange)
        );
        assert_eq!(
            parse("9223372036854775807 s", Unit::Second),
            Err(OutOfRange)
        );
        assert_eq!(ok("9223372036854775807 us", Unit::Second), i64::MAX);
    }

    fn units() -> impl Strategy<Value = (Unit, &'static str)> {
        prop::sample::select(vec![
            (Unit::Microsecond, "us"),
            (Unit::Millisecond, "ms"),
            (Unit::Millisecond, "milliseconds"),
            (Unit::Second, "s"),
            (Unit::Second, "seconds"),
            (Unit::Minute, "min"),
            (Unit::Minute, "minutes"),
            (Unit::Hour, "h"),
            (Unit::Hour, "hours"),
            (Unit::Day, "d"),
            (Unit::Day, "days"),
            (Unit::Week, "weeks"),
            (Unit::Month, "mons"),
            (Unit::Year, "years"),
        ])
    }

    proptest! {
        /// `N unit`, with or without a space, in any letter case, is N times the unit.
        #[test]
        fn a_term_is_its_number_times_its_unit(n in 0i64..100_000, (unit, word) in units(),
                                                space in prop::bool::ANY, upper in prop::bool::ANY) {
            let word = if upper { word.to_uppercase() } else { word.to_owned() };
            let text = format!("{n}{}{word}", if space { " " } else { "" });
            prop_assert_eq!(parse(&text, Unit::Second), Ok(i64::try_from(i128::from(n) * unit.micros()).unwrap()));
        }

        /// Terms add up, in any order.
        #[test]
        fn terms_add_up(terms in prop::collection::vec((0i64..1000, units()), 1..5)) {
            let text: Vec<String> = terms.iter().map(|(n, (_, w))| format!("{n} {w}")).collect();
            let want: i128 = terms.iter().map(|(n, (u, _))| i128::from(*n) * u.micros()).sum();
            prop_assert_eq!(parse(&text.join(" "), Unit::Second), Ok(want as i64));
            let mut reversed = text.clone();
            reversed.reverse();
            prop_assert_eq!(parse(&reversed.join(" "), Unit::Second), Ok(want as i64));
        }

        /// A bare number is in the setting's unit; with an explicit unit the setting's unit
        /// does not matter.
        #[test]
        fn bare_numbers_take_the_settings_unit(n in 0i64..100_000, (unit, word) in units()) {
            prop_assert_eq!(parse(&n.to_string(), unit), Ok(i64::try_from(i128::from(n) * unit.micros()).unwrap()));
            let with = format!("{n} {word}");
            prop_assert_eq!(parse(&with, Unit::Second), parse(&with, Unit::Millisecond));
        }

        /// Fractions are rounded to the nearest microsecond.
        #[test]
        fn fractions_round_to_the_microsecond(whole in 0i64..1000, frac in 0u32..1_000_000) {
            let text = format!("{whole}.{frac:06} s");
            prop_assert_eq!(parse(&text, Unit::Second), Ok(whole * S + i64::from(frac)));
            let ms = format!("{whole}.{frac:06}ms");
            let micros = i128::from(whole) * 1000 + (i128::from(frac) * 1000 + 500_000) / 1_000_000;
            prop_assert_eq!(parse(&ms, Unit::Second), Ok(micros as i64));
        }

        /// H:MM:SS equals the same hours, minutes and seconds written out.
        #[test]
        fn clock_equals_terms(h in 0i64..1000, m in 0i64..60, s in 0i64..60) {
            prop_assert_eq!(
                parse(&format!("{h}:{m:02}:{s:02}"), Unit::Second),
                parse(&format!("{h} hours {m} minutes {s} seconds"), Unit::Second)
            );
        }

        /// Any text at all: an answer, never a panic; and what is accepted is within range.
        #[test]
        fn never_panics(text in ".{0,40}") {
            let _ = parse(&text, Unit::Second);
        }

        #[test]
        fn never_panics_on_near_misses(text in "[-+0-9 .:@,a-zA-Z]{0,30}") {
            let _ = parse(&text, Unit::Millisecond);
        }
    }
}
