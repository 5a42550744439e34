//! The published policies, cached in memory and swapped atomically.
//!
//! Loaded in full at start (a gateway that cannot load them does not serve), reloaded one by one
//! when PostgreSQL announces a publish (`NOTIFY portcullis_policy`), and in full every
//! `full_reload` as a fallback for a lost notification. A server with no published policy
//! denies everything; so does a stored document that no longer parses (logged loudly, and kept
//! as a deny-all in its place, so an agent's broken policy never falls back to the server's).
//! While the database is unreachable, the gateway keeps enforcing what it has.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_policy::Policy;
use portcullis_store::{PgPool, policies};
use serde_json::Value;
use uuid::Uuid;

/// One enforced policy version, compiled.
#[derive(Debug)]
pub struct LoadedPolicy {
    pub policy: Policy,
    pub policy_id: Uuid,
    pub version: i32,
    pub org_id: Uuid,
    pub server_id: Uuid,
    pub agent_id: Option<Uuid>,
    /// Tool name → definition hash, as reviewed at publish time.
    pub reviewed: HashMap<String, String>,
    /// A version published in shadow: evaluated beside this one on every call, only recorded.
    pub shadow: Option<ShadowPolicy>,
}

/// A shadow version, compiled. One that does not parse is dropped (logged): a shadow never
/// changes what an agent gets, so there is nothing to fail closed about.
#[derive(Debug)]
pub struct ShadowPolicy {
    pub policy: Policy,
    pub version: i32,
}

impl LoadedPolicy {
    /// Is this tool's current definition different from the reviewed one? Tools that did not
    /// exist at publish time are not "changed": they fall under `default`.
    /// A reviewed tool that the upstream no longer lists (`current_hash` None) counts as
    /// changed: the gateway cannot tell what it is now.
    pub fn is_changed(&self, tool: &str, current_hash: Option<&str>) -> bool {
        match (self.reviewed.get(tool), current_hash) {
            (Some(reviewed), Some(current)) => reviewed != current,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

type Key = (Uuid, Option<Uuid>);

/// What a lookup found: the policy that governs (server, agent), or none (deny all).
#[derive(Debug, Default)]
pub struct PolicyCache {
    map: ArcSwap<HashMap<Key, Arc<LoadedPolicy>>>,
}

impl PolicyCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The policy for this agent on this server: the agent's own if it has one, else the
    /// server's.
    pub fn lookup(&self, server_id: Uuid, agent_id: Uuid) -> Option<Arc<LoadedPolicy>> {
        let map = self.map.load();
        map.get(&(server_id, Some(agent_id)))
            .or_else(|| map.get(&(server_id, None)))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the whole cache with what the database holds now.
    pub async fn load_all(&self, db: &PgPool) -> Result<usize, portcullis_store::Error> {
        let rows = policies::all_enforced(db).await?;
        let map: HashMap<Key, Arc<LoadedPolicy>> = rows
            .into_iter()
            .filter_map(compile)
            .map(|p| ((p.server_id, p.agent_id), Arc::new(p)))
            .collect();
        let n = map.len();
        self.map.store(Arc::new(map));
        Ok(n)
    }

    /// Reloads one policy after a publish. Returns the server it governs, when known.
    pub async fn reload(
        &self,
        db: &PgPool,
        policy_id: Uuid,
    ) -> Result<Option<Uuid>, portcullis_store::Error> {
        let row = policies::enforced(db, policy_id).await?;
        let mut map = HashMap::clone(&self.map.load());
        let server = match row {
            Some(row) => {
                let server_id = row.server_id;
                let key = (row.server_id, row.agent_id);
                match compile(row) {
                    Some(p) => {
                        map.insert(key, Arc::new(p));
                    }
                    None => {
                        map.remove(&key);
                    }
                }
                Some(server_id)
            }
            None => {
                let key = map
                    .iter()
                    .find(|(_, p)| p.policy_id == policy_id)
                    .map(|(k, _)| *k);
                key.map(|k| {
                    map.remove(&k);
                    k.0
                })
            }
        };
        self.map.store(Arc::new(map));
        Ok(server)
    }

    /// Keeps the cache fresh: LISTEN for publishes, and reload everything periodically. Sends
    /// the id of every server whose policy changed on `changed`.
    pub fn spawn_refresher(
        self: Arc<Self>,
        db: PgPool,
        full_reload: Duration,
        changed: tokio::sync::broadcast::Sender<Uuid>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Some(mut listener) = crate::listen(&db, "portcullis_policy").await else {
                    return; // shutting down
                };
                // Anything published while we were not listening is picked up here.
                if let Err(e) = self.load_all(&db).await {
                    tracing::warn!(error = %e, "cannot reload policies; keeping the ones in memory");
                }
                let mut ticker = tokio::time::interval(full_reload);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        note = listener.try_recv() => match note {
                            Ok(Some(note)) => {
                                let Ok(policy_id) = note.payload().parse::<Uuid>() else { continue };
                                match self.reload(&db, policy_id).await {
                                    Ok(Some(server)) => {
                                        tracing::info!(%policy_id, %server, "policy reloaded");
                                        let _ = changed.send(server);
                                    }
                                    Ok(None) => {}
                                    Err(e) => tracing::warn!(error = %e, %policy_id, "cannot reload a policy"),
                                }
                            }
                            // The connection dropped: reconnect (and reload everything).
                            Ok(None) | Err(_) => break,
                        },
                        _ = ticker.tick() => {
                            if let Err(e) = self.load_all(&db).await {
                                tracing::warn!(error = %e, "periodic policy reload failed; keeping the ones in memory");
                            }
                        }
                    }
                }
            }
        })
    }
}

/// What a published version that no longer parses is replaced by: nothing visible, nothing
/// allowed. (Dropping it instead would let an agent's broken policy fall back to the server's.)
const DENY_ALL: &str = r#"{"version":"1","default":"deny","hide":["*"]}"#;

fn compile(row: policies::Enforced) -> Option<LoadedPolicy> {
    let policy = match Policy::from_value(&row.document) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(policy_id = %row.policy_id, version = row.version, error = %e,
                "a published policy does not parse: every call it governs is denied");
            Policy::parse(DENY_ALL).ok()?
        }
    };
    let reviewed = match row.reviewed_tools {
        Value::Object(map) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
            .collect(),
        _ => HashMap::new(),
    };
    let shadow = match (row.shadow_version, &row.shadow_document) {
        (Some(version), Some(document)) => match Policy::from_value(document) {
            Ok(policy) => Some(ShadowPolicy { policy, version }),
            Err(e) => {
                tracing::error!(policy_id = %row.policy_id, version, error = %e,
                    "a shadow policy version does not parse: not evaluated");
                None
            }
        },
        _ => None,
    };
    Some(LoadedPolicy {
        policy,
        policy_id: row.policy_id,
        version: row.version,
        org_id: row.org_id,
        server_id: row.server_id,
        agent_id: row.agent_id,
        reviewed,
        shadow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_version_that_no_longer_parses_denies_everything_in_its_place() {
        let row = policies::Enforced {
            org_id: Uuid::new_v4(),
            server_id: Uuid::new_v4(),
            agent_id: Some(Uuid::new_v4()),
            policy_id: Uuid::new_v4(),
            version: 7,
            document: json!({"version": "1", "default": "allow", "surprise": true}),
            reviewed_tools: json!({}),
            shadow_version: None,
            shadow_document: None,
        };
        let loaded = compile(row).expect("kept, as a deny-all");
        assert_eq!(loaded.version, 7);
        assert!(loaded.policy.is_hidden("anything", false).is_some());
    }
}
