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
}

impl ActivitySink {
    /// Starts the writer task.
    pub fn spawn(db: PgPool) -> (ActivitySink, tokio::task::JoinHandle<()>) {
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
                let mut delay = Duration::from_millis(100);
                loop {
                    match activity::insert_batch(&db, &batch).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, events = batch.len(), "cannot write activity events; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                batch.clear();
            }
        });
        (ActivitySink { tx }, task)
    }

    /// Queues an event; never waits. A full queue drops the event and says so in the log.
    pub fn record(&self, event: NewEvent) {
        if let Err(e) = self.tx.try_send(event) {
            tracing::error!(error = %e, "activity queue full: an event was dropped");
        }
    }
}
