//! The activity sink: decisions leave the request path through a bounded channel and are
//! written in batches by one task. (The activity issue adds the spill file and metrics.)

use std::time::Duration;

use portcullis_store::PgPool;
use portcullis_store::activity::{self, NewEvent};
use tokio::sync::mpsc;

/// Events waiting to be written, at most.
const QUEUE: usize = 10_000;
/// Events per insert, at most.
const BATCH: usize = 500;
/// How long the writer gathers events after the first before writing them: under load, one
/// insert per this interval instead of one per call (each commit costs PostgreSQL a WAL flush).
const LINGER: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct ActivitySink {
    tx: mpsc::Sender<NewEvent>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl ActivitySink {
    /// Starts the writer task.
    pub fn spawn(
        db: PgPool,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> (ActivitySink, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<NewEvent>(QUEUE);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let deadline = tokio::time::Instant::now() + LINGER;
                while batch.len() < BATCH {
                    let room = BATCH - batch.len();
                    match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                write(&db, &batch).await;
                batch.clear();
            }
        });
        (ActivitySink { tx, metrics }, task)
    }

    /// Queues an event (made safe to store); never waits. A full queue drops the event and says so in the log.
    pub fn record(&self, event: NewEvent) {
        self.metrics.decision(&event.decision, event.latency_ms);
        if let Err(e) = self.tx.try_send(sanitize(event)) {
            self.metrics.event_dropped();
            tracing::error!(error = %e, "activity queue full: an event was dropped");
        }
    }

    /// Events waiting to be written.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Writes a batch: retried while the database is unreachable; a batch the database refuses
/// (a row it cannot take) is written row by row so one bad event never holds up the others.
async fn write(db: &PgPool, batch: &[NewEvent]) {
    let mut delay = Duration::from_millis(100);
    loop {
        match activity::insert_batch(db, batch).await {
            Ok(()) => return,
            Err(portcullis_store::Error::Unavailable(e)) => {
                tracing::warn!(error = %e, events = batch.len(), "database unavailable: activity events wait");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "activity batch refused: writing it row by row");
                for event in batch {
                    if let Err(e) = activity::insert_batch(db, std::slice::from_ref(event)).await {
                        tracing::error!(error = %e, event = %event.id, org = %event.org_id, "activity event dropped");
                    }
                }
                return;
            }
        }
    }
}

/// PostgreSQL's text and jsonb cannot hold NUL: a tool name or argument key with one would make
/// the row unwritable.
fn sanitize(mut event: NewEvent) -> NewEvent {
    fn clean(s: &mut String) {
        if s.contains('\0') {
            *s = s.replace('\0', "\u{FFFD}");
        }
    }
    for s in [
        &mut event.tool,
        &mut event.agent_name,
        &mut event.reason,
        &mut event.rule,
        &mut event.session,
    ]
    .into_iter()
    .flatten()
    {
        clean(s);
    }
    event.argument_keys.iter_mut().for_each(clean);
    clean(&mut event.method);
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_are_replaced() {
        let event = NewEvent {
            id: uuid::Uuid::now_v7(),
            org_id: uuid::Uuid::nil(),
            at: chrono::Utc::now(),
            server_id: None,
            agent_id: None,
            agent_name: None,
            session: None,
            method: "tools/call".into(),
            tool: Some("rm\0rf".into()),
            argument_keys: vec!["a\0b".into()],
            arguments: None,
            decision: "deny".into(),
            rule: None,
            reason: None,
            policy_id: None,
            policy_version: None,
            latency_ms: None,
            upstream_status: None,
        };
        let clean = sanitize(event);
        assert_eq!(clean.tool.as_deref(), Some("rm\u{FFFD}rf"));
        assert_eq!(clean.argument_keys, ["a\u{FFFD}b"]);
    }
}
