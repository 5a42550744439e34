//! Activity events: every gateway decision.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// One decision, as the gateway records it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NewEvent {
    /// UUIDv7: time-ordered.
    pub id: Uuid,
    pub org_id: Uuid,
    pub at: DateTime<Utc>,
    pub server_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    pub session: Option<String>,
    pub method: String,
    pub tool: Option<String>,
    pub argument_keys: Vec<String>,
    pub arguments: Option<Value>,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub policy_id: Option<Uuid>,
    pub policy_version: Option<i32>,
    /// The agent whose own policy decided; `None`: the server's policy.
    #[serde(default)]
    pub policy_agent_id: Option<Uuid>,
    pub latency_ms: Option<f64>,
    pub upstream_status: Option<i32>,
    /// On a call evaluated beside a shadow version: `{version, decision, rule, differs}`, the
    /// shadow's decision and whether it differs from the enforced one.
    #[serde(default)]
    pub shadow: Option<Value>,
}

/// Writes a batch of events in one statement (columns as arrays, unnested by PostgreSQL). The
/// strings are borrowed, not copied. An array of arrays of different lengths does not fit a
/// PostgreSQL array, so each row's argument keys travel as the text of an array
/// ([`array_literal`]), which PostgreSQL reads back as `text[]`.
pub async fn insert_batch(pool: &PgPool, events: &[NewEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let ids = |f: fn(&NewEvent) -> Option<Uuid>| events.iter().map(f).collect::<Vec<_>>();
    let text = |f: fn(&NewEvent) -> Option<&str>| events.iter().map(f).collect::<Vec<_>>();
    let keys: Vec<String> = events
        .iter()
        .map(|e| array_literal(&e.argument_keys))
        .collect();
    let arguments: Vec<Option<Value>> = events.iter().map(|e| e.arguments.clone()).collect();
    let shadows: Vec<Option<Value>> = events.iter().map(|e| e.shadow.clone()).collect();
    sqlx::query!(
        r#"INSERT INTO activity_events (id, org_id, at, server_id, agent_id, agent_name, session,
               method, tool, argument_keys, arguments, decision, rule, reason, policy_id,
               policy_version, latency_ms, upstream_status, policy_agent_id, shadow)
           SELECT u.id, u.org_id, u.at, u.server_id, u.agent_id, u.agent_name, u.session, u.method,
                  u.tool, u.keys::text[], u.arguments, u.decision, u.rule, u.reason,
                  u.policy_id, u.policy_version, u.latency_ms, u.upstream_status,
                  u.policy_agent_id, u.shadow
           FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::uuid[], $5::uuid[],
                       $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::jsonb[],
                       $12::text[], $13::text[], $14::text[], $15::uuid[], $16::int4[],
                       $17::float8[], $18::int4[], $19::uuid[], $20::jsonb[])
                AS u(id, org_id, at, server_id, agent_id, agent_name, session, method, tool,
                     keys, arguments, decision, rule, reason, policy_id, policy_version,
                     latency_ms, upstream_status, policy_agent_id, shadow)
           ON CONFLICT ON CONSTRAINT activity_events_pkey DO NOTHING"#,
        &events.iter().map(|e| e.id).collect::<Vec<_>>(),
        &events.iter().map(|e| e.org_id).collect::<Vec<_>>(),
        &events.iter().map(|e| e.at).collect::<Vec<_>>(),
        &ids(|e| e.server_id) as &[Option<Uuid>],
        &ids(|e| e.agent_id) as &[Option<Uuid>],
        &text(|e| e.agent_name.as_deref()) as &[Option<&str>],
        &text(|e| e.session.as_deref()) as &[Option<&str>],
        &events.iter().map(|e| e.method.as_str()).collect::<Vec<_>>() as &[&str],
        &text(|e| e.tool.as_deref()) as &[Option<&str>],
        &keys,
        &arguments as &[Option<Value>],
        &events
            .iter()
            .map(|e| e.decision.as_str())
            .collect::<Vec<_>>() as &[&str],
        &text(|e| e.rule.as_deref()) as &[Option<&str>],
        &text(|e| e.reason.as_deref()) as &[Option<&str>],
        &ids(|e| e.policy_id) as &[Option<Uuid>],
        &events.iter().map(|e| e.policy_version).collect::<Vec<_>>() as &[Option<i32>],
        &events.iter().map(|e| e.latency_ms).collect::<Vec<_>>() as &[Option<f64>],
        &events.iter().map(|e| e.upstream_status).collect::<Vec<_>>() as &[Option<i32>],
        &ids(|e| e.policy_agent_id) as &[Option<Uuid>],
        &shadows as &[Option<Value>],
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// `keys` as the text of a PostgreSQL array: every element quoted, with `"` and `\` escaped,
/// so any text (`NULL`, braces, commas, spaces) comes back as written. PostgreSQL reads it in
/// one pass (a jsonb array per row, unpacked by a subquery, cost more; slices of one array of
/// the batch's keys cost a walk from its start per row).
pub fn array_literal(keys: &[String]) -> String {
    let mut out = String::with_capacity(2 + keys.iter().map(|k| k.len() + 3).sum::<usize>());
    out.push('{');
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in key.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// An event as the activity API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub server_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    pub session: Option<String>,
    pub method: String,
    pub tool: Option<String>,
    pub argument_keys: Vec<String>,
    /// Only when the organization stores argument values (secret-looking ones redacted).
    pub arguments: Option<Value>,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub policy_version: Option<i32>,
    /// The agent whose own policy decided; `null`: the server's policy.
    pub policy_agent_id: Option<Uuid>,
    pub latency_ms: Option<f64>,
    pub upstream_status: Option<i32>,
    /// On a call evaluated beside a shadow version: `{version, decision, rule, differs}`.
    pub shadow: Option<Value>,
}

/// What the activity API filters on; `None` matches everything.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub server_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub tool: Option<String>,
    pub decision: Option<String>,
    /// Only events older than this one (the keyset cursor).
    pub before: Option<Uuid>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only calls where a shadow version would have decided otherwise.
    pub shadow_differs: bool,
    /// Only events the server's own policy decided (not an agent's policy).
    pub server_policy_only: bool,
}

