//! `$h`: the pure helpers scripts get — hashing, base64, date formatting.
//! Implemented in Rust; each returns a JavaScript error for bad input and
//! never panics (a panic with JavaScript values alive would abort the worker).

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use rquickjs::{Ctx, Exception, Function, Object, Value};
use sha2::{Digest, Sha256};

pub fn object<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
    let h = Object::new(ctx.clone())?;
    h.set(
        "sha256",
        Function::new(ctx.clone(), |text: String| hex::encode(Sha256::digest(text.as_bytes())))?,
    )?;
    h.set(
        "base64Encode",
        Function::new(ctx.clone(), |text: String| {
            base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
        })?,
    )?;
    h.set(
        "base64Decode",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, text: String| -> rquickjs::Result<String> {
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| Exception::throw_type(&ctx, "base64Decode: not base64 of UTF-8 text"))
        })?,
    )?;
    h.set(
        "formatDate",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, when: Value<'js>, format: rquickjs::function::Opt<String>| -> rquickjs::Result<String> {
                let at = instant(&when).ok_or_else(|| {
                    Exception::throw_type(
                        &ctx,
                        "formatDate: expects an ISO 8601 string or milliseconds since 1970",
                    )
                })?;
                match format.0 {
                    None => Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    Some(f) => {
                        use std::fmt::Write;
                        let mut out = String::new();
                        // chrono reports a bad format through fmt::Error rather than panicking when written like this.
                        write!(out, "{}", at.format(&f))
                            .map(|_| out)
                            .map_err(|_| Exception::throw_type(&ctx, "formatDate: invalid format"))
                    }
                }
            },
        )?,
    )?;
    h.set(
        "now",
        Function::new(ctx.clone(), || {
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })?,
    )?;
    Ok(h)
}

fn instant(v: &Value<'_>) -> Option<DateTime<Utc>> {
    if let Some(ms) = v.as_number() {
        return (ms.is_finite())
            .then(|| Utc.timestamp_millis_opt(ms as i64).single())
            .flatten();
    }
    let text = v.as_string()?.to_string().ok()?;
    DateTime::parse_from_rfc3339(&text).ok().map(|d| d.with_timezone(&Utc))
}
