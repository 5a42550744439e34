//! The activity sink: decisions leave the request path through a bounded channel and are
//! written in batches by one task.
//!
//! While PostgreSQL is unreachable, batches go to an append-only spill file in the data
//! directory (one JSON event per line, fsynced); once the file has anything, later batches
//! follow it there, so order is kept. Every 2 s, and before each new batch, the writer tries to
//! replay the file in order; inserts are idempotent (by event id), so a replay cut short is
//! simply done again. Without a spill directory, batches are retried in memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

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
    /// Asks the writer to write what is queued now, and says when it has.
    flush: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Bytes in the spill file.
    spilled: Arc<AtomicU64>,
}

impl ActivitySink {
    /// Starts the writer task; with `spill_dir`, events wait in a file there while the database
    /// is unreachable.
    pub fn spawn(
        db: PgPool,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        spill_dir: Option<PathBuf>,
    ) -> (ActivitySink, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<NewEvent>(QUEUE);
        let (flush, mut flush_rx) = mpsc::channel::<tokio::sync::oneshot::Sender<()>>(4);
        let spilled = Arc::new(AtomicU64::new(0));
        let mut spill = spill_dir.map(|dir| Spill::new(dir, spilled.clone()));
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let pending = spill.as_ref().is_some_and(Spill::pending);
                let received = tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => n,
                    Some(done) = flush_rx.recv() => {
                        // Everything queued before the request, in batches.
                        while let Ok(event) = rx.try_recv() {
                            batch.push(event);
                            if batch.len() == BATCH {
                                match spill.as_mut() {
                                    Some(spill) => spill.write(&db, &batch).await,
                                    None => write(&db, &batch).await,
                                }
                                batch.clear();
                            }
                        }
                        if !batch.is_empty() {
                            match spill.as_mut() {
                                Some(spill) => spill.write(&db, &batch).await,
                                None => write(&db, &batch).await,
                            }
                            batch.clear();
                        }
                        let _ = done.send(());
                        continue;
                    }
                    () = tokio::time::sleep(Duration::from_secs(2)), if pending => {
                        if let Some(spill) = spill.as_mut() {
                            spill.replay(&db).await;
                        }
                        continue;
                    }
                };
                if received == 0 {
                    break;
                }
                // Gather for LINGER, then take what came: one wake-up per batch, not one per
                // event (waking the writer on every call costs the calls a context switch).
                if batch.len() < BATCH {
                    tokio::time::sleep(LINGER).await;
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(event) => batch.push(event),
                            Err(_) => break,
                        }
                    }
                }
                match spill.as_mut() {
                    Some(spill) => spill.write(&db, &batch).await,
                    None => write(&db, &batch).await,
                }
                batch.clear();
            }
        });
        (
            ActivitySink {
                tx,
                flush,
                metrics,
                spilled,
            },
            task,
        )
    }

    /// Bytes waiting in the spill file.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled.load(Ordering::Relaxed)
    }

    /// Queues an event (made safe to store); never waits. A full queue drops the event and says so in the log.
    pub fn record(&self, event: NewEvent) {
        self.metrics.decision(&event.decision, event.latency_ms);
        let span = tracing::Span::current();
        span.record("decision", event.decision.as_str());
        if let Some(tool) = &event.tool {
            span.record("tool", tracing::field::debug(tool));
        }
        tracing::debug!(rule = ?event.rule, latency_ms = ?event.latency_ms, "decided");
        if let Err(e) = self.tx.try_send(sanitize(event)) {
            self.metrics.event_dropped();
            tracing::error!(error = %e, "activity queue full: an event was dropped");
        }
    }

    /// Writes every event queued before this call; returns once they are written (or spilled).
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.flush.send(done).await.is_ok() {
            let _ = written.await;
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

/// The spill file and how much it holds.
struct Spill {
    path: PathBuf,
    bytes: Arc<AtomicU64>,
}

impl Spill {
    fn new(dir: PathBuf, bytes: Arc<AtomicU64>) -> Spill {
        let path = dir.join("activity-spill.jsonl");
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        bytes.store(size, Ordering::Relaxed);
        if size > 0 {
            tracing::warn!(path = %path.display(), bytes = size, "activity events from an earlier run wait in the spill file");
        }
        Spill { path, bytes }
    }

    fn pending(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) > 0
    }

    /// Writes a batch: replays the file first if it holds anything (order), then inserts; if
    /// the database is unreachable, appends the batch to the file instead.
    async fn write(&mut self, db: &PgPool, batch: &[NewEvent]) {
        if self.pending() {
            self.replay(db).await;
        }
        if !self.pending() {
            match activity::insert_batch(db, batch).await {
                Ok(()) => return,
                Err(portcullis_store::Error::Unavailable(e)) => {
                    tracing::warn!(error = %e, events = batch.len(), "database unavailable: activity events go to the spill file");
                }
                Err(_) => {
                    write(db, batch).await;
                    return;
                }
            }
        }
        if let Err(e) = self.append(batch).await {
            // Neither the database nor the disk: keep trying the database, in memory.
            tracing::error!(error = %e, path = %self.path.display(), "cannot write the spill file");
            write(db, batch).await;
        }
    }

    async fn append(&self, batch: &[NewEvent]) -> std::io::Result<()> {
        let mut text = String::new();
        for event in batch {
            text.push_str(&serde_json::to_string(event).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        if let Some(dir) = self.path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        file.write_all(text.as_bytes()).await?;
        file.sync_data().await?;
        self.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Inserts the file's events in order, in batches; removes the file when all are in. On a
    /// failure, the file stays (inserts are idempotent: the next replay redoes the batch).
    async fn replay(&mut self, db: &PgPool) {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.bytes.store(0, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot read the spill file");
                return;
            }
        };
        let events: Vec<NewEvent> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| match serde_json::from_str(l) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::error!(error = %e, "a spilled activity event cannot be read; skipped");
                    None
                }
            })
            .collect();
        for chunk in events.chunks(BATCH) {
            match activity::insert_batch(db, chunk).await {
                Ok(()) => {}
                Err(portcullis_store::Error::Unavailable(_)) => return,
                Err(_) => write(db, chunk).await,
            }
        }
        match tokio::fs::remove_file(&self.path).await {
            Ok(()) => {
                tracing::info!(
                    events = events.len(),
                    "spilled activity events written to the database"
                );
                self.bytes.store(0, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "cannot remove the replayed spill file"),
        }
    }
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
            policy_agent_id: None,
            shadow: None,
        };
        let clean = sanitize(event);
        assert_eq!(clean.tool.as_deref(), Some("rm\u{FFFD}rf"));
        assert_eq!(clean.argument_keys, ["a\u{FFFD}b"]);
    }
}