/// The organization's events matching `filter`, newest first, at most `limit`.
pub async fn query(pool: &PgPool, org_id: Uuid, filter: &Filter, limit: i64) -> Result<Vec<Event>> {
    Ok(sqlx::query_as!(
        Event,
        r#"SELECT e.id, e.at, e.server_id, e.agent_id, e.agent_name, e.session, e.method, e.tool,
                  e.argument_keys, e.arguments, e.decision, e.rule, e.reason, e.policy_version,
                  e.policy_agent_id, e.latency_ms, e.upstream_status, e.shadow
           FROM activity_events e
           WHERE e.org_id = $1
             AND ($2::uuid IS NULL OR e.server_id = $2)
             AND ($3::uuid IS NULL OR e.agent_id = $3)
             AND ($4::text IS NULL OR e.tool = $4)
             AND ($5::text IS NULL OR e.decision = $5)
             AND ($6::timestamptz IS NULL OR e.at >= $6)
             AND ($7::uuid IS NULL OR (e.at, e.id) < (SELECT c.at, c.id FROM activity_events c
                                                     WHERE c.org_id = $1 AND c.id = $7))
             AND (NOT $9 OR COALESCE((e.shadow->>'differs')::boolean, false))
             AND (NOT $10 OR e.policy_agent_id IS NULL)
           ORDER BY e.at DESC, e.id DESC
           LIMIT $8"#,
        org_id,
        filter.server_id,
        filter.agent_id,
        filter.tool,
        filter.decision,
        filter.since,
        filter.before,
        limit,
        filter.shadow_differs,
        filter.server_policy_only
    )
    .fetch_all(pool)
    .await?)
}

/// The organization's newest events, newest first (filters and keyset pages come with the
/// activity API).
pub async fn recent(pool: &PgPool, org_id: Uuid, limit: i64) -> Result<Vec<Event>> {
    Ok(sqlx::query_as!(
        Event,
        "SELECT id, at, server_id, agent_id, agent_name, session, method, tool, argument_keys,
                arguments, decision, rule, reason, policy_version, policy_agent_id, latency_ms,
                upstream_status, shadow
         FROM activity_events WHERE org_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
        org_id,
        limit
    )
    .fetch_all(pool)
    .await?)
}

/// Per-server counts for the dashboard.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerCounts {
    pub server_id: Option<Uuid>,
    /// `tools/call` decisions since `since`.
    pub calls: i64,
    /// Of those, refused by the policy (denied, hidden, rate-limited, approval denied).
    pub denials: i64,
    /// Median and 95th percentile of the time the gateway took (forwarded calls), in ms.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

/// Calls and denials per server of the organization since `since`.
pub async fn counts_since(
    pool: &PgPool,
    org_id: Uuid,
    since: DateTime<Utc>,
) -> Result<Vec<ServerCounts>> {
    Ok(sqlx::query_as!(
        ServerCounts,
        r#"SELECT server_id,
                  count(*) AS "calls!",
                  count(*) FILTER (WHERE decision IN ('deny', 'hidden', 'rate_limited', 'approval_denied')) AS "denials!",
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_ms,
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_ms
           FROM activity_events
           WHERE org_id = $1 AND at >= $2 AND method = 'tools/call'
           GROUP BY server_id"#,
        org_id,
        since
    )
    .fetch_all(pool)
    .await?)
}

