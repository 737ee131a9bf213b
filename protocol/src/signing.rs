//! Ed25519 keys (RFC 8032) as operators hold them: PKCS#8 PEM files, made
//! with `openssl genpkey -algorithm ed25519 -out key.pem` and
//! `openssl pkey -in key.pem -pubout -out key.pub`.
//!
//! One signature scheme serves every place where a party must prove itself
//! to another that cannot share its secret: a pool element proving pool
//! membership to registrars, and a collector signing billing cookies that
//! exporters verify but cannot forge. Only parsing and checks live here
//! (sans-IO); the daemons read the files.

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
pub use ed25519_dalek::{
    PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH, Signature, Signer, SigningKey, Verifier, VerifyingKey,
};
use sha2::{Digest, Sha256};

/// Why a key could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not an Ed25519 private key in PKCS#8 PEM (RFC 5958,
    /// with the Ed25519 algorithm identifier of RFC 8410); carries the
    /// parser's reason.
    #[error("not an Ed25519 private key in PKCS#8 PEM (openssl genpkey -algorithm ed25519): {0}")]
    PrivateKey(String),
    /// The text is not an Ed25519 public key in SubjectPublicKeyInfo PEM
    /// (RFC 5280 §4.1, RFC 8410); carries the parser's reason.
    #[error("not an Ed25519 public key in PEM (openssl pkey -pubout): {0}")]
    PublicKey(String),
    /// A private key file on which group or others have any permission
    /// (mode bits 0o077; the message says "readable", the usual case):
    /// whoever reads it can forge membership proofs or cookies, so the
    /// daemons refuse it ([`check_private_key_mode`]).
    #[error(
        "private key file is readable by group or others (mode {mode:o}): chmod 600 it, owned by the daemon's user"
    )]
    Permissions {
        /// The file's permission bits (`mode & 0o7777`), shown in octal.
        mode: u32,
    },
}

/// Parses an Ed25519 private key from PKCS#8 PEM text.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::PrivateKey(e.to_string()))
}

/// Parses an Ed25519 public key from SubjectPublicKeyInfo PEM text.
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(pem).map_err(|e| KeyError::PublicKey(e.to_string()))
}

/// The SubjectPublicKeyInfo PEM text of a public key (what
/// `openssl pkey -pubout` writes), e.g. for tests and key listings.
pub fn pkcs8_public_pem(key: &VerifyingKey) -> String {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    key.to_public_key_pem(Default::default())
        .unwrap_or_default()
}

/// The PKCS#8 PEM text of a private key (what `openssl genpkey -algorithm
/// ed25519` writes), for tools and tests that make keys themselves.
pub fn pkcs8_private_pem(key: &SigningKey) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    key.to_pkcs8_pem(Default::default())
        .map(|pem| pem.to_string())
        .unwrap_or_default()
}

/// A short name of a public key for logs, wire fields and key rotation:
/// the first four bytes of SHA-256 over the 32-byte key, big endian.
pub fn key_id(key: &VerifyingKey) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A private key file must not be readable by group or others (the Unix
/// mode bits of the file, as `std::fs::Metadata` gives them).
pub fn check_private_key_mode(mode: u32) -> Result<(), KeyError> {
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
    const PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIM3fLuonn3907ZRcpCt96EJPEfwh2APV6sKZqBVM9LTI\n-----END PRIVATE KEY-----\n";

    #[test]
    fn pem_keys_round_trip_a_signature() {
        let signing = signing_key_from_pem(PRIVATE).expect("private key");
        let public_pem = {
            use ed25519_dalek::pkcs8::EncodePublicKey;
            signing
                .verifying_key()
                .to_public_key_pem(Default::default())
                .expect("encode")
        };
        let verifying = verifying_key_from_pem(&public_pem).expect("public key");
        let signature = signing.sign(b"pool membership");
        assert!(verifying.verify(b"pool membership", &signature).is_ok());
        assert!(verifying.verify(b"pool membership!", &signature).is_err());
        assert_eq!(key_id(&verifying), key_id(&signing.verifying_key()));
    }

    #[test]
    fn pem_encoding_round_trips() {
        let signing = signing_key_from_pem(PRIVATE).expect("private key");
        let again = signing_key_from_pem(&pkcs8_private_pem(&signing)).expect("re-read");
        assert_eq!(again.to_bytes(), signing.to_bytes());
        let public = verifying_key_from_pem(&pkcs8_public_pem(&signing.verifying_key()))
            .expect("public key");
        assert_eq!(public, signing.verifying_key());
    }

    #[test]
    fn garbage_and_wrong_kinds_are_refused() {
        assert!(matches!(
            signing_key_from_pem("not a key"),
            Err(KeyError::PrivateKey(_))
        ));
        assert!(matches!(
            verifying_key_from_pem(PRIVATE),
            Err(KeyError::PublicKey(_))
        ));
    }

    #[test]
    fn private_key_mode_must_be_owner_only() {
        assert!(check_private_key_mode(0o100600).is_ok());
        assert!(check_private_key_mode(0o100400).is_ok());
        assert_eq!(
            check_private_key_mode(0o100640),
            Err(KeyError::Permissions { mode: 0o640 })
        );
        assert!(check_private_key_mode(0o100604).is_err());
    }
}
