//! Gateway session ids: sealed tokens (AES-256-GCM under a key derived for this purpose) that
//! carry everything a gateway needs to continue a session, so any gateway process can serve any
//! request of it and nothing is kept in a shared session table.
//!
//! A session id is not a credential: every request is authenticated by its agent key, and a
//! session opened by one agent is refused to every other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use portcullis_store::crypto::{Sealer, SecretKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

const PREFIX: &str = "pcs_";
const AAD: &[u8] = b"portcullis mcp session v1";
/// Opened sessions kept, at most; when full, the cache starts again empty.
const OPENED_MAX: usize = 1024;
/// Longer tokens (a client's large `initialize` params) are opened each time, not kept.
const OPENED_TOKEN_MAX: usize = 4096;

/// What a session id carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// A random id for logs and approvals (the token itself changes nothing).
    #[serde(rename = "i")]
    pub id: Uuid,
    #[serde(rename = "o")]
    pub org_id: Uuid,
    #[serde(rename = "s")]
    pub server_id: Uuid,
    #[serde(rename = "a")]
    pub agent_id: Uuid,
    /// The negotiated protocol version.
    #[serde(rename = "v")]
    pub protocol_version: String,
    /// The upstream's session id, if it gave one.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub upstream_session: Option<String>,
    /// The client's `initialize` params, to open a new upstream session transparently when
    /// the upstream forgets this one.
    #[serde(rename = "p", default)]
    pub initialize_params: Value,
    /// Unix seconds.
    #[serde(rename = "t")]
    pub issued_at: i64,
}

#[derive(Debug, Clone)]
pub struct SessionSealer {
    sealer: Sealer,
    /// Sessions this sealer has opened, by token. Every request of a session carries the same
    /// token, and opening it (base64, AES-GCM, JSON) was ~7 % of a proxied call's instructions
    /// (callgrind, gateway benchmark). Only tokens that opened are kept, so a hit is exactly
    /// what opening would give. Keyed with foldhash, not SipHash: hashing a token (a few hundred
    /// bytes) with SipHash was ~1 % of a call, and an outsider cannot choose the keys (only
    /// tokens this sealer issued are kept; a lookup of any other string finds nothing).
    opened: Arc<Mutex<HashMap<String, Arc<Session>, foldhash::fast::RandomState>>>,
}

impl SessionSealer {
    pub fn new(key: &SecretKey) -> Self {
        SessionSealer {
            sealer: Sealer::new(key, "mcp-session"),
            opened: Arc::default(),
        }
    }

    pub fn seal(&self, session: &Session) -> String {
        self.seal_value(PREFIX, AAD, session)
    }

    /// Seals any small value as a token `{prefix}{base64url}`, bound to `aad` (one per kind of
    /// token, so a token of one kind is never accepted as another).
    pub fn seal_value<T: Serialize>(&self, prefix: &str, aad: &[u8], value: &T) -> String {
        let json = serde_json::to_vec(value).unwrap_or_default();
        let sealed = self.sealer.seal(&json, aad).unwrap_or_default();
        format!(
            "{prefix}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed)
        )
    }

    /// Opens a token of [`seal_value`](Self::seal_value); `None` for anything else.
    pub fn open_value<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        aad: &[u8],
        token: &str,
    ) -> Option<T> {
        let body = token.strip_prefix(prefix)?;
        if body.len() > 64 * 1024 {
            return None;
        }
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .ok()?;
        let json = self.sealer.open(&sealed, aad)?;
        serde_json::from_slice(&json).ok()
    }

    /// `None` for anything this deployment did not issue (or that was altered). Shared: a
    /// request reads its session and never changes it.
    pub fn open(&self, token: &str) -> Option<Arc<Session>> {
        let cached = self
            .opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        if cached.is_some() {
            return cached;
        }
        let session = Arc::new(self.open_value::<Session>(PREFIX, AAD, token)?);
        if token.len() <= OPENED_TOKEN_MAX {
            let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
            if opened.len() >= OPENED_MAX {
                opened.clear();
            }
            opened.insert(token.to_owned(), session.clone());
        }
        Some(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            id: Uuid::new_v4(),
            org_id: Uuid::new_v4(),
            server_id: Uuid::new_v4(),
            agent_id: Uuid::new_v4(),
            protocol_version: "2025-06-18".into(),
            upstream_session: Some("upstream-123".into()),
            initialize_params: serde_json::json!({"capabilities": {}}),
            issued_at: 1_700_000_000,
        }
    }

    #[test]
    fn round_trips_and_hides_its_content() {
        let key = SecretKey::generate().unwrap();
        let sealer = SessionSealer::new(&key);
        let s = session();
        let token = sealer.seal(&s);
        assert!(token.starts_with("pcs_"));
        assert!(
            token.bytes().all(|b| b.is_ascii_graphic()),
            "a valid header value"
        );
        assert!(!token.contains("upstream-123"));
        assert_eq!(sealer.open(&token).as_deref(), Some(&s));
    }

    #[test]
    fn refuses_tokens_it_did_not_issue() {
        let sealer = SessionSealer::new(&SecretKey::generate().unwrap());
        let other = SessionSealer::new(&SecretKey::generate().unwrap());
        let token = other.seal(&session());
        assert_eq!(sealer.open(&token), None);
        assert_eq!(sealer.open("pcs_AAAA"), None);
        assert_eq!(sealer.open("not-a-session"), None);
        let mut altered = sealer.seal(&session());
        altered.pop();
        altered.push('A');
        assert_eq!(sealer.open(&altered), None);
    }

    #[test]
    fn opened_sessions_are_kept_per_sealer_and_bounded() {
        let key = SecretKey::generate().unwrap();
        let sealer = SessionSealer::new(&key);
        let s = session();
        let token = sealer.seal(&s);
        let first = sealer.open(&token).unwrap();
        assert_eq!(*first, s);
        let kept = sealer.open(&token).unwrap();
        assert!(Arc::ptr_eq(&first, &kept), "the kept session");
        // Another key's sealer does not take a token this one has kept.
        let other = SessionSealer::new(&SecretKey::generate().unwrap());
        assert_eq!(other.open(&token), None);
        for _ in 0..OPENED_MAX + 10 {
            let token = sealer.seal(&session());
            assert!(sealer.open(&token).is_some());
        }
        assert!(sealer.opened.lock().unwrap().len() <= OPENED_MAX);
        // A long token opens and is not kept.
        let mut long = session();
        long.initialize_params = serde_json::json!({"padding": "x".repeat(OPENED_TOKEN_MAX)});
        let long_token = sealer.seal(&long);
        assert_eq!(sealer.open(&long_token).as_deref(), Some(&long));
        assert!(!sealer.opened.lock().unwrap().contains_key(&long_token));
    }
}