/// A group of recorded calls that replay the same: one server's `tools/call` decisions with the
/// same tool, agent, first decision and arguments, and how many there were.
#[derive(Debug, Clone)]
pub struct RecordedCalls {
    pub tool: String,
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    pub decision: String,
    /// `None` where the organization does not store argument values.
    pub arguments: Option<Value>,
    pub argument_keys: Vec<String>,
    pub count: i64,
}

/// The first decision of each call (not the later steps of an approval, which are events of
/// the same call).
/// (`upstream_error` is left out: it is recorded only as the later step of an approved call.)
pub const FIRST_DECISIONS: [&str; 5] = [
    "allow",
    "deny",
    "hidden",
    "rate_limited",
    "approval_requested",
];

/// One server's calls since `since`, grouped for replay (PostgreSQL does the grouping, so a
/// hundred thousand calls of a few dozen shapes cross the wire as a few dozen rows). `agents`
/// keeps only those agents' calls; `except_agents` drops theirs (agents with their own policy
/// are not governed by the server's).
pub async fn recorded_calls(
    pool: &PgPool,
    org_id: Uuid,
    server_id: Uuid,
    since: DateTime<Utc>,
    agents: Option<&[Uuid]>,
    except_agents: &[Uuid],
) -> Result<Vec<RecordedCalls>> {
    Ok(sqlx::query_as!(
        RecordedCalls,
        r#"SELECT e.tool AS "tool!", e.agent_id, max(e.agent_name) AS agent_name, e.decision,
                  e.arguments, e.argument_keys, count(*) AS "count!"
           FROM activity_events e
           WHERE e.org_id = $1 AND e.server_id = $2 AND e.at >= $3 AND e.method = 'tools/call'
             AND e.tool IS NOT NULL AND e.decision = ANY($4)
             AND ($5::uuid[] IS NULL OR e.agent_id = ANY($5))
             AND NOT (e.agent_id = ANY($6))
           GROUP BY e.tool, e.agent_id, e.decision, e.arguments, e.argument_keys"#,
        org_id,
        server_id,
        since,
        &FIRST_DECISIONS.map(String::from) as &[String],
        agents as Option<&[Uuid]>,
        except_agents
    )
    .fetch_all(pool)
    .await?)
}

/// What a shadow version would have done to one server's calls since `since`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShadowCounts {
    /// Calls decided while a shadow version was evaluated beside the enforced one.
    pub calls: i64,
    /// Of those, where the shadow decided otherwise.
    pub differences: i64,
    /// Of the differences, calls the enforced version let through and the shadow would have
    /// denied or hidden.
    pub would_deny: i64,
}

/// Shadow counts of one server's calls since `since` decided by the server's own policy (those
/// evaluated beside a shadow version of it).
pub async fn shadow_counts(
    pool: &PgPool,
    org_id: Uuid,
    server_id: Uuid,
    since: DateTime<Utc>,
) -> Result<ShadowCounts> {
    Ok(sqlx::query_as!(
        ShadowCounts,
        r#"SELECT count(*) AS "calls!",
                  count(*) FILTER (WHERE (shadow->>'differs')::boolean) AS "differences!",
                  count(*) FILTER (WHERE (shadow->>'differs')::boolean
                                     AND shadow->>'decision' IN ('deny', 'hidden')
                                     AND decision NOT IN ('deny', 'hidden')) AS "would_deny!"
           FROM activity_events
           WHERE org_id = $1 AND server_id = $2 AND at >= $3 AND method = 'tools/call'
             AND shadow IS NOT NULL AND decision = ANY($4)
             -- The server's policy: an agent's own policy has its own shadow.
             AND policy_agent_id IS NULL"#,
        org_id,
        server_id,
        since,
        &FIRST_DECISIONS.map(String::from) as &[String],
    )
    .fetch_one(pool)
    .await?)
}

/// Parts of a key that mark its value as secret (compared case-insensitively).
pub const SECRET_KEY_PARTS: [&str; 5] = ["password", "token", "secret", "key", "authorization"];

/// `value` with the value of every key that looks secret replaced by `"[redacted]"`.
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let secret = SECRET_KEY_PARTS.iter().any(|part| lower.contains(part));
                    let shown = if secret {
                        Value::String("[redacted]".into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}
