//! Held calls: waking the gateway that holds a call when a person decides, and noticing holders
//! that died.
//!
//! Each gateway process has a holder name (`portcullis-gw-{uuid}`) used as the
//! `application_name` of its LISTEN connection on `portcullis_approval`. A decision made anywhere
//! NOTIFYs that channel; the holding process wakes the waiting call. A sweep (every gateway, every
//! `sweep` interval) marks abandoned the pending approvals whose holder has no connection to
//! PostgreSQL any more: the process holding them is gone, and with it the client's request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use portcullis_store::{PgPool, approvals};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::Gateway;

/// The processes' waiting calls, by approval id.
#[derive(Debug)]
pub struct Waiters {
    /// This process's holder name.
    pub holder: String,
    waiting: Mutex<HashMap<Uuid, Arc<tokio::sync::Notify>>>,
}

impl Default for Waiters {
    fn default() -> Self {
        Self::new()
    }
}

impl Waiters {
    pub fn new() -> Waiters {
        Waiters {
            holder: format!("portcullis-gw-{}", Uuid::new_v4().simple()),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a waiting call; the guard unregisters it.
    pub fn wait(self: &Arc<Self>, id: Uuid) -> WaitGuard {
        let notify = Arc::new(tokio::sync::Notify::new());
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, notify.clone());
        WaitGuard {
            waiters: self.clone(),
            id,
            notify,
        }
    }

    /// Calls this process holds now.
    pub fn held(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn wake(&self, id: Uuid) {
        if let Some(n) = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            n.notify_one();
        }
    }

    fn wake_all(&self) {
        for n in self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            n.notify_one();
        }
    }
}

/// A registered waiting call.
#[derive(Debug)]
pub struct WaitGuard {
    waiters: Arc<Waiters>,
    id: Uuid,
    pub notify: Arc<tokio::sync::Notify>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.waiters
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// LISTENs for decisions (on a connection named after the holder) and sweeps orphans.
pub fn spawn(gateway: &Arc<Gateway>, sweep: Duration) {
    let weak: Weak<Gateway> = Arc::downgrade(gateway);
    let db = gateway.db.clone();
    let holder = gateway.approvals.holder.clone();
    tokio::spawn(async move {
        // A pool of one connection, named, so other processes can see this one is alive.
        let options = (*db.connect_options()).clone().application_name(&holder);
        let named: PgPool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options);
        loop {
            let Some(mut listener) = crate::listen(&named, "portcullis_approval").await else {
                return;
            };
            // A decision made while we were not listening: look again.
            match weak.upgrade() {
                Some(gw) => gw.approvals.wake_all(),
                None => return,
            }
            while let Ok(Some(note)) = listener.try_recv().await {
                let Some(gw) = weak.upgrade() else { return };
                if let Ok(id) = note.payload().parse::<Uuid>() {
                    gw.approvals.wake(id);
                }
            }
            tracing::warn!("the approval listener lost its connection; reconnecting");
        }
    });
    let weak: Weak<Gateway> = Arc::downgrade(gateway);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(sweep);
        loop {
            ticker.tick().await;
            let Some(gw) = weak.upgrade() else { return };
            match approvals::abandon_orphans(&gw.db).await {
                Ok(orphans) => {
                    for (org_id, id) in orphans {
                        tracing::warn!(approval = %id, "the gateway holding this call is gone: abandoned");
                        if let Ok(a) = approvals::get(&gw.db, org_id, id).await {
                            gw.activity.record(crate::mcp::approval_event(
                                org_id,
                                &a,
                                "approval_abandoned",
                                Some("the gateway holding the call stopped".into()),
                            ));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot sweep abandoned approvals"),
            }
        }
    });
}
