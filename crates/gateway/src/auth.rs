//! Agent authentication on every request, from an in-memory cache.
//!
//! A key is looked up by its SHA-256 digest. Results (found or not) are cached for `ttl`;
//! PostgreSQL announces every change to an agent (`NOTIFY portcullis_agent`: revoke, rotate,
//! grants) and the cache drops that agent at once, so a revoked key stops working within a
//! second on every gateway. The TTL bounds staleness if a notification is ever lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_store::PgPool;
use portcullis_store::agents::{self, Agent, AgentKey};
use uuid::Uuid;

/// Why a request is not authenticated. Both answer 401 with `WWW-Authenticate: Bearer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Malformed, unknown or revoked key.
    Invalid,
}

/// A lookup failed for lack of the database, and the key is not cached.
#[derive(Debug)]
pub struct Unavailable;

/// Cached lookups at most (known and unknown keys together).
const MAX_ENTRIES: usize = 100_000;

/// Key digest → the agent (or none: an unknown key), and when it was looked up.
type Entries = HashMap<[u8; 32], (Option<Arc<Agent>>, Instant)>;

#[derive(Debug)]
pub struct AgentCache {
    ttl: Duration,
    entries: Mutex<Entries>,
    /// Bumped by every forget/clear: a lookup that raced with one is not cached, so a
    /// revocation announced during the lookup is never papered over for a whole TTL.
    generation: std::sync::atomic::AtomicU64,
}

impl AgentCache {
    pub fn new(ttl: Duration) -> Self {
        AgentCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The agent behind an `Authorization` header value.
    pub async fn authenticate(
        &self,
        db: &PgPool,
        header: Option<&str>,
    ) -> Result<Result<Arc<Agent>, AuthError>, Unavailable> {
        let Some(token) = header.and_then(bearer) else {
            return Ok(Err(AuthError::Missing));
        };
        let Some(key) = AgentKey::parse(token) else {
            return Ok(Err(AuthError::Invalid));
        };
        let digest = key.digest();
        let cached = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .get(&digest)
                .filter(|(_, at)| at.elapsed() < self.ttl)
                .map(|(agent, _)| agent.clone())
        };
        let agent = match cached {
            Some(agent) => agent,
            None => {
                let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
                let found = match agents::by_key_hash(db, &digest).await {
                    Ok(found) => found.map(Arc::new),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look up an agent key");
                        // A stale entry is better than refusing a known agent while the
                        // database is away; revocations that happened meanwhile arrive with it.
                        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                        return match entries.get(&digest) {
                            Some((Some(agent), _)) => Ok(Ok(agent.clone())),
                            Some((None, _)) => Ok(Err(AuthError::Invalid)),
                            None => Err(Unavailable),
                        };
                    }
                };
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
                    insert_bounded(&mut entries, digest, found.clone(), self.ttl, MAX_ENTRIES);
                }
                found
            }
        };
        match agent {
            Some(agent) if agent.revoked_at.is_none() => Ok(Ok(agent)),
            _ => Ok(Err(AuthError::Invalid)),
        }
    }

    /// Drops every cached entry of this agent.
    pub fn forget(&self, agent_id: Uuid) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        entries.retain(|_, (agent, _)| agent.as_ref().is_none_or(|a| a.id != agent_id));
    }

    /// Drops everything (after the notification channel was lost).
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        entries.clear();
    }

    /// Listens for agent changes and forgets the agents named. Sends the id of every changed agent on `changed` (`Uuid::nil()`: any agent may have
    /// changed), so open streams of a revoked agent can be ended.
    pub fn spawn_listener(
        self: Arc<Self>,
        db: PgPool,
        changed: tokio::sync::broadcast::Sender<Uuid>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Some(mut listener) = crate::listen(&db, "portcullis_agent").await else {
                    return; // shutting down
                };
                // Changes made while we were not listening are unknown: start afresh.
                self.clear();
                let _ = changed.send(Uuid::nil());
                while let Ok(Some(note)) = listener.try_recv().await {
                    if let Ok(id) = note.payload().parse::<Uuid>() {
                        self.forget(id);
                        let _ = changed.send(id);
                    }
                }
            }
        })
    }
}

/// Caches a lookup. Well-formed random keys would otherwise grow the cache without bound: at
/// `max` entries, drop what has expired, and everything if that is not enough.
fn insert_bounded(
    entries: &mut Entries,
    digest: [u8; 32],
    agent: Option<Arc<Agent>>,
    ttl: Duration,
    max: usize,
) {
    if entries.len() >= max {
        entries.retain(|_, (_, at)| at.elapsed() < ttl);
        if entries.len() >= max {
            entries.clear();
        }
    }
    entries.insert(digest, (agent, Instant::now()));
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_bounded_under_random_keys() {
        let mut entries = Entries::new();
        for i in 0..1000u32 {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&i.to_be_bytes());
            insert_bounded(&mut entries, digest, None, Duration::from_secs(30), 100);
            assert!(entries.len() <= 100);
        }
        // Expired entries go first: with a zero TTL, the oldest are dropped, the newest kept.
        let mut entries = Entries::new();
        for i in 0..150u32 {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&i.to_be_bytes());
            insert_bounded(&mut entries, digest, None, Duration::ZERO, 100);
        }
        assert!(entries.len() <= 100 && !entries.is_empty());
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer("Bearer pcl_x"), Some("pcl_x"));
        assert_eq!(bearer("bearer   pcl_x "), Some("pcl_x"));
        assert_eq!(bearer("Basic dXNlcg=="), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("pcl_x"), None);
    }
}
