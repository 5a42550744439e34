//! Who is calling: passwords (Argon2id), tokens (HS256 JWTs), the failed-login throttle, and
//! the extractors that resolve a caller and their role in an organization.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use axum::http::header;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use portcullis_store::crypto::SecretKey;
use portcullis_store::orgs::{self, Organization, Role};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ConsoleState;
use crate::error::ApiError;

/// How long a token lives.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
const ISSUER: &str = "portcullis";
const AUDIENCE: &str = "portcullis-console";

/// Hashes a password with Argon2id (the crate's defaults: 19 MiB, 2 passes), off the async
/// threads.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(|e| {
        tracing::error!(error = %e, "cannot hash a password");
        ApiError::internal()
    })
}

/// Checks a password against a stored PHC string, off the async threads. A stored string that
/// does not parse never matches.
pub async fn verify_password(hash: String, password: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Unique per token: two tokens of one person issued in the same second differ, so logging
    /// one out leaves the other alone.
    #[serde(default)]
    jti: Option<Uuid>,
    sub: Uuid,
    iat: i64,
    exp: i64,
    iss: String,
    aud: String,
}

/// Signs and checks console tokens: HS256 under a key derived from the secret key, the
/// algorithm pinned (a token naming another algorithm, `none` included, is refused).
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

impl Tokens {
    pub fn new(key: &SecretKey) -> Tokens {
        let secret = key.derive("console-jwt");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            validation,
        }
    }

    /// A token for `user_id`, and when it expires.
    pub fn issue(&self, user_id: Uuid) -> Result<(String, DateTime<Utc>), ApiError> {
        let now = Utc::now();
        let expires_at =
            now + chrono::Duration::from_std(TOKEN_LIFETIME).map_err(|_| ApiError::internal())?;
        let claims = Claims {
            jti: Some(Uuid::new_v4()),
            sub: user_id,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| {
            tracing::error!(error = %e, "cannot sign a token");
            ApiError::internal()
        })?;
        Ok((token, expires_at))
    }

    /// The user a validly signed, unexpired token names, and when it expires. Whether it was
    /// logged out is [`ConsoleState::signed_in`]'s question: requests go through that.
    pub fn verify(&self, token: &str) -> Option<(Uuid, DateTime<Utc>)> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()?
            .claims;
        Some((claims.sub, DateTime::from_timestamp(claims.exp, 0)?))
    }
}

/// The signed-in user making the request (`Authorization: Bearer <token>`).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub user_id: Uuid,
}

impl FromRequestParts<ConsoleState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .ok_or_else(|| {
                    ApiError::unauthorized("the Authorization header must be Bearer <token>")
                })?;
            let user_id = state.signed_in(token).await?.ok_or_else(|| {
                ApiError::unauthorized(
                    "the token is invalid, has expired or was logged out; sign in again",
                )
            })?;
            return Ok(Caller { user_id });
        }
        // The browser's session cookie: a request that changes anything must also carry the
        // session's CSRF token in X-CSRF-Token (a cross-site page cannot read it).
        if let Some(token) = session_token(&parts.headers, state.secure_cookies()) {
            let user_id = state.signed_in(&token).await?.ok_or_else(|| {
                ApiError::unauthorized("the session has expired or was logged out; sign in again")
            })?;
            if !parts.method.is_safe() {
                let sent = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !state.csrf_matches(&token, sent) {
                    return Err(ApiError::forbidden(
                        "a request with the session cookie must carry its X-CSRF-Token",
                    ));
                }
            }
            return Ok(Caller { user_id });
        }
        Err(ApiError::unauthorized(
            "sign in: send Authorization: Bearer <token> from /api/v1/login",
        ))
    }
}

