//! Where a flow's webhook reply may send a browser. A synchronous webhook
//! answers on the API's own origin, so a `respond` node that sets `Location`
//! (or `Link`) to another site turns floq into an open redirector for
//! phishing. A reply may point only to a relative, same-origin target or to
//! an origin its webhook lists in `redirect_origins`; anything else is
//! refused by the API (the caller gets `502 reply_refused`, never the header).
//!
//! Targets are resolved with the WHATWG URL parser, as a browser would, so
//! `//evil.example`, `/\evil.example` and tabs inside a path cannot pass as
//! relative. (`Refresh` is refused outright: see `FORBIDDEN_REPLY_HEADERS`.)

use url::Url;

/// Reply headers whose URLs a browser navigates to or fetches.
const URL_HEADERS: [&str; 2] = ["location", "link"];

/// Bases no reply can name: a target that resolves to a base's origin was
/// relative. Both schemes, because `https:evil.example` is relative to an
/// `https:` page but means `https://evil.example` on an `http:` one.
const SAME_ORIGIN_BASES: [&str; 2] = [
    "https://same-origin.floq.invalid/hooks/",
    "http://same-origin.floq.invalid/hooks/",
];

/// At most this many origins per webhook (the table's CHECK says the same).
pub const MAX_ORIGINS: usize = 20;

/// A webhook's allowed redirect origins, normalized (`https://app.example`,
/// lower-case host, no default port).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedirectOrigins(Vec<String>);

/// One entry of a `redirect_origins` list that is not an origin.
#[derive(Debug, PartialEq, Eq)]
pub struct BadOrigin {
    pub index: usize,
    pub message: String,
}

/// A reply header that points somewhere its webhook does not allow.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the reply's `{header}` header points to {target}, which this webhook's redirect_origins does not allow")]
pub struct Refused {
    pub header: String,
    /// The target's origin (or its scheme, for targets without one): never the whole URL.
    pub target: String,
}

impl RedirectOrigins {
    /// Parses what a flow editor sends; every bad entry is reported with its index.
    pub fn parse(raw: &[String]) -> Result<Self, Vec<BadOrigin>> {
        if raw.len() > MAX_ORIGINS {
            return Err(vec![BadOrigin {
                index: MAX_ORIGINS,
                message: format!("at most {MAX_ORIGINS} origins"),
            }]);
        }
        let mut origins = Vec::with_capacity(raw.len());
        let mut bad = Vec::new();
        for (index, entry) in raw.iter().enumerate() {
            match origin_of(entry) {
                Ok(o) if !origins.contains(&o) => origins.push(o),
                Ok(_) => {}
                Err(message) => bad.push(BadOrigin { index, message }),
            }
        }
        if bad.is_empty() { Ok(Self(origins)) } else { Err(bad) }
    }

