//! Where upstream calls take their [`HttpClient`] (and so their connection pool) from.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use super::HttpClient;

/// One client shared by every thread, or one per thread.
///
/// Per thread is for a server that runs one single-threaded runtime per core: a pooled
/// connection's I/O task lives on the runtime that opened it, so a call made on another thread
/// through that connection wakes that thread and waits for it (two context switches per call).
/// With a client per thread, a call only ever uses connections its own thread opened.
#[derive(Clone)]
pub enum HttpClients {
    Shared(HttpClient),
    PerThread(Arc<PerThread>),
}

/// How to make a thread's client.
pub struct PerThread {
    make: Box<dyn Fn() -> HttpClient + Send + Sync>,
}

thread_local! {
    /// This thread's clients, by the [`PerThread`] they were made for. The weak reference keeps
    /// the address from being reused while the entry exists; dead entries are dropped on insert.
    static LOCAL: RefCell<Vec<(Weak<PerThread>, HttpClient)>> = const { RefCell::new(Vec::new()) };
}

impl HttpClients {
    /// A client per thread, each made by `make` the first time that thread calls out.
    pub fn per_thread(make: impl Fn() -> HttpClient + Send + Sync + 'static) -> Self {
        HttpClients::PerThread(Arc::new(PerThread {
            make: Box::new(make),
        }))
    }

    /// The client for a call made on this thread.
    pub fn client(&self) -> HttpClient {
        match self {
            HttpClients::Shared(client) => client.clone(),
            HttpClients::PerThread(per_thread) => LOCAL.with(|local| {
                let mut local = local.borrow_mut();
                let this = Arc::as_ptr(per_thread);
                if let Some((_, client)) =
                    local.iter().find(|(made_for, _)| made_for.as_ptr() == this)
                {
                    return client.clone();
                }
                local.retain(|(made_for, _)| made_for.strong_count() > 0);
                let client = (per_thread.make)();
                local.push((Arc::downgrade(per_thread), client.clone()));
                client
            }),
        }
    }
}

impl From<HttpClient> for HttpClients {
    fn from(client: HttpClient) -> Self {
        HttpClients::Shared(client)
    }
}

impl std::fmt::Debug for HttpClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpClients::Shared(_) => "HttpClients::Shared",
            HttpClients::PerThread(_) => "HttpClients::PerThread",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn new_client() -> HttpClient {
        HttpClient::new().unwrap()
    }

    #[test]
    fn one_client_per_thread_made_once_and_dropped_with_its_maker() {
        let made = Arc::new(AtomicUsize::new(0));
        let clients = {
            let made = made.clone();
            HttpClients::per_thread(move || {
                made.fetch_add(1, Ordering::SeqCst);
                new_client()
            })
        };
        clients.client();
        clients.client();
        assert_eq!(made.load(Ordering::SeqCst), 1, "reused on this thread");
        std::thread::scope(|s| {
            s.spawn(|| clients.client());
        });
        assert_eq!(
            made.load(Ordering::SeqCst),
            2,
            "another thread makes its own"
        );

        // A second set of clients on this thread is its own, and a dropped set's client goes.
        let other = HttpClients::per_thread(new_client);
        other.client();
        drop(clients);
        let third = HttpClients::per_thread(new_client);
        third.client();
        LOCAL.with(|local| {
            let local = local.borrow();
            assert_eq!(local.len(), 2, "the dropped set's entry was removed");
            assert!(local.iter().all(|(w, _)| w.strong_count() > 0));
        });
    }
}
