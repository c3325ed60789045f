//! Origins, the unit of destination binding: `https://api.example.com`,
//! `http://127.0.0.1:8080`, `postgres://db.example.com:5432`,
//! `smtps://mail.example.com:465`. HTTP origins omit their default port (as
//! browsers write them); the others always carry one.

/// Normalizes one origin as an operator or admin writes it.
pub fn parse(raw: &str) -> Result<String, String> {
    let bad = || format!("`{raw}` is not an origin like https://api.example.com (no path, query or user)");
    let url = url::Url::parse(raw.trim()).map_err(|_| bad())?;
    let plain = url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && matches!(url.path(), "" | "/");
    if !plain || url.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    of_url(&url).ok_or_else(bad)
}

/// The origin a connection to `url` goes to; `None` for schemes floq never sends secrets over.
pub fn of_url(url: &url::Url) -> Option<String> {
    let host = url.host_str()?.to_ascii_lowercase();
    match url.scheme() {
        "http" | "https" => Some(url.origin().ascii_serialization()),
        scheme => {
            let (scheme, default_port) = match scheme {
                "postgres" | "postgresql" => ("postgres", 5432),
                "smtp" => ("smtp", 25),
                "smtps" => ("smtps", 465),
                "smtp+starttls" => ("smtp+starttls", 587),
                _ => return None,
            };
            Some(format!("{scheme}://{host}:{}", url.port().unwrap_or(default_port)))
        }
    }
}

/// The origin of a connection URI (a credential's `uri`), if it parses.
pub fn of_uri(raw: &str) -> Option<String> {
    of_url(&url::Url::parse(raw).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalize_and_refuse_paths_and_users() {
        assert_eq!(
            parse("HTTPS://API.example.com:443/").unwrap(),
            "https://api.example.com"
        );
        assert_eq!(parse("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(
            parse("postgresql://db.example.com").unwrap(),
            "postgres://db.example.com:5432"
        );
        for bad in [
            "https://a.example/x",
            "https://u@a.example",
            "https://a.example?q=1",
            "ftp://a.example",
            "nope",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            of_uri("postgres://u:p@db.example.com:6432/app").as_deref(),
            Some("postgres://db.example.com:6432")
        );
    }
}
