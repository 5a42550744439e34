//! The secret key and what is derived from it: sealing (AES-256-GCM) of upstream credentials
//! and gateway session tokens, and the keys of signed tokens.
//!
//! One master key (`PORTCULLIS_SECRET_KEY`, or generated once into the data directory) is never
//! used directly: each purpose gets its own key, HMAC-SHA256(master, "portcullis/v1/" + purpose),
//! so a token of one kind can never be opened as another.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of random nonce in front of every sealed value.
const NONCE_LEN: usize = 12;
/// The smallest master key accepted.
pub const MIN_KEY_BYTES: usize = 32;

/// Why a secret key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the secret key must be base64 or hex")]
    Encoding,
    #[error(
        "the secret key must be at least {MIN_KEY_BYTES} bytes (it has {0}); generate one with `openssl rand -base64 32`"
    )]
    TooShort(usize),
    #[error("cannot read or write the secret key file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("no randomness available: {0}")]
    Random(String),
}

/// The master secret. Never printed: `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SecretKey(Vec<u8>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// Reads a key given as base64 (standard or URL-safe, padded or not) or hex.
    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let text = text.trim();
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let bytes = decode_hex(text)
            .or_else(|| engines.iter().find_map(|e| e.decode(text).ok()))
            .ok_or(KeyError::Encoding)?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(bytes.len()));
        }
        Ok(SecretKey(bytes))
    }

    /// A new random 32-byte key.
    pub fn generate() -> Result<SecretKey, KeyError> {
        Ok(SecretKey(random_bytes::<32>()?.to_vec()))
    }

    /// The key in the file at `path`, generated (mode 0600) if the file does not exist. Returns
    /// whether it was generated, so the caller can warn that a real deployment should set one.
    ///
    /// Safe when several processes sharing a volume start at once: the new key is written to a
    /// file of its own and hard-linked into place, which fails if another process got there
    /// first; then that process's complete key is read, so every process ends with the same key.
    pub fn load_or_generate(path: &Path) -> Result<(SecretKey, bool), KeyError> {
        let file_err = |source| KeyError::File {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => return Ok((SecretKey::parse(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_err(e)),
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(file_err)?;
        let key = SecretKey::generate()?;
        let text = base64::engine::general_purpose::STANDARD.encode(&key.0);
        let suffix: [u8; 8] = random_bytes()?;
        let temp = dir.join(format!(".secret.key.{}", hex(&suffix)));
        let written = (|| {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::hard_link(&temp, path)
        })();
        let _ = std::fs::remove_file(&temp);
        match written {
            Ok(()) => Ok((key, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(file_err)?;
                Ok((SecretKey::parse(&text)?, false))
            }
            Err(e) => Err(file_err(e)),
        }
    }

    /// The 32-byte key for one purpose.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(b"portcullis/v1/");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// HMAC-SHA-256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Authenticated encryption for one purpose. A sealed value is `nonce || ciphertext || tag`;
/// the associated data (a row id, an organization id) binds it to its context, so a value cannot
/// be moved to another row and opened there.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: &SecretKey, purpose: &str) -> Sealer {
        let derived = key.derive(purpose);
        Sealer {
            cipher: Aes256Gcm::new_from_slice(&derived).expect("AES-256 takes 32-byte keys"),
        }
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let nonce =
            Nonce::try_from(&nonce_bytes[..]).map_err(|_| KeyError::Random("nonce size".into()))?;
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| KeyError::Random("encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// `None` when the value was not sealed by this key and purpose with this associated data,
    /// or was altered.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).ok()?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(buf)
}

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    Sha256::digest(bytes).into()
}

/// Constant-time equality of two secrets.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base64_and_hex_and_refuses_short_keys() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert!(SecretKey::parse(hex).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(SecretKey::parse(&b64).is_ok());
        assert!(matches!(
            SecretKey::parse("c2hvcnQ="),
            Err(KeyError::TooShort(5))
        ));
        assert!(matches!(
            SecretKey::parse("not a key!"),
            Err(KeyError::Encoding)
        ));
        assert_eq!(
            format!("{:?}", SecretKey::parse(hex).unwrap()),
            "SecretKey(..)"
        );
    }

    #[test]
    fn purposes_get_different_keys() {
        let key = SecretKey::generate().unwrap();
        assert_ne!(key.derive("session"), key.derive("credentials"));
        assert_eq!(key.derive("session"), key.derive("session"));
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_purpose_and_context() {
        let key = SecretKey::generate().unwrap();
        let sealer = Sealer::new(&key, "credentials");
        let sealed = sealer.seal(b"Bearer ghp_secret", b"server-1").unwrap();
        assert!(
            !sealed.windows(6).any(|w| w == b"ghp_se"),
            "ciphertext must not contain the secret"
        );
        assert_eq!(
            sealer.open(&sealed, b"server-1").unwrap(),
            b"Bearer ghp_secret"
        );
        assert!(
            sealer.open(&sealed, b"server-2").is_none(),
            "moved to another row"
        );
        assert!(
            Sealer::new(&key, "session")
                .open(&sealed, b"server-1")
                .is_none(),
            "another purpose"
        );
        assert!(
            Sealer::new(&SecretKey::generate().unwrap(), "credentials")
                .open(&sealed, b"server-1")
                .is_none()
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sealer.open(&tampered, b"server-1").is_none());
        assert!(sealer.open(&sealed[..5], b"server-1").is_none());
        // Two seals of the same value differ (random nonces).
        assert_ne!(
            sealer.seal(b"x", b"").unwrap(),
            sealer.seal(b"x", b"").unwrap()
        );
    }

    #[test]
    fn a_generated_key_is_kept_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let (first, generated) = SecretKey::load_or_generate(&path).unwrap();
        assert!(generated);
        let (second, generated) = SecretKey::load_or_generate(&path).unwrap();
        assert!(!generated);
        assert_eq!(first.derive("x"), second.derive("x"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Processes starting at once on a shared volume all end with the one key that was kept.
    #[test]
    fn racing_generators_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared/secret.key");
        let keys: Vec<(SecretKey, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| SecretKey::load_or_generate(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let kept = SecretKey::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(keys.iter().all(|(k, _)| k.derive("x") == kept.derive("x")));
        assert_eq!(keys.iter().filter(|(_, generated)| *generated).count(), 1);
    }
}
