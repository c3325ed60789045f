//! Field-level encryption: AES-256-GCM with a fresh random 96-bit nonce per
//! value, keys derived with Argon2id from an operator secret and salt.
//!
//! A ciphertext describes itself — `version (1) | key id (4) | nonce (12) |
//! ciphertext+tag` — so several keys can be live at once: the primary
//! encrypts, the others only decrypt until rotation has moved every value.
//! The associated data names the company, table, column and row a value
//! belongs to, so a ciphertext copied anywhere else fails to decrypt.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

pub const SECRET_HEX_LEN: usize = 256;
pub const SALT_HEX_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the key secret must be {SECRET_HEX_LEN} hexadecimal characters")]
    BadSecret,
    #[error("the key salt must be {SALT_HEX_LEN} hexadecimal characters")]
    BadSalt,
    #[error("deriving the key failed")]
    Derivation,
    #[error("the value is not a floq ciphertext")]
    Malformed,
    #[error("the value was encrypted with a key that is not configured (key id {0})")]
    UnknownKey(String),
    /// Tampered, moved to another row or company, or a wrong key: deliberately one error.
    #[error("the value cannot be decrypted here")]
    Undecryptable,
}

/// Where a value lives; bound into its ciphertext.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub company_id: Uuid,
    pub table: &'a str,
    pub column: &'a str,
    pub row_id: &'a str,
}

impl Binding<'_> {
    fn aad(&self) -> Vec<u8> {
        format!(
            "floq/v{VERSION}/{}/{}/{}/{}",
            self.company_id, self.table, self.column, self.row_id
        )
        .into_bytes()
    }
}

/// One derived key. The key bytes are zeroized on drop and never printed.
pub struct Key {
    id: [u8; KEY_ID_LEN],
    cipher: Aes256Gcm,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", hex::encode(self.id))
    }
}

impl Key {
    /// Argon2id (OWASP parameters) over the hex-decoded secret and salt.
    pub fn derive(secret_hex: &str, salt_hex: &str) -> Result<Self, CryptoError> {
        if secret_hex.len() != SECRET_HEX_LEN {
            return Err(CryptoError::BadSecret);
        }
        if salt_hex.len() != SALT_HEX_LEN {
            return Err(CryptoError::BadSalt);
        }
        let secret = Zeroizing::new(hex::decode(secret_hex).map_err(|_| CryptoError::BadSecret)?);
        let salt = hex::decode(salt_hex).map_err(|_| CryptoError::BadSalt)?;
        let mut key = Zeroizing::new([0u8; 32]);
        argon2::Argon2::default()
            .hash_password_into(&secret, &salt, key.as_mut())
            .map_err(|_| CryptoError::Derivation)?;
        // The id names the key without revealing it: a hash of the derived key, truncated.
        let digest = Sha256::digest(key.as_ref());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let cipher = Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| CryptoError::Derivation)?;
        Ok(Self { id, cipher })
    }

    pub fn id(&self) -> String {
        hex::encode(self.id)
    }
}

/// The primary key (encrypts) and older keys (decrypt only).
#[derive(Debug)]
pub struct Keyring {
    primary: Key,
    older: Vec<Key>,
}

impl Keyring {
    pub fn new(primary: Key, older: Vec<Key>) -> Self {
        Self { primary, older }
    }

    /// Derives every configured key (Argon2id: run once at start, off the async runtime).
    pub fn from_config(config: &crate::Config) -> Result<Self, CryptoError> {
        let (secret, salt) = &config.enc_key;
        let primary = Key::derive(secret.expose(), salt.expose())?;
        let older = config
            .enc_old_keys
            .iter()
            .map(|(secret, salt)| Key::derive(secret.expose(), salt.expose()))
            .collect::<Result<_, _>>()?;
        Ok(Self::new(primary, older))
    }

    pub fn primary_id(&self) -> String {
        self.primary.id()
    }

