//! An e-mail address as a request gives it: the one rule every identity
//! lookup and every new identity or invitation passes through. Addresses are
//! ASCII only: PostgreSQL's `lower()` folds some other letters onto ASCII ones
//! (`İ` → `i`), so an internationalized look-alike would find another
//! person's identity while its mail went to the look-alike's owner (see
//! docs/security.md). The shape of an address (`local@domain`) is the
//! caller's rule (the API's `#[validate(email)]`, the CLI's own check); this
//! type never decides it, so a request's error body names each broken rule
//! once.
//!
//! An address *as stored* stays a `String`: mail goes there, and an identity
//! made before this rule may hold any text.

use std::fmt;

/// A trimmed, ASCII-only e-mail address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why a text is not an [`Email`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("e-mail addresses must be ASCII (internationalized addresses are not supported)")]
    NotAscii,
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let trimmed = raw.trim();
        if trimmed.is_ascii() {
            Ok(Self(trimmed.to_string()))
        } else {
            Err(EmailError::NotAscii)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Email {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_addresses_pass_trimmed_and_keep_their_case() {
        assert_eq!(Email::parse(" Ada@Acme.test\n").unwrap().as_str(), "Ada@Acme.test");
        assert_eq!(Email::parse("a+tag@b.c").unwrap().to_string(), "a+tag@b.c");
    }

    #[test]
    fn anything_outside_ascii_is_refused() {
        // `İ` is what PostgreSQL's lower() folds onto `i`: the look-alike the rule exists for.
        for raw in ["admİn@acme.test", "ümlaut@x.test", "a@bücher.de", "ａ@b.c"] {
            assert_eq!(Email::parse(raw), Err(EmailError::NotAscii), "{raw}");
        }
    }

    #[test]
    fn the_shape_is_not_this_types_rule() {
        // The callers' format checks report a missing `@`; this type must not report it twice.
        assert!(Email::parse("").is_ok());
        assert!(Email::parse("no-at-sign").is_ok());
    }
}