/// The session cookie's name over plain HTTP (development, a private network).
pub const SESSION_COOKIE: &str = "pcl_session";
/// Its name over HTTPS: the `__Host-` prefix makes the browser refuse it unless it is `Secure`,
/// for path `/`, with no `Domain`: a sibling subdomain cannot plant or overwrite it.
pub const SECURE_SESSION_COOKIE: &str = "__Host-pcl_session";
/// The header carrying the CSRF token on API calls made with the session cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session cookie's name when the console is (`secure`) or is not served over HTTPS.
pub fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// The value of the session cookie, if the request has one. Over HTTPS only the `__Host-`
/// cookie counts (a plain one could have been planted by a subdomain).
pub fn session_token(headers: &axum::http::HeaderMap, secure: bool) -> Option<String> {
    let name = session_cookie_name(secure);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for a session: HttpOnly (scripts cannot read it), SameSite=Lax (not sent on
/// cross-site posts), `__Host-` and Secure when the console is served over https, one hour.
pub fn session_cookie(token: &str, secure: bool) -> String {
    format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        session_cookie_name(secure),
        TOKEN_LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that ends the session.
pub fn clear_session_cookie(secure: bool) -> String {
    format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
        session_cookie_name(secure),
        if secure { "; Secure" } else { "" }
    )
}

/// The caller, the organization named by the `{org}` path parameter, and the caller's role in
/// it. Not a member (or no such organization): 404, the same answer either way.
#[derive(Debug, Clone)]
pub struct OrgAccess {
    pub user_id: Uuid,
    pub org: Organization,
    pub role: Role,
}

impl OrgAccess {
    pub fn org_id(&self) -> Uuid {
        self.org.id
    }

    /// Servers, policies and approvals: `admin` and `policy_manager`.
    pub fn require_manager(&self) -> Result<(), ApiError> {
        if self.role.can_manage_policies() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "your role in {} is {}; this needs admin or policy_manager",
                self.org.slug,
                self.role.as_str()
            )))
        }
    }

    /// Members, agents and settings: `admin` only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "your role in {} is {}; this needs admin",
                self.org.slug,
                self.role.as_str()
            )))
        }
    }
}

impl FromRequestParts<ConsoleState> for OrgAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::internal())?;
        let slug = params
            .iter()
            .find(|(name, _)| *name == "org")
            .map(|(_, value)| value.to_owned())
            .ok_or_else(ApiError::internal)?;
        let membership = orgs::membership(&state.inner.db, &slug, caller.user_id)
            .await
            .map_err(|e| match e {
                portcullis_store::Error::NotFound => ApiError::not_found("organization"),
                other => other.into(),
            })?;
        Ok(OrgAccess {
            user_id: caller.user_id,
            org: membership.organization,
            role: membership.role,
        })
    }
}

/// The client's address, when the server was started with connect info.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

/// When failed log-ins are slowed and then refused.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Failures (per email, and per address) after which each attempt is delayed.
    pub slow_after: u32,
    /// Failures after which attempts are answered 429 until the window passes.
    pub block_after: u32,
    /// How long failures are remembered (from the first one).
    pub window: Duration,
    /// The delay added per failure beyond `slow_after` (at most 5 s).
    pub delay_step: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            slow_after: 5,
            block_after: 10,
            window: Duration::from_secs(15 * 60),
            delay_step: Duration::from_millis(500),
        }
    }
}

/// What the throttle says about an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Go,
    Delay(Duration),
    /// Refuse; retry after this long.
    Refuse(Duration),
}