    pub fn encrypt(&self, plaintext: &[u8], at: Binding<'_>) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = at.aad();
        let sealed = self
            .primary
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&self.primary.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn decrypt(&self, ciphertext: &[u8], at: Binding<'_>) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if ciphertext.len() < HEADER_LEN + 16 || ciphertext[0] != VERSION {
            return Err(CryptoError::Malformed);
        }
        let id = &ciphertext[1..1 + KEY_ID_LEN];
        let key = std::iter::once(&self.primary)
            .chain(&self.older)
            .find(|k| k.id == id)
            .ok_or_else(|| CryptoError::UnknownKey(hex::encode(id)))?;
        let nonce: [u8; NONCE_LEN] = ciphertext[1 + KEY_ID_LEN..HEADER_LEN]
            .try_into()
            .map_err(|_| CryptoError::Malformed)?;
        let aad = at.aad();
        key.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ciphertext[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Undecryptable)
    }

    /// Whether a ciphertext is already under the primary key (rotation skips it).
    pub fn is_current(&self, ciphertext: &[u8]) -> bool {
        ciphertext.len() > KEY_ID_LEN && ciphertext[0] == VERSION && ciphertext[1..1 + KEY_ID_LEN] == self.primary.id
    }
}

/// A fresh secret and salt for `FLOQ_ENC_KEY_SECRET` / `FLOQ_ENC_KEY_SALT`.
pub fn generate() -> (String, String) {
    let mut secret = Zeroizing::new([0u8; SECRET_HEX_LEN / 2]);
    let mut salt = [0u8; SALT_HEX_LEN / 2];
    rand::rng().fill_bytes(secret.as_mut());
    rand::rng().fill_bytes(&mut salt);
    (hex::encode(secret.as_ref()), hex::encode(salt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        let (secret, salt) = generate();
        Key::derive(&secret, &salt).unwrap()
    }

    fn at(row: &str) -> Binding<'_> {
        Binding {
            company_id: Uuid::nil(),
            table: "credentials",
            column: "data",
            row_id: row,
        }
    }

    #[test]
    fn values_round_trip_with_a_fresh_nonce_each_time() {
        let ring = Keyring::new(key(), vec![]);
        let a = ring.encrypt(b"hunter2", at("r1"));
        let b = ring.encrypt(b"hunter2", at("r1"));
        assert_ne!(a, b, "same plaintext, different ciphertexts");
        assert_eq!(&*ring.decrypt(&a, at("r1")).unwrap(), b"hunter2");
    }

    #[test]
    fn tampered_moved_and_foreign_ciphertexts_fail() {
        let ring = Keyring::new(key(), vec![]);
        let mut c = ring.encrypt(b"secret", at("r1"));
        assert_eq!(ring.decrypt(&c, at("r2")).unwrap_err(), CryptoError::Undecryptable);
        let other_company = Binding {
            company_id: Uuid::now_v7(),
            ..at("r1")
        };
        assert_eq!(ring.decrypt(&c, other_company).unwrap_err(), CryptoError::Undecryptable);
        let last = c.len() - 1;
        c[last] ^= 1;
        assert_eq!(ring.decrypt(&c, at("r1")).unwrap_err(), CryptoError::Undecryptable);
        assert_eq!(ring.decrypt(b"short", at("r1")).unwrap_err(), CryptoError::Malformed);
        let stranger = Keyring::new(key(), vec![]);
        let c = ring.encrypt(b"secret", at("r1"));
        assert!(matches!(
            stranger.decrypt(&c, at("r1")),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn older_keys_decrypt_and_only_the_primary_encrypts() {
        let (old_secret, old_salt) = generate();
        let old = Keyring::new(Key::derive(&old_secret, &old_salt).unwrap(), vec![]);
        let c = old.encrypt(b"v", at("r"));
        let rotated = Keyring::new(key(), vec![Key::derive(&old_secret, &old_salt).unwrap()]);
        assert!(!rotated.is_current(&c));
        assert_eq!(&*rotated.decrypt(&c, at("r")).unwrap(), b"v");
        assert!(rotated.is_current(&rotated.encrypt(b"v", at("r"))));
    }

    #[test]
    fn bad_material_is_refused_and_keys_never_print() {
        assert_eq!(Key::derive("abc", &"0".repeat(64)).unwrap_err(), CryptoError::BadSecret);
        assert_eq!(Key::derive(&"0".repeat(256), "zz").unwrap_err(), CryptoError::BadSalt);
        assert_eq!(
            Key::derive(&"g".repeat(256), &"0".repeat(64)).unwrap_err(),
            CryptoError::BadSecret
        );
        let (secret, salt) = generate();
        let k = Key::derive(&secret, &salt).unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains(&secret) && shown.starts_with("Key("));
    }
}