    /// Origins as stored (already normalized by [`RedirectOrigins::parse`]).
    pub fn from_stored(origins: Vec<String>) -> Self {
        Self(origins)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether a reply may carry this header with this value.
    pub fn check(&self, name: &str, value: &str) -> Result<(), Refused> {
        if !URL_HEADERS.contains(&name) {
            return Ok(());
        }
        let targets: Vec<&str> = if name == "link" {
            link_targets(value)
        } else {
            vec![value]
        };
        for target in targets {
            if let Err(target) = self.allows(target) {
                return Err(Refused {
                    header: name.to_string(),
                    target,
                });
            }
        }
        Ok(())
    }

    /// `Err` carries the target's origin, to name in the error.
    fn allows(&self, target: &str) -> Result<(), String> {
        for base in SAME_ORIGIN_BASES {
            let base = Url::parse(base).expect("the base is a URL");
            let Ok(resolved) = base.join(target) else {
                // A browser cannot follow what it cannot parse either; refuse rather than guess.
                return Err("an unparsable URL".into());
            };
            let origin = resolved.origin();
            if origin == base.origin() {
                continue;
            }
            let shown = if origin.is_tuple() {
                origin.ascii_serialization()
            } else {
                format!("a `{}:` URL", resolved.scheme())
            };
            if !(origin.is_tuple() && self.0.contains(&shown)) {
                return Err(shown);
            }
        }
        Ok(())
    }
}

/// `https://app.example` from `https://App.Example:443/`; refuses paths, queries,
/// credentials, wildcards and schemes other than http(s).
fn origin_of(entry: &str) -> Result<String, String> {
    let url = Url::parse(entry.trim()).map_err(|_| format!("`{entry}` is not an origin like https://app.example"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{entry}` must be an http:// or https:// origin"));
    }
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    if !bare || !url.username().is_empty() || url.password().is_some() || entry.contains('*') {
        return Err(format!(
            "`{entry}` must be only scheme://host[:port] (no path, query, credentials or wildcard)"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// The `<…>` targets of a `Link` header value.
fn link_targets(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('>') else {
            // Unterminated: check the remainder as a target so nothing slips through unparsed.
            out.push(after);
            break;
        };
        out.push(&after[..end]);
        rest = &after[end + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> RedirectOrigins {
        RedirectOrigins::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn relative_targets_stay_on_the_origin_and_pass() {
        let none = RedirectOrigins::default();
        for ok in ["/thanks", "thanks?x=1", "../done#top", "?page=2", ""] {
            assert_eq!(none.check("location", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn off_origin_targets_are_refused_however_they_are_spelled() {
        let none = RedirectOrigins::default();
        for bad in [
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "HTTPS://EVIL.EXAMPLE",
            "https:evil.example",
            "https://evil.example/\u{fc}ber",
            "javascript:alert(1)",
            "data:text/html,<script>1</script>",
        ] {
            let e = none.check("location", bad).unwrap_err();
            assert_eq!(e.header, "location", "{bad}");
        }
        let e = none.check("location", "https://evil.example/login?next=x").unwrap_err();
        assert_eq!(e.target, "https://evil.example");
        assert_eq!(
            e.to_string(),
            "the reply's `location` header points to https://evil.example, which this webhook's redirect_origins does not allow"
        );
    }

    #[test]
    fn listed_origins_pass_and_only_they_do() {
        let list = allowed(&["https://App.Example:443/", "http://localhost:3000"]);
        assert_eq!(list.as_slice(), ["https://app.example", "http://localhost:3000"]);
        assert_eq!(list.check("location", "https://app.example/welcome"), Ok(()));
        assert_eq!(list.check("location", "http://localhost:3000/"), Ok(()));
        for bad in [
            "http://app.example/",
            "https://app.example:8443/",
            "https://app.example.evil.example/",
            "https://app.example@evil.example/",
        ] {
            assert!(list.check("location", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_link_target_is_checked_and_other_headers_are_not() {
        let list = allowed(&["https://cdn.example"]);
        assert_eq!(
            list.check(
                "link",
                "</style.css>; rel=preload, <https://cdn.example/a.js>; rel=preload"
            ),
            Ok(())
        );
        let e = list
            .check("link", "</ok>; rel=next, <https://evil.example/>; rel=prerender")
            .unwrap_err();
        assert_eq!(e.target, "https://evil.example");
        assert!(list.check("link", "<https://evil.example/").is_err());
        assert_eq!(list.check("x-next", "https://evil.example/"), Ok(()));
    }

    #[test]
    fn origins_that_are_not_bare_origins_are_refused_with_their_index() {
        let raw: Vec<String> = [
            "https://ok.example",
            "https://a.example/path",
            "ftp://x.example",
            "https://*.example",
            "nope",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let bad = RedirectOrigins::parse(&raw).unwrap_err();
        assert_eq!(bad.iter().map(|b| b.index).collect::<Vec<_>>(), [1, 2, 3, 4]);
        let many: Vec<String> = (0..21).map(|i| format!("https://h{i}.example")).collect();
        assert!(RedirectOrigins::parse(&many).is_err());
    }
}
