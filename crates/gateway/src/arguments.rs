//! Argument values in the activity log: stored only for organizations that turn
//! `store_argument_values` on, and then with the values of keys that look secret replaced by
//! `[redacted]`, at any depth.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_store::{PgPool, orgs};
use serde_json::Value;
use uuid::Uuid;

/// How long an organization's choice is cached (a change takes effect within this).
const TTL: Duration = Duration::from_secs(30);
pub use portcullis_store::activity::{SECRET_KEY_PARTS, redact};

#[derive(Debug, Default)]
pub struct ArgumentPolicy {
    stores: Mutex<HashMap<Uuid, (bool, Instant)>>,
}

impl ArgumentPolicy {
    /// The arguments to record for an event of `org_id`: `None` unless it stores values
    /// (and when its setting cannot be read: never store when unsure).
    pub async fn recorded(&self, db: &PgPool, org_id: Uuid, arguments: &Value) -> Option<Value> {
        let cached = self
            .stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&org_id)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(on, _)| *on);
        let on = match cached {
            Some(on) => on,
            None => {
                let on = orgs::settings(db, org_id)
                    .await
                    .map(|s| s.store_argument_values)
                    .unwrap_or(false);
                self.stores
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(org_id, (on, Instant::now()));
                on
            }
        };
        on.then(|| redact(arguments))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_looking_keys_are_redacted_at_any_depth() {
        let args = json!({"query": "select 1", "Password": "hunter2", "auth": {"api_key": "k", "user": "ada"},
                          "items": [{"AccessToken": "t", "n": 1}], "authorization": "Bearer x"});
        assert_eq!(
            redact(&args),
            json!({"query": "select 1", "Password": "[redacted]", "auth": {"api_key": "[redacted]", "user": "ada"},
                   "items": [{"AccessToken": "[redacted]", "n": 1}], "authorization": "[redacted]"})
        );
    }
}
