//! Console session tokens revoked before they expire: a log-out ends the token itself, not only
//! the browser's copy of it. Tokens are kept as SHA-256 digests, and only until they would have
//! expired anyway.

use chrono::{DateTime, Utc};
use sha2::Digest as _;

use crate::{PgPool, Result};

/// The digest a token is kept under.
pub fn digest(token: &str) -> Vec<u8> {
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

/// Revokes `token` (valid until `expires_at`); forgets revocations of tokens now expired.
pub async fn revoke(pool: &PgPool, token: &str, expires_at: DateTime<Utc>) -> Result<()> {
    // With a margin: a token is accepted a few seconds past its `exp` (clock leeway), and the
    // console's clock is not the database's.
    sqlx::query!("DELETE FROM revoked_tokens WHERE expires_at < now() - interval '1 hour'")
        .execute(pool)
        .await?;
    sqlx::query!(
        "INSERT INTO revoked_tokens (digest, expires_at) VALUES ($1, $2)
         ON CONFLICT (digest) DO NOTHING",
        digest(token),
        expires_at
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether `token` was revoked.
pub async fn is_revoked(pool: &PgPool, token: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE digest = $1) AS "revoked!""#,
        digest(token)
    )
    .fetch_one(pool)
    .await?)
}