/// Failed log-ins per email and per client address, in memory (per console process: a fleet of
/// N consoles allows N times the attempts, still a few dozen per window).
#[derive(Debug)]
pub struct LoginThrottle {
    limits: LoginLimits,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Entries kept at most; expired ones are dropped first, then the oldest.
const MAX_THROTTLE_ENTRIES: usize = 100_000;

impl LoginThrottle {
    pub fn new(limits: LoginLimits) -> LoginThrottle {
        LoginThrottle {
            limits,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn keys(email: &str, addr: Option<IpAddr>) -> Vec<String> {
        let mut keys = vec![format!("email:{email}")];
        if let Some(addr) = addr {
            keys.push(format!("addr:{addr}"));
        }
        keys
    }

    /// The verdict for an attempt, from the worst of the email's and the address's records.
    pub fn check(&self, email: &str, addr: Option<IpAddr>) -> Verdict {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut verdict = Verdict::Go;
        for key in Self::keys(email, addr) {
            let Some(&(count, since)) = failures.get(&key) else {
                continue;
            };
            let age = now.duration_since(since);
            if age >= self.limits.window {
                continue;
            }
            if count >= self.limits.block_after {
                return Verdict::Refuse(self.limits.window - age);
            }
            if count >= self.limits.slow_after {
                let delay = (self.limits.delay_step * (count - self.limits.slow_after + 1))
                    .min(Duration::from_secs(5));
                if !matches!(verdict, Verdict::Delay(d) if d >= delay) {
                    verdict = Verdict::Delay(delay);
                }
            }
        }
        verdict
    }

    pub fn record_failure(&self, email: &str, addr: Option<IpAddr>) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if failures.len() >= MAX_THROTTLE_ENTRIES {
            let window = self.limits.window;
            failures.retain(|_, (_, since)| now.duration_since(*since) < window);
            if failures.len() >= MAX_THROTTLE_ENTRIES {
                failures.clear();
            }
        }
        for key in Self::keys(email, addr) {
            let entry = failures.entry(key).or_insert((0, now));
            if now.duration_since(entry.1) >= self.limits.window {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
    }

    /// A successful log-in clears the email's record (not the address's: one good password
    /// must not reset an attacker's count against other accounts).
    pub fn record_success(&self, email: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("email:{email}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_tampering_and_other_keys() {
        let key = SecretKey::generate().unwrap();
        let tokens = Tokens::new(&key);
        let user = Uuid::new_v4();
        let (token, expires_at) = tokens.issue(user).unwrap();
        assert_eq!(tokens.verify(&token).map(|(u, _)| u), Some(user));
        // Two tokens of one person in the same second are still two tokens (log-out revokes one).
        assert_ne!(tokens.issue(user).unwrap().0, token);
        assert!(expires_at > Utc::now() + chrono::Duration::minutes(59));
        // Another key.
        assert_eq!(
            Tokens::new(&SecretKey::generate().unwrap()).verify(&token),
            None
        );
        // A changed payload.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1].insert(3, 'x');
        assert_eq!(tokens.verify(&parts.join(".")), None);
    }

    #[test]
    fn tokens_with_alg_none_or_expired_are_refused() {
        use base64::Engine;
        let key = SecretKey::generate().unwrap();
        let tokens = Tokens::new(&key);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = Utc::now().timestamp();
        let claims = serde_json::json!({"sub": Uuid::new_v4(), "iat": now, "exp": now + 600,
                                        "iss": ISSUER, "aud": AUDIENCE});
        let unsigned = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        );
        assert_eq!(tokens.verify(&unsigned), None);
        let expired = Claims {
            jti: None,
            sub: Uuid::new_v4(),
            iat: now - 7200,
            exp: now - 3600,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &expired, &tokens.encoding)
                .unwrap();
        assert_eq!(tokens.verify(&token), None);
    }

    #[test]
    fn throttle_slows_then_refuses_per_email_and_per_address() {
        let throttle = LoginThrottle::new(LoginLimits {
            slow_after: 2,
            block_after: 4,
            window: Duration::from_secs(60),
            delay_step: Duration::from_millis(100),
        });
        let addr: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        assert_eq!(throttle.check("a@x.io", addr), Verdict::Go);
        throttle.record_failure("a@x.io", addr);
        throttle.record_failure("a@x.io", addr);
        assert_eq!(
            throttle.check("a@x.io", addr),
            Verdict::Delay(Duration::from_millis(100))
        );
        throttle.record_failure("a@x.io", addr);
        assert_eq!(
            throttle.check("a@x.io", addr),
            Verdict::Delay(Duration::from_millis(200))
        );
        throttle.record_failure("a@x.io", addr);
        assert!(matches!(throttle.check("a@x.io", None), Verdict::Refuse(_)));
        // The address is throttled for other emails too.
        assert!(matches!(throttle.check("b@x.io", addr), Verdict::Refuse(_)));
        // Another address and email: free.
        assert_eq!(
            throttle.check("b@x.io", Some("192.0.2.2".parse().unwrap())),
            Verdict::Go
        );
        throttle.record_success("a@x.io");
        assert!(matches!(throttle.check("a@x.io", addr), Verdict::Refuse(_)));
        assert_eq!(throttle.check("a@x.io", None), Verdict::Go);
    }

    #[tokio::test]
    async fn passwords_verify_and_garbage_hashes_never_match() {
        let hash = hash_password("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(hash.clone(), "correct horse battery".into()).await);
        assert!(!verify_password(hash, "wrong horse battery".into()).await);
        assert!(!verify_password("unused".into(), "anything".into()).await);
    }
}
