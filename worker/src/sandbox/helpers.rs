//! Rust implementations behind the `$h` helpers. The prelude validates and normalises arguments and exposes only
//! its own frozen wrappers; these functions must never panic (a panic while JS values are alive aborts the process),
//! so every failure becomes a thrown JS `TypeError`.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt::{Display, Write as _};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use rquickjs::{Ctx, Exception, Function, Object};
use sha2::{Digest, Sha256};

/// Standard alphabet; decoding accepts input with or without padding, as produced by the many encoders that drop it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// State behind `Math.random`, reset before every job so no job can observe another's sequence.
#[derive(Default)]
pub(super) struct Rng {
    state: Cell<Option<u64>>,
}

impl Rng {
    pub(super) fn reset(&self) {
        self.state.set(None);
    }

    /// splitmix64 from an unpredictable seed: statistically sound and cheap; not for cryptography (neither is
    /// `Math.random`).
    fn next_f64(&self) -> f64 {
        let seed = self
            .state
            .get()
            .unwrap_or_else(|| RandomState::new().build_hasher().finish());
        let state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.state.set(Some(state));
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits fill an f64 mantissa exactly, giving a uniform value in [0, 1).
        #[allow(clippy::cast_precision_loss)]
        let unit = (z >> 11) as f64 / (1_u64 << 53) as f64;
        unit
    }
}

/// The object the prelude receives as `raw`.
pub(super) fn raw_helpers<'js>(ctx: &Ctx<'js>, rng: Rc<Rng>) -> rquickjs::Result<Object<'js>> {
    let raw = Object::new(ctx.clone())?;
    raw.set("random", Function::new(ctx.clone(), move || rng.next_f64())?)?;
    raw.set("sha256", Function::new(ctx.clone(), sha256)?)?;
    raw.set("base64Encode", Function::new(ctx.clone(), base64_encode)?)?;
    raw.set("base64Decode", Function::new(ctx.clone(), base64_decode)?)?;
    raw.set("formatMillis", Function::new(ctx.clone(), format_millis)?)?;
    raw.set("formatText", Function::new(ctx.clone(), format_text)?)?;
    raw.set("now", Function::new(ctx.clone(), now)?)?;
    #[cfg(test)]
    raw.set(
        "testSpin",
        Function::new(ctx.clone(), |ms: f64| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            std::thread::sleep(std::time::Duration::from_millis(ms as u64));
        })?,
    )?;
    Ok(raw)
}

fn sha256(text: String) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn base64_encode(text: String) -> String {
    BASE64.encode(text.as_bytes())
}

fn base64_decode<'js>(ctx: Ctx<'js>, text: String) -> rquickjs::Result<String> {
    let bytes = BASE64
        .decode(text.trim().as_bytes())
        .map_err(|e| Exception::throw_type(&ctx, &format!("$h.base64Decode: invalid base64: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|_| Exception::throw_type(&ctx, "$h.base64Decode: the decoded bytes are not UTF-8 text"))
}

fn format_millis<'js>(ctx: Ctx<'js>, millis: f64, format: Option<String>) -> rquickjs::Result<String> {
    let instant = millis_to_datetime(millis)
        .ok_or_else(|| Exception::throw_type(&ctx, "$h.formatDate: the timestamp is not a valid date"))?;
    render(&instant, format.as_deref()).map_err(|e| Exception::throw_type(&ctx, &e))
}

fn format_text<'js>(ctx: Ctx<'js>, text: String, format: Option<String>) -> rquickjs::Result<String> {
    let instant = parse_date(text.trim()).ok_or_else(|| {
        Exception::throw_type(
            &ctx,
            "$h.formatDate: expected an ISO 8601 / RFC 3339 date such as 2024-05-01T12:00:00Z",
        )
    })?;
    render(&instant, format.as_deref()).map_err(|e| Exception::throw_type(&ctx, &e))
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn millis_to_datetime(millis: f64) -> Option<DateTime<FixedOffset>> {
    // The range check keeps the float-to-integer conversion exact instead of saturating.
    if !millis.is_finite() || millis.abs() > 8.64e15 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let whole = millis.trunc() as i64;
    DateTime::from_timestamp_millis(whole).map(|d| d.fixed_offset())
}

/// Keeps the offset written in the input so `%H` shows the wall-clock time the caller wrote; inputs without an
/// offset are UTC.
fn parse_date(text: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(text) {
        return Some(d);
    }
    for layout in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, layout) {
            return Some(Utc.from_utc_datetime(&naive).fixed_offset());
        }
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?).fixed_offset())
}

fn render<Tz>(instant: &DateTime<Tz>, format: Option<&str>) -> Result<String, String>
where
    Tz: TimeZone,
    Tz::Offset: Display,
{
    let Some(format) = format else {
        return Ok(instant.to_rfc3339_opts(SecondsFormat::Millis, true));
    };
    // chrono reports a bad specifier only while formatting, through `fmt::Error`, which `to_string()` would turn
    // into a panic: validate first and write through `write!`.
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.iter().any(|item| matches!(item, Item::Error)) {
        return Err(format!("$h.formatDate: invalid format string {format:?}"));
    }
    // A short format can still expand (`%+` is 30-odd characters), and the text is built outside the memory cap.
    let mut out = Bounded::default();
    write!(out, "{}", instant.format_with_items(items.iter())).map_err(|_| {
        if out.overflowed {
            format!("$h.formatDate: the formatted date is longer than {MAX_DATE_TEXT} bytes")
        } else {
            "$h.formatDate: cannot format this date with this format".to_owned()
        }
    })?;
    Ok(out.text)
}

/// Longest text `formatDate` produces.
const MAX_DATE_TEXT: usize = 4096;

/// A `String` that refuses to grow past `MAX_DATE_TEXT`.
#[derive(Default)]
struct Bounded {
    text: String,
    overflowed: bool,
}

impl std::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.text.len() + s.len() > MAX_DATE_TEXT {
            self.overflowed = true;
            return Err(std::fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_and_render() {
        let d = parse_date("2024-05-01T12:34:56.789+02:00").unwrap();
        assert_eq!(render(&d, None).unwrap(), "2024-05-01T12:34:56.789+02:00");
        assert_eq!(render(&d, Some("%Y/%m/%d %H:%M")).unwrap(), "2024/05/01 12:34");
        let d = parse_date("2024-05-01").unwrap();
        assert_eq!(render(&d, None).unwrap(), "2024-05-01T00:00:00.000Z");
        assert!(parse_date("yesterday").is_none());
        assert!(render(&d, Some("%Q %")).is_err());
        assert_eq!(
            render(&millis_to_datetime(0.0).unwrap(), None).unwrap(),
            "1970-01-01T00:00:00.000Z"
        );
        assert!(millis_to_datetime(f64::NAN).is_none());
        assert!(millis_to_datetime(1e300).is_none());
    }

    #[test]
    fn formatted_dates_are_bounded() {
        let d = parse_date("2024-05-01").unwrap();
        let err = render(&d, Some(&"%+".repeat(200))).unwrap_err();
        assert!(err.contains("longer than 4096 bytes"), "{err}");
    }
}
